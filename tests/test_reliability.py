"""Reliability: run directories, simulators that die with their parent, bounded API calls."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ppp_min.run.out_dir import prepare_run_dir  # noqa: E402

SIMULATE = os.path.join(ROOT, "simulate.py")


# ------------------------------------------------------------------------------------ run directories
def _old_run(d):
    (d / "model").mkdir(parents=True)
    (d / "model" / "model.safetensors").write_bytes(b"x")
    (d / "metrics.jsonl").write_text('{"phase": "rl"}\n')
    (d / "samples.jsonl").write_text('{"phase": "rl"}\n')
    (d / "checkpoint.safetensors").write_bytes(b"x")
    (d / "checkpoint.safetensors.tmp.4242").write_bytes(b"half")


def test_fresh_run_creates_or_accepts_a_directory_without_a_run(tmp_path):
    prepare_run_dir(str(tmp_path / "new" / "run"), resume=False, overwrite=False)
    assert (tmp_path / "new" / "run").is_dir()
    (tmp_path / "notes.txt").write_text("mine")  # other files are not a run: allowed, untouched
    prepare_run_dir(str(tmp_path), resume=False, overwrite=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_fresh_run_refuses_another_run_and_names_the_flags(tmp_path):
    _old_run(tmp_path)
    with pytest.raises(ValueError) as e:
        prepare_run_dir(str(tmp_path), resume=False, overwrite=False)
    msg = str(e.value)
    assert "\n" not in msg and "already holds a run" in msg and "--resume" in msg and "--overwrite" in msg
    assert (tmp_path / "metrics.jsonl").exists()  # nothing deleted


def test_overwrite_removes_only_the_old_run_and_refuses_unknown_files(tmp_path):
    _old_run(tmp_path)
    prepare_run_dir(str(tmp_path), resume=False, overwrite=True)
    assert list(tmp_path.iterdir()) == []
    _old_run(tmp_path)
    (tmp_path / "thesis.tex").write_text("do not delete")
    with pytest.raises(ValueError, match="not a run's .*thesis.tex.*nothing was deleted"):
        prepare_run_dir(str(tmp_path), resume=False, overwrite=True)
    assert (tmp_path / "thesis.tex").exists() and (tmp_path / "model" / "model.safetensors").exists()


def test_overwrite_unlinks_a_symlinked_run_dir_without_following_it(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "weights.bin").write_bytes(b"keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "model").symlink_to(precious, target_is_directory=True)
    prepare_run_dir(str(out), resume=False, overwrite=True)
    assert list(out.iterdir()) == [] and (precious / "weights.bin").read_bytes() == b"keep"


def test_resume_needs_a_checkpoint_and_touches_nothing(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint at .*run without --resume"):
        prepare_run_dir(str(tmp_path / "none"), resume=True, overwrite=False)
    assert not (tmp_path / "none").exists()
    _old_run(tmp_path)
    prepare_run_dir(str(tmp_path), resume=True, overwrite=False)
    assert (tmp_path / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match="pass only one"):
        prepare_run_dir(str(tmp_path), resume=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        prepare_run_dir(str(tmp_path / "file"), resume=False, overwrite=False)


# ------------------------------------------------------------------ simulators die with their parent
def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie (not yet reaped by init) has exited too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _wait_gone(pid: int, limit: float = 5.0) -> float:
    t0 = time.monotonic()
    while not _gone(pid):
        if time.monotonic() - t0 > limit:
            os.kill(pid, signal.SIGKILL)  # do not leak it past the test
            pytest.fail(f"simulator {pid} still alive {limit} s after its parent was SIGKILLed")
        time.sleep(0.05)
    return time.monotonic() - t0


def _parent_then_kill(script: str) -> float:
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        sim_pid = int(parent.stdout.readline())
    finally:
        parent.kill()  # SIGKILL: no atexit, no cleanup of any kind in the parent
        parent.wait()
        parent.stdout.close()
    return _wait_gone(sim_pid)


def test_embedded_simulator_exits_when_its_parent_is_sigkilled():
    script = (f"import sys, time; sys.path.insert(0, {ROOT!r})\n"
              "from ppp_min.userville.client import start_local_simulator\n"
              "sim = start_local_simulator()\nprint(sim.proc.pid, flush=True)\ntime.sleep(120)\n")
    assert _parent_then_kill(script) < 5.0


def test_simulator_started_from_a_short_lived_thread_outlives_the_thread_not_the_process():
    script = (f"import sys, threading, time; sys.path.insert(0, {ROOT!r})\n"
              "from ppp_min.userville.client import SimulatorClient, start_local_simulator\n"
              "box = {}\nt = threading.Thread(target=lambda: box.setdefault('sim', start_local_simulator()))\n"
              "t.start(); t.join(); time.sleep(0.5)\n"
              "assert SimulatorClient(box['sim'].url, retries=0).health()['ok']\n"
              "print(box['sim'].proc.pid, flush=True)\ntime.sleep(120)\n")
    assert _parent_then_kill(script) < 5.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_parent_death_signal_alone_stops_the_simulator():
    script = ("import os, subprocess, sys, time\n"
              f"p = subprocess.Popen([sys.executable, {SIMULATE!r}, 'serve', '--port', '0', '--parent-pid', "
              "str(os.getpid())], stdout=subprocess.PIPE, text=True)\n"
              "p.stdout.readline()\nprint(p.pid, flush=True)\ntime.sleep(120)\n")
    assert _parent_then_kill(script) < 5.0


@pytest.mark.skipif(os.name != "posix", reason="pass_fds is POSIX only")
def test_watched_pipe_alone_stops_the_simulator():
    r, w = os.pipe()
    sim = subprocess.Popen([sys.executable, SIMULATE, "serve", "--port", "0", "--watch-fd", str(r)],
                           stdout=subprocess.PIPE, text=True, pass_fds=(r,))
    os.close(r)
    try:
        assert "listening on" in sim.stdout.readline()
        time.sleep(0.3)
        assert sim.poll() is None  # the pipe open: it keeps serving
        os.close(w)  # what the kernel does for a parent that dies
        assert sim.wait(5) == 0
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
        sim.stdout.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_simulator_promptly(sig):
    """The handler only flips a flag (an Event.set() in a handler can deadlock the main thread's wait)."""
    sim = subprocess.Popen([sys.executable, SIMULATE, "serve", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert "listening on" in sim.stdout.readline()
        for _ in range(3):  # repeated signals are harmless
            sim.send_signal(sig)
        assert sim.wait(5) == 0
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
        sim.stdout.close()


# ------------------------------------------------------------------------- bounded API calls
class FakeChat:
    """An OpenAI-compatible /chat/completions: ``mode`` ok | length | trickle | stall | flood."""

    def __init__(self, mode="ok", content="<answer>nothing</answer>"):
        self.mode, self.content, self.bodies = mode, content, []
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                fake.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                try:
                    fake.answer(self)
                except OSError:  # the client gave up on us: expected for the endless modes
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def answer(self, h):
        if self.mode in ("ok", "length"):
            finish = "length" if self.mode == "length" else "stop"
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": self.content},
                                            "finish_reason": finish}]}).encode()
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        h.send_response(200)
        h.send_header("Content-Length", str(1 << 30))
        h.end_headers()
        h.wfile.write(b'{"choices": [{"message": {"content": "')
        h.wfile.flush()
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end:  # never finishes the body
            if self.mode == "trickle":
                h.wfile.write(b"a")
                h.wfile.flush()
                time.sleep(0.05)
            elif self.mode == "flood":
                h.wfile.write(b"a" * 65536)
            else:
                time.sleep(0.05)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server():
    made = []

    def start(*a, **kw):
        made.append(FakeChat(*a, **kw))
        return made[-1]

    yield start
    for f in made:
        f.close()


