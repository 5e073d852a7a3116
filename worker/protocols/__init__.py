"""Front doors other than RunPod's own job input: each maps its wire format to a job input of the
worker and the worker's results and errors back, and nothing else.

- `openai_chat`: OpenAI chat-completions bodies and objects (pure mapping).
- `openai_jobs`: runs a parsed chat request on an `OcrService` (one completion, or SSE events).
- `runpod_openai`: RunPod's OpenAI route (`openai_route` / `openai_input` jobs).
- `http_status`: the HTTP status of each stable error code, for the local server.
"""
