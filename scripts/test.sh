#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite (pass pytest arguments through).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
