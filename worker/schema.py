"""Job input -> validated, fully resolved `OcrRequest`.

`parse_job_input` is the one pure function that reads a job's `input`: it returns a frozen
`OcrRequest` with every default applied from `Settings`, or raises `InvalidInput` naming the field.
Nothing here decodes files or touches the network; sources stay strings until `sources.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidInput, TooManyPages
from .modes import MODE_NAMES, ModeSpec, resolve_mode
from .prompts import DEFAULT_TASK, MARKDOWN_TASKS, TASKS, build_prompt
from .settings import Settings

_PAGE_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
MAX_QUERY_CHARS = 500
MAX_PROMPT_CHARS = 4000


class _JobInput(BaseModel):
    """The wire shape. `extra="forbid"`: a misspelt option must fail, not be silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    image: str | None = Field(default=None, min_length=1)
    images: list[str] | None = Field(default=None, min_length=1)
    pdf: str | None = Field(default=None, min_length=1)
    pages: str | None = None
    dpi: int | None = None
    pdf_password: str | None = None
    mode: Literal[MODE_NAMES] | None = None  # type: ignore[valid-type] - the names live in modes.py
    task: Literal[TASKS] | None = None  # type: ignore[valid-type] - the names live in prompts.py
    query: str | None = Field(default=None, min_length=1, max_length=MAX_QUERY_CHARS)
    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    format: Literal["text", "markdown"] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    include_figures: bool = False
    annotate: bool = False
    include_raw: bool = False
    ngram_size: int | None = Field(default=None, ge=0, le=1000)
    ngram_window: int | None = Field(default=None, ge=1, le=100_000)

    @field_validator("images")
    @classmethod
    def _non_empty_items(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for i, item in enumerate(value):
                if not item:
                    raise ValueError(f"item {i} is empty")
        return value


@dataclass(frozen=True)
class SourceRef:
    """One input file as sent: base64, a data URL or an http(s) URL. `field` names it in errors."""

    field: str
    value: str
    expect: Literal["image", "pdf"]

    @property
    def is_url(self) -> bool:
        return self.value[:8].lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class GuardConfig:
    """Windowed no-repeat n-gram rule; ngram_size 0 turns it off."""

    ngram_size: int
    window: int


@dataclass(frozen=True)
class OcrRequest:
    sources: tuple[SourceRef, ...]
    page_selection: tuple[int, ...] | None
    dpi: int
    pdf_password: str | None
    mode: ModeSpec
    task: str
    prompt: str
    query: str | None
    output_key: Literal["text", "markdown"]
    max_tokens: int
    include_figures: bool
    annotate: bool
    include_raw: bool
    guard: GuardConfig


def parse_job_input(raw: Any, settings: Settings) -> OcrRequest:
    """Validate a job's `input` and resolve every default. Raises `InvalidInput`."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"must be a JSON object, got {type(raw).__name__}", field="input")
    try:
        job = _JobInput.model_validate(raw)
    except ValidationError as exc:
        raise _to_invalid_input(exc) from None

    sources = _resolve_sources(job)
    task = _resolve_task(job)
    if task == "locate" and not job.query:
        raise InvalidInput("task 'locate' needs the phrase to find", field="query")
    if job.query is not None and task != "locate":
        raise InvalidInput("only used with task 'locate'", field="query")
    if task == "custom" and not job.prompt:
        raise InvalidInput("task 'custom' needs a prompt", field="prompt")
    if job.prompt is not None and task != "custom":
        raise InvalidInput("only used with task 'custom' (or alone, which implies it)", field="prompt")
    if job.prompt is not None and job.prompt.count("<image>") > 1:
        raise InvalidInput("must contain '<image>' at most once", field="prompt")

    is_pdf = job.pdf is not None
    for name in ("pages", "dpi", "pdf_password"):
        if getattr(job, name) is not None and not is_pdf:
            raise InvalidInput("only used with 'pdf'", field=name)
    dpi = settings.pdf_dpi if job.dpi is None else job.dpi
    if not 36 <= dpi <= settings.max_pdf_dpi:
        raise InvalidInput(f"must be between 36 and {settings.max_pdf_dpi}", field="dpi")
    if job.images is not None and len(job.images) > settings.max_pages:
        raise TooManyPages(f"{len(job.images)} images exceed the limit of {settings.max_pages} pages per job "
                           "(MAX_PAGES)", field="images")

    max_tokens = settings.max_tokens if job.max_tokens is None else job.max_tokens
    if max_tokens > settings.max_tokens:
        raise InvalidInput(f"must be at most {settings.max_tokens} (MAX_TOKENS)", field="max_tokens")

    ngram_size = settings.ngram_size if job.ngram_size is None else job.ngram_size
    window = settings.ngram_window if job.ngram_window is None else job.ngram_window
    if ngram_size and window < ngram_size:
        raise InvalidInput(f"must be at least ngram_size ({ngram_size})", field="ngram_window")

    output_key: Literal["text", "markdown"] = "markdown" if task in MARKDOWN_TASKS else "text"
    if job.format is not None:
        output_key = job.format

    return OcrRequest(
        sources=sources,
        page_selection=parse_page_selection(job.pages) if job.pages is not None else None,
        dpi=dpi,
        pdf_password=job.pdf_password,
        mode=resolve_mode(job.mode or settings.default_mode),
        task=task,
        prompt=build_prompt(task, query=job.query, prompt=job.prompt),
        query=job.query,
        output_key=output_key,
        max_tokens=max_tokens,
        include_figures=job.include_figures,
        annotate=job.annotate,
        include_raw=job.include_raw,
        guard=GuardConfig(ngram_size=ngram_size, window=window),
    )


def parse_page_selection(spec: str) -> tuple[int, ...]:
    """'1-3,7' -> (1, 2, 3, 7): 1-based, sorted, unique. Bounds against the PDF are checked later."""
    pages: set[int] = set()
    for part in spec.split(","):
        match = _PAGE_RANGE.match(part)
        if not match:
            raise InvalidInput(f"{part.strip()!r} is not a page or range like '1-3,7'", field="pages")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        if first < 1 or last < first:
            raise InvalidInput(f"{part.strip()!r} is not a valid range (pages start at 1)", field="pages")
        if last - first > 100_000:
            raise InvalidInput(f"{part.strip()!r} is too long a range", field="pages")
        pages.update(range(first, last + 1))
    return tuple(sorted(pages))


def _resolve_sources(job: _JobInput) -> tuple[SourceRef, ...]:
    given = [name for name in ("image", "images", "pdf") if getattr(job, name) is not None]
    if not given:
        raise InvalidInput("one of 'image', 'images' or 'pdf' is required", field="image")
    if len(given) > 1:
        raise InvalidInput(f"give only one of 'image', 'images', 'pdf' (got {', '.join(given)})", field=given[1])
    if job.image is not None:
        return (SourceRef("image", job.image, "image"),)
    if job.pdf is not None:
        return (SourceRef("pdf", job.pdf, "pdf"),)
    return tuple(SourceRef(f"images[{i}]", v, "image") for i, v in enumerate(job.images or ()))


def _resolve_task(job: _JobInput) -> str:
    """`task` wins; the old handler's bare `prompt` and `format` map onto tasks."""
    if job.task is not None:
        if job.format is not None and (job.format == "markdown") != (job.task in MARKDOWN_TASKS):
            raise InvalidInput(f"format {job.format!r} conflicts with task {job.task!r}", field="format")
        return job.task
    if job.prompt is not None:
        return "custom"
    if job.format is not None:
        return "ocr" if job.format == "text" else "markdown"
    return DEFAULT_TASK


def _to_invalid_input(exc: ValidationError) -> InvalidInput:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "input"
    if first["type"] == "extra_forbidden":
        return InvalidInput(
            "unknown field; allowed: " + ", ".join(_JobInput.model_fields), field=field
        )
    if first["type"] == "literal_error":
        return InvalidInput(first["msg"].replace("Input should be", "must be one of"), field=field)
    return InvalidInput(first["msg"], field=field)

