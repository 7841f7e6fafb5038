"""Several models in one `job run` (--model A --model B, --models-file): one after another,
each resumable; a finished model (same settings: `fingerprint`, same file contents:
`inputs_of`) is not run again, only gated."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from job import gate as g
from job.errors import JobError, Terminated
from job.layout import reports_dir
from job.names import path_name
from job.pipeline import (
    RunConfig,
    RunResult,
    check,
    finish,
    model_name,
    refresh_leaderboard,
    run_model,
    step_for,
)

log = logging.getLogger(__name__)

JUDGE_SETTINGS = ("judge_samples", "judge_temperature", "parse_retries")
"""The judge's sampling fields, kept in the fingerprint as `judge_settings` (its form before
RunConfig held a JudgeConfig), so models finished before are still found finished."""


@dataclass
class Outcome:
    name: str
    result: RunResult | None = None
    error: str = ""
    exit_code: int = g.EXIT_OK


def per_model(cfg: RunConfig) -> list[RunConfig]:
    """One RunConfig per model, checked (names, baseline, report places) before any work."""
    if cfg.step is not None:
        raise JobError("--step names one checkpoint; with several models each step comes from --step-pattern")
    gen, out = cfg.generate, cfg.generate.output
    if out.startswith("s3://") and not (cfg.report_dir or cfg.publish):
        raise JobError(
            "several models with an s3:// --output: pass --report-dir DIR (one folder per model) or "
            "--publish DEST, or each model's report would replace the last one's"
        )
    local_reports = cfg.report_dir or (
        None if out.startswith("s3://") else os.path.join(out, reports_dir(gen.bench))
    )
    subs: list[RunConfig] = []
    seen: dict[str, str] = {}
    for spec, name in cfg.models:
        sub = replace(cfg, models=[], generate=replace(gen, model=spec, model_name=name), junit_xml=None)
        n = model_name(sub)
        if n in seen:
            raise JobError(
                f"models {seen[n]} and {spec} both get the name {n!r}; name them in --models-file (SPEC NAME per line)"
            )
        seen[n] = spec
        sub.generate.model_name = n
        if cfg.tracking and cfg.tracking.run_name:  # one tracking run per model: NAME-<model>
            sub.tracking = replace(cfg.tracking, run_name=f"{cfg.tracking.run_name}-{n}")
        if local_reports:
            sub.report_dir = os.path.join(local_reports, path_name(n))
        check(sub)
        subs.append(sub)
    return subs


def done_key(cfg: RunConfig) -> str:
    return f"{reports_dir(cfg.generate.bench)}done/{path_name(str(cfg.generate.model_name))}.json"


SPEED_OPTIONS = frozenset({
    "base_url", "concurrency", "request_timeout", "max_retries", "batch_size",
    "device", "device_map", "tensor_parallel_size", "gpu_memory_utilization", "enforce_eager",
})  # fmt: skip
"""Generation backend options that change how fast or where, not what is answered (the shards'
config hash leaves them out too): a requeue on another node or port is the same run."""


def fingerprint(cfg: RunConfig, legacy: bool = False) -> str:
    """What a finished model's result depends on; a change of any of it redoes the model.
    `legacy`: the form of markers written before `inputs` (it also held the SPEED_OPTIONS)."""
    gen = {k: v for k, v in asdict(cfg.generate).items() if k not in ("dry_run", "num_shards", "shard_index")}
    if not legacy:
        gen["backend_options"] = {k: v for k, v in gen["backend_options"].items() if k not in SPEED_OPTIONS}
    judge = cfg.judge
    blob = {
        "generate": gen,
        "judge_model": judge.judge_model,
        "judge_name": judge.judge_name,
        "reference": judge.reference,
        "judge_settings": {k: getattr(judge, k) for k in JUDGE_SETTINGS},
        **{k: getattr(cfg, k) for k in ("allow_failed", "report_dir", "publish")},
        "step": step_for(cfg, str(gen["model_name"])),
        # only when set: a model finished before these options existed is still found finished
        **({"keep_reasoning": True} if judge.keep_reasoning else {}),
        **({"sample_agg": cfg.sample_agg} if cfg.sample_agg != "mean" else {}),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def inputs_of(cfg: RunConfig) -> dict[str, Any]:
    """The contents behind the settings, which `fingerprint` names only by path or spec: the
    answers' config hash (weights, question file, chat template), the judge's weights, judge
    prompt file and reference file. A checkpoint or bench file changed in place redoes the model."""
    from job.benches import resolve_bench, sha256_bytes
    from job.generate.plan import plan
    from job.judge.plan import judge_fingerprint
    from job.judge.prompts import load_prompt_set

    judge, gen = cfg.judge, cfg.generate
    bench = resolve_bench(gen.bench, gen.bench_data)
    ref = judge.reference or bench.default_reference
    ref_path = bench.reference_path(ref) if ref else None
    judge_fp = judge_fingerprint(judge.judge_model, judge.backend_options.get("gguf_file")) or {}
    return {
        "answers_config": plan(replace(gen)).config_hash,
        "judge_weights": {k: v for k, v in judge_fp.items() if k != "path"},  # a copy: the same judge
        "judge_prompts_sha256": load_prompt_set(judge.judge_prompts or bench.judge_prompts_path).sha256,
        "reference_sha256": sha256_bytes(ref_path.read_bytes()) if ref_path and ref_path.is_file() else None,
    }


def run_finished(cfg: RunConfig) -> RunResult | None:
    """The earlier result of this very model and configuration, gated again; None: run it."""
    from job.report.publish import load_report
    from job.storage import open_storage

    storage, key = open_storage(cfg.generate.output), done_key(cfg)
    if cfg.generate.force or cfg.generate.dry_run or not storage.exists(key):
        return None
    done = json.loads(storage.read_bytes(key))
    # a marker from before `inputs`: its settings alone, as then (nothing to check contents with)
    legacy = "inputs" not in done
    if done.get("fingerprint") != fingerprint(cfg, legacy) or not (
        legacy or done["inputs"] == inputs_of(cfg)
    ):
        return None
    try:
        doc = load_report(str(done["report"]))
    except JobError:
        return None  # its report is gone: redo (every stage resumes, so little is repeated)
    log.info(
        "%s: finished before with these settings (%s); not run again", cfg.generate.model_name, done["report"]
    )
    return replace(finish(cfg, doc, check(cfg)), report=str(done["report"]))


def run_one(cfg: RunConfig) -> Outcome:
    name = str(cfg.generate.model_name)
    try:
        res = run_finished(cfg) or run_model(cfg, leaderboard=False)
    except Terminated:
        raise  # preemption stops the whole run; what is done stays done
    except JobError as e:
        return Outcome(name, error=f"error: {e}", exit_code=e.exit_code)
    except Exception as e:  # a model that crashes must not stop the others
        log.exception("%s failed", name)
        return Outcome(name, error=f"{type(e).__name__}: {e}", exit_code=1)
    if res.report and not cfg.generate.dry_run:
        where = res.report if "://" in res.report else os.path.abspath(res.report)
        done = {"model": cfg.generate.model, "report": where, "fingerprint": fingerprint(cfg),
                "inputs": inputs_of(cfg)}  # fmt: skip
        from job.storage import open_storage

        open_storage(cfg.generate.output).write_bytes(done_key(cfg), json.dumps(done, indent=2).encode())
    return Outcome(name, res, exit_code=res.exit_code)


def run_models(cfg: RunConfig) -> RunResult:
    """Each model in turn; a failure is recorded and the next one runs; one leaderboard at the end."""
    subs = per_model(cfg)
    outcomes = []
    for i, sub in enumerate(subs, 1):
        log.info("=== model %d/%d: %s (%s)", i, len(subs), sub.generate.model_name, sub.generate.model)
        outcomes.append(run_one(sub))
    refresh_leaderboard(cfg)
    results = [r for o in outcomes if o.result for r in o.result.gate]
    if cfg.junit_xml:
        Path(cfg.junit_xml).write_bytes(g.junit_xml(results, cfg.generate.bench))
    failed = [o for o in outcomes if o.error]
    for o in failed:
        print(f"FAILED {o.name}: {o.error}", flush=True)
    codes = [o.exit_code for o in outcomes]
    code = max((c for c in codes if c != g.EXIT_REGRESSION), default=0) or max(codes)
    line = (
        f"MODELS: {len(outcomes) - len(failed)} of {len(outcomes)} finished"
        + (f"; failed: {', '.join(o.name for o in failed)}" if failed else "")
        + ("; regression" if g.EXIT_REGRESSION in codes else "")
    )
    print(line, flush=True)
    return RunResult(code, None, results, line)
