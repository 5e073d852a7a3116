"""What crosses the engine boundary, in plain Python so the rest of the worker never imports torch.

`PageInput` goes in (one decoded page and how to run it); `Generation` comes out (the raw model text
and its accounting). Both are frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PIL import Image

from .modes import ViewConfig
from .schema import GuardConfig


@dataclass(frozen=True, eq=False)
class PageInput:
    image: Image.Image
    prompt: str
    view: ViewConfig
    max_tokens: int
    guard: GuardConfig

    def batch_key(self) -> tuple:
        """Pages sharing this key can go through one `generate` call: the global views must stack
        into one tensor (same view size) and generation options are per call."""
        return (self.view, self.max_tokens, self.guard)


@dataclass(frozen=True)
class Generation:
    raw_text: str
    token_ids: tuple[int, ...]  # completion tokens before EOS
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    vision_tokens: int
    completion_tokens: int
    tiles: int
    max_tokens: int  # after clamping to the context left by the prompt
    batch_size: int  # pages that shared the generate call
    preprocess_s: float  # shared by the batch
    generate_s: float  # shared by the batch
