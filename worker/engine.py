"""The model: transformers' native DeepSeek-OCR-2 (no remote code), loaded once, run in batches.

The only module that imports torch and transformers. In: a sequence of `PageInput`. Out: one
`Generation` per page, in the same order. bf16 on CUDA, fp32 on CPU, SDPA attention (the SAM
encoder's relative position bias rules out flash-attention), greedy decoding.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LogitsProcessor, LogitsProcessorList

from .errors import ConfigError, ModelError, OutOfMemory
from .modes import MODES
from .pages import Generation, PageInput
from .schema import GuardConfig
from .settings import MODEL_CONTEXT_TOKENS, Settings

log = logging.getLogger(__name__)

# Table cells legitimately repeat; the official pipelines exempt these from the n-gram rule.
GUARD_EXEMPT_TOKENS = ("<td>", "</td>")
WARMUP_PROMPT = "<image>\nFree OCR."


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


@dataclass(frozen=True)
class ModelInfo:
    device: str
    dtype: str


class Engine:
    def __init__(self, model, processor, device: torch.device, dtype: torch.dtype, context_tokens: int):
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.context_tokens = context_tokens
        tokenizer = processor.tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.image_token_id = model.config.image_token_id
        self.exempt_ids = [i for i in (tokenizer.convert_tokens_to_ids(t) for t in GUARD_EXEMPT_TOKENS)
                           if i is not None and i != tokenizer.unk_token_id]

    @classmethod
    def load(cls, settings: Settings) -> "Engine":
        """Load from MODEL_PATH, offline. Raises ConfigError with the path and the way to get weights."""
        path = Path(settings.model_path)
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"no model at MODEL_PATH={path} (config.json missing). Bake the weights into the image "
                "with builder/download_model.py (see RUNPOD_DEPLOYMENT.md) or point MODEL_PATH at a "
                "directory holding a DeepSeek-OCR-2 checkpoint; the worker never downloads at run time.")
        if settings.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("DEVICE=cuda but no CUDA device is visible")
        use_cuda = settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available())
        device = torch.device("cuda" if use_cuda else "cpu")
        dtype = torch.bfloat16 if use_cuda else torch.float32
        try:
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(
                path, local_files_only=True, dtype=dtype, attn_implementation="sdpa").to(device).eval()
        except Exception as exc:  # noqa: BLE001 - loaders raise many types (SafetensorError, OSError, ...)
            raise ConfigError(f"the model at MODEL_PATH={path} could not be loaded: "
                              f"{type(exc).__name__}: {exc}") from exc
        processor.tokenizer.padding_side = "left"  # batched decoder-only generation needs left padding
        context = min(getattr(model.config.text_config, "max_position_embeddings", MODEL_CONTEXT_TOKENS),
                      MODEL_CONTEXT_TOKENS)
        return cls(model, processor, device, dtype, context)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(device=str(self.device), dtype=str(self.dtype).removeprefix("torch."))

    def warmup(self) -> Generation:
        """One tiny inference before the first job: CUDA kernels and allocator are initialised at
        start (billed once) instead of inside the first user's request."""
        page = PageInput(image=Image.new("RGB", (256, 256), "white"), prompt=WARMUP_PROMPT,
                         view=MODES["base"].view, max_tokens=2, guard=GuardConfig(0, 1))
        return self.generate([page])[0]

    def generate(self, pages: Sequence[PageInput]) -> list[Generation]:
        """Run pages in as few `generate` calls as their batch keys allow; results in input order."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, page in enumerate(pages):
            groups[page.batch_key()].append(index)
        results: list[Generation | None] = [None] * len(pages)
        for indices in groups.values():
            for index, generation in zip(indices, self._generate_group([pages[i] for i in indices])):
                results[index] = generation
        return [r for r in results if r is not None]

    def _generate_group(self, pages: list[PageInput]) -> list[Generation]:
        try:
            return self._generate_same_key(pages)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(pages) == 1:
                raise OutOfMemory("the GPU ran out of memory on a single page; use a smaller mode") from None
            half = len(pages) // 2
            log.warning("CUDA out of memory on a batch of %d pages; retrying as %d + %d", len(pages), half,
                        len(pages) - half)
            return self._generate_group(pages[:half]) + self._generate_group(pages[half:])

    @torch.inference_mode()
    def _generate_same_key(self, pages: list[PageInput]) -> list[Generation]:
        first = pages[0]
        started = time.perf_counter()
        try:
            inputs = self.processor(images=[p.image for p in pages], text=[p.prompt for p in pages],
                                    padding=True, return_tensors="pt", **first.view.processor_kwargs())
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ModelError(f"preprocessing failed: {exc}") from exc
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        if "pixel_values_local" in inputs:
            inputs["pixel_values_local"] = inputs["pixel_values_local"].to(self.dtype)
        preprocessed = time.perf_counter()

        input_ids = inputs["input_ids"]
        prompt_len = input_ids.shape[1]
        max_new = min(first.max_tokens, self.context_tokens - prompt_len)
        if max_new < 1:
            raise ModelError(f"the prompt takes {prompt_len} of the {self.context_tokens}-token context")
        processors = LogitsProcessorList()
        if first.guard.ngram_size:
            processors.append(WindowedNoRepeatNGram(first.guard.ngram_size, first.guard.window, self.exempt_ids))
        try:
            output = self.model.generate(**inputs, max_new_tokens=max_new, do_sample=False, num_beams=1,
                                         logits_processor=processors, eos_token_id=self.eos_id,
                                         pad_token_id=self.pad_id)
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ModelError(f"generation failed: {exc}") from exc
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        finished = time.perf_counter()

        new_tokens = output[:, prompt_len:].tolist()
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        vision_tokens = (input_ids == self.image_token_id).sum(dim=1).tolist()
        tiles = [int(n) for n in inputs["num_local_patches"].tolist()]
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
                batch_size=len(pages),
                preprocess_s=round(preprocessed - started, 4),
                generate_s=round(finished - preprocessed, 4),
            ))
        return results
