"""A recording HTTP pass-through placed in front of Prism (driver → tap → Prism → sim).

Prism started with `--errors` answers a request or response that breaks the spec with a
problem+json body, and its log then says only "Request terminated with error". The
details (which property, which rule) travel in the `sl-violations` header and the body.
The tap keeps, for every exchange, the method, path, status, selected headers, the
`sl-violations` header and a problem+json body, so a failing test can say exactly what
was wrong. It also lets tests assert what the driver sent (pages requested, reservation
in the create body, retries after 429) and that invalid input never reached the API.

Bytes are forwarded unchanged, except hop-by-hop headers. When the upstream closes the
connection without an answer, the tap closes the client's connection too.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
}

KEEP_RESPONSE_HEADERS = {"retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "content-type", "sl-violations"}

REDACT_KEYS = {"userdata", "customdata", "root_password"}


def _redact(obj):
    if isinstance(obj, dict):
        return {k: ("<redacted>" if k in REDACT_KEYS else _redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    return obj


@dataclass
class Exchange:
    seq: int
    method: str
    path: str
    status: int | None
    seconds: float
    started: float = 0.0  # time.monotonic() when the request arrived
    request_json: object = None
    response_headers: dict = field(default_factory=dict)
    violations: list = field(default_factory=list)
    problem: dict | None = None
    response_json: object = None
    error: str | None = None

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.path.split("?", 1)[1] if "?" in self.path else ""

    def describe(self) -> str:
        s = f"{self.method} {self.path} -> {self.status if self.status is not None else self.error}"
        if self.request_json is not None:
            s += f"\n      request body: {json.dumps(self.request_json, sort_keys=True)[:600]}"
        if self.violations:
            s += f"\n      sl-violations: {json.dumps(self.violations)[:1500]}"
        if self.problem:
            s += f"\n      problem: {json.dumps(self.problem)[:1500]}"
        return s


class Tap:
    def __init__(self, upstream: str):
        u = urlsplit(upstream)
        self.up_host = u.hostname or "127.0.0.1"
        self.up_port = u.port or 80
        self.up_prefix = u.path.rstrip("/")
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        tap = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self):
                started = time.monotonic()
                body = self._read_body()
                req_json = None
                if body:
                    try:
                        req_json = _redact(json.loads(body))
                    except ValueError:
                        req_json = "<non-JSON body>"
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in ("POST", "PUT", "PATCH"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(tap.up_host, tap.up_port, timeout=120)
                ex = Exchange(seq=0, method=self.command, path=self.path, status=None, seconds=0.0, started=started, request_json=req_json)
                try:
                    conn.request(self.command, tap.up_prefix + self.path, body=body if body else None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as e:
                    ex.error = f"upstream failed: {type(e).__name__}: {e}"
                    ex.seconds = time.monotonic() - started
                    tap._record(ex)
                    self.close_connection = True
                    return
                finally:
                    conn.close()
                ex.status = resp.status
                ex.seconds = time.monotonic() - started
                for k, v in resp.getheaders():
                    if k.lower() in KEEP_RESPONSE_HEADERS:
                        ex.response_headers[k.lower()] = v
                if "sl-violations" in ex.response_headers:
                    try:
                        ex.violations = json.loads(ex.response_headers["sl-violations"])
                    except ValueError:
                        ex.violations = [ex.response_headers["sl-violations"]]
                ctype = ex.response_headers.get("content-type", "")
                if data and "json" in ctype:
                    try:
                        parsed = json.loads(data)
                    except ValueError:
                        parsed = None
                    if "problem+json" in ctype:
                        ex.problem = parsed
                    else:
                        ex.response_json = parsed
                tap._record(ex)
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                if resp.status >= 200 and resp.status not in (204, 304):
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data and resp.status not in (204, 304) and self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="tap", daemon=True)
        self._thread.start()

    def _record(self, ex: Exchange) -> None:
        with self._lock:
            ex.seq = len(self.exchanges)
            self.exchanges.append(ex)

    def mark(self) -> int:
        with self._lock:
            return len(self.exchanges)

    def since(self, mark: int) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges[mark:])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
