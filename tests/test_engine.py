"""The real transformers engine (DeepSeek-OCR-2 classes, real processor, real generate) on the tiny
random checkpoint, on CPU, through the engine protocol: pages submitted concurrently from any loop,
batched by the engine's own batcher."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.engine_helpers import A4, V2_MODES, fail_on_red_pages, generate_all, generate_one, page
from tests.helpers import text_page
from worker.engine.api import Engine
from worker.errors import ConfigError, ModelError, ModeUnavailable, OutOfMemory
from worker.service import OcrService
from worker.settings import Settings

pytestmark = pytest.mark.engine


@pytest.mark.parametrize("mode", list(V2_MODES))
@pytest.mark.parametrize("size", [A4, (500, 400), (2000, 600)])
def test_every_mode_runs_and_token_count_matches_features(tiny_engine, mode, size):
    """The model itself raises if placeholder tokens and image features differ; the count must
    also be what the mode table promises."""
    result = generate_one(tiny_engine, page(text_page(["Mode check"], size=size), mode))
    spec = V2_MODES[mode]
    assert result.vision_tokens == spec.vision_tokens(result.tiles)
    if spec.view.crop and max(size) > spec.view.tile_size:
        assert spec.view.min_tiles <= result.tiles <= spec.view.max_tiles
    else:
        assert result.tiles == 0
    assert result.completion_tokens > 0


def test_crop_on_a4_page_uses_six_tiles(tiny_engine):
    result = generate_one(tiny_engine, page(text_page(["A4"], size=A4), "gundam"))
    assert (result.tiles, result.vision_tokens) == (6, 1121)


def test_engine_satisfies_the_protocol(tiny_engine):
    assert isinstance(tiny_engine, Engine)
    assert tiny_engine.info.engine == "transformers" and tiny_engine.info.family == "deepseek-ocr-2"
    assert tiny_engine.info.dtype == "float32" and tiny_engine.info.device == "cpu"
    assert set(tiny_engine.info.modes) == set(V2_MODES)


def test_concurrent_pages_share_a_batch_and_match_one_at_a_time(tiny_engine):
    rng = np.random.default_rng(0)
    images = [text_page(["First page"], size=A4),
              Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)),
              Image.new("RGB", (1600, 900), "black"),
              text_page(["Short"], size=(500, 400))]
    pages = [page(im, max_tokens=10, job_id=f"job-{i % 2}") for i, im in enumerate(images)]
    batched = generate_all(tiny_engine, pages)
    single = [generate_one(tiny_engine, p) for p in pages]
    assert [b.token_ids for b in batched] == [s.token_ids for s in single]
    assert {b.batch_size for b in batched} == {4} and {b.batch_jobs for b in batched} == {2}
    assert {s.batch_size for s in single} == {1}
    assert len({b.prompt_tokens for b in batched}) > 1, "pages with different tile counts were batched"
    assert len({b.token_ids for b in batched}) == 4


def test_mixed_modes_come_back_to_their_own_callers(tiny_engine):
    pages = [page(Image.new("RGB", (900, 900), "white"), m) for m in ("tiny", "base", "tiny")]
    results = generate_all(tiny_engine, pages)
    assert [r.vision_tokens for r in results] == [145, 257, 145]
    assert [r.batch_size for r in results] == [2, 1, 2]


def test_different_images_give_different_outputs(tiny_engine):
    white = generate_one(tiny_engine, page(Image.new("RGB", (800, 800), "white"), "base", 8))
    black = generate_one(tiny_engine, page(Image.new("RGB", (800, 800), "black"), "base", 8))
    assert white.token_ids != black.token_ids


def test_max_tokens_caps_generation_and_reports_length(tiny_engine):
    result = generate_one(tiny_engine, page(Image.new("RGB", (800, 800), "white"), "base", 3))
    assert result.completion_tokens <= 3 and result.max_tokens == 3
    assert result.finish_reason == ("length" if result.completion_tokens == 3 else "stop")


def test_a_view_the_engine_does_not_serve_is_refused(tiny_engine):
    from dataclasses import replace

    odd = replace(page(Image.new("RGB", (300, 300), "white"), "tiny"),
                  view=replace(V2_MODES["tiny"].view, view_size=640))
    with pytest.raises(ModeUnavailable):
        generate_one(tiny_engine, odd)


def test_missing_weights_name_the_path(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        asyncio.run(OcrService.start(Settings(model_path=tmp_path / "nowhere")))
    message = str(excinfo.value)
    assert str(tmp_path / "nowhere") in message and "builder/download_model.py" in message


def test_broken_weights_fail_at_load(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ConfigError) as excinfo:
        asyncio.run(OcrService.start(Settings(model_path=broken, engine="transformers")))
    assert "could not be loaded" in str(excinfo.value)


def test_cuda_requested_without_cuda_fails_at_start(tiny_checkpoint):
    with pytest.raises(ConfigError) as excinfo:
        asyncio.run(OcrService.start(Settings(model_path=tiny_checkpoint, engine="transformers", device="cuda")))
    assert "DEVICE=cuda" in str(excinfo.value)


def test_vllm_requested_where_it_is_not_installed_fails_at_start(tiny_checkpoint):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here; tests/test_vllm_engine.py covers it")
    with pytest.raises(ConfigError) as excinfo:
        asyncio.run(OcrService.start(Settings(model_path=tiny_checkpoint, engine="vllm")))
    assert "ENGINE=vllm" in str(excinfo.value)


def test_preprocessing_failure_fails_only_that_page(tiny_engine):
    bad = page(Image.new("RGB", (300, 300), "white"), "tiny", 2, prompt="no image token here")
    good = page(Image.new("RGB", (300, 300), "white"), "tiny", 2)
    outcome_bad, outcome_good = generate_all(tiny_engine, [bad, good])
    assert isinstance(outcome_bad, ModelError) and outcome_bad.code == "model_error"
    assert outcome_good.completion_tokens


def test_a_prompt_longer_than_the_context_is_a_model_error(tiny_engine):
    long_prompt = "<image>\n" + "word " * 9000
    with pytest.raises(ModelError) as excinfo:
        generate_one(tiny_engine, page(Image.new("RGB", (300, 300), "white"), "tiny", 2, prompt=long_prompt))
    assert "context" in excinfo.value.message


def test_out_of_memory_batch_is_split_in_halves(tiny_engine, monkeypatch):
    """A CUDA OOM cannot happen on this CPU: transformers' generate (the backend library call) is
    made to raise it for batches over two pages; the engine must finish the batch in halves with
    the same tokens."""
    import torch

    pages = [page(Image.new("RGB", (400, 400), c), "tiny", 4) for c in ("white", "black", "red", "blue", "green")]
    expected = [g.token_ids for g in generate_all(tiny_engine, pages)]
    real_generate = tiny_engine.model.generate
    sizes = []

    def generate_with_limited_memory(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(tiny_engine.model, "generate", generate_with_limited_memory)
    assert [g.token_ids for g in generate_all(tiny_engine, pages)] == expected
    assert sizes == [5, 2, 3, 1, 2]

    def always_oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(tiny_engine.model, "generate", always_oom)
    with pytest.raises(OutOfMemory):
        generate_one(tiny_engine, pages[0])


def test_a_failing_page_in_a_shared_batch_fails_alone(tiny_engine, monkeypatch):
    """A model failure (a device-side assert, say) on one job's page must not fail the other jobs'
    pages it was batched with. Injected into transformers' generate for batches holding a red page."""
    calls = fail_on_red_pages(tiny_engine, monkeypatch)
    pages = [page(Image.new("RGB", (400, 400), c), "tiny", 3, job_id=f"job-{c}") for c in ("white", "red", "black")]
    white, red, black = generate_all(tiny_engine, pages)
    assert isinstance(red, ModelError) and red.code == "model_error"
    assert white.completion_tokens and black.completion_tokens and white.batch_size == 1
    assert calls == [3, 1, 1, 1]


def test_warmup_runs_and_the_queue_is_empty_after(tiny_engine):
    asyncio.run(tiny_engine.warmup())
    stats = tiny_engine.stats()
    assert stats.queued == 0 and stats.running == 0
