"""`job generate --executor ray` on a real local Ray, in a private network namespace.

One module-scoped run (Ray startup is slow): the Ray executor writes 4 shards with 2
actors, a re-run, the local (array) path into another root for comparison, then
`job reduce`. The tests below each check one property of that run.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from ray_netns import JOB, in_netns, job_netns

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

NUM_SHARDS, REPLICAS, FIRST_N, CHOICES = 4, 2, 6, 2
SHARDS = Path("mt_bench/shards/tiny")


@dataclass
class Run:
    root: Path
    ray_out: Path
    local_out: Path
    ray_session: Path
    first: subprocess.CompletedProcess[str]
    first_s: float
    again: subprocess.CompletedProcess[str]
    again_s: float
    mtimes: dict[str, float]
    reduce: subprocess.CompletedProcess[str]
    local: subprocess.CompletedProcess[str]


def _gen_args(tiny_model: Path, bench_data: Path, out: Path, first_n: int = FIRST_N) -> list[str]:
    return [
        "generate",
        "--bench",
        "mt_bench",
        "--bench-data",
        str(bench_data),
        "--model",
        f"hf/{tiny_model}",
        "--model-name",
        "tiny",
        "--first-n",
        str(first_n),
        "--num-choices",
        str(CHOICES),
        "--max-new-tokens",
        "8",
        "--output",
        str(out),
    ]


def _mtimes(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime for p in sorted((out / SHARDS).iterdir())}


@pytest.fixture(scope="module")
def run(
    netns: None,
    tiny_model: Path,
    shared_bench_data: Path,
    ray_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Run:
    root = tmp_path_factory.mktemp("ray-run")
    ray_out, local_out = root / "ray-out", root / "local-out"
    args = _gen_args(tiny_model, shared_bench_data, ray_out)
    ray_args = [*args, "--executor", "ray", "--num-shards", str(NUM_SHARDS), "--num-replicas", str(REPLICAS)]
    sessions = set(Path(ray_env["RAY_TMPDIR"]).glob("ray/session_2*"))
    t0 = time.monotonic()
    first = job_netns(ray_args, ray_env, root)
    first_s = time.monotonic() - t0
    (ray_session,) = set(Path(ray_env["RAY_TMPDIR"]).glob("ray/session_2*")) - sessions
    assert first.returncode == 0, first.stderr[-4000:]
    mtimes = _mtimes(ray_out)
    time.sleep(0.05)
    t0 = time.monotonic()
    again = job_netns(ray_args, ray_env, root)
    again_s = time.monotonic() - t0
    reduce = subprocess.run(
        [*JOB, "reduce", "--bench", "mt_bench", "--output", str(ray_out)],
        capture_output=True,
        text=True,
        env=ray_env,
        cwd=root,
        timeout=120,
    )
    # the array path: the same plan, shards run by the local executor (one process)
    local_args = [*_gen_args(tiny_model, shared_bench_data, local_out), "--num-shards", str(NUM_SHARDS)]
    local = subprocess.run(
        [*JOB, *local_args], capture_output=True, text=True, env=ray_env, cwd=root, timeout=240
    )
    assert local.returncode == 0, local.stderr[-4000:]
    return Run(root, ray_out, local_out, ray_session, first, first_s, again, again_s, mtimes, reduce, local)


@pytest.mark.slow  # a real Ray cluster (module-scoped run): ~35 s to start loaded
def test_ray_runs_on_loopback_only(run: Run) -> None:
    log = run.first.stderr
    assert "Started a local Ray instance" in log
    # the node registered itself on 127.0.0.1: nothing of Ray listened beyond loopback
    assert "'node:127.0.0.1'" in log, log[-3000:]
    print(f"ray generate: {run.first_s:.1f}s wall; re-run {run.again_s:.1f}s", file=sys.stderr)


@pytest.mark.slow
def test_every_question_choice_answered_exactly_once(run: Run, shared_bench_data: Path) -> None:
    assert run.reduce.returncode == 0, run.reduce.stderr[-3000:]
    lines = (run.ray_out / "mt_bench/model_answer/tiny.jsonl").read_text().splitlines()
    answers = [json.loads(line) for line in lines]
    questions = [
        json.loads(q) for q in (shared_bench_data / "mt_bench/question.jsonl").read_text().splitlines()
    ]
    expected = Counter((q["question_id"], c) for q in questions[:FIRST_N] for c in range(CHOICES))
    got = Counter((a["question_id"], ch["index"]) for a in answers for ch in a["choices"])
    assert got == expected
    assert max(got.values()) == 1
    for a in answers:
        for ch in a["choices"]:
            assert len(ch["turns"]) == 2 and all(isinstance(t, str) for t in ch["turns"])


@pytest.mark.slow
def test_shards_equal_the_array_path(run: Run) -> None:
    ray_files = sorted(p.name for p in (run.ray_out / SHARDS).iterdir())
    local_files = sorted(p.name for p in (run.local_out / SHARDS).iterdir())
    assert ray_files == local_files
    assert len([f for f in ray_files if f.endswith(".manifest.json")]) == NUM_SHARDS
    volatile = {"started_at", "finished_at", "wall_seconds", "host", "git_revision"}  # provenance
    for name in ray_files:
        a, b = run.ray_out / SHARDS / name, run.local_out / SHARDS / name
        if name.endswith(".manifest.json"):
            ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
            assert ma.keys() == mb.keys()
            assert {k: v for k, v in ma.items() if k not in volatile} == {
                k: v for k, v in mb.items() if k not in volatile
            }
        else:
            ia = [json.loads(line) for line in a.read_text().splitlines()]
            ib = [json.loads(line) for line in b.read_text().splitlines()]
            assert [x.keys() for x in ia] == [y.keys() for y in ib]
            # same seeds, same batches, one thread each: the answers are identical too
            assert [dict(x, tstamp=0) for x in ia] == [dict(y, tstamp=0) for y in ib], name


@pytest.mark.slow
def test_model_loaded_once_per_actor(run: Run) -> None:
    summary = re.findall(
        r"ray replica (\d+): pid (\d+) on \S+, model loaded (\d+)x \([\d.]+s\), shards \[([\d,]*)\]",
        run.first.stderr,
    )
    assert len(summary) == REPLICAS, run.first.stderr[-3000:]
    assert {loads for _, _, loads, _ in summary} == {"1"}
    assert len({pid for _, pid, _, _ in summary}) == REPLICAS  # two separate processes
    ran = sorted(int(s) for *_, shards in summary for s in shards.split(",") if s)
    assert ran == list(range(1, NUM_SHARDS + 1))  # every shard once, spread over the queue
    # independent evidence: the hf backend's own "loading" line, in the actors' log files
    worker_logs = list(run.ray_session.glob("logs/worker-*.err"))
    assert worker_logs, f"no Ray worker logs under {run.ray_session}"
    loads = sum(p.read_text(errors="replace").count("job.backends.hf: loading") for p in worker_logs)
    assert loads == REPLICAS


@pytest.mark.slow
def test_rerun_is_a_noop(run: Run) -> None:
    assert run.again.returncode == 0, run.again.stderr[-3000:]
    assert run.again.stderr.count("already complete") == NUM_SHARDS
    assert "Started a local Ray" not in run.again.stderr  # nothing to do: Ray is not even started
    assert _mtimes(run.ray_out) == run.mtimes


# runs inside the namespace: the bucket, and afterwards a copy of every object to a local dir
S3_HELPER = """
import sys, pathlib, time, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[2])
for _ in range(100):
    try:
        s3.list_buckets(); break
    except Exception:
        time.sleep(0.1)
