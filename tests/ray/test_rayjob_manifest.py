"""k8s/ray/rayjob.yaml (KubeRay RayJob example): its pod templates pass strict schema
validation, and its entrypoint and env really drive `job` (a dry run of the same command).

RayJob is a CRD that kubernetes-validate has no schema for (it only warns), so the head
and worker pod templates are validated as v1 PodTemplates, and the rest is asserted here.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate as kv
import pytest
import yaml

RAYJOB = Path(__file__).resolve().parents[2] / "k8s" / "ray" / "rayjob.yaml"
K8S_VERSIONS = ["1.37.0", "1.31.0"]  # the versions tests/k8s checks mtbench-job.yaml against
JOB = [sys.executable, "-c", "from job.cli import main; main()"]


def _rayjob() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(RAYJOB.read_text("utf-8")) if d]
    return doc


def _templates(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = doc["spec"]["rayClusterSpec"]
    out = {"head": cluster["headGroupSpec"]["template"]}
    out.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return out


def _as_pod_template(name: str, template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}


def _env_vars(doc: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"].items()}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_pod_templates_pass_strict_validation(version: str) -> None:
    for name, template in _templates(_rayjob()).items():
        kv.validate(_as_pod_template(name, template), version, strict=True)


def test_a_typo_in_a_pod_template_fails_validation() -> None:
    template = _templates(_rayjob())["gpu"]
    container = dict(template["spec"]["containers"][0], volumeMount=[])  # volumeMounts misspelt
    broken = dict(template, spec=dict(template["spec"], containers=[container]))
    with pytest.raises(kv.ValidationError, match="volumeMount"):
        kv.validate(_as_pod_template("gpu", broken), K8S_VERSIONS[0], strict=True)


def test_rayjob_shape() -> None:
    doc = _rayjob()
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True  # the GPU workers go away with the job
    generate, reduce = (shlex.split(part) for part in spec["entrypoint"].split("&&"))
    assert generate[:4] == ["job", "generate", "--executor", "ray"]
    assert reduce[:2] == ["job", "reduce"]
    tp = int(generate[generate.index("--tensor-parallel-size") + 1])
    (workers,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"]
    for container in workers["template"]["spec"]["containers"]:
        for kind in ("requests", "limits"):
            assert int(container["resources"][kind]["nvidia.com/gpu"]) == tp
    # the head runs only the driver: no actor may land there and take a worker's place
    assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    # secrets only by reference, never inline in the runtime env
    assert not [k for k in _env_vars(doc) if any(s in k for s in ("SECRET", "KEY", "TOKEN", "PASSWORD"))]
    for template in _templates(doc).values():
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if any(s in env["name"] for s in ("SECRET", "KEY", "TOKEN")):
                    assert "secretKeyRef" in env["valueFrom"] and "value" not in env


def test_entrypoint_and_env_drive_job(shared_bench_data: Path, tmp_path: Path) -> None:
    """The RayJob's own command and settings, as a dry run of the real CLI (no cluster here)."""
    doc = _rayjob()
    env_vars = _env_vars(doc)
    generate, reduce = (shlex.split(part) for part in doc["spec"]["entrypoint"].split("&&"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_", "RAY_"))}
    env.update(env_vars, JOB_BENCH_DATA=str(shared_bench_data), JOB_OUTPUT=str(tmp_path / "out"))
    env["RAY_ADDRESS"] = "10.0.0.1:6379"  # what KubeRay sets for the entrypoint; unused by a dry run
    res = subprocess.run(
        [*JOB, *generate[1:], "--dry-run"], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    n = int(env_vars["JOB_NUM_SHARDS"])
    assert f"bench {env_vars['JOB_BENCH']}:" in res.stdout
    assert f"x {env_vars['JOB_NUM_CHOICES']} choices" in res.stdout
    assert f"answers named {env_vars['JOB_MODEL_NAME']!r}" in res.stdout
    assert f"shard {n}/{n} (index {n - 1})" in res.stdout
    assert "ray: on the Ray cluster at 10.0.0.1:6379" in res.stdout
    assert not list((tmp_path / "out").rglob("*.json*"))  # a dry run writes nothing
    res = subprocess.run([*JOB, *reduce[1:], "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr  # every reduce option in the entrypoint exists
