"""The transformers engine: native DeepSeek-OCR-2 classes (no remote code), one queue for the pages of
every in-flight job, static batches formed across jobs.

In: `PageRequest`s from any event loop. Out: one `Generation` per page, awaited. Pipeline of a page:
the processor runs on a pool of CPU threads as soon as the page arrives (so the model never waits for
preprocessing while pages are queued), the prepared page joins the queue, and one batcher takes up to
`batch_size` pages that can share a `generate` call (same batch key), waiting at most `batch_wait_ms`
for the batch to fill. A failing batch is retried page by page, and a CUDA out-of-memory batch is
split in halves, so one job's bad page never fails another job's pages.

bf16 on CUDA, fp32 on CPU, SDPA attention (the SAM encoder's relative position bias rules out
flash-attention), greedy decoding. The engine runs on its own event-loop thread (`LoopThread`), so the
RunPod handler's loop, a web server's loop and tests' loops can all share one engine.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LogitsProcessor, LogitsProcessorList

from ..errors import ConfigError, EngineDead, ModeUnavailable, ModelError, OutOfMemory
from .api import (WARMUP_PROMPT, EngineConfig, EngineInfo, EngineStats, Generation, GuardConfig, PageRequest,
                  ViewConfig, guard_exempt_ids)
from .loop import LoopThread

log = logging.getLogger(__name__)

WARMUP_VIEW = ViewConfig(view_size=1024, tile_size=None, crop=False, min_tiles=0, max_tiles=0)


def processor_kwargs(view: ViewConfig) -> dict:
    """Keyword arguments for `DeepseekOcr2Processor.__call__` for one view.

    The image processor resizes the global view to `tile_size` when `crop_to_patches` is False, while
    the token count uses `size`: both must be the view size or generation fails with "Image features
    and image tokens do not match" (seen in transformers 5.19 and 5.23).
    """
    if view.crop:
        return {"crop_to_patches": True, "size": {"height": view.view_size, "width": view.view_size},
                "tile_size": view.tile_size, "min_patches": view.min_tiles, "max_patches": view.max_tiles}
    return {"crop_to_patches": False, "size": {"height": view.view_size, "width": view.view_size},
            "tile_size": view.view_size}


def _processor_for(processor, view: ViewConfig):
    configured = copy.deepcopy(processor)
    configured.image_processor.size = {"height": view.view_size, "width": view.view_size}
    configured.image_processor.tile_size = view.tile_size or view.view_size
    return configured


class WindowedNoRepeatNGram(LogitsProcessor):
    """Bans a token when it would complete an n-gram already generated within the last `window`
    tokens of the same sequence (DeepSeek-OCR's official rule: n=30 over 90 tokens for images).

    Works on a batch without leaving the device: every row has generated the same number of
    tokens (finished rows are padded), so the windows of all rows are one `unfold`. Prompt tokens
    are not part of the window; `exempt_ids` are never banned.
    """

    def __init__(self, ngram_size: int, window: int, exempt_ids: Sequence[int] = ()):
        self.n = ngram_size
        self.window = window
        self.exempt = torch.tensor(sorted(set(exempt_ids)), dtype=torch.long)
        self.prompt_len: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        generated = input_ids[:, self.prompt_len:][:, -self.window:]
        if self.n < 1 or generated.shape[1] < self.n:
            return scores
        grams = generated.unfold(1, self.n, 1)  # (batch, windows, n)
        prefix = generated[:, -(self.n - 1):] if self.n > 1 else generated[:, :0]
        matches = (grams[:, :, :-1] == prefix.unsqueeze(1)).all(-1)  # (batch, windows)
        banned = grams[:, :, -1]
        if self.exempt.numel():
            if self.exempt.device != banned.device:  # once per generate call, not once per token
                self.exempt = self.exempt.to(banned.device)
            matches &= ~torch.isin(banned, self.exempt)
        vocab = scores.shape[1]
        # Unmatched entries go to a spare column, so duplicate ids cannot overwrite a True.
        target = torch.where(matches, banned, torch.full_like(banned, vocab))
        mask = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
        mask.scatter_(1, target, True)
        return scores.masked_fill(mask[:, :vocab], float("-inf"))


@dataclass(eq=False)
class _Queued:
    """A page whose processor outputs are ready, waiting for a batch."""

    page: PageRequest
    tensors: dict
    preprocess_s: float
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class _BatchOutcome:
    """What the model thread hands back for one page: a generation or the page's own error."""

    generation: Generation | None = None
    error: BaseException | None = None


class TransformersEngine:
    def __init__(self, model, processor, device: torch.device, dtype: torch.dtype, config: EngineConfig,
                 modes: Sequence[str], views: frozenset[ViewConfig]):
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.config = config
        self.views = views
        # transformers 5.19 counts image placeholders from the image processor's own `size` and
        # `tile_size`, ignoring the per-call kwargs (5.23 reads the kwargs): a 768 view counted as
        # 1024 fails with "Image features and image tokens do not match". One processor per view,
        # configured for it, is right under both.
        self._processors = {view: _processor_for(processor, view) for view in views | {WARMUP_VIEW}}
        tokenizer = processor.tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.image_token_id = model.config.image_token_id
        self.exempt_ids = guard_exempt_ids(tokenizer)
        context = min(getattr(model.config.text_config, "max_position_embeddings", config.context_tokens),
                      config.context_tokens)
        self.info = EngineInfo(engine="transformers", family=config.family, device=str(device),
                               dtype=str(dtype).removeprefix("torch."), modes=tuple(modes),
                               context_tokens=context)
        workers = config.preprocess_workers or os.cpu_count() or 1
        self._preprocess_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._loop = LoopThread("engine")
        self._queue: deque[_Queued] = deque()
        self._arrived: asyncio.Event | None = None  # created on the engine loop
        self._preprocessing: dict[str, int] = {}
        self._running: list[_Queued] = []
        self._dead: EngineDead | None = None
        self._batcher = self._loop.run(self._start_batcher())

    @classmethod
    def load(cls, config: EngineConfig, modes: Sequence[str], views: frozenset[ViewConfig]) -> "TransformersEngine":
        """Load from `config.model_path`, offline. Raises ConfigError with the path and the way to get
        weights. The original deepseek-ai format and transformers' own format both load: only
        config.json differs, and `native_config` converts the original one in memory."""
        from .hf_config import native_config

        path = config.model_path
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("DEVICE=cuda but no CUDA device is visible")
        use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        device = torch.device("cuda" if use_cuda else "cpu")
        dtype = torch.bfloat16 if use_cuda else torch.float32
        try:
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(
                path, config=native_config(path), local_files_only=True, dtype=dtype,
                attn_implementation="sdpa").to(device).eval()
        except Exception as exc:  # noqa: BLE001 - loaders raise many types (SafetensorError, OSError, ...)
            raise ConfigError(f"the model at MODEL_PATH={path} could not be loaded: "
                              f"{type(exc).__name__}: {exc}") from exc
        processor.tokenizer.padding_side = "left"  # batched decoder-only generation needs left padding
        return cls(model, processor, device, dtype, config, modes, views)

    # -- the protocol -------------------------------------------------------------------------

    async def generate(self, page: PageRequest) -> Generation:
        return await self._loop.call(self._generate(page))

    async def warmup(self) -> None:
        """One tiny inference before the first job: CUDA kernels and the allocator initialise at
        start (billed once) instead of inside the first user's request."""
        page = PageRequest(image=Image.new("RGB", (256, 256), "white"), prompt=WARMUP_PROMPT, view=WARMUP_VIEW,
                           max_tokens=2, guard=GuardConfig(0, 1), job_id="warmup")
        await self._loop.call(self._generate(page, check_view=False))

    def stats(self) -> EngineStats:
        return self._loop.run(self._stats())

    async def close(self) -> None:
        if self._loop.closed:
            return
        self._loop.run(self._stop_batcher())
        self._loop.close()
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)
        self._model_thread.shutdown(wait=True)

    # -- on the engine loop -------------------------------------------------------------------

    async def _start_batcher(self) -> asyncio.Task:
        self._arrived = asyncio.Event()
        return asyncio.get_running_loop().create_task(self._batch_forever())

    async def _stop_batcher(self) -> None:
        self._batcher.cancel()
        for item in self._queue:
            item.future.cancel()
        self._queue.clear()

    async def _stats(self) -> EngineStats:
        by_job: dict[str, int] = dict(self._preprocessing)
        for item in self._queue:
            by_job[item.page.job_id] = by_job.get(item.page.job_id, 0) + 1
        return EngineStats(queued=sum(by_job.values()), running=len(self._running),
                           queued_by_job={k: v for k, v in by_job.items() if v})

    async def _generate(self, page: PageRequest, check_view: bool = True) -> Generation:
        if self._dead is not None:
            raise self._dead
        if check_view and page.view not in self.views:
            raise ModeUnavailable(f"this engine serves modes {', '.join(self.info.modes)}", field="mode")
        loop = asyncio.get_running_loop()
        job = page.job_id
        self._preprocessing[job] = self._preprocessing.get(job, 0) + 1
        try:
            tensors, preprocess_s = await loop.run_in_executor(self._preprocess_pool, self._prepare, page)
        finally:
            self._preprocessing[job] -= 1
            if not self._preprocessing[job]:
                del self._preprocessing[job]
        item = _Queued(page=page, tensors=tensors, preprocess_s=preprocess_s, future=loop.create_future())
        self._queue.append(item)
        self._arrived.set()
        try:
            return await item.future
        finally:
            # A cancelled job (RunPod cancel or timeout cancels the handler's task) leaves the queue
            # at once; a page already inside `generate` finishes and its result is dropped.
            if item in self._queue:
                self._queue.remove(item)

    async def _batch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        wait_s = self.config.batch_wait_ms / 1000
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            key = self._queue[0].page.batch_key()
            fill_by = self._queue[0].enqueued + wait_s
            # Wait for a fuller batch only while pages are on their way (in the processor): with
            # nothing coming, waiting would only add latency to a lone page.
            while (self._count(key) < self.config.batch_size and self._preprocessing
                   and time.perf_counter() < fill_by):
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), timeout=max(0.0, fill_by - time.perf_counter()))
                except asyncio.TimeoutError:
                    break
            batch = [item for item in self._queue if item.page.batch_key() == key][:self.config.batch_size]
            if not batch:  # the head was cancelled while the batch was filling
                continue
            for item in batch:
                self._queue.remove(item)
            self._running = batch
            started = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self._model_thread, self._run_batch, batch, started)
            except Exception as exc:  # noqa: BLE001 - an unexpected failure fails this batch, never the batcher
                log.exception("a batch of %d pages failed unexpectedly", len(batch))
                outcomes = [_BatchOutcome(error=exc) for _ in batch]
            finally:
                self._running = []
            for item, outcome in zip(batch, outcomes):
                if item.future.done():  # its job was cancelled meanwhile
                    continue
                if outcome.error is not None:
                    item.future.set_exception(outcome.error)
                else:
                    item.future.set_result(outcome.generation)

    def _count(self, key: tuple) -> int:
        return sum(1 for item in self._queue if item.page.batch_key() == key)

    # -- on the preprocessing threads ---------------------------------------------------------

    def _prepare(self, page: PageRequest) -> tuple[dict, float]:
        started = time.perf_counter()
        try:
            inputs = self._processors[page.view](images=[page.image], text=[page.prompt], return_tensors="pt",
                                                 **processor_kwargs(page.view))
        except (ValueError, TypeError, RuntimeError, IndexError) as exc:
            raise ModelError(f"preprocessing failed: {exc}") from exc
        return dict(inputs), time.perf_counter() - started

    # -- on the model thread ------------------------------------------------------------------

    def _run_batch(self, batch: list[_Queued], started: float) -> list[_BatchOutcome]:
        """The whole batch in one call; on a model error each page alone, so the error stays with
        the page that caused it; on out-of-memory the batch in halves."""
        try:
            return [_BatchOutcome(generation=g) for g in self._generate_split(batch, started)]
        except EngineDead as exc:
            self._dead = exc
            return [_BatchOutcome(error=exc) for _ in batch]
        except ModelError as exc:
            if len(batch) == 1:
                return [_BatchOutcome(error=exc)]
            log.warning("a batch of %d pages failed (%s); running its pages one by one", len(batch), exc.describe())
        outcomes = []
        for item in batch:
            try:
                outcomes.append(_BatchOutcome(generation=self._generate_split([item], time.perf_counter())[0]))
            except EngineDead as exc:
                self._dead = exc
                outcomes.append(_BatchOutcome(error=exc))
            except ModelError as exc:
                outcomes.append(_BatchOutcome(error=exc))
        return outcomes

    def _generate_split(self, batch: list[_Queued], started: float) -> list[Generation]:
        try:
            return self._generate_batch(batch, started)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(batch) == 1:
                raise OutOfMemory("the GPU ran out of memory on a single page; use a smaller mode") from None
            half = len(batch) // 2
            log.warning("CUDA out of memory on a batch of %d pages; retrying as %d + %d", len(batch), half,
                        len(batch) - half)
            return self._generate_split(batch[:half], started) + self._generate_split(batch[half:], started)

    def _collate(self, batch: list[_Queued]) -> dict:
        """One processor output per page -> one batch: input ids left-padded, global views stacked,
        every page's tiles concatenated in page order with their per-page counts."""
        width = max(item.tensors["input_ids"].shape[1] for item in batch)
        ids, masks = [], []
        for item in batch:
            row, mask = item.tensors["input_ids"], item.tensors["attention_mask"]
            pad = width - row.shape[1]
            ids.append(torch.cat([torch.full((1, pad), self.pad_id, dtype=row.dtype), row], dim=1))
            masks.append(torch.cat([torch.zeros((1, pad), dtype=mask.dtype), mask], dim=1))
        inputs = {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks),
                  "pixel_values": torch.cat([item.tensors["pixel_values"] for item in batch]),
                  "num_local_patches": torch.cat([torch.as_tensor(item.tensors["num_local_patches"]).reshape(-1)
                                                  for item in batch])}
        tiles = [item.tensors["pixel_values_local"] for item in batch
                 if item.tensors.get("pixel_values_local") is not None and len(item.tensors["pixel_values_local"])]
        if tiles:
            inputs["pixel_values_local"] = torch.cat(tiles)
        return inputs

    @torch.inference_mode()
    def _generate_batch(self, batch: list[_Queued], started: float) -> list[Generation]:
        first = batch[0].page
        inputs = {k: v.to(self.device) for k, v in self._collate(batch).items()}
        for name in ("pixel_values", "pixel_values_local"):
            if name in inputs:
                inputs[name] = inputs[name].to(self.dtype)
        input_ids = inputs["input_ids"]
        prompt_len = input_ids.shape[1]
        max_new = min(first.max_tokens, self.info.context_tokens - prompt_len)
        if max_new < 1:
            raise ModelError(f"the prompt takes {prompt_len} of the {self.info.context_tokens}-token context; "
                             "use a smaller mode or a shorter prompt")
        processors = LogitsProcessorList()
        if first.guard.ngram_size:
            processors.append(WindowedNoRepeatNGram(first.guard.ngram_size, first.guard.window, self.exempt_ids))
        model_started = time.perf_counter()
        try:
            output = self.model.generate(**inputs, max_new_tokens=max_new, do_sample=False, num_beams=1,
                                         logits_processor=processors, eos_token_id=self.eos_id,
                                         pad_token_id=self.pad_id, return_dict_in_generate=True,
                                         output_logits=first.logprobs > 0)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        except torch.cuda.OutOfMemoryError:
            raise
        except torch.AcceleratorError as exc:
            # A device-side fault (illegal address, ECC error) poisons the CUDA context: every later
            # call fails too, so the worker must be replaced, not retried.
            raise EngineDead(f"the GPU failed ({type(exc).__name__}); the worker must be replaced") from exc
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ModelError(f"generation failed: {exc}") from exc
        finished = time.perf_counter()

        sequences = output.sequences
        new_tokens = sequences[:, prompt_len:].tolist()
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        vision_tokens = (input_ids == self.image_token_id).sum(dim=1).tolist()
        tiles = [int(n) for n in inputs["num_local_patches"].tolist()]
        top = self._top_logprobs(output.logits, first.logprobs) if first.logprobs else None
        jobs = len({item.page.job_id for item in batch})
        results = []
        for row, ids in enumerate(new_tokens):
            stop = ids.index(self.eos_id) if self.eos_id in ids else None
            kept = ids if stop is None else ids[:stop]
            results.append(Generation(
                raw_text=self.processor.tokenizer.decode(kept, skip_special_tokens=False),
                token_ids=tuple(kept),
                finish_reason="length" if stop is None else "stop",
                prompt_tokens=int(prompt_tokens[row]),
                vision_tokens=int(vision_tokens[row]),
                completion_tokens=len(kept),
                tiles=tiles[row],
                max_tokens=max_new,
                batch_size=len(batch),
                batch_jobs=jobs,
                queue_s=round(max(0.0, started - batch[row].enqueued), 4),
                preprocess_s=round(batch[row].preprocess_s, 4),
                generate_s=round(finished - model_started, 4),
                top_logprobs=top[row][:len(kept)] if top is not None else None,
            ))
        return results

    @staticmethod
    def _top_logprobs(logits: tuple, k: int) -> list[tuple]:
        """Per row, per generated token: the k best (token id, log-probability) of the raw logits."""
        steps = [torch.log_softmax(step.float(), dim=-1).topk(k, dim=-1) for step in logits]
        rows = steps[0].values.shape[0]
        return [tuple(tuple((int(i), float(v)) for i, v in zip(s.indices[r].tolist(), s.values[r].tolist()))
                      for s in steps) for r in range(rows)]
