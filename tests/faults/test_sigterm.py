"""SIGTERM, what Slurm (scancel, preemption) and Kubernetes (pod deletion) send before
SIGKILL: the real CLI stops within a grace period, exits 143, keeps every judgment and
shard finished before the signal, leaves no partial file, and a re-run completes the work
without duplicates."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from servers.openai_server import OpenAIServer

from faults.jobproc import (
    API_ENV,
    JOB,
    RERUN_ENV,
    RERUN_KEY,
    Shards,
    asked_by,
    check_answers,
    check_judgments,
    check_shards,
    child_of,
    count_lines,
    distinct_answers,
    kill,
    many_shards_fixture,  # noqa: F401 - the many_shards fixture
    reduce_under_signal,
    require_pid_namespace,
    seeded_reply,
    spawn,
    wait_held,
    wait_until,
)

MakeServer = Any
GRACE = 10.0  # seconds; Kubernetes' default terminationGracePeriodSeconds is 30, Slurm's KillWait 30
# No sleeps: the test server answers a fixed number of requests and holds the rest
# (hold_after), and a signal is sent once every slot of the client waits on it
# (wait_held), so the run can neither finish nor store more before the signal, however
# loaded the machine is; release() before the re-run.


def term(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> float:
    """SIGTERM (or `sig`); the seconds until the process exited."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=GRACE)
    except subprocess.TimeoutExpired:
        kill(proc)
        pytest.fail(f"still running {GRACE:g} s after SIGTERM")
    return time.monotonic() - t0


def last_line(log: Path) -> str:
    """The process's last output line; a clean stop has no traceback or error before it."""
    text = log.read_text()
    assert "Traceback" not in text and " ERROR " not in text and "was destroyed" not in text, text
    return text.strip().splitlines()[-1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("seed", "sig"), [(0, signal.SIGTERM), (1, signal.SIGTERM), (2, signal.SIGINT)])
