"""The engine boundary, in plain Python: what every engine takes and gives, and nothing that imports
torch, transformers or vLLM (the pipeline, handlers and servers only ever see this module).

In: one `PageRequest` per page (a decoded image, the prompt, the view, limits, the guard). Out: one
`Generation` per page, awaited. An engine schedules the pages of every in-flight job itself (the
transformers engine in batches, vLLM continuously); callers never form batches. Cancelling the
awaiting task takes the page out of the engine's queue (or aborts it in vLLM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from PIL import Image

ENGINE_NAMES = ("auto", "transformers", "vllm")
# Table cells legitimately repeat; the official pipelines exempt these from the n-gram rule.
GUARD_EXEMPT_TOKENS = ("<td>", "</td>")
WARMUP_PROMPT = "<image>\nFree OCR."


def guard_exempt_ids(tokenizer) -> list[int]:
    """The ids of GUARD_EXEMPT_TOKENS that the tokenizer really has (not its unknown token)."""
    unknown = getattr(tokenizer, "unk_token_id", None)
    ids = (tokenizer.convert_tokens_to_ids(token) for token in GUARD_EXEMPT_TOKENS)
    return [i for i in ids if i is not None and i != unknown]


@dataclass(frozen=True)
class ViewConfig:
    """How one page is shown to the vision encoder: a padded square global view and, when `crop`
    is on, `min_tiles`..`max_tiles` local tiles of `tile_size` (none when the page fits one tile)."""

    view_size: int
    tile_size: int | None
    crop: bool
    min_tiles: int
    max_tiles: int


@dataclass(frozen=True)
class GuardConfig:
    """Windowed no-repeat n-gram rule (DeepSeek-OCR's official guard); ngram_size 0 turns it off."""

    ngram_size: int
    window: int


@dataclass(frozen=True, eq=False)
class PageRequest:
    image: Image.Image
    prompt: str
    view: ViewConfig
    max_tokens: int
    guard: GuardConfig
    job_id: str = ""  # which job the page belongs to: batch statistics, logs and cancellation
    logprobs: int = 0  # top-k log-probabilities per generated token (cross-engine checks); 0 = none

    def batch_key(self) -> tuple:
        """Pages sharing this key can share one static batch: the global views must stack into one
        tensor (same view) and generation options are per call (same limit and guard)."""
        return (self.view, self.max_tokens, self.guard, self.logprobs)


@dataclass(frozen=True)
class Generation:
    raw_text: str  # the decoded completion, grounding tags kept
    token_ids: tuple[int, ...]  # completion tokens before end-of-sequence
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    vision_tokens: int
    completion_tokens: int
    tiles: int
    max_tokens: int  # after clamping to the context the prompt leaves
    batch_size: int  # pages that shared the engine step (vLLM: running requests when it was scheduled)
    batch_jobs: int  # distinct jobs among them
    queue_s: float  # waiting for a batch slot
    preprocess_s: float  # processor time of this page
    generate_s: float  # the batch's model time (shared) or this request's time in vLLM
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...] | None = None  # per token: (id, logprob)


@dataclass(frozen=True)
class EngineConfig:
    """What an engine needs from the settings, and nothing else (parsed once by `Settings.from_env`)."""

    model_path: Path
    family: str  # "deepseek-ocr" or "deepseek-ocr-2", read from the checkpoint's config.json
    device: Literal["auto", "cuda", "cpu"] = "auto"
    context_tokens: int = 8192
    # transformers engine: static batches formed across jobs
    batch_size: int = 8
    batch_wait_ms: int = 10
    preprocess_workers: int = 0  # 0 = one per CPU core
    # vLLM engine
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 64
    max_model_len: int = 8192
    enforce_eager: bool = False
    cpu_kv_cache_gib: int = 4


@dataclass(frozen=True)
class EngineInfo:
    engine: Literal["transformers", "vllm"]
    family: str  # "deepseek-ocr" or "deepseek-ocr-2"
    device: str
    dtype: str
    modes: tuple[str, ...]  # the size modes this engine serves for this family
    context_tokens: int


@dataclass
class EngineStats:
    """What the engine holds now: for tests and the health route, never for scheduling decisions."""

    queued: int = 0  # pages waiting for a batch or a sequence slot
    running: int = 0  # pages inside the model now
    queued_by_job: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    info: EngineInfo

    async def generate(self, page: PageRequest) -> Generation:
        """One page's generation. Raises `ModelError` (or a subclass) for this page only; an
        `EngineDead` when the engine can take no more work. Cancellation dequeues the page."""

    async def warmup(self) -> None:
        """One tiny inference before the first job, so kernels and caches start at boot."""

    def stats(self) -> EngineStats:
        """A snapshot of the queue."""

    async def close(self) -> None:
        """Stop the engine and release the device."""
