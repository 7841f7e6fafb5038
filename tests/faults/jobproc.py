"""Helpers for the kill / SIGTERM / API-fault tests: the real `job` CLI as a child process,
smoke-bench answers, and the invariants every stored file must keep after a fault."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ci_gate import unavailable

JOB = [sys.executable, "-c", "from job.cli import main; main()"]
API_ENV = {"OPENAI_API_KEY": "sk-test-faults", "JOB_API_BACKOFF_BASE": "0.01"}
# the re-run after a fault uses its own key, so the server can tell its requests from late
# ones of the stopped process still in the socket (asked_by)
RERUN_KEY = "sk-test-rerun"
RERUN_ENV = {**API_ENV, "OPENAI_API_KEY": RERUN_KEY}


def jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line must be one whole JSON object (a torn line fails the test)."""
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`job ARGS` in the background, stdout+stderr to `log` (a pipe nobody reads could block it)."""
    f = open(log, "wb")  # noqa: SIM115 - the child owns it; closed when the test's tmp dir goes
    return subprocess.Popen([*JOB, *args], env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=f)


def wait_until(cond: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return cond()
        time.sleep(0.02)
    return False


def answered(srv: Any, since: int = 0) -> int:
    """Chat requests the test server has answered, of those from the `since`-th on."""
    return sum(q.end is not None for q in srv.chat_requests[since:])


def asked_by(srv: Any, key: str) -> int:
    """Chat requests the test server received with API key `key`."""
    return sum(q.headers.get("authorization") == f"Bearer {key}" for q in srv.chat_requests)


def wait_held(srv: Any, n: int, held: int, proc: subprocess.Popen[bytes], log: Path, since: int = 0) -> None:
    """Wait until the test server, which holds every request after the first n (hold_after),
    has answered those n (counted from the `since`-th request) and holds `held` more. With
    `held` = the client's concurrency every slot waits on the server: the client has recorded
    each reply it got and sends nothing more, so a signal now lands at a known point however
    loaded the machine is."""
    ok = wait_until(lambda: answered(srv, since) == n and srv.held >= held, 60, proc)
    assert ok, f"{answered(srv, since)} of {n} answered, {srv.held} held: {log.read_text()[-3000:]}"


def handler_installed(pid: int, sig: int = signal.SIGTERM) -> bool:
    """The process has a handler for `sig` (the CLI's terminate.install() ran): the kernel's
    SigCgt mask, so no log line or sleep is needed to know the CLI is up."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (sig - 1) & 1)


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(timeout=30)


def require_pid_namespace() -> None:
    """Skip (fail on CI) where `unshare` cannot make the PID namespace a container has."""
    problem = None
    if not shutil.which("unshare"):
        problem = "`unshare` (util-linux) is needed"
    else:
        probe = subprocess.run(
            ["unshare", "-pf", "--mount-proc", "true"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode != 0:
            problem = f"cannot create a PID namespace: {probe.stderr.strip()}"
    if problem:
        unavailable(problem)


def child_of(pid: int, timeout: float = 30) -> int:
    """The first child of `pid`: under `unshare -pf` that is the namespace's PID 1."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    assert wait_until(lambda: children.exists() and children.read_text().split() != [], timeout)
    return int(children.read_text().split()[0])


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def smoke_answers(
    run_job: Any, out: Path | str, model: str, *extra: str, env: dict[str, str] | None = None
) -> None:
    """Answers for the smoke bench (2 choices), generated and reduced by the real CLI."""
    env = {**API_ENV, **(env or {})}
    args = ["generate", "--bench", "smoke", "--model", model, "--num-choices", "2", "--output", str(out)]
    r = run_job(*args, *extra, env=env)
    assert r.returncode == 0, r.stderr
    r = run_job("reduce", "--bench", "smoke", "--output", str(out), env=env)
    assert r.returncode == 0, r.stderr


def seeded_reply(body: dict[str, Any]) -> str:
    """An answer that differs per choice (the request's seed), so every judge prompt is unique."""
    return f"answer {body.get('seed')}: {body['messages'][-1]['content'][:40]}"


def distinct_answers(
    run_job: Any, out: Path | str, url: str, name: str = "test-model", env: dict[str, str] | None = None
) -> None:
    """smoke answers, 2 choices that differ, from an openai/ model on a test server."""
    args = ("--base-url", url, "--no-dedupe-greedy", "--model-name", name)
    smoke_answers(run_job, out, "openai/test-model", *args, env=env)


def judgment_key(rec: dict[str, Any]) -> tuple[Any, ...]:
    models = (rec["model"],) if "model" in rec else (rec["model_1"], rec["model_2"])
    return (tuple(rec["judge"]), str(rec["question_id"]), rec["turn"], models, rec.get("choice", 0))


def check_judgments(path: Path, expected: int, want: str = "final") -> list[dict[str, Any]]:
    """The judgment file after a fault: whole lines only (a torn tail is allowed before a
    re-run repairs it), at most one final (ok/parse_error/answer_error) row per game key and
    no api_error row after a final one. `want`: "partial" (a killed run: at most `expected`
    keys), "recorded" (every key has a row, api_error allowed) or "final" (every key final)."""
    data = path.read_bytes() if path.exists() else b""
    if want == "partial" and data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]  # torn by a kill: judge cuts it on the next run
    assert not data or data.endswith(b"\n"), f"{path}: torn last line"
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    finals: Counter[tuple[Any, ...]] = Counter()
    for r in rows:
        k = judgment_key(r)
        assert r["status"] in ("ok", "parse_error", "api_error", "answer_error"), r
        if "model_1" in r:  # a pair record holds both games, never one
            assert r["g1_user_prompt"] and r["g2_user_prompt"] or r["status"] == "answer_error", r
        if r["status"] != "api_error":
            finals[k] += 1
        else:
            assert finals[k] == 0, f"api_error row after a final row for {k}"
    dups = [k for k, n in finals.items() if n > 1]
    assert not dups, f"duplicate judgments: {dups[:3]}"
    keys = {judgment_key(r) for r in rows}
    assert len(keys) <= expected
    if want != "partial":
        assert len(keys) == expected, (len(keys), expected)
    if want == "final":
        assert len(finals) == expected, (len(finals), expected)
    return rows


def check_shards(out: Path, bench: str, model: str) -> tuple[set[int], set[int]]:
    """Shard files after a fault: every committed shard (manifest present) is whole and
    matches its manifest; no temp file is visible to readers. Returns (committed, uncommitted
    shard indices that have a data file but no manifest)."""
    d = out / bench / "shards" / model
    committed: set[int] = set()
    orphans: set[int] = set()
    if not d.exists():
        return committed, orphans
    for f in sorted(d.glob("shard-*.jsonl")):
        idx = int(f.name.split("-")[1])
        man = f.with_name(f.name.removesuffix(".jsonl") + ".manifest.json")
        if not man.exists():
            orphans.add(idx)
            continue
        m = json.loads(man.read_text())
        items = jsonl(f)
        assert f.read_bytes().endswith(b"\n") and len(items) == m["num_items"], f
        assert len({(i["question_id"], i["choice"]) for i in items}) == len(items), f"duplicate items in {f}"
        assert sum(i["status"] != "ok" for i in items) == m["num_failed"], f
        committed.add(idx)
    for man in d.glob("shard-*.manifest.json"):
        assert man.with_name(man.name.replace(".manifest.json", ".jsonl")).exists(), (
            f"manifest without data: {man}"
        )
        json.loads(man.read_text())  # whole
    return committed, orphans


def check_answers(
    out: Path, bench: str, model: str, num_questions: int, choices: int
) -> list[dict[str, Any]]:
    """The merged answer file: every question once, every choice once, whole lines."""
    path = out / bench / "model_answer" / f"{model}.jsonl"
    rows = jsonl(path)
    assert path.read_bytes().endswith(b"\n")
    ids = [r["question_id"] for r in rows]
    assert len(ids) == len(set(ids)) == num_questions, (len(ids), len(set(ids)), num_questions)
    for r in rows:
        assert [c["index"] for c in r["choices"]] == list(range(choices)), r["question_id"]
    return rows


@dataclass
class Shards:
    out: Path
    reference: bytes
    """the answer file an uninterrupted reduce writes"""
    seconds: float
    """how long that reduce ran once its SIGTERM handler was in: the window for random signals"""


def spawn_reduce(out: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """`job reduce` in the background, returned once its SIGTERM handler is installed (and
    the monotonic time of that)."""
    proc = spawn(["reduce", "--bench", "mt_bench", "--output", str(out)], env, log)
    assert wait_until(lambda: handler_installed(proc.pid), 60, proc), log.read_text()
    return proc, time.monotonic()


@pytest.fixture(scope="module", name="many_shards")
def many_shards_fixture(tmp_path_factory: pytest.TempPathFactory, shared_bench_data: Path) -> Shards:
    """mt_bench x 5 choices of mock/echo in 400 shards, so a reduce has a middle to hit."""
    base = tmp_path_factory.mktemp("many")
    out = base / "runs"
    gen = ["generate", "--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--model", "mock/echo",
           "--num-choices", "5", "--num-shards", "400", "--output", str(out)]  # fmt: skip
    subprocess.run([*JOB, *gen], check=True, capture_output=True)
    ref = base / "ref"
    shutil.copytree(out, ref)
    proc, t0 = spawn_reduce(ref, dict(os.environ), base / "ref.log")
    assert proc.wait(timeout=120) == 0, (base / "ref.log").read_text()
    seconds = time.monotonic() - t0
    return Shards(out, (ref / "mt_bench/model_answer/echo.jsonl").read_bytes(), seconds)


def reduce_under_signal(
    sig: int, seed: int, shards: Shards, job_env: dict[str, str], run_job: Any, tmp_path: Path
) -> tuple[int, str]:
    """Signal `job reduce` at a seeded random point of its run (from its handler's install to
    80% of an uninterrupted run), check its output is whole or absent, re-run it, and check
    the answer file equals an uninterrupted reduce's."""
    out = tmp_path / "runs"
    tmp_path.mkdir(exist_ok=True)
    shutil.copytree(shards.out, out)
    answer = out / "mt_bench/model_answer/echo.jsonl"
    manifest = out / "mt_bench/model_answer/echo.manifest.json"
    rng = random.Random(seed)
    proc, _ = spawn_reduce(out, job_env, tmp_path / "reduce.log")
    wait_until(lambda: False, rng.uniform(0.0, 0.8) * shards.seconds, proc)
    kill(proc, sig)
    log = (tmp_path / "reduce.log").read_text()
    assert proc.returncode in (0, -sig, 128 + sig), log
    if answer.exists():  # all or nothing: an atomic replace
        assert answer.read_bytes() == shards.reference
        if sig != signal.SIGKILL:  # SIGTERM waits for the manifest beside it, and leaves no temp file
            assert manifest.exists() and not list(answer.parent.glob(".*"))
    r = run_job("reduce", "--bench", "mt_bench", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert answer.read_bytes() == shards.reference and manifest.exists()
    check_answers(out, "mt_bench", "echo", 80, 5)
    return proc.returncode, log
