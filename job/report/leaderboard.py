"""`job leaderboard ROOT`: one table and one trend chart per bench over every report that
`--publish` wrote under ROOT (job.report.publish: ROOT/<bench>/<run-id>/report.json).

A row is one model of one published report. Rows whose judge (name, spec), reference set, judge prompts,
question file or judge-sample scoring (mean/median of K) differ from the bench's majority are
flagged (`mismatch`) and kept out of the trend lines, so numbers made under other conditions
are shown but never mixed in.
The checkpoint step is the report's `provenance.step` (`--step`), else the first group of
`--step-pattern` matched in the model name.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from job.errors import JobError
from job.storage import LocalStorage, Storage, open_storage

log = logging.getLogger(__name__)
KIND = "mtbench-job/leaderboard"
DEFAULT_STEP_PATTERN = r"(?:step|checkpoint|ckpt)[-_]?(\d+)"
# what must agree for two rows of a bench to be comparable
CONDITIONS = (
    "judge",
    "judge_model",
    "reference",
    "judge_prompts_sha256",
    "bench_data_sha256",
    "sample_scoring",
)
CSV_COLUMNS = [
    "bench", "model", "step", "series", "average", "ci_low", "ci_high", "turn1", "turn2",
    "num_choices", "n_scored", "n_failed", "judge", "judge_model", "reference", "judge_prompts_sha256",
    "bench_data_sha256", "sample_scoring", "mismatch", "date", "git_revision", "run", "report_html",
]  # fmt: skip
SCORE_KEYS = frozenset({"model", "category", "turn"})
READERS = 16  # parallel GETs: S3 latency, not bandwidth, bounds a 200-run index


@dataclass
class Leaderboard:
    root: str
    step_pattern: str
    benches: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def doc(self) -> dict[str, Any]:
        return {
            "kind": KIND, "root": self.root, "generated_at": time.time(), "step_pattern": self.step_pattern,
            "benches": self.benches, "skipped": self.skipped,
        }  # fmt: skip


def compile_step_pattern(pattern: str) -> re.Pattern[str]:
    try:
        rx = re.compile(pattern, re.IGNORECASE)
    except re.error as e:
        raise JobError(f"--step-pattern {pattern!r}: not a regular expression ({e})") from None
    if rx.groups < 1:
        raise JobError(f"--step-pattern {pattern!r}: needs one (group) around the step digits")
    return rx


def step_of(model: str, rx: re.Pattern[str]) -> tuple[int | None, str]:
    """(step, series) from a model name: llm-step-200 -> (200, 'llm-step-*'); no match -> (None, name)."""
    m = rx.search(model)
    if m is None or not (m.group(1) or "").isdigit():
        return None, model
    return int(m.group(1)), model[: m.start(1)] + "*" + model[m.end(1) :]


def report_keys(storage: Storage) -> list[str]:
    """<bench>/<run-id>/report.json keys (the `latest/` pointers and our own outputs are not runs)."""
    out = []
    for key in storage.list(""):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "report.json" and parts[0] != "latest":
            out.append(key)
    return out


def _read(storage: Storage, key: str) -> tuple[str, dict[str, Any] | None, str]:
    try:
        doc = json.loads(storage.read_bytes(key))
    except (ValueError, JobError) as e:
        return key, None, f"unreadable ({type(e).__name__}: {str(e)[:120]})"
    if not isinstance(doc, dict) or not isinstance(doc.get("provenance"), dict) or "scores" not in doc:
        return key, None, "not a report.json of `job report` (no scores/provenance)"
    if not doc["scores"]:
        return key, None, "no single-mode scores (a pairwise report)"
    if not isinstance(doc["scores"], list) or not all(
        isinstance(s, dict) and s.keys() >= SCORE_KEYS for s in doc["scores"]
    ):
        return key, None, f"scores are not rows with {', '.join(sorted(SCORE_KEYS))} (another tool's file?)"
    return key, doc, ""


def _cell(by: dict[tuple[str, str], dict[str, Any]], cat: str, turn: str) -> dict[str, Any]:
    return by.get((cat, turn), {})


def rows_of(key: str, doc: dict[str, Any], rx: re.Pattern[str], link: str) -> list[dict[str, Any]]:
    """One row per model of a report; categories hold the turn-'all' mean and CI per category."""
    prov = doc["provenance"]
    bench, run = key.split("/")[:2]
    judges = prov.get("judges") or []
    rows = []
    for model in dict.fromkeys(str(s["model"]) for s in doc["scores"]):
        by = {(s["category"], str(s["turn"])): s for s in doc["scores"] if s["model"] == model}
        avg = _cell(by, "all", "all")
        named_step, series = step_of(model, rx)
        step = prov.get("step") if isinstance(prov.get("step"), int) else named_step
        created = prov.get("created_at")
        rows.append({
            "bench": bench, "model": model, "step": step, "series": series,
            "average": avg.get("mean"), "ci_low": avg.get("ci_low"), "ci_high": avg.get("ci_high"),
            "turn1": _cell(by, "all", "1").get("mean"), "turn2": _cell(by, "all", "2").get("mean"),
            "num_choices": (prov.get("num_choices") or {}).get(model),
            "n_scored": avg.get("n_scored"), "n_failed": avg.get("n_failed"),
            "judge": ", ".join(map(str, judges)) or prov.get("judge_model"),
            "judge_model": prov.get("judge_model"), "reference": prov.get("reference"),
            "judge_prompts_sha256": prov.get("judge_prompts_sha256"),
            "bench_data_sha256": prov.get("bench_data_sha256"), "sample_scoring": prov.get("sample_scoring"),
            "created_at": created, "date": _date(created), "git_revision": prov.get("git_revision"),
            "run": run, "report_html": link,
            "categories": {
                c: {k: s.get(k) for k in ("mean", "ci_low", "ci_high")}
                for (c, t), s in sorted(by.items()) if t == "all" and c != "all"
            },
        })  # fmt: skip
    return rows


def _date(ts: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if isinstance(ts, (int, float)) else ""


def mark_mismatches(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Flag each row whose conditions differ from the bench's most common ones; returns those."""
    counts = Counter(tuple(r[c] for c in CONDITIONS) for r in rows)
    top = counts.most_common(1)[0][0]
    for r in rows:
        r["mismatch"] = [c for c, v in zip(CONDITIONS, top, strict=True) if r[c] != v]
    return dict(zip(CONDITIONS, top, strict=True))


