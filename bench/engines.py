"""The same concurrent single-page requests through the vLLM engine, through the transformers engine, and
straight into vLLM's AsyncLLM without the worker's wrapper, on the stock-size CPU checkpoint, in one run;
then the vLLM engine's cold start (import, load, warm-up) with and without eager mode.

    python bench/engines.py [--pages 4] [--tokens 8] [--family v2] [--skip-transformers] [--skip-compiled]

These machines are shared and noisy: compare the ratios printed in one run, not absolute numbers across
runs. Every arm gets the same N distinct 640 px pages (no tiles: one 1024 view each), greedy, guard off,
at most --tokens tokens; the completion tokens each arm produced are printed beside its rate.

Arms:
  1. vLLM engine (`VllmEngine.generate`, the worker's wrapper), eager, N pages at once.
  2. raw AsyncLLM: the same engine's AsyncLLM, the same pages and sampling, no wrapper (issued on the
     engine's own event loop, since AsyncLLM serves the loop that first used it). 1 and 2 alternate
     for two rounds; the ratio uses each arm's best round.
  3. transformers engine (`TransformersEngine`, static batches of N), same checkpoint via native_config.
  4. cold start of the vLLM engine with enforce_eager=False (torch.compile), for the eager/compiled
     comparison (1 measures the eager one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

PROMPT = "<image>\nFree OCR."


def text_page(i: int):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (640, 640), "white")
    draw = ImageDraw.Draw(image)
    for line in range(6):
        draw.text((40, 40 + 90 * line), f"Page {i} line {line}: the quick brown fox", fill="black")
    return image


def engine_config(path: Path, family: str, eager: bool, pages: int):
    from worker.engine.api import EngineConfig

    return EngineConfig(model_path=path, family=family, enforce_eager=eager, cpu_kv_cache_gib=2,
                        max_num_seqs=max(8, pages), max_model_len=2048, batch_size=pages, batch_wait_ms=200)


def page_requests(view, pages: int, tokens: int):
    from worker.engine.api import GuardConfig, PageRequest

    return [PageRequest(image=text_page(i), prompt=PROMPT, view=view, max_tokens=tokens, guard=GuardConfig(0, 1),
                        job_id=f"job-{i}") for i in range(pages)]


def report(name: str, pages: int, seconds: float, tokens: int) -> float:
    rate = pages / seconds
    print(f"  {name:<34} {rate:7.4f} pages/s  ({seconds:7.1f} s, {tokens} completion tokens)", flush=True)
    return rate


async def gather_pages(engine, requests):
    return await asyncio.gather(*(engine.generate(r) for r in requests))


def load_vllm(path: Path, family, eager: bool, pages: int):
    """(engine, seconds to load, seconds to warm up)."""
    from worker.engine.vllm_engine import VllmEngine

    modes = family.mode_table("vllm")
    started = time.perf_counter()
    engine = VllmEngine.load(engine_config(path, family.name, eager, pages), tuple(modes),
                             frozenset(spec.view for spec in modes.values()))
    loaded = time.perf_counter()
    asyncio.run(engine.warmup())
    return engine, loaded - started, time.perf_counter() - loaded


def bench_raw(engine, requests) -> tuple[float, int]:
    """The same pages straight into the engine's AsyncLLM: the sampling the wrapper would build, no
    wrapper (no view check, bookkeeping, decoding or result assembly)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(temperature=0.0, max_tokens=requests[0].max_tokens, skip_special_tokens=False,
                            detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)

    async def one(page):
        final = None
        prompt = {"prompt": page.prompt, "multi_modal_data": {"image": page.image}}
        async for output in engine.llm.generate(prompt, params, f"raw-{uuid.uuid4().hex[:12]}"):
            final = output
        return len(final.outputs[0].token_ids)

    async def all_pages():
        return await asyncio.gather(*(one(p) for p in requests))

    started = time.perf_counter()
    # AsyncLLM answers on the loop its first request came from: the engine's loop thread.
    counts = asyncio.run_coroutine_threadsafe(all_pages(), engine._loop.loop).result()
    return time.perf_counter() - started, sum(counts)


