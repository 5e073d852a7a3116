"""http(s) URL -> bytes, with the limits a public endpoint needs.

In: a URL and `Settings`. Out: `Fetched(data, content_type, final_url)`. Every hop of a redirect
chain is checked: scheme http/https only, the host's resolved addresses must be public unless
ALLOW_PRIVATE_URLS is set, and the connection goes to the address that was checked (no second DNS
lookup for a rebinding attack to race). The body is read in chunks against a size cap and an
overall deadline, so a slow-dripping server cannot hold the GPU worker past URL_TIMEOUT_S.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from .errors import UrlFetchFailed, UrlNotAllowed, UrlTimeout, UrlTooLarge, UrlTooManyRedirects
from .settings import Settings

CHUNK_BYTES = 64 * 1024
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "deepseek-ocr-runpod-worker"


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str
    final_url: str


def fetch_url(url: str, *, field: str, settings: Settings, max_bytes: int) -> Fetched:
    deadline = time.monotonic() + settings.url_timeout_s
    current = url
    for _ in range(settings.url_max_redirects + 1):
        status, headers, body = _request(current, field=field, settings=settings, deadline=deadline,
                                         max_bytes=max_bytes)
        if status in REDIRECT_CODES:
            location = headers.get("location")
            if not location:
                raise UrlFetchFailed(f"HTTP {status} redirect without a Location header", field=field)
            current = urljoin(current, location)
            continue
        if status >= 400:
            raise UrlFetchFailed(f"HTTP {status} from {_host(current)}", field=field)
        return Fetched(data=body, content_type=headers.get("content-type", ""), final_url=current)
    raise UrlTooManyRedirects(f"more than {settings.url_max_redirects} redirects (URL_MAX_REDIRECTS)", field=field)


def check_address(ip: str, *, field: str, allow_private: bool) -> None:
    address = ipaddress.ip_address(ip)
    if allow_private:
        return
    if (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified):
        raise UrlNotAllowed(f"resolves to a non-public address ({ip}); set ALLOW_PRIVATE_URLS=true "
                            "to allow it", field=field)


def _request(url: str, *, field: str, settings: Settings, deadline: float, max_bytes: int):
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlNotAllowed(f"scheme {scheme!r} is not allowed (http and https only)", field=field)
    if not parts.hostname:
        raise UrlNotAllowed("has no host", field=field)
    port = parts.port or (443 if scheme == "https" else 80)
    ip = _resolve(parts.hostname, port, field=field, allow_private=settings.allow_private_urls)
    timeout = _remaining(deadline, field)
    if scheme == "https":
        conn: http.client.HTTPConnection = _PinnedHTTPSConnection(parts.hostname, port, ip, timeout)
    else:
        conn = _PinnedHTTPConnection(parts.hostname, port, ip, timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
        sock = conn.sock  # http.client drops conn.sock once the response owns the connection
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        if response.status in REDIRECT_CODES or response.status >= 400:
            return response.status, headers, b""
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise UrlTooLarge(f"Content-Length {length} is over the limit of {max_bytes} bytes", field=field)
        chunks, total = [], 0
        while True:
            sock.settimeout(_remaining(deadline, field))
            chunk = response.read1(CHUNK_BYTES) if hasattr(response, "read1") else response.read(CHUNK_BYTES)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise UrlTooLarge(f"body exceeds the limit of {max_bytes} bytes", field=field)
            chunks.append(chunk)
        return response.status, headers, b"".join(chunks)
    except (socket.timeout, TimeoutError):
        raise UrlTimeout(f"no complete answer within {settings.url_timeout_s}s (URL_TIMEOUT_S)", field=field) from None
    except (OSError, http.client.HTTPException) as exc:
        raise UrlFetchFailed(f"could not fetch from {parts.hostname}: {type(exc).__name__}: {exc}",
                             field=field) from None
    finally:
        conn.close()


def _resolve(host: str, port: int, *, field: str, allow_private: bool) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UrlFetchFailed(f"host {host!r} does not resolve ({exc.strerror})", field=field) from None
    addresses = [info[4][0] for info in infos]
    for ip in addresses:  # every address: a name that also maps to a private one is refused
        check_address(ip, field=field, allow_private=allow_private)
    return addresses[0]


def _remaining(deadline: float, field: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise UrlTimeout("the download ran past URL_TIMEOUT_S", field=field)
    return left


def _host(url: str) -> str:
    return urlsplit(url).hostname or "?"


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
