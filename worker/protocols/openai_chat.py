"""OpenAI chat completions <-> the worker's job input and results (pure mapping, no I/O).

In: a `/v1/chat/completions` request body. Out: a `ChatJob` (the worker's job input plus the stream
options), or `InvalidInput` naming the OpenAI parameter at fault. Back out: a `chat.completion`
object from a `DocumentResult`, `chat.completion.chunk` objects from pages as they finish, the
`/v1/models` list, and OpenAI's error object carrying the worker's stable code.

The request is read as the DeepSeek-OCR-2 OpenAI-compatible server (the seed) reads it: the images
are the `image_url` parts (data URLs or http(s) URLs; several images are several pages, a PDF data
URL is a document) and the text picks the prompt: `Free OCR.` is task `ocr`, `<|grounding|>Convert
the document to markdown.` is task `markdown`, any other text a custom prompt. The content is the
worker's clean text or markdown (grounding tags removed, pages joined with the page separator).

Only the last user message is read: chat clients resend the history, and an OCR request has one
question. Decoding is greedy (the repetition guard needs it), so sampling parameters are accepted
and have no effect; parameters that would change the answer's shape are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import InvalidInput, UrlNotAllowed, error_detail
from ..grounding import PAGE_SEPARATOR
from ..tasks import DEFAULT_TASK, GROUNDING_TOKEN, IMAGE_TOKEN
from .http_status import SERVER_ERROR, http_status

if TYPE_CHECKING:
    from ..results import DocumentResult, PageResult, Usage

# The seed server's two documented prompts (its README "Prompts" table), without the `<image>\n`
# it prepends itself.
FREE_OCR_TEXT = "Free OCR."
MARKDOWN_TEXT = f"{GROUNDING_TOKEN}Convert the document to markdown."
_TASK_BY_TEXT = {FREE_OCR_TEXT: "ocr", MARKDOWN_TEXT: "markdown"}

# Parameters read, accepted without effect (greedy decoding), and the worker's own extension
# (`mode`, sent with the openai package as `extra_body={"mode": "base"}`).
_READ = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options", "n"})
_NO_EFFECT = frozenset({"temperature", "top_p", "seed", "user"})
_EXTENSIONS = frozenset({"mode"})
_IMAGE_DETAILS = frozenset({"auto", "low", "high"})
_PDF_BASE64_START = "JVBERi0"  # base64 of "%PDF-"

COMPLETION_OBJECT = "chat.completion"
CHUNK_OBJECT = "chat.completion.chunk"
SSE_DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class ChatJob:
    """A parsed chat request: the worker job input, how to answer, and which OpenAI parameter each
    worker field came from (so an error about `images[1]` names the part the caller sent)."""

    job_input: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    params: Mapping[str, str] = field(default_factory=dict)


def parse_chat_request(body: Any, *, max_tokens_cap: int) -> ChatJob:
    """Validate a chat-completions body and map it to a job input. `max_tokens_cap` is the worker's
    MAX_TOKENS: a larger request is lowered to it, as the seed server limits `max_tokens` to the
    context left (its README: "will be limited by remaining context after input")."""
    if not isinstance(body, dict):
        raise InvalidInput(f"the request body must be a JSON object, got {type(body).__name__}", field="body")
    for key in body:
        if key not in _READ | _NO_EFFECT | _EXTENSIONS:
            raise InvalidInput("unsupported parameter; this server reads model, messages, max_tokens, "
                               "max_completion_tokens, stream, stream_options and mode", field=str(key))
    if "model" in body and not isinstance(body["model"], str):
        raise InvalidInput("must be a string", field="model")
    if body.get("n") not in (None, 1):
        raise InvalidInput("only one choice per request is supported", field="n")
    for key in _NO_EFFECT - {"user"}:
        if body.get(key) is not None and not _is_number(body[key]):
            raise InvalidInput("must be a number", field=key)

    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise InvalidInput("must be true or false", field="stream")
    include_usage = _parse_stream_options(body.get("stream_options"), stream)

    params: dict[str, str] = {}
    job: dict[str, Any] = {}
    index, message = _last_user_message(body.get("messages"))
    texts, images = _read_content(index, message)
    _add_sources(job, params, images)
    _add_task(job, params, texts, where=f"messages[{index}].content")

    max_tokens = _parse_max_tokens(body, params)
    if max_tokens is not None:
        job["max_tokens"] = min(max_tokens, max_tokens_cap)
    if body.get("mode") is not None:
        job["mode"] = body["mode"]
    return ChatJob(job_input=job, stream=stream, include_usage=include_usage, params=params)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_stream_options(options: Any, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise InvalidInput("only allowed when stream is true", field="stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise InvalidInput("must be an object with at most 'include_usage'", field="stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise InvalidInput("must be true or false", field="stream_options.include_usage")
    return include_usage


def _last_user_message(messages: Any) -> tuple[int, dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("must be a non-empty list of messages", field="messages")
    last = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidInput("must be an object with a 'role'", field=f"messages[{i}]")
        if message["role"] == "user":
            last = i
    if last is None:
        raise InvalidInput("needs a user message with an image_url part", field="messages")
    return last, messages[last]


def _read_content(index: int, message: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The text parts and image URLs of one message, each with its parameter path."""
    where = f"messages[{index}].content"
    content = message.get("content")
    if isinstance(content, str):
        return [(content, where)], []
    if not isinstance(content, list):
        raise InvalidInput("must be a string or a list of content parts", field=where)
    texts, images = [], []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise InvalidInput("must be a content part object", field=at)
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise InvalidInput("must be a string", field=f"{at}.text")
            texts.append((part["text"], f"{at}.text"))
        elif kind == "image_url":
            images.append((_image_url(part.get("image_url"), f"{at}.image_url"), f"{at}.image_url.url"))
        else:
            raise InvalidInput(f"unsupported content part type {str(kind)!r}; use 'text' and 'image_url'",
                               field=f"{at}.type")
    return texts, images


