#!/usr/bin/env bash
# One prepared GPU check, < 8 minutes on one H100/H200 that has PyTorch and transformers and no network:
#   bash benchmarks/gpu_check.sh [OUT_DIR]        -> OUT_DIR/gpu_check.json (default: $OUT, else the repository root)
# Packages the machine lacks are installed offline from benchmarks/wheelhouse, filled beforehand where there is network:
#   pip download --no-deps -d benchmarks/wheelhouse nvidia-modelopt==0.47.0 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-.}}"
mkdir -p "$OUT_DIR"
if [ -d benchmarks/wheelhouse ]; then
    python -m pip install -q --no-index --no-deps --find-links benchmarks/wheelhouse benchmarks/wheelhouse/*.whl \
        || echo "gpu_check: some wheels did not install; the parts needing them are recorded as skipped"
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
timeout 470 python benchmarks/gpu_check.py "$OUT_DIR/gpu_check.json"
