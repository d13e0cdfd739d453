"""The simulator server over real HTTP: routes, every class of bad input -> its 4xx, fuzzing, auth, CLI."""

import copy
import json
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from ppp_min import __version__
from ppp_min.userville.preferences import PREFERENCES
from ppp_min.userville.protocol import Reply
from ppp_min.userville.server import ConfigError, make_server, make_user

ROOT = Path(__file__).resolve().parents[1]

GOOD = {
    "task": {"family": "funcloc",
             "precise_prompt": "Exporting a report with an empty title crashes with KeyError.",
             "facts": [{"tier": 1, "text": "It crashes when the title is empty.", "keywords": ["title", "empty"]},
                       {"tier": 2, "text": "Look at how the header is built.", "keywords": ["hint"]},
                       {"tier": 4, "text": "The file is src/report/export.py.", "keywords": ["file", "path"]},
                       {"tier": 5, "text": "The function is export_header.", "keywords": ["function"]}]},
    "preference": "one_question",
    "history": [{"question": "Does it crash?", "reply": "Yes."}],
    "question": "Which title makes it crash?",
}


@pytest.fixture(scope="module")
def url():
    srv = make_server(make_user("rules"), "127.0.0.1", 0).start()
    yield srv.url
    srv.stop()


@pytest.fixture(scope="module")
def http():
    with requests.Session() as s:
        yield s


def with_(path, value):
    """GOOD with the JSON path (a tuple of keys/indices) set to value (or deleted if value is DELETE)."""
    obj = copy.deepcopy(GOOD)
    cur = obj
    for k in path[:-1]:
        cur = cur[k]
    if value is DELETE:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return obj


DELETE = object()


def test_healthz_and_preferences(url, http):
    assert http.get(url + "/healthz").json() == {"ok": True, "backend": "rules", "version": __version__}
    prefs = http.get(url + "/v1/preferences").json()
    assert [p["name"] for p in prefs] == list(PREFERENCES)
    assert {p["judge"] for p in prefs} == {"none", "function", "judge"}
    assert prefs[1] == {"name": "concise_question", "text": PREFERENCES["concise_question"].text,
                        "split": "seen", "judge": "judge"}


def test_reply_and_tolerated_content_type(url, http):
    r = http.post(url + "/v1/reply", json=GOOD)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    reply = Reply.from_json(r.json())
    assert reply.parsed and reply.reply
    # curl -d sends application/x-www-form-urlencoded: tolerated, the body is parsed as JSON anyway
    r2 = http.post(url + "/v1/reply", data=json.dumps(GOOD), headers={"Content-Type": "text/plain"})
    assert r2.status_code == 200 and r2.json() == r.json()


BAD = [  # (body, field the error must name, a word the message must contain)
    (b'{"task": {"family"', "body", "JSON"),
    (b"\xff\xfe\x00garbage", "body", "JSON"),
    (b"[1, 2]", "body", "object"),
    (with_(("task",), DELETE), "task", "object"),
    (with_(("task", "family"), 7), "task.family", "funcloc"),
    (with_(("task", "family"), "cooking"), "task.family", "research"),
    (with_(("task", "precise_prompt"), ""), "task.precise_prompt", "empty"),
    (with_(("task", "facts"), {"tier": 1}), "task.facts", "list"),
    (with_(("task", "facts", 0, "tier"), "1"), "task.facts[0].tier", "integer"),
    (with_(("task", "facts", 0, "tier"), 3), "task.facts[0].tier", "nothing"),
    (with_(("task", "facts", 2, "keywords"), "file"), "task.facts[2].keywords", "list"),
    (with_(("preference",), "be_nice"), "preference", "one_question"),  # lists the valid names
    (with_(("preference",), None), "preference", "valid"),
    (with_(("question",), DELETE), "body.question", "missing"),
    (with_(("question",), ["why?"]), "body.question", "string"),
    (with_(("question",), "x" * 9000), "body.question", "longer"),
    (with_(("history",), "none"), "history", "list"),
    (with_(("history", 0), ["q", "a"]), "history[0]", "object"),
    (with_(("history", 0, "reply"), 5), "history[0].reply", "string"),
    (with_(("searches_before",), -1), "searches_before", "non-negative"),
    (with_(("searches_before",), True), "searches_before", "integer"),
]


