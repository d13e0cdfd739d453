"""eval.py and ppp_min.evals.report / ppp_min.evals.api_agent: metric definitions, baselines, API agents, curves, errors."""

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ppp_min.evals.report import build_report, curves_markdown, eval_markdown, load_run, reports_json
from ppp_min.userville.agent_env import EpisodeStats
from ppp_min.userville.agent_env import QuestionStat
from ppp_min.userville.skills import request_words

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import eval as eval_cli  # noqa: E402  (the CLI module at the repo root)


def ep(family, pref, score, questions=(), vague=True):
    qs = tuple(QuestionStat(turn=i, cost=c, effort=e, pref_followed=f) for i, (c, e, f) in enumerate(questions))
    return EpisodeStats(family=family, is_vague=vague, preference=pref, score=score, questions=qs,
                        n_turns=len(qs) + 1, answered=True)


# ------------------------------------------------------------------------------ metric definitions
def hand_built():
    return [
        # funcloc: ask_ok = (c >= 0), pref_ok defined only when asked or penalised (paper §6.3)
        ep("funcloc", "concise_question", 1.0, [(1, "low", True)]),  # c = +0.05 ok; pref ok
        ep("funcloc", "no_preference", 0.5),  # c = -0.1 (vague, no ask, s < 1); pref undefined (none kind)
        ep("funcloc", "concise_question", 0.0),  # c = -0.1; judged pref but never asked: undefined
        ep("funcloc", "answer_more", 1.0),  # c = 0 (s = 1) ok; f = -3: defined and failed
        # research
        ep("research", "capital", 1.0, [(3, "high", False)]),  # c = -0.9; f = -0.5 failed
        ep("research", "capital", 0.0, [(1, "low", True)]),  # c = +0.05 ok; pref ok
        ep("research", "json", 0.0, [(2, "medium", True)]),  # c = -0.05 (level 2, no level-1 bonus): not ok; pref ok
        # precise prompts: reported apart, never in the Table 2 cells
        ep("funcloc", "no_preference", 1.0, [(1, "low", None)], vague=False),
        ep("research", "no_preference", 1.0, vague=False),
    ]


def test_report_metrics_by_hand():
    r = build_report("hand", hand_built())
    f, s = r.families["funcloc"], r.families["research"]
    assert (f.productivity, f.proactivity, f.personalization) == (62.5, 50.0, 50.0)
    assert s.productivity == pytest.approx(100 / 3)
    assert s.proactivity == pytest.approx(100 / 3)  # only the low-effort question passes
    assert s.personalization == pytest.approx(200 / 3)  # capital: fail, ok; json: ok
    assert r.avg == pytest.approx((62.5 + 50 + 50 + 100 / 3 + 100 / 3 + 200 / 3) / 6)  # Avg = mean of six
    vp = r.vague_precise
    assert (vp["funcloc"].ask_vague, vp["funcloc"].ask_precise) == (25.0, 100.0)
    assert (vp["research"].ask_vague, vp["research"].ask_precise) == (100.0, 0.0)
    assert (vp["funcloc"].productivity_precise, vp["research"].productivity_vague) == (100.0, pytest.approx(100 / 3))
    assert r.questions["funcloc"] == {"low": 0.25, "medium": 0.0, "high": 0.0, "total": 0.25}
    assert r.questions["research"]["high"] == pytest.approx(1 / 3)
    assert r.per_preference == {"no_preference": None, "concise_question": 100.0, "answer_more": 0.0,
                                "capital": 50.0, "json": 100.0}
    assert (r.seen.productivity, r.seen.personalization) == (62.5, 50.0)  # the funcloc episodes
    assert r.unseen.personalization == pytest.approx(200 / 3)
    assert r.n_episodes == 9
    md = eval_markdown([r])
    assert f"| hand | {r.avg:.2f} | 62.50 | 50.00 | 50.00 | 33.33 | 33.33 | 66.67 |" in md
    assert "| no_preference | seen | – |" in md  # undefined prints as –, never 0 or nan
    js = reports_json([r], {"seed": 0})["agents"]["hand"]
    assert js["funcloc"] == {"productivity": 62.5, "proactivity": 50.0, "personalization": 50.0}
    assert js["avg"] == pytest.approx(r.avg)
    json.dumps(js)  # serialisable


def test_avg_over_defined_cells_only():
    # One family, personalization undefined everywhere (no_preference): Avg is the mean of what exists.
    r = build_report("one", [ep("funcloc", "no_preference", 1.0), ep("funcloc", "no_preference", 0.0)])
    assert r.families["funcloc"].personalization is None
    assert "research" not in r.families
    assert r.avg == pytest.approx((50.0 + 50.0) / 2)
    assert "| one | 50.00 | 50.00 | 50.00 | – | – | – | – |" in eval_markdown([r])


