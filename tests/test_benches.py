"""Bench registry: checksums of the real files, `job bench pull` over real HTTP, custom benches."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from job.benches import FASTCHAT, registry, resolve_bench
from job.errors import JobError


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving a copy of the shared bench data."""
    root = tmp_path / "mirror"
    yield_root = root
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(yield_root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_registry_checksums_match_the_real_files(run_job, shared_bench_data: Path) -> None:
    res = run_job("bench", "verify", "--bench-data", str(shared_bench_data))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    n_files = sum(len(b["files"]) for b in registry().values())
    assert len(lines) == n_files and all(line.startswith("ok") for line in lines)


def test_registry_has_urls_pinned_to_commits_and_licences() -> None:
    for name, bench in registry().items():
        assert bench["licence"], name
        for logical, f in bench["files"].items():
            # a 40-hex commit in every upstream URL
            parts = f["url"].split("/")
            assert any(len(p) == 40 and all(c in "0123456789abcdef" for c in p) for p in parts), (
                name,
                logical,
            )
            assert len(f["sha256"]) == 64


def test_pull_from_http_mirror_then_verify(
    run_job, shared_bench_data: Path, http_root, tmp_path: Path
) -> None:
    base, root = http_root
    shutil.copytree(shared_bench_data, root)
    data = tmp_path / "data"
    res = run_job(
        "bench", "pull", "mt_bench", "japanese_mt_bench", "--bench-data", str(data), "--base-url", base
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("downloaded") == 7
    assert (data / "mt_bench/question.jsonl").read_bytes() == (
        shared_bench_data / "mt_bench/question.jsonl"
    ).read_bytes()
    res = run_job("bench", "verify", "mt_bench", "japanese_mt_bench", "--bench-data", str(data))
    assert res.returncode == 0, res.stdout + res.stderr
    # a second pull downloads nothing
    res = run_job("bench", "pull", "mt_bench", "--bench-data", str(data), "--base-url", base)
    assert "downloaded" not in res.stdout and res.stdout.count("kept") == 4


def test_pull_rejects_a_wrong_checksum_and_writes_nothing(
    run_job, shared_bench_data: Path, http_root, tmp_path: Path
) -> None:
    base, root = http_root
    shutil.copytree(shared_bench_data, root)
    q = root / "mt_bench/question.jsonl"
    q.chmod(0o644)
    q.write_bytes(q.read_bytes().replace(b"Hawaii", b"Hawai'i"))
    data = tmp_path / "data"
    res = run_job("bench", "pull", "mt_bench", "--bench-data", str(data), "--base-url", base)
    assert res.returncode == 2
    assert "mt_bench/question.jsonl: sha256 mismatch" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (data / "mt_bench/question.jsonl").exists()


def test_verify_reports_a_corrupt_local_file(run_job, shared_bench_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(shared_bench_data, data)
    ref = data / "mt_bench/reference_answer/gpt-4.jsonl"
    ref.chmod(0o644)
    ref.write_bytes(ref.read_bytes()[:-10])
    res = run_job("bench", "verify", "mt_bench", "--bench-data", str(data))
    assert res.returncode != 0
    assert "mismatch  mt_bench:reference_answer/gpt-4" in res.stdout
    # and generation refuses the corrupt bench file, naming it
    q = data / "mt_bench/question.jsonl"
    q.chmod(0o644)
    q.write_bytes(q.read_bytes() + b"\n")
    res = run_job(
        "generate", "--bench", "mt_bench", "--bench-data", str(data), "--model", "mock/echo", "--dry-run"
    )
    assert res.returncode == 2 and "question.jsonl: sha256 mismatch" in res.stderr


def test_pull_http_error_is_one_line(run_job, http_root, tmp_path: Path) -> None:
    base, root = http_root
    root.mkdir()
    res = run_job("bench", "pull", "mt_bench", "--bench-data", str(tmp_path / "d"), "--base-url", base)
    assert res.returncode == 2 and "HTTP 404" in res.stderr and "Traceback" not in res.stderr


def test_bench_list(run_job, shared_bench_data: Path) -> None:
    res = run_job("bench", "list", "--bench-data", str(shared_bench_data))
    assert res.returncode == 0
    for name in ("mt_bench", "japanese_mt_bench", "japanese_mt_bench_v202407", "smoke"):
        assert name in res.stdout


def test_variants_resolve_to_their_files(shared_bench_data: Path) -> None:
    b = resolve_bench("japanese_mt_bench_v202407", shared_bench_data)
    qs, sha = b.load_questions()
    assert len(qs) == 80 and sha.startswith("e0b4bb06")
    assert b.default_reference == "gpt-4"
    assert b.reference_path("gpt-4").is_file()
    default = resolve_bench("japanese_mt_bench", shared_bench_data)
    assert default.load_questions()[1].startswith("8f56c8bd")
    assert default.judge_prompts_path.name == "judge_prompts.jsonl"
    assert (
        resolve_bench("mt_bench", shared_bench_data).judge_prompts_path
        == shared_bench_data / "judge_prompts.jsonl"
    )


def test_custom_bench_folder_works_without_code_change(tmp_path: Path) -> None:
    (tmp_path / "my_bench").mkdir()
    (tmp_path / "my_bench/question.jsonl").write_text(
        '{"question_id": 1, "category": "fermi", "turns": ["How many?"]}', "utf-8"
    )
    b = resolve_bench("my_bench", tmp_path)
    assert not b.registered
    assert [q.question_id for q in b.load_questions()[0]] == [1]


def test_smoke_bench_is_packaged_and_covers_all_categories() -> None:
    qs, _ = resolve_bench("smoke", "/nonexistent-dir-for-test").load_questions()
    cats = {q.category for q in qs}
    assert set(FASTCHAT.temperatures) - {"arena-hard-200"} <= cats
    assert all(len(q.turns) == 2 for q in qs)


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x y"])
def test_bench_names_cannot_escape(name: str) -> None:
    with pytest.raises(JobError, match="invalid bench name"):
        resolve_bench(name)
