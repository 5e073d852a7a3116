"""Mode table, prompts and settings parsing (pure)."""

from __future__ import annotations

import pytest

from worker.errors import ConfigError
from worker.modes import MODES
from worker.prompts import build_prompt
from worker.settings import Settings


def test_mode_table_maps_to_views_deepseek_ocr2_has():
    views = {name: (m.view.view_size, m.view.tile_size, m.view.crop) for name, m in MODES.items()}
    assert views == {"tiny": (768, None, False), "small": (768, None, False), "base": (1024, None, False),
                     "large": (1024, 768, True), "gundam": (1024, 768, True)}
    for spec in MODES.values():
        assert spec.view.view_size in (768, 1024)  # the only sizes with learned queries


def test_vision_token_arithmetic():
    assert MODES["tiny"].view.vision_tokens(0) == 145
    assert MODES["base"].view.vision_tokens(0) == 257
    assert MODES["gundam"].view.vision_tokens(0) == 257
    assert MODES["gundam"].view.vision_tokens(6) == 1121


def test_crop_off_passes_the_view_size_as_tile_size():
    """transformers 5.23 resizes a crop-off global view to tile_size: it must equal the view."""
    kwargs = MODES["base"].view.processor_kwargs()
    assert kwargs["crop_to_patches"] is False and kwargs["tile_size"] == 1024
    assert kwargs["size"] == {"height": 1024, "width": 1024}


def test_official_prompts():
    assert build_prompt("ocr") == "<image>\nFree OCR."
    assert build_prompt("ocr_lines") == "<image>\n<|grounding|>OCR this image."
    assert build_prompt("figure") == "<image>\nParse the figure."
    assert build_prompt("describe") == "<image>\nDescribe this image in detail."
    assert build_prompt("custom", prompt="Read it") == "<image>\nRead it"


def test_settings_defaults_and_parsing():
    s = Settings.from_env({})
    assert s.default_mode == "gundam" and s.max_tokens == 8192 and s.stream_pages is False
    s = Settings.from_env({"BATCH_SIZE": "4", "STREAM_PAGES": "true", "DEFAULT_MODE": "Base", "DEVICE": "cpu"})
    assert (s.batch_size, s.stream_pages, s.default_mode, s.device) == (4, True, "base", "cpu")


@pytest.mark.parametrize("env, name", [
    ({"BATCH_SIZE": "zero"}, "BATCH_SIZE"),
    ({"BATCH_SIZE": "0"}, "BATCH_SIZE"),
    ({"MAX_TOKENS": "9000"}, "MAX_TOKENS"),
    ({"DEFAULT_MODE": "huge"}, "DEFAULT_MODE"),
    ({"STREAM_PAGES": "maybe"}, "STREAM_PAGES"),
    ({"DEVICE": "tpu"}, "DEVICE"),
    ({"PDF_DPI": "400"}, "PDF_DPI"),
    ({"NGRAM_SIZE": "40", "NGRAM_WINDOW": "30"}, "NGRAM_WINDOW"),
    ({"BUCKET_ENDPOINT_URL": "http://x/b"}, "BUCKET_ENDPOINT_URL"),
    ({"MAX_FAILED_PAGE_RATIO": "2"}, "MAX_FAILED_PAGE_RATIO"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
])
def test_invalid_setting_names_the_variable(env, name):
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env(env)
    assert name in str(excinfo.value)


def test_streaming_handler_only_when_serving():
    from worker.__main__ import is_local_test_run

    assert is_local_test_run(["worker"], {}) is True
    assert is_local_test_run(["worker", "--test_input", "{}"], {"RUNPOD_WEBHOOK_GET_JOB": "x"}) is True
    assert is_local_test_run(["worker", "--rp_serve_api"], {}) is False
    assert is_local_test_run(["worker"], {"RUNPOD_WEBHOOK_GET_JOB": "https://api/job-take/$ID"}) is False
