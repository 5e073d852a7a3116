"""The browser UI end to end: the built app (`webui/dist`, made by `scripts/build-webui.sh`) in Debian's
headless Chromium, driven by `webui/e2e/run.mjs` (playwright-core), against `python -m worker.server`
on the tiny checkpoint, which serves the app at `/`. The script drops a 3-page PDF, an image and a
corrupt image, and checks every page completes, the corrupt one fails with `invalid_image` on its page
only, the markdown and .docx exports, layout boxes, a reload that keeps everything without sending a
job again, and a retry. This file starts the server, runs the script and reads its verdict.

Needs node, Chromium (`apt-get install chromium`) and the built app with its node_modules: skipped
where they are missing, failed in CI (env CI set), which must build them first."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers import WorkerServer

pytestmark = pytest.mark.browser

WEBUI = ROOT / "webui"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
# Server start-up is inside WorkerServer's own 180 s; five tiny-mode pages on a 2-core CPU take
# well under a minute, the browser's part a few seconds.
E2E_TIMEOUT_S = 420
CHECKS = [
    "every page completes; only the corrupt image fails",
    "one /runsync per page (5), no polling on the local server",
    "the page shows the worker's error code invalid_image",
    "the markdown export has 3 pages split by the page separator",
    "each markdown part is its page's markdown as the worker returned it",
    "the .docx separates the 3 pages with 2 page breaks",
    "the .docx holds every word of every page",
    "after a reload every document and page status is kept",
    "after a reload the page image is shown from the browser's store",
    "a reload sends no job again",
    "a retry sends the failed page, and only it, again",
    "no uncaught errors in the page",
]


def missing_prerequisite() -> str | None:
    if not (WEBUI / "dist" / "index.html").is_file():
        return "webui/dist is not built (run scripts/build-webui.sh)"
    if not (WEBUI / "node_modules" / "playwright-core").is_dir():
        return "webui/node_modules has no playwright-core (run scripts/build-webui.sh)"
    if shutil.which("node") is None:
        return "node is not installed"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)"
    return None


@pytest.fixture(scope="module")
def prerequisites() -> None:
    missing = missing_prerequisite()
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{missing}: CI builds the web UI and installs Chromium before the tests", pytrace=False)
    pytest.skip(missing)


def test_webui_end_to_end_against_the_local_server(prerequisites, tiny_checkpoint):
    # RUNAWAY_RETRY off: the random model runs every page to MAX_TOKENS, and a retry would double the time.
    server = WorkerServer(tiny_checkpoint, MAX_TOKENS="8", RUNAWAY_RETRY="false", WEBUI_DIR=str(WEBUI / "dist"))
    try:
        result = subprocess.run(["node", str(WEBUI / "e2e" / "run.mjs"), server.url], cwd=ROOT, capture_output=True,
                                text=True, timeout=E2E_TIMEOUT_S)
    finally:
        server.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    verdict = re.search(r"^e2e: (\d+) passed, (\d+) failed$", result.stdout, re.MULTILINE)
    assert verdict is not None and verdict.group(2) == "0", output
    assert int(verdict.group(1)) >= len(CHECKS), output
    passed = set(re.findall(r"^ok \d+ - (.+)$", result.stdout, re.MULTILINE))
    assert [check for check in CHECKS if check not in passed] == [], output