@pytest.mark.parametrize("body,field,word", BAD)
def test_bad_input_is_400_naming_the_field(url, http, body, field, word):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = http.post(url + "/v1/reply", data=data)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["field"] == field and word.lower() in err["error"].lower(), err


def test_batch_errors(url, http):
    bad = copy.deepcopy(GOOD)
    bad["preference"] = "nope"
    r = http.post(url + "/v1/reply:batch", json={"items": [GOOD, bad]})
    assert r.status_code == 400 and r.json()["field"] == "items[1].preference"
    r = http.post(url + "/v1/reply:batch", json={"items": {"0": GOOD}})
    assert r.status_code == 400 and r.json()["field"] == "items"
    r = http.post(url + "/v1/reply:batch", json=[GOOD])
    assert r.status_code == 400 and r.json()["field"] == "items"
    r = http.post(url + "/v1/reply:batch", json={"items": [{}] * 1025})
    assert r.status_code == 400 and "1024" in r.json()["error"]
    r = http.post(url + "/v1/reply:batch", json={"items": []})
    assert r.status_code == 200 and r.json() == {"results": []}


def test_batch_order_preserved(url, http):
    items = []
    for i, (pref, q) in enumerate([("one_question", "Which title makes it crash?"),
                                   ("capital", "WHICH FILE IS IT IN?"),
                                   ("commas", "what is the function name"),
                                   ("no_preference", "Is there a hint?"),
                                   ("concise_question", "Which file, which function, which line?")] * 4):
        it = copy.deepcopy(GOOD)
        it["preference"], it["question"] = pref, q
        it["history"] = [{"question": f"q{j}?", "reply": "ok"} for j in range(i % 6)]
        items.append(it)
    singles = [http.post(url + "/v1/reply", json=it).json() for it in items]
    assert len({json.dumps(s, sort_keys=True) for s in singles}) >= 3  # a reordering would show
    batch = http.post(url + "/v1/reply:batch", json={"items": items}).json()["results"]
    assert batch == singles


