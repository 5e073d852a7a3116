"""RunPod serverless worker for DeepSeek-OCR and DeepSeek-OCR-2: images and PDFs in, text, markdown
and layout out, on vLLM or transformers.

Flow of one job (one module per arrow):
job input -> schema.parse_job_input -> sources (decoding, fetch, pdf) -> engine (engine/api.py protocol:
hf.py or vllm_engine.py) -> grounding.parse_grounding -> results.build_page_result /
build_document_result -> handler output. pipeline.py knows the order; service.py owns one engine for
every front door (handler.py, server.py).
"""

__version__ = "0.2.0"
