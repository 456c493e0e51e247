"""How cost grows: epoch time against rows, and step time against the number of tasks.

Both use the library's own epoch (``mtl_core.train.train_epoch``: batches sliced from tensors
on the device, AdamW, gradient clipping) on MMoE-synthetic regression rows with 100 features
and the shared-bottom trunk of ``configs/synthetic.yaml``, batch size 256, on the CPU with one
torch thread. Each point is the best of a few repeats, because the machine is shared.

- rows: one epoch over 10^4 .. 10^6 rows (2 tasks); the growth exponent is the slope of a
  least-squares line through log(time) against log(rows).
- tasks: mean time of one optimisation step with 2 .. 32 tasks (one head each, 16,384 rows);
  a least-squares line gives the fixed cost of a step and the cost added by each task.

Run ``python -m bench.scaling [--smoke] [--out DIR]``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import Report, fmt, parse_args, plt
from bench.throughput import model_for, synthetic_data
from mtl_core.config import LossConfig, TrainConfig, load_config
from mtl_core.losses import build_loss
from mtl_core.train import DeviceSplit, train_epoch

BATCH = 256


def _head(split: DeviceSplit, n: int) -> DeviceSplit:
    return DeviceSplit(split.X[:n], split.C[:n], {k: v[:n] for k, v in split.y.items()})


def epoch_seconds(data, n_rows: int, repeats: int) -> tuple[float, int]:
    """Best-of-``repeats`` seconds of one training epoch over the first ``n_rows`` rows."""
    cfg = TrainConfig(batch_size=BATCH, patience=None)
    train = _head(DeviceSplit.from_split(data.splits["train"], torch.device("cpu")), n_rows)
    loss = build_loss(LossConfig(), data.tasks)
    model = model_for(data, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    train_epoch(model, _head(train, 2048), loss, opt, cfg, gen)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        train_epoch(model, train, loss, opt, cfg, gen)
        best = min(best, time.perf_counter() - t0)
    return best, -(-n_rows // BATCH)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    if args.smoke:
        row_sizes, task_counts, task_rows = [1000, 3000, 10000], [2, 4, 8], 2048
    else:
        row_sizes = [10_000, 30_000, 100_000, 300_000, 1_000_000]
        task_counts, task_rows = [2, 4, 8, 16, 32], 16_384
    report = Report(
        "scaling", "How cost grows: rows and tasks", "bench.scaling", args.out, args.smoke
    )
    report.add(
        f"Library epoch (`train_epoch`), trunk {load_config('synthetic').model.hidden}, "
        f"100 features, batch {BATCH}, AdamW, grad clip, CPU, 1 torch thread; best of "
        "3 repeats (1 for the largest size)."
    )

    data = synthetic_data(row_sizes[-1], 10)
    by_rows = []
    for n in row_sizes:
        sec, steps = epoch_seconds(data, n, 1 if n == row_sizes[-1] and n > 100_000 else 3)
        by_rows.append(
            {
                "rows": n,
                "epoch_s": sec,
                "us_per_row": 1e6 * sec / n,
                "ms_per_step": 1e3 * sec / steps,
            }
        )
        print(by_rows[-1], flush=True)
    del data
    exponent = float(
        np.polyfit(
            np.log([r["rows"] for r in by_rows]), np.log([r["epoch_s"] for r in by_rows]), 1
        )[0]
    )
    report.table(
        ["rows", "epoch seconds", "µs per row", "ms per step"],
        [
            [
                f"{r['rows']:,}",
                fmt(r["epoch_s"], 3),
                fmt(r["us_per_row"], 2),
                fmt(r["ms_per_step"], 3),
            ]
            for r in by_rows
        ],
        "Epoch time against rows (2 tasks)",
    )
    report.add(
        f"Fitted growth: epoch time ∝ rows^**{exponent:.2f}** (1.00 would be exactly linear)."
    )

    by_tasks = []
    for t in task_counts:
        d = synthetic_data(task_rows, 10, n_tasks=t)
        sec, steps = epoch_seconds(d, task_rows, 3)
        by_tasks.append({"tasks": t, "ms_per_step": 1e3 * sec / steps})
        print(by_tasks[-1], flush=True)
    slope, intercept = np.polyfit(
        [r["tasks"] for r in by_tasks], [r["ms_per_step"] for r in by_tasks], 1
    )
    base = by_tasks[0]["ms_per_step"]
    report.table(
        ["tasks", "ms per step", "relative to 2 tasks"],
        [
            [r["tasks"], fmt(r["ms_per_step"], 3), f"{r['ms_per_step'] / base:.2f}x"]
            for r in by_tasks
        ],
        f"Step time against tasks ({task_rows:,} rows, batch {BATCH})",
    )
    report.add(f"Least-squares line: step ≈ **{intercept:.3f} ms + {slope:.3f} ms per task**.")

    pyplot = plt()
    fig, (ax1, ax2) = pyplot.subplots(1, 2, figsize=(9, 3.4))
    ax1.loglog([r["rows"] for r in by_rows], [r["epoch_s"] for r in by_rows], "o-")
    ax1.set(
        xlabel="training rows",
        ylabel="epoch seconds",
        title=f"Epoch time vs rows (slope {exponent:.2f})",
    )
    xs = np.array([r["tasks"] for r in by_tasks])
    ax2.plot(xs, [r["ms_per_step"] for r in by_tasks], "o-", label="measured")
    ax2.plot(xs, intercept + slope * xs, ":", label="least-squares line")
    ax2.set(xlabel="tasks", ylabel="ms per step", title="Step time vs tasks")
    ax2.legend(fontsize=8)
    report.figure(fig, "scaling", "epoch time against rows and step time against tasks")
    report.results = {
        "by_rows": by_rows,
        "rows_exponent": exponent,
        "by_tasks": by_tasks,
        "ms_per_task": float(slope),
        "ms_fixed": float(intercept),
        "plots": report.results.get("plots", []),
    }
    report.write()


if __name__ == "__main__":
    main()