def raw(url, request: bytes) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_size_length_method_and_path_errors(url, http):
    status, err = raw(url, b"POST /v1/reply HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n\r\n")
    assert status == 413 and err["field"] == "body" and "limit" in err["error"]
    status, err = raw(url, b"POST /v1/reply HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 411 and err["field"] == "Content-Length"
    status, err = raw(url, b"POST /v1/reply HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert status == 411
    status, err = raw(url, b"POST /v1/reply HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    assert status == 400 and err["field"] == "Content-Length"
    status, err = raw(url, b"FOO /v1/reply HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 405
    status, err = raw(url, b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n")
    assert status == 400
    r = http.get(url + "/v1/reply")
    assert r.status_code == 405 and r.json()["field"] == "method"
    assert http.put(url + "/v1/reply:batch", json={}).status_code == 405
    assert http.delete(url + "/healthz").status_code == 405
    r = http.get(url + "/v2/reply")
    assert r.status_code == 404 and r.json()["field"] == "path"
    assert http.get(url + "/healthz").json()["ok"]  # the pooled session still works


def _mutants(rng: random.Random):
    """≥ 1000 random or malformed bodies: bytes, truncations, wrong types at every field, junk, unicode."""
    good = json.dumps(GOOD).encode()
    junk = [None, True, 0, -1, 10 ** 30, 1e308, float("nan"), "", "é" * 50, "\u202e\ud7ff", "\ud800", [], {}, [[[]]],
            {"a": {"b": [1, {"c": None}]}}, "x" * 10000, [GOOD], -2 ** 63]
    paths = [(), ("task",), ("task", "family"), ("task", "precise_prompt"), ("task", "facts"),
             ("task", "facts", 0), ("task", "facts", 0, "tier"), ("task", "facts", 0, "text"),
             ("task", "facts", 0, "keywords"), ("task", "facts", 0, "keywords", 0), ("preference",),
             ("history",), ("history", 0), ("history", 0, "question"), ("history", 0, "reply"),
             ("question",), ("searches_before",)]
    for p in paths[1:]:
        for v in junk:
            yield json.dumps(with_(p, v)).encode()
            yield json.dumps({"items": [GOOD, with_(p, v)]}).encode()
    for i in range(len(good)):  # every truncation point of a valid body, sampled
        if rng.random() < 0.25:
            yield good[:i]
    for _ in range(200):
        yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    for _ in range(150):  # valid JSON, random structure: junk with the right keys in the wrong places
        obj = with_(rng.choice(paths[1:]), rng.choice(junk))
        obj[rng.choice(["task", "question", "zzz", "items"])] = _tree(rng, 3)
        yield json.dumps(obj).encode()
    yield b"[" * 100000 + b"]" * 100000  # deep nesting
    yield b'{"a": ' + b"9" * 5000 + b"}"  # an integer over Python's digit limit
    yield "{\"question\": \"\u00e9\u4e2d\U0001F600\"}".encode("utf-16")
    yield b"1e999999"


def _tree(rng: random.Random, depth: int):
    r = rng.random()
    if depth == 0 or r < 0.3:
        return rng.choice([None, False, rng.randint(-10 ** 20, 10 ** 20), rng.random() * 1e300,
                           "".join(chr(rng.randrange(1, 0x10FFFF)) for _ in range(rng.randrange(8)))])
    if r < 0.6:
        return [_tree(rng, depth - 1) for _ in range(rng.randrange(4))]
    keys = ["family", "facts", "tier", "text", "question", "preference", "history", "reply", "x"]
    return {rng.choice(keys): _tree(rng, depth - 1) for _ in range(rng.randrange(4))}


def test_fuzz_never_5xx(url, http):
    rng = random.Random(0)
    bodies = list(_mutants(rng))
    assert len(bodies) >= 1000
    statuses = {}
    for i, body in enumerate(bodies):
        path = "/v1/reply:batch" if i % 3 == 0 else "/v1/reply"
        r = http.post(url + path, data=body)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (body[:200], r.text)
        if r.status_code != 200:
            assert set(r.json()) == {"error", "field"}
    assert set(statuses) <= {200, 400} and statuses[400] > 900
    assert http.get(url + "/healthz").json()["ok"]


def test_token_auth():
    srv = make_server(make_user("rules"), "127.0.0.1", 0, token="s3cret").start()
    try:
        assert requests.get(srv.url + "/healthz").status_code == 200  # health never needs the token
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
            r = requests.post(srv.url + "/v1/reply", json=GOOD, headers=headers)
            assert r.status_code == 401 and r.json()["field"] == "Authorization"
            assert requests.get(srv.url + "/v1/preferences", headers=headers).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert requests.post(srv.url + "/v1/reply", json=GOOD, headers=ok).status_code == 200
        assert requests.get(srv.url + "/v1/preferences", headers=ok).status_code == 200
    finally:
        srv.stop()


def test_public_bind_needs_a_token():
    with pytest.raises(ConfigError, match="without --token"):
        make_server(make_user("rules"), "0.0.0.0", 0)
    p = subprocess.run([sys.executable, str(ROOT / "simulate.py"), "--host", "0.0.0.0", "--port", "0"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "refusing to bind 0.0.0.0 without --token" in p.stderr
    assert "Traceback" not in p.stderr


def test_cli_serves_logs_one_line_per_error_and_stops_cleanly():
    proc = subprocess.Popen([sys.executable, str(ROOT / "simulate.py"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ppp_min simulator (rules) listening on http://127.0.0.1:")
        url = line.split()[-1]
        assert requests.post(url + "/v1/reply", json=GOOD).status_code == 200
        assert requests.post(url + "/v1/reply", data=b"{oops").status_code == 400
        assert requests.get(url + "/nowhere").status_code == 404
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2 and "400 POST /v1/reply" in lines[0] and "404 GET /nowhere" in lines[1]
    assert "Traceback" not in err


def test_a_bug_is_500_and_logged_with_its_traceback(capfd):
    class Broken:
        name = "broken"

        def reply(self, req):
            raise KeyError("oops")

    srv = make_server(Broken(), "127.0.0.1", 0).start()
    try:
        r = requests.post(srv.url + "/v1/reply", json=GOOD)
        assert r.status_code == 500 and "internal error" in r.json()["error"] and "reply" not in r.json()
        assert requests.get(srv.url + "/healthz").json()["backend"] == "broken"
    finally:
        srv.stop()
    err = capfd.readouterr().err
    assert "500 POST /v1/reply" in err and "Traceback" in err and "KeyError: 'oops'" in err