def _image_url(value: Any, at: str) -> str:
    # vLLM also takes the bare string form {"image_url": "https://..."}; some clients send it.
    if isinstance(value, str):
        url = value
    elif isinstance(value, dict):
        url = value.get("url")
        detail = value.get("detail")
        if detail is not None and detail not in _IMAGE_DETAILS:
            raise InvalidInput("must be 'auto', 'low' or 'high' (the size comes from 'mode')", field=f"{at}.detail")
        if set(value) - {"url", "detail"}:
            raise InvalidInput("only 'url' and 'detail' are read", field=at)
    else:
        raise InvalidInput("must be an object with a 'url'", field=at)
    if not isinstance(url, str) or not url:
        raise InvalidInput("must be a non-empty string", field=f"{at}.url")
    scheme = url.split(":", 1)[0].lower() if ":" in url[:12] else ""
    if scheme not in ("data", "http", "https"):
        raise UrlNotAllowed("must be a data: URL or an http(s) URL", field=f"{at}.url")
    return url


def _add_sources(job: dict[str, Any], params: dict[str, str], images: list[tuple[str, str]]) -> None:
    if not images:
        raise InvalidInput("the last user message has no image_url part", field="messages")
    pdfs = [param for url, param in images if _is_pdf_data_url(url)]
    if pdfs and len(images) > 1:
        raise InvalidInput("a PDF must be the only file of a request", field=pdfs[0])
    if pdfs:
        job["pdf"] = images[0][0]
        params["pdf"] = images[0][1]
    elif len(images) == 1:
        job["image"] = images[0][0]
        params["image"] = images[0][1]
    else:
        job["images"] = [url for url, _ in images]
        params["images"] = "messages"
        params.update({f"images[{k}]": param for k, (_, param) in enumerate(images)})


def _is_pdf_data_url(url: str) -> bool:
    """The seed server reads a PDF from a data URL by its bytes; the base64 of `%PDF-` says the same
    without decoding. (A PDF behind an http URL is refused as `unsupported_content` by the fetcher.)"""
    if not url[:5].lower() == "data:":
        return False
    header, _, payload = url.partition(",")
    return "application/pdf" in header.lower() or payload.lstrip().startswith(_PDF_BASE64_START)


