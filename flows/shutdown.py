"""Stopping cleanly: SIGTERM and SIGINT end ``mtl run`` and everything it started.

Python's default SIGTERM kills the process on the spot: no ``finally``, no
``atexit``, so the temporary Prefect API server (a subprocess, stopped at exit)
and process-pool workers outlived it, and its MLflow run stayed RUNNING. Here
SIGTERM raises :class:`Terminated` instead, in the main thread, like SIGINT
raises ``KeyboardInterrupt``. The flow marks its MLflow run KILLED on the way
out, the pipeline signals its pool workers (which close their running trial),
and :func:`stop_children` ends whatever child process is left.

During a flow run Prefect's engine puts its own SIGTERM handler in front of
this one; it marks the flow run CRASHED and then re-sends the signal, which
lands here.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path


class Terminated(BaseException):
    """SIGTERM, raised as an exception so that cleanup runs (like ``KeyboardInterrupt``)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_once(signum: int, frame) -> None:
    # One exception is enough: a second signal during cleanup must not cut it short.
    signal.signal(signum, signal.SIG_IGN)
    raise Terminated(signum)


def raise_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Terminated` in the main thread (once)."""
    signal.signal(signal.SIGTERM, _raise_once)


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid`` and theirs, children first; from ``/proc`` (Linux).

    Multiprocessing's resource tracker is left out: it ignores SIGTERM, and exits by
    itself (after cleaning up) once this process has exited.
    """
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if b"multiprocessing.resource_tracker" not in command:
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_children(grace_s: float = 10.0) -> list[int]:
    """SIGTERM every descendant process, SIGKILL those alive after ``grace_s``; returns them.

    Without ``/proc`` only the multiprocessing children are known and stopped.
    """
    if not Path("/proc/self/stat").exists():
        procs = multiprocessing.active_children()
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(grace_s)
            if p.is_alive():
                p.kill()
        return [p.pid for p in procs if p.pid]
    pids = _descendants(os.getpid())
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    return pids


def stop_pool_workers(grace_s: float = 30.0) -> None:
    """SIGTERM this process's multiprocessing children (pool workers); SIGKILL after ``grace_s``.

    Workers set up by :func:`init_pool_worker` close their running trial first.
    """
    procs = multiprocessing.active_children()
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()


def _watch_parent(parent: int, grace_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    # The run that started this worker is gone (killed): stop its trials instead of going on.
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(1)


def init_pool_worker(api_url: str, grace_s: float = 30.0) -> None:
    """Set up a process-pool search worker.

    It reports to the flow's API (also the ephemeral one, rather than starting a
    temporary server of its own), turns SIGTERM into :class:`Terminated` so that its
    running trial is closed, and stops itself the same way when its parent process
    dies (a killed run must not leave workers searching on).
    """
    os.environ["PREFECT_API_URL"] = api_url
    raise_on_sigterm()
    watcher = threading.Thread(
        target=_watch_parent, args=(os.getppid(), grace_s), name="mtl-parent-watch", daemon=True
    )
    watcher.start()
