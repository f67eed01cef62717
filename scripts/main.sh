#!/usr/bin/env bash
# The main job: set up what is missing, then plan the challenging MiniMalloc instances and print a table
# (instance, buffers, lower bound, peak, peak / lower bound, method, status, time).
# Extra arguments go to `model-opt bench-placement` (e.g. --method greedy --time-limit 10).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
DATA="${MODEL_OPT_DATA:-$ROOT/../shared/data}/minimalloc/challenging"
[ -d "$DATA" ] || { echo "main: data set not found at $DATA (set MODEL_OPT_DATA to the folder holding minimalloc/)" >&2; exit 2; }
exec "$ROOT/.venv/bin/model-opt" bench-placement "$DATA" "$@"
