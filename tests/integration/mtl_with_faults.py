"""Run ``mtl`` in this process with a fault injected: the crash and concurrency tests' driver.

    python tests/integration/mtl_with_faults.py FAULT [mtl arguments ...]

The faults patch library functions in this process only, then call ``mtl``'s
``main``, so the run is the real command up to the injected point:

- ``none``: nothing;
- ``kill-in-trial:N``: SIGKILL this process when trial N reports its second epoch;
- ``kill-after-register``: SIGKILL it right after a model version is registered,
  before the promotion gives it an alias;
- ``meet:DIR:K``: wait (up to 3 minutes) until K processes have got to the same
  point (one file each in a subfolder of DIR) before the search, so that their
  searches overlap, and again after registering; then hold the champion for a
  second after reading it, so that promotions that are not serialised overlap.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import optuna

import flows.cli
from mtl_core.integrations import search, tracking


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_trial(number: int) -> None:
    report = optuna.trial.Trial.report

    def dying_report(self, value, step):
        if self.number == number and step == 2:
            print(f"fault: SIGKILL in trial {number}, epoch {step}")
            _die()
        return report(self, value, step)

    optuna.trial.Trial.report = dying_report


def kill_after_register() -> None:
    register = tracking.log_model_version

    def register_then_die(*args, **kwargs):
        version = register(*args, **kwargs)
        print(f"fault: SIGKILL after registering version {version}")
        _die()

    tracking.log_model_version = register_then_die


def _meet(folder: Path, parties: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + 180
    while len(list(folder.iterdir())) < parties and time.monotonic() < deadline:
        time.sleep(0.1)


def meet(folder: str, parties: int) -> None:
    run_worker, register, champion = (
        search.run_worker,
        tracking.log_model_version,
        tracking.champion,
    )

    def meet_then_search(*args, **kwargs):
        _meet(Path(folder) / "search", parties)
        return run_worker(*args, **kwargs)

    def register_then_meet(*args, **kwargs):
        version = register(*args, **kwargs)
        _meet(Path(folder) / "promotion", parties)
        return version

    def slow_champion(*args, **kwargs):
        current = champion(*args, **kwargs)
        time.sleep(1.0)
        return current

    search.run_worker = meet_then_search
    tracking.log_model_version = register_then_meet
    tracking.champion = slow_champion


def main(fault: str, argv: list[str]) -> int:
    kind, _, arg = fault.partition(":")
    if kind == "kill-in-trial":
        kill_in_trial(int(arg))
    elif kind == "kill-after-register":
        kill_after_register()
    elif kind == "meet":
        folder, parties = arg.rsplit(":", 1)
        meet(folder, int(parties))
    elif kind != "none":
        raise SystemExit(f"unknown fault {fault!r}")
    return flows.cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
