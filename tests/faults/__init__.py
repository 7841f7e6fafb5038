"""Fault injection tests (issue 8): API faults, kills, SIGTERM, storage, bad input, secrets."""
