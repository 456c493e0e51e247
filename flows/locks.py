"""Locks that serialise what two runs must not do at the same time.

- Claiming the next trial of a shared study, so that ``n_trials`` holds however
  many processes search it (see ``mtl_core.integrations.search.run_worker``).
- Promoting a version of a registered model, so that two runs cannot both read
  the old champion and both move the alias.

On embedded defaults a lock is a file in the state folder (``locks/``): the
processes that share that folder share a host, and the operating system
releases the lock of a process that dies. With a Prefect server (the
``PREFECT_API_URL`` setting) it is a global concurrency limit of one slot,
named after the study or the model, so that runs on any host reporting to that
server are serialised; a slot whose holder died is freed when its lease
(:data:`LEASE_S`) runs out.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mtl_core.config import state_dir
from mtl_core.errors import MTLError

LEASE_S = 60  # the shortest lease Prefect grants; renewed while the slot is held
TIMEOUT_S = 600


class LockTimeout(MTLError):
    """Another run held a lock for longer than we wait."""


def lock_name(kind: str, key: str) -> str:
    """``mtl-{kind}-{key}``, safe as a file name and a Prefect name (unique by a short hash)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:80]
    return f"mtl-{kind}-{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Locks:
    """Where this run's locks live; picklable, so process-pool workers use the same ones.

    Attributes:
        server: Use Prefect global concurrency limits (a Prefect server is configured).
        folder: The folder of the file locks otherwise.
    """

    server: bool
    folder: str

    @classmethod
    def for_this_run(cls) -> Locks:
        """Prefect limits when a Prefect server is configured, else files in the state folder.

        Decided once, in the run's own process: pool workers are given the temporary
        API's URL, which is not a server that other runs share.
        """
        from prefect.settings import PREFECT_API_URL

        return cls(bool(PREFECT_API_URL.value()), str(state_dir() / "locks"))

    @contextmanager
    def hold(self, kind: str, key: str, timeout_s: float = TIMEOUT_S) -> Iterator[None]:
        """Hold the lock ``kind``/``key`` (e.g. ``promote``/model name) for the block.

        Raises:
            LockTimeout: Another run held it for more than ``timeout_s``.
        """
        name = lock_name(kind, key)
        if self.server:
            with _prefect_slot(name, timeout_s):
                yield
            return
        from filelock import FileLock, Timeout

        Path(self.folder).mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(Path(self.folder) / f"{name}.lock"))
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise LockTimeout(
                f"lock {lock.lock_file}: another run held it for over {timeout_s:.0f} s"
            ) from None
        try:
            yield
        finally:
            lock.release()


@functools.cache
def _ensure_limit(name: str) -> None:
    """Create the one-slot global concurrency limit ``name`` unless it exists (once a process).

    A limit that does not exist limits nothing, so it must exist before a slot is taken.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run made it meanwhile
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )


@contextmanager
def _prefect_slot(name: str, timeout_s: float) -> Iterator[None]:
    """The one slot of the global concurrency limit ``name``, created when missing."""
    from prefect.concurrency.sync import concurrency

    _ensure_limit(name)
    acquired = False
    try:
        with concurrency(
            name, occupy=1, timeout_seconds=timeout_s, lease_duration=LEASE_S, strict=True
        ):
            acquired = True
            yield
    except TimeoutError:
        if acquired:  # raised by the block, not by waiting for the slot
            raise
        raise LockTimeout(
            f"Prefect concurrency limit '{name}': another run held it for over {timeout_s:.0f} s"
        ) from None
