"""Worker configuration: a pure function of an environment mapping, parsed once at start.

In: `os.environ` (or any mapping). Out: a frozen `Settings`. An invalid value raises `ConfigError`
naming the variable, so a misconfigured endpoint fails at start instead of on the first job.
Every variable is documented in README.md and RUNPOD_DEPLOYMENT.md (a test checks both).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from .engine.api import ENGINE_NAMES, EngineConfig
from .errors import ConfigError
from .families import DEFAULT_MODE, MODE_NAMES

T = TypeVar("T")

# DeepSeek-OCR-2's decoder context; image tokens and output share it.
MODEL_CONTEXT_TOKENS = 8192
# All files of one job together, inline and downloaded. Inline ones are capped earlier by RunPod
# itself (/run 10 MB, /runsync 20 MB of JSON); larger documents come by URL.
DEFAULT_MAX_INPUT_BYTES = 100 * 1024 * 1024
# A worker result much over ~19 MB fails to upload ("Failed to return job results | 400").
DEFAULT_MAX_OUTPUT_BYTES = 15 * 1024 * 1024
# Jobs held at once (RunPod's concurrency_modifier). A worker that takes more jobs than its engine
# can run only parks them here, where no other worker can take them; 16 keeps two transformers
# batches of 8 (or a vLLM step of 16 one-page jobs) busy while the next pages are decoded. Raise it
# with vLLM on a large GPU, where one step can hold 64+ pages.
DEFAULT_MAX_CONCURRENCY = 16


@dataclass(frozen=True)
class Settings:
    model_path: Path = Path("/models/model")  # where the image bakes the weights
    model_name: str | None = None  # None: the family's hub id (the baked manifest wins over both)
    model_revision: str = "unknown"
    engine: str = "auto"
    device: str = "auto"
    warmup: bool = True
    default_mode: str = DEFAULT_MODE
    max_tokens: int = MODEL_CONTEXT_TOKENS
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_job_inflight_pages: int = 8
    batch_size: int = 8
    batch_wait_ms: int = 10
    preprocess_workers: int = 0
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 64
    max_model_len: int = MODEL_CONTEXT_TOKENS
    enforce_eager: bool = False
    cpu_kv_cache_gib: int = 4
    max_inflight_pixels: int = 400_000_000
    max_job_pixels: int = 2_000_000_000
    shutdown_grace_s: float = 60.0
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    max_image_pixels: int = 50_000_000
    max_pages: int = 100
    pdf_dpi: int = 144
    max_pdf_dpi: int = 300
    url_timeout_s: float = 15.0
    url_max_bytes: int = 50 * 1024 * 1024
    url_max_redirects: int = 3
    allow_private_urls: bool = False
    max_failed_page_ratio: float = 0.1
    stream_pages: bool = False
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    bucket_endpoint_url: str | None = None
    bucket_access_key_id: str | None = None
    bucket_secret_access_key: str | None = None
    ngram_size: int = 30
    ngram_window: int = 90
    runaway_retry: bool = True
    retry_ngram_size: int = 20
    retry_ngram_window: int = 50
    log_level: str = "INFO"
    result_file: Path | None = None
    # The local server (`python -m worker.server`)
    max_request_bytes: int | None = None  # None: MAX_INPUT_BYTES as base64 plus room for the JSON around it
    result_ttl_s: float = 1800.0  # RunPod keeps a /run result 30 minutes
    webui_dir: Path | None = None  # None: webui/dist beside the package

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Settings":
        d = cls()
        s = cls(
            model_path=Path(_get(env, "MODEL_PATH", str, str(d.model_path))),
            model_name=env.get("MODEL_NAME") or None,
            model_revision=_get(env, "MODEL_REVISION", str, d.model_revision),
            engine=_choice(env, "ENGINE", ENGINE_NAMES, d.engine),
            device=_choice(env, "DEVICE", ("auto", "cuda", "cpu"), d.device),
            warmup=_get(env, "WARMUP", _bool, d.warmup),
            default_mode=_choice(env, "DEFAULT_MODE", MODE_NAMES, d.default_mode),
            max_tokens=_int(env, "MAX_TOKENS", d.max_tokens, 1, MODEL_CONTEXT_TOKENS),
            max_concurrency=_int(env, "MAX_CONCURRENCY", d.max_concurrency, 1, 1024),
            max_job_inflight_pages=_int(env, "MAX_JOB_INFLIGHT_PAGES", d.max_job_inflight_pages, 1, 1024),
            batch_size=_int(env, "BATCH_SIZE", d.batch_size, 1, 256),
            batch_wait_ms=_int(env, "BATCH_WAIT_MS", d.batch_wait_ms, 0, 10_000),
            preprocess_workers=_int(env, "PREPROCESS_WORKERS", d.preprocess_workers, 0, 256),
            gpu_memory_utilization=_float(env, "GPU_MEMORY_UTILIZATION", d.gpu_memory_utilization,
                                               0.05, 0.99),
            max_num_seqs=_int(env, "MAX_NUM_SEQS", d.max_num_seqs, 1, 4096),
            max_model_len=_int(env, "MAX_MODEL_LEN", d.max_model_len, 512, MODEL_CONTEXT_TOKENS),
            enforce_eager=_get(env, "ENFORCE_EAGER", _bool, d.enforce_eager),
            cpu_kv_cache_gib=_int(env, "CPU_KV_CACHE_GIB", d.cpu_kv_cache_gib, 1, 1024),
            max_inflight_pixels=_int(env, "MAX_INFLIGHT_PIXELS", d.max_inflight_pixels, 10_000, 2**40),
            max_job_pixels=_int(env, "MAX_JOB_PIXELS", d.max_job_pixels, 10_000, 2**42),
            shutdown_grace_s=_float(env, "SHUTDOWN_GRACE_S", d.shutdown_grace_s, 0, 3600),
            max_input_bytes=_int(env, "MAX_INPUT_BYTES", d.max_input_bytes, 1024, 2**34),
            max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", d.max_image_pixels, 10_000, 2**32),
            max_pages=_int(env, "MAX_PAGES", d.max_pages, 1, 100_000),
            pdf_dpi=_int(env, "PDF_DPI", d.pdf_dpi, 36, 1200),
            max_pdf_dpi=_int(env, "MAX_PDF_DPI", d.max_pdf_dpi, 36, 1200),
            url_timeout_s=_float(env, "URL_TIMEOUT_S", d.url_timeout_s, 0.1, 600),
            url_max_bytes=_int(env, "URL_MAX_BYTES", d.url_max_bytes, 1024, 2**36),
            url_max_redirects=_int(env, "URL_MAX_REDIRECTS", d.url_max_redirects, 0, 20),
            allow_private_urls=_get(env, "ALLOW_PRIVATE_URLS", _bool, d.allow_private_urls),
            max_failed_page_ratio=_float(env, "MAX_FAILED_PAGE_RATIO", d.max_failed_page_ratio, 0.0, 1.0),
            stream_pages=_get(env, "STREAM_PAGES", _bool, d.stream_pages),
            max_output_bytes=_int(env, "MAX_OUTPUT_BYTES", d.max_output_bytes, 1024, 2**36),
            bucket_endpoint_url=env.get("BUCKET_ENDPOINT_URL") or None,
            bucket_access_key_id=env.get("BUCKET_ACCESS_KEY_ID") or None,
            bucket_secret_access_key=env.get("BUCKET_SECRET_ACCESS_KEY") or None,
            ngram_size=_int(env, "NGRAM_SIZE", d.ngram_size, 0, 1000),
            ngram_window=_int(env, "NGRAM_WINDOW", d.ngram_window, 1, 100_000),
            runaway_retry=_get(env, "RUNAWAY_RETRY", _bool, d.runaway_retry),
            retry_ngram_size=_int(env, "RETRY_NGRAM_SIZE", d.retry_ngram_size, 1, 1000),
            retry_ngram_window=_int(env, "RETRY_NGRAM_WINDOW", d.retry_ngram_window, 1, 100_000),
            log_level=_choice(env, "LOG_LEVEL", ("debug", "info", "warning", "error"), d.log_level.lower()).upper(),
            result_file=Path(env["RESULT_FILE"]) if env.get("RESULT_FILE") else None,
            max_request_bytes=_int(env, "MAX_REQUEST_BYTES", 0, 0, 2**36) or None,
            result_ttl_s=_float(env, "RESULT_TTL_S", d.result_ttl_s, 1, 7 * 24 * 3600),
            webui_dir=Path(env["WEBUI_DIR"]) if env.get("WEBUI_DIR") else None,
        )
        if s.max_image_pixels > s.max_inflight_pixels:
            raise ConfigError(f"MAX_IMAGE_PIXELS ({s.max_image_pixels}) must not exceed MAX_INFLIGHT_PIXELS "
                              f"({s.max_inflight_pixels}): one page could never get room")
        if s.pdf_dpi > s.max_pdf_dpi:
            raise ConfigError(f"PDF_DPI ({s.pdf_dpi}) must not exceed MAX_PDF_DPI ({s.max_pdf_dpi})")
        if s.ngram_size and s.ngram_window < s.ngram_size:
            raise ConfigError(f"NGRAM_WINDOW ({s.ngram_window}) must be at least NGRAM_SIZE ({s.ngram_size})")
        if s.bucket_endpoint_url and not (s.bucket_access_key_id and s.bucket_secret_access_key):
            raise ConfigError("BUCKET_ENDPOINT_URL is set but BUCKET_ACCESS_KEY_ID/BUCKET_SECRET_ACCESS_KEY are not")
        return s

    def engine_config(self, family: str) -> EngineConfig:
        """The part of the settings an engine needs."""
        return EngineConfig(
            model_path=self.model_path, family=family, device=self.device,  # type: ignore[arg-type]
            context_tokens=MODEL_CONTEXT_TOKENS, batch_size=self.batch_size, batch_wait_ms=self.batch_wait_ms,
            preprocess_workers=self.preprocess_workers, gpu_memory_utilization=self.gpu_memory_utilization,
            max_num_seqs=self.max_num_seqs, max_model_len=self.max_model_len,
            enforce_eager=self.enforce_eager, cpu_kv_cache_gib=self.cpu_kv_cache_gib)


def _get(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from None


def _bool(raw: str) -> bool:
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    value = _get(env, name, int, default)
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range [{lo}, {hi}]")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    value = _get(env, name, float, default)
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range [{lo}, {hi}]")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = _get(env, name, str, default).lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value
