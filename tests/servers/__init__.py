"""Real servers on 127.0.0.1 that tests (and benchmarks) start: see openai_server.py."""
