"""RunPod handlers: a job dict in, an output dict (or a stream of them) out, many jobs at once.

Both handlers are `async`, so runpod runs up to `MAX_CONCURRENCY` jobs concurrently
(`concurrency_modifier`) on one event loop and their pages meet in the engine's shared queue. A
sync handler would block that loop and serialise the jobs. RunPod cancels a job's task on cancel
or time-out; the cancellation reaches the engine, which drops the job's queued pages. Jobs that
came through RunPod's OpenAI route (`openai_route` in the input) are answered in OpenAI's shapes.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, AsyncIterator

from .protocols.runpod_openai import handle_openai_job, is_openai_job, stream_openai_job
from .service import OcrService


class Handler:
    def __init__(self, service: OcrService):
        self.service = service
        self._sigterm_hooked = False

    def hook_sigterm(self) -> None:
        """Chain onto the SIGTERM handler that runpod (its job loop, or uvicorn for the local API)
        installed: theirs stops taking jobs, ours gives the jobs in flight SHUTDOWN_GRACE_S. Done at the
        first job because runpod installs its handler only once it starts, after our start-up."""
        if self._sigterm_hooked or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (where runpod's loop runs)
        self._sigterm_hooked = True
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            self.service.begin_shutdown()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    async def __call__(self, job: dict[str, Any]) -> dict[str, Any] | str:
        self.hook_sigterm()
        job_input, job_id = job.get("input"), str(job.get("id", ""))
        if is_openai_job(job_input):
            return await handle_openai_job(self.service, job_input, job_id)
        return await self.service.handle_job(job_input, job_id)

    async def stream(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        self.hook_sigterm()
        job_input, job_id = job.get("input"), str(job.get("id", ""))
        items = (stream_openai_job(self.service, job_input, job_id) if is_openai_job(job_input)
                 else self.service.stream_outputs(job_input, job_id))
        async for item in items:
            yield item

    def concurrency(self, current: int) -> int:
        """runpod's `concurrency_modifier`: a fixed number of jobs held at once (MAX_CONCURRENCY)."""
        return self.service.settings.max_concurrency
