"""URL fetching against real servers on 127.0.0.1: limits, redirects, refusals, hostile replies.

Well-behaved replies come from tests.helpers.FileServer (http.server). Replies no honest server
sends (a status line dripped a byte at a time, a body cut short) come from `RawServer` below: a
plain TCP socket on 127.0.0.1 writing the bytes of the reply by hand.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time

import pytest

from tests.helpers import FileServer, redirect_to, send_bytes
from worker.errors import (InvalidInput, UrlFetchFailed, UrlNotAllowed, UrlTimeout, UrlTooLarge,
                           UrlTooManyRedirects)
from worker.fetch import check_address, classify_source, fetch_url, require_http_scheme
from worker.settings import Settings

ALLOW = Settings(allow_private_urls=True, url_timeout_s=2.0, url_max_redirects=2)
PAYLOAD = b"\x89PNG\r\n\x1a\n" + b"x" * 5000


def _slow(handler):
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.end_headers()
    for _ in range(40):  # 8 s of dripping: past the 2 s deadline even though each read succeeds
        handler.wfile.write(b"x" * 10)
        handler.wfile.flush()
        time.sleep(0.2)


def _chunked_big(handler):
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.end_headers()  # no Content-Length: the cap must hold while streaming
    for _ in range(100):
        handler.wfile.write(b"y" * 10_000)


@pytest.fixture(scope="module")
def server():
    routes = {}
    srv = FileServer(routes)
    routes.update({
        "/file.png": send_bytes(PAYLOAD, "image/png"),
        "/hop1": redirect_to(srv.url + "/hop2"),
        "/hop2": redirect_to("/file.png"),
        "/loop": redirect_to("/loop"),
        "/to-ftp": redirect_to("ftp://example.com/file.png"),
        "/to-bad-port": redirect_to("http://127.0.0.1:99999/file.png"),
        "/to-broken-ipv6": redirect_to("http://[::1/file.png"),
        "/slow": _slow,
        "/big": send_bytes(b"z" * 200_000, "image/png"),
        "/big-chunked": _chunked_big,
        "/%C3%A9t%C3%A9%20scan.png": send_bytes(PAYLOAD, "image/png"),
    })
    yield srv
    srv.close()


def fetch(url, settings=ALLOW, max_bytes=100_000):
    return fetch_url(url, field="images[0]", settings=settings, max_bytes=max_bytes)


def test_fetches_bytes(server):
    got = fetch(server.url + "/file.png")
    assert got.data == PAYLOAD and got.content_type == "image/png"


def test_loopback_is_refused_by_default(server):
    with pytest.raises(UrlNotAllowed) as excinfo:
        fetch(server.url + "/file.png", settings=Settings())
    assert excinfo.value.code == "url_not_allowed" and "ALLOW_PRIVATE_URLS" in excinfo.value.message
    assert excinfo.value.field == "images[0]"


def test_localhost_name_is_checked_after_resolution(server):
    port = server.url.rsplit(":", 1)[1]
    with pytest.raises(UrlNotAllowed):
        fetch(f"http://localhost:{port}/file.png", settings=Settings())


@pytest.mark.parametrize("ip", [
    "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "127.0.0.1", "0.0.0.0", "::1", "::",
    "fe80::1", "fc00::1", "224.0.0.1", "255.255.255.255", "240.0.0.1", "192.0.2.1", "198.18.0.1",
    "2001:db8::1",
    # Found by the adversarial run: shared address space (RFC 6598), home of a cloud metadata service.
    "100.64.0.1", "100.100.100.200",
    # Multicast outside the link-local block: ipaddress calls these global, a fetch must not.
    "239.1.2.3", "ff0e::1",
    # Private IPv4 inside IPv6: mapped, NAT64 (RFC 6052), 6to4 (RFC 3056), IPv4-compatible, local NAT64.
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
    "64:ff9b::6464:64c8", "2002:7f00:1::1", "2002:a9fe:a9fe::", "2002:0a00:0001::", "::7f00:1",
    "64:ff9b:1::a00:1",
])
def test_non_global_addresses_are_refused(ip):
    with pytest.raises(UrlNotAllowed) as excinfo:
        check_address(ip, field="pdf", allow_private=False)
    assert excinfo.value.field == "pdf" and "ALLOW_PRIVATE_URLS" in excinfo.value.message


@pytest.mark.parametrize("ip", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946",
                                "::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1"])
def test_global_addresses_pass_also_when_embedded(ip):
    check_address(ip, field="pdf", allow_private=False)


@pytest.mark.parametrize("ip", ["127.0.0.1", "100.100.100.200", "::1", "64:ff9b::7f00:1"])
def test_allow_private_urls_lets_every_address_through(ip):
    check_address(ip, field="pdf", allow_private=True)


def test_redirects_are_followed_within_the_limit(server):
    assert fetch(server.url + "/hop1").final_url.endswith("/file.png")


def test_redirect_loop_stops(server):
    with pytest.raises(UrlTooManyRedirects):
        fetch(server.url + "/loop")


def test_every_hop_is_checked(server):
    with pytest.raises(UrlNotAllowed) as excinfo:
        fetch(server.url + "/to-ftp")
    assert "ftp" in excinfo.value.message


def test_size_cap_from_content_length_and_while_streaming(server):
    with pytest.raises(UrlTooLarge):
        fetch(server.url + "/big")
    with pytest.raises(UrlTooLarge):
        fetch(server.url + "/big-chunked")


def test_slow_server_hits_the_overall_deadline(server):
    started = time.monotonic()
    with pytest.raises(UrlTimeout):
        fetch(server.url + "/slow")
    assert time.monotonic() - started < 5


def test_http_errors_and_unreachable_hosts(server):
    with pytest.raises(UrlFetchFailed) as excinfo:
        fetch(server.url + "/missing")
    assert "HTTP 404" in excinfo.value.message
    with pytest.raises(UrlFetchFailed):
        fetch("http://no-such-host.invalid/x.png")


def test_non_ascii_and_space_in_the_path_are_percent_encoded(server):
    # http.client refuses both in a request line (a UnicodeEncodeError: internal_error); browsers encode them.
    got = fetch(server.url + "/été scan.png")
    assert got.data == PAYLOAD


# --- malformed URLs are the caller's fault (found by the adversarial run: they were internal_error) ---

@pytest.mark.parametrize("url, says", [
    ("http://127.0.0.1:99999/x.png", "port"),
    ("http://127.0.0.1:0/x.png", "port"),
    ("http://127.0.0.1:abc/x.png", "port"),
    ("http://[::1/x.png", "IPv6"),
    ("http://[::1:80/", "IPv6"),
    ("http://" + "a" * 64 + ".example/x.png", "label"),
    ("http://a..example/x.png", "label"),
    ("http://" + "a." * 130 + "example/x.png", "long"),
    ("http:///x.png", "host"),
])
def test_malformed_url_is_invalid_input_naming_the_field(url, says):
    with pytest.raises(InvalidInput) as excinfo:
        fetch(url)
    assert excinfo.value.code == "invalid_input" and excinfo.value.field == "images[0]"
    assert says in excinfo.value.message


@pytest.mark.parametrize("path", ["/to-bad-port", "/to-broken-ipv6"])
def test_malformed_redirect_is_the_servers_fault(server, path):
    with pytest.raises(UrlFetchFailed) as excinfo:
        fetch(server.url + path)
    assert excinfo.value.field == "images[0]"


@pytest.mark.parametrize("value", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://example.com/1",
                                   "FILE:///etc/passwd", "ws://example.com/x", "jar:http://x/y"])
def test_other_schemes_are_url_not_allowed(value):
    assert classify_source(value) == "refused_scheme"
    with pytest.raises(UrlNotAllowed) as excinfo:
        require_http_scheme(value, field="pdf")
    assert excinfo.value.code == "url_not_allowed" and excinfo.value.field == "pdf"
    with pytest.raises(UrlNotAllowed):
        fetch(value)


@pytest.mark.parametrize("value, kind", [
    ("http://example.com/a.png", "url"), ("HTTPS://example.com/a.png", "url"),
    ("iVBORw0KGgoAAAANSUhEUgAA", "inline"), ("data:image/png;base64,iVBORw0KGgo=", "inline"),
    ("/9j/4AAQSkZJRgABAQ==", "inline"), ("", "inline"),
])
def test_classify_source(value, kind):
    assert classify_source(value) == kind
    require_http_scheme(value, field="image")  # http(s) and inline data pass


# --- hostile servers: raw sockets on 127.0.0.1 ---

class RawServer:
    """TCP on 127.0.0.1 (TLS too, given a server context): reads each request's head, then
    `respond(conn, stop)` writes whatever it likes."""

    def __init__(self, respond, tls: ssl.SSLContext | None = None):
        self._respond = respond
        self._tls = tls
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # lets the accept loop see `close()`
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        try:
            conn.settimeout(10)
            if self._tls:
                conn = self._tls.wrap_socket(conn, server_side=True)  # takes over the plain socket
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            self._respond(conn, self._stop)
        except OSError:
            pass  # the client hung up, as the deadline tests expect it to
        finally:
            conn.close()

    def close(self):
        self._stop.set()
        self._listener.close()


def drip(prefix: bytes, dripped: bytes, every: float = 0.05):
    """Send `prefix` at once, then `dripped` one byte per `every` seconds."""
    def respond(conn, stop):
        conn.sendall(prefix)
        for byte in dripped:
            if stop.is_set():
                return
            conn.sendall(bytes([byte]))
            time.sleep(every)
    return respond


def send_then_close(reply: bytes):
    def respond(conn, stop):
        conn.sendall(reply)
    return respond


@pytest.fixture
def raw_server():
    servers = []

    def start(respond, tls=None):
        servers.append(RawServer(respond, tls))
        return servers[-1]
    yield start
    for srv in servers:
        srv.close()


DEADLINE_1S = Settings(allow_private_urls=True, url_timeout_s=1.0)
OK_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("prefix, dripped", [
    (b"", b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 100 + b"\r\n\r\n"),  # the status line
    (b"HTTP/1.1 200 OK\r\n", b"X-Pad: " + b"a" * 100 + b"\r\nContent-Length: 1\r\n\r\nx"),  # a header
    (OK_CHUNKED + b"1\r\nx\r\n", b"0" * 100 + b"1\r\ny\r\n0\r\n\r\n"),  # a chunk-size line
], ids=["status-line", "headers", "chunk-size"])
def test_byte_drip_cannot_outlast_url_timeout(raw_server, prefix, dripped):
    # Found by the adversarial run: each 1-byte read reset the socket timeout, so a drip held the
    # worker for 20 s with URL_TIMEOUT_S=3. The drip here lasts 5 s against a 1 s deadline.
    srv = raw_server(drip(prefix, dripped))
    started = time.monotonic()
    with pytest.raises(UrlTimeout) as excinfo:
        fetch(srv.url + "/x.png", settings=DEADLINE_1S)
    elapsed = time.monotonic() - started
    assert excinfo.value.code == "url_timeout" and excinfo.value.field == "images[0]"
    assert 0.9 < elapsed < 2.5, elapsed


def test_a_complete_chunked_body_is_accepted(raw_server):
    srv = raw_server(send_then_close(OK_CHUNKED + b"5\r\nhello\r\n3\r\n!!!\r\n0\r\n\r\n"))
    assert fetch(srv.url + "/x.png").data == b"hello!!!"


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n" + PAYLOAD[:500],
    b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n" + PAYLOAD[:1],
    OK_CHUNKED + b"5\r\nhello\r\n",  # closes where the final zero-length chunk should be
    OK_CHUNKED + b"a\r\nhello",  # closes inside a chunk
], ids=["content-length", "content-length-http10", "chunked-no-last-chunk", "chunked-mid-chunk"])
def test_body_cut_short_is_url_fetch_failed(raw_server, reply):
    # Found by the adversarial run: the short body went on to the decoder (invalid_image: truncated).
    srv = raw_server(send_then_close(reply))
    with pytest.raises(UrlFetchFailed) as excinfo:
        fetch(srv.url + "/x.png")
    assert excinfo.value.code == "url_fetch_failed" and excinfo.value.field == "images[0]"
    assert "ended early" in excinfo.value.message


# --- https: a local CA the test trusts through OpenSSL's own SSL_CERT_FILE variable ---

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A CA and a server certificate for 127.0.0.1, made with `cryptography` (a runpod dependency)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fetch test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return folder / "ca.pem", server_context


def test_https_fetch_verifies_the_certificate(raw_server, tls_files, monkeypatch):
    ca_file, server_context = tls_files
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(PAYLOAD) + PAYLOAD
    srv = raw_server(send_then_close(reply), tls=server_context)
    with pytest.raises(UrlFetchFailed) as excinfo:  # the test CA is not trusted yet
        fetch(srv.url + "/x.png")
    assert "CERTIFICATE_VERIFY_FAILED" in excinfo.value.message
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # OpenSSL reads it when the context loads its CAs
    assert fetch(srv.url + "/x.png").data == PAYLOAD


def test_https_status_line_drip_cannot_outlast_url_timeout(raw_server, tls_files, monkeypatch):
    ca_file, server_context = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    srv = raw_server(drip(b"", b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 100 + b"\r\n\r\n"), tls=server_context)
    started = time.monotonic()
    with pytest.raises(UrlTimeout):
        fetch(srv.url + "/x.png", settings=DEADLINE_1S)
    assert 0.9 < time.monotonic() - started < 2.5


def test_stalled_tls_handshake_hits_the_deadline(raw_server):
    # A plain TCP server that never answers the ClientHello: the handshake is bounded too.
    srv = raw_server(send_then_close(b""))
    started = time.monotonic()
    with pytest.raises(UrlTimeout):
        fetch(srv.url.replace("http://", "https://") + "/x.png", settings=DEADLINE_1S)
    assert 0.9 < time.monotonic() - started < 2.5
