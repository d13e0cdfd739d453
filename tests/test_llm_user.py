"""The LLM user against a fake OpenAI-compatible server over real HTTP: prompt, tags, retries, 502."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from ppp_min.userville.llm_user import LLMUser, UpstreamError, parse_tagged_reply
from ppp_min.userville.preferences import PREFERENCES
from ppp_min.userville.protocol import Exchange, Fact, ReplyRequest, UserTask
from ppp_min.userville.server import make_server

TASK = UserTask("funcloc", "Saving a report with an empty title crashes with KeyError in the exporter.", (
    Fact(1, "The crash happens when the title is empty.", ("title", "empty")),
    Fact(2, "Look at how the exporter builds its header.", ("hint",)),
    Fact(4, "The file is src/report/export.py.", ("file", "path")),
    Fact(5, "The function is export_header.", ("function",)),
))


def request(pref="concise_question", question="Which title triggers it?", history=()):
    return ReplyRequest(TASK, pref, question, tuple(history))


class FakeOpenAI:
    """Answers POST /v1/chat/completions from a script of (status, content) and records the bodies."""

    def __init__(self, script):
        self.script, self.bodies, self.headers = list(script), [], []
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers["Content-Length"])
                fake.bodies.append(json.loads(self.rfile.read(n)))
                fake.headers.append(dict(self.headers))
                status, content = fake.script.pop(0) if len(fake.script) > 1 else fake.script[0]
                if status == 200:
                    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                else:
                    body = json.dumps({"error": {"message": content}})
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    made = []

    def start(script):
        f = FakeOpenAI(script)
        made.append(f)
        return f

    yield start
    for f in made:
        f.close()


def test_tags_parsed_and_stripped_and_prompt_has_preference_and_tiers(fake):
    f = fake([(200, "It's the empty title, yeah.\n[Cost 1]\n[Reward 1]")])
    user = LLMUser(f.base_url, "sim-model", api_key="k-123", retries=0)
    hist = [Exchange("Is it a crash?", "Yes, it crashes.")]
    r = user.reply(request(history=hist))
    assert (r.reply, r.effort, r.cost, r.pref_followed, r.parsed) == (
        "It's the empty title, yeah.", "low", 1, True, True)
    body = f.bodies[0]
    assert body["model"] == "sim-model"
    assert f.headers[0]["Authorization"] == "Bearer k-123"
    system = body["messages"][0]["content"]
    assert body["messages"][0]["role"] == "system"
    assert PREFERENCES["concise_question"].text in system and PREFERENCES["concise_question"].rule in system
    # the tiers with their costs, least sensitive first, and the task facts by tier
    idx = [system.index(f"[Cost {t}]") for t in range(1, 6)]
    assert idx == sorted(idx)
    for fact in TASK.facts:
        assert fact.text in system
    assert TASK.precise_prompt in system
    assert "[Reward 1] or [Reward 0]" in system
    # history as alternating messages, then the question
    roles = [m["role"] for m in body["messages"][1:]]
    assert roles == ["user", "assistant", "user"]
    assert "Is it a crash?" in body["messages"][1]["content"]
    assert body["messages"][2]["content"] == "Yes, it crashes."
    assert "Which title triggers it?" in body["messages"][3]["content"]


def test_no_rule_preference_says_so_and_ignores_reward_tag(fake):
    f = fake([(200, "Sure, it's in the exporter file. [Cost 4] [Reward 0]")])
    r = LLMUser(f.base_url, "m", retries=0).reply(request(pref="no_preference"))
    assert (r.reply, r.effort, r.cost, r.pref_followed) == ("Sure, it's in the exporter file.", "high", 4, None)
    assert "No reward rule" in f.bodies[0]["messages"][0]["content"]


def test_amateur_does_not_hold_file_and_function():
    from ppp_min.userville.llm_user import build_system_prompt
    s = build_system_prompt(request(pref="amateur"))
    assert "src/report/export.py" not in s and "export_header" not in s
    assert "The crash happens when the title is empty." in s


@pytest.mark.parametrize("text,cost,parsed,effort,followed", [
    ("No tags at all here.", 3, False, "medium", None),          # missing cost tag -> medium, unparsed
    ("Hmm. [Cost 9]\n[Reward 1]", 3, False, "medium", True),     # cost out of range -> same
    ("Hmm. [Cost 0]", 3, False, "medium", None),
    ("The hint: look at the header. [cost: 2]", 2, True, "high", None),  # funcloc hint is high (Fig. 3)
    ("<think>cost 5?</think>I don't know. [Cost 3] [Reward 0]", 3, True, "medium", False),
])
def test_parse_tagged_reply(text, cost, parsed, effort, followed):
    r = parse_tagged_reply(text, "funcloc", judged=True)
    assert (r.cost, r.parsed, r.effort, r.pref_followed) == (cost, parsed, effort, followed)
    assert "[" not in r.reply and "think" not in r.reply


def test_research_tiers():
    r = parse_tagged_reply("It came out in the nineties. [Cost 3]", "research", judged=False)
    assert (r.cost, r.effort, r.parsed) == (3, "high", True)
    r = parse_tagged_reply("Whatever. [Cost 4]", "research", judged=False)
    assert (r.cost, r.effort, r.parsed) == (2, "medium", False)


def test_missing_tag_over_the_wire(fake):
    f = fake([(200, "I really couldn't say.")])
    r = LLMUser(f.base_url, "m", retries=0).reply(request())
    assert (r.reply, r.effort, r.cost, r.parsed, r.pref_followed) == (
        "I really couldn't say.", "medium", 3, False, None)


def test_question_cap_does_not_call_the_llm(fake):
    f = fake([(200, "should not be used [Cost 1]")])
    hist = [Exchange(f"q{i}?", f"a{i}") for i in range(4)]
    r = LLMUser(f.base_url, "m").reply(request(history=hist))
    assert f.bodies == [] and r.effort == "medium" and r.cost == 3 and r.parsed
    assert r.pref_followed is True  # "Which title triggers it?" is concise: judged by the rules judge
    r = LLMUser(f.base_url, "m").reply(request(history=hist, question="Could you please tell me which exact "
                                               "title you used when the export crashed on your machine?"))
    assert f.bodies == [] and r.pref_followed is False


def test_retries_5xx_and_429_then_succeeds(fake):
    f = fake([(503, "busy"), (429, "slow down"), (200, "Yes. [Cost 1] [Reward 1]")])
    r = LLMUser(f.base_url, "m", retries=2, backoff=0.01).reply(request())
    assert len(f.bodies) == 3 and r.reply == "Yes." and r.parsed


def test_gives_up_with_upstream_error(fake):
    f = fake([(500, "model exploded")])
    with pytest.raises(UpstreamError, match="500.*model exploded") as ei:
        LLMUser(f.base_url, "m", retries=2, backoff=0.01).reply(request())
    assert ei.value.status == 500 and len(f.bodies) == 3


def test_4xx_not_retried(fake):
    f = fake([(401, "bad key")])
    with pytest.raises(UpstreamError, match="401.*bad key"):
        LLMUser(f.base_url, "m", retries=3, backoff=0.01).reply(request())
    assert len(f.bodies) == 1


def test_unreachable_upstream():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(UpstreamError, match="unreachable after 2 tries"):
        LLMUser(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff=0.01, timeout=2).reply(request())


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="base-url"):
        LLMUser("localhost:8000", "m")
    with pytest.raises(ValueError, match="--model"):
        LLMUser("http://localhost:8000/v1", "")


def test_server_with_openai_backend(fake):
    f = fake([(200, "It's when the title is empty. [Cost 1] [Reward 0]")])
    srv = make_server(LLMUser(f.base_url, "m", retries=0), "127.0.0.1", 0).start()
    try:
        assert requests.get(srv.url + "/healthz").json()["backend"] == "openai"
        out = requests.post(srv.url + "/v1/reply", json=request().to_json()).json()
        assert out == {"reply": "It's when the title is empty.", "effort": "low", "cost": 1,
                       "pref_followed": False, "parsed": True}
        batch = {"items": [request(question=f"question {i}?").to_json() for i in range(5)]}
        res = requests.post(srv.url + "/v1/reply:batch", json=batch).json()["results"]
        assert len(res) == 5 and all(x["cost"] == 1 for x in res)
        asked = sorted(b["messages"][-1]["content"].split("?")[0] for b in f.bodies[1:])
        assert asked == sorted(f"The agent asks: question {i}" for i in range(5))
        f.script[:] = [(500, "upstream model crashed")]
        r = requests.post(srv.url + "/v1/reply", json=request().to_json())
        assert r.status_code == 502
        assert r.json()["error"].startswith("upstream: ") and "upstream model crashed" in r.json()["error"]
        assert "reply" not in r.json()
        r = requests.post(srv.url + "/v1/reply:batch", json=batch)
        assert r.status_code == 502 and "results" not in r.json()
    finally:
        srv.stop()


def test_vaguenize_cli(fake, tmp_path, capsys):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("simulate", Path(__file__).resolve().parents[1] / "simulate.py")
    simulate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(simulate)
    f = fake([(200, "  Exporting a report\ncrashes sometimes.  ")])
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"id": "t1", "precise_prompt": TASK.precise_prompt, "family": "funcloc"}) + "\n\n"
                   + json.dumps({"id": "t2", "precise_prompt": "Which painter born in 1871 won?"}) + "\n")
    args = [str(inp), str(out), "--base-url", f.base_url, "--model", "m"]
    assert simulate.main(["vaguenize", *args]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["t1", "t2"] and rows[0]["family"] == "funcloc"
    assert rows[0]["vague_prompt"] == "Exporting a report crashes sometimes."
    system, user = f.bodies[0]["messages"]
    assert "same intent" in system["content"] and "partial information" in system["content"]
    assert TASK.precise_prompt in user["content"]
    from ppp_min.userville.tasks import export_jsonl, import_jsonl, make_tasks
    made = make_tasks("funcloc", "train", 2, seed=3)
    export_jsonl(made, inp)  # the tasks JSONL of tasks.py round-trips with the new vague prompts
    assert simulate.main(["vaguenize", *args]) == 0
    back = import_jsonl(out)
    assert [t.vague_prompt for t in back] == ["Exporting a report crashes sometimes."] * 2
    assert [t.precise_prompt for t in back] == [t.precise_prompt for t in made]
    assert made[1].precise_prompt in f.bodies[-1]["messages"][1]["content"]
    inp.write_text(json.dumps({"id": "t1", "precise_prompt": "ok"}) + "\n" + json.dumps({"id": "t2"}) + "\n")
    assert simulate.main(["vaguenize", *args]) == 1
    assert f"{inp}:2: expected an object with a non-empty string `precise_prompt`" in capsys.readouterr().err
    f.script[:] = [(500, "down")]
    assert simulate.main(["vaguenize", *args, "--timeout", "5", "--retries", "0"]) == 1
    assert f"{inp}:1: the LLM failed" in capsys.readouterr().err


def _simulate():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("simulate", Path(__file__).resolve().parents[1] / "simulate.py")
    simulate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(simulate)
    return simulate


def test_vaguenize_checks_flag_bad_rewrites():
    sim = _simulate()
    precise = "Find the function to fix: a timeout in the pay module with a nested profile."
    assert sim.check_rewrite(precise, "Something times out with a profile.", ["pay"]) == []
    assert sim.check_rewrite(precise, "", ["pay"]) == ["empty"]
    assert sim.check_rewrite(precise, "A timeout in the pay area, fix it.", ["pay"]) == ["still states 'pay'"]
    assert sim.check_rewrite(precise, "A timeout in the payment area.", ["pay"]) == []  # whole words only
    assert sim.check_rewrite(precise, "Fix the timeout. Fix the timeout. Fix the timeout.", []) == ["repetitive"]
    rambling = "a profile times out and " * 5
    assert "repetitive" in sim.check_rewrite(precise, rambling, [])
    long = " ".join(f"word{i}" for i in range(40))
    assert sim.check_rewrite(precise, long, []) == ["longer than the precise prompt (40 vs 15 words)"]


def test_precise_only_details_come_from_the_task_line():
    from ppp_min.userville.tasks import make_tasks, task_to_json
    sim = _simulate()
    for fam in ("funcloc", "research"):
        t = make_tasks(fam, "train", 1, seed=0)[0]
        attrs = dict(next(it.attrs for it in t.catalog.items if it.key == t.gold[0]))
        want = [v for a, v in attrs.items() if a not in t.kept]
        assert want and sim.precise_only(task_to_json(t)) == want
        assert all(v in t.precise_prompt and v not in t.vague_prompt for v in want)
    assert sim.precise_only({"precise_prompt": "x", "precise_only": ["Pune", 3]}) == ["Pune"]
    assert sim.precise_only({"precise_prompt": "x"}) == []


def test_vaguenize_drops_flagged_rewrites_unless_asked_and_bounds_max_tokens(fake, tmp_path, capsys):
    from ppp_min.userville.tasks import make_tasks, task_to_json
    sim = _simulate()
    t = make_tasks("research", "train", 1, seed=0)[0]
    leak = sim.precise_only(task_to_json(t))[0]
    f = fake([(200, f"Find someone born in {leak}.")])
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps(task_to_json(t)) + "\n" + json.dumps({"id": "b", "precise_prompt": "Find a painter."})
                   + "\n")
    args = [str(inp), str(out), "--base-url", f.base_url, "--model", "m"]
    assert sim.main(["vaguenize", *args]) == 0
    cap = capsys.readouterr()
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["b"]  # the leaking line is not written
    assert f"{inp}:1: flagged (still states {leak!r})" in cap.err
    assert cap.out.strip().endswith(f"vaguenized 2 task(s): 1 kept, 1 flagged (not written; --keep-flagged "
                                    f"writes them) -> {out}")
    assert [b["max_tokens"] for b in f.bodies] == [sim.vaguenize_budget(t.precise_prompt), 32]
    assert sim.main(["vaguenize", *args, "--keep-flagged", "--max-tokens", "40"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["vaguenize_flags"] == [f"still states {leak!r}"] and "vaguenize_flags" not in rows[1]
    assert rows[0]["vague_prompt"] == f"Find someone born in {leak}."
    assert [b["max_tokens"] for b in f.bodies[2:]] == [40, 40]
    assert sim.main(["vaguenize", *args, "--max-tokens", "0"]) == 2
