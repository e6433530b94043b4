#!/usr/bin/env bash
# One GPU check (docs/gpu-check.md): environment, LET's cost on the 1.4B target, correctness under bf16.
# Offline; writes DIR/gpu_check.json and DIR/gpu_check.md. Without CUDA it says so and exits 2.
#   bash scripts/gpu_check.sh [--out runs/gpu_check] [--peak-tflops 989]
#   bash scripts/gpu_check.sh --cpu-smoke --out /tmp/gpu_check   # no GPU: the same path, tiny, fp32
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=$(bash "$root/scripts/env.sh" | tail -n 1)
cd "$root"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
exec "$PY" scripts/gpu_check.py "$@"
