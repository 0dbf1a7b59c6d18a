#!/usr/bin/env bash
# The GPU path end to end on one GPU (under 8 minutes); prints one table. See gpu_smoke.py.
#   bash benchmarks/gpu_smoke.sh              # on a machine with a GPU
#   bash benchmarks/gpu_smoke.sh --rehearse   # the same flow on the CPU, to check the script
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" benchmarks/gpu_smoke.py "$@"