def test_every_chat_call_carries_max_tokens(chat_server):
    from ppp_min.evals.api_agent import APIAgent
    from ppp_min.userville.llm_user import ChatAPI, LLMUser
    from ppp_min.userville.protocol import Fact, ReplyRequest, UserTask
    from ppp_min.userville.server import make_user
    f = chat_server(content="Sure, it's the title. [Cost 1]")
    req = ReplyRequest(UserTask("funcloc", "A crash with an empty title.", (Fact(1, "The title is empty.",
                                                                                    ("title",)),)),
                       "no_preference", "Which title?", ())
    LLMUser(f.base_url, "m").reply(req)
    make_user("openai", f.base_url, "m", max_tokens=99).reply(req)
    ChatAPI(f.base_url, "m").complete([{"role": "user", "content": "hi"}], max_tokens=7)
    APIAgent(f.base_url, "m").chat.complete([{"role": "user", "content": "hi"}])
    assert [b["max_tokens"] for b in f.bodies] == [256, 99, 7, 64]


def test_eval_openai_agent_sends_its_max_tokens_flag(chat_server):
    import eval as eval_cli
    f = chat_server(content="<answer>nothing</answer>")
    rc = eval_cli.main(["--tasks", "1", "--prefs", "no_preference", "--family", "funcloc", "--agent", "openai:m",
                        "--agent-base-url", f.base_url, "--agent-max-tokens", "17"])
    assert rc == 0 and f.bodies and all(b["max_tokens"] == 17 for b in f.bodies)


