#!/usr/bin/env bash
# GPU checks on a CUDA machine: `python -m bench.population --gpu`, then
# `python -m bench.throughput --gpu`.
#
# The population case trains K = 1, 8, 64, 256 members of configs/synthetic.yaml at once
# (mtl_core.population.fit_group) in fp32 and bf16 autocast and reports member rows/s and
# peak GPU memory; writes gpu_population.md/.json. The throughput case sweeps batch sizes
# 512..65536 in fp32 and bf16 autocast (TrainConfig.bf16=True) and reports samples/s and
# the estimated share of the H200's ~4.8 TB/s peak memory bandwidth at the largest batch;
# writes gpu_throughput.md/.json. Both write into --out (default docs/benchmarks).
# Without a CUDA device each runs a tiny CPU fallback and labels it as such.
#
# It needs only torch, numpy, pandas, scikit-learn, pydantic and PyYAML: both modules
# import mtl_core's config/data/model/losses/train/population and never Prefect, MLflow or
# Optuna (each fails if any of them got imported). If pydantic is missing (it is not in
# every CUDA image), put its wheels (pydantic, pydantic-core, annotated-types,
# typing-inspection) in a folder and set MTL_WHEELS to it: they are installed offline into
# a temporary folder.
#
# Usage: bash bench/gpu_check.sh [--out DIR] [--smoke]      (about 2-5 minutes on an H200)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if [[ -n "${MTL_WHEELS:-}" ]]; then
    target="$(mktemp -d)"
    "$PY" -m pip install -q --no-index --no-deps --target "$target" "$MTL_WHEELS"/*.whl
    export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
fi

missing="$("$PY" - <<'PYEOF'
import importlib.util
need = ["torch", "numpy", "pandas", "sklearn", "pydantic", "yaml"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PYEOF
)"
if [[ -n "$missing" ]]; then
    echo "gpu_check: missing Python packages: $missing (see the comment at the top of $0)" >&2
    exit 2
fi

"$PY" -c 'import torch; print("torch", torch.__version__, "cuda:", torch.cuda.is_available(),
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
timeout 290 "$PY" -m bench.population --gpu "$@"
exec timeout 290 "$PY" -m bench.throughput --gpu "$@"
