"""The vLLM engine: DeepSeek-OCR (v1) and DeepSeek-OCR-2 on vLLM's async engine (AsyncLLM, in the worker's
process; vLLM runs its engine core in child processes it starts), continuously batched. The only module
of the worker that imports vLLM.

In: `PageRequest`s from any event loop. Out: one `Generation` per page, awaited. Every page is its own
vLLM request, so the pages of all concurrent jobs share the scheduler: a short page leaves the batch
as soon as it ends instead of waiting for the longest one. Greedy decoding; the repetition guard is
the per-request n-gram logits processor vLLM ships for these models; grounding tags are special tokens
and stay in the text.

Views: vLLM's DeepSeek processors take the view sizes from module constants (v1: 1024 global + 640
tiles; v2: 1024 global + 768 tiles, crop on, 2..6 tiles), and per-request sizes fail with a
placeholder-count mismatch. `load` reads those constants and refuses to serve any other view; a page
asking for one gets `ModeUnavailable` naming the modes this engine offers.

AsyncLLM binds its output handler to the event loop of its first request, so the engine lives on its
own loop thread (`LoopThread`) and every caller's loop reaches it through `LoopThread.call`; cancelling
the caller cancels the request's task there, and vLLM aborts the request.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from PIL import Image

from ..errors import ConfigError, EngineDead, ModelError, ModeUnavailable
from ..families import V1
from .api import (WARMUP_PROMPT, EngineConfig, EngineInfo, EngineStats, Generation, GuardConfig, PageRequest,
                  ViewConfig, guard_exempt_ids)
from .loop import LoopThread

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
PIXELS_PER_TOKEN_SIDE = 64  # SAM patch 16, then a 4x downsample


@dataclass(frozen=True)
class _VisionLayout:
    """What vLLM's processor really does for this family: the one view it serves and its token
    arithmetic (v1 ends every row of a view with a newline token)."""

    view: ViewConfig
    row_newlines: bool

    def global_tokens(self) -> int:
        side = self.view.view_size // PIXELS_PER_TOKEN_SIDE
        return side * (side + 1 if self.row_newlines else side) + 1  # + the view separator

    def tiles(self, vision_tokens: int) -> int:
        """Tiles from the placeholder count. v2: 144 per 768 tile. v1: 100 per 640 tile plus 10
        newline tokens per tile row; rows are at most 6, so the newlines never reach a tile's 100."""
        if not self.view.tile_size:
            return 0
        per_tile = (self.view.tile_size // PIXELS_PER_TOKEN_SIDE) ** 2
        return max(0, vision_tokens - self.global_tokens()) // per_tile


def _vllm_layout(family: str) -> _VisionLayout:
    """The view vLLM serves for `family`, read from vLLM's own module constants (so a vLLM release that
    changes them is caught at start instead of mis-reporting every page)."""
    from vllm.transformers_utils.processors import deepseek_ocr as processor

    if family == V1:
        tile_size, row_newlines = processor.IMAGE_SIZE, True
    else:
        from vllm.model_executor.models import deepseek_ocr2

        tile_size, row_newlines = deepseek_ocr2.IMAGE_SIZE, False
    view = ViewConfig(view_size=processor.BASE_SIZE, tile_size=tile_size if processor.CROP_MODE else None,
                      crop=bool(processor.CROP_MODE), min_tiles=processor.MIN_CROPS, max_tiles=processor.MAX_CROPS)
    return _VisionLayout(view=view, row_newlines=row_newlines)


@dataclass(frozen=True)
class _InFlight:
    job_id: str


class VllmEngine:
    def __init__(self, llm, config: EngineConfig, info: EngineInfo, layout: _VisionLayout,
                 views: frozenset[ViewConfig], loop: LoopThread):
        self.llm = llm
        self.config = config
        self.info = info
        self.layout = layout
        self.views = views
        self._loop = loop
        tokenizer = llm.get_tokenizer()
        self._tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.exempt_ids = guard_exempt_ids(tokenizer)
        self._in_flight: OrderedDict[str, _InFlight] = OrderedDict()  # arrival order = vLLM's FCFS order

    @classmethod
    def load(cls, config: EngineConfig, modes: Sequence[str], views: frozenset[ViewConfig]) -> "VllmEngine":
        """Start vLLM's async engine on `config.model_path` (blocking: weights, warm kernels, KV cache).
        Raises ConfigError naming the setting or the path when it cannot start."""
        # vLLM reads its environment once, at import: the CPU KV cache size must be set before.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.cpu_kv_cache_gib)
        # The engine core is a child process. Spawned, not forked: the worker loads the engine from a
        # thread (AsyncLLM binds its output handler to an event loop running in the constructing
        # thread, so it must be built where none runs), and a fork from a multi-threaded process can
        # inherit held locks. vLLM already spawns on CUDA; this makes the CPU (tests) the same.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        on_cpu = current_platform.is_cpu()
        if config.device == "cuda" and on_cpu:
            raise ConfigError("DEVICE=cuda but the installed vLLM is the CPU build (vllm-cpu)")
        if config.device == "cpu" and not on_cpu:
            raise ConfigError("DEVICE=cpu with the CUDA build of vLLM: use ENGINE=transformers for CPU runs")
        layout = _vllm_layout(config.family)
        foreign = sorted({(v.view_size, v.tile_size) for v in views if v != layout.view}, key=str)
        if foreign:
            raise ConfigError(f"the vLLM engine serves only view {layout.view.view_size} + tiles of "
                              f"{layout.view.tile_size} for {config.family}; asked for {foreign}")
        # fp32 on the CPU, as the transformers engine (no bf16 drift between the two in tests); the
        # checkpoint's dtype (bf16) on the GPU.
        dtype = "float32" if on_cpu else "auto"
        args = AsyncEngineArgs(
            model=str(config.model_path),
            tokenizer=str(config.model_path),
            dtype=dtype,
            max_model_len=config.max_model_len,
            max_num_seqs=config.max_num_seqs,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enforce_eager=config.enforce_eager,
            # vLLM's recipes for DeepSeek-OCR turn both off: every page is a new image after a
            # ~10-token prompt, so there is nothing to reuse, and hashing pages to look them up costs
            # time on every request.
            enable_prefix_caching=False,
            mm_processor_cache_gb=0,
            limit_mm_per_prompt={"image": 1},
            logits_processors=[NGramPerReqLogitsProcessor],
            seed=0,
        )
        try:
            llm = AsyncLLM.from_engine_args(args)
        except Exception as exc:  # noqa: BLE001 - start-up raises many types (ValueError, RuntimeError, OSError)
            raise ConfigError(_startup_hint(config, exc)) from exc
        dtype_name = "float32" if on_cpu else str(llm.model_config.dtype).removeprefix("torch.")
        info = EngineInfo(engine="vllm", family=config.family, device="cpu" if on_cpu else "cuda",
                          dtype=dtype_name, modes=tuple(modes), context_tokens=config.max_model_len)
        return cls(llm, config, info, layout, views, LoopThread("vllm"))

    # -- the protocol -------------------------------------------------------------------------

    async def generate(self, page: PageRequest) -> Generation:
        if page.view not in self.views:
            raise ModeUnavailable(f"this engine serves modes {', '.join(self.info.modes)}", field="mode")
        return await self._loop.call(self._generate(page))

    async def warmup(self) -> None:
        """One tiny page before the first job: the vision towers' kernels, the KV cache and the output
        handler start at boot (billed once) instead of inside the first user's request."""
        page = PageRequest(image=Image.new("RGB", (256, 256), "white"), prompt=WARMUP_PROMPT,
                           view=self.layout.view, max_tokens=2, guard=GuardConfig(0, 1), job_id="warmup")
        await self._loop.call(self._generate(page))

    def stats(self) -> EngineStats:
        """vLLM schedules first come, first served up to `max_num_seqs` sequences: the oldest requests
        are running, the rest wait (an approximation while the KV cache is what limits)."""
        entries = list(self._in_flight.values())
        running = entries[:self.config.max_num_seqs]
        waiting = entries[self.config.max_num_seqs:]
        by_job: dict[str, int] = {}
        for entry in waiting:
            by_job[entry.job_id] = by_job.get(entry.job_id, 0) + 1
        return EngineStats(queued=len(waiting), running=len(running), queued_by_job=by_job)

    async def close(self) -> None:
        if self._loop.closed:
            return
        self.llm.shutdown()
        self._loop.close()
        # Collected now rather than at interpreter exit, where AsyncLLM.__del__ fails on torn-down modules.
        self.llm = None

    # -- on the engine loop -------------------------------------------------------------------

    def _sampling(self, page: PageRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        extra = None
        if page.guard.ngram_size:
            extra = {"ngram_size": page.guard.ngram_size, "window_size": page.guard.window,
                     "whitelist_token_ids": list(self.exempt_ids)}
        # vLLM stops at max_model_len by itself; the clamped limit is reported once the prompt's
        # length is known.
        return SamplingParams(temperature=0.0, max_tokens=page.max_tokens, logprobs=page.logprobs or None,
                              skip_special_tokens=False, detokenize=False, extra_args=extra,
                              output_kind=RequestOutputKind.FINAL_ONLY)

    async def _generate(self, page: PageRequest) -> Generation:
        from vllm.exceptions import VLLMError
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.llm.errored:
            raise EngineDead("the vLLM engine has stopped; the worker must be replaced")
        request_id = f"{page.job_id or 'page'}-{uuid.uuid4().hex[:12]}"
        added = time.monotonic()
        self._in_flight[request_id] = _InFlight(job_id=page.job_id)
        concurrent = list(self._in_flight.values())[:self.config.max_num_seqs]
        batch_size, batch_jobs = len(concurrent), len({entry.job_id for entry in concurrent})
        prompt = {"prompt": page.prompt, "multi_modal_data": {"image": page.image}}
        final = None
        try:
            async for output in self.llm.generate(prompt, self._sampling(page), request_id):
                final = output
        except EngineDeadError as exc:
            log.error("vLLM's engine core died during request %s: %s", request_id, _root_message(exc))
            raise EngineDead("the vLLM engine died; the worker must be replaced") from exc
        except (VLLMError, ValueError, TypeError, RuntimeError) as exc:
            # Input validation (a prompt longer than the context, a malformed image) and errors raised
            # while this request ran (vLLM wraps them in EngineGenerateError): this page only.
            raise ModelError(f"generation failed: {_root_message(exc)}") from exc
        finally:
            self._in_flight.pop(request_id, None)
        finished = time.monotonic()
        if final is None or not final.outputs:
            raise ModelError("vLLM returned no output for the page")
        return self._to_generation(page, final, added, finished, batch_size, batch_jobs)

    def _to_generation(self, page: PageRequest, final, added: float, finished: float, batch_size: int,
                       batch_jobs: int) -> Generation:
        completion = final.outputs[0]
        if completion.finish_reason not in ("stop", "length"):
            raise ModelError(f"vLLM ended the page with finish reason {completion.finish_reason!r}")
        ids = list(completion.token_ids)
        stopped = completion.finish_reason == "stop" and bool(ids) and ids[-1] == self.eos_id
        kept = ids[:-1] if stopped else ids
        prompt_ids = list(final.prompt_token_ids or ())
        vision_tokens = sum(1 for token in prompt_ids if token == self.image_token_id)
        top = None
        if page.logprobs and completion.logprobs is not None:
            top = tuple(
                tuple((int(token), float(entry.logprob))
                      for token, entry in sorted(step.items(), key=lambda item: item[1].rank)
                      if entry.rank is not None and entry.rank <= page.logprobs)
                for step in completion.logprobs[:len(kept)])
        queue_s, preprocess_s, generate_s = _timings(final.metrics, added, finished)
        return Generation(
            raw_text=self._tokenizer.decode(kept, skip_special_tokens=False),
            token_ids=tuple(kept),
            finish_reason="stop" if completion.finish_reason == "stop" else "length",
            prompt_tokens=len(prompt_ids),
            vision_tokens=vision_tokens,
            completion_tokens=len(kept),
            tiles=self.layout.tiles(vision_tokens),
            max_tokens=max(0, min(page.max_tokens, self.config.max_model_len - len(prompt_ids))),
            batch_size=batch_size,
            batch_jobs=batch_jobs,
            queue_s=queue_s,
            preprocess_s=preprocess_s,
            generate_s=generate_s,
            top_logprobs=top,
        )


def _timings(metrics, added: float, finished: float) -> tuple[float, float, float]:
    """(queue_s, preprocess_s, generate_s) from vLLM's per-request timestamps (monotonic, taken in the
    engine-core process: the same clock as ours on one machine). Without them, all time is generation."""
    if metrics is None or not getattr(metrics, "queued_ts", 0) or not getattr(metrics, "scheduled_ts", 0):
        return 0.0, 0.0, round(finished - added, 4)
    preprocess = max(0.0, metrics.queued_ts - added)
    queue = max(0.0, metrics.scheduled_ts - metrics.queued_ts)
    end = metrics.last_token_ts or finished
    return round(queue, 4), round(preprocess, 4), round(max(0.0, end - metrics.scheduled_ts), 4)


def _root_message(exc: BaseException) -> str:
    """vLLM wraps request failures (EngineGenerateError() from the cause): report the cause's text."""
    while exc.__cause__ is not None and not str(exc):
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _startup_hint(config: EngineConfig, exc: BaseException) -> str:
    """One message naming the path and every setting vLLM's start depends on, with vLLM's own reason."""
    return (f"vLLM could not start on MODEL_PATH={config.model_path} with MAX_MODEL_LEN={config.max_model_len}, "
            f"MAX_NUM_SEQS={config.max_num_seqs}, GPU_MEMORY_UTILIZATION={config.gpu_memory_utilization}, "
            f"CPU_KV_CACHE_GIB={config.cpu_kv_cache_gib}, ENFORCE_EAGER={config.enforce_eager}: "
            f"{type(exc).__name__}: {exc}")
