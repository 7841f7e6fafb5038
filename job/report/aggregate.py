"""Aggregation, pure: judgment records in, DataFrames out (no I/O, no printing).

- `fastchat_single` / `fastchat_pairwise` reproduce FastChat show_result.py's numbers
  exactly (failed rows dropped, duplicates kept, pooled average, pairwise quirks).
- `score_table` is the long table of scores.csv: per model, category (and `all`) and turn
  (1, 2, `all`), the Swallow convention (mean of the per-choice-run means, sample std across
  runs; for one choice it equals FastChat's pooled mean), n_scored / n_failed, and a 95%
  bootstrap CI of that same mean that resamples questions (all choices and turns of a question
  together), from a stream of its own per (model, category, turn).
- Rows come typed from job.records.judgments.read_judgment (a Swallow / Liquid4All list row
  is one row per choice there); `single_frame` is the one place they become a DataFrame.
- Judge samples (--judge-samples K): `collapse_samples` scores each item by the mean (or
  median) of its samples, `collapse_pair_samples` makes one pair of games of a pairwise
  item's samples, `judge_spread` gives the std of the model mean across samples.
- `per_question` keeps the sums a paired comparison (job.gate) resamples.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from job.errors import JobError
from job.records.judgments import PairRow, SingleRow

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
SINGLE_COLUMNS = ["model", "category", "turn", "mean", "std", "n_scored", "n_failed", "ci_low", "ci_high"]
PAIR_COLUMNS = ["model", "win", "loss", "tie", "win_rate", "loss_rate", "win_rate_adjusted"]


def single_frame(records: Iterable[SingleRow], categories: dict[str, str]) -> pd.DataFrame:
    """One row per single-mode judgment: model, question_id, category, turn, choice, sample,
    score, ok, judge, prompt (built here only, from the typed rows).

    A failed row of ours that a later run re-judged successfully (same key) is superseded:
    it is neither scored nor counted as failed. FastChat's rows (no status) are kept as they are.
    """
    rows = [
        (r.model, str(r.question_id), r.turn, r.choice, r.sample_index, float(r.score),
         r.status_of == "ok" and r.score != -1, r.ours, r.judge_name, r.prompt_name)
        for r in records
    ]  # fmt: skip
    df = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    df["category"] = [categories.get(q, "unknown") for q in df["question_id"]]
    key = [*ITEM_KEY, "sample"]
    done = df[df["ok"]].groupby(key).size().rename("n_ok").reset_index()
    df = df.merge(done, on=key, how="left")
    superseded = df["ours"] & ~df["ok"] & df["n_ok"].fillna(0).gt(0)
    return df[~superseded].drop(columns=["n_ok"]).reset_index(drop=True)


FRAME_COLUMNS = ["model", "question_id", "turn", "choice", "sample", "score", "ok", "ours", "judge", "prompt"]
ITEM_KEY = ["judge", "prompt", "question_id", "turn", "model", "choice"]
SAMPLE_AGGS = ("mean", "median")


def judge_samples(df: pd.DataFrame) -> int:
    """K: how many judge samples the rows hold (1 for every FastChat file)."""
    return int(df["sample"].nunique()) if len(df) else 1


def _check_agg(how: str) -> None:
    if how not in SAMPLE_AGGS:
        raise JobError(f"--sample-agg must be mean or median, got {how!r}")


def collapse_samples(df: pd.DataFrame, how: str = "mean") -> pd.DataFrame:
    """One row per item (model, question, turn, choice) that has several judge samples, scored
    by the mean (or median) of its samples' scores; an item with no scored sample is one
    failed row. An item with one sample index keeps its rows as they are: duplicates stay
    duplicates, as in FastChat (with K = 1 everywhere the frame is returned as it is)."""
    _check_agg(how)
    if df.empty:
        return df
    group = [*ITEM_KEY, "category"]
    multi = df.groupby(group)["sample"].transform("nunique").gt(1)
    if not multi.any():
        return df
    d = df[multi]
    ok = d[d["ok"]].groupby(group)["score"].agg(how).reset_index()
    ok["ok"] = True
    failed = d[~d["ok"]].drop_duplicates(group).merge(ok[group], on=group, how="left", indicator=True)
    failed = failed[failed["_merge"] == "left_only"][[*group, "score", "ok"]]
    out = pd.concat([ok, failed], ignore_index=True)
    out["sample"], out["ours"] = 0, True
    out = pd.concat([df[~multi], out], ignore_index=True)
    return out.sort_values(group, kind="stable").reset_index(drop=True)


VERDICT_SCORE = {"model_1": 1.0, "tie": 0.5, "model_2": 0.0}
"""a game's verdict as model_1's score, for aggregating judge samples"""


def combined(values: Sequence[float], how: str) -> float:
    """Judge samples' values made one as --sample-agg says: their mean or median."""
    return float(np.mean(values) if how == "mean" else np.median(values))


