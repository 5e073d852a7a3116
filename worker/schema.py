"""Job input -> validated, fully resolved `OcrRequest`.

`parse_job_input` is the one pure function that reads a job's `input`: it returns a frozen
`OcrRequest` with every default applied from `Settings`, or raises `InvalidInput` naming the field.
Nothing here decodes files or touches the network; sources stay strings until `sources.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .engine.api import GuardConfig
from .errors import InvalidInput, ModeUnavailable, TooManyPages
from .families import MODE_NAMES, ModeSpec
from .fetch import classify_source, require_http_scheme
from .page_selection import PageSelection, parse_page_selection
from .settings import Settings
from .tasks import DEFAULT_TASK, TASK_NAMES, TASKS, TaskSpec, build_prompt

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
    mode: Literal[MODE_NAMES] | None = None  # type: ignore[valid-type] - the names live in families.py
    task: Literal[TASK_NAMES] | None = None  # type: ignore[valid-type] - the names live in tasks.py
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
        return classify_source(self.value) == "url"


@dataclass(frozen=True)
class OcrRequest:
    sources: tuple[SourceRef, ...]
    page_selection: PageSelection | None
    dpi: int
    pdf_password: str | None
    mode: ModeSpec
    task: TaskSpec
    prompt: str
    query: str | None
    output_key: Literal["text", "markdown"]
    max_tokens: int
    include_figures: bool
    annotate: bool
    include_raw: bool
    guard: GuardConfig


def parse_job_input(raw: Any, settings: Settings, modes: Mapping[str, ModeSpec]) -> OcrRequest:
    """Validate a job's `input` and resolve every default against the settings and the mode table of
    the engine serving it. Raises `InvalidInput` (or another `WorkerError`) naming the field."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"must be a JSON object, got {type(raw).__name__}", field="input")
    try:
        job = _JobInput.model_validate(raw)
    except ValidationError as exc:
        raise _to_invalid_input(exc) from None

    sources = _resolve_sources(job)
    for ref in sources:
        require_http_scheme(ref.value, field=ref.field)
    task = _resolve_task(job)
    if task == "locate" and not job.query:
        raise InvalidInput("task 'locate' needs the phrase to find", field="query")
    if job.query is not None and task != "locate":
        raise InvalidInput("only used with task 'locate'", field="query")
    if task == "custom" and not job.prompt:
        raise InvalidInput("task 'custom' needs a prompt", field="prompt")
    if job.prompt is not None and task != "custom":
        raise InvalidInput("only used with task 'custom' (or alone, which implies it)", field="prompt")

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

    spec = TASKS[task]
    output_key: Literal["text", "markdown"] = job.format or spec.output_key
    mode_name = job.mode or settings.default_mode
    if mode_name not in modes:
        raise ModeUnavailable(f"{mode_name!r} is not served by this worker's engine and model; it offers "
                              + ", ".join(repr(m) for m in modes), field="mode")

    return OcrRequest(
        sources=sources,
        page_selection=parse_page_selection(job.pages) if job.pages is not None else None,
        dpi=dpi,
        pdf_password=job.pdf_password,
        mode=modes[mode_name],
        task=spec,
        prompt=build_prompt(spec, query=job.query, prompt=job.prompt),
        query=job.query,
        output_key=output_key,
        max_tokens=max_tokens,
        include_figures=job.include_figures,
        annotate=job.annotate,
        include_raw=job.include_raw,
        guard=GuardConfig(ngram_size=ngram_size, window=window),
    )


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
        if job.format is not None and job.format != TASKS[job.task].output_key:
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

