"""`job generate --executor ray`: the shards of one plan scheduled over Ray actors.

One actor per model replica (GPUs per actor = --tensor-parallel-size; none on CPU
machines). Each actor loads the model once, then takes the next pending shard from a
queue until none is left, and writes it with job.generate.generate_shard, so the shard
objects and manifests are exactly those of the array path (Slurm / Indexed Job).
Shards already complete are skipped by the same check (job.generate.pending_shards),
before Ray is even started.

`ray.init(address=RAY_ADDRESS)` attaches to a running cluster (KubeRay, `ray start`);
without RAY_ADDRESS a local Ray is started for the duration of the command.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from job import signals as terminate
from job.backends import load_backend
from job.errors import BackendDead, JobError, Terminated
from job.generate import (
    GenerateConfig,
    ShardPlan,
    backend_options,
    committed_note,
    generate_shard,
    pending_shards,
    plan,
    print_plan,
)
from job.provenance import host
from job.records import ShardManifest
from job.storage import open_storage

log = logging.getLogger(__name__)

# Non-secret settings an actor on another node needs (a local Ray's workers inherit the
# whole environment anyway). Credentials come from the cluster's own AWS/HF chain.
FORWARD_ENV = (
    "JOB_S3_ENDPOINT_URL",
    "JOB_CACHE_DIR",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)
MAX_ATTEMPTS = 2
"""A shard whose actor died (OOM, node lost) is retried once on another replica."""
LOCAL_OBJECT_STORE = 512 * 2**20
"""Only plans and manifests travel through the object store; don't reserve 30% of RAM."""


@dataclass
class RayOptions:
    num_replicas: int | None = None
    """None: GPUs in the cluster // tensor-parallel size, or 1 replica on a CPU-only cluster."""
    cpus_per_replica: float = 1.0
    tensor_parallel_size: int = 1
    device: str = "auto"


class ShardWorker:
    """One model replica. Plain class; wrapped with ray.remote at run time (lazy import)."""

    def __init__(self, cfg: GenerateConfig, p: ShardPlan, env: dict[str, str], log_level: int):
        os.environ.update(env)
        logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s", force=True)
        self.cfg, self.plan = cfg, p
        self.storage = open_storage(cfg.output)
        self.backend: Any = None
        self.loads = 0
        self.load_seconds = 0.0

    def _info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": host(), "loads": self.loads, "load_seconds": self.load_seconds}

    def run_shard(self, index: int) -> dict[str, Any]:
        if self.backend is None:  # once per actor, on its first shard
            t0 = time.monotonic()
            self.backend = load_backend(self.cfg.model, **backend_options(self.cfg))
            self.loads += 1
            self.load_seconds = round(time.monotonic() - t0, 2)
        t0 = time.monotonic()
        manifest = generate_shard(self.cfg, self.plan, index, self.storage, self.backend)
        return {"manifest": manifest.model_dump_json(), "seconds": time.monotonic() - t0, **self._info()}

    def close(self) -> dict[str, Any]:
        if self.backend is not None:
            self.backend.close()
        return self._info()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise JobError("--executor ray needs Ray; run: pip install 'mtbench-job[ray]'") from None
    return ray