def bench_transformers(path: Path, family, requests) -> tuple[float, int]:
    from worker.engine.hf import TransformersEngine

    modes = family.mode_table("transformers")
    engine = TransformersEngine.load(engine_config(path, family.name, True, len(requests)), tuple(modes),
                                     frozenset(spec.view for spec in modes.values()))
    try:
        asyncio.run(engine.warmup())
        started = time.perf_counter()
        results = asyncio.run(gather_pages(engine, requests))
        return time.perf_counter() - started, sum(r.completion_tokens for r in results)
    finally:
        asyncio.run(engine.close())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--family", choices=("v1", "v2"), default="v2")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--skip-compiled", action="store_true", help="skip the enforce_eager=False cold start")
    args = parser.parse_args()

    from make_vllm_checkpoint import cached_checkpoint

    from worker.families import detect_family

    path = cached_checkpoint(args.family)
    family = detect_family(path)
    print(f"{args.pages} single-page requests at once, 640 px pages, {args.tokens} tokens max, "
          f"{family.name}, {os.cpu_count()} cores", flush=True)

    started = time.perf_counter()
    # Timed: part of every cold start (`import vllm` alone is lazy; these pull in torch and the engine).
    from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401
    from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401
    import_s = time.perf_counter() - started
    engine, load_s, warm_s = load_vllm(path, family, eager=True, pages=args.pages)
    view = family.mode_table("vllm")["gundam"].view
    requests = page_requests(view, args.pages, args.tokens)
    worker_rates, raw_rates = [], []
    try:
        # Two alternating rounds: the first run after warm-up is slower (allocations, kernel caches),
        # and whichever arm went first would carry it.
        for round_ in (1, 2):
            started = time.perf_counter()
            results = asyncio.run(gather_pages(engine, requests))
            worker_rates.append(report(f"vLLM engine (worker wrapper), round {round_}", args.pages,
                                       time.perf_counter() - started, sum(r.completion_tokens for r in results)))
            print(f"    batch sizes seen: {sorted(r.batch_size for r in results)}", flush=True)
            raw_s, raw_tokens = bench_raw(engine, requests)
            raw_rates.append(report(f"raw AsyncLLM (no wrapper), round {round_}", args.pages, raw_s, raw_tokens))
    finally:
        asyncio.run(engine.close())
    worker_rate, raw_rate = max(worker_rates), max(raw_rates)
    hf_rate = None
    if family.mode_table("transformers") and not args.skip_transformers:
        hf_s, hf_tokens = bench_transformers(path, family, page_requests(
            family.mode_table("transformers")["gundam"].view, args.pages, args.tokens))
        hf_rate = report("transformers engine", args.pages, hf_s, hf_tokens)

    print("ratios", flush=True)
    print(f"  vLLM engine / raw AsyncLLM          {worker_rate / raw_rate:6.3f}  (best rounds; wrapper overhead)")
    if hf_rate:
        print(f"  vLLM engine / transformers engine   {worker_rate / hf_rate:6.3f}")
    print("cold start, vLLM engine", flush=True)
    print(f"  import vllm {import_s:6.1f} s, load (eager) {load_s:6.1f} s, warm-up {warm_s:6.1f} s, "
          f"total {import_s + load_s + warm_s:6.1f} s", flush=True)
    if not args.skip_compiled:
        from worker.errors import ConfigError

        try:
            engine, load_s, warm_s = load_vllm(path, family, eager=False, pages=args.pages)
        except ConfigError as exc:
            # Seen on a 24 GB CPU box: the compile warm-up's profile run (the largest dummy page, seven
            # views) grew the worker past 19 GB and the OOM killer ended it.
            print(f"  load (enforce_eager=False) failed: {str(exc)[:300]}", flush=True)
            return
        asyncio.run(engine.close())
        print(f"  load (enforce_eager=False) {load_s:6.1f} s, warm-up {warm_s:6.1f} s, "
              f"total with import {import_s + load_s + warm_s:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
