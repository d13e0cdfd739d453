"""The simulated user over HTTP: a stdlib ``ThreadingHTTPServer`` speaking the stateless JSON protocol.

Contract (docs/design.md#simulator-http-protocol)
- ``GET /healthz`` -> ``{"ok": true, "backend": NAME, "version": ppp_min.__version__}`` (never needs a token).
- ``GET /v1/preferences`` -> ``[{"name", "text", "split", "judge"}...]`` (judge = the preference kind).
- ``POST /v1/reply`` (one ``ReplyRequest`` as JSON) -> a ``Reply`` as JSON.
- ``POST /v1/reply:batch`` ``{"items": [...]}`` -> ``{"results": [...]}`` in the same order; at most
  ``max_batch`` items; one bad item rejects the whole batch (400 naming ``items[i]....``).
- Bad input is a 4xx JSON error ``{"error": ..., "field": ...}``: malformed JSON / bad fields / unknown
  preference or family 400, missing token 401, unknown path 404, wrong method 405, no Content-Length 411
  (chunked bodies are not supported), body over ``max_body`` 413 (checked before reading). The
  Content-Type is *tolerated*, not checked (``curl -d`` sends form-encoded by default).
  An upstream LLM failure is 502 ``{"error": "upstream: ..."}`` with no reply text. A 500 means a bug in
  this server and is logged with its traceback. One stderr line per error; nothing logged on success.
- Binding a non-loopback host requires a token (``ConfigError`` otherwise); with a token every request but
  ``/healthz`` needs ``Authorization: Bearer TOKEN``.
- ``make_server(user, host, port, token)`` builds it; ``SimulatorServer.url``; ``start()`` serves in a
  daemon thread, ``stop()`` shuts down. The user object needs ``name`` and ``reply(ReplyRequest)``.
Performance: HTTP/1.1 keep-alive, one buffered write per response, TCP_NODELAY, JSON encoded/decoded once.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ppp_min import __version__
from ppp_min.userville.llm_user import UpstreamError
from ppp_min.userville.families.registry import FAMILIES
from ppp_min.userville.preferences import PREFERENCES
from ppp_min.userville.protocol import ProtocolError, parse_reply_request

MAX_BODY = 8 << 20  # 8 MiB: a full batch of 1024 realistic requests is ~1.3 MB
MAX_BATCH = 1024
ROUTES = {"/healthz": "GET", "/v1/preferences": "GET", "/v1/reply": "POST", "/v1/reply:batch": "POST"}


class ConfigError(ValueError):
    """A refused server configuration (e.g. a public bind without a token)."""


class HTTPError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.field, self.close = status, message, field, close


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: could be anything, treat as public


def log(line: str) -> None:
    print(f"ppp_min simulator: {line}", file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    wbufsize = 1 << 16  # headers + body leave in one write (flushed by handle_one_request)
    timeout = 60  # an idle or stalled connection is dropped after this many seconds
    server_version = "ppp_min-simulator"
    sys_version = ""

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # --- plumbing -------------------------------------------------------------------------------
    def log_request(self, code="-", size="-"):  # no per-request logging on success
        pass

    def log_message(self, format, *args):  # only reached for protocol-level errors
        log(f"{self.address_string()} {format % args}")

    def send_error(self, code, message=None, explain=None):
        # Protocol-level errors raised by http.server itself (bad request line, unknown method, bad HTTP
        # version): bad input, so never a 5xx, and always our JSON shape.
        code = {501: 405, 505: 400}.get(code, code)
        if self.request_version == "HTTP/0.9":  # unparsed version: still answer with a status line
            self.request_version = "HTTP/1.0"
        log(f"{code} {message or ''}")
        self._send(code, {"error": message or "bad request", "field": None}, close=True)

    def __getattr__(self, name):  # any method other than GET/POST (PUT, DELETE, FOO...) -> 405/404
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _send(self, status: int, obj=None, raw: bytes | None = None, close: bool = False, headers=()):
        body = raw if raw is not None else json.dumps(obj).encode()  # ASCII: lone surrogates survive
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    # --- routing ---------------------------------------------------------------------------------
    def _dispatch(self):
        path = self.path.split("?", 1)[0]
        srv: SimulatorServer = self.server
        try:
            if path == "/healthz" and self.command == "GET":
                return self._send(200, raw=srv.health_body)
            if srv.token is not None and not self._authorized(srv.token):
                raise HTTPError(401, "missing or wrong bearer token: send 'Authorization: Bearer TOKEN'",
                                "Authorization", close=True)
            method = ROUTES.get(path)
            if method is None:
                raise HTTPError(404, f"unknown path {path!r}; paths: {', '.join(ROUTES)}", "path", close=True)
            if self.command != method:
                raise HTTPError(405, f"{path} takes {method}, not {self.command}", "method", close=True)
            if path == "/v1/preferences":
                return self._send(200, raw=srv.preferences_body)
            obj = self._read_json(srv.max_body)
            if path == "/v1/reply":
                req = parse_reply_request(obj, PREFERENCES, FAMILIES)
                self._send(200, srv.user.reply(req).to_json())
            else:
                self._send(200, {"results": srv.reply_batch(obj)})
        except HTTPError as e:
            self._error(e.status, e.message, e.field, e.close)
        except ProtocolError as e:
            self._error(400, e.message, e.field)
        except UpstreamError as e:
            self._error(502, f"upstream: {e}", None)
        except Exception:  # a bug in this server, not bad input
            log(f"500 {self.command} {path}: internal error\n{traceback.format_exc()}")
            self._send(500, {"error": "internal error in the simulator (logged on the server)", "field": None},
                       close=True)

    def _error(self, status: int, message: str, field: str | None, close: bool = False):
        log(f"{status} {self.command} {self.path[:200]}: {field + ': ' if field else ''}{message[:300]}")
        headers = (("WWW-Authenticate", "Bearer"),) if status == 401 else ()
        self._send(status, {"error": message, "field": field}, close=close, headers=headers)

    def _authorized(self, token: str) -> bool:
        got = self.headers.get("Authorization", "")
        return got.startswith("Bearer ") and hmac.compare_digest(got[7:].strip().encode(), token.encode())

    def _read_json(self, max_body: int):
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(411, "chunked bodies are not supported: send a Content-Length",
                            "Content-Length", close=True)
        raw_len = self.headers.get("Content-Length")
        if raw_len is None:
            raise HTTPError(411, "POST needs a Content-Length header", "Content-Length", close=True)
        try:
            n = int(raw_len)
            if n < 0:
                raise ValueError
        except ValueError:
            raise HTTPError(400, f"bad Content-Length {raw_len[:40]!r}", "Content-Length", close=True)
        if n > max_body:
            raise HTTPError(413, f"body of {n} bytes is over the {max_body}-byte limit", "body", close=True)
        try:
            data = self.rfile.read(n)
        except OSError:  # the client stalled past the socket timeout or went away mid-body
            raise HTTPError(408, "timed out reading the body", "body", close=True)
        if len(data) != n:
            raise HTTPError(400, "body shorter than its Content-Length", "body", close=True)
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, huge ints, deep nesting
            raise HTTPError(400, f"body is not valid JSON: {str(e)[:200]}", "body")


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, user, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 max_body: int = MAX_BODY, max_batch: int = MAX_BATCH, workers: int = 1):
        if token is not None and not token.strip():
            raise ConfigError("--token must not be empty")
        if not is_loopback(host) and token is None:
            raise ConfigError(f"refusing to bind {host} without --token: a non-loopback simulator must "
                              "require a bearer token (or bind 127.0.0.1)")
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.user, self.token, self.max_body, self.max_batch = user, token, max_body, max_batch
        self.health_body = json.dumps({"ok": True, "backend": user.name, "version": __version__}).encode()
        self.preferences_body = json.dumps(
            [{"name": p.name, "text": p.text, "split": p.split, "judge": p.kind} for p in PREFERENCES.values()]
        ).encode()
        # The rules user is CPU-bound: a batch runs inline. An LLM user waits on the network: a pool.
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None
        self._thread: threading.Thread | None = None
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def reply_batch(self, obj) -> list[dict]:
        if not isinstance(obj, dict) or not isinstance(obj.get("items"), list):
            raise ProtocolError("items", 'expected {"items": [<reply request>...]}')
        items = obj["items"]
        if len(items) > self.max_batch:
            raise ProtocolError("items", f"{len(items)} items is over the batch limit of {self.max_batch}")
        reqs = [parse_reply_request(it, PREFERENCES, FAMILIES, where=f"items[{i}]") for i, it in enumerate(items)]
        if self.pool is None:
            return [self.user.reply(r).to_json() for r in reqs]
        return [r.to_json() for r in self.pool.map(self.user.reply, reqs)]

    def start(self) -> "SimulatorServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="ppp-sim-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
        if self.pool is not None:
            self.pool.shutdown(wait=False)


def make_user(backend: str, base_url: str | None = None, model: str | None = None, max_tokens: int = 256):
    """The user behind the server: ``rules`` (default, offline, deterministic) or ``openai``
    (``max_tokens`` per reply)."""
    if backend == "rules":
        from ppp_min.userville.simulator import RulesUser
        return RulesUser()
    if backend == "openai":
        from ppp_min.userville.llm_user import LLMUser
        return LLMUser(base_url or "", model or "", max_tokens=max_tokens)
    raise ConfigError(f"unknown backend {backend!r}; expected rules or openai")


def make_server(user, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                **kw) -> SimulatorServer:
    if "workers" not in kw:
        kw["workers"] = 8 if getattr(user, "name", "") == "openai" else 1
    return SimulatorServer(user, host, port, token, **kw)
