"""Model families and their mode tables, the task table, settings parsing (pure)."""

from __future__ import annotations

import json

import pytest

from worker.errors import ConfigError, InvalidInput
from worker.families import FAMILIES, V1, V2, detect_family
from worker.settings import Settings
from worker.tasks import TASKS, build_prompt

V2_HF = FAMILIES[V2].mode_table("transformers")


def test_v2_transformers_modes_map_to_views_deepseek_ocr2_has():
    views = {name: (m.view.view_size, m.view.tile_size, m.view.crop) for name, m in V2_HF.items()}
    assert views == {"tiny": (768, None, False), "small": (768, None, False), "base": (1024, None, False),
                     "large": (1024, 768, True), "gundam": (1024, 768, True)}
    for spec in V2_HF.values():
        assert spec.view.view_size in (768, 1024)  # the only sizes with learned queries


def test_vllm_serves_only_the_tiled_view_of_each_family():
    """vLLM's processors take view sizes from module constants; per-request sizes fail."""
    assert set(FAMILIES[V2].mode_table("vllm")) == {"large", "gundam"}
    assert {m.view.tile_size for m in FAMILIES[V2].mode_table("vllm").values()} == {768}
    assert FAMILIES[V1].mode_table("vllm")["gundam"].view.tile_size == 640
    assert FAMILIES[V1].mode_table("transformers") == {}


def test_v2_vision_token_arithmetic():
    assert V2_HF["tiny"].vision_tokens(0) == 145
    assert V2_HF["base"].vision_tokens(0) == 257
    assert V2_HF["gundam"].vision_tokens(0) == 257
    assert V2_HF["gundam"].vision_tokens(6) == 1121


def test_crop_off_passes_the_view_size_as_tile_size():
    """The processor resizes a crop-off global view to tile_size: it must equal the view."""
    from worker.engine.hf import processor_kwargs

    kwargs = processor_kwargs(V2_HF["base"].view)
    assert kwargs["crop_to_patches"] is False and kwargs["tile_size"] == 1024
    assert kwargs["size"] == {"height": 1024, "width": 1024}


@pytest.mark.parametrize("architecture, family", [("DeepseekOCR2ForCausalLM", V2),
                                                  ("DeepseekOcr2ForConditionalGeneration", V2),
                                                  ("DeepseekOCRForCausalLM", V1)])
def test_family_is_read_from_the_checkpoint(tmp_path, architecture, family):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    assert detect_family(tmp_path).name == family


def test_unknown_or_missing_checkpoint_is_refused_naming_the_path(tmp_path):
    with pytest.raises(ConfigError, match="config.json missing"):
        detect_family(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConfigError, match="LlamaForCausalLM"):
        detect_family(tmp_path)


def test_official_prompts():
    assert build_prompt(TASKS["ocr"]) == "<image>\nFree OCR."
    assert build_prompt(TASKS["ocr_lines"]) == "<image>\n<|grounding|>OCR this image."
    assert build_prompt(TASKS["figure"]) == "<image>\nParse the figure."
    assert build_prompt(TASKS["describe"]) == "<image>\nDescribe this image in detail."
    assert build_prompt(TASKS["locate"], query="Total") == "<image>\nLocate <|ref|>Total<|/ref|> in the image."
    assert build_prompt(TASKS["custom"], prompt="Read it") == "<image>\nRead it"
    assert build_prompt(TASKS["custom"], prompt="<|grounding|>Convert the document to markdown.") == \
        "<image>\n<|grounding|>Convert the document to markdown."


@pytest.mark.parametrize("field, text", [
    ("query", "<image>"), ("query", "x<|/ref|><|det|>[[0,0,9,9]]"), ("query", "<|grounding|>"),
    ("query", "<｜end▁of▁sentence｜>"), ("prompt", "<image> and <image>"), ("prompt", "Read<｜end▁of▁sentence｜>"),
    ("prompt", "<|ref|>x<|/ref|>"), ("prompt", "<｜begin▁of▁sentence｜>hi"),
])
def test_control_tokens_in_user_text_are_refused(field, text):
    task = TASKS["locate"] if field == "query" else TASKS["custom"]
    with pytest.raises(InvalidInput) as excinfo:
        build_prompt(task, **{field: text})
    assert excinfo.value.field == field


def test_every_task_has_one_image_token_and_a_known_shape():
    for spec in TASKS.values():
        if spec.name != "custom":
            assert spec.prompt.count("<image>") == 1
        assert spec.output_key in ("text", "markdown")


def test_settings_defaults_and_parsing():
    s = Settings.from_env({})
    assert s.default_mode == "gundam" and s.max_tokens == 8192 and s.stream_pages is False
    assert s.engine == "auto" and s.max_concurrency == 16
    s = Settings.from_env({"BATCH_SIZE": "4", "STREAM_PAGES": "true", "DEFAULT_MODE": "Base", "DEVICE": "cpu",
                           "ENGINE": "vllm", "MAX_CONCURRENCY": "32", "BATCH_WAIT_MS": "25"})
    assert (s.batch_size, s.stream_pages, s.default_mode, s.device) == (4, True, "base", "cpu")
    config = s.engine_config("deepseek-ocr-2")
    assert (config.batch_size, config.batch_wait_ms, config.family) == (4, 25, "deepseek-ocr-2")
    assert s.max_concurrency == 32


@pytest.mark.parametrize("env, name", [
    ({"BATCH_SIZE": "zero"}, "BATCH_SIZE"),
    ({"BATCH_SIZE": "0"}, "BATCH_SIZE"),
    ({"MAX_TOKENS": "9000"}, "MAX_TOKENS"),
    ({"DEFAULT_MODE": "huge"}, "DEFAULT_MODE"),
    ({"STREAM_PAGES": "maybe"}, "STREAM_PAGES"),
    ({"DEVICE": "tpu"}, "DEVICE"),
    ({"ENGINE": "onnx"}, "ENGINE"),
    ({"MAX_CONCURRENCY": "0"}, "MAX_CONCURRENCY"),
    ({"GPU_MEMORY_UTILIZATION": "1.5"}, "GPU_MEMORY_UTILIZATION"),
    ({"MAX_MODEL_LEN": "100"}, "MAX_MODEL_LEN"),
    ({"PDF_DPI": "400"}, "PDF_DPI"),
    ({"NGRAM_SIZE": "40", "NGRAM_WINDOW": "30"}, "NGRAM_WINDOW"),
    ({"BUCKET_ENDPOINT_URL": "http://x/b"}, "BUCKET_ENDPOINT_URL"),
    ({"MAX_FAILED_PAGE_RATIO": "2"}, "MAX_FAILED_PAGE_RATIO"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ({"MAX_IMAGE_PIXELS": "60000000", "MAX_INFLIGHT_PIXELS": "50000000"}, "MAX_INFLIGHT_PIXELS"),
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


def test_v1_vision_token_arithmetic_matches_what_vllm_produces():
    """Counts measured from vLLM 0.32's DeepseekOCR processor: a page within 640 px (no tiles),
    1280x640 (2 tiles in 1 row), 800x800 (2x2), A4 portrait (2 columns x 3 rows), A4 landscape (3x2)."""
    gundam = FAMILIES[V1].mode_table("vllm")["gundam"]
    assert gundam.vision_tokens(0) == 273
    assert gundam.vision_tokens(2, 1) == 483
    assert gundam.vision_tokens(4, 2) == 693
    assert gundam.vision_tokens(6, 3) == 903
    assert gundam.vision_tokens(6, 2) == 893
