"""Engines behind one boundary (`api.py`): `transformers` (hf.py) and `vllm` (vllm_engine.py).

`load_engine` is the one place that picks and loads an engine; it imports the chosen engine's
module (and so torch, transformers or vLLM) only then, so the rest of the worker stays importable
and testable without the ML stack.
"""

from __future__ import annotations

import importlib.util
from typing import Mapping

from ..errors import ConfigError
from .api import Engine, EngineConfig, ViewConfig


def choose_engine(requested: str) -> str:
    """`auto` is vLLM where CUDA and vLLM are both present (production), else transformers."""
    if requested != "auto":
        return requested
    if importlib.util.find_spec("vllm") is None:
        return "transformers"
    import torch

    return "vllm" if torch.cuda.is_available() else "transformers"


def load_engine(config: EngineConfig, name: str, modes: Mapping[str, ViewConfig]) -> Engine:
    """Load engine `name` ("transformers" or "vllm") serving `modes` (mode name -> view)."""
    views = frozenset(modes.values())
    if name == "transformers":
        from .hf import TransformersEngine

        return TransformersEngine.load(config, tuple(modes), views)
    if name == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("ENGINE=vllm but vLLM is not installed in this image; use ENGINE=transformers "
                              "or the vLLM image (Dockerfile.runpod)")
        from .vllm_engine import VllmEngine

        return VllmEngine.load(config, tuple(modes), views)
    raise ConfigError(f"ENGINE={name!r} is not an engine")
