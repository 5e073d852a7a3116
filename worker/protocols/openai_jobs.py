"""A parsed chat request run on the process's `OcrService`: one `chat.completion`, or its server-sent
events. Used by the local server's `/v1/chat/completions` and by RunPod's OpenAI route.

In: the service, a `ChatJob`, a job id. Out: a completion dict, or an async iterator of SSE text.
Each item of the iterator is one or more whole events (`data: {...}\n\n`): the role with the first
page, then one item per page, then the finish reason, the usage when asked for, and `[DONE]`, so a
RunPod stream carries one item per page, as worker-vllm's raw OpenAI output carries SSE strings.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, AsyncIterator

from .openai_chat import SSE_DONE, ChatJob, ChunkMaker, chat_completion, openai_error, sse

if TYPE_CHECKING:
    from ..results import DocumentResult, PageResult
    from ..service import OcrService


async def complete_chat(service: "OcrService", chat: ChatJob, job_id: str) -> dict[str, Any]:
    """The whole answer at once. Raises the job's `WorkerError`."""
    doc = await service.run_job(chat.job_input, job_id)
    return chat_completion(doc, job_id=job_id, created=int(time.time()), model=service.model_name)


async def open_chat_stream(service: "OcrService", chat: ChatJob, job_id: str) -> AsyncIterator[str]:
    """Start the job and wait for its first good page, so a request that fails before any text (bad
    input, a single image that does not decode) raises here, where an HTTP server can still answer
    with a status; then hand back the events. A failure after that becomes an error event, which
    OpenAI's clients raise as `APIError` with the code."""
    items = service.stream_job(chat.job_input, job_id)
    ready: list[PageResult | DocumentResult] = []
    try:
        # Failed pages come back flagged, and whether they fail the job is only known at its end;
        # keep them (their empty text keeps the page separators) until a page with text arrives.
        while not ready or (ready[-1].type == "page" and ready[-1].failure is not None):
            ready.append(await anext(items))
    except BaseException:
        await items.aclose()
        raise
    maker = ChunkMaker(job_id=job_id, created=int(time.time()), model=service.model_name,
                       include_usage=chat.include_usage)
    return _events(service, chat, job_id, items, ready, maker)


async def _events(service: "OcrService", chat: ChatJob, job_id: str,
                  items: AsyncIterator["PageResult | DocumentResult"], ready: list["PageResult | DocumentResult"],
                  maker: ChunkMaker) -> AsyncIterator[str]:
    try:
        head, pages = sse(maker.role()), 0
        for item in ready[:-1]:
            head += sse(maker.page(item, first=pages == 0))
            pages += 1
        item = ready[-1]
        while item.type == "page":
            yield head + sse(maker.page(item, first=pages == 0))
            pages, head = pages + 1, ""
            item = await anext(items)
        tail = sse(maker.finish(item)) + (sse(maker.usage(item)) if chat.include_usage else "")
        yield head + tail + SSE_DONE
    except Exception as exc:  # the stream is open: the error travels as an event, then the stream ends
        service.failure(exc, job_id)  # logs it, with the traceback for internal errors
        yield sse(openai_error(exc, chat.params))
    finally:
        await items.aclose()
