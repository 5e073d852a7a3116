"""Many single-page jobs at once against the same jobs one at a time, measured side by side in one
run (these machines are noisy: compare ratios, not absolute numbers across runs).

    python bench/concurrency.py [--model DIR] [--jobs 8] [--mode tiny] [--tokens 16] [--no-http]

Arms, in one process:
  1. handler: N one-page jobs through the service (the RunPod handler's code path), one after
     another, then the same N jobs concurrently (they meet in the engine's queue).
  2. runpod's local API over HTTP (`python -m worker --rp_serve_api`), sequential then concurrent.
  3. preprocessing alone: transformers' DeepSeek-OCR-2 processor on A4 pages in gundam, on one thread
     and on every core, pages/s.
Every page generates exactly --tokens tokens (the guard is off and a random model never stops), so
both arms of a pair do the same work. Without --model it builds the tiny random checkpoint in .cache/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

A4 = (1240, 1754)


def word_page(i: int, size=(900, 700)):
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=40)
    for line in range(8):
        draw.text((40, 40 + line * 70), f"Job {i} line {line}: the quick brown fox", fill="black", font=font)
    return image


def job_inputs(n: int, mode: str, tokens: int) -> list[dict]:
    from tests.helpers import b64, encode

    return [{"image": b64(encode(word_page(i), "PNG")), "mode": mode, "task": "ocr", "ngram_size": 0,
             "max_tokens": tokens} for i in range(n)]


def summarise(name: str, outputs: list[dict], seconds: float) -> float:
    failed = [o for o in outputs if "error" in o]
    if failed:
        raise SystemExit(f"{name}: {len(failed)} jobs failed: {failed[0]['error']}")
    timings = [o["pages"][0]["timings"] for o in outputs]
    rate = len(outputs) / seconds
    print(f"  {name:<28} {rate:6.2f} pages/s ({seconds:6.2f} s)"
          f"  mean batch {statistics.mean(t['batch_size'] for t in timings):.2f}"
          f"  mean jobs/batch {statistics.mean(t['batch_jobs'] for t in timings):.2f}")
    return rate


def bench_handler(model: Path, inputs: list[dict], batch_wait_ms: int) -> tuple[float, float]:
    from worker.service import OcrService
    from worker.settings import Settings

    settings = Settings.from_env({"MODEL_PATH": str(model), "ENGINE": "transformers",
                                  "BATCH_WAIT_MS": str(batch_wait_ms), "RUNAWAY_RETRY": "false"})
    service = asyncio.run(OcrService.start(settings))
    try:
        async def sequential():
            return [await service.handle_job(job, f"seq-{i}") for i, job in enumerate(inputs)]

        async def concurrent():
            return await asyncio.gather(*(service.handle_job(job, f"con-{i}") for i, job in enumerate(inputs)))

        started = time.perf_counter()
        one = summarise("handler, one at a time", asyncio.run(sequential()), time.perf_counter() - started)
        started = time.perf_counter()
        many = summarise("handler, concurrent", asyncio.run(concurrent()), time.perf_counter() - started)
    finally:
        asyncio.run(service.close())
    return one, many


def bench_http(model: Path, inputs: list[dict], batch_wait_ms: int) -> tuple[float, float]:
    import requests

    from tests.helpers import LocalApi

    api = LocalApi(model, BATCH_WAIT_MS=str(batch_wait_ms), RUNAWAY_RETRY="false")
    try:
        def post(job):
            body = requests.post(api.url + "/runsync", json={"input": job}, timeout=600).json()
            return body.get("output") or {"error": body.get("error", body)}

        started = time.perf_counter()
        one = summarise("local API, one at a time", [post(j) for j in inputs], time.perf_counter() - started)
        started = time.perf_counter()
        with ThreadPoolExecutor(len(inputs)) as pool:
            outputs = list(pool.map(post, inputs))
        many = summarise("local API, concurrent", outputs, time.perf_counter() - started)
    finally:
        api.stop()
    return one, many


def bench_preprocessing(model: Path, pages: int) -> None:
    from transformers import AutoProcessor

    from worker.engine.hf import processor_kwargs
    from worker.families import FAMILIES, V2

    processor = AutoProcessor.from_pretrained(model, local_files_only=True)
    view = FAMILIES[V2].mode_table("transformers")["gundam"].view
    images = [word_page(i, size=A4) for i in range(pages)]

    def prepare(image):
        return processor(images=[image], text=["<image>\nFree OCR."], return_tensors="pt", **processor_kwargs(view))

    prepare(images[0])
    started = time.perf_counter()
    for image in images:
        prepare(image)
    one = pages / (time.perf_counter() - started)
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(prepare, images))
    every = pages / (time.perf_counter() - started)
    print(f"  processor, gundam A4, 1 thread    {one:6.2f} pages/s ({1000 / one:.0f} ms/page)")
    print(f"  processor, gundam A4, {cores} threads   {every:6.2f} pages/s ({every / one:.2f}x one thread)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--mode", default="tiny")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=int, default=50)
    parser.add_argument("--no-http", action="store_true")
    args = parser.parse_args()
    model = args.model
    if model is None:
        model = ROOT / ".cache" / "tiny-checkpoint"
        if not (model / "model.safetensors").is_file():
            subprocess.run([sys.executable, str(ROOT / "tests" / "fixtures" / "make_tiny_checkpoint.py"), str(model)],
                           check=True, capture_output=True)
    inputs = job_inputs(args.jobs, args.mode, args.tokens)
    print(f"{args.jobs} one-page jobs, mode {args.mode}, {args.tokens} tokens each, {os.cpu_count()} cores")
    one, many = bench_handler(model, inputs, args.batch_wait_ms)
    print(f"  handler concurrent / one at a time: {many / one:.2f}x")
    if not args.no_http:
        one, many = bench_http(model, inputs, args.batch_wait_ms)
        print(f"  local API concurrent / one at a time: {many / one:.2f}x")
    bench_preprocessing(model, pages=max(4, args.jobs))


if __name__ == "__main__":
    main()
