"""Judgment files: local append with torn-line repair; part objects merged on read for object storage."""

from __future__ import annotations

from pathlib import Path

from job.judge.store import JudgmentStore, parts_prefix
from job.storage import LocalStorage

KEY = "b/model_judgment/j_single.jsonl"


def test_local_append_repairs_a_torn_last_line(tmp_path: Path) -> None:
    st = JudgmentStore(LocalStorage(tmp_path), KEY)
    st.append([{"a": 1}, {"a": 2}])
    path = tmp_path / KEY
    with open(path, "ab") as f:
        f.write(b'{"a": 3, "tor')  # a run killed mid-write
    assert st.read() == [{"a": 1}, {"a": 2}]
    assert st.read(repair=True) == [{"a": 1}, {"a": 2}]
    st.append([{"a": 4}])
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n{"a": 4}\n'


def test_parts_merged_on_read_and_compacted_once(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    st = JudgmentStore(storage, KEY, use_parts=True)
    st.append([{"a": 1}])
    st.append([{"a": 2}, {"a": 3}])
    assert len(storage.list(parts_prefix(KEY))) == 2 and not storage.exists(KEY)
    assert st.read() == [{"a": 1}, {"a": 2}, {"a": 3}]
    # a crash after the main PUT but before the part deletes must not duplicate rows
    parts = storage.list(parts_prefix(KEY))
    saved = {p: storage.read_bytes(p) for p in parts}
    st.compact()
    for p, data in saved.items():
        storage.write_bytes(p, data)
    st.compact()
    assert storage.read_bytes(KEY) == b'{"a": 1}\n{"a": 2}\n{"a": 3}\n'
    assert storage.list(parts_prefix(KEY)) == []
    st.append([{"a": 4}])
    assert st.read() == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}]
