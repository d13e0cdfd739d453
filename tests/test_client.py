"""The simulator client over real HTTP: retries, no retry on 4xx, giving up, replicas, restarts, auto-start."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ppp_min.userville.client import SimulatorClient, SimulatorError, start_local_simulator
from ppp_min.userville.protocol import Exchange, Fact, ReplyRequest, UserTask
from ppp_min.userville.server import make_server, make_user

TASK = UserTask("research", "Which painter born in 1871 in Lyon won the Prix Aurore in 1902?", (
    Fact(1, "The painter was born in 1871.", ("born", "year", "1871")),
    Fact(1, "The painter was born in Lyon.", ("city", "where", "lyon")),
    Fact(3, "The gold document says: Marie Dutel, painter, born in Lyon in 1871.", ("name", "who")),
))
QUESTIONS = ["What year was the painter born?", "Which city?", "Who is it?", "Is it a sculptor?",
             "WHAT YEAR?", "Where, in which city, was the painter born?"]


def reqs(prefs=("no_preference", "capital", "commas")):
    return [ReplyRequest(TASK, prefs[i % len(prefs)], q, tuple(Exchange(f"q{j}?", "ok") for j in range(i % 5)))
            for i, q in enumerate(QUESTIONS)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fake:
    """A server that answers from a script of (status, body) and counts the requests it gets."""

    def __init__(self, script):
        self.script, self.count = list(script), 0
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                fake.count += 1
                status, body = fake.script.pop(0) if len(fake.script) > 1 else fake.script[0]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    made = []

    def start(script):
        made.append(Fake(script))
        return made[-1]

    yield start
    for f in made:
        f.close()


OK_REPLY = {"reply": "1871.", "effort": "low", "cost": 1, "pref_followed": None, "parsed": True}


@pytest.fixture(scope="module")
def local():
    with start_local_simulator(in_process=True) as sim:
        yield sim


def test_reply_batch_health_preferences(local):
    with SimulatorClient(local.url) as c:
        assert c.health()["backend"] == "rules"
        prefs = c.preferences()
        assert len(prefs) == 20 and prefs[0].name == "no_preference" and prefs[-1].judge == "judge"
        singles = [c.reply(r) for r in reqs()]
        assert len({s.reply for s in singles}) >= 3
    small = SimulatorClient(local.url, max_batch=4)  # 6 requests -> chunks of 4 and 2, order kept
    assert small.reply_batch(reqs()) == singles
    assert small.reply_batch([]) == []


def test_4xx_not_retried(fake):
    f = fake([(400, {"error": "unknown preference 'x'; valid: ...", "field": "preference"})])
    c = SimulatorClient(f.url, retries=4, backoff=0.01)
    with pytest.raises(SimulatorError, match=r"\(400\): preference: unknown preference") as ei:
        c.reply(reqs()[0])
    assert f.count == 1 and ei.value.status == 400 and ei.value.field == "preference"


def test_5xx_retried_then_succeeds(fake):
    f = fake([(503, {"error": "busy"}), (502, {"error": "upstream: timeout"}), (200, OK_REPLY)])
    r = SimulatorClient(f.url, retries=4, backoff=0.01).reply(reqs()[0])
    assert f.count == 3 and r.reply == "1871." and r.effort == "low"


def test_gives_up_on_5xx_and_on_dead_servers(fake):
    f = fake([(500, {"error": "internal error"})])
    with pytest.raises(SimulatorError, match="kept failing after 3 tries: HTTP 500: internal error"):
        SimulatorClient(f.url, retries=2, backoff=0.01).reply(reqs()[0])
    assert f.count == 3
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SimulatorError, match=r"unreachable after 3 tries: .*python simulate.py.*--sim-url"):
        SimulatorClient(dead, retries=2, backoff=0.01).health()


def test_malformed_server_reply_is_an_error_not_a_reply(fake):
    f = fake([(200, dict(OK_REPLY, effort="extreme"))])
    with pytest.raises(SimulatorError, match="malformed reply: reply.effort"):
        SimulatorClient(f.url).reply(reqs()[0])
    f.script[:] = [(200, {"results": [OK_REPLY]})]
    with pytest.raises(SimulatorError, match="1 results for 6 items"):
        SimulatorClient(f.url).reply_batch(reqs())


def test_round_robin_and_failover(fake):
    a, b = fake([(200, OK_REPLY)]), fake([(200, OK_REPLY)])
    c = SimulatorClient(f"{a.url},{b.url}")
    for r in reqs()[:4]:
        c.reply(r)
    assert (a.count, b.count) == (2, 2)
    dead = f"http://127.0.0.1:{free_port()}"
    c = SimulatorClient([dead, a.url], retries=1, backoff=0.01)
    for r in reqs()[:4]:
        assert c.reply(r).reply == "1871."
    assert a.count == 6


def test_token():
    srv = make_server(make_user("rules"), "127.0.0.1", 0, token="tok").start()
    try:
        assert SimulatorClient(srv.url, token="tok").reply(reqs()[0]).parsed
        with pytest.raises(SimulatorError, match="401") as ei:
            SimulatorClient(srv.url, retries=3).reply(reqs()[0])
        assert ei.value.status == 401
    finally:
        srv.stop()


def test_survives_a_server_restart():
    """Stop the (subprocess) server mid-sequence, restart it on the same port: retries carry the client."""
    sim = start_local_simulator()
    port = int(sim.url.rsplit(":", 1)[1])
    c = SimulatorClient(sim.url, retries=8, backoff=0.05)
    before = [c.reply(r) for r in reqs()]
    sim.stop()
    box = {}
    threading.Thread(target=lambda: (time.sleep(0.3), box.setdefault("sim", start_local_simulator(port=port))),
                     daemon=True).start()
    try:
        after = [c.reply(r) for r in reqs()]  # the first call finds no server and retries until it is back
        assert after == before
    finally:
        for _ in range(100):
            if "sim" in box:
                break
            time.sleep(0.1)
        box["sim"].stop()


def test_start_local_simulator_errors_and_stop():
    with pytest.raises(SimulatorError, match="did not come up.*needs --base-url"):
        start_local_simulator(backend="openai")
    with start_local_simulator() as sim:
        assert sim.proc.poll() is None and SimulatorClient(sim.url).health()["ok"]
        proc = sim.proc
    assert proc.poll() is not None  # stopped by the context manager
    with pytest.raises(SimulatorError, match="unreachable"):
        SimulatorClient(sim.url, retries=0).health()


def test_bad_urls():
    with pytest.raises(ValueError, match="no simulator URL"):
        SimulatorClient(" , ")
    with pytest.raises(ValueError, match="http://"):
        SimulatorClient("localhost:8765")


def test_batch_split_under_the_body_cap():
    srv = make_server(make_user("rules"), "127.0.0.1", 0, max_body=3000).start()
    try:
        singles = [SimulatorClient(srv.url).reply(r) for r in reqs()]
        with pytest.raises(SimulatorError, match=r"\(413\).*3000-byte limit"):
            SimulatorClient(srv.url).reply_batch(reqs())  # one 6-item body is over 3000 bytes
        assert SimulatorClient(srv.url, max_body=3000).reply_batch(reqs()) == singles  # halved until it fits
    finally:
        srv.stop()
