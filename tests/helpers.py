"""Test helpers: real images, real PDFs (Pillow's PDF writer, pypdf for encryption), a real local
HTTP server, and the worker run as a real process (one job, or runpod's local API)."""

from __future__ import annotations

import base64
import collections
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import requests
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent


def text_page(lines: list[str], size=(900, 1200), font_px=36) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_px)
    for i, line in enumerate(lines):
        draw.text((60, 80 + i * int(font_px * 1.6)), line, fill="black", font=font)
    return image


def encode(image: Image.Image, fmt: str = "PNG", **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def make_pdf(images: list[Image.Image], dpi: int = 72) -> bytes:
    """A real multi-page PDF, one image per page (Pillow's PDF writer)."""
    buffer = io.BytesIO()
    first, *rest = [im.convert("RGB") for im in images]
    first.save(buffer, format="PDF", save_all=True, append_images=rest, resolution=dpi)
    return buffer.getvalue()


def zero_page_pdf() -> bytes:
    """A well-formed PDF whose page tree is empty (/Count 0), written byte by byte."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def encrypt_pdf(data: bytes, password: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(model_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "BUCKET_"))}
    env.update({"MODEL_PATH": str(model_path), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "LOG_LEVEL": "WARNING"})
    env.update(extra)
    return env


def run_worker_once(model_path: Path, job_input: dict, cwd: Path | None = None, timeout=180, **env):
    """`python -m worker --test_input ...`: runpod's one-job local mode, as a real process."""
    args = [sys.executable, "-m", "worker"]
    if job_input is not None:
        args += ["--test_input", json.dumps({"input": job_input})]
    env_vars = worker_env(model_path, **env)
    env_vars["PYTHONPATH"] = str(ROOT)
    return subprocess.run(args, cwd=cwd or ROOT, env=env_vars, capture_output=True, text=True, timeout=timeout)


class WorkerProcess:
    """A worker entry point as a real process on a free loopback port, up once `ready_path` answers.
    Its output is read by a thread (runpod logs every job's output: an unread pipe fills up and blocks
    the server after a few dozen jobs), and the tail is kept for error messages."""

    def __init__(self, args: list[str], ready_path: str, model_path: Path, start_timeout: float = 180, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env_vars = worker_env(model_path, **env)
        env_vars["PYTHONPATH"] = str(ROOT)
        self.proc = subprocess.Popen([sys.executable, "-m", *[a.format(port=self.port) for a in args]], cwd=ROOT,
                                     env=env_vars, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = time.time() + start_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                raise RuntimeError(f"{args[0]} exited: {self.output()}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(self.url + ready_path, timeout=2).ok:
                    return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{args[0]} did not come up in {start_timeout:.0f} s: {self.output()}")

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def post(self, path: str, body: dict | None = None, timeout=300) -> dict:
        response = requests.post(self.url + path, json=body, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def runsync(self, job_input: dict) -> dict:
        return self.post("/runsync", {"input": job_input})

    def stop(self) -> None:
        # uvicorn can take seconds to exit on SIGTERM: terminate, wait a little, then kill.
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()


class LocalApi(WorkerProcess):
    """`python -m worker --rp_serve_api`: runpod's real local API over HTTP."""

    def __init__(self, model_path: Path, start_timeout: float = 180, **env: str):
        super().__init__(["worker", "--rp_serve_api", "--rp_api_port", "{port}", "--rp_api_host", "127.0.0.1"],
                         "/openapi.json", model_path, start_timeout=start_timeout, **env)


class WorkerServer(WorkerProcess):
    """`python -m worker.server`: the local server (original REST, OpenAI and RunPod-style routes)."""

    def __init__(self, model_path: Path, **env: str):
        super().__init__(["worker.server", "--host", "127.0.0.1", "--port", "{port}"], "/healthz", model_path, **env)


class FileServer:
    """A real HTTP server on 127.0.0.1 whose routes are functions of the request path."""

    def __init__(self, routes: dict[str, Callable[[BaseHTTPRequestHandler], None]]):
        routes_ref = routes

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                route = routes_ref.get(self.path.split("?")[0])
                if route is None:
                    self.send_error(404)
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_bytes(data: bytes, content_type: str = "application/octet-stream"):
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    return route


def redirect_to(location: str):
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.end_headers()
    return route
