"""The ``requests`` client of the simulator server, and a local server on demand.

Contract
- ``SimulatorClient(urls, token=None, timeout=(3.05, 30.0), retries=4, backoff=0.2, max_batch=1024,
  max_body=8 MiB, retry_s=None, on_wait=None)``:
  ``urls`` is a comma-separated string or a list (replicas; round-robin per call; a connection error
  moves to the next URL). ``token`` is sent as ``Authorization: Bearer TOKEN``. ``reply(req) -> Reply``,
  ``reply_batch(reqs) -> list[Reply]`` (split into chunks
  of the server's batch cap, and halved again while a body exceeds its size cap; order kept), ``health() -> dict``, ``preferences() -> list[PreferenceInfo]``.
  Connection errors, timeouts and 5xx are retried with exponential backoff (``backoff * 2**k`` seconds,
  at most 5 s): ``retries`` times, or, with ``retry_s``, until ``retry_s`` seconds have passed since the
  call's first failure (an outage: a restarted or stopped server); each try keeps its own ``timeout``
  (connect, read), cut to the time left. ``on_wait(line)`` hears one line when an outage starts and one
  when the simulator answers again.
  ``check_ready(client, preferences)``: the start-up check of an authenticated endpoint (see its docstring).
  A 4xx raises ``SimulatorError`` at once with the server's message (retrying cannot fix bad input).
  Replies are validated with ``Reply.from_json``. When it gives up it raises ``SimulatorError``; an error
  is never turned into a user reply. Safe to share between threads (one pooled ``requests.Session``).
- ``start_local_simulator(backend="rules", port=0, in_process=False) -> LocalSimulator``: by default spawns
  ``python simulate.py serve --port 0`` (closest to a real deployment), reads its listening line, waits
  for ``/healthz`` (``SimulatorError`` with its stderr if it is not up within ``startup_timeout``); with
  ``in_process=True`` serves from a thread instead (faster start). ``LocalSimulator`` has ``.url`` and
  ``.stop()``, is a context manager, and is stopped at interpreter exit. The spawned server also exits on
  its own when this process dies however it dies, SIGKILL included (``--parent-pid``: Linux
  PR_SET_PDEATHSIG, armed only when started from the main thread since Linux sends it when the starting
  *thread* ends; ``--watch-fd``: EOF on a pipe from this process, on any POSIX system).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from ppp_min.userville.protocol import ProtocolError, Reply, ReplyRequest

_JSON = {"Content-Type": "application/json"}
HINT = "start one with `python simulate.py` or pass --sim-url"
SIMULATE_PY = Path(__file__).resolve().parents[2] / "simulate.py"


class SimulatorError(RuntimeError):
    """The simulator refused a request (4xx: ``status`` set) or could not be reached / kept failing."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None):
        super().__init__(message)
        self.status, self.field = status, field


@dataclass(frozen=True)
class PreferenceInfo:
    name: str
    text: str
    split: str
    judge: str  # none | function | judge


