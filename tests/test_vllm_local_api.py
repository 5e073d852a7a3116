"""The worker on the vLLM engine as RunPod runs it: `python -m worker --rp_serve_api` with ENGINE=vllm
on the v1 CPU checkpoint (stock vLLM, full-size vision towers), four concurrent jobs over HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image, ImageDraw

from tests.helpers import LocalApi, b64, encode

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.process]


def page(k: int) -> Image.Image:
    """Four pages as different as pages get (the random v1 checkpoint is a coarse fingerprint)."""
    if k == 0:
        return Image.new("RGB", (600, 600), "white")
    if k == 1:
        return Image.new("RGB", (600, 600), "black")
    image = Image.new("RGB", (600, 600), "white")
    draw = ImageDraw.Draw(image)
    for x in range(0, 600, 40 * k):
        draw.rectangle((x, 0, x + 20 * k, 600), fill=(220, 30, 30) if k == 2 else (30, 60, 220))
    return image


def test_four_concurrent_jobs_on_vllm_get_their_own_pages_and_a_mode_it_lacks_is_refused():
    from make_vllm_checkpoint import cached_checkpoint

    api = LocalApi(cached_checkpoint("v1"), ENGINE="vllm", ENFORCE_EAGER="true", CPU_KV_CACHE_GIB="1",
                   MAX_MODEL_LEN="2048", MAX_TOKENS="8", RUNAWAY_RETRY="false", DEFAULT_MODE="gundam",
                   start_timeout=600)
    try:
        inputs = [{"image": b64(encode(page(k))), "task": "ocr", "ngram_size": 0} for k in range(4)]
        with ThreadPoolExecutor(4) as pool:
            bodies = list(pool.map(lambda job: requests.post(api.url + "/runsync", json={"input": job},
                                                             timeout=900).json(), inputs))
        assert [b["status"] for b in bodies] == ["COMPLETED"] * 4, bodies
        outputs = [b["output"] for b in bodies]
        for out in outputs:
            assert out["model"]["engine"] == "vllm" and out["model"]["family"] == "deepseek-ocr"
            settings = out["pages"][0]["settings"]
            # 600x600 fits one 640 tile: the global view only, 16 rows of 16 + newline, + separator.
            assert (settings["mode"], settings["tile_size"], settings["tiles"], settings["vision_tokens"]) == \
                ("gundam", 640, 0, 273)
        assert len({o["text"] for o in outputs}) > 1, "four different pages gave the same text"
        assert max(o["pages"][0]["timings"]["batch_size"] for o in outputs) > 1
        for k in (1, 2):  # each job got its own page's output: the same as that page alone
            assert api.runsync(inputs[k])["output"]["text"] == outputs[k]["text"]
        refused = api.runsync({**inputs[0], "mode": "base"})
        assert refused["status"] == "FAILED" and refused["error"].startswith("mode_unavailable: field 'mode'")
        assert "'gundam'" in refused["error"]
    finally:
        api.stop()
