"""Session fixtures: the tiny random checkpoint is built once per test session by
tests/fixtures/make_tiny_checkpoint.py, and one engine on it is shared."""

from __future__ import annotations

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

    return Settings.from_env({"MODEL_PATH": str(tiny_checkpoint), "MAX_TOKENS": "64"})


@pytest.fixture(scope="session")
def tiny_engine(tiny_settings):
    from worker.engine import Engine

    return Engine.load(tiny_settings)
