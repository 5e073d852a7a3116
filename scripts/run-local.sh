#!/usr/bin/env bash
# Sets up .venv if needed, then runs the worker's main job: `python -m worker` on test_input.json,
# through runpod's own local mode. MODEL_PATH defaults to the committed tiny reader (a 2 MB
# DeepSeek-OCR-2 trained to read single words) because the real weights need a GPU machine; point
# MODEL_PATH at a real checkpoint to OCR the page for real. Extra arguments go to the worker
# (e.g. --rp_serve_api --rp_api_port 8000).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export MODEL_PATH=${MODEL_PATH:-tests/fixtures/tiny-reader}
if [ "$MODEL_PATH" = "tests/fixtures/tiny-reader" ]; then
    export MAX_TOKENS=${MAX_TOKENS:-16}  # the tiny model knows words, not documents
fi
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m worker "$@"