if sys.argv[1] == "mkbucket":
    s3.create_bucket(Bucket="mtbench-ray")
else:
    for obj in s3.list_objects_v2(Bucket="mtbench-ray").get("Contents", []):
        dest = pathlib.Path(sys.argv[3], obj["Key"]); dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(s3.get_object(Bucket="mtbench-ray", Key=obj["Key"])["Body"].read())
"""
SECRET = "ray-test-secret/DO-NOT-LEAK+0123456789"


@pytest.mark.slow  # a second Ray cluster with S3: ~35 s loaded
def test_attach_to_running_cluster_with_s3(
    netns: None, tiny_model: Path, shared_bench_data: Path, ray_env: dict[str, str], tmp_path: Path
) -> None:
    """RAY_ADDRESS: attach to a `ray start` head (as under KubeRay), write the shards to S3
    (moto, inside the namespace too); a broken model fails cleanly with one error line."""
    endpoint = "http://127.0.0.1:5999"
    good = [*_gen_args(tiny_model, shared_bench_data, tmp_path, first_n=2), "--executor", "ray"]
    good[good.index("--output") + 1] = "s3://mtbench-ray/run-1"
    good += ["--num-shards", "2", "--s3-endpoint-url", endpoint]  # reaches the actors only by forwarding
    bad = [*_gen_args(tmp_path / "no-such-model", shared_bench_data, tmp_path / "bad-out", first_n=2)]
    bad += ["--executor", "ray", "--num-shards", "2"]
    reduce = [
        "reduce",
        "--bench",
        "mt_bench",
        "--output",
        "s3://mtbench-ray/run-1",
        "--s3-endpoint-url",
        endpoint,
    ]
    (tmp_path / "s3_helper.py").write_text(S3_HELPER)

    def cmd(args: list[str]) -> str:
        return " ".join(f"'{a}'" for a in [*JOB, *args])

    bindir = Path(sys.executable).parent
    script = f"""