class SimulatorClient:
    def __init__(self, urls: str | list[str], token: str | None = None, timeout=(3.05, 30.0),
                 retries: int = 4, backoff: float = 0.2, max_batch: int = 1024, max_body: int = 8 << 20,
                 retry_s: float | None = None, on_wait=None):
        if isinstance(urls, str):
            urls = urls.split(",")
        self.urls = [u.strip().rstrip("/") for u in urls if u.strip()]
        if not self.urls:
            raise ValueError("no simulator URL given (expected e.g. http://127.0.0.1:8765)")
        for u in self.urls:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"simulator URL must start with http:// or https://, got {u!r}")
        self.timeout, self.retries, self.backoff, self.max_batch = timeout, retries, backoff, max_batch
        self.max_body, self.retry_s, self.on_wait = max_body, retry_s, on_wait
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=len(self.urls), pool_maxsize=32, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._outage: float | None = None  # when the current outage began (on_wait was told)

    # --- transport -------------------------------------------------------------------------------
    def _once(self, method: str, url: str, path: str, body, data, timeout):
        """One request: ``(True, json)``, or ``(False, (what failed, unreachable))`` for a retryable failure."""
        try:
            r = self.session.request(method, url + path, json=body, data=data, timeout=timeout,
                                     headers=_JSON if data is not None else None)
        except requests.RequestException as e:  # refused, reset, timeout: retry
            return False, (f"{type(e).__name__}: {_short(e)}", True)
        if r.status_code >= 500:  # server or upstream LLM failure: retry
            return False, (f"HTTP {r.status_code}: {_error_text(r)}", False)
        if r.status_code >= 400:  # bad input: never retried
            err, field = _error_fields(r)
            raise SimulatorError(f"simulator at {url} refused {method} {path} ({r.status_code}): {err}",
                                 r.status_code, field)
        try:
            return True, r.json()
        except ValueError:
            raise SimulatorError(f"simulator at {url} answered {method} {path} with non-JSON: {r.text[:200]!r}")

    def _call(self, method: str, path: str, body=None, data: bytes | None = None):
        with self._lock:
            start = next(self._next)
        attempt, first_fail, timeout = 0, None, self.timeout
        while True:
            url = self.urls[(start + attempt) % len(self.urls)]  # next replica on every retry
            ok, out = self._once(method, url, path, body, data, timeout)
            if ok:
                self._recovered()
                return out
            (last, unreachable), now = out, time.monotonic()
            first_fail = now if first_fail is None else first_fail
            attempt += 1
            pause = min(self.backoff * 2 ** (attempt - 1), 5.0)
            if self.retry_s is None:
                if attempt > self.retries:
                    break
            else:
                left = first_fail + self.retry_s - now
                if left <= 0:
                    break
                self._waiting(url, last)
                pause = min(pause, left)
                timeout = (self.timeout[0], max(1.0, min(self.timeout[1], left - pause)))
            time.sleep(pause)
        if self.retry_s is not None:  # an outage that outlasted --sim-retry-s
            raise SimulatorError(f"simulator at {url} not answering for {time.monotonic() - first_fail:.0f} s "
                                 f"({attempt} tries): {last}")
        what = "unreachable" if unreachable else "kept failing"
        raise SimulatorError(f"simulator at {url} {what} after {attempt} tries: {last}"
                             + (f"; {HINT}" if unreachable else ""))

    def _waiting(self, url: str, last: str) -> None:
        with self._lock:
            if self._outage is not None:
                return
            self._outage = time.monotonic()
        if self.on_wait:
            self.on_wait(f"simulator at {url} is not answering ({last}); retrying for up to {self.retry_s:.0f} s")

    def _recovered(self) -> None:
        if self._outage is None:
            return
        with self._lock:
            since, self._outage = self._outage, None
        if since is not None and self.on_wait:
            self.on_wait(f"simulator answering again after {time.monotonic() - since:.0f} s")

    # --- API -------------------------------------------------------------------------------------
    def health(self) -> dict:
        return self._call("GET", "/healthz")

    def preferences(self) -> list[PreferenceInfo]:
        out = self._call("GET", "/v1/preferences")
        try:
            return [PreferenceInfo(p["name"], p["text"], p["split"], p["judge"]) for p in out]
        except (TypeError, KeyError) as e:
            raise SimulatorError(f"bad /v1/preferences answer from the simulator: {e}")

    def reply(self, req: ReplyRequest) -> Reply:
        return _reply(self._call("POST", "/v1/reply", req.to_json()), "reply")

    def reply_batch(self, reqs: list[ReplyRequest]) -> list[Reply]:
        out: list[Reply] = []
        for i in range(0, len(reqs), self.max_batch):
            out.extend(self._batch(reqs[i:i + self.max_batch], i))
        return out

    def _batch(self, chunk: list[ReplyRequest], offset: int) -> list[Reply]:
        data = json.dumps({"items": [r.to_json() for r in chunk]}).encode()
        if len(data) > self.max_body and len(chunk) > 1:  # keep under the server's body cap: halve
            half = len(chunk) // 2
            return self._batch(chunk[:half], offset) + self._batch(chunk[half:], offset + half)
        res = self._call("POST", "/v1/reply:batch", data=data)
        results = res.get("results") if isinstance(res, dict) else None
        if not isinstance(results, list) or len(results) != len(chunk):
            raise SimulatorError(f"simulator batch answer has {len(results or [])} results for "
                                 f"{len(chunk)} items")
        return [_reply(x, f"results[{offset + j}]") for j, x in enumerate(results)]

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_ready(client: SimulatorClient, preferences=()) -> None:
    """The start-up check: ``GET /v1/preferences`` needs the bearer token when the server has one (``/healthz``
    never does), so a missing or wrong token fails here, in one line, not after a warm start; and every
    preference in ``preferences`` must be one the server knows."""
    try:
        known = {p.name for p in client.preferences()}
    except SimulatorError as e:
        if e.status == 401:
            raise SimulatorError(f"{e}; pass --sim-token TOKEN (or set PPP_SIM_TOKEN)", 401) from None
        raise
    unknown = [p for p in preferences if p not in known]
    if unknown:
        raise SimulatorError(f"the simulator at {client.urls[0]} does not know the preference(s) "
                             f"{', '.join(unknown[:4])}: is it a ppp_min simulator of the same version?")


