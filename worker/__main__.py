"""`python -m worker`: settings, model family, engine, warm-up, then `runpod.serverless.start`, so
runpod's own flags (`--test_input`, `--rp_serve_api`, ...) work as documented. runpod's one-job local
mode does not run generator handlers, so the streaming handler is used only when serving (the local
API or RunPod's queue) with STREAM_PAGES.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import sys
from typing import Mapping, Sequence


def is_local_test_run(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    """Mirrors runpod.serverless's choice: one local job unless serving the API or on RunPod."""
    if "--rp_serve_api" in argv or env.get("RUNPOD_REALTIME_PORT"):
        return False
    return "--test_input" in argv or not env.get("RUNPOD_WEBHOOK_GET_JOB")


def main() -> int:
    from .errors import ConfigError
    from .settings import Settings

    try:
        settings = Settings.from_env(os.environ)
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from .service import OcrService

        service = asyncio.run(OcrService.start(settings))
    except ConfigError as exc:
        print(f"worker cannot start: {exc}", file=sys.stderr)
        return 2

    import runpod

    from .handler import Handler

    # runpod's local modes exit the process when done: stop the engine's threads cleanly first.
    atexit.register(lambda: asyncio.run(service.close()))

    handler = Handler(service)
    local = is_local_test_run(sys.argv, os.environ)
    streaming = settings.stream_pages and not local
    runpod.serverless.start({"handler": handler.stream if streaming else LocalJob(handler, settings) if local else handler,
                             "concurrency_modifier": handler.concurrency,
                             "return_aggregate_stream": True})
    return 0


class LocalJob:
    """runpod's one-job local mode: the handler, plus the result printed once as readable JSON (and
    written to RESULT_FILE), with the model that produced it named first. runpod itself prints the
    result only as a Python dict at its DEBUG level."""

    def __init__(self, handler, settings):
        self.handler = handler
        self.settings = settings

    async def __call__(self, job: dict) -> dict:
        output = await self.handler(job)
        model = self.handler.service.meta
        print(f"model: {model.name} (revision {model.revision}, {model.family} on {model.engine}, "
              f"{model.device}/{model.dtype})", file=sys.stderr)
        text = json.dumps(output, indent=2, ensure_ascii=False)
        print(text)
        if self.settings.result_file is not None:
            self.settings.result_file.parent.mkdir(parents=True, exist_ok=True)
            self.settings.result_file.write_text(text + "\n", encoding="utf-8")
            print(f"result written to {self.settings.result_file}", file=sys.stderr)
        return output


if __name__ == "__main__":
    sys.exit(main())