# ------------------------------------------------------------------------------ CLI
def run_cli(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_help():
    p = run_cli("--help")
    assert p.returncode == 0
    for flag in ("--agent", "--tasks", "--prefs", "--family", "--json", "--plots", "--max-turns", "--sim-url",
                 "--agent-base-url", "curves", "--eval-tasks", "--eval-split", "--eval-batch", "--samples",
                 "--agent-temperature", "--eval-temperature"):
        assert flag in p.stdout
    c = run_cli("curves", "--help")
    assert c.returncode == 0 and "--bins" in c.stdout


def test_subprocess_json_parses(tmp_path):
    out = tmp_path / "out.json"
    p = run_cli("--tasks", "2", "--json", str(out))
    assert p.returncode == 0, p.stderr
    obj = json.loads(out.read_text())
    assert list(obj["agents"]) == ["never_ask", "lazy", "oracle"]
    for a in obj["agents"].values():
        assert set(a["funcloc"]) == {"productivity", "proactivity", "personalization"} and "avg" in a
        assert a["n_episodes"] == 2 * 2 * 20 + 2 * 2  # vague x 20 preferences + one precise per task
    assert p.stdout.count("| never_ask |") >= 3 and "Avg | funcloc Prod" in p.stdout
    assert [ln.split(":")[0] for ln in p.stderr.splitlines()] == ["[eval] never_ask", "[eval] lazy", "[eval] oracle"]


def test_scripted_baselines_guard_the_environment(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert eval_cli.main(["--tasks", "12", "--json", str(out), "--agent", "oracle", "--agent", "never_ask",
                          "--agent", "lazy"]) == 0
    agents = json.loads(out.read_text())["agents"]
    for fam in ("funcloc", "research"):
        assert all(v >= 95 for v in agents["oracle"][fam].values()), agents["oracle"][fam]
        assert 15 <= agents["never_ask"][fam]["productivity"] <= 50  # vague prompt: 2-4 candidates, top hit
        assert agents["lazy"][fam]["proactivity"] == 0  # asking for the answer outright is never proactive
        assert agents["oracle"]["vague_precise"][fam]["ask_precise"] == 0  # precise prompt: no question
    assert agents["oracle"]["questions"]["funcloc"]["high"] == 0 < agents["lazy"]["questions"]["funcloc"]["high"]
    # same seed, same figures
    out2 = tmp_path / "c.json"
    assert eval_cli.main(["--tasks", "12", "--json", str(out2), "--agent", "oracle", "--agent", "never_ask",
                          "--agent", "lazy"]) == 0
    assert json.loads(out2.read_text())["agents"] == agents


# ------------------------------------------------------------------------------ OpenAI-compatible agents
class FakeChat(http.server.BaseHTTPRequestHandler):
    """A chat endpoint playing scripted agents by model name: `searcher` (search the request, answer the
    top hit: the never_ask script), `asker` (ask for details, then give up), `broken` (no content)."""
    seen: list = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeChat.seen.append((self.path, self.headers.get("Authorization"), body))
        msgs = body["messages"]
        last = msgs[-1]["content"]
        if body["model"] == "searcher":
            if last.startswith("[search] "):
                top = last[len('[search] '):].split(': ')[0].split('. ', 1)[1]  # "1. KEY: attributes"
                reply = f"I found it. <answer>{top}</answer>"
            else:
                reply = f"<search>{request_words(msgs[1]['content'])}</search>"
        elif body["model"] == "asker":
            reply = "<answer>no idea</answer>" if last.startswith("[user] ") else "<ask>Can you give me more details?</ask>"
        else:
            reply = None
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_chat():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeChat)
    FakeChat.seen = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_openai_agent_against_fake_server(fake_chat, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = tmp_path / "api.json"
    rc = eval_cli.main(["--tasks", "3", "--prefs", "no_preference,capital", "--json", str(out),
                        "--agent", "never_ask", "--agent", "openai:searcher", "--agent", "openai:asker",
                        "--agent-base-url", fake_chat])
    assert rc == 0
    agents = json.loads(out.read_text())["agents"]
    # the API agent playing the never_ask script over HTTP scores exactly like the built-in one
    for fam in ("funcloc", "research"):
        assert agents["openai:searcher"][fam] == agents["never_ask"][fam]
        assert agents["openai:asker"]["vague_precise"][fam]["ask_vague"] == 100.0
        assert agents["openai:asker"][fam]["productivity"] == 0.0
        assert agents["openai:asker"]["questions"][fam]["low"] > 0  # "more details" is a low-effort question
    path, auth, body = FakeChat.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test" and body["temperature"] == 0.0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "User preference:" in body["messages"][1]["content"]
    later = [b for _, _, b in FakeChat.seen if b["model"] == "searcher" and len(b["messages"]) == 4]
    assert later and [m["role"] for m in later[0]["messages"]] == ["system", "user", "assistant", "user"]
    n_eps = 2 * 3 * 2 + 2 * 3
    assert sum(b["model"] == "searcher" for _, _, b in FakeChat.seen) == 2 * n_eps  # search, then answer


def test_openai_agent_errors_are_one_line_exit_1(fake_chat, capsys):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()
    rc = eval_cli.main(["--tasks", "1", "--prefs", "no_preference", "--agent", "openai:x", "--agent-retries", "0",
                        "--agent-base-url", f"http://127.0.0.1:{closed}/v1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("eval.py: error: agent openai:x:") and "unreachable" in err[-1]
    assert not any(ln.startswith("[eval] openai:x") for ln in err)  # no results reported for a failed agent
    rc = eval_cli.main(["--tasks", "1", "--prefs", "no_preference", "--agent", "openai:broken",
                        "--agent-base-url", fake_chat])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "without choices[0].message.content" in err[0]


def test_unreachable_agent_subprocess_exit_code():
    p = run_cli("--tasks", "1", "--agent", "openai:m", "--agent-retries", "0",
                "--agent-base-url", "http://127.0.0.1:9/v1")
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args, needle", [
    (["--agent", "no/such/dir"], "not one of never_ask|lazy|oracle|skills"),
    (["--agent", "oracle", "--agent", "oracle"], "given twice"),
    (["--tasks", "0"], "--eval-tasks must be >= 1"),
    (["--eval-batch", "0"], "--eval-batch must be an integer >= 1"),
    (["--temperature", "-1"], "--eval-temperature must be a finite number >= 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1"),
    (["--prefs", "bogus"], "unknown preference"),
    (["--agent", "openai:"], "needs a model name"),
    (["--sim-url", "ftp://x"], "simulator"),
])
def test_bad_flags_exit_2(args, needle, capsys):
    assert eval_cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_not_a_model_dir_exit_2(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert eval_cli.main(["--agent", str(tmp_path), "--tasks", "1"]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_model_dir_agent(tmp_path):
    torch = pytest.importorskip("torch")
    from ppp_min.lm.model import Decoder
    from ppp_min.lm.presets import preset_config
    from ppp_min.weights.hf_io import save_pretrained
    from ppp_min.lm.tokenizer import train_bpe
    tok = train_bpe(["<search>find the function</search> <answer>x</answer>"] * 4, 300)
    torch.manual_seed(0)
    model = Decoder(preset_config("tiny", tok.vocab_size, eos_token_ids=tok.eos_ids, pad_token_id=tok.pad_id))
    d = tmp_path / "model"
    save_pretrained(model, d)
    tok.save(d)
    out = tmp_path / "m.json"
    assert eval_cli.main(["--agent", str(d), "--tasks", "1", "--prefs", "capital", "--max-new-tokens", "8",
                          "--max-turns", "2", "--json", str(out)]) == 0
    a = json.loads(out.read_text())["agents"][str(d)]
    assert a["n_episodes"] == 4 and 0 <= a["funcloc"]["productivity"] <= 100


# ------------------------------------------------------------------------------ training curves
def write_run(tmp_path, extra=""):
    recs = [{"phase": "sft", "step": 0, "loss": 1.0}]
    for s, (lo, me, hi) in enumerate([(0.0, 0.4, 0.1), (0.2, 0.6, 0.1), (0.6, 0.2, 0.0), (1.0, 0.0, 0.0)], 1):
        recs.append({"phase": "rl", "step": s, "reward": 0.1 * s, "ask_ratio": 0.25 * s, "questions_low": lo,
                     "questions_medium": me, "questions_high": hi, "productivity": 0.5})
    recs.append({"phase": "eval", "label": "sft", "personalization/json": 50.0, "personalization_unseen": 40.0})
    recs.append({"phase": "eval", "label": "final", "personalization/json": 100.0, "personalization/joke": 0.0,
                 "personalization_unseen": 80.0, "personalization_seen": 90.0})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n" + extra)
    return tmp_path


def test_curves_tables_by_hand(tmp_path, capsys):
    run = load_run(write_run(tmp_path))
    assert len(run.rl) == 4 and [e.label for e in run.evals] == ["sft", "final"]
    md = curves_markdown(run, bins=2)
    assert "| 1-2 | 0.100 | 0.500 | 0.100 | 0.700 | 0.375 | 0.150 |" in md  # means of steps 1 and 2
    assert "| 3-4 | 0.800 | 0.100 | 0.000 | 0.900 | 0.875 | 0.350 |" in md
    assert "| json | 50.00 | 100.00 |" in md and "| joke | – | 0.00 |" in md
    assert "| unseen (all) | 40.00 | 80.00 |" in md and "| seen (all) | – | 90.00 |" in md
    assert eval_cli.main(["curves", str(tmp_path), "--bins", "2"]) == 0
    assert capsys.readouterr().out.strip() == md.strip()


def test_curves_errors(tmp_path, capsys):
    assert eval_cli.main(["curves", str(tmp_path / "nope")]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err
    write_run(tmp_path, extra='{"phase": "rl", "step": 5}\n')
    assert eval_cli.main(["curves", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.jsonl:8:" in err[0]


def test_plots_or_one_line_skip(tmp_path, capsys):
    assert eval_cli.main(["--tasks", "1", "--prefs", "no_preference", "--agent", "oracle",
                          "--plots", str(tmp_path / "p")]) == 0
    err = capsys.readouterr().err
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plots: skipped (matplotlib is not installed)" in err and not (tmp_path / "p").exists()
    else:
        assert sorted(os.listdir(tmp_path / "p")) == ["personalization.png", "questions.png", "table2.png"]
