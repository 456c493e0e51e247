"""Shared helpers of the benchmark scripts: arguments, machine facts, timing, reports.

A :class:`Report` collects markdown (tables, plots, measured sentences) and machine-readable
results, then writes ``<out>/<name>.md`` with a header that says which command produced it,
when, and on what machine, plus ``<out>/<name>.json`` with the same numbers. Every number in
those files comes from the run that wrote them.

This module imports neither Prefect, MLflow nor Optuna (``bench/gpu_check.sh`` relies on that).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCS_DIR = REPO / "docs" / "benchmarks"
SMOKE_DIR = REPO / ".state" / "bench-smoke"


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """Common flags: ``--smoke`` (tiny sizes) and ``--out`` (where reports go)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for tests (seconds)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output folder (default {DOCS_DIR.relative_to(REPO)}, or "
        f"{SMOKE_DIR.relative_to(REPO)} with --smoke)",
    )
    if extra:
        extra(parser)
    args = parser.parse_args()
    args.out = (args.out or (SMOKE_DIR if args.smoke else DOCS_DIR)).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def gpu_name() -> str | None:
    """The CUDA device's name, or None (torch is imported lazily)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def machine_line() -> str:
    """One line: cores, CPU model, GPU or not, torch version and threads, load average."""
    import torch

    gpu = gpu_name()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores, {cpu_model()}, "
        + (f"GPU: {gpu}" if gpu else "no GPU")
        + f"; Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads); load average (1/5/15 min) at start {load}"
    )


def command_line(module: str) -> str:
    """The command that reproduces this run, e.g. ``python -m bench.quality --smoke``."""
    args = [a if " " not in a else repr(a) for a in sys.argv[1:]]
    out = [str(Path(a).relative_to(REPO)) if a.startswith(str(REPO)) else a for a in args]
    return " ".join(["python -m", module, *out])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of the finite values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt(x: float | None, digits: int = 4) -> str:
    """A number for a table; ``–`` for missing or NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 1e5 or digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def fmt_pm(values: Sequence[float], digits: int = 4) -> str:
    """``mean ± std`` of a list of values."""
    m, s = mean_std(values)
    if not math.isfinite(m):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are str()-ed."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def met(value: float, target: float, higher_is_better: bool = True) -> str:
    """``met`` or ``missed`` for a measured value against its target."""
    if not math.isfinite(value):
        return "missed (no value)"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "missed"


class Timer:
    """Context manager measuring wall seconds (``perf_counter``)."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0


class Report:
    """One benchmark's report: markdown parts, plots and a results dict.

    Args:
        name: File stem (``quality`` writes ``quality.md`` and ``quality.json``).
        title: Heading of the report.
        module: Module that produced it, for the command line in the header.
        out: Output folder.
        smoke: Whether this was a smoke run (said in the header).
    """

    def __init__(self, name: str, title: str, module: str, out: Path, smoke: bool) -> None:
        self.name, self.title, self.out, self.smoke = name, title, out, smoke
        self.command = command_line(module)
        self.date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.machine = machine_line()
        self.parts: list[str] = []
        self.results: dict[str, Any] = {}
        self.t0 = time.perf_counter()

    def add(self, markdown: str) -> None:
        """Append a markdown block (a table, a sentence computed from the numbers)."""
        self.parts.append(markdown.strip("\n"))
        print(markdown.strip("\n") + "\n", flush=True)

    def table(
        self, headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = ""
    ) -> None:
        """Append a table, with an optional bold caption above it."""
        self.add((f"**{caption}**\n\n" if caption else "") + md_table(headers, rows))

    def figure(self, fig, stem: str, alt: str) -> Path:
        """Save a matplotlib figure as ``<out>/<stem>.png`` and link it."""
        import matplotlib.pyplot as plt

        path = self.out / f"{stem}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.parts.append(f"![{alt}]({path.name})")
        self.results.setdefault("plots", []).append(path.name)
        return path

    def write(self) -> Path:
        """Write ``<name>.md`` and ``<name>.json``; returns the markdown path."""
        seconds = time.perf_counter() - self.t0
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        header = [
            f"### {self.title}",
            "",
            f"- command: `{self.command}`" + (" (smoke sizes)" if self.smoke else ""),
            f"- date: {self.date}",
            f"- machine: {self.machine}",
            f"- wall time of this benchmark: {seconds:.0f} s; load average at the end {load}",
            "",
        ]
        md = "\n".join(header) + "\n" + "\n\n".join(self.parts) + "\n"
        path = self.out / f"{self.name}.md"
        path.write_text(md)
        payload = {
            "name": self.name,
            "command": self.command,
            "date": self.date,
            "machine": self.machine,
            "smoke": self.smoke,
            "seconds": seconds,
            "results": self.results,
        }
        (self.out / f"{self.name}.json").write_text(json.dumps(payload, indent=2, default=_json))
        print(f"wrote {path} ({seconds:.0f} s)", flush=True)
        return path


def _json(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def plt():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines would drown the tables."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