def test_a_reply_cut_by_the_budget_is_a_reply(chat_server):
    from ppp_min.userville.llm_user import ChatAPI
    f = chat_server("length", content="<search>exporter ti")
    assert ChatAPI(f.base_url, "m").complete([{"role": "user", "content": "hi"}]) == "<search>exporter ti"
    f.content = None  # a reasoning model that spent the whole budget thinking: an empty turn, not an error
    assert ChatAPI(f.base_url, "m").complete([{"role": "user", "content": "hi"}]) == ""


@pytest.mark.parametrize("mode", ["trickle", "stall"])
def test_a_server_that_never_finishes_cannot_hold_a_call_past_its_timeout(chat_server, mode):
    from ppp_min.evals.api_agent import AgentError, APIAgent
    from ppp_min.userville.agent_env import EpisodeState
    from ppp_min.userville.tasks import make_tasks
    f = chat_server(mode)
    agent = APIAgent(f.base_url, "m", timeout=1.0, retries=0)
    state = EpisodeState(make_tasks("funcloc", "test", 1, seed=0)[0], "no_preference", True)
    t0 = time.monotonic()
    with pytest.raises(AgentError) as e:
        agent(state)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.8, elapsed
    assert "within 1 s" in str(e.value) and "\n" not in str(e.value)


def test_retries_of_an_endless_server_are_bounded_too(chat_server):
    from ppp_min.userville.llm_user import ChatAPI, UpstreamError
    f = chat_server("trickle")
    t0 = time.monotonic()
    with pytest.raises(UpstreamError, match="after 2 tries.*within 0.5 s"):
        ChatAPI(f.base_url, "m", timeout=0.5, retries=1, backoff=0.1).complete([{"role": "user", "content": "x"}])
    assert time.monotonic() - t0 < 2 * 0.5 + 0.1 + 0.8


def test_an_endless_flood_hits_the_size_limit(chat_server):
    from ppp_min.userville.llm_user import ChatAPI, UpstreamError
    f = chat_server("flood")
    t0 = time.monotonic()
    with pytest.raises(UpstreamError, match="larger than 1048576 bytes"):
        ChatAPI(f.base_url, "m", timeout=20, retries=0, max_bytes=1 << 20).complete([{"role": "user", "content": "x"}])
    assert time.monotonic() - t0 < 10
