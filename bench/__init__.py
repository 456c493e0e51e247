"""Benchmarks: model quality against single-task models and published numbers, speed and scale.

Each module runs on its own (``python -m bench.quality``, ``python -m bench.throughput``, ...)
and writes ``<name>.md`` (a header with command, date and machine, then the measured tables),
``<name>.json`` (the same numbers, for tests) and PNG plots into ``--out``
(default ``docs/benchmarks``; ``--smoke`` runs tiny sizes into ``.state/bench-smoke``).
``python -m bench.run_all`` runs them all and assembles ``docs/BENCHMARKS.md``.

Nothing in this package imports Prefect, MLflow or Optuna at module level except the
benchmarks that exist to measure them, so ``bench.throughput`` runs on a machine that has
only torch, pandas, scikit-learn, pydantic and PyYAML (see ``bench/gpu_check.sh``).
"""
