#!/usr/bin/env bash
# Here, before a GPU check: the wheels of sweeper's dependencies that a lent GPU machine's python
# lacks (CPython 3.12, x86_64; it has torch, timm, typer, pandas, scikit-learn, pytest), into
# .whl/ (git ignores it; benchmarks/gpu_check.sh installs them there). The versions are the ones
# this checkout's .venv runs, checked against pyproject.toml; the total must stay well under the
# 64 MiB of untracked files that travel with a checkout.
#   bash benchmarks/gpu_wheels.sh          # PYTHON=... picks the venv (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
# optuna and what it imports (alembic -> mako -> markupsafe, sqlalchemy -> typing_extensions
# >= 4.12, colorlog), cmaes (the cmaes sampler), plotly and narwhals (`sweeper report`); not
# greenlet: SQLAlchemy 2.1 needs it for asyncio only
PACKAGES="optuna sqlalchemy alembic mako markupsafe colorlog cmaes plotly narwhals typing_extensions"
PINS=$("$PY" - $PACKAGES <<'PYEOF'
import sys, tomllib
from importlib.metadata import version
from packaging.requirements import Requirement

wanted = {Requirement(r).name.lower(): Requirement(r) for r in
          tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]}
bad = []
for name in sys.argv[1:]:
    have = version(name)
    if name in wanted and not wanted[name].specifier.contains(have):
        bad.append(f"{name} {have} is not {wanted[name]} (pyproject.toml)")
    print(f"{name}=={have}")
if bad:
    sys.exit("gpu_wheels: " + "; ".join(bad))
PYEOF
)
rm -rf .whl && mkdir -p .whl
# shellcheck disable=SC2086
pip download --quiet --no-deps --python-version 3.12 --implementation cp --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl $PINS
MIB=$(du -sm .whl | cut -f1)
ls -1 .whl
echo "gpu_wheels: $(ls .whl | wc -l) wheels, ${MIB} MiB in .whl/"
if [ "$MIB" -gt 48 ]; then
  echo "gpu_wheels: ${MIB} MiB is too close to the 64 MiB that travel with a checkout" >&2
  exit 1
fi