def _add_task(job: dict[str, Any], params: dict[str, str], texts: list[tuple[str, str]], where: str) -> None:
    text = "\n".join(t for t, _ in texts).strip()
    # The seed prepends `<image>\n` itself; callers who copied the official prompts send it too.
    bare = text[len(IMAGE_TOKEN):].strip() if text.startswith(IMAGE_TOKEN) else text
    if not bare:
        job["task"] = DEFAULT_TASK
    elif bare in _TASK_BY_TEXT:
        job["task"] = _TASK_BY_TEXT[bare]
    else:
        job["task"] = "custom"
        job["prompt"] = text
        params["prompt"] = texts[0][1] if len(texts) == 1 else where


def _parse_max_tokens(body: dict[str, Any], params: dict[str, str]) -> int | None:
    given = [k for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None]
    for key in given:
        value = body[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInput("must be an integer of at least 1", field=key)
    if len(given) == 2 and body["max_tokens"] != body["max_completion_tokens"]:
        raise InvalidInput("differs from max_tokens; send one of them", field="max_completion_tokens")
    if not given:
        return None
    params["max_tokens"] = given[0]
    return body[given[0]]


def completion_id(job_id: str) -> str:
    return f"chatcmpl-{job_id}"


def finish_reason(doc: "DocumentResult") -> str:
    """OpenAI's `length` when a page hit its token limit (a runaway the caller should know about)."""
    return "length" if doc.finish_reason == "length" else "stop"


def usage_object(usage: "Usage") -> dict[str, int]:
    """OpenAI's usage: the prompt counts the image placeholder tokens, as the model saw them."""
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def chat_completion(doc: "DocumentResult", *, job_id: str, created: int, model: str) -> dict[str, Any]:
    content = doc.markdown if doc.markdown is not None else (doc.text or "")
    return {
        "id": completion_id(job_id), "object": COMPLETION_OBJECT, "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": None, "finish_reason": finish_reason(doc)}],
        "usage": usage_object(doc.usage),
    }


@dataclass(frozen=True)
class ChunkMaker:
    """The `chat.completion.chunk` objects of one streamed answer: the role first, one content chunk
    per page (pages after the first start with the page separator, so the joined deltas equal the
    non-streamed content), the finish reason, then the usage when `include_usage` asked for it."""

    job_id: str
    created: int
    model: str
    include_usage: bool

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        chunk = {"id": completion_id(self.job_id), "object": CHUNK_OBJECT, "created": self.created,
                 "model": self.model,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self.include_usage:  # OpenAI: null on every chunk but the last when usage is asked for
            chunk["usage"] = None
        return chunk

    def role(self) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": ""}, None)

    def page(self, page: "PageResult", first: bool) -> dict[str, Any]:
        return self._chunk({"content": page.content if first else PAGE_SEPARATOR + page.content}, None)

    def finish(self, doc: "DocumentResult") -> dict[str, Any]:
        return self._chunk({}, finish_reason(doc))

    def usage(self, doc: "DocumentResult") -> dict[str, Any]:
        return {"id": completion_id(self.job_id), "object": CHUNK_OBJECT, "created": self.created,
                "model": self.model, "choices": [], "usage": usage_object(doc.usage)}


def models_list(model_name: str, created: int) -> dict[str, Any]:
    """`/v1/models` as the seed lists it (the model's hub id), with OpenAI's `created`/`owned_by`."""
    owner = model_name.split("/", 1)[0] if "/" in model_name else "deepseek-ai"
    return {"object": "list",
            "data": [{"id": model_name, "object": "model", "created": created, "owned_by": owner}]}


def openai_error(exc: BaseException, params: Mapping[str, str] | None = None) -> dict[str, Any]:
    """OpenAI's error object; `code` is the worker's stable code and `param` the request parameter
    at fault (the worker's field, translated back to where the caller put it)."""
    detail = error_detail(exc)
    param = _param_for(detail["field"], params or {})
    status = http_status(exc)
    message = f"{param}: {detail['message']}" if param else detail["message"]
    return {"error": {"message": message,
                      "type": "server_error" if status >= SERVER_ERROR else "invalid_request_error",
                      "param": param, "code": detail["code"]}}


def _param_for(field_name: str | None, params: Mapping[str, str]) -> str | None:
    if field_name is None:
        return None
    if field_name in params:
        return params[field_name]
    # A field below a mapped one (`images[1].something`) keeps its mapped root.
    root = field_name.split(".", 1)[0]
    return params.get(root, field_name)


def sse(obj: Mapping[str, Any]) -> str:
    """One server-sent event, as OpenAI streams them."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
