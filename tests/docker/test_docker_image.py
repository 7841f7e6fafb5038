"""Build docker/Dockerfile for real and run `job` inside the image.

Docker Hub is unreachable here, so the base is a local Debian image made with debootstrap
(tests/docker/make_base_image.sh, cached) passed as BASE_IMAGE. The test image uses the
`minimal` dependency set (no torch: mock models and API backends) to keep CI time down;
MTBENCH_DOCKER_TEST_DEPS=cpu builds the CPU-torch set instead (and also runs hf-tiny).

In CI (CI=true) a missing Docker daemon is a failure; locally the tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NoReturn

import ci_gate
import pytest

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("MTBENCH_DOCKER_BASE_IMAGE", "localhost/mtbench-debian-base:bookworm")
DEPS = os.environ.get("MTBENCH_DOCKER_TEST_DEPS", "minimal")
TAG = f"mtbench-job:pytest-{DEPS}"
# a fixed fake revision: constant across runs, so the layer cache still hits
REVISION = "0123456789abcdef0123456789abcdef01234567"


def unavailable(reason: str) -> NoReturn:
    ci_gate.unavailable(reason, "docker tests must run in CI")


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
    return r


def build(tag: str, *build_args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    args = ["build", "--force-rm", "--network", "host", "-f", "docker/Dockerfile", "-t", tag]
    for a in build_args:
        args += ["--build-arg", a]
    r = subprocess.run(["docker", *args, "."], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return r


@pytest.fixture(scope="session")
def docker_daemon() -> None:
    if shutil.which("docker") is None:
        unavailable("no docker client (.ci/setup.d/30-docker.sh installs docker.io)")
    r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        unavailable(
            f"docker daemon not reachable: {r.stderr.strip()[-300:]} (start it: .ci/setup.d/30-docker.sh)"
        )


@pytest.fixture(scope="session")
def base_image(docker_daemon: None) -> str:
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    if shutil.which("debootstrap") is None:
        unavailable(f"no {BASE_IMAGE} and no debootstrap to build it")
    t0 = time.monotonic()
    r = subprocess.run(
        ["bash", str(REPO / "tests/docker/make_base_image.sh"), BASE_IMAGE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, f"base image build failed:\n{r.stdout}\n{r.stderr}"
    print(f"\nbase image {BASE_IMAGE}: {time.monotonic() - t0:.1f} s")
    return BASE_IMAGE


def common_args(base: str) -> list[str]:
    args = [f"BASE_IMAGE={base}", f"JOB_DEPS={DEPS}", f"JOB_GIT_REVISION={REVISION}"]
    # the CPU set needs a reachable torch index (download.pytorch.org is not reachable here)
    if "MTBENCH_DOCKER_TORCH_INDEX_URL" in os.environ:
        args.append(f"TORCH_INDEX_URL={os.environ['MTBENCH_DOCKER_TORCH_INDEX_URL']}")
    return args


@pytest.fixture(scope="session")
def image(base_image: str) -> Iterator[str]:
    t0 = time.monotonic()
    r = build(TAG, *common_args(base_image), "SKIP_BENCH_PULL=1")
    took = time.monotonic() - t0
    assert r.returncode == 0, f"docker build failed ({took:.0f} s):\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    size = docker("image", "inspect", "-f", "{{.Size}}", TAG).stdout.strip()
    print(f"\nimage {TAG}: build {took:.1f} s, {int(size) / 1e6:.0f} MB")
    yield TAG


def test_help(image: str) -> None:
    r = docker("run", "--rm", "--network", "none", image, "--help")
    for cmd in ("generate", "reduce", "bench"):
        assert cmd in r.stdout, r.stdout
    # default CMD is --help too
    assert docker("run", "--rm", "--network", "none", image).stdout == r.stdout


def test_runs_as_non_root(image: str) -> None:
    user = docker("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip()
    assert user and user.split(":")[0] not in {"0", "root"}, f"image user {user!r}"
    r = docker("run", "--rm", "--network", "none", "--entrypoint", "id", image)
    assert "uid=0(" not in r.stdout and "uid=" in r.stdout, r.stdout
    # the installed code is not writable by that user
    r = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "bash",
        image,
        "-c",
        "touch /opt/venv/x",
        check=False,
    )
    assert r.returncode != 0


def test_git_revision_from_build_arg(image: str) -> None:
    env = docker("image", "inspect", "-f", "{{json .Config.Env}}", image).stdout
    assert f"JOB_GIT_REVISION={REVISION}" in json.loads(env)
    label = docker(
        "image", "inspect", "-f", '{{index .Config.Labels "org.opencontainers.image.revision"}}', image
    )
    assert label.stdout.strip() == REVISION


def smoke_script(commands: str) -> str:
    steps = [
        # HF cache dirs must be writable under a read-only root (emptyDir/tmpfs at /cache)
        'mkdir -p "$HF_HOME/hub" && touch "$HF_HOME/hub/probe"',
        "job generate --bench smoke --model mock/echo --num-choices 2 --num-shards 2",
        "job reduce --bench smoke",
    ]
    if DEPS == "cpu":
        steps.append("job generate --bench smoke --model hf-tiny --num-choices 1 --max-new-tokens 8")
    # judge/report only where the image has them (other areas add commands over time)
    if " judge " in commands:
        steps.append("job judge --bench smoke --judge-model 'mock/fixed:[[7]]' --judge-name mockjudge")
    if " report " in commands:
        steps.append("job report --bench smoke")
    return " && ".join(steps)


def test_mock_smoke_run_read_only_root(image: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # the container user (uid 1000) writes here
    help_out = docker("run", "--rm", "--network", "none", image, "--help").stdout
    commands = (
        " " + " ".join(line.split()[0] for line in help_out.splitlines() if line.startswith("  ")) + " "
    )
    script = smoke_script(commands)
    # like the k8s pods: read-only root, emptyDir-like tmpfs at /cache and /tmp, no network
    r = docker(
        "run", "--rm", "--network", "none", "--read-only",
        "--tmpfs", "/tmp:rw,mode=1777", "--tmpfs", "/cache:rw,mode=1777",
        "-v", f"{work}:/work", "--entrypoint", "bash", image, "-c", script,
        timeout=300,
    )  # fmt: skip
    print(r.stderr[-2000:])

    runs = work / "runs" / "smoke"
    answers = [json.loads(line) for line in (runs / "model_answer" / "echo.jsonl").read_text().splitlines()]
    questions = [
        json.loads(line) for line in (REPO / "bench_data/smoke/question.jsonl").read_text().splitlines()
    ]
    assert [a["question_id"] for a in answers] == sorted(q["question_id"] for q in questions)
    by_id = {q["question_id"]: q for q in questions}
    for a in answers:
        assert [c["index"] for c in a["choices"]] == [0, 1]
        for c in a["choices"]:
            assert c["turns"] == [f"echo: {t}" for t in by_id[a["question_id"]]["turns"]]
    # files belong to the non-root container user
    assert (runs / "model_answer" / "echo.jsonl").stat().st_uid != 0
    # provenance: the build arg reaches every shard manifest
    manifests = sorted((runs / "shards" / "echo").glob("*.manifest.json"))
    assert len(manifests) == 2
    for m in manifests:
        assert json.loads(m.read_text())["git_revision"] == REVISION

    if " judge " in commands:
        judgments = list((runs / "model_judgment").glob("mockjudge_single.jsonl"))
        assert judgments, sorted(p.name for p in runs.rglob("*"))
        rows = [json.loads(line) for line in judgments[0].read_text().splitlines()]
        assert len(rows) == len(questions) * 2 * 2  # questions x turns x choices
        assert {r["score"] for r in rows} == {7}
    if " report " in commands:
        report = json.loads((runs / "reports" / "report.json").read_text())
        assert (runs / "reports" / "report.html").is_file()
        # the default JOB_EXTRAS=report installs matplotlib: the charts are there
        assert "charts need matplotlib" not in r.stderr
        assert list((runs / "reports").glob("*.png")), sorted(p.name for p in (runs / "reports").iterdir())
        assert report["provenance"]["git_revision"] == REVISION
        assert "echo" in json.dumps(report["scores"])


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_dir(root: Path) -> Iterator[str]:
    """A static HTTP mirror of root on 127.0.0.1 (a FastChat data/ layout for --base-url)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def corrupt_copy(src: Path, dst: Path, rel: str) -> None:
    shutil.copytree(src, dst)
    target = dst / rel
    target.write_bytes(target.read_bytes().replace(b'"turns"', b'"turnz"', 1))


