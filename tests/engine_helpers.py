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


def fail_on_red_pages(engine, monkeypatch) -> list[int]:
    """Makes transformers' `generate` on the engine's model (the backend library call, not the
    project's code) raise a CUDA device-side assert whenever its batch holds an all-red page, as a
    page the model cannot handle would. Returns the batch sizes `generate` was called with."""
    real_generate = engine.model.generate
    calls: list[int] = []

    def generate(*args, **kwargs):
        pixels = kwargs["pixel_values"]
        red = (pixels[:, 0].mean(dim=(1, 2)) > 0.99) & (pixels[:, 1].mean(dim=(1, 2)) < -0.99)
        calls.append(pixels.shape[0])
        if bool(red.any()):
            raise RuntimeError("CUDA error: device-side assert triggered (injected)")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(engine.model, "generate", generate)
    return calls
