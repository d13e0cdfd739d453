"""Simulator outages and tokens, with real processes: a restarted simulator is waited for (bounded, one line
while waiting), one that stays down stops the run with a checkpoint to resume from; --sim-token / PPP_SIM_TOKEN."""

import json
import os
import signal
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from procs import TINY, Proc, env, free_port, one_line, run, serve, train_cmd  # noqa: E402

from ppp_min.run.checkpoint import read_meta  # noqa: E402
from ppp_min.userville.client import SimulatorClient, SimulatorError  # noqa: E402
from ppp_min.userville.protocol import Fact, ReplyRequest, UserTask  # noqa: E402

EVAL = [sys.executable, "eval.py", "--tasks", "1", "--prefs", "no_preference", "--family", "funcloc",
        "--agent", "oracle"]


def _req():
    task = UserTask("funcloc", "A crash with an empty title.", (Fact(1, "The title is empty.", ("title",)),))
    return ReplyRequest(task, "no_preference", "Which title?", ())


def _rl_steps(out):
    return [json.loads(ln)["step"] for ln in open(out / "metrics.jsonl") if '"phase": "rl"' in ln]


class Sims:
    """Simulator processes started by a test; all stopped (and continued, if stopped) at its end."""

    def __init__(self):
        self.all = []

    def start(self, port, *extra):
        self.all.append(serve(port, *extra))
        return self.all[-1]

    def close(self):
        for s in self.all:
            if s.p.poll() is None:
                s.p.send_signal(signal.SIGCONT)
            s.kill()


@pytest.fixture
def sims():
    s = Sims()
    yield s
    s.close()


def test_the_client_waits_out_an_outage_for_retry_s_then_gives_up_in_one_line():
    lines = []
    c = SimulatorClient(f"http://127.0.0.1:{free_port()}", retry_s=1.0, on_wait=lines.append)
    t0 = time.monotonic()
    with pytest.raises(SimulatorError) as e:
        c.reply(_req())
    assert 1.0 <= time.monotonic() - t0 < 3.0
    assert "not answering for 1 s" in str(e.value) and "Connection refused" in str(e.value)
    assert len(lines) == 1 and "retrying for up to 1 s" in lines[0]


def test_the_client_rides_out_a_restart_and_a_stopped_server_is_bounded(sims):
    port = free_port()
    sim = sims.start(port)
    lines = []
    c = SimulatorClient(f"http://127.0.0.1:{port}", retry_s=30, on_wait=lines.append)
    assert c.reply(_req()).effort == "low"
    sim.kill()
    restart = threading.Timer(2.0, lambda: sims.start(port))
    restart.start()
    assert c.reply(_req()).effort == "low"  # waited for the new server
    restart.join()  # its Proc is in sims.all (the server answers before serve() returns)
    assert len(lines) == 2 and "not answering" in lines[0] and "answering again after" in lines[1]
    stopped = SimulatorClient(f"http://127.0.0.1:{port}", timeout=(1.0, 1.0), retry_s=2)
    assert stopped.health()["ok"]
    sims.all[-1].p.send_signal(signal.SIGSTOP)  # accepts connections (the kernel does), never answers
    t0 = time.monotonic()
    with pytest.raises(SimulatorError, match="no answer within"):
        stopped.reply(_req())
    assert time.monotonic() - t0 < 5.0  # the first read timeout, then 2 s of retries


def test_training_waits_for_a_restarted_simulator_and_finishes(sims, tmp_path):
    port, out = free_port(), tmp_path / "run"
    sim = sims.start(port)
    p = Proc(train_cmd(*TINY, "--rl-steps", "6", "--eval-tasks", "0", "--sim-url", f"http://127.0.0.1:{port}",
                       "--out", str(out), asking=True))
    try:
        p.wait_for(r"^step 2/6")
        sim.kill()
        p.wait_for(r"is not answering .*retrying for up to 120 s", 60)
        time.sleep(3)  # down for 3 s
        sims.start(port)
        assert p.finish(120) == 0, "\n".join(p.lines[-20:])
    finally:
        p.kill()
    assert any("answering again" in ln for ln in p.lines) and not any("Traceback" in ln for ln in p.lines)
    assert _rl_steps(out) == [1, 2, 3, 4, 5, 6]


def test_a_simulator_that_stays_stopped_ends_the_run_with_a_checkpoint_to_resume(sims, tmp_path):
    port, out = free_port(), tmp_path / "run"
    sim = sims.start(port)
    args = [*TINY, "--rl-steps", "6", "--eval-tasks", "0", "--sim-url", f"http://127.0.0.1:{port}", "--out", str(out)]
    p = Proc(train_cmd(*args, "--sim-timeout", "1", "--sim-retry-s", "2", asking=True))
    try:
        p.wait_for(r"^step 2/6")
        sim.p.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        assert p.finish(60) == 1
    finally:
        p.kill()
    assert time.monotonic() - t0 < 15
    [err] = p.errors()
    assert "no answer within" in err and "stopped with a checkpoint at RL step" in err and "--resume" in err
    assert not any("Traceback" in ln for ln in p.lines)
    step = read_meta(str(out / "checkpoint.safetensors"))["step"]
    assert err.count(f"RL step {step} ") == 1 and _rl_steps(out) == list(range(1, step + 1))
    sim.p.send_signal(signal.SIGCONT)
    q = run(train_cmd(*args, "--resume", asking=True))
    assert q.returncode == 0, q.stderr[-2000:]
    assert _rl_steps(out) == [1, 2, 3, 4, 5, 6]


def test_a_token_protected_simulator_needs_the_token_and_says_so_before_the_warm_start(sims, tmp_path):
    port = free_port()
    sims.start(port, "--token", "s3cret")
    url = f"http://127.0.0.1:{port}"
    args = [*TINY, "--rl-steps", "1", "--eval-tasks", "0", "--sim-url", url]
    p = run(train_cmd(*args, "--out", str(tmp_path / "a")))
    line = one_line(p)
    assert p.returncode == 2 and "(401)" in line and "--sim-token" in line and "pretrain" not in p.stdout
    ok = run(train_cmd(*args, "--out", str(tmp_path / "b"), asking=True), env=env(PPP_SIM_TOKEN="s3cret"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    e = run(EVAL + ["--sim-url", url])
    assert e.returncode == 2 and "(401)" in one_line(e)
    e = run(EVAL + ["--sim-url", url, "--sim-token", "s3cret"])
    assert e.returncode == 0, e.stderr[-2000:]