def _verdict(verdicts: list[str], how: str) -> str:
    s = combined([VERDICT_SCORE[v] for v in verdicts], how)
    return "model_1" if s > 0.5 else "model_2" if s < 0.5 else "tie"


def collapse_pair_samples(rows: list[PairRow], how: str = "mean") -> list[PairRow]:
    """One pair of games per item (judge, prompt, question, turn, model_1, model_2, choice)
    that has several judge samples: each game's verdict is the mean (or median) of its
    samples' verdicts scored model_1 1, tie 0.5, model_2 0 (above 0.5 model_1, below model_2,
    else tie), over the samples with neither game `error`; an item with none is one error
    pair. An item with one sample index keeps its rows (FastChat's duplicates count)."""
    _check_agg(how)
    items: dict[tuple[Any, ...], list[PairRow]] = {}
    for r in rows:
        key = (r.judge_name, r.prompt_name, str(r.question_id), r.turn, r.model_1, r.model_2, r.choice)
        items.setdefault(key, []).append(r)
    if all(len({r.sample_index for r in g}) <= 1 for g in items.values()):
        return rows
    out: list[PairRow] = []
    for g in items.values():
        if len({r.sample_index for r in g}) <= 1:
            out += g
            continue
        valid = [r for r in g if "error" not in (r.g1_winner, r.g2_winner)]
        if not valid:
            out.append(g[0])  # every sample failed: one error pair, counted once
            continue
        g1, g2 = (_verdict([getattr(r, f) for r in valid], how) for f in ("g1_winner", "g2_winner"))
        out.append(valid[0].model_copy(update={"g1_winner": g1, "g2_winner": g2, "sample": None}))
    return out


