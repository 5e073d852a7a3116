"""A concurrent soak through runpod's real local API: 500 mixed good and bad jobs at concurrency 8.
Every good result is checked against its own input (no cross-talk between jobs sharing batches),
every bad one fails with its own stable code, nothing is lost, and the worker's memory after the
soak equals its memory before within a stated margin. Prints the figures (run with -s to see them)."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image, ImageDraw

from tests.helpers import LocalApi, b64, encode

pytestmark = pytest.mark.process
JOBS = 500
CONCURRENCY = 8
# The allocator keeps some freed memory; growth beyond this after a warm-up round is a leak.
RSS_MARGIN_MB = 64


def good_image(k: int) -> str:
    image = Image.new("RGB", (320, 240), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((10 + 25 * k, 10, 90 + 25 * k, 120), fill=(40 * k % 255, 90, 200 - 20 * k))
    return b64(encode(image, "PNG"))


GOOD = [good_image(k) for k in range(6)]
BAD = [
    ({"image": "not base64 at all!"}, "invalid_input"),
    ({"image": b64(b"\x89PNG\r\n\x1a\nbroken")}, "invalid_image"),
    ({"image": GOOD[0], "colour": "red"}, "invalid_input"),
    ({"image": GOOD[0], "mode": "huge"}, "invalid_input"),
    ({"mode": "tiny"}, "invalid_input"),
    ({"image": GOOD[0], "x" * 100_000: 1}, "invalid_input"),
    ({"pdf": b64(b"%PDF-1.4 broken")}, "invalid_pdf"),
    ({"image": b64(encode(Image.new("RGB", (1, 20000), "white"), "PNG"))}, "invalid_image"),
    ({"image": GOOD[1], "task": "locate", "query": "<image>"}, "invalid_input"),
    ({"image": "file:///etc/passwd"}, "url_not_allowed"),
    ({"image": "http://127.0.0.1:9/x.png"}, "url_not_allowed"),
]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_soak_500_mixed_jobs_at_concurrency_8(tiny_checkpoint):
    api = LocalApi(tiny_checkpoint, MAX_TOKENS="3", RUNAWAY_RETRY="false", BATCH_WAIT_MS="20")
    try:
        def run(job_input: dict) -> tuple[dict, float]:
            started = time.perf_counter()
            body = requests.post(api.url + "/runsync", json={"input": {"mode": "tiny", "task": "ocr",
                                                                       "ngram_size": 0, **job_input}}, timeout=300)
            return body.json(), time.perf_counter() - started

        expected = [run({"image": image})[0]["output"]["text"] for image in GOOD]
        assert len(set(expected)) > 1, "the fingerprint cannot tell the soak's pages apart"
        plan = [("good", k % len(GOOD)) if k % 5 < 3 else ("bad", k % len(BAD)) for k in range(JOBS)]

        def one(item):
            kind, index = item
            job = {"image": GOOD[index]} if kind == "good" else BAD[index][0]
            return item, *run(job)

        with ThreadPoolExecutor(CONCURRENCY) as pool:  # warm-up round: allocator and caches settle
            list(pool.map(one, plan[:60]))
        rss_before = rss_mb(api.proc.pid)
        started = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(one, plan))
        wall = time.perf_counter() - started
        rss_after = rss_mb(api.proc.pid)

        unexpected, latencies, shared = [], [], 0
        for (kind, index), body, seconds in results:
            latencies.append(seconds)
            if kind == "good":
                ok = body.get("status") == "COMPLETED" and body["output"]["text"] == expected[index]
                shared += ok and body["output"]["pages"][0]["timings"]["batch_jobs"] > 1
            else:
                ok = body.get("status") == "FAILED" and body["error"].startswith(BAD[index][1] + ":")
            if not ok:
                unexpected.append((kind, index, str(body)[:300]))
        latencies.sort()
        good = sum(1 for (kind, _), _, _ in results if kind == "good")
        print(f"\nsoak: {len(results)} jobs ({good} good, {len(results) - good} bad) in {wall:.1f} s at concurrency "
              f"{CONCURRENCY}; unexpected {len(unexpected)}, lost {JOBS - len(results)}; good pages that shared a "
              f"batch with another job {shared}; latency p50 {statistics.median(latencies) * 1000:.0f} ms, p99 "
              f"{latencies[int(0.99 * len(latencies)) - 1] * 1000:.0f} ms; worker RSS {rss_before:.0f} -> "
              f"{rss_after:.0f} MB")
        assert not unexpected, unexpected[:5]
        assert len(results) == JOBS
        assert rss_after - rss_before < RSS_MARGIN_MB
        assert requests.post(api.url + "/runsync", json={"input": {"image": GOOD[2], "mode": "tiny", "task": "ocr",
                                                                   "ngram_size": 0}}, timeout=60).json()[
            "output"]["text"] == expected[2]
    finally:
        api.stop()
