"""A real instruct model (SmolLM2-135M-Instruct from its GGUF wheel, tests/real_model.py):
`job smoke-model --from-gguf`, the hf backend on it (natural EOS, the model's own template
with its default system prompt), and `transformers serve` as a real OpenAI-compatible
endpoint for API generation and an API judge."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from real_model import MODEL_NAME, Served, smollm2_gguf

from job.records import Answer, parse_records

API_ENV = {"OPENAI_API_KEY": "sk-local-unused"}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def test_from_gguf_writes_a_plain_checkpoint(real_model: Path) -> None:
    from job.backends.base import GenRequest, SamplingParams
    from job.backends.hf import HFBackend

    config = json.loads((real_model / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert (real_model / "model.safetensors").is_file() and (real_model / "tokenizer.json").is_file()
    backend = HFBackend("hf/" + str(real_model), str(real_model), device="cpu")
    try:
        req = GenRequest(
            [{"role": "user", "content": "What is the capital of France?"}], SamplingParams(0.0, 64)
        )
        # the model's own template adds its default system prompt
        assert "You are a helpful AI assistant named SmolLM" in backend.render(req)
        (res,) = backend.generate([req])
    finally:
        backend.close()
    assert res.status == "ok" and "Paris" in res.text, res
    # a real model stops by itself: EOS before the limit, not counted as a cut-off answer
    assert res.finish_reason == "stop" and 0 < res.num_tokens < 64


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist; pass the path of a .gguf checkpoint"), ("not gguf", "cannot load GGUF file")],
)
def test_from_gguf_bad_file_is_one_line(
    run_job: Any, tmp_path: Path, content: str | None, message: str
) -> None:
    src = tmp_path / "model.gguf"
    if content is not None:
        src.write_text(content)
    r = run_job("smoke-model", "--from-gguf", str(src), str(tmp_path / "out"))
    assert r.returncode != 0 and message in r.stderr and str(src) in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out" / "config.json").exists()


def _chat_posts(srv: Served) -> int:
    return len(re.findall(r'"POST /v1/chat/completions HTTP/1\.1" 200', srv.log.read_text(errors="replace")))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_api_generate_and_judge_on_transformers_serve(
    transformers_serve: Served, run_job: Any, shared_bench_data: Path, tmp_path: Path
) -> None:
    srv, out = transformers_serve, tmp_path / "runs"
    common = ["--bench", "mt_bench", "--output", str(out)]
    data = ["--bench-data", str(shared_bench_data), "--first-n", "1"]
    api = ["--base-url", srv.url, "--concurrency", "1"]
    posts = _chat_posts(srv)
    gen = run_job("generate", *common, *data, "--model", f"openai/{srv.model}", *api, "--max-new-tokens", "16",
                  env=API_ENV)  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert run_job("reduce", *common, env=API_ENV).returncode == 0
    path = out / "mt_bench" / "model_answer" / f"{MODEL_NAME}.jsonl"
    (answer,) = parse_records(path.read_bytes(), Answer, str(path))
    (choice,) = answer.choices
    assert answer.question_id == 81 and len(choice.turns) == 2 and all(t.strip() for t in choice.turns)
    assert _chat_posts(srv) - posts == 2  # one request per turn, none retried

    judge = run_job("judge", *common, *data, "--judge-model", f"openai/{srv.model}", *api, env=API_ENV)
    stored = out / "mt_bench" / "model_judgment" / f"{MODEL_NAME}_single.jsonl"
    assert stored.is_file(), judge.stderr[-3000:]
    rows = _jsonl(stored)
    counts = Counter(r["status"] for r in rows)
    # a weak judge: every requested judgment is stored as ok, parse_error or api_error
    assert len(rows) == 2 and set(counts) <= {"ok", "parse_error", "api_error"}, counts
    assert all((r["score"] == -1) == (r["status"] != "ok") for r in rows)
    assert _chat_posts(srv) - posts == 2 + 2
    if counts["ok"]:
        assert judge.returncode == 0, judge.stderr[-3000:]
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        assert f"judged mt_bench with {MODEL_NAME}: {summary};" in judge.stdout
    else:  # no rating came back: a failure, never a score
        assert judge.returncode == 2 and "all 2 judgments of this run failed" in judge.stderr, judge.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_hf_gguf_file_answers_as_the_rebuilt_checkpoint(
    real_model: Path, run_job: Any, shared_bench_data: Path, tmp_path: Path
) -> None:
    """hf/<folder> --gguf-file FILE loads the GGUF directly: same weights as the checkpoint
    `job smoke-model --from-gguf` rebuilt, so the same answers (sampled ones too: per-row seeds)."""
    gguf = smollm2_gguf()
    common = ["--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--first-n", "1",
              "--max-new-tokens", "12", "--device", "cpu", "--dtype", "float32"]  # fmt: skip
    answers = {}
    for name, model in (("gguf", ["--model", f"hf/{gguf.parent}", "--gguf-file", gguf.name]),
                        ("rebuilt", ["--model", f"hf/{real_model}"])):  # fmt: skip
        out = tmp_path / name
        r = run_job("generate", *common, *model, "--model-name", name, "--output", str(out))
        assert r.returncode == 0, r.stderr[-3000:]
        assert run_job("reduce", "--bench", "mt_bench", "--output", str(out)).returncode == 0
        path = out / "mt_bench" / "model_answer" / f"{name}.jsonl"
        (answers[name],) = parse_records(path.read_bytes(), Answer, str(path))
    assert answers["gguf"].choices[0].turns == answers["rebuilt"].choices[0].turns
    assert all(t.strip() for t in answers["gguf"].choices[0].turns)


def test_hf_gguf_file_missing_is_one_line(run_job: Any, tmp_path: Path) -> None:
    r = run_job("generate", "--bench", "smoke", "--model", f"hf/{tmp_path}", "--gguf-file", "nope.gguf",
                "--first-n", "1", "--output", str(tmp_path / "out"))  # fmt: skip
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and last.startswith("error: cannot load model") and "nope.gguf" in last, r.stderr
    assert "Traceback" not in r.stderr