export AWS_ACCESS_KEY_ID=AKIARAYTEST000000042 AWS_SECRET_ACCESS_KEY='{SECRET}' AWS_DEFAULT_REGION=us-east-1
'{sys.executable}' -m moto.server -H 127.0.0.1 -p 5999 >moto.log 2>&1 &
moto=$!
'{bindir}/ray' start --head --port 6399 --num-cpus 2 --include-dashboard=false \
  --object-store-memory 268435456 --disable-usage-stats >ray-start.log 2>&1
trap 'kill $moto; "{bindir}/ray" stop --force >/dev/null 2>&1' EXIT
'{sys.executable}' s3_helper.py mkbucket {endpoint}
export RAY_ADDRESS=127.0.0.1:6399
set +e
{cmd(bad)} >bad.out 2>bad.err; echo $? >bad.rc
{cmd(good)} >good.out 2>good.err; echo $? >good.rc
{cmd(reduce)} >reduce.out 2>reduce.err; echo $? >reduce.rc
'{sys.executable}' s3_helper.py dump {endpoint} s3-copy
"""
    res = in_netns(script, ray_env, tmp_path, timeout=300)
    assert res.returncode == 0, (res.stderr, (tmp_path / "ray-start.log").read_text(errors="replace"))
    bad_err = (tmp_path / "bad.err").read_text()
    assert (tmp_path / "bad.rc").read_text().strip() == "2", bad_err[-3000:]
    error_lines = [line for line in bad_err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "2 of 2 shards failed" in error_lines[0], bad_err[-3000:]
    assert "does not exist" in error_lines[0] and "re-run" in error_lines[0]
    assert not list((tmp_path / "bad-out").rglob("*.manifest.json"))

    good_err = (tmp_path / "good.err").read_text()
    assert (tmp_path / "good.rc").read_text().strip() == "0", good_err[-3000:]
    assert "ray: attached" in good_err and "Started a local Ray" not in good_err
    assert (tmp_path / "reduce.rc").read_text().strip() == "0", (tmp_path / "reduce.err").read_text()[-3000:]
    copy = tmp_path / "s3-copy" / "run-1" / "mt_bench"
    manifests = sorted(p.name for p in (copy / "shards" / "tiny").glob("*.manifest.json"))
    assert manifests == [f"shard-0000{i}-of-00002.manifest.json" for i in range(2)]
    answers = [json.loads(line) for line in (copy / "model_answer" / "tiny.jsonl").read_text().splitlines()]
    assert sorted((a["question_id"], c["index"]) for a in answers for c in a["choices"]) == sorted(
        (a["question_id"], c) for a in answers for c in range(CHOICES)
    )
    assert len(answers) == 2
    # the secret was in the cluster's environment, never in an artifact or a log
    logs = [good_err, bad_err, *(p.read_text(errors="replace") for p in (tmp_path / "s3-copy").rglob("*.*"))]
    assert not [t for t in logs if SECRET in t]


def test_job_help_does_not_import_ray() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from job.cli import cli; "
        "r = CliRunner().invoke(cli, ['generate', '--help']); assert r.exit_code == 0, r.output; "
        "assert '--executor' in r.output; r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0; "
        "bad = [m for m in ('ray', 'torch', 'vllm') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_unreachable_ray_address_fails_fast(ray_env: dict[str, str], tmp_path: Path) -> None:
    """A wrong RAY_ADDRESS is one clear error line within seconds (ray.init alone retries for minutes)."""
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(ray_env, RAY_ADDRESS=f"127.0.0.1:{port}")
    args = [
        "generate",
        "--executor",
        "ray",
        "--model",
        "mock/echo",
        "--bench",
        "smoke",
        "--output",
        str(tmp_path),
    ]
    t0 = time.monotonic()
    res = subprocess.run([*JOB, *args], capture_output=True, text=True, env=env, timeout=60)
    assert time.monotonic() - t0 < 30
    assert res.returncode == 2, res.stderr
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:{port}")
    )
    assert not list(tmp_path.rglob("*.manifest.json"))
