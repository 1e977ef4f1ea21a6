"""healthchecks.io-style pings against a local HTTP server on 127.0.0.1 (and nothing else)."""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pyinfra_backup.ping import MAX_BODY, REDACTED, body, ping, ping_url, redact_text

UUID = "5f1e2d3c-0000-4000-8000-123456789abc"


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self):
        self.requests: list[dict] = []
        self.delay = 0.0  # seconds before answering
        self.trickle = False  # answer one byte at a time, slowly
        self.status = 200
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{UUID}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def handle_any(self):
        server = self.server
        length = int(self.headers.get("Content-Length") or 0)
        server.requests.append({
            "method": self.command, "path": self.path, "body": self.rfile.read(length),
            "content_type": self.headers.get("Content-Type"), "user_agent": self.headers.get("User-Agent"),
        })
        if server.release.wait(server.delay):
            return
        if server.trickle:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK":
                if server.release.wait(0.1):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            return
        self.send_response(server.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    do_GET = do_POST = do_HEAD = handle_any


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def test_success_is_the_bare_url(server):
    assert ping(server.url, "success") is None
    [req] = server.requests
    assert (req["method"], req["path"], req["body"]) == ("GET", f"/{UUID}", b"")
    assert req["user_agent"] == "pyinfra-backup"


def test_start(server):
    assert ping(server.url + "/", "start") is None
    assert [(r["method"], r["path"]) for r in server.requests] == [("GET", f"/{UUID}/start")]


def test_fail_posts_the_log_excerpt_without_secrets(server):
    log = "borg create: passphrase hunter2 rejected\nrepo ssh://u:pw@x/ failed\n"
    assert ping(server.url, "fail", log_excerpt=log, redact=["hunter2", "pw", ""]) is None
    [req] = server.requests
    assert (req["method"], req["path"]) == ("POST", f"/{UUID}/fail")
    assert req["body"].decode() == f"borg create: passphrase {REDACTED} rejected\nrepo ssh://u:{REDACTED}@x/ failed\n"
    assert req["content_type"] == "text/plain; charset=utf-8"


def test_a_long_log_is_cut_to_its_last_10_kb_after_redaction(server):
    secret = "s3cr3t-" * 3
    log = "".join(f"line {i} é {secret}\n" for i in range(5000)) + "the end\n"
    assert ping(server.url, "fail", log_excerpt=log, redact=[secret]) is None
    sent = server.requests[0]["body"]
    assert len(sent) <= MAX_BODY and len(sent) > MAX_BODY - 4
    text = sent.decode("utf-8")  # cut on a whole character
    assert text.endswith("line 4999 é [REDACTED]\nthe end\n") and "s3cr3t" not in text


def test_redaction_takes_the_longest_secret_first():
    assert redact_text("abc abcdef", ["abc", "abcdef"]) == f"{REDACTED} {REDACTED}"
    assert body("x" * 20, limit=5) == b"xxxxx"


def test_query_string_stays_last():
    assert ping_url("https://hc.example/ping/abc?rid=1", "fail") == "https://hc.example/ping/abc/fail?rid=1"
    assert ping_url("https://hc.example/ping/abc/", "success") == "https://hc.example/ping/abc"


def test_server_down_is_a_warning_not_an_exception():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    warning = ping(f"http://127.0.0.1:{port}/{UUID}", "fail", log_excerpt="x", timeout=2)
    assert warning and warning.startswith(f"fail ping to http://127.0.0.1:{port} failed")
    assert "refused" in warning.lower() and UUID not in warning  # the ping URL's path is a credential


def test_http_error_is_a_warning(server):
    server.status = 404
    warning = ping(server.url, "success")
    assert warning == f"success ping to http://127.0.0.1:{server.server_address[1]}: HTTP 404 Not Found"


def test_slow_server_times_out_with_a_warning(server):
    server.delay = 5
    started = time.monotonic()
    warning = ping(server.url, "start", timeout=0.5)
    assert time.monotonic() - started < 2
    assert warning == f"start ping to http://127.0.0.1:{server.server_address[1]}: no answer within 0.5s"


def test_a_trickling_server_is_cut_off_at_the_timeout(server):
    server.trickle = True  # each byte arrives within the socket timeout, the whole answer does not
    started = time.monotonic()
    warning = ping(server.url, "success", timeout=0.8)
    assert time.monotonic() - started < 1.5
    assert warning and "no answer within 0.8s" in warning


def test_bad_kind_or_url_is_a_warning():
    assert ping("http://127.0.0.1:1/x", "bogus") == "bogus ping not sent: ping kind must be start, success or fail, not 'bogus'"
    for url in ("not a url", "file:///etc/passwd", "ftp://127.0.0.1/x"):
        assert ping(url, "start") == "start ping not sent: the ping URL must be http:// or https:// with a host"
