"""The OCR service of one process: settings -> model family -> engine -> pipeline, and jobs in and
out in the worker's own shapes. Every front door (the RunPod handler, the local server with the
original REST and OpenAI routes) goes through one `OcrService`, so every job shares one engine queue.

In: a job's `input` dict (README "Input"). Out: a `DocumentResult`, a stream of `PageResult`s then
a closing `DocumentResult`, or, for RunPod, an output dict / the one error shape.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, AsyncIterator, Iterator, Mapping

from .engine import choose_engine, load_engine
from .engine.api import Engine, EngineInfo
from .errors import ConfigError, EngineDead, WorkerError, WorkerShuttingDown, error_output
from .families import Family, ModeSpec, detect_family
from .manifest import read_manifest
from .pipeline import Pipeline
from .results import DocumentResult, ModelMeta, PageResult
from .schema import OcrRequest, parse_job_input
from .settings import Settings
from .storage import fit_output

log = logging.getLogger(__name__)


class OcrService:
    def __init__(self, settings: Settings, engine: Engine, family: Family, modes: Mapping[str, ModeSpec],
                 meta: ModelMeta):
        self.settings = settings
        self.engine = engine
        self.family = family
        self.modes = modes
        self.meta = meta
        self.pipeline = Pipeline(engine, settings, meta)
        self.shutting_down = False  # SIGTERM seen: jobs in flight get SHUTDOWN_GRACE_S to finish
        self.stopped = False  # the grace is over: jobs still running end with worker_shutting_down
        self._running: set[asyncio.Task] = set()

    @classmethod
    async def start(cls, settings: Settings) -> "OcrService":
        """Read the checkpoint's family, load the engine, warm it up. Raises ConfigError (a message
        naming the setting or path) when the worker must not take jobs."""
        baked = read_manifest(settings.model_path)
        family = detect_family(settings.model_path)
        name = choose_engine(settings.engine)
        modes = family.mode_table(name)
        if not modes:
            raise ConfigError(f"the checkpoint at MODEL_PATH={settings.model_path} is {family.name}, which "
                              f"ENGINE={name} cannot run; use ENGINE=vllm")
        if settings.default_mode not in modes:
            raise ConfigError(f"DEFAULT_MODE={settings.default_mode} is not served by {family.name} on {name}; "
                              f"it offers {', '.join(modes)}")
        started = time.perf_counter()
        # On a worker thread, where no event loop runs: vLLM's AsyncLLM would bind its output handler to
        # a loop running in the constructing thread, and this one (asyncio.run at start-up, or the web
        # server's) is not the loop its requests will use.
        engine = await asyncio.to_thread(load_engine, settings.engine_config(family.name), name,
                                         {m: spec.view for m, spec in modes.items()})
        loaded = time.perf_counter()
        if settings.warmup:
            try:
                await engine.warmup()
            except WorkerError as exc:
                await engine.close()
                raise ConfigError(f"the warm-up inference failed: {exc.describe()}") from exc
        info = engine.info
        model_name, revision = baked or (settings.model_name or family.hub_id, settings.model_revision)
        log.info("%s on %s loaded from %s in %.2fs (%s, %s), warm-up %.2fs", family.name, info.engine,
                 settings.model_path, loaded - started, info.device, info.dtype, time.perf_counter() - loaded)
        meta = ModelMeta(name=model_name, revision=revision, family=family.name, engine=info.engine,
                         device=info.device, dtype=info.dtype)
        return cls(settings, engine, family, modes, meta)

    @property
    def info(self) -> EngineInfo:
        return self.engine.info

    @property
    def model_name(self) -> str:
        return self.meta.name

    def parse(self, job_input: Any) -> OcrRequest:
        if self.stopped:
            raise _stopped()
        return parse_job_input(job_input, self.settings, self.modes)

    def begin_shutdown(self) -> None:
        """SIGTERM (RunPod scaling down): runpod stops taking jobs; the ones in flight get
        SHUTDOWN_GRACE_S to finish, then end with `worker_shutting_down` instead of being lost.
        Safe to call from a signal handler."""
        if self.shutting_down:
            return
        self.shutting_down = True
        log.warning("shutting down: %d job(s) in flight get %.0f s to finish", len(self._running),
                    self.settings.shutdown_grace_s)
        timer = threading.Timer(self.settings.shutdown_grace_s, self._stop_jobs)
        timer.daemon = True
        timer.start()

    def _stop_jobs(self) -> None:
        self.stopped = True
        for task in list(self._running):
            task.get_loop().call_soon_threadsafe(task.cancel)

    @contextmanager
    def _tracked(self) -> Iterator[None]:
        """Marks the current task as a running job, so the end of the grace can stop it."""
        task = asyncio.current_task()
        self._running.add(task)
        try:
            yield
        finally:
            self._running.discard(task)

    async def run_job(self, job_input: Any, job_id: str = "") -> DocumentResult:
        return await self.pipeline.run_document(self.parse(job_input), job_id)

    async def stream_job(self, job_input: Any, job_id: str = "") -> AsyncIterator[PageResult | DocumentResult]:
        """Each page as it is ready, in order, then the closing document without the pages."""
        started = time.perf_counter()
        request = self.parse(job_input)
        outcomes = []
        async for outcome in self.pipeline.page_outcomes(request, job_id):
            outcomes.append(outcome)
            yield outcome.result
        yield self.pipeline.finish_document(outcomes, request, started, include_pages=False)

    async def handle_job(self, job_input: Any, job_id: str = "") -> dict[str, Any]:
        """A RunPod job's output dict, or the one error shape; never raises."""
        try:
            with self._tracked():
                output = (await self.run_job(job_input, job_id)).to_output()
                return await asyncio.to_thread(fit_output, output, job_id=job_id, settings=self.settings)
        except asyncio.CancelledError:
            if not self.stopped:  # RunPod cancelled the job or it timed out: nobody reads a result
                raise
            return self.failure(_stopped(), job_id)
        except Exception as exc:  # the handler must never crash the worker loop
            return self.failure(exc, job_id)

    async def stream_outputs(self, job_input: Any, job_id: str = "") -> AsyncIterator[dict[str, Any]]:
        """`stream_job` as RunPod stream items; a failure is the last item (RunPod ends a stream at
        the first item with an `error` key, so page problems travel as `failure`/`warnings`)."""
        try:
            with self._tracked():
                async for item in self.stream_job(job_input, job_id):
                    name = f"page-{item.page}" if isinstance(item, PageResult) else "result"
                    yield await asyncio.to_thread(fit_output, item.to_output(), job_id=job_id,
                                                  settings=self.settings, name=name)
        except asyncio.CancelledError:
            if not self.stopped:
                raise
            yield self.failure(_stopped(), job_id)
        except Exception as exc:  # yielded, not raised: a raise would lose the error code
            yield self.failure(exc, job_id)

    def failure(self, exc: BaseException, job_id: str) -> dict[str, Any]:
        """The one error shape; a dead engine also asks RunPod to replace this worker, since every
        later job would fail the same way."""
        if isinstance(exc, WorkerError):
            log.info("job %s failed: %s", job_id, exc.describe())
        else:
            log.exception("job %s: internal error", job_id)
        output = error_output(exc)
        if isinstance(exc, EngineDead):
            log.error("job %s: the engine is dead; asking RunPod to replace this worker", job_id)
            output["refresh_worker"] = True
        return output

    async def close(self) -> None:
        await self.engine.close()


def _stopped() -> WorkerShuttingDown:
    return WorkerShuttingDown("the worker was stopped (SIGTERM) before the job finished; submit it again")

