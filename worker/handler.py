"""RunPod handlers: a job dict in, an output dict (or a stream of them) out, many jobs at once.

Both handlers are `async`, so runpod runs up to `MAX_CONCURRENCY` jobs concurrently
(`concurrency_modifier`) on one event loop and their pages meet in the engine's shared queue. A
sync handler would block that loop and serialise the jobs. RunPod cancels a job's task on cancel
or time-out; the cancellation reaches the engine, which drops the job's queued pages.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from .service import OcrService


class Handler:
    def __init__(self, service: OcrService):
        self.service = service

    async def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        return await self.service.handle_job(job.get("input"), str(job.get("id", "")))

    async def stream(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async for item in self.service.stream_outputs(job.get("input"), str(job.get("id", ""))):
            yield item

    def concurrency(self, current: int) -> int:
        """runpod's `concurrency_modifier`: a fixed number of jobs held at once (MAX_CONCURRENCY)."""
        return self.service.settings.max_concurrency
