"""SIGTERM as an exception (job.errors.Terminated), so cleanup runs on preemption.

Python's default SIGTERM action ends the process at once: no finally block, no flush
of work already done. And a process that is PID 1 in a container ignores SIGTERM
unless it installs a handler, so Kubernetes would wait out the whole grace period and
SIGKILL it. `install()` (called by the CLI) makes SIGTERM raise Terminated in the main
thread; `critical()` defers it past a write and the bookkeeping that records the write,
so the two happen together or not at all.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from job.errors import Terminated

_state = {"installed": False, "received": False, "deferred": False, "depth": 0}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _state["received"]:
        return  # a second SIGTERM while stopping: cleanup is already under way
    _state["received"] = True
    if _state["depth"]:
        _state["deferred"] = True
        return
    raise Terminated()


def install() -> None:
    """Route SIGTERM to Terminated (main thread only: Python delivers signals there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        _state["installed"] = True


def restore() -> None:
    """Install again after a library replaced the handler (ray.init sets sys.exit(15)),
    if the CLI had installed it."""
    if _state["installed"]:
        install()


def received() -> bool:
    return bool(_state["received"])


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A SIGTERM arriving inside the block is raised when the block ends (main thread;
    elsewhere a no-op, since signal handlers never run on other threads)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
    if not _state["depth"] and _state["deferred"]:
        _state["deferred"] = False
        raise Terminated()
