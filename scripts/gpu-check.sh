#!/usr/bin/env bash
# The CUDA checks in one short command, for a machine with a GPU (about 5 minutes):
# the tests in tests/gpu (captured vs eager step, fallbacks), then the fused benchmark on CUDA.
#   scripts/gpu-check.sh [--steps 200]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")'
python -m pytest -q -rs tests/gpu
python bench/fused.py --device cuda --threads 0 --repeats 3 "$@"
python bench/train_throughput.py --device cuda --repeats 3