def test_bench_data_pulled_and_checksummed_at_build(
    image: str, base_image: str, shared_bench_data: Path, tmp_path: Path
) -> None:
    """SKIP_BENCH_PULL=0 path, offline: `job bench pull --base-url` from a mirror on 127.0.0.1
    (the build runs with --network host); a corrupted mirror file fails the build."""
    benches = "BENCHES=mt_bench japanese_mt_bench"
    tag = f"{TAG}-data"
    with serve_dir(shared_bench_data) as url:
        r = build(tag, *common_args(base_image), benches, f"JOB_BENCH_BASE_URL={url}")
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
    try:
        # the runtime user reads and re-verifies the baked data (read-only root)
        v = docker(
            "run",
            "--rm",
            "--network",
            "none",
            "--read-only",
            tag,
            "bench",
            "verify",
            "mt_bench",
            "japanese_mt_bench",
        )
        lines = v.stdout.splitlines()
        assert len(lines) == 7 and all(line.startswith("ok ") for line in lines), v.stdout
        assert all("/opt/mtbench/bench_data/" in line for line in lines)
    finally:
        docker("rmi", tag, check=False)

    bad = tmp_path / "mirror"
    corrupt_copy(shared_bench_data, bad, "mt_bench/question.jsonl")
    with serve_dir(bad) as url:
        r = build(f"{tag}-bad", *common_args(base_image), benches, f"JOB_BENCH_BASE_URL={url}")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert "mt_bench/question.jsonl: sha256 mismatch" in out, out[-3000:]
