#!/usr/bin/env bash
# Creates .venv and installs the worker with its dev extras. torch==2.13.0 goes first: on the
# development machines pip takes a CPU build from disk for exactly that version, and the project's
# torch range is satisfied by it (any other spec downloads several GB of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
# constraints.txt pins the versions the suite was last run with (transformers' processor behaviour
# is what the mode table was checked against); the image installs with it too.
.venv/bin/python -m pip install -q -e ".[dev]" -c constraints.txt
