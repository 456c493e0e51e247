#!/usr/bin/env bash
# GPU training-throughput check: `python -m bench.throughput --gpu` on a CUDA machine.
#
# Sweeps batch sizes 512..65536 in fp32 and bf16 autocast (TrainConfig.bf16=True) and reports
# samples/s and the estimated share of the H200's ~4.8 TB/s peak memory bandwidth at the
# largest batch; writes gpu_throughput.md/.json into --out (default docs/benchmarks).
# Without a CUDA device it runs a tiny CPU fallback and labels it as such.
#
# It needs only torch, numpy, pandas, scikit-learn, pydantic and PyYAML: bench.throughput
# imports mtl_core.config/data/model/losses/train and never Prefect, MLflow or Optuna (it
# fails if any of them got imported). If pydantic is missing (it is not in every CUDA image),
# put its wheels (pydantic, pydantic-core, annotated-types, typing-inspection) in a folder
# and set MTL_WHEELS to it: they are installed offline into a temporary folder.
#
# Usage: bash bench/gpu_check.sh [--out DIR] [--smoke]      (about 1-3 minutes on an H200)
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
exec timeout 290 "$PY" -m bench.throughput --gpu "$@"
