"""The real engine (transformers' DeepSeek-OCR-2 classes, real processor, real generate) on the
tiny random checkpoint, on CPU."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from tests.helpers import text_page
from worker.engine import Engine
from worker.errors import ConfigError
from worker.modes import MODES
from worker.pages import PageInput
from worker.schema import GuardConfig
from worker.settings import Settings

OFF = GuardConfig(0, 1)


def page(image, mode="gundam", max_tokens=6, prompt="<image>\nFree OCR."):
    return PageInput(image=image, prompt=prompt, view=MODES[mode].view, max_tokens=max_tokens, guard=OFF)


A4 = (1240, 1754)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("size", [A4, (500, 400), (2000, 600)])
def test_every_mode_runs_and_token_count_matches_features(tiny_engine, mode, size):
    """The model itself raises if placeholder tokens and image features differ; the count must
    also be what the mode table promises."""
    result = tiny_engine.generate([page(text_page(["Mode check"], size=size), mode)])[0]
    view = MODES[mode].view
    assert result.vision_tokens == view.vision_tokens(result.tiles)
    if view.crop and max(size) > view.tile_size:
        assert view.min_tiles <= result.tiles <= view.max_tiles
    else:
        assert result.tiles == 0
    assert result.completion_tokens > 0 and result.finish_reason in ("stop", "length")


def test_crop_on_a4_page_uses_six_tiles(tiny_engine):
    result = tiny_engine.generate([page(text_page(["A4"], size=A4), "gundam")])[0]
    assert (result.tiles, result.vision_tokens) == (6, 1121)


def test_batch_gives_the_same_tokens_as_one_at_a_time(tiny_engine):
    rng = np.random.default_rng(0)
    images = [text_page(["First page"], size=A4),
              Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)),
              Image.new("RGB", (1600, 900), "black"),
              text_page(["Short"], size=(500, 400))]
    pages = [page(im, max_tokens=10) for im in images]
    batched = tiny_engine.generate(pages)
    single = [tiny_engine.generate([p])[0] for p in pages]
    assert [b.token_ids for b in batched] == [s.token_ids for s in single]
    assert {b.batch_size for b in batched} == {4}
    assert len({b.prompt_tokens for b in batched}) > 1, "pages with different tile counts were batched"


def test_mixed_modes_in_one_call_come_back_in_order(tiny_engine):
    pages = [page(Image.new("RGB", (900, 900), "white"), "tiny"),
             page(Image.new("RGB", (900, 900), "white"), "base"),
             page(Image.new("RGB", (900, 900), "white"), "tiny")]
    results = tiny_engine.generate(pages)
    assert [r.vision_tokens for r in results] == [145, 257, 145]


def test_different_images_give_different_outputs(tiny_engine):
    white = tiny_engine.generate([page(Image.new("RGB", (800, 800), "white"), "base", 8)])[0]
    black = tiny_engine.generate([page(Image.new("RGB", (800, 800), "black"), "base", 8)])[0]
    assert white.token_ids != black.token_ids


def test_max_tokens_caps_generation_and_reports_length(tiny_engine):
    result = tiny_engine.generate([page(Image.new("RGB", (800, 800), "white"), "base", 3)])[0]
    assert result.completion_tokens <= 3
    if result.completion_tokens == 3:
        assert result.finish_reason == "length"


def test_warmup(tiny_engine):
    assert tiny_engine.warmup().max_tokens == 2
    assert tiny_engine.info.dtype == "float32" and tiny_engine.info.device == "cpu"


def test_missing_weights_name_the_path(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        Engine.load(Settings(model_path=tmp_path / "nowhere"))
    message = str(excinfo.value)
    assert str(tmp_path / "nowhere") in message and "builder/download_model.py" in message


def test_broken_weights_fail_at_load(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ConfigError) as excinfo:
        Engine.load(Settings(model_path=broken))
    assert "could not be loaded" in str(excinfo.value)


def test_preprocessing_failure_is_a_model_error(tiny_engine):
    from worker.errors import ModelError

    bad = PageInput(image=Image.new("RGB", (300, 300), "white"), prompt="no image token here",
                    view=MODES["tiny"].view, max_tokens=2, guard=OFF)
    with pytest.raises(ModelError) as excinfo:
        tiny_engine.generate([bad])
    assert excinfo.value.code == "model_error"
    assert tiny_engine.generate([page(Image.new("RGB", (300, 300), "white"), "tiny", 2)])[0].completion_tokens


def test_out_of_memory_batch_is_split_in_halves(tiny_engine, monkeypatch):
    """A CUDA OOM cannot happen on this CPU: transformers' generate is made to raise it for batches
    over two pages, and the engine must finish the batch in halves with the same tokens."""
    import torch

    from worker.errors import OutOfMemory

    pages = [page(Image.new("RGB", (400, 400), c), "tiny", 4) for c in ("white", "black", "red", "blue", "green")]
    expected = [g.token_ids for g in tiny_engine.generate(pages)]
    real_generate = tiny_engine.model.generate
    sizes = []

    def generate_with_limited_memory(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(tiny_engine.model, "generate", generate_with_limited_memory)
    assert [g.token_ids for g in tiny_engine.generate(pages)] == expected
    assert sizes == [5, 2, 3, 1, 2]

    def always_oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(tiny_engine.model, "generate", always_oom)
    with pytest.raises(OutOfMemory):
        tiny_engine.generate(pages[:1])