def _reply(obj, where: str) -> Reply:
    try:
        return Reply.from_json(obj, where)
    except ProtocolError as e:
        raise SimulatorError(f"the simulator sent a malformed reply: {e}")


def _short(e: Exception) -> str:
    """The cause of a requests failure without urllib3's wrapping (e.g. "[Errno 111] Connection refused")."""
    text = str(e)
    m = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if m:
        return m.group(0).strip()
    m = re.search(r"timeout=([\d.]+)", text)
    if isinstance(e, requests.Timeout) and m:
        return f"no answer within {float(m.group(1)):.3g} s"
    return text[:300]


def _error_fields(r: requests.Response) -> tuple[str, str | None]:
    try:
        obj = r.json()
        err, field = str(obj.get("error", r.text[:200])), obj.get("field")
    except (ValueError, AttributeError):
        return r.text[:200], None
    return (f"{field}: {err}" if field and not err.startswith(f"{field}:") else err), field


def _error_text(r: requests.Response) -> str:
    return _error_fields(r)[0]


# --- a local server on demand ----------------------------------------------------------------------
class LocalSimulator:
    """A simulator this process started; ``.url``; ``stop()`` (also on exit and at interpreter exit)."""

    def __init__(self, url: str, proc: subprocess.Popen | None = None, server=None, stderr_file=None,
                 watch_fd: int | None = None):
        self.url, self.proc, self.server, self._stderr = url, proc, server, stderr_file
        self._watch_fd = watch_fd  # our end of the child's parent-death pipe (closed last)
        atexit.register(self.stop)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._watch_fd is not None:
            os.close(self._watch_fd)
            self._watch_fd = None
        atexit.unregister(self.stop)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_local_simulator(backend: str = "rules", port: int = 0, in_process: bool = False,
                          extra_args: tuple[str, ...] = (), startup_timeout: float = 10.0) -> LocalSimulator:
    if in_process:
        from ppp_min.userville.server import make_server, make_user
        srv = make_server(make_user(backend), "127.0.0.1", port).start()
        return LocalSimulator(srv.url, server=srv)
    if not SIMULATE_PY.is_file():
        raise SimulatorError(f"cannot start a local simulator: {SIMULATE_PY} not found; {HINT}")
    err = tempfile.TemporaryFile("w+")
    cmd = [sys.executable, str(SIMULATE_PY), "serve", "--backend", backend, "--host", "127.0.0.1",
           "--port", str(port), *extra_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the child exits when this process dies, even by SIGKILL: PR_SET_PDEATHSIG on Linux (armed in the
    # child, which then checks that we are still its parent), and EOF on its end of this pipe everywhere
    if threading.current_thread() is threading.main_thread():  # Linux ties the signal to the *thread*
        cmd += ["--parent-pid", str(os.getpid())]
    watch_r = watch_w = None
    if os.name == "posix":
        watch_r, watch_w = os.pipe()
        cmd += ["--watch-fd", str(watch_r)]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                pass_fds=(watch_r,) if watch_r is not None else ())
    except BaseException:
        if watch_w is not None:
            os.close(watch_w)
        raise
    finally:
        if watch_r is not None:
            os.close(watch_r)  # only the child holds the read end
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    sim = LocalSimulator("", proc=proc, stderr_file=err, watch_fd=watch_w)
    deadline = time.monotonic() + startup_timeout
    try:
        line = lines.get(timeout=startup_timeout)
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            raise queue.Empty
        sim.url = m.group(1)
        client = SimulatorClient(sim.url, retries=0, timeout=(1.0, 2.0))
        while True:
            try:
                if client.health().get("ok"):
                    client.close()
                    return sim
            except SimulatorError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise queue.Empty
            time.sleep(0.05)
    except queue.Empty:
        err.seek(0)
        tail = err.read()[-2000:].strip()
        sim.stop()
        raise SimulatorError(f"local simulator ({' '.join(cmd[1:])}) did not come up within "
                             f"{startup_timeout:.0f} s; its stderr: {tail or '(empty)'}") from None