def _describe(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err  # RayTaskError wraps the actor's exception
    text = str(cause).strip().splitlines()
    msg = text[-1] if text else ""
    return msg if isinstance(cause, JobError) else f"{type(cause).__name__}: {msg}"


def _check_reachable(address: str, timeout: float = 30.0) -> None:
    """Fail fast on a wrong RAY_ADDRESS: ray.init retries an unreachable GCS for many minutes."""
    hostport = address.removeprefix("ray://")
    host_, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():  # "auto", "local": Ray resolves those itself
        return
    try:
        socket.create_connection((host_, int(port)), timeout=timeout).close()
    except OSError as e:
        raise JobError(
            f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({e.strerror or e}); "
            "check the address (host:6379 for the head's GCS) or unset RAY_ADDRESS for a local Ray"
        ) from None


def _plan_replicas(ray: Any, opts: RayOptions, pending: int, local: bool) -> tuple[int, float, float]:
    """(replicas, GPUs per replica, CPUs per replica) from the options and the cluster."""
    res = ray.cluster_resources()
    gpus_total, cpus_total = float(res.get("GPU", 0)), float(res.get("CPU", 0))
    tp = opts.tensor_parallel_size
    if tp < 1:
        raise JobError(f"--tensor-parallel-size must be >= 1, got {tp}")
    use_gpu = opts.device.startswith("cuda") or (opts.device == "auto" and gpus_total > 0)
    gpus = float(tp) if use_gpu else 0.0
    replicas = opts.num_replicas
    if replicas is None:
        replicas = max(1, int(gpus_total // tp)) if use_gpu else 1
    if replicas < 1:
        raise JobError(f"--num-replicas must be >= 1, got {replicas}")
    replicas = min(replicas, pending)
    need_cpu, need_gpu = replicas * opts.cpus_per_replica, replicas * gpus
    if need_cpu > cpus_total or need_gpu > gpus_total:
        msg = (
            f"{replicas} replicas x ({gpus:g} GPU, {opts.cpus_per_replica:g} CPU) need {need_gpu:g} GPUs and "
            f"{need_cpu:g} CPUs; the Ray cluster has {gpus_total:g} and {cpus_total:g}"
        )
        if local:  # nothing will ever add resources to a local Ray: fail instead of hanging
            raise JobError(msg + "; lower --num-replicas / --cpus-per-replica")
        log.warning("%s; waiting for the autoscaler", msg)
    return replicas, gpus, opts.cpus_per_replica


def _schedule(
    ray: Any, actors: list[Any], todo: list[int], n: int, spawn: Callable[[], Any]
) -> tuple[list[dict], dict[int, str]]:
    """Queue: each idle actor takes the next shard. Returns (results, failures by shard).
    A replica whose engine died (BackendDead) is killed and replaced by a fresh one (spawn)."""
    from ray.exceptions import RayActorError

    queue, idle = deque(todo), deque(range(len(actors)))
    attempts: dict[int, int] = {}
    inflight: dict[Any, tuple[int, int]] = {}
    results: list[dict] = []
    failed: dict[int, str] = {}
    while queue or inflight:
        while queue and idle:
            a, i = idle.popleft(), queue.popleft()
            attempts[i] = attempts.get(i, 0) + 1
            inflight[actors[a].run_shard.remote(i)] = (a, i)
        if not inflight:
            break  # every actor died
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=60)
        if not ready:
            log.info(
                "waiting: shards %s running, %d queued",
                sorted(i + 1 for _, i in inflight.values()),
                len(queue),
            )
            continue
        a, i = inflight.pop(ready[0])
        try:
            res = ray.get(ready[0])
        except RayActorError as e:  # the replica is gone; its shard goes back to the queue once
            log.error("replica %d died during shard %d/%d: %s", a, i + 1, n, _describe(e))
            if attempts[i] < MAX_ATTEMPTS:
                queue.appendleft(i)
            else:
                failed[i] = _describe(e)
            continue
        except Exception as e:  # the shard failed; the replica takes the next one
            if isinstance(getattr(e, "cause", None), BackendDead):  # never reuse a dead engine
                log.error("replica %d: engine died during shard %d/%d; starting a fresh replica", a, i + 1, n)
                ray.kill(actors[a])
                actors[a] = spawn()
                if attempts[i] < MAX_ATTEMPTS:
                    queue.appendleft(i)
                    idle.append(a)
                    continue
            failed[i] = _describe(e)
            log.error("shard %d/%d failed on replica %d: %s", i + 1, n, a, failed[i])
            idle.append(a)
            continue
        m = ShardManifest.model_validate_json(res["manifest"])
        log.info(
            "shard %d/%d done on replica %d (pid %s on %s) in %.1fs: %d conversations, %d tokens",
            i + 1,
            n,
            a,
            res["pid"],
            res["host"],
            res["seconds"],
            m.num_items,
            m.tokens_generated,
        )
        results.append(dict(res, replica=a, index=i, parsed=m))
        idle.append(a)
    for i in queue:
        failed[i] = "no live replica left to run it"
    return results, failed


def run_ray(cfg: GenerateConfig, opts: RayOptions) -> list[ShardManifest]:
    p = plan(cfg)
    if "://" not in cfg.output:  # actors may run in another working directory
        cfg.output = os.path.abspath(cfg.output)
    storage = open_storage(cfg.output)
    address = os.environ.get("RAY_ADDRESS") or None
    if cfg.dry_run:
        print_plan(cfg, p, storage)
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        print(
            f"ray: on {where}; replicas {opts.num_replicas or 'auto'} x (tensor-parallel "
            f"{opts.tensor_parallel_size}, {opts.cpus_per_replica:g} CPU), model loaded once per replica"
        )
        return []
    storage.check_writable()
    todo, done = pending_shards(cfg, p, storage)
    if not todo:
        return done  # nothing to do: don't pay for starting Ray
    ray = _import_ray()
    t0 = time.monotonic()
    if address:
        _check_reachable(address)
        ray.init(address=address, log_to_driver=True)
    else:
        # "local": always a fresh private Ray (RAY_ADDRESS=auto picks up a `ray start` cluster instead)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            address="local",
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE,
            log_to_driver=True,
        )
    terminate.restore()  # ray.init replaced the CLI's SIGTERM handler with sys.exit(15)
    try:
        log.info(
            "ray: %s in %.1fs; resources %s",
            "attached" if address else "started locally",
            time.monotonic() - t0,
            ray.cluster_resources(),
        )
        replicas, gpus, cpus = _plan_replicas(ray, opts, len(todo), local=not address)
        log.info("ray: %d replicas x (%g GPU, %g CPU) for %d shards", replicas, gpus, cpus, len(todo))
        env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
        plan_ref = ray.put(p)
        worker = ray.remote(ShardWorker).options(num_gpus=gpus, num_cpus=cpus, max_restarts=0)
        level = logging.getLogger().getEffectiveLevel()

        def spawn() -> Any:
            return worker.remote(cfg, plan_ref, env, level)

        actors = [spawn() for _ in range(replicas)]
        t1 = time.monotonic()
        results, failed = _schedule(ray, actors, todo, p.num_shards, spawn)
        wall = time.monotonic() - t1
        _summarize(ray, actors, results, wall)
    except Terminated as e:
        ray.shutdown()  # stops the actors; a shard being committed is whole or absent
        e.kept = committed_note(cfg, p, storage)
        raise
    finally:
        ray.shutdown()
    if failed:
        lines = "; ".join(f"shard {i + 1}/{p.num_shards}: {msg}" for i, msg in sorted(failed.items()))
        raise JobError(
            f"{len(failed)} of {len(todo)} shards failed ({lines}); re-run the same command to retry them "
            "(complete shards are skipped)"
        )
    return done + [r["parsed"] for r in sorted(results, key=lambda r: r["index"])]


def _summarize(ray: Any, actors: list[Any], results: list[dict], wall: float) -> None:
    """One line per replica: how often it loaded the model and which shards it ran."""
    infos: list[Any] = []
    for a in actors:
        try:
            infos.append(ray.get(a.close.remote(), timeout=60))
        except Exception as e:  # a dead replica still gets its line
            infos.append({"pid": "?", "host": "?", "loads": "?", "load_seconds": "?", "error": _describe(e)})
    for a, info in enumerate(infos):
        mine = [r for r in results if r["replica"] == a]
        shards = ",".join(str(r["index"] + 1) for r in sorted(mine, key=lambda r: r["index"])) or "-"
        log.info(
            "ray replica %d: pid %s on %s, model loaded %sx (%ss), shards [%s], %.1fs generating",
            a,
            info["pid"],
            info["host"],
            info["loads"],
            info["load_seconds"],
            shards,
            sum(r["seconds"] for r in mine),
        )
    items = sum(r["parsed"].num_items for r in results)
    tokens = sum(r["parsed"].tokens_generated for r in results)
    log.info(
        "ray: %d shards (%d conversations, %d tokens) in %.1fs on %d replicas: %.2f shards/s, %.0f tok/s",
        len(results),
        items,
        tokens,
        wall,
        len(actors),
        len(results) / max(wall, 1e-9),
        tokens / max(wall, 1e-9),
    )
