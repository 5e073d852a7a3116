"""Prompts per task, as the official DeepSeek-OCR pipelines write them (plain text, no chat
template; the tokenizer prepends BOS).

In: a task name and its options. Out: the prompt string with exactly one `<image>`.
"""

from __future__ import annotations

IMAGE_TOKEN = "<image>"

TASKS = ("ocr", "markdown", "layout", "ocr_lines", "describe", "figure", "locate", "custom")
DEFAULT_TASK = "markdown"
# Tasks whose output is grounding-tagged and gets parsed into blocks or lines.
GROUNDED_TASKS = frozenset({"markdown", "layout", "ocr_lines", "locate"})
# Tasks whose clean output is returned under `markdown` rather than `text`.
MARKDOWN_TASKS = frozenset({"markdown", "layout"})

_PROMPTS = {
    "ocr": "<image>\nFree OCR.",
    "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
    "layout": "<image>\n<|grounding|>Convert the document to markdown.",
    "ocr_lines": "<image>\n<|grounding|>OCR this image.",
    "describe": "<image>\nDescribe this image in detail.",
    "figure": "<image>\nParse the figure.",
}


def build_prompt(task: str, *, query: str | None = None, prompt: str | None = None) -> str:
    """The model prompt for a validated request (the schema guarantees query/prompt presence)."""
    if task == "locate":
        return f"{IMAGE_TOKEN}\nLocate <|ref|>{query}<|/ref|> in the image."
    if task == "custom":
        return normalize_custom_prompt(prompt or "")
    return _PROMPTS[task]


def normalize_custom_prompt(prompt: str) -> str:
    """A custom prompt must hold `<image>` exactly once; one without it gets it prepended (the
    old FastAPI service's users sent prompts like "Extract all text")."""
    if IMAGE_TOKEN not in prompt:
        return f"{IMAGE_TOKEN}\n{prompt}"
    return prompt
