"""After `job report` has written report.json & co: render report.html and the plots next to
them, and optionally publish everything to a directory or s3:// prefix with a `latest`
pointer per model.

Published layout (DEST is a local dir or s3://bucket/prefix):
    DEST/<bench>/<run-id>/{report.html,report.json,report.md,scores.csv,*.png}
    DEST/latest/<bench>/<model>.json   {"kind": "mtbench-job/latest", "report": "<uri of report.json>", ...}
    (<model> in its file-name form, job.names.path_name: org/name -> org%2Fname)
A pointer file is accepted wherever a report.json is (`job compare`, `job run --baseline`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any

from job.benches import resolve_bench
from job.errors import JobError
from job.layout import latest_pointer_key, reports_dir
from job.names import check_name
from job.records.judgments import SingleRow
from job.report.html import render_html
from job.report.plots import plots
from job.report.questions import question_entries
from job.report.runner import ReportConfig, answer_models, bench_of, load_judgments
from job.storage import LocalStorage, Storage, open_storage
from job.storage.answers import load_answers

log = logging.getLogger(__name__)
POINTER_KIND = "mtbench-job/latest"
REPORT_FILES = ("report.html", "report.json", "report.md", "scores.csv", "pairwise.csv")


def report_models(doc: dict[str, Any]) -> list[str]:
    names = [s["model"] for s in doc.get("scores", [])] + [r["model"] for r in doc.get("pairwise", [])]
    return list(dict.fromkeys(names))


def build_html(cfg: ReportConfig, doc: dict[str, Any]) -> dict[str, bytes]:
    """report.html plus the chart PNGs it embeds, as {file name: bytes}."""
    bench = resolve_bench(bench_of(cfg), cfg.bench_data)
    questions, _ = bench.load_questions()
    records = load_judgments(cfg, open_storage(cfg.output)).records
    models = report_models(doc)
    if cfg.mode != "single":  # the browser shows both sides of every pair
        models = answer_models(models, records)
    if cfg.model_list:
        records = [r for r in records if not isinstance(r, SingleRow) or r.model in cfg.model_list]
    entries = question_entries(
        questions,
        load_answers(cfg.output, bench_of(cfg), cfg.answers_dir, models)[0],
        records,
        models,
        cfg.sample_agg,
    )
    charts, note = plots(doc)
    if note:
        log.warning("%s (report.html has no charts)", note)
    page = render_html(doc, entries, charts, note)
    return {"report.html": page.encode("utf-8"), **charts}


def write_html(cfg: ReportConfig, doc: dict[str, Any]) -> tuple[Storage, str, list[str]]:
    """Write report.html and plots where report_run wrote report.json; (storage, prefix, names)."""
    files = build_html(cfg, doc)
    dest: Storage = LocalStorage(cfg.output_dir) if cfg.output_dir else open_storage(cfg.output)
    prefix = "" if cfg.output_dir else reports_dir(bench_of(cfg))
    for name, data in files.items():
        dest.write_bytes(prefix + name, data)
    print(f"wrote {', '.join(files)} to {dest.uri(prefix) if prefix else dest.root}")
    names = [n for n in REPORT_FILES if dest.exists(prefix + n)] + [n for n in files if n.endswith(".png")]
    return dest, prefix, list(dict.fromkeys(names))


def run_id(doc: dict[str, Any], report_json: bytes) -> str:
    ts = doc["provenance"].get("created_at") or time.time()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ts))
    return f"{stamp}-{hashlib.sha256(report_json).hexdigest()[:8]}"


def publish(dest_uri: str, src: Storage, prefix: str, names: list[str], doc: dict[str, Any]) -> str:
    """Copy the report files to DEST/<bench>/<run-id>/ and point latest/<bench>/<model>.json at them."""
    dest = open_storage(dest_uri)
    dest.check_writable()
    bench = check_name("bench name", doc["provenance"]["bench"])
    report_json = src.read_bytes(prefix + "report.json")
    base = f"{bench}/{run_id(doc, report_json)}/"
    for n in names:
        dest.write_bytes(base + n, src.read_bytes(prefix + n))
    by = {(s["model"], s["category"], s["turn"]): s for s in doc.get("scores", [])}
    for m in report_models(doc):
        avg = by.get((m, "all", "all"), {})
        pointer = {
            "kind": POINTER_KIND, "bench": bench, "model": m, "path": base + "report.json",
            "report": _absolute(dest.uri(base + "report.json")),
            "html": dest.uri(base + "report.html") if "report.html" in names else None,
            "average": avg.get("mean"), "ci": [avg.get("ci_low"), avg.get("ci_high")],
            "judges": doc["provenance"].get("judges"), "git_revision": doc["provenance"].get("git_revision"),
            "created_at": doc["provenance"].get("created_at"), "published_at": time.time(),
        }  # fmt: skip
        dest.write_bytes(latest_pointer_key(bench, m), json.dumps(pointer, indent=2).encode())
    print(
        f"published {len(names)} files to {dest.uri(base)}; latest pointers under {dest.uri(f'latest/{bench}/')}"
    )
    return dest.uri(base)


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


def read_uri(uri: str) -> bytes:
    """Bytes of a local file or an s3://bucket/key object."""
    if uri.startswith("s3://"):
        root, _, key = uri.rstrip("/").rpartition("/")
        if root == "s3:/" or not key:
            raise JobError(f"{uri}: expected s3://bucket/path/report.json")
        return open_storage(root).read_bytes(key)
    try:
        with open(uri, "rb") as f:
            return f.read()
    except OSError as e:
        raise JobError(
            f"{uri}: {e.strerror}; pass a report.json or a latest/<bench>/<model>.json pointer"
        ) from None


def load_report(uri: str) -> dict[str, Any]:
    """A report.json document; a `latest` pointer is followed to its report."""
    try:
        doc = json.loads(read_uri(uri))
    except json.JSONDecodeError as e:
        raise JobError(f"{uri}: not JSON ({e.msg}); pass a report.json written by `job report`") from None
    if isinstance(doc, dict) and doc.get("kind") == POINTER_KIND:
        # relative to the publish root first (the tree may have been moved or synced), else absolute
        root = (
            uri.replace("\\", "/").rsplit("/latest/", 1)[0] if "/latest/" in uri.replace("\\", "/") else None
        )
        if root is not None and doc.get("path"):
            rel = f"{root}/{doc['path']}"
            if rel.startswith("s3://") or os.path.exists(rel):
                return load_report(rel)
        return load_report(str(doc["report"]))
    if not isinstance(doc, dict) or "scores" not in doc or "provenance" not in doc:
        raise JobError(f"{uri}: not a report.json of `job report` (no scores/provenance)")
    return doc
