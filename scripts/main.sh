#!/usr/bin/env bash
# The main job: set up what is missing, then run `model-opt demo`: train a torchvision resnet18 (random
# weights, CPU, a few steps, small batch) with model_opt end to end — capture and reorder, profile, plan,
# planned steps — check its losses against eager PyTorch and print what it saves. Exit 0 when every
# check passes. Extra arguments go to `model-opt demo` (e.g. --model resnet50 --batch-size 8 --steps 5).
# The placement table over the MiniMalloc instances: .venv/bin/model-opt bench-placement ../shared/data/minimalloc/challenging
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/model-opt" demo "$@"
