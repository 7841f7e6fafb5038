"""Truncation is visible: `job report` shows per model the share of answer turns that stopped
at max_new_tokens (finish_reason "length", from the answer files' finish_reasons), in
report.json, report.md, stdout and report.html; answer files without the field are unknown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QIDS = list(range(81, 91))  # real mt_bench ids


def _answers(path: Path, model: str, reasons: list[list[str | None]] | None) -> None:
    rows = []
    for i, q in enumerate(QIDS):
        choice: dict[str, Any] = {"index": 0, "turns": ["a", "b"]}
        if reasons is not None:
            choice["finish_reasons"] = reasons[i]
        rows.append({"question_id": q, "answer_id": f"{model}-{q}", "model_id": model, "choices": [choice]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_share_of_turns_cut_at_max_tokens(tmp_path: Path, run_job, shared_bench_data: Path) -> None:  # type: ignore[no-untyped-def]
    answers = tmp_path / "model_answer"
    answers.mkdir()
    # cut: 3 of 20 turns hit the budget (15%, over the 5% warning line)
    cut = [["stop", "stop"]] * 7 + [["length", "stop"], ["stop", "length"], ["length", "stop"]]
    _answers(answers / "cut.jsonl", "cut", cut)
    _answers(answers / "fine.jsonl", "fine", [["stop", "stop"]] * 10)
    _answers(answers / "fastchat.jsonl", "fastchat", None)  # a FastChat file: no finish_reasons
    judgments = tmp_path / "gpt-4_single.jsonl"
    rows = [{"question_id": q, "model": m, "judge": ["gpt-4", "single-v1"], "score": 6, "turn": t}
            for m in ("cut", "fine", "fastchat", "no-answers") for q in QIDS for t in (1, 2)]  # fmt: skip
    judgments.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rep"
    p = run_job("report", "--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--judgments",
                str(judgments), "--answers-dir", str(answers), "--output-dir", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads((out / "report.json").read_text())
    assert doc["truncation"] == {
        "cut": {"turns_truncated": 3, "turns_known": 20, "share": 0.15, "warn": True},
        "fine": {"turns_truncated": 0, "turns_known": 20, "share": 0.0, "warn": False},
        "fastchat": {"turns_truncated": 0, "turns_known": 0, "share": None, "warn": False},
        "no-answers": {"turns_truncated": 0, "turns_known": 0, "share": None, "warn": False},
    }
    md = (out / "report.md").read_text()
    (head,) = [ln for ln in md.splitlines() if ln.startswith("| model | N |")]
    assert "cut at max tokens" in head
    row: dict[str, str] = {}
    for ln in md.splitlines():  # the first table (scores) is the one with the column
        if ln.startswith("| "):
            row.setdefault(ln.split("|")[1].strip(), ln)
    assert "15.0% (3/20) ⚠" in row["cut"] and "0.0% (0/20)" in row["fine"]
    assert "unknown" in row["fastchat"] and "unknown" in row["no-answers"]
    assert "15.0% (3/20) ⚠" in p.stdout  # the summary printed on stdout is the same table
    assert "cut: 3 of 20 answer turns (15%) stopped at max_new_tokens" in p.stderr  # a warning line
    html = (out / "report.html").read_text("utf-8")
    assert "cut at max tokens" in html and "15.0% (3/20)" in html and 'class="bad">15.0%' in html
