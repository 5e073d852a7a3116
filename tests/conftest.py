"""Session fixtures: the tiny random checkpoint is built once per test session from the script
the issue asks for; the trained reader is the committed one under tests/fixtures/tiny-reader."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
READER_DIR = FIXTURES / "tiny-reader"
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


@pytest.fixture(scope="session")
def reader_dir() -> Path:
    if not (READER_DIR / "model.safetensors").is_file():
        pytest.fail("the trained tiny reader is missing: run tests/fixtures/train_tiny_reader.py "
                    "tests/fixtures/tiny-reader")
    return READER_DIR


@pytest.fixture(scope="session")
def reader_words(reader_dir) -> list[str]:
    return (reader_dir / "words.txt").read_text().split()


@pytest.fixture(scope="session")
def reader_settings(reader_dir):
    from worker.settings import Settings

    return Settings.from_env({"MODEL_PATH": str(reader_dir), "MAX_TOKENS": "8", "BATCH_SIZE": "8"})


@pytest.fixture(scope="session")
def reader_engine(reader_settings):
    from worker.engine import Engine

    return Engine.load(reader_settings)


@pytest.fixture(scope="session")
def reader_pipeline(reader_engine, reader_settings):
    from worker.pipeline import Pipeline
    from worker.results import ModelMeta

    return Pipeline(reader_engine, reader_settings, ModelMeta(name="tiny-reader", revision="test",
                                                              device="cpu", dtype="float32"))
