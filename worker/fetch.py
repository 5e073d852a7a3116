"""http(s) URL -> bytes, with the limits a public endpoint needs.

In: a URL and `Settings`. Out: `Fetched(data, content_type, final_url)`. Also owns the rule that
tells a URL from inline data (`classify_source`) and refuses schemes other than http(s).

Every hop of a redirect chain is checked: a malformed URL is the caller's `invalid_input`, the scheme
must be http or https, and every address the host resolves to must be globally routable unless
ALLOW_PRIVATE_URLS is set. The connection goes to the address that was checked (no second DNS
lookup for a rebinding attack to race). One deadline (URL_TIMEOUT_S) bounds the connect, the TLS
handshake and every single receive, status line and headers included, so a server dripping a byte
at a time cannot hold the GPU worker past it. A body shorter than its Content-Length, or a chunked
body without its last chunk, is a failed download, never a file.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urljoin, urlsplit

from .errors import (InvalidInput, UrlFetchFailed, UrlNotAllowed, UrlTimeout, UrlTooLarge, UrlTooManyRedirects,
                     WorkerError)
from .settings import Settings

CHUNK_BYTES = 64 * 1024
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "deepseek-ocr-runpod-worker"
FETCHABLE_SCHEMES = ("http", "https")
MAX_HOST_CHARS = 253  # DNS: a name is at most 253 characters in text form (RFC 1035, 255 octets on the wire)
MAX_ECHO_CHARS = 120  # what an error message repeats of a URL or a server's reply

# Base64 has no ':', so a leading "name:" can only be a scheme; 32 characters covers every registered one.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,31}):")
# http.client refuses to send spaces, control characters and non-ASCII in a request line; browsers
# percent-encode them, and so do we. Everything else printable (and existing %XX escapes) is kept.
_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))
# RFC 6052's well-known NAT64 prefix: the last 32 bits are an IPv4 address the gateway connects to.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

SourceKind = Literal["url", "inline", "refused_scheme"]


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str
    final_url: str


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, percent-encoded, ready for the request line


def classify_source(value: str) -> SourceKind:
    """'url' for http(s), 'inline' for base64 or a data: URL, 'refused_scheme' for any other scheme."""
    match = _SCHEME.match(value)
    if match is None:
        return "inline"
    scheme = match.group(1).lower()
    if scheme == "data":
        return "inline"
    return "url" if scheme in FETCHABLE_SCHEMES else "refused_scheme"


def require_http_scheme(value: str, *, field: str) -> None:
    """Raise `UrlNotAllowed` for a source with a scheme other than http(s) (file:, ftp:, gopher:...)."""
    if classify_source(value) == "refused_scheme":
        scheme = _SCHEME.match(value).group(1).lower()  # type: ignore[union-attr] - classified above
        raise UrlNotAllowed(f"scheme {scheme!r} is not allowed (http and https only)", field=field)


def fetch_url(url: str, *, field: str, settings: Settings, max_bytes: int) -> Fetched:
    deadline = time.monotonic() + settings.url_timeout_s
    current = url
    target = _parse_target(url, field=field, blame=InvalidInput)
    for _ in range(settings.url_max_redirects + 1):
        status, headers, body = _request(target, field=field, settings=settings, deadline=deadline,
                                         max_bytes=max_bytes)
        if status in REDIRECT_CODES:
            location = headers.get("location")
            if not location:
                raise UrlFetchFailed(f"HTTP {status} redirect without a Location header", field=field)
            try:
                current = urljoin(current, location)
            except ValueError:
                raise UrlFetchFailed(f"HTTP {status} redirect to a malformed URL", field=field) from None
            # A bad Location is the server's fault, not the caller's.
            target = _parse_target(current, field=field, blame=UrlFetchFailed)
            continue
        if status >= 400:
            raise UrlFetchFailed(f"HTTP {status} from {_echo(target.host)}", field=field)
        return Fetched(data=body, content_type=headers.get("content-type", ""), final_url=current)
    raise UrlTooManyRedirects(f"more than {settings.url_max_redirects} redirects (URL_MAX_REDIRECTS)", field=field)


def check_address(ip: str, *, field: str, allow_private: bool) -> None:
    """Refuse an address that is not globally routable, unless ALLOW_PRIVATE_URLS."""
    if allow_private:
        return
    if not is_public_address(ipaddress.ip_address(ip)):
        raise UrlNotAllowed(f"resolves to a non-public address ({ip}); set ALLOW_PRIVATE_URLS=true "
                            "to allow it", field=field)


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An allow-list: globally routable unicast only. An IPv4 address carried inside IPv6 (mapped,
    NAT64, 6to4) is judged as itself, since that is where the packets end up."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return is_public_address(embedded)
    # `is_global` alone lets multicast (224.0.0.0/4, ff0e::/16) and IANA-reserved IPv6 blocks through.
    return address.is_global and not address.is_multicast and not address.is_reserved


def _embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def _parse_target(url: str, *, field: str, blame: type[WorkerError]) -> _Target:
    """Split and check a URL before any network use. `blame` is the error for a malformed one."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # urllib: a broken IPv6 literal ("http://[::1/")
        raise blame(f"is not a valid URL ({_echo(str(exc))})", field=field) from None
    scheme = parts.scheme.lower()
    if scheme not in FETCHABLE_SCHEMES:
        raise UrlNotAllowed(f"scheme {_echo(scheme)!r} is not allowed (http and https only)", field=field)
    try:
        port = parts.port
    except ValueError:  # urllib: not a number, or over 65535
        port = 0
    if port == 0:
        raise blame("has an invalid port (a port is a number from 1 to 65535)", field=field)
    host = parts.hostname
    if not host:
        raise blame("is not a valid URL: it has no host", field=field)
    _check_host_name(host, field=field, blame=blame)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), quote(path, safe=_PRINTABLE_ASCII))


