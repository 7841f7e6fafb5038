"""Security (issue 8), statically: EVERY pod template under k8s/ (Jobs, the KubeRay RayJob's
head and worker groups, anything added later) runs non-root with a read-only root
filesystem, writable emptyDir/volume mounts for /tmp and /cache, no privilege escalation
and no capabilities; secrets only by secretKeyRef. The image's final USER is not root.
(tests/docker runs the image itself where Docker is available.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SECRETISH = ("SECRET", "KEY", "TOKEN", "PASSWORD")


def _pod_specs(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec in a manifest: any mapping with `containers` (Job/Deployment templates,
    RayJob head/worker templates, bare Pods), found by walking the whole document."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield where, node
        for k, v in node.items():
            yield from _pod_specs(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _pod_specs(v, f"{where}[{i}]")


def _all_pod_specs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text("utf-8")) if d):
            name = f"{path.relative_to(REPO)}#{i}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            out += list(_pod_specs(doc, name))
    return out


PODS = _all_pod_specs()


def test_the_walk_finds_every_known_template() -> None:
    where = [w for w, _ in PODS]
    assert any("mtbench-job.yaml" in w and "mtbench-generate" in w for w in where), where
    assert any("mtbench-job.yaml" in w and "mtbench-reduce-judge-report" in w for w in where), where
    assert any("rayjob.yaml" in w and "headGroupSpec" in w for w in where), where
    assert any("rayjob.yaml" in w and "workerGroupSpecs" in w for w in where), where


@pytest.mark.parametrize(("where", "pod"), PODS, ids=[w for w, _ in PODS])
def test_pod_template_is_locked_down(where: str, pod: dict[str, Any]) -> None:
    psc = pod.get("securityContext") or {}
    assert psc.get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot"
    assert psc.get("runAsUser", 1000) != 0, f"{where}: runAsUser 0"
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for c in [*pod["containers"], *pod.get("initContainers", [])]:
        cname = f"{where}/{c['name']}"
        sc = c.get("securityContext") or {}
        assert sc.get("allowPrivilegeEscalation") is False, f"{cname}: allowPrivilegeEscalation"
        assert sc.get("readOnlyRootFilesystem") is True, f"{cname}: readOnlyRootFilesystem"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cname}: capabilities.drop [ALL]"
        assert not sc.get("capabilities", {}).get("add"), f"{cname}: capabilities.add"
        assert sc.get("privileged") in (None, False) and sc.get("runAsUser", 1000) != 0, cname
        # a read-only root needs writable mounts where the job and its libraries write
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        for path in ("/tmp", "/cache"):
            assert path in mounts, f"{cname}: no writable volume at {path}"
            vol = volumes[mounts[path]]
            assert not vol.get("configMap") and not vol.get("secret"), f"{cname}: {path} is read-only"
            assert not any(m.get("readOnly") for m in c["volumeMounts"] if m["mountPath"] == path), cname
        for env in c.get("env", []):
            if any(s in env["name"] for s in SECRETISH):
                assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (cname, env)


def test_image_runs_as_a_non_root_user() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text("utf-8")
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users, "Dockerfile sets no USER: the container would run as root"
    final = users[-1]
    uid = re.search(r"ARG APP_UID=(\d+)", text)
    resolved = final.replace("${APP_UID}", uid.group(1) if uid else "?").split(":")[0]
    assert resolved not in {"0", "root", "?"}, f"final USER {final!r} -> {resolved!r}"
    assert resolved.isdigit(), "a numeric USER lets runAsNonRoot verify it without /etc/passwd"
