"""S3 faults under the real CLI: generate -> reduce -> judge -> report on s3:// through a
fault-injecting proxy in front of a real moto server (tests/faults/s3_fault_proxy.py).

Transient errors must be absorbed by botocore's bounded retries (JOB_S3_MAX_ATTEMPTS);
persistent ones end in one `error:` line naming the object and the endpoint, exit 2,
with nothing uncommitted trusted; a re-run after the fault ends completes with every
record exactly once, equal to a fault-free local run.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from moto_s3 import BUCKET, S3Env, start_moto

from faults.s3_fault_proxy import FaultProxy, always, random_faults
from faults.storage_pipeline import (
    ANSWERS,
    GEN,
    JUDGE,
    JUDGMENTS,
    REDUCE,
    REPORT,
    SCORES,
    canon_judgments,
    error_line,
    lines,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def proxy(s3: S3Env) -> Any:
    p = FaultProxy(s3.endpoint).start()
    yield p
    p.stop()


def _env(s3: S3Env, proxy: FaultProxy, attempts: int = 3) -> dict[str, str]:
    return {**s3.env, "AWS_ENDPOINT_URL_S3": proxy.url, "JOB_S3_MAX_ATTEMPTS": str(attempts)}


def _check_complete(s3: S3Env, prefix: str, reference: dict[str, Any], report: bool = True) -> None:
    keys = s3.list_keys(prefix)
    assert not [k for k in keys if ".parts/" in k or "write-check" in k], keys
    assert lines(s3.get(f"{prefix}{ANSWERS}")) == reference["answers"]
    if report:
        assert canon_judgments(s3.get(f"{prefix}{JUDGMENTS}")) == reference["judgments"]
        assert s3.get(f"{prefix}{SCORES}") == reference["scores"]


def test_transient_faults_are_absorbed_by_retries(
    run_job: Any, s3: S3Env, proxy: FaultProxy, storage_reference: dict[str, Any]
) -> None:
    # 20% of all requests fail (500, 503 SlowDown, dropped before or after the upstream)
    proxy.decide = random_faults(seed=8, rate=0.2)
    out, env = s3.uri("flaky") + "/", _env(s3, proxy, attempts=10)
    t0 = time.monotonic()
    for args in (GEN, REDUCE, JUDGE, REPORT):
        res = run_job(*args, "--output", out, env=env)
        assert res.returncode == 0, res.stderr
    kinds = {k for _, _, k in proxy.faults}
    print(f"{len(proxy.faults)} faults in {proxy.count} requests, {time.monotonic() - t0:.1f}s")
    assert len(proxy.faults) >= 10 and kinds == {"500", "503", "drop", "drop_after"}, proxy.faults
    assert {m for m, _, _ in proxy.faults} >= {"GET", "PUT"}
    _check_complete(s3, "flaky/", storage_reference)


def test_persistent_put_failure_commits_nothing_and_rerun_completes(
    run_job: Any, s3: S3Env, proxy: FaultProxy, storage_reference: dict[str, Any]
) -> None:
    # the second shard's commit marker can never be written
    proxy.decide = always("503", {"PUT"}, "shard-00001-of-00003.manifest.json")
    out, env = s3.uri("put"), _env(s3, proxy)
    line = error_line(run_job(*GEN, "--output", out, env=env))
    uri = f"s3://{BUCKET}/put/smoke/shards/echo/shard-00001-of-00003.manifest.json"
    assert line == (
        f"error: cannot write {uri}: S3 error SlowDown (HTTP 503) from {proxy.url} after 3 attempts; "
        "try again later or raise JOB_S3_MAX_ATTEMPTS"
    )
    assert len(proxy.faults) == 3  # bounded: exactly JOB_S3_MAX_ATTEMPTS tries
    manifests = [k for k in s3.list_keys("put/") if k.endswith(".manifest.json")]
    assert manifests == ["put/smoke/shards/echo/shard-00000-of-00003.manifest.json"]
    # the uncommitted shard object is not trusted: reduce names what is missing and writes nothing
    line = error_line(run_job(*REDUCE, "--output", out, env=env))
    assert "shards 1, 2 of 3 not committed" in line
    assert not [k for k in s3.list_keys("put/") if "model_answer" in k]

    proxy.heal()
    res = run_job(*GEN, "--output", out, env=env)
    assert res.returncode == 0 and "shard 1/3 already complete" in res.stderr, res.stderr
    assert run_job(*REDUCE, "--output", out, env=env).returncode == 0
    _check_complete(s3, "put/", storage_reference, report=False)


def test_persistent_get_failure_in_reduce_writes_nothing(
    run_job: Any, s3: S3Env, proxy: FaultProxy, storage_reference: dict[str, Any]
) -> None:
    out, env = s3.uri("get"), _env(s3, proxy)
    assert run_job(*GEN, "--output", out, env=env).returncode == 0
    proxy.decide = always("500", {"GET"}, "shard-00002-of-00003.jsonl")
    line = error_line(run_job(*REDUCE, "--output", out, env=env))
    uri = f"s3://{BUCKET}/get/smoke/shards/echo/shard-00002-of-00003.jsonl"
    assert line.startswith(f"error: cannot read {uri}: S3 error InternalError (HTTP 500) from {proxy.url}")
    assert not [k for k in s3.list_keys("get/") if "model_answer" in k]
    # a dropped connection on every try reads as an unreachable endpoint
    proxy.decide = always("drop", {"GET"}, "/shards/")
    line = error_line(run_job(*REDUCE, "--output", out, env=env))
    assert f"S3 endpoint {proxy.url} unreachable (ConnectionClosedError, retries exhausted)" in line
    proxy.heal()
    assert run_job(*REDUCE, "--output", out, env=env).returncode == 0
    _check_complete(s3, "get/", storage_reference, report=False)


def test_endpoint_outage_mid_judge_keeps_stored_groups(
    run_job: Any, s3: S3Env, proxy: FaultProxy, storage_reference: dict[str, Any]
) -> None:
    out, env = s3.uri("judge") + "/", _env(s3, proxy)
    for args in (GEN, REDUCE):
        assert run_job(*args, "--output", out, env=env).returncode == 0
    parts = []

    def outage_at_third_part(method: str, path: str, n: int) -> str | None:
        # the endpoint goes away (listener closed: connection refused) as group 3 is stored
        if method == "PUT" and ".parts/" in path:
            parts.append(path)
            if len(parts) == 3:
                threading.Thread(target=proxy.stop).start()
                return "drop"
        return None

    proxy.decide = outage_at_third_part
    line = error_line(run_job(*JUDGE, "--output", out, env=env))
    assert line.startswith(f"error: cannot write s3://{BUCKET}/judge/{JUDGMENTS}.parts/part-")
    assert f"S3 endpoint {proxy.url} unreachable" in line
    proxy.heal()
    proxy.start()  # same port, moto's state untouched
    stored = [k for k in s3.list_keys("judge/") if ".parts/" in k]
    assert len(stored) == 2  # the groups stored before the outage, each a whole object
    assert sum(len(lines(s3.get(k))) for k in stored) == 8
    res = run_job(*JUDGE, "--output", out, env=env)
    assert res.returncode == 0, res.stderr
    assert "28 ok; 8 games were already stored" in res.stdout
    assert run_job(*REPORT, "--output", out, env=env).returncode == 0
    _check_complete(s3, "judge/", storage_reference)


def test_moto_killed_mid_generate_fails_fast_and_rerun_completes(
    run_job: Any, job_env: dict[str, str], storage_reference: dict[str, Any], tmp_path: Path
) -> None:
    from moto_s3 import s3_env_vars

    with start_moto() as moto:
        s3 = S3Env(moto, BUCKET, s3_env_vars(moto.endpoint, str(tmp_path)))
        s3.client().create_bucket(Bucket=BUCKET)
        proxy = FaultProxy(moto.endpoint).start()

        def kill_moto(method: str, path: str, n: int) -> None:
            # the server dies as the second shard is being written (state lost with it)
            if method == "PUT" and "shard-00001-of-00003.jsonl" in path and moto.proc.poll() is None:
                moto.proc.kill()
                moto.proc.wait()
            return None

        proxy.decide = kill_moto
        t0 = time.monotonic()
        try:
            line = error_line(run_job(*GEN, "--output", s3.uri("run"), env=_env(s3, proxy)))
        finally:
            proxy.stop()
        assert time.monotonic() - t0 < 60
        assert line.startswith(
            f"error: cannot write s3://{BUCKET}/run/smoke/shards/echo/shard-00001-of-00003.jsonl: "
            f"S3 endpoint {proxy.url} unreachable"
        ), line
    # a fresh server (moto keeps nothing): the re-run does the whole job
    with start_moto() as moto:
        s3 = S3Env(moto, BUCKET, s3_env_vars(moto.endpoint, str(tmp_path)))
        s3.client().create_bucket(Bucket=BUCKET)
        for args in (GEN, REDUCE):
            assert run_job(*args, "--output", s3.uri("run"), env=s3.env).returncode == 0
        _check_complete(s3, "run/", storage_reference, report=False)


def _lost_reply_once(path_contains: str) -> Any:
    """The first PUT of each matching object lands but its reply is lost (botocore retries)."""
    seen: set[str] = set()
    lock = threading.Lock()

    def decide(method: str, path: str, n: int) -> str | None:
        with lock:
            if method != "PUT" or path_contains not in path or path in seen:
                return None
            seen.add(path)
            return "drop_after"

    return decide


def test_a_lost_reply_to_a_conditional_put_is_still_our_commit(
    run_job: Any, s3: S3Env, proxy: FaultProxy, storage_reference: dict[str, Any]
) -> None:
    # The retried If-None-Match PUT of the answers and of the manifest gets 412 from our own
    # first attempt: that is our commit, not another task's (the data was once deleted as a loser's).
    proxy.decide = _lost_reply_once("/shards/")
    out, env = s3.uri("lost") + "/", _env(s3, proxy)
    for args in (GEN, REDUCE):
        res = run_job(*args, "--output", out, env=env)
        assert res.returncode == 0, res.stderr
        assert "committed by another task" not in res.stderr
    assert len(proxy.faults) == 6, proxy.faults  # 3 answers + 3 manifests
    shard_files = sorted(k.rsplit("/", 1)[1] for k in s3.list_keys("lost/smoke/shards/"))
    assert shard_files == [
        f"shard-0000{i}-of-00003{ext}" for i in range(3) for ext in (".jsonl", ".manifest.json")
    ]
    _check_complete(s3, "lost/", storage_reference, report=False)
