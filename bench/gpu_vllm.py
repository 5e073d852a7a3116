"""GPU throughput of the vLLM engine at the real model size, with random weights: 64 concurrent A4 pages
against one page at a time, every page forced to 1,000 output tokens; optionally the worker's vLLM
engine and the transformers engine on the same full-size random checkpoint.

    python bench/gpu_vllm.py [--family v2] [--pages 64] [--tokens 1000] [--single 4] [--engines]
    python bench/gpu_vllm.py --smoke      # the same code paths on the CPU checkpoint, a few tokens

Arms:
  1. raw AsyncLLM, load_format="dummy": vLLM builds the full-size architecture with random weights and no
     weight file (the directory holds only config.json and the tokenizer). --pages pages at once, then
     --single pages one at a time; min_tokens = max_tokens = --tokens with ignore_eos, so every page
     does the same work whatever the random model emits.
  2. --engines: a full-size random checkpoint is written (tests/fixtures/make_vllm_checkpoint.py
     --full-size, about 6.7 GB) and the worker's `VllmEngine` and (v2) `TransformersEngine` each take
     the --pages pages at once with max_tokens = --tokens (a random model rarely emits end-of-sequence
     early; the completion tokens are printed). The transformers engine runs them as one static batch.
Target (issue 12): at least 5 pages/s on one H100 for arm 1's concurrent run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."
A4_144_DPI = (1190, 1684)


def a4_page(i: int, size=A4_144_DPI):
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=28)
    for line in range(40):
        draw.text((80, 80 + 38 * line), f"Page {i}, line {line}: the quick brown fox jumps over the lazy dog",
                  fill="black", font=font)
    return image


def config_only_dir(family: str, out: Path, full_size: bool = True) -> Path:
    """config.json (the original format) and the tokenizer: enough for load_format='dummy'."""
    from make_vllm_checkpoint import FULL_TEXT, SMALL_TEXT, original_config
    from tiny_model import build_processor, build_tokenizer

    tokenizer = build_tokenizer()
    out.mkdir(parents=True, exist_ok=True)
    build_processor(tokenizer).save_pretrained(out)
    text = FULL_TEXT if full_size else SMALL_TEXT
    (out / "config.json").write_text(json.dumps(original_config(family, tokenizer, text), indent=2))
    return out


def engine_args(path: Path, pages: int, dummy: bool, tokens: int, eager: bool):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor

    return AsyncEngineArgs(model=str(path), load_format="dummy" if dummy else "auto", max_num_seqs=pages,
                           max_model_len=min(8192, 1200 + tokens + 64), enable_prefix_caching=False,
                           mm_processor_cache_gb=0, limit_mm_per_prompt={"image": 1}, enforce_eager=eager,
                           logits_processors=[NGramPerReqLogitsProcessor], gpu_memory_utilization=0.9)


def forced(tokens: int):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(temperature=0.0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True,
                          skip_special_tokens=False, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)


async def run_raw(llm, images, params, concurrent: bool) -> tuple[float, int]:
    async def one(image):
        final = None
        prompt = {"prompt": PROMPT, "multi_modal_data": {"image": image}}
        async for output in llm.generate(prompt, params, f"bench-{uuid.uuid4().hex[:12]}"):
            final = output
        return len(final.outputs[0].token_ids)

    started = time.perf_counter()
    if concurrent:
        counts = await asyncio.gather(*(one(image) for image in images))
    else:
        counts = [await one(image) for image in images]
    return time.perf_counter() - started, sum(counts)


def report(name: str, pages: int, seconds: float, tokens: int) -> float:
    rate = pages / seconds
    print(f"  {name:<44} {rate:8.3f} pages/s  ({seconds:7.1f} s, {tokens} tokens, {tokens / seconds:8.1f} tok/s)",
          flush=True)
    return rate


def bench_raw(path: Path, args, dummy: bool) -> None:
    from vllm.v1.engine.async_llm import AsyncLLM

    started = time.perf_counter()
    # CUDA graphs on the GPU; eager on the CPU, where the compile warm-up was OOM-killed at 19 GB (24 GB box).
    llm = AsyncLLM.from_engine_args(engine_args(path, args.pages, dummy, args.tokens, eager=args.smoke))
    print(f"  engine start {time.perf_counter() - started:.1f} s", flush=True)
    images = [a4_page(i, args.page_size) for i in range(args.pages)]
    params = forced(args.tokens)

    async def arms():
        await run_raw(llm, images[:1], params, concurrent=False)  # warm-up
        many = report(f"raw AsyncLLM, {args.pages} at once", args.pages,
                      *await run_raw(llm, images, params, concurrent=True))
        one = report("raw AsyncLLM, one at a time", args.single,
                     *await run_raw(llm, images[:args.single], params, concurrent=False))
        print(f"  concurrent / one at a time: {many / one:.2f}x", flush=True)

    try:
        asyncio.run(arms())
    finally:
        llm.shutdown()


def bench_engines(path: Path, family_name: str, args) -> None:
    from worker.engine.api import EngineConfig, GuardConfig, PageRequest
    from worker.families import detect_family

    family = detect_family(path)
    images = [a4_page(i, args.page_size) for i in range(args.pages)]
    config = EngineConfig(model_path=path, family=family.name, max_num_seqs=args.pages,
                          max_model_len=min(8192, 1200 + args.tokens + 64), batch_size=args.pages,
                          batch_wait_ms=500, enforce_eager=args.smoke)
    for engine_name in ("vllm", "transformers"):
        modes = family.mode_table(engine_name)
        if not modes:
            continue
        if engine_name == "vllm":
            from worker.engine.vllm_engine import VllmEngine as Engine
        else:
            from worker.engine.hf import TransformersEngine as Engine
        engine = Engine.load(config, tuple(modes), frozenset(spec.view for spec in modes.values()))
        requests = [PageRequest(image=image, prompt=PROMPT, view=modes["gundam"].view, max_tokens=args.tokens,
                                guard=GuardConfig(0, 1), job_id=f"job-{i}") for i, image in enumerate(images)]
        try:
            asyncio.run(engine.warmup())

            async def all_pages():
                return await asyncio.gather(*(engine.generate(r) for r in requests))

            started = time.perf_counter()
            results = asyncio.run(all_pages())
            report(f"{engine_name} engine, {args.pages} at once", args.pages, time.perf_counter() - started,
                   sum(r.completion_tokens for r in results))
        finally:
            asyncio.run(engine.close())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("v1", "v2"), default="v2")
    parser.add_argument("--pages", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--single", type=int, default=4, help="pages for the one-at-a-time arm")
    parser.add_argument("--engines", action="store_true", help="also the worker's engines on a full-size checkpoint")
    parser.add_argument("--smoke", action="store_true", help="CPU check of the code paths on the small checkpoint")
    args = parser.parse_args()
    args.page_size = A4_144_DPI

    if args.smoke:
        # The GPU run's code paths on the CPU: dummy weights from a config-only directory, with the small
        # decoder; --engines then uses the cached small checkpoint.
        # 640 px pages: one view each instead of seven (a stock-size view is tens of seconds on a CPU).
        args.pages, args.tokens, args.single = min(args.pages, 2), min(args.tokens, 4), 1
        args.page_size = (640, 640)
        print(f"smoke run: {args.family}, small decoder, {args.pages} pages, {args.tokens} tokens", flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            bench_raw(config_only_dir(args.family, Path(scratch) / "config-only", full_size=False), args, dummy=True)
        if args.engines:
            from make_vllm_checkpoint import cached_checkpoint

            bench_engines(cached_checkpoint(args.family), args.family, args)
        return

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this where a GPU is lent (or --smoke for a CPU check)")
    print(f"{torch.cuda.get_device_name(0)}, {args.family}, {args.pages} A4 pages, {args.tokens} forced tokens",
          flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        bench_raw(config_only_dir(args.family, Path(scratch) / "config-only"), args, dummy=True)
        if args.engines:
            from make_vllm_checkpoint import make_vllm_checkpoint

            path = make_vllm_checkpoint(Path(scratch) / "full", args.family, full_size=True)
            bench_engines(path, args.family, args)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    main()
