"""RunPod serverless worker for DeepSeek-OCR-2: images and PDFs in, text, markdown and layout out.

Flow of one job (one module per arrow):
job input -> schema.parse_job_input -> sources (decoding, fetch, pdf) -> engine.Engine.generate
-> grounding.parse_grounding -> results.assemble -> handler output.
"""

__version__ = "0.1.0"
