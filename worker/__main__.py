"""`python -m worker`: parse settings, load the model, warm it up, then hand over to
`runpod.serverless.start`, so runpod's own flags (`--test_input`, `--rp_serve_api`, ...) work as
documented. The local one-shot test mode of runpod does not run generator handlers, so the
streaming handler is used only when serving (the local API or RunPod's queue) with STREAM_PAGES.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Mapping, Sequence


def is_local_test_run(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    """Mirrors runpod.serverless's choice: one local job unless serving the API or on RunPod."""
    if "--rp_serve_api" in argv or env.get("RUNPOD_REALTIME_PORT"):
        return False
    return "--test_input" in argv or not env.get("RUNPOD_WEBHOOK_GET_JOB")


def main() -> int:
    from .errors import ConfigError
    from .manifest import read_manifest
    from .settings import Settings

    log = logging.getLogger("worker")
    try:
        settings = Settings.from_env(os.environ)
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        baked = read_manifest(settings.model_path)
        started = time.perf_counter()
        from .engine import Engine

        engine = Engine.load(settings)
        loaded = time.perf_counter()
        if settings.warmup:
            engine.warmup()
    except ConfigError as exc:
        print(f"worker cannot start: {exc}", file=sys.stderr)
        return 2
    info = engine.info
    log.info("model loaded from %s in %.2fs (%s, %s), warm-up %.2fs", settings.model_path, loaded - started,
             info.device, info.dtype, time.perf_counter() - loaded)

    import runpod

    from .handler import Handler
    from .pipeline import Pipeline
    from .results import ModelMeta

    name, revision = baked or (settings.model_name, settings.model_revision)
    meta = ModelMeta(name=name, revision=revision, device=info.device, dtype=info.dtype)
    handler = Handler(Pipeline(engine, settings, meta), settings)
    streaming = settings.stream_pages and not is_local_test_run(sys.argv, os.environ)
    runpod.serverless.start({"handler": handler.stream if streaming else handler,
                             "return_aggregate_stream": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
