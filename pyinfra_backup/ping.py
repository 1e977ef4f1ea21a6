"""healthchecks.io-style pings (`monitoring.ping_url`): a failed ping is a warning, never a failed backup.

    warning = ping(url, "start")                                   # GET  <url>/start
    warning = ping(url, "success")                                 # GET  <url>
    warning = ping(url, "fail", log_excerpt=log, redact=[secret])  # POST <url>/fail, body = the log's tail

`ping` never raises for a network or HTTP problem: it returns None when the server answered 2xx,
else a one-line warning. The warning names only the scheme and host of the URL: the path of a
ping URL (healthchecks' UUID) is a credential. With `log_excerpt`, any kind is a POST whose body
is the excerpt with every `redact` string replaced by `[REDACTED]` (before anything is cut), then
cut to its last `MAX_BODY` bytes (the end of a log says why it failed). The whole ping, connect
to answer, takes at most `timeout` seconds (a server that trickles its answer is cut off too).
Proxies are taken from the environment (`https_proxy`, `no_proxy`), as curl would.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Literal

PingKind = Literal["start", "success", "fail"]
MAX_BODY = 10_000  # bytes
REDACTED = "[REDACTED]"
USER_AGENT = "pyinfra-backup"
_SUFFIX = {"start": "/start", "success": "", "fail": "/fail"}


def ping_url(url: str, kind: PingKind) -> str:
    """`<url>/start`, `<url>` or `<url>/fail`; a query string (e.g. `?rid=...`) stays at the end."""
    if kind not in _SUFFIX:
        raise ValueError(f"ping kind must be start, success or fail, not {kind!r}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the ping URL must be http:// or https:// with a host")
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + _SUFFIX[kind]))


def redact_text(text: str, redact: Iterable[str] = ()) -> str:
    """`text` with every non-empty string of `redact` replaced by `[REDACTED]`, longest first."""
    for secret in sorted({s for s in redact if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def body(log_excerpt: str, redact: Iterable[str] = (), limit: int = MAX_BODY) -> bytes:
    """The redacted excerpt, UTF-8, at most `limit` bytes: its end, starting on a whole character."""
    data = redact_text(log_excerpt, redact).encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    return data[-limit:].decode("utf-8", "ignore").encode("utf-8")


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def ping(url: str, kind: PingKind, log_excerpt: str | None = None, timeout: float = 10,
         redact: Iterable[str] = ()) -> str | None:
    """Ping `url` for `kind`; None when the server answered 2xx, else a warning (never raises)."""
    try:
        target = ping_url(url, kind)
        request = urllib.request.Request(target, headers={"User-Agent": USER_AGENT})
        if log_excerpt is not None:
            request.data = body(log_excerpt, redact)
            request.add_header("Content-Type", "text/plain; charset=utf-8")
    except ValueError as e:
        return f"{kind} ping not sent: {e}"
    prefix = f"{kind} ping to {_where(url)}"
    result: list[str | None] = []

    def send() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read(1024)
                result.append(None if 200 <= response.status < 300 else f"{prefix}: HTTP {response.status}")
        except urllib.error.HTTPError as e:
            result.append(f"{prefix}: HTTP {e.code} {e.reason}")
        except urllib.error.URLError as e:
            timed_out = isinstance(e.reason, TimeoutError)
            result.append(f"{prefix}: no answer within {timeout:g}s" if timed_out else f"{prefix} failed: {e.reason}")
        except TimeoutError:
            result.append(f"{prefix}: no answer within {timeout:g}s")
        except Exception as e:  # noqa: BLE001 - a ping must never fail the backup
            result.append(f"{prefix} failed: {type(e).__name__}: {e}")

    worker = threading.Thread(target=send, name="pyinfra-backup-ping", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive() or not result:
        return f"{prefix}: no answer within {timeout:g}s"
    return result[0]
