"""Who owns a run or a trial, and whether that process is still alive.

A run, a trial or a flow run records its owner when it starts: the host, the
process id and the process's start time. A later process on the same host can
then tell a dead owner (no such process, a zombie, or the pid now belongs to a
process started later) from a live one, and close what the dead one left
RUNNING. On another host, or in another PID namespace of the same host (a
container), it cannot tell; :meth:`Owner.alive` says so with ``None`` and the
caller leaves the record alone (Optuna's RDB heartbeat covers trials across
hosts).

The start time makes a reused pid harmless. It is read from ``/proc`` (the
kernel's boot id and the process's start tick), so it exists on Linux only;
elsewhere a pid that exists counts as alive.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


def _boot_id() -> str | None:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, str] | None:
    """``(state, start tick)`` of ``pid`` from ``/proc/<pid>/stat``; None when unreadable."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], fields[19]  # fields 3 (state) and 22 (starttime) of proc(5)


def _pid_namespace() -> str | None:
    try:
        return os.readlink(_PROC / "self/ns/pid")  # e.g. "pid:[4026531836]"
    except OSError:
        return None


def _start_token(pid: int) -> str | None:
    boot, stat = _boot_id(), _stat(pid)
    return f"{boot}/{stat[1]}" if boot and stat else None


@dataclass(frozen=True)
class Owner:
    """A process that owns a run or a trial: host, pid, and (Linux) start time and PID namespace."""

    host: str
    pid: int
    started: str | None = None
    namespace: str | None = None

    @classmethod
    def current(cls) -> Owner:
        """This process (computed once per process; a forked child gets its own)."""
        return _current(os.getpid())

    def as_dict(self) -> dict[str, str]:
        """Flat string fields, for MLflow tags, Prefect labels and Optuna user attrs."""
        out = {"host": self.host, "pid": str(self.pid)}
        if self.started:
            out["started"] = self.started
        if self.namespace:
            out["namespace"] = self.namespace
        return out

    @classmethod
    def from_dict(cls, fields: dict[str, str] | None) -> Owner | None:
        """The owner recorded by :meth:`as_dict`; None when there is none or it is malformed."""
        if not fields or "host" not in fields or "pid" not in fields:
            return None
        try:
            pid = int(fields["pid"])
        except (TypeError, ValueError):
            return None
        return cls(
            str(fields["host"]), pid, fields.get("started") or None, fields.get("namespace") or None
        )

    def alive(self) -> bool | None:
        """Whether the owner still runs; None when it ran on another host or PID namespace."""
        if self.host != socket.gethostname():
            return None
        if self.namespace and self.namespace != _pid_namespace():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # a process of another user holds the pid: compare start times below
        stat = _stat(self.pid)
        if stat is None:  # without /proc the pid exists, so it counts as alive
            return not _PROC.is_dir()
        if stat[0] in ("Z", "X"):  # exited, not yet reaped by its parent
            return False
        return self.started is None or self.started == _start_token(self.pid)

    def describe(self) -> str:
        """``process 123 on host h``."""
        return f"process {self.pid} on host {self.host}"


@functools.cache
def _current(pid: int) -> Owner:
    return Owner(socket.gethostname(), pid, _start_token(pid), _pid_namespace())
