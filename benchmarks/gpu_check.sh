#!/usr/bin/env bash
# The GPU path end to end in one call on a lent GPU machine (under 8 minutes): one table
# (benchmarks/gpu_check.py says what it checks). Prepare here, where the network is:
#   bash benchmarks/gpu_wheels.sh               # sweeper's dependencies that machine lacks -> .whl/
# then, on the GPU machine, from the repository root:
#   bash benchmarks/gpu_check.sh                # PYTHON=... picks the interpreter (default python3)
#   bash benchmarks/gpu_check.sh --rehearse     # the same flow on the CPU, to check the script
# Without a GPU it refuses at once (exit 2, one line) and runs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" != "--rehearse" ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no GPU: nvidia-smi not found (no NVIDIA driver); --rehearse runs the flow on the CPU" >&2
    exit 2
  fi
  LISTED=$(nvidia-smi -L 2>/dev/null || true)  # read whole: under pipefail, grep -q may cut it with SIGPIPE
  if ! grep -q '^GPU ' <<<"$LISTED"; then
    echo "gpu_check: no GPU: nvidia-smi lists none; --rehearse runs the flow on the CPU" >&2
    exit 2
  fi
fi
# the wheels go to a folder of their own on PYTHONPATH, beside this checkout (no install of sweeper)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import optuna, sqlalchemy, alembic, colorlog, cmaes" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu_check: $PY lacks optuna or its dependencies and .whl/ has no wheels: run bash benchmarks/gpu_wheels.sh where pip can download" >&2
    exit 2
  fi
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check-site.XXXXXX")
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" .whl/*.whl
  else  # no pip there: a wheel is a zip of the package folders, which is all an import needs
    for wheel in .whl/*.whl; do "$PY" -m zipfile -e "$wheel" "$SITE"; done
  fi
  export PYTHONPATH="$PYTHONPATH:$SITE"  # ahead of that python's site-packages, which lack these
fi
exec "$PY" benchmarks/gpu_check.py "$@"