def judge_spread(df: pd.DataFrame, models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per model: the judge's own spread, the reported mean computed on each judge sample k
    alone (over choice runs, as the score) and the sample std (ddof=1) of those K means."""
    out: dict[str, dict[str, Any]] = {}
    for m in models:
        d = df[df["model"] == m]
        means = [float(_run_means(d[d["sample"] == k]).mean()) for k in sorted(d["sample"].unique())]
        std = float(np.std(means, ddof=1)) if len(means) > 1 else math.nan
        out[m] = {"k": len(means), "means": means, "std": std}
    return out


def fastchat_single(df: pd.DataFrame, model_list: Sequence[str] | None = None) -> dict[str, pd.Series]:
    """show_result.py single mode: drop failed rows, keep duplicates; turn 1, turn 2 and the
    average over all remaining rows of both turns pooled (not the mean of the turn means)."""
    d = df[df["ok"]]
    if model_list:
        d = d[d["model"].isin(model_list)]
    out = {
        "turn1": d[d["turn"] == 1].groupby("model")["score"].mean(),
        "turn2": d[d["turn"] == 2].groupby("model")["score"].mean(),
        "average": d.groupby("model")["score"].mean(),
    }
    return {k: v.sort_values(ascending=False) for k, v in out.items()}


def _run_means(d: pd.DataFrame) -> pd.Series:
    return d[d["ok"]].groupby("choice")["score"].mean()


def rng_for(seed: int, *parts: str) -> np.random.Generator:
    """A bootstrap stream of its own per (model, category, turn): one model's CI never depends
    on which other models share the report (Python's hash() is salted, so sha256)."""
    digest = hashlib.sha256("\0".join([str(seed), *parts]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def question_matrix(d: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(question ids, sums[question, choice], counts[question, choice]) of the scored rows."""
    ok = d[d["ok"]]
    sums = ok.pivot_table(index="question_id", columns="choice", values="score", aggfunc="sum", fill_value=0)
    counts = ok.pivot_table(
        index="question_id", columns="choice", values="score", aggfunc="count", fill_value=0
    )
    return [str(q) for q in sums.index], sums.to_numpy(float), counts.to_numpy(float)


def resampled_means(sums: np.ndarray, counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The reported mean (mean over choice runs of each run's mean) of each resample of
    questions idx[b, :]; a run with no scored row in a resample is left out of it."""
    s, c = sums[idx].sum(axis=1), counts[idx].sum(axis=1)  # (samples, choices)
    runs = np.divide(s, c, out=np.zeros_like(s), where=c > 0)
    n = (c > 0).sum(axis=1)
    return np.divide(runs.sum(axis=1), n, out=np.full(len(n), math.nan), where=n > 0)


def percentile_ci(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _bootstrap_ci(d: pd.DataFrame, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile CI of the reported mean, resampling questions (all their choices and turns)."""
    qids, sums, counts = question_matrix(d)
    if not qids:
        return math.nan, math.nan
    idx = rng.integers(0, len(qids), size=(BOOTSTRAP_SAMPLES, len(qids)))
    return percentile_ci(resampled_means(sums, counts, idx))


def score_table(
    df: pd.DataFrame, model_list: Sequence[str] | None = None, seed: int = BOOTSTRAP_SEED
) -> pd.DataFrame:
    """scores.csv: one row per (model, category|all, turn 1|2|all)."""
    rows = []
    models = [m for m in (model_list or sorted(df["model"].unique())) if m in set(df["model"])]
    for model in models:
        dm = df[df["model"] == model]
        for cat in ["all", *sorted(dm["category"].unique())]:
            dc = dm if cat == "all" else dm[dm["category"] == cat]
            for turn in ("1", "2", "all"):
                dt = dc if turn == "all" else dc[dc["turn"] == int(turn)]
                if dt.empty:
                    continue
                runs = _run_means(dt)
                lo, hi = _bootstrap_ci(dt, rng_for(seed, model, cat, turn))
                rows.append({
                    "model": model, "category": cat, "turn": turn,
                    "mean": float(runs.mean()) if len(runs) else math.nan,
                    "std": float(runs.std(ddof=1)) if len(runs) > 1 else math.nan,
                    "n_scored": int(dt["ok"].sum()), "n_failed": int((~dt["ok"]).sum()),
                    "ci_low": lo, "ci_high": hi, "n_runs": int(len(runs)),
                })  # fmt: skip
    return pd.DataFrame(rows, columns=[*SINGLE_COLUMNS, "n_runs"])


def per_question(df: pd.DataFrame, models: Sequence[str]) -> dict[str, Any]:
    """report.json's per-question sums and counts per choice run (both turns), so a later
    comparison can bootstrap the two reports paired over the questions they share."""
    out: dict[str, Any] = {}
    for model in models:
        d = df[df["model"] == model]
        qids, sums, counts = question_matrix(d)
        cats = d.drop_duplicates("question_id").set_index("question_id")["category"]
        out[model] = {
            q: {"category": str(cats[q]), "sum": sums[i].tolist(), "n": counts[i].astype(int).tolist()}
            for i, q in enumerate(qids)
        }
    return out


def run_means(df: pd.DataFrame, model: str, turn: str = "all", category: str = "all") -> list[float]:
    """Each choice-run's mean for one model (Swallow: one number per sample index)."""
    d = df[df["model"] == model]
    if category != "all":
        d = d[d["category"] == category]
    if turn != "all":
        d = d[d["turn"] == int(turn)]
    return [float(x) for x in _run_means(d)]


def pair_frame(records: Iterable[PairRow]) -> pd.DataFrame:
    cols = ["model_1", "model_2", "g1_winner", "g2_winner", "question_id", "turn", "choice"]
    rows = [
        (r.model_1, r.model_2, r.g1_winner, r.g2_winner, str(r.question_id), r.turn, r.choice)
        for r in records
    ]
    return pd.DataFrame(rows, columns=cols)


def fastchat_pairwise(
    df: pd.DataFrame, mode: str, baseline: str | None, model_list: Sequence[str] | None = None
) -> tuple[pd.DataFrame, int]:
    """show_result.py pairwise: (table sorted by win_rate_adjusted, rows dropped as error).

    Quirks kept: --model-list filters model_1 only; a tie or inconsistent pair of games is a
    tie for both; pairwise-all ignores the baseline; the baseline's own row is dropped.
    """
    if mode == "pairwise-all":
        baseline = None
    bad = (df["g1_winner"] == "error") | (df["g2_winner"] == "error")
    d = df[~bad]
    res = []
    for r in d.itertuples(index=False):
        if model_list and r.model_1 not in model_list:
            continue
        if baseline is not None and baseline not in (r.model_1, r.model_2):
            continue
        g1, g2 = str(r.g1_winner), str(r.g2_winner)
        if g1 == "tie" or g1 != g2:
            res += [(r.model_1, 0, 0, 1), (r.model_2, 0, 0, 1)]
        else:
            win, lose = (r.model_1, r.model_2) if g1 == "model_1" else (r.model_2, r.model_1)
            res += [(win, 1, 0, 0), (lose, 0, 1, 0)]
    if not res:
        return pd.DataFrame(columns=PAIR_COLUMNS), int(bad.sum())
    t = pd.DataFrame(res, columns=["model", "win", "loss", "tie"]).groupby("model").sum()
    if baseline is not None:
        t = t[t.index != baseline]
    n = t["win"] + t["loss"] + t["tie"]
    t["win_rate"] = t["win"] / n
    t["loss_rate"] = t["loss"] / n
    t["win_rate_adjusted"] = (t["win"] + 0.5 * t["tie"]) / n
    t = t.sort_values(by="win_rate_adjusted", ascending=False).reset_index()
    return t[PAIR_COLUMNS], int(bad.sum())
