"""Session fixtures and test tiers.

Tiers (markers, registered in pyproject.toml): unmarked tests are pure units (milliseconds) or run the
real transformers engine in-process on the tiny checkpoint (`engine`); `process` starts the worker or
a server as a real process and talks HTTP; `vllm` runs stock vLLM on CPU checkpoints (minutes);
`browser` drives Chromium; `gpu` needs CUDA. The fast lane: `pytest -m "not process and not vllm and
not browser"`.

The tiny random checkpoint is built once per test session by tests/fixtures/make_tiny_checkpoint.py,
and one service (engine, queue, pipeline) on it is shared.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` where one is lent)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from make_tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_settings(tiny_checkpoint):
    from worker.settings import Settings

    return Settings.from_env({"MODEL_PATH": str(tiny_checkpoint), "MAX_TOKENS": "64", "ENGINE": "transformers",
                              "BATCH_WAIT_MS": "500"})


@pytest.fixture(scope="session")
def tiny_service(tiny_settings):
    from worker.service import OcrService

    service = asyncio.run(OcrService.start(tiny_settings))
    yield service
    asyncio.run(service.close())


@pytest.fixture(scope="session")
def tiny_engine(tiny_service):
    return tiny_service.engine
