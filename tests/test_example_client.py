"""example_client.py against runpod's real local API over HTTP, through a counting proxy on 127.0.0.1:
one job per file, whichever style; a failed job's error read from its answer, not by running it again;
the whole output saved as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, LocalApi, encode, make_pdf, text_page
from tests.test_bulk import CountingProxy, marked_page


@pytest.fixture(scope="module")
def proxy(tiny_checkpoint):
    # RUNPOD_LOG_LEVEL: runpod would log every output into the server's stdout pipe, which nobody reads.
    api = LocalApi(tiny_checkpoint, MAX_TOKENS="8", RUNAWAY_RETRY="false", WARMUP="false",
                   RUNPOD_LOG_LEVEL="ERROR")
    counting = CountingProxy(api.url)
    yield counting
    counting.close()
    api.stop()


def run_client(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    return subprocess.run([sys.executable, str(ROOT / "example_client.py"), *args, "--mode", "tiny", "--task", "ocr",
                           "--poll-interval", "0.2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.process
def test_one_job_per_file_and_the_output_saved_next_to_it(proxy, tmp_path):
    (tmp_path / "page.png").write_bytes(encode(marked_page(1, ["Example"]), "PNG"))
    (tmp_path / "two.pdf").write_bytes(make_pdf([marked_page(2, ["One"]), text_page(["Two"], size=(640, 480))]))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    done = run_client(str(tmp_path / "page.png"), str(tmp_path / "two.pdf"), str(tmp_path / "broken.png"),
                      "--base-url", proxy.url)
    assert done.returncode == 1, done.stderr  # the broken file failed
    assert proxy.forwarded["POST /run"] == 3 and proxy.forwarded["POST /runsync"] == 0
    # The failure came from the /status answer that ended the job, not from a second job.
    assert "broken.png: job failed: invalid_image: field 'image'" in done.stderr
    page = json.loads((tmp_path / "page.png.json").read_text())
    assert page["type"] == "document" and page["page_count"] == 1 and page["pages"][0]["source"] == "image"
    pdf = json.loads((tmp_path / "two.pdf.json").read_text())
    assert pdf["page_count"] == 2 and [p["source"] for p in pdf["pages"]] == ["pdf#1", "pdf#2"]
    assert not (tmp_path / "broken.png.json").exists()


@pytest.mark.process
def test_runsync_style_submits_one_runsync_job_and_saves_to_out(proxy, tmp_path):
    (tmp_path / "page.png").write_bytes(encode(marked_page(3, ["Runsync"]), "PNG"))
    before = dict(proxy.forwarded)
    done = run_client(str(tmp_path / "page.png"), "--style", "runsync", "--base-url", proxy.url,
                      "--out", str(tmp_path / "results"))
    assert done.returncode == 0, done.stderr
    assert proxy.forwarded["POST /runsync"] - before.get("POST /runsync", 0) == 1
    assert proxy.forwarded["POST /run"] == before.get("POST /run", 0)
    saved = json.loads((tmp_path / "results" / "page.png.json").read_text())
    assert saved["page_count"] == 1 and "text" in saved
