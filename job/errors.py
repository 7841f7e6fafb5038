"""The one exception type users see: a one-line message that names the fix."""


class JobError(Exception):
    """A user-facing error. The CLI prints it as one line and exits non-zero."""

    exit_code = 2


class IncompleteError(JobError):
    """Work that may still arrive (shards still running); `--wait` polls on this one."""


class Terminated(BaseException):
    """SIGTERM arrived (Slurm/Kubernetes preemption, scancel, kubectl delete).

    A BaseException, like KeyboardInterrupt, so `except Exception` handlers cannot swallow
    it while finally blocks still run. Commands set `kept` to say what was saved; the CLI
    prints it and exits 143 (128 + SIGTERM), as a process killed by the signal would.
    """

    exit_code = 143

    def __init__(self, kept: str = "") -> None:
        super().__init__("terminated by SIGTERM")
        self.kept = kept


class BackendDead(JobError):
    """The engine can take no more requests (vLLM's EngineDeadError, a CUDA error that
    poisons the context): not one request's failure, so nothing in flight is committed.
    The process exits 75 (EX_TEMPFAIL, "try again") so Slurm, Kubernetes or Ray run the
    shard again on a fresh process instead of recording its requests as failed."""

    exit_code = 75
