"""k8s/: strict schema validation, the rules the schema misses, and the manifest's own
commands and environment really driving `job` (against a real S3 endpoint, moto)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from faults.jobproc import child_of, kill, require_pid_namespace, wait_until
from moto_s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Env

from job.records import Answer, parse_records

K8S = Path(__file__).resolve().parents[2] / "k8s"
MANIFEST = K8S / "mtbench-job.yaml"
# a current release and the oldest one we support (backoffLimitPerIndex needs >= 1.28)
K8S_VERSIONS = ["1.37.0", "1.31.0"]
VALIDATE = [sys.executable, "-m", "kubernetes_validate"]


def _docs(path: Path = MANIFEST) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d]


def _by_name(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name)


def _manifests() -> list[Path]:
    """Every manifest under k8s/ (k8s/ray/ too), not kustomize's own files."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def _validate(path: Path | str, version: str, strict: bool = True, stdin: str | None = None):
    args = [*VALIDATE, *(["--strict"] if strict else []), "-k", version, str(path)]
    return subprocess.run(args, capture_output=True, text=True, input=stdin, timeout=60)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_passes_strict_validation(version: str) -> None:
    assert _manifests(), "no manifests under k8s/"
    for path in _manifests():
        res = _validate(path, version)
        log = res.stdout + res.stderr
        assert res.returncode == 0, log
        # built-in kinds must really be checked (only CRDs such as KubeRay's RayJob lack a schema)
        for doc in _docs(path):
            if "." not in doc["apiVersion"].split("/")[0]:  # v1, batch/v1, apps/v1: not a CRD group
                assert f"passed for resource {doc['kind'].lower()}/{doc['metadata']['name']}" in log, log


def test_kustomize_base_renders_and_validates() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (for the offline `kubectl kustomize`) is not installed")
    rendered = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    assert {d["metadata"]["name"] for d in yaml.safe_load_all(rendered.stdout)} == {
        d["metadata"]["name"] for d in _docs()
    }
    res = _validate("-", K8S_VERSIONS[0], stdin=rendered.stdout)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("backoffLimitPerIndex: 2", "backoffLimitPerIndx: 2"),  # typo at the Job spec level
        ("{name: mtbench-secrets, key: OPENAI_API_KEY", "{nam: mtbench-secrets, key: OPENAI_API_KEY"),
        ("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true"),
        ("completions: 4 ", 'completions: "four" '),
    ],
)
def test_a_broken_manifest_fails_validation(tmp_path: Path, good: str, bad: str) -> None:
    text = MANIFEST.read_text("utf-8")
    assert good in text
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace(good, bad, 1), "utf-8")
    res = _validate(broken, K8S_VERSIONS[0])
    assert res.returncode != 0, f"{bad!r} passed validation"
    assert "ERROR" in res.stdout + res.stderr


def test_strict_is_what_catches_typos(tmp_path: Path) -> None:
    # why the tests pass --strict: without it an unknown field is accepted
    broken = tmp_path / "broken.yaml"
    broken.write_text(MANIFEST.read_text("utf-8").replace("backoffLimitPerIndex:", "backoffLimitPerIndx:"))
    assert _validate(broken, K8S_VERSIONS[0], strict=False).returncode == 0
    assert _validate(broken, K8S_VERSIONS[0], strict=True).returncode != 0


def test_rules_the_schema_does_not_check() -> None:
    cm = _by_name("ConfigMap", "mtbench-config")["data"]
    gen = _by_name("Job", "mtbench-generate")["spec"]
    red = _by_name("Job", "mtbench-reduce-judge-report")["spec"]
    assert gen["completionMode"] == "Indexed"
    assert gen["completions"] == int(cm["JOB_NUM_SHARDS"]), "completions must equal JOB_NUM_SHARDS"
    assert 1 <= gen["parallelism"] <= gen["completions"] and gen["backoffLimitPerIndex"] >= 1
    for job in (gen, red):
        pod = job["template"]["spec"]
        assert pod["restartPolicy"] == "Never"  # required by backoffLimitPerIndex; Jobs reject Always
        assert pod["securityContext"]["runAsNonRoot"] is True
        mounts = set()
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["image"] == "mtbench-job:latest"  # the documented placeholder (kustomize images:)
            assert {"configMapRef": {"name": "mtbench-config"}} in c["envFrom"]
            secret_refs = {
                e["name"]: e["valueFrom"]["secretKeyRef"]
                for e in c["env"]
                if "secretKeyRef" in e.get("valueFrom", {})
            }
            assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret_refs)
            mounts |= {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/tmp", "/cache"} <= mounts  # writable dirs on a read-only root
    gen_c = gen["template"]["spec"]["containers"][0]
    assert gen_c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gen_c["command"] == ["job", "generate"]
    red_env = {e["name"] for e in red["template"]["spec"]["containers"][0]["env"]}
    assert "OPENAI_API_KEY" in red_env
    # no secret value in the ConfigMap, and the run is configured there
    assert not [k for k in cm if "SECRET" in k or k.endswith("_KEY") or "TOKEN" in k]
    assert cm["JOB_OUTPUT"].startswith("s3://")
    for k in ("JOB_MODEL", "JOB_BENCH", "JOB_NUM_CHOICES", "JOB_NUM_SHARDS", "JOB_JUDGE_MODEL"):
        assert cm[k]


# ---- the manifest's own command and env, run locally --------------------------------

# secrets are replaced by dummies (moto accepts any credentials)
DUMMY_SECRETS = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    "OPENAI_API_KEY": "sk-test-dummy-key-not-used",
    "HF_TOKEN": "hf_dummy_not_used",
}


