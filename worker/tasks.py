"""The one task table: for each task, the prompt the model sees, whether its output is grounded, the
output key, and how the page result is shaped. A new task touches this table only.

Prompts are the official DeepSeek-OCR pipelines' (plain text, no chat template; the tokenizer
prepends BOS). In: a task name and the caller's query/prompt. Out: a `TaskSpec` and the prompt string
with exactly one `<image>`, or `InvalidInput` when user text tries to smuggle in special tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .errors import InvalidInput

IMAGE_TOKEN = "<image>"
GROUNDING_TOKEN = "<|grounding|>"
# The model's control tokens: `<|ref|>`, `<|/det|>`, `<|grounding|>`, ... and the DeepSeek tokenizer's
# full-width ones (`<｜end▁of▁sentence｜>`, BOS, pad). In user text they would end the prompt early, fake
# a grounding reference or a second image (whose placeholder count the processor then gets wrong).
_CONTROL_TOKEN = re.compile(r"<\|[^|<>]{1,40}\|>|<｜[^｜<>]{1,40}｜>")

Shape = Literal["text", "markdown", "layout", "lines", "matches"]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    prompt: str  # `{query}` is filled for locate; custom prompts come from the caller
    grounded: bool  # output carries <|ref|>/<|det|> tags to parse
    output_key: Literal["text", "markdown"]
    shape: Shape  # which structured fields the page result gets


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("ocr", "<image>\nFree OCR.", False, "text", "text"),
    TaskSpec("markdown", "<image>\n<|grounding|>Convert the document to markdown.", True, "markdown", "markdown"),
    TaskSpec("layout", "<image>\n<|grounding|>Convert the document to markdown.", True, "markdown", "layout"),
    TaskSpec("ocr_lines", "<image>\n<|grounding|>OCR this image.", True, "text", "lines"),
    TaskSpec("describe", "<image>\nDescribe this image in detail.", False, "text", "text"),
    TaskSpec("figure", "<image>\nParse the figure.", False, "text", "text"),
    TaskSpec("locate", "<image>\nLocate <|ref|>{query}<|/ref|> in the image.", True, "text", "matches"),
    TaskSpec("custom", "", False, "text", "text"),
)}
TASK_NAMES = tuple(TASKS)
DEFAULT_TASK = "markdown"


def build_prompt(task: TaskSpec, *, query: str | None = None, prompt: str | None = None) -> str:
    """The model prompt for a validated request (the schema guarantees query/prompt presence)."""
    if task.name == "locate":
        check_user_text(query or "", field="query", allowed=())
        return task.prompt.format(query=query)
    if task.name == "custom":
        return normalize_custom_prompt(prompt or "")
    return task.prompt


def normalize_custom_prompt(prompt: str) -> str:
    """A custom prompt holds `<image>` exactly once; one without it gets it prepended (the old
    FastAPI service's users sent prompts like "Extract all text"). `<|grounding|>` is allowed: it is
    how the official prompts ask for boxes, and the OpenAI-compatible server's users send it."""
    if prompt.count(IMAGE_TOKEN) > 1:
        raise InvalidInput("must contain '<image>' at most once", field="prompt")
    check_user_text(prompt.replace(IMAGE_TOKEN, "", 1), field="prompt", allowed=(GROUNDING_TOKEN,))
    return prompt if IMAGE_TOKEN in prompt else f"{IMAGE_TOKEN}\n{prompt}"


def check_user_text(text: str, *, field: str, allowed: tuple[str, ...]) -> None:
    """Refuse the model's control tokens in caller text, except those in `allowed`."""
    if IMAGE_TOKEN in text:
        raise InvalidInput("must not contain '<image>' here", field=field)
    for match in _CONTROL_TOKEN.finditer(text):
        if match.group(0) not in allowed:
            raise InvalidInput(f"must not contain the model's control token {match.group(0)!r}", field=field)

