"""Helpers to drive the real engine and service from synchronous tests."""

from __future__ import annotations

import asyncio
from typing import Sequence

from PIL import Image

from worker.engine.api import Engine, Generation, GuardConfig, PageRequest
from worker.families import FAMILIES, V2

OFF = GuardConfig(0, 1)
V2_MODES = FAMILIES[V2].mode_table("transformers")
A4 = (1240, 1754)


def page(image: Image.Image, mode: str = "gundam", max_tokens: int = 6, prompt: str = "<image>\nFree OCR.",
         job_id: str = "test", **extra) -> PageRequest:
    return PageRequest(image=image, prompt=prompt, view=V2_MODES[mode].view, max_tokens=max_tokens, guard=OFF,
                       job_id=job_id, **extra)


def generate_all(engine: Engine, pages: Sequence[PageRequest]) -> list[Generation | BaseException]:
    """Every page submitted at once (so the engine may batch them); errors come back in place."""
    async def run():
        return await asyncio.gather(*(engine.generate(p) for p in pages), return_exceptions=True)
    return asyncio.run(run())


def generate_one(engine: Engine, p: PageRequest) -> Generation:
    return asyncio.run(engine.generate(p))


def handle(service, job_input: dict, job_id: str = "job") -> dict:
    """One job through the service exactly as the RunPod handler runs it."""
    return asyncio.run(service.handle_job(job_input, job_id))


def make_service(engine: Engine, checkpoint, **env: str):
    """A service with its own settings around the shared tiny engine (job-level settings differ per
    test; loading a second engine would only cost time)."""
    from worker.results import ModelMeta
    from worker.service import OcrService
    from worker.settings import Settings

    settings = Settings.from_env({"MODEL_PATH": str(checkpoint), "ENGINE": "transformers", **env})
    meta = ModelMeta(name="tiny", revision="test", family=V2, engine="transformers", device="cpu", dtype="float32")
    return OcrService(settings, engine, FAMILIES[V2], V2_MODES, meta)