def overrides(shared_bench_data: Path) -> dict[str, str]:
    """The only ConfigMap values this test changes, and why."""
    return {
        "JOB_MODEL": "mock/echo",  # no GPU, no weights here
        "JOB_JUDGE_MODEL": "mock/judge",  # no API key here
        "JOB_BENCH_DATA": str(shared_bench_data),  # the image bakes the data in
        "JOB_REDUCE_WAIT": "120",  # fail the test instead of waiting a day
        "JOB_REDUCE_POLL_INTERVAL": "0.5",
    }


def pod_env(job: dict[str, Any], volumes: dict[str, Path], extra: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (envFrom, then env), its paths
    on the emptyDir mounts moved to `volumes`, then the test's `extra` as given."""
    configmaps = {d["metadata"]["name"]: d["data"] for d in _docs() if d["kind"] == "ConfigMap"}
    (c,) = job["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        env.update(configmaps[src["configMapRef"]["name"]])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "configMapKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = configmaps[ref["name"]][ref["key"]]
        else:
            env[e["name"]] = DUMMY_SECRETS[e["valueFrom"]["secretKeyRef"]["key"]]
    # only the manifest's values name container paths: a host path in `extra` (bench data
    # in a checkout under /tmp, the test's tmp_path) must stay as it is
    return {**{k: on_volume(v, volumes) for k, v in env.items()}, **extra}


def on_volume(value: str, volumes: dict[str, Path]) -> str:
    """A container path on an emptyDir mount -> the same path in its per-test directory
    (the longest mount that holds it; /tmpfoo is not on /tmp)."""
    for mount in sorted(volumes, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(volumes[mount]) + value[len(mount) :]
    return value


def test_pod_env_moves_only_the_manifests_paths(tmp_path: Path) -> None:
    """A checkout under /tmp (a fresh clone, ../shared beside it): the test's own host paths
    are not container paths, so the /tmp remap must leave them alone."""
    volumes = empty_dirs(tmp_path)
    host = {"JOB_BENCH_DATA": "/tmp/clone/shared/bench_data", "JOB_OUTPUT": "/tmpdir/runs"}
    env = pod_env(_by_name("Job", "mtbench-reduce-judge-report"), volumes, host)
    assert {k: env[k] for k in host} == host
    assert env["HOME"] == str(volumes["/tmp"]) and env["HF_HOME"] == f"{volumes['/cache']}/huggingface"
    assert on_volume("/tmp/x", volumes) == f"{volumes['/tmp']}/x"
    assert on_volume("/tmpfoo/x", volumes) == "/tmpfoo/x"


def node_env(job_env: dict[str, str], extra: dict[str, str] | None = None) -> dict[str, str]:
    """The node's environment: `job` on PATH, nothing from the host's AWS_* (JOB_* come from the pod)."""
    node = {k: v for k, v in job_env.items() if not k.startswith("AWS_")}
    node.update(extra or {})
    node["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{node.get('PATH', '/usr/bin:/bin')}"
    return node


def empty_dirs(tmp_path: Path) -> dict[str, Path]:
    """The pods' emptyDir mounts (/cache, /tmp) as per-test directories."""
    volumes = {m: tmp_path / "volumes" / m.strip("/") for m in ("/cache", "/tmp")}
    for d in volumes.values():
        d.mkdir(parents=True)
    return volumes


def container_argv(job: dict[str, Any]) -> list[str]:
    """What the Job's container runs: its command, then its args."""
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return [*c["command"], *c.get("args", [])]


def launch(job: dict[str, Any], env: dict[str, str], tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        container_argv(job), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.timeout(240)
def test_manifest_commands_and_env_drive_job(
    job_env: dict[str, str], s3: S3Env, shared_bench_data: Path, tmp_path: Path
) -> None:
    cm = _by_name("ConfigMap", "mtbench-config")["data"]
    gen = _by_name("Job", "mtbench-generate")
    red = _by_name("Job", "mtbench-reduce-judge-report")
    bucket, _, prefix = cm["JOB_OUTPUT"].removeprefix("s3://").partition("/")
    s3.client().create_bucket(Bucket=bucket)  # the ConfigMap's own bucket, no JOB_OUTPUT override

    # the node: AWS endpoint of the test S3, but not its credentials (the pod's come from secrets)
    node = node_env(job_env, {k: v for k, v in s3.env.items() if k not in DUMMY_SECRETS})
    volumes = empty_dirs(tmp_path)
    extra = overrides(shared_bench_data)

    # both Jobs start together on a cluster: the reducer first, it must wait for the shards
    reducer = launch(red, dict(node, **pod_env(red, volumes, extra)), tmp_path)
    try:
        for index in range(gen["spec"]["completions"]):
            env = dict(node, **pod_env(gen, volumes, extra), JOB_COMPLETION_INDEX=str(index))
            p = launch(gen, env, tmp_path)
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            n = gen["spec"]["completions"]
            assert f"shard {index + 1}/{n}" in err
        r_out, r_err = reducer.communicate(timeout=180)
    finally:
        reducer.kill()
    assert reducer.returncode == 0, r_err[-3000:]
    assert "waiting for shards" in r_err

    run = f"{prefix}/{cm['JOB_BENCH']}"
    name = cm["JOB_MODEL_NAME"]
    keys = s3.list_keys(prefix + "/", bucket)
    n = int(cm["JOB_NUM_SHARDS"])
    assert [k for k in keys if k.endswith(".manifest.json") and "/shards/" in k] == [
        f"{run}/shards/{name}/shard-{i:05d}-of-{n:05d}.manifest.json" for i in range(n)
    ]
    body = s3.get(f"{run}/model_answer/{name}.jsonl", bucket)
    answers = parse_records(body, Answer, "answers")
    n_questions = len((shared_bench_data / cm["JOB_BENCH"] / "question.jsonl").read_text().splitlines())
    assert len(answers) == n_questions
    assert all(len(a.choices) == int(cm["JOB_NUM_CHOICES"]) for a in answers)
    # judge and report ran on the same storage
    assert any(k.startswith(f"{run}/model_judgment/") and k.endswith("_single.jsonl") for k in keys), keys
    report = json.loads(s3.get(f"{run}/reports/report.json", bucket))
    assert report["scores"] and name in json.dumps(report["scores"])
    # no credential anywhere in what the run wrote
    for k in keys:
        data = s3.get(k, bucket)
        assert SECRET_ACCESS_KEY.encode() not in data and ACCESS_KEY_ID.encode() not in data, k
    assert SECRET_ACCESS_KEY not in r_out + r_err


@pytest.mark.timeout(120)
def test_reduce_judge_report_pod_stops_on_sigterm(
    job_env: dict[str, str], shared_bench_data: Path, tmp_path: Path
) -> None:
    """The pod's shell is its PID 1, which ignores SIGTERM unless it traps it: pod deletion
    must reach the running step and end the pod with 143 well within the grace period,
    and no later step may start. Here the step is `job reduce` waiting for shards."""
    require_pid_namespace()
    red = _by_name("Job", "mtbench-reduce-judge-report")
    node, volumes = node_env(job_env), empty_dirs(tmp_path)
    extra = dict(overrides(shared_bench_data), JOB_OUTPUT=str(tmp_path / "runs"))
    log = tmp_path / "pod.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            ["unshare", "-pf", "--mount-proc", *container_argv(red)],
            env=dict(node, **pod_env(red, volumes, extra)), cwd=tmp_path, stdout=f, stderr=f,
        )  # fmt: skip
    try:
        pid1 = child_of(proc.pid)
        assert wait_until(lambda: "waiting for shards" in log.read_text(), 60, proc), log.read_text()
        t0 = time.monotonic()
        os.kill(pid1, signal.SIGTERM)
        proc.wait(timeout=10)  # Kubernetes' default grace period is 30 s
    finally:
        kill(proc)
    took = time.monotonic() - t0
    text = log.read_text()
    assert proc.returncode == 143, text
    assert "terminated by SIGTERM" in text and "Traceback" not in text, text
    assert "judg" not in text.split("terminated by SIGTERM")[-1], text  # judge never started
    print(f"pod PID 1 relayed SIGTERM: exit 143 in {took:.2f}s")
