"""RunPod's OpenAI route: `https://api.runpod.ai/v2/<endpoint>/openai/v1/...` reaches the worker as a
job whose input is `{"openai_route": "/v1/chat/completions", "openai_input": {...}}` (`/v1/models`
comes without `openai_input`).

In: the service, such a job input, the job id. Out, as RunPod's worker-vllm answers these jobs:
- non-streaming (`handle_openai_job`): the `chat.completion` dict, or the models list;
- streaming (`stream_openai_job`, for a generator handler): strings of server-sent events, each one
  or more whole `data: {...}\n\n` events, the last ending with `data: [DONE]` (worker-vllm yields its
  raw OpenAI SSE text the same way, RAW_OPENAI_OUTPUT=1 being its default).
A failed request is a FAILED job whose `error` string is OpenAI's error object as JSON (RunPod keeps
only that string; its `code` is the worker's stable code). Once a stream is open, an error is an
SSE error event instead, which OpenAI's clients raise as `APIError`.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, AsyncIterator

from ..errors import InvalidInput
from .openai_chat import ChatJob, models_list, openai_error, parse_chat_request, sse
from .openai_jobs import complete_chat, open_chat_stream

if TYPE_CHECKING:
    from ..service import OcrService

CHAT_ROUTE = "/v1/chat/completions"
MODELS_ROUTE = "/v1/models"
ROUTE_KEY = "openai_route"
INPUT_KEY = "openai_input"


def is_openai_job(job_input: Any) -> bool:
    """Whether a RunPod job came through the OpenAI route (the handler's switch)."""
    return isinstance(job_input, dict) and ROUTE_KEY in job_input


async def handle_openai_job(service: "OcrService", job_input: dict[str, Any], job_id: str) -> dict[str, Any] | str:
    """One OpenAI-route job, answered whole; never raises. `stream: true` from a handler that is not a
    generator gets every event at once, as one SSE string (RunPod decides at start whether a handler
    streams, so such a handler cannot hand out the pages one by one)."""
    chat: ChatJob | None = None
    try:
        route, openai_input = _read_route(job_input)
        if route == MODELS_ROUTE:
            return models_list(service.model_name, int(time.time()))
        chat = parse_chat_request(openai_input, max_tokens_cap=service.settings.max_tokens)
        if chat.stream:
            return "".join([event async for event in _stream_events(service, chat, job_id)])
        return await complete_chat(service, chat, job_id)
    except Exception as exc:  # the handler must never crash the worker loop
        return _failed(service, exc, job_id, chat)


async def stream_openai_job(service: "OcrService", job_input: dict[str, Any],
                            job_id: str) -> AsyncIterator[dict[str, Any] | str]:
    """One OpenAI-route job for a generator handler: SSE strings as the pages finish when the request
    asks to stream, else the one item `handle_openai_job` returns."""
    try:
        route, openai_input = _read_route(job_input)
        chat = parse_chat_request(openai_input, max_tokens_cap=service.settings.max_tokens) \
            if route == CHAT_ROUTE else None
    except Exception as exc:  # a bad route or body: the job's one item is the failure
        yield _failed(service, exc, job_id, None)
        return
    if chat is None or not chat.stream:
        yield await handle_openai_job(service, job_input, job_id)
        return
    async for event in _stream_events(service, chat, job_id):
        yield event


async def _stream_events(service: "OcrService", chat: ChatJob, job_id: str) -> AsyncIterator[str]:
    try:
        events = await open_chat_stream(service, chat, job_id)
    except Exception as exc:  # before the first page: still an event, the caller asked for a stream
        service.failure(exc, job_id)
        yield sse(openai_error(exc, chat.params))
        return
    async for event in events:
        yield event


def _read_route(job_input: dict[str, Any]) -> tuple[str, Any]:
    unknown = set(job_input) - {ROUTE_KEY, INPUT_KEY}
    if unknown:
        raise InvalidInput(f"unknown field next to {ROUTE_KEY!r}", field=sorted(unknown)[0])
    route = job_input.get(ROUTE_KEY)
    if route not in (CHAT_ROUTE, MODELS_ROUTE):
        raise InvalidInput(f"{str(route)!r} is not served; this worker answers {CHAT_ROUTE} and {MODELS_ROUTE}",
                           field=ROUTE_KEY)
    if route == CHAT_ROUTE and INPUT_KEY not in job_input:
        raise InvalidInput(f"{CHAT_ROUTE} needs the request body", field=INPUT_KEY)
    return route, job_input.get(INPUT_KEY)


def _failed(service: "OcrService", exc: Exception, job_id: str, chat: ChatJob | None) -> dict[str, Any]:
    """The service's failure dict (it logs, and keeps `refresh_worker` for a dead engine) with the
    `error` string replaced by OpenAI's error object as JSON."""
    output = service.failure(exc, job_id)
    output["error"] = json.dumps(openai_error(exc, chat.params if chat else None), ensure_ascii=False)
    return output
