"""The OpenAI-compatible door: the chat-request mapping as pure units, then the `openai` package
against `python -m worker.server` on the tiny checkpoint, and RunPod's OpenAI route through runpod's
local API. A random model's greedy text is a fingerprint of its input, so a chat answer equal to the
`/runsync` answer for the same page, task and mode proves the door feeds the same pipeline."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from make_tiny_checkpoint import MANIFEST
from tests.helpers import FileServer, LocalApi, WorkerServer, b64, encode, send_bytes, text_page
from worker.errors import InvalidImage, InvalidInput, UrlNotAllowed
from worker.grounding import PAGE_SEPARATOR
from worker.protocols.openai_chat import models_list, openai_error, parse_chat_request, sse
from worker.protocols.runpod_openai import is_openai_job

TINY_MODEL_NAME = MANIFEST["model"]

MARKDOWN_PROMPT = "<|grounding|>Convert the document to markdown."
process = pytest.mark.process


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


def user(*parts: dict) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


# --- the mapping, pure ------------------------------------------------------------------------------

def test_the_seed_prompts_select_their_tasks_and_other_text_is_a_custom_prompt():
    url = data_url(b"x")
    cases = {"Free OCR.": {"task": "ocr"}, MARKDOWN_PROMPT: {"task": "markdown"},
             "<image>\nFree OCR.": {"task": "ocr"}, f"<image>\n{MARKDOWN_PROMPT}": {"task": "markdown"},
             "Parse the figure.": {"task": "custom", "prompt": "Parse the figure."}}
    for text, expected in cases.items():
        job = parse_chat_request({"messages": user(image_part(url), text_part(text))}, max_tokens_cap=64)
        assert job.job_input == {"image": url, **expected}, text


def test_several_images_are_several_pages_and_a_pdf_data_url_is_a_document():
    urls = [data_url(b"a"), "https://example.org/b.png"]
    job = parse_chat_request({"messages": user(*map(image_part, urls), text_part("Free OCR."))}, max_tokens_cap=8)
    assert job.job_input["images"] == urls and job.params["images[1]"] == "messages[0].content[1].image_url.url"
    pdf = data_url(b"%PDF-1.4 ...", "application/octet-stream")  # sniffed from the bytes, not the type
    job = parse_chat_request({"messages": user(image_part(pdf))}, max_tokens_cap=8)
    assert job.job_input["pdf"] == pdf and job.job_input["task"] == "markdown"
    with pytest.raises(InvalidInput) as exc:
        parse_chat_request({"messages": user(image_part(pdf), image_part(urls[0]))}, max_tokens_cap=8)
    assert exc.value.field == "messages[0].content[0].image_url.url"


def test_max_tokens_is_lowered_to_the_cap_and_the_two_names_must_agree():
    body = {"messages": user(image_part(data_url(b"x"))), "max_tokens": 8192}
    assert parse_chat_request(body, max_tokens_cap=64).job_input["max_tokens"] == 64
    assert parse_chat_request({**body, "max_tokens": 10}, max_tokens_cap=64).job_input["max_tokens"] == 10
    newer = {"messages": body["messages"], "max_completion_tokens": 12}
    assert parse_chat_request(newer, max_tokens_cap=64).job_input["max_tokens"] == 12
    with pytest.raises(InvalidInput) as exc:
        parse_chat_request({**body, "max_completion_tokens": 12}, max_tokens_cap=64)
    assert exc.value.field == "max_completion_tokens"


def test_only_the_last_user_message_is_read():
    first, last = data_url(b"old"), data_url(b"new")
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                *user(image_part(first), text_part("Free OCR.")),
                {"role": "assistant", "content": "old text"},
                *user(image_part(last), text_part(MARKDOWN_PROMPT))]
    job = parse_chat_request({"model": "m", "messages": messages}, max_tokens_cap=8)
    assert job.job_input == {"image": last, "task": "markdown"}
    assert job.params["image"] == "messages[3].content[0].image_url.url"


@pytest.mark.parametrize("body, param, error", [
    ({"tools": []}, "tools", InvalidInput),
    ({"n": 2}, "n", InvalidInput),
    ({"stream_options": {"include_usage": True}}, "stream_options", InvalidInput),
    ({"messages": user({"type": "input_audio", "input_audio": {}})}, "messages[0].content[0].type", InvalidInput),
    ({"messages": user(image_part("file:///etc/passwd"))}, "messages[0].content[0].image_url.url", UrlNotAllowed),
    ({"messages": user(text_part("Free OCR."))}, "messages", InvalidInput),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "messages", InvalidInput),
    ({"messages": "hello"}, "messages", InvalidInput),
])
def test_unsupported_requests_name_the_parameter(body, param, error):
    body = {"messages": user(image_part(data_url(b"x"))), **body}
    with pytest.raises(error) as exc:
        parse_chat_request(body, max_tokens_cap=8)
    assert exc.value.field == param


def test_sampling_parameters_are_accepted_and_change_nothing():
    base = {"messages": user(image_part(data_url(b"x")), text_part("Free OCR."))}
    sampled = {**base, "temperature": 0.7, "top_p": 0.9, "seed": 3, "user": "u", "model": "m", "n": 1}
    assert parse_chat_request(sampled, max_tokens_cap=8) == parse_chat_request(base, max_tokens_cap=8)


def test_worker_errors_become_openai_error_objects_naming_the_part_the_caller_sent():
    job = parse_chat_request({"messages": user(image_part(data_url(b"a")), image_part(data_url(b"b")))},
                             max_tokens_cap=8)
    body = openai_error(InvalidImage("does not decode", field="images[1]"), job.params)
    assert body == {"error": {"message": "messages[0].content[1].image_url.url: does not decode",
                              "type": "invalid_request_error", "param": "messages[0].content[1].image_url.url",
                              "code": "invalid_image"}}
    internal = openai_error(RuntimeError("secret path /x"))["error"]
    assert internal["code"] == "internal_error" and internal["type"] == "server_error"
    assert "secret" not in internal["message"]


def test_sse_framing_and_models_list():
    assert sse({"a": "é"}) == 'data: {"a": "é"}\n\n'
    listing = models_list("deepseek-ai/DeepSeek-OCR-2", 5)
    assert listing["data"] == [{"id": "deepseek-ai/DeepSeek-OCR-2", "object": "model", "created": 5,
                                "owned_by": "deepseek-ai"}]
    assert is_openai_job({"openai_route": "/v1/models"}) and not is_openai_job({"image": "x"})


# --- the local server, with the openai package ------------------------------------------------------

@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    running = WorkerServer(tiny_checkpoint, MAX_TOKENS="8", DEFAULT_MODE="tiny", ALLOW_PRIVATE_URLS="true",
                           WEBUI_DIR=str(tmp_path_factory.mktemp("no-webui")))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def pages() -> list[bytes]:
    return [encode(text_page([f"Chat page {k}", "second line"], size=(700, 500)), "PNG") for k in range(2)]


def _runsync_text(server, image: bytes, task: str) -> str:
    body = server.runsync({"image": b64(image), "task": task})
    assert body["status"] == "COMPLETED", body
    return body["output"]["markdown" if task == "markdown" else "text"]


@process
def test_data_url_image_answers_like_the_runsync_job(server, client, pages):
    completion = client.chat.completions.create(
        model="deepseek-ai/DeepSeek-OCR-2", max_tokens=8192,
        messages=user(image_part(data_url(pages[0])), text_part("Free OCR.")))
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == client.models.list().data[0].id
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert choice.message.content == _runsync_text(server, pages[0], "ocr")
    usage = completion.usage
    assert 1 <= usage.completion_tokens <= 8 and usage.prompt_tokens > 145  # 145 image tokens in tiny
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@process
def test_http_url_image_gives_the_text_of_the_same_bytes(server, client, pages):
    files = FileServer({"/page.png": send_bytes(pages[0], "image/png")})
    try:
        by_url = client.chat.completions.create(
            model="m", messages=user(image_part(f"{files.url}/page.png"), text_part("Free OCR.")))
    finally:
        files.close()
    by_data = client.chat.completions.create(model="m", messages=user(image_part(data_url(pages[0])),
                                                                       text_part("Free OCR.")))
    assert by_url.choices[0].message.content == by_data.choices[0].message.content


@process
def test_grounding_prompt_answers_with_the_markdown_task(server, client, pages):
    completion = client.chat.completions.create(
        model="m", messages=user(image_part(data_url(pages[1])), text_part(MARKDOWN_PROMPT)))
    content = completion.choices[0].message.content
    assert content == _runsync_text(server, pages[1], "markdown")
    free = client.chat.completions.create(model="m", messages=user(image_part(data_url(pages[1])),
                                                                    text_part("Free OCR.")))
    assert free.choices[0].message.content == _runsync_text(server, pages[1], "ocr")


@process
def test_stream_sends_role_then_pages_then_finish_and_usage(client, pages):
    messages = user(*(image_part(data_url(p)) for p in pages), text_part("Free OCR."))
    whole = client.chat.completions.create(model="m", messages=messages)
    chunks = list(client.chat.completions.create(model="m", messages=messages, stream=True,
                                                  stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks[1:3]]
    assert len(deltas) == 2 and deltas[1].startswith(PAGE_SEPARATOR)  # one chunk per page
    assert chunks[3].choices[0].finish_reason == whole.choices[0].finish_reason
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


@process
def test_bad_image_is_an_openai_error_with_the_worker_code(client):
    messages = user(image_part(data_url(b"\x89PNG\r\n\x1a\nbroken")), text_part("Free OCR."))
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="m", messages=messages)
    assert exc.value.status_code == 400 and exc.value.code == "invalid_image"
    assert exc.value.body["param"] == "messages[0].content[0].image_url.url"
    assert exc.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as exc:  # a stream that cannot start is refused the same way
        client.chat.completions.create(model="m", messages=messages, stream=True)
    assert exc.value.code == "invalid_image"


@process
def test_a_page_failing_mid_stream_ends_the_stream_with_an_error_event(client, pages):
    messages = user(image_part(data_url(pages[0])), image_part(data_url(b"not an image")), text_part("Free OCR."))
    stream = client.chat.completions.create(model="m", messages=messages, stream=True)
    received = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in stream:
            received.append(chunk)
    assert exc.value.code == "too_many_failed_pages" and "invalid_image" in exc.value.message
    assert received[1].choices[0].delta.content  # the good first page arrived before the error


@process
def test_models_and_health_answer_like_the_seed_server(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [TINY_MODEL_NAME]  # the checkpoint's manifest names the model
    assert requests.get(server.url + "/health", timeout=10).json() == {"status": "ok"}
    root = requests.get(server.url + "/", timeout=10, allow_redirects=False)  # no built UI: the API docs
    assert root.status_code == 307 and root.headers["location"] == "/docs"


# --- RunPod's OpenAI route, through runpod's local API -----------------------------------------------

@pytest.fixture(scope="module")
def local_api(tiny_checkpoint):
    api = LocalApi(tiny_checkpoint, MAX_TOKENS="8", DEFAULT_MODE="tiny")
    yield api
    api.stop()


@process
def test_openai_route_job_completes_with_a_chat_completion(local_api, pages):
    body = local_api.post("/runsync", {"input": {
        "openai_route": "/v1/chat/completions",
        "openai_input": {"model": "m", "max_tokens": 8192,
                         "messages": user(image_part(data_url(pages[0])), text_part("Free OCR."))}}})
    assert body["status"] == "COMPLETED", body
    completion = body["output"]
    if isinstance(completion, list):  # a generator handler (STREAM_PAGES) aggregates its one item
        (completion,) = completion
    assert completion["object"] == "chat.completion"
    plain = local_api.post("/runsync", {"input": {"image": b64(pages[0]), "task": "ocr"}})
    assert completion["choices"][0]["message"]["content"] == plain["output"]["text"]
    assert completion["usage"]["completion_tokens"] == plain["output"]["usage"]["completion_tokens"]


@process
def test_openai_route_lists_the_model(local_api):
    body = local_api.post("/runsync", {"input": {"openai_route": "/v1/models"}})
    assert body["status"] == "COMPLETED", body
    listing = body["output"][0] if isinstance(body["output"], list) else body["output"]
    assert listing["object"] == "list" and listing["data"][0]["id"] == TINY_MODEL_NAME


@process
def test_openai_route_bad_image_fails_with_the_openai_error_in_the_error_string(local_api):
    body = local_api.post("/runsync", {"input": {
        "openai_route": "/v1/chat/completions",
        "openai_input": {"model": "m", "messages": user(image_part(data_url(b"nope")))}}})
    assert body["status"] == "FAILED"
    error = json.loads(body["error"])["error"]
    assert error["code"] == "invalid_image" and error["param"] == "messages[0].content[0].image_url.url"