def trend(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{category ('all' = average): {series: points by step}}; the latest run wins a step."""
    out: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for r in sorted(rows, key=lambda r: r["created_at"] or 0):
        if r["step"] is None or r["mismatch"] or r["average"] is None:
            continue
        cells = {"all": {"mean": r["average"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}}
        for cat, cell in {**cells, **r["categories"]}.items():
            if cell.get("mean") is not None:
                point = {"step": r["step"], **cell, "model": r["model"], "run": r["run"]}
                out.setdefault(cat, {}).setdefault(r["series"], {})[r["step"]] = point
    return {
        cat: {s: [pts[k] for k in sorted(pts)] for s, pts in sorted(by.items())}
        for cat, by in sorted(out.items(), key=lambda kv: (kv[0] != "all", kv[0]))
    }


def link_base(root: Storage, dest: Storage) -> str:
    """How index.html reaches ROOT: relative when both are local (or the same place)."""
    if dest.root == root.root:
        return ""
    if isinstance(root, LocalStorage) and isinstance(dest, LocalStorage):
        return os.path.relpath(root.root, dest.root).replace(os.sep, "/") + "/"
    return root.uri("")


def collect(root: str, step_pattern: str = DEFAULT_STEP_PATTERN, base: str = "") -> Leaderboard:
    """Read every published report.json under ROOT (in parallel) into per-bench rows."""
    rx = compile_step_pattern(step_pattern)
    storage = open_storage(root)
    keys = report_keys(storage)
    if not keys:
        raise JobError(
            f"no published reports under {root} (expected <bench>/<run-id>/report.json); "
            "publish with `job report --publish ROOT` or `job run --publish ROOT`"
        )
    with ThreadPoolExecutor(min(READERS, len(keys))) as pool:
        read = list(pool.map(lambda k: _read(storage, k), keys))
    board = Leaderboard(root, step_pattern)
    by_bench: dict[str, list[dict[str, Any]]] = {}
    for key, doc, why in read:
        if doc is None:
            log.warning("%s: skipped, %s", storage.uri(key), why)
            board.skipped.append({"path": key, "reason": why})
            continue
        link = base + key.rsplit("/", 1)[0] + "/report.html"
        for row in rows_of(key, doc, rx, link):
            by_bench.setdefault(row["bench"], []).append(row)
    for bench, rows in sorted(by_bench.items()):
        majority = mark_mismatches(rows)
        rows.sort(key=lambda r: (r["average"] is None, -(r["average"] or 0)))
        board.benches[bench] = {"majority": majority, "rows": rows, "trend": trend(rows)}
    return board


def to_csv(board: Leaderboard) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for b in board.benches.values():
        for r in b["rows"]:
            w.writerow({**r, "mismatch": ";".join(r["mismatch"])})
    return buf.getvalue().encode()


def write(root: str, output_dir: str | None = None, step_pattern: str = DEFAULT_STEP_PATTERN) -> str:
    """Write index.html, leaderboard.csv and leaderboard.json; returns where."""
    from job.report.leaderboard_html import render

    src = open_storage(root)
    dest: Storage = LocalStorage(output_dir) if output_dir else src
    board = collect(root, step_pattern, link_base(src, dest))
    doc = board.doc()
    files = {
        "index.html": render(doc).encode("utf-8"),
        "leaderboard.csv": to_csv(board),
        "leaderboard.json": json.dumps(doc, indent=2, ensure_ascii=False).encode(),
    }
    for name, data in files.items():
        dest.write_bytes(name, data)
    n = sum(len(b["rows"]) for b in board.benches.values())
    where = dest.uri("") if output_dir is None else dest.root
    print(f"leaderboard: {n} rows in {len(board.benches)} bench(es) -> {', '.join(files)} in {where}")
    return where


def refresh(root: str, step_pattern: str = DEFAULT_STEP_PATTERN) -> None:
    """Re-index a publish root after a publish (`job report --publish`, `job run --publish`);
    a failure here never loses the report just published: one warning line."""
    try:
        write(root, step_pattern=step_pattern)
    except JobError as e:
        log.warning("leaderboard of %s not refreshed: %s", root, e)