def test_sigterm_judge_stores_finished_judgments(
    seed: int, sig: int, make_openai_server: MakeServer, run_job: Any, job_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    distinct_answers(run_job, out, make_openai_server(reply=seeded_reply).url)
    k = random.Random(seed).randint(3, 20)  # replies before the signal
    srv: OpenAIServer = make_openai_server(reply=lambda b: "Rating: [[6]]", latency=0.05, hold_after=k)
    # a batch far larger than the run: before the signal every judgment is still pending in memory
    args = ["judge", "--bench", "smoke", "--output", str(out), "--judge-model", "openai/test-model",
            "--base-url", srv.url, "--concurrency", "4", "--batch-size", "1000"]  # fmt: skip
    path = out / "smoke" / "model_judgment" / "test-model_single.jsonl"
    log = tmp_path / "judge.log"
    proc = spawn(args, {**job_env, **API_ENV}, log)
    wait_held(srv, k, 4, proc, log)
    answered = {q.messages[-1]["content"] for q in srv.chat_requests if q.end is not None}
    on_disk = count_lines(path)
    took = term(proc, sig)
    rows = check_judgments(path, 36, "partial")
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, log.read_text()
        msg = last_line(log)
        assert msg.startswith(f"terminated by SIGTERM; kept {len(rows)} judgments stored by this run"), msg
    else:  # Ctrl-C: click's "Aborted!", and the same judgments kept
        assert proc.returncode == 1 and last_line(log) == "Aborted!", log.read_text()
    assert on_disk < len(rows)  # the signal path stored what was pending
    # every reply received before the signal is kept, and nothing else
    assert len(rows) == k and {x["user_prompt"] for x in rows} == answered
    assert all(x["status"] == "ok" and x["score"] == 6 for x in rows)
    print(
        f"seed {seed}: {signal.Signals(sig).name} after {len(answered)} replies -> exit {proc.returncode} in {took:.2f}s, {len(rows)} kept"
    )
    srv.release()
    r = run_job(*args, env=RERUN_ENV)
    assert r.returncode == 0, r.stderr
    assert len(check_judgments(path, 36, "final")) == 36
    assert asked_by(srv, RERUN_KEY) == 36 - k  # only the rest were asked


@pytest.mark.timeout(120)
def test_sigterm_generate_api_keeps_committed_shards(
    make_openai_server: MakeServer, run_job: Any, job_env: dict[str, str], tmp_path: Path
) -> None:
    # shard 1 is 3 questions x 2 choices x 2 turns: its 12 replies, then shard 2 is held
    srv: OpenAIServer = make_openai_server(reply=seeded_reply, latency=0.05, hold_after=12)
    out = tmp_path / "runs"
    args = ["generate", "--bench", "smoke", "--model", "openai/test-model", "--base-url", srv.url,
            "--num-choices", "2", "--num-shards", "3", "--no-dedupe-greedy", "--concurrency", "2",
            "--output", str(out)]  # fmt: skip
    log = tmp_path / "gen.log"
    proc = spawn(args, {**job_env, **API_ENV}, log)
    first = out / "smoke/shards/test-model/shard-00000-of-00003.manifest.json"
    wait_held(srv, 12, 2, proc, log)  # inside shard 2: both its requests in flight
    assert first.exists()
    took = term(proc)
    assert proc.returncode == 143, log.read_text()
    assert last_line(log).startswith("terminated by SIGTERM; kept 1 of 3 shards committed"), log.read_text()
    assert check_shards(out, "smoke", "test-model") == ({0}, set())  # shard 2 left nothing behind
    assert not list(first.parent.glob(".*"))
    print(f"generate: exit 143 {took:.2f}s after SIGTERM")
    srv.release()
    r = run_job(*args, env=RERUN_ENV)
    assert r.returncode == 0, r.stderr
    assert asked_by(srv, RERUN_KEY) == 2 * 12  # shards 2 and 3 only: 12 conversations x 2 turns
    assert check_shards(out, "smoke", "test-model") == ({0, 1, 2}, set())
    assert run_job("reduce", "--bench", "smoke", "--output", str(out)).returncode == 0
    check_answers(out, "smoke", "test-model", 9, 2)


@pytest.mark.slow  # an hf run signalled mid-decode, then resumed: ~25 s loaded
@pytest.mark.timeout(180)
def test_sigterm_generate_hf_mid_generation(
    tiny_model: Path, run_job: Any, job_env: dict[str, str], tmp_path: Path
) -> None:
    """torch generating on the main thread: the signal is raised between two Python steps."""
    out = tmp_path / "runs"
    args = ["generate", "--bench", "smoke", "--model", f"hf/{tiny_model}", "--num-shards", "3",
            "--max-new-tokens", "800", "--output", str(out)]  # fmt: skip
    log = tmp_path / "gen.log"
    proc = spawn(args, job_env, log)
    # shard 1 has started: torch is decoding (3 rows x 2 turns x 800 forced tokens, seconds) when the signal comes
    assert wait_until(lambda: "shard 1/3: 3 conversations" in log.read_text(), 120, proc), log.read_text()
    took = term(proc)
    assert proc.returncode == 143, log.read_text()
    committed, orphans = check_shards(out, "smoke", "tiny")
    assert len(committed) < 3 and not orphans
    assert last_line(log).startswith(f"terminated by SIGTERM; kept {len(committed)} of 3 shards committed")
    assert took < 5, took
    r = run_job(*args)
    assert r.returncode == 0, r.stderr
    assert all(f"shard {i + 1}/3 already complete" in r.stderr for i in committed)
    assert check_shards(out, "smoke", "tiny") == ({0, 1, 2}, set())
    assert run_job("reduce", "--bench", "smoke", "--output", str(out)).returncode == 0
    check_answers(out, "smoke", "tiny", 9, 1)


@pytest.mark.timeout(120)
def test_sigterm_reduce_writes_all_or_nothing(
    many_shards: Shards, job_env: dict[str, str], run_job: Any, tmp_path: Path
) -> None:
    codes = []
    for seed in range(3):
        rc, log = reduce_under_signal(
            signal.SIGTERM, seed, many_shards, job_env, run_job, tmp_path / str(seed)
        )
        # 0: the signal came after the work; -15: after the interpreter restored the default
        # handler at exit (the signal is never sent before the CLI installed its handler)
        assert rc in (0, 143, -signal.SIGTERM), log
        if rc == 143:
            assert log.strip().splitlines()[-1].startswith("terminated by SIGTERM; kept"), log
        codes.append(rc)
    assert 143 in codes, codes  # at least one signal landed inside a reduce's run


def test_critical_section_defers_sigterm_to_its_end(tmp_path: Path) -> None:
    """In a fresh interpreter: a SIGTERM inside critical() lets the block finish, then raises
    Terminated once; a second SIGTERM while stopping is ignored."""
    code = """
import os, signal
from job import signals as terminate
from job.errors import Terminated
terminate.install()
done = []
try:
    with terminate.critical():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("block finished")
    done.append("not reached")
except Terminated as e:
    done.append(f"raised after the block: {e}")
print(done)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['block finished', 'raised after the block: terminated by SIGTERM']"


@pytest.mark.timeout(120)
def test_sigterm_reaches_job_as_pid_1(
    make_openai_server: MakeServer, run_job: Any, job_env: dict[str, str], tmp_path: Path
) -> None:
    """In a container `job` is PID 1 (docker ENTRYPOINT, the k8s generate pod's command), and
    PID 1 ignores every signal it has no handler for: without ours, `docker stop` and pod
    deletion wait out the grace period and SIGKILL."""
    require_pid_namespace()
    # control: a plain Python as PID 1 survives SIGTERM (the kernel drops it when kill()
    # is called, so the reply to a line sent afterwards proves it, with no sleep)
    ctl = subprocess.Popen(
        ["unshare", "-pf", "--mount-proc", sys.executable, "-c", "import sys; sys.stdin.readline(); print('alive')"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    os.kill(child_of(ctl.pid), signal.SIGTERM)
    alive, _ = ctl.communicate(b"\n", timeout=30)
    assert alive == b"alive\n", "SIGTERM stopped a handler-less PID 1: the test below proves nothing"
    out = tmp_path / "runs"
    distinct_answers(run_job, out, make_openai_server(reply=seeded_reply).url)
    srv: OpenAIServer = make_openai_server(reply=lambda b: "Rating: [[6]]", latency=0.05, hold_after=6)
    args = ["judge", "--bench", "smoke", "--output", str(out), "--judge-model", "openai/test-model",
            "--base-url", srv.url, "--concurrency", "4", "--batch-size", "1000"]  # fmt: skip
    log = tmp_path / "pid1.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            ["unshare", "-pf", "--mount-proc", *JOB, *args], env={**job_env, **API_ENV}, stdout=f, stderr=f
        )
    job_pid = child_of(proc.pid)
    wait_held(srv, 6, 4, proc, log)
    os.kill(job_pid, signal.SIGTERM)
    proc.wait(timeout=GRACE)
    assert proc.returncode == 143, log.read_text()
    rows = check_judgments(out / "smoke/model_judgment/test-model_single.jsonl", 36, "partial")
    assert last_line(log).startswith(f"terminated by SIGTERM; kept {len(rows)} judgments") and len(rows) == 6


@pytest.mark.timeout(120)
def test_sigterm_judge_on_s3_compacts_what_it_kept(
    s3: Any, make_openai_server: MakeServer, run_job: Any, job_env: dict[str, str], tmp_path: Path
) -> None:
    """On object storage the judgments go to part objects; a terminated judge still stores
    its pending judgments and folds the parts into the main object before it exits."""
    out = s3.uri("run")
    env = {**job_env, **API_ENV, **s3.env}
    distinct_answers(run_job, out, make_openai_server(reply=seeded_reply).url, env=s3.env)
    # 12 replies: two parts of 5 stored, 2 pending when the signal comes
    srv: OpenAIServer = make_openai_server(reply=lambda b: "Rating: [[6]]", latency=0.05, hold_after=12)
    args = ["judge", "--bench", "smoke", "--output", out, "--judge-model", "openai/test-model",
            "--base-url", srv.url, "--concurrency", "4", "--batch-size", "5"]  # fmt: skip
    log = tmp_path / "judge.log"
    proc = spawn(args, env, log)
    wait_held(srv, 12, 4, proc, log)
    term(proc)
    assert proc.returncode == 143, log.read_text()
    key = "run/smoke/model_judgment/test-model_single.jsonl"
    client = s3.client()
    listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=key)
    assert [o["Key"] for o in listed.get("Contents", [])] == [key]  # parts folded in and deleted
    body = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    (tmp_path / "kept.jsonl").write_bytes(body)
    rows = check_judgments(tmp_path / "kept.jsonl", 36, "partial")
    assert len(rows) == 12 and last_line(log).startswith(f"terminated by SIGTERM; kept {len(rows)} judgments")
    srv.release()
    r = run_job(*args, env={**RERUN_ENV, **s3.env})
    assert r.returncode == 0, r.stderr
    (tmp_path / "all.jsonl").write_bytes(client.get_object(Bucket=s3.bucket, Key=key)["Body"].read())
    assert len(check_judgments(tmp_path / "all.jsonl", 36, "final")) == 36
    assert asked_by(srv, RERUN_KEY) == 36 - len(rows)


def test_sigterm_mid_write_leaves_no_temp_file(tmp_path: Path) -> None:
    """Atomic local writes (temp file + rename) interrupted by SIGTERM: the destination is
    whole or absent and no hidden temp file stays behind."""
    code = f"""
import sys
from job import signals as terminate
from job.errors import Terminated
from job.storage import LocalStorage
terminate.install()
st = LocalStorage({str(tmp_path / "out")!r})
blob = b"x" * (32 << 20)
print("writing", flush=True)
try:
    for i in range(1000):
        st.write_bytes(f"f{{i % 3}}.bin", blob)
except Terminated:
    sys.exit(143)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"writing\n"
    # a first file in place, not a fixed sleep (a loaded disk may take longer): the signal
    # then comes during a later write
    assert wait_until(lambda: (tmp_path / "out" / "f0.bin").exists(), 60, proc)
    term(proc)
    assert proc.returncode == 143, proc.stderr.read() if proc.stderr else ""
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names and all(not n.startswith(".") for n in names), names
    assert all((tmp_path / "out" / n).stat().st_size == 32 << 20 for n in names)


@pytest.mark.timeout(120)
def test_sigterm_job_run_while_judging(
    make_openai_server: MakeServer, run_job: Any, job_env: dict[str, str], tmp_path: Path
) -> None:
    """`job run` (the checkpoint gate in CI, a Slurm job) preempted while it judges: exit 143,
    no report and no gate verdict, the judgments kept; the re-run asks only the rest."""
    out = tmp_path / "runs"
    srv: OpenAIServer = make_openai_server(reply=lambda b: "Rating: [[6]]", latency=0.05, hold_after=5)
    args = ["run", "--bench", "smoke", "--model", "mock/echo", "--output", str(out),
            "--judge-model", "openai/test-model", "--judge-base-url", srv.url, "--judge-concurrency", "4"]  # fmt: skip
    path = out / "smoke" / "model_judgment" / "test-model_single.jsonl"
    log = tmp_path / "run.log"
    proc = spawn(args, {**job_env, **API_ENV}, log)
    wait_held(srv, 5, 4, proc, log)
    took = term(proc)
    assert proc.returncode == 143, log.read_text()
    rows = check_judgments(path, 18, "partial")
    assert last_line(log).startswith(f"terminated by SIGTERM; kept {len(rows)} judgments"), log.read_text()
    assert len(rows) == 5
    assert "GATE" not in log.read_text() and "RESULT" not in log.read_text()
    assert not (out / "smoke" / "reports").exists()
    print(f"job run: SIGTERM while judging -> exit 143 in {took:.2f}s, {len(rows)} of 18 judgments kept")
    srv.release()
    r = run_job(*args, env=RERUN_ENV)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("RESULT"), r.stdout
    assert len(check_judgments(path, 18, "final")) == 18
    assert asked_by(srv, RERUN_KEY) == 18 - len(rows)
