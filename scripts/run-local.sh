#!/usr/bin/env bash
# Sets up .venv if needed, then runs the worker's main job: `python -m worker` on test_input.json (a
# rendered document page) through runpod's own one-job local mode, printing the result once as JSON
# and writing it to .cache/result.json.
#
# Without MODEL_PATH it runs on a TINY RANDOM test checkpoint (tests/fixtures/make_tiny_checkpoint.py,
# built into .cache/ the first time): the real weights need a GPU, and this shows the whole path
# (decode, processor, generate, result) in seconds, but its text is noise. Point MODEL_PATH at a real
# checkpoint to OCR the page for real. Extra arguments go to the worker, e.g. --rp_serve_api
# --rp_api_port 8000 to serve runpod's local API, or --test_input '{"input": {...}}' for another job.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ -z "${MODEL_PATH:-}" ]; then
    export MODEL_PATH=.cache/tiny-checkpoint
    if [ ! -f "$MODEL_PATH/model.safetensors" ]; then
        echo "run-local: building the tiny random test checkpoint into $MODEL_PATH" >&2
        .venv/bin/python tests/fixtures/make_tiny_checkpoint.py "$MODEL_PATH" >/dev/null
    fi
    echo "run-local: no MODEL_PATH given, so this runs the TINY RANDOM test checkpoint: the pipeline is real," \
         "the text it prints is noise. MODEL_PATH=/path/to/DeepSeek-OCR-2 $0 runs the real model." >&2
fi
export HF_HUB_OFFLINE=1
# runpod prints the job input and every output at its default DEBUG level; the worker prints the result.
export RUNPOD_DEBUG_LEVEL=${RUNPOD_DEBUG_LEVEL:-WARN}
export RESULT_FILE=${RESULT_FILE:-.cache/result.json}
exec .venv/bin/python -m worker "$@"
