"""Races of the if-absent commit: an S3 409 ConditionalRequestConflict (another conditional
PUT to the key in flight) and an NFS link() retransmit that answers EEXIST for our own link.

The S3 faults are injected with a botocore `before-call` hook on the real client, in
front of a real moto server; the local ones with a link() that lands and then fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from moto_s3 import S3Env

from job.errors import JobError
from job.generate.shards import commit_shard
from job.records import ShardItem, ShardManifest
from job.storage.local import LocalStorage
from job.storage.s3 import S3Storage

pytestmark = pytest.mark.timeout(60)


class _Http:
    status_code = 409
    headers: dict[str, str] = {}


_CONFLICT = {
    "Error": {"Code": "ConditionalRequestConflict", "Message": "A conflicting operation is in progress"},
    "ResponseMetadata": {"HTTPStatusCode": 409},
}


def _conflicts(st: S3Storage, op: str, n: int, then: Callable[[], None] = lambda: None) -> list[str]:
    """The first `n` conditional `op` calls answer 409 without reaching S3; `then` runs
    before the call after them (e.g. the other writer's PUT lands)."""
    calls: list[str] = []

    def hook(params: dict[str, Any], **_: Any) -> Any:
        if "If-None-Match" not in params.get("headers", {}):
            return None
        calls.append(op)
        if len(calls) <= n:
            return _Http(), _CONFLICT
        if len(calls) == n + 1:
            then()
        return None

    st.client.meta.events.register(f"before-call.s3.{op}", hook)
    return calls


@pytest.mark.parametrize("multipart", [False, True])
def test_409_then_the_other_writer_wins_is_a_lost_race_not_an_error(s3: S3Env, multipart: bool) -> None:
    kw = {"multipart_threshold": 5 * 2**20, "multipart_chunk": 5 * 2**20} if multipart else {}
    ours, theirs = S3Storage(s3.uri("run"), **kw), S3Storage(s3.uri("run"))
    body = b"o" * (6 * 2**20 if multipart else 4)
    op = "CompleteMultipartUpload" if multipart else "PutObject"
    calls = _conflicts(ours, op, 2, then=lambda: theirs.write_bytes("m.json", b"theirs", if_absent=True))
    # before the fix: the 409 went to the "was it ours" read, found nothing, exit 2
    assert ours.write_bytes("m.json", body, if_absent=True) is False
    assert calls == [op] * 3
    assert ours.read_bytes("m.json") == b"theirs"


def test_409_then_the_other_put_failed_lands_ours(s3: S3Env) -> None:
    st = S3Storage(s3.uri("run"))
    calls = _conflicts(st, "PutObject", 1)
    assert st.write_bytes("m.json", b"ours", if_absent=True) is True
    assert calls == ["PutObject", "PutObject"]
    assert st.read_bytes("m.json") == b"ours"


def test_409_forever_is_bounded_and_one_line(s3: S3Env) -> None:
    st = S3Storage(s3.uri("run"), max_attempts=3)
    calls = _conflicts(st, "PutObject", 99)
    with pytest.raises(JobError) as e:
        st.write_bytes("m.json", b"ours", if_absent=True)
    assert calls == ["PutObject"] * 3
    msg = str(e.value)
    assert "\n" not in msg and f"s3://{s3.bucket}/run/m.json" in msg
    assert "ConditionalRequestConflict (HTTP 409)" in msg and "after 3 attempts" in msg
    assert not st.exists("m.json")


# --- local: NFS link() retransmit -------------------------------------------------


@pytest.fixture
def link_lands_then_eexist(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """link() to a name ending in `.manifest.json` lands, then answers EEXIST (the reply
    to a retransmit of the same NFS request)."""
    real, hits = os.link, []

    def link(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        real(src, dst, *a, **k)
        if str(dst).endswith(".manifest.json"):
            hits.append(str(dst))
            raise FileExistsError(17, "File exists", str(dst))

    monkeypatch.setattr(os, "link", link)
    return hits


def test_local_eexist_for_our_own_link_is_ours(tmp_path: Path, link_lands_then_eexist: list[str]) -> None:
    st = LocalStorage(tmp_path)
    assert st.write_bytes("a.manifest.json", b"ours", if_absent=True) is True
    assert link_lands_then_eexist == [str(tmp_path / "a.manifest.json")]
    assert (tmp_path / "a.manifest.json").read_bytes() == b"ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.manifest.json"]  # no temp file left


def test_local_eexist_for_another_writer_is_a_lost_race(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    assert st.write_bytes("a.manifest.json", b"theirs", if_absent=True) is True
    assert st.write_bytes("a.manifest.json", b"ours", if_absent=True) is False
    assert (tmp_path / "a.manifest.json").read_bytes() == b"theirs"


def _manifest() -> ShardManifest:
    return ShardManifest(
        bench="b", bench_data_sha256="0" * 64, model="mock/m", model_name="m", config_hash="c",
        sampling={}, shard_index=0, num_shards=1, question_ids=[1], num_choices=1, num_items=1,
        package_version="0", started_at=0.0, finished_at=1.0, wall_seconds=1.0,
    )  # fmt: skip


def test_commit_shard_keeps_its_data_when_its_manifest_link_is_retransmitted(
    tmp_path: Path, link_lands_then_eexist: list[str]
) -> None:
    st = LocalStorage(tmp_path)
    items = [ShardItem(question_id=1, choice=0, turns=["a", "b"], finish_reasons=["stop", "stop"])]
    key = "b/shards/m/shard-00000-of-00001.jsonl"
    # before the fix: "another task won", and it deleted the answers its own manifest names
    assert commit_shard(st, key, items, _manifest(), force=False) is True
    manifest = ShardManifest.model_validate_json(st.read_bytes(key.replace(".jsonl", ".manifest.json")))
    assert manifest.data_file == "shard-00000-of-00001.jsonl"
    assert st.exists(key) and b'"turns":["a","b"]' in st.read_bytes(key).replace(b" ", b"")