def _check_host_name(host: str, *, field: str, blame: type[WorkerError]) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass  # a name, not an address literal
    try:
        encoded = host.encode("idna")
    except UnicodeError:  # the IDNA codec refuses empty labels, labels over 63 characters, barred characters
        raise blame("host name is not a valid DNS name (a label is empty, over 63 characters, or has "
                    "characters IDNA does not allow)", field=field) from None
    if len(encoded.rstrip(b".")) > MAX_HOST_CHARS:
        raise blame(f"host name is too long (over {MAX_HOST_CHARS} characters)", field=field)


def _request(target: _Target, *, field: str, settings: Settings, deadline: float, max_bytes: int):
    ip = _resolve(target.host, target.port, field=field, allow_private=settings.allow_private_urls)
    conn = _PinnedHTTPConnection(target.host, target.port, ip, deadline, tls=target.scheme == "https")
    response = None
    try:
        conn.request("GET", target.path, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        if response.status in REDIRECT_CODES or response.status >= 400:
            return response.status, headers, b""
        expected = response.length  # http.client's parsed Content-Length; None when chunked or absent
        if expected is not None and expected > max_bytes:
            raise UrlTooLarge(f"Content-Length {expected} is over the limit of {max_bytes} bytes", field=field)
        chunks, total = [], 0
        while True:
            _remaining(deadline, field)
            chunk = response.read1(CHUNK_BYTES)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise UrlTooLarge(f"body exceeds the limit of {max_bytes} bytes", field=field)
            chunks.append(chunk)
        if expected is not None and total < expected:  # http.client reports this as a normal end
            raise UrlFetchFailed(f"the body ended early: {total} of {expected} bytes (Content-Length) arrived "
                                 "before the server closed the connection", field=field)
        return response.status, headers, b"".join(chunks)
    except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
        raise UrlTimeout(f"no complete answer within {settings.url_timeout_s}s (URL_TIMEOUT_S)", field=field) from None
    except http.client.IncompleteRead:  # a chunked body cut off inside a chunk or before the last one
        raise UrlFetchFailed("the body ended early: the server closed the connection before the chunked "
                             "body's last chunk", field=field) from None
    except (OSError, http.client.HTTPException) as exc:
        raise UrlFetchFailed(f"could not fetch from {_echo(target.host)}: {type(exc).__name__}: "
                             f"{_echo(str(exc))}", field=field) from None
    finally:
        if response is not None:
            response.close()
        conn.close()


def _resolve(host: str, port: int, *, field: str, allow_private: bool) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UrlFetchFailed(f"host {_echo(host)!r} does not resolve ({exc.strerror})", field=field) from None
    except UnicodeError:  # the name check above should have caught it; the codec has the last word
        raise InvalidInput("host name cannot be encoded for DNS", field=field) from None
    addresses = [info[4][0] for info in infos]
    for ip in addresses:  # every address: a name that also maps to a private one is refused
        check_address(ip, field=field, allow_private=allow_private)
    return addresses[0]


def _remaining(deadline: float, field: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise UrlTimeout("the download ran past URL_TIMEOUT_S", field=field)
    return left


def _seconds_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("URL_TIMEOUT_S")
    return left


def _echo(text: str) -> str:
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "..."


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address (TLS still verifies the host name) and hands http.client a
    socket whose every receive ends by the deadline."""

    def __init__(self, host: str, port: int, ip: str, deadline: float, *, tls: bool):
        super().__init__(host, port)
        self._ip = ip
        self._deadline = deadline
        self._tls = tls

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), _seconds_left(self._deadline))
        if self._tls:
            sock.settimeout(_seconds_left(self._deadline))  # bounds the handshake as a whole
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self.sock = _DeadlineSocket(sock, self._deadline)


class _DeadlineSocket:
    """The three things http.client does with a socket (send, makefile, close), with a timeout set
    to the time left before every send and every receive. A socket timeout alone is per call: a
    server sending one byte per call would reset it forever, inside a single readline."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(_seconds_left(self._deadline))
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        if mode != "rb":
            raise ValueError(f"only 'rb' is supported, not {mode!r}")
        # The socket's own unbuffered file keeps its reference count: closing the connection while
        # the response still reads (http.client does that for Connection: close) stays safe.
        return io.BufferedReader(_DeadlineReader(self._sock, self._sock.makefile("rb", buffering=0),
                                                 self._deadline))

    def close(self) -> None:
        self._sock.close()


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, raw: io.RawIOBase, deadline: float):
        self._sock = sock
        self._raw = raw
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:  # type: ignore[override]
        self._sock.settimeout(_seconds_left(self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()
