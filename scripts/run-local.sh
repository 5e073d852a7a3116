#!/usr/bin/env bash
# Sets up .venv if needed, then runs the worker's main job: `python -m worker` on test_input.json,
# through runpod's own local mode. Without MODEL_PATH it builds the tiny random DeepSeek-OCR-2
# checkpoint (2 MB, tests/fixtures/make_tiny_checkpoint.py) into .cache/ and runs on that: the real
# weights need a GPU machine, and this shows the whole path (decode, processor, generate, result)
# in seconds; its text is noise. Point MODEL_PATH at a real checkpoint to OCR the page for real.
# Extra arguments go to the worker (e.g. --rp_serve_api --rp_api_port 8000).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ -z "${MODEL_PATH:-}" ]; then
    export MODEL_PATH=.cache/tiny-checkpoint
    [ -f "$MODEL_PATH/model.safetensors" ] || .venv/bin/python tests/fixtures/make_tiny_checkpoint.py "$MODEL_PATH"
    export MAX_TOKENS=${MAX_TOKENS:-16}  # a random model never stops on its own
fi
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m worker "$@"
