#!/usr/bin/env bash
# GPU benchmark of uslib (issue 15): every method's paper-size training step in bf16 autocast
# (images/s, torch.cuda.max_memory_allocated, model FLOP utilisation against the GPU's dense bf16
# peak) and mamba-ssm's CUDA selective scan against our pure-PyTorch path (max abs/rel
# difference within a stated tolerance, speed ratio). About 3-5 minutes on one H100/H200; the
# training steps stop being started after --budget-s (420 s by default), so the whole run stays
# under 8 minutes.
#
# Needs, already installed (nothing is fetched from the network): the project (pip install -e .)
# with the `gpu` extra, i.e. mamba-ssm and causal-conv1d built for the local torch/CUDA
# (without mamba-ssm the scan comparison is skipped and VMamba uses the pure-PyTorch scan).
# Python: $PYTHON, else .venv/bin/python when present, else python3.
#
# Usage: benchmarks/gpu.sh [--out DIR] [--steps 20] [--warmup 3] [--only 'spad/*'] [--dry-run]
#   results: DIR/gpu.json and DIR/gpu.md (default benchmarks/results/gpu/; or $USLIB_GPU_BENCH_OUT)
#   --dry-run: the same code on CPU at smoke size in fp32, in seconds (a check of the script)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi

export MALLOC_MMAP_MAX_="${MALLOC_MMAP_MAX_:-0}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-100000000000}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg

exec "$py" -m benchmarks.gpu "$@"
