"""Many jobs, one engine: concurrent jobs share batches, keep their own results, fail alone, are
served fairly, and take their pages out of the queue when cancelled. In-process through the real
service (the RunPod handler's code path) and over real HTTP through runpod's local API."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image, ImageDraw, ImageFont

from tests.engine_helpers import fail_on_red_pages, handle, make_service
from tests.helpers import LocalApi, b64, encode, make_pdf
from worker.handler import Handler

pytestmark = pytest.mark.engine
JOB = {"mode": "tiny", "task": "ocr", "ngram_size": 0}


def word_page(word: str, size=(640, 480)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((40, 160), word, fill="black", font=ImageFont.load_default(size=90))
    draw.rectangle((20, 20, 80 + 40 * (len(word) % 7), 90), fill=(30, 30, 30))
    return image


WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


@pytest.fixture(scope="module")
def service(tiny_engine, tiny_checkpoint):
    return make_service(tiny_engine, tiny_checkpoint, MAX_TOKENS="6", RUNAWAY_RETRY="false",
                        MAX_JOB_INFLIGHT_PAGES="4")


def test_concurrent_jobs_share_batches_and_keep_their_own_text(service):
    inputs = [{**JOB, "image": b64(encode(word_page(w)))} for w in WORDS[:4]]
    alone = [handle(service, job, f"alone-{i}") for i, job in enumerate(inputs)]

    async def together():
        return await asyncio.gather(*(service.handle_job(job, f"job-{i}") for i, job in enumerate(inputs)))

    shared = asyncio.run(together())
    assert [o["text"] for o in shared] == [o["text"] for o in alone]
    assert max(o["pages"][0]["timings"]["batch_jobs"] for o in shared) > 1
    assert {o["pages"][0]["timings"]["batch_size"] for o in alone} == {1}


def test_a_bad_page_in_a_shared_batch_fails_only_its_own_job(service, tiny_engine, monkeypatch):
    """The model fails (injected into transformers' generate) whenever a red page is in the batch."""
    fail_on_red_pages(tiny_engine, monkeypatch)
    colours = ["white", "red", "black"]
    inputs = [{**JOB, "image": b64(encode(Image.new("RGB", (400, 400), c)))} for c in colours]

    async def together():
        return await asyncio.gather(*(service.handle_job(job, f"job-{c}") for c, job in zip(colours, inputs)))

    white, red, black = asyncio.run(together())
    assert red["error_detail"]["code"] == "model_error"
    assert "error" not in white and "error" not in black
    assert white["pages"][0]["text"] and black["pages"][0]["text"]


def test_one_page_jobs_are_not_starved_by_a_long_pdf(service):
    pdf = {**JOB, "pdf": b64(make_pdf([word_page(f"p{i}", size=(400, 300)) for i in range(40)]))}
    singles = [{**JOB, "image": b64(encode(word_page(w, size=(400, 300))))} for w in WORDS]
    finished: dict[str, float] = {}

    async def timed(name, job):
        out = await service.handle_job(job, name)
        finished[name] = time.perf_counter()
        return out

    async def together():
        return await asyncio.gather(timed("pdf", pdf), *(timed(f"one-{i}", j) for i, j in enumerate(singles)))

    outputs = asyncio.run(together())
    assert all("error" not in o for o in outputs) and outputs[0]["page_count"] == 40
    assert all(finished[f"one-{i}"] < finished["pdf"] for i in range(len(singles))), finished


def test_a_cancelled_job_leaves_the_queue(service, tiny_engine):
    """RunPod cancels a job's task on /cancel and on its execution time-out: its pages must leave
    the engine's queue at once, while another job's pages stay and complete."""
    pdf = {**JOB, "pdf": b64(make_pdf([word_page(f"c{i}", size=(400, 300)) for i in range(12)]))}
    other = {**JOB, "image": b64(encode(word_page("survivor")))}

    async def scenario():
        doomed = asyncio.create_task(service.handle_job(pdf, "doomed"))
        while "doomed" not in tiny_engine.stats().queued_by_job:
            await asyncio.sleep(0.01)
        survivor = asyncio.create_task(service.handle_job(other, "survivor"))
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        left = tiny_engine.stats()
        return left, await survivor

    left, survivor = asyncio.run(scenario())
    assert "doomed" not in left.queued_by_job
    assert "error" not in survivor
    assert tiny_engine.stats().queued == 0


def test_plain_and_streaming_handlers_run_concurrently(service):
    """A plain job sent while a long streamed job is half done finishes first: neither handler
    blocks the other (a sync handler would hold the loop until the whole stream was done)."""
    handler = Handler(service)
    image_job = {"id": "plain", "input": {**JOB, "image": b64(encode(word_page("plain")))}}
    pdf_job = {"id": "streamed", "input": {**JOB, "pdf": b64(make_pdf([word_page(f"s{i}") for i in range(10)]))}}

    async def scenario():
        stream = handler.stream(pdf_job)
        items = [await stream.__anext__()]
        plain_task = asyncio.create_task(handler(image_job))
        async for item in stream:
            items.append(item)
            if plain_task.done() and "plain_done_at" not in finished:
                finished["plain_done_at"] = len(items)
        return await plain_task, items

    finished: dict[str, int] = {}
    plain, streamed = asyncio.run(scenario())
    assert "error" not in plain and plain["page_count"] == 1
    assert [i["type"] for i in streamed] == ["page"] * 10 + ["document"]
    assert [i["page"] for i in streamed[:10]] == list(range(1, 11))
    assert finished.get("plain_done_at", 99) < 11, "the plain job waited for the whole stream"
    assert handler.concurrency(1) == service.settings.max_concurrency


@pytest.mark.process
def test_eight_concurrent_jobs_over_http_share_batches(tiny_checkpoint):
    """runpod's local API awaits async handlers, so concurrent /runsync requests run concurrently
    and their pages meet in one engine queue."""
    api = LocalApi(tiny_checkpoint, MAX_TOKENS="6", RUNAWAY_RETRY="false", BATCH_WAIT_MS="1500")
    try:
        inputs = [{**JOB, "image": b64(encode(word_page(w)))} for w in WORDS]
        alone = [api.post("/runsync", {"input": job})["output"] for job in inputs]
        with ThreadPoolExecutor(len(inputs)) as pool:
            bodies = list(pool.map(lambda job: requests.post(api.url + "/runsync", json={"input": job},
                                                             timeout=300).json(), inputs))
        assert [b["status"] for b in bodies] == ["COMPLETED"] * len(inputs)
        assert [b["output"]["text"] for b in bodies] == [a["text"] for a in alone]
        shared = [b["output"]["pages"][0]["timings"] for b in bodies]
        assert max(t["batch_jobs"] for t in shared) > 1, shared
        assert {a["pages"][0]["timings"]["batch_size"] for a in alone} == {1}
    finally:
        api.stop()
