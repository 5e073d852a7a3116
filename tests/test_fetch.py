"""URL fetching against a real HTTP server on 127.0.0.1: limits, redirects, refusals."""

from __future__ import annotations

import time

import pytest

from tests.helpers import FileServer, redirect_to, send_bytes
from worker.errors import UrlFetchFailed, UrlNotAllowed, UrlTimeout, UrlTooLarge, UrlTooManyRedirects
from worker.fetch import check_address, fetch_url
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
        "/slow": _slow,
        "/big": send_bytes(b"z" * 200_000, "image/png"),
        "/big-chunked": _chunked_big,
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


@pytest.mark.parametrize("ip", ["10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "127.0.0.1",
                                "0.0.0.0", "::1", "fe80::1", "fc00::1", "224.0.0.1"])
def test_private_ranges_are_refused(ip):
    with pytest.raises(UrlNotAllowed):
        check_address(ip, field="pdf", allow_private=False)


def test_public_address_passes():
    check_address("93.184.216.34", field="pdf", allow_private=False)


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
