"""Helpers of the real-process tests: train.py / eval.py / simulate.py as child processes, read line by line."""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the tiny run of tests/test_train.py: a warm start of seconds, RL steps of a fraction of a second
TINY = ["--model", "tiny", "--copy-steps", "2", "--pretrain-steps", "2", "--sft-steps", "6", "--sft-batch", "4", "--prompts-per-step", "2",
        "--group-size", "2", "--train-tasks", "4", "--prefs", "no_preference,json,one_question",
        "--max-turns", "3", "--max-new-tokens", "12", "--micro-batch", "3", "--lr", "1e-3", "--threads", "1"]
# train.py with every agent's first turn replaced by a question, so every rollout calls the simulator (a tiny
# model this briefly trained rarely asks on its own); everything else is the real CLI in a real process
ASKING = ("import sys; sys.path.insert(0, {root!r})\n"
          "import ppp_min.rl.rollout as ro\n"
          "real = ro.step_all\n"
          "def step_all(states, texts, *a, **kw):\n"
          "    texts = ['<ask>Which file is it?</ask>' if st.turn == 0 else t for st, t in zip(states, texts)]\n"
          "    return real(states, texts, *a, **kw)\n"
          "ro.step_all = step_all\n"
          "import train; sys.exit(train.main(sys.argv[1:]))\n")


def train_cmd(*args, asking: bool = False) -> list[str]:
    if asking:
        return [sys.executable, "-c", ASKING.format(root=ROOT), *args]
    return [sys.executable, os.path.join(ROOT, "train.py"), *args]


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PPP_SIM_TOKEN")}
    return {**e, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


class Proc:
    """A child process whose stdout and stderr lines are collected as they come."""

    def __init__(self, cmd, **kw):
        self.p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=kw.pop("env", env()), **kw)
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, pattern: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                tail = "\n".join(self.lines[-20:])
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{tail}")
            if line is None:
                raise AssertionError(f"exited ({self.p.wait()}) before {pattern!r}:\n" + "\n".join(self.lines[-20:]))
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def finish(self, timeout: float = 180.0) -> int:
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        while (line := self._q.get(timeout=10)) is not None:
            self.lines.append(line)
        return rc

    def signal(self, sig=signal.SIGINT):
        self.p.send_signal(sig)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def errors(self) -> list[str]:
        """The lines a CLI prints when it stops: ``train.py: ...`` / ``eval.py: ...``."""
        return [ln for ln in self.lines if ln.startswith(("train.py:", "eval.py:"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int, *extra) -> Proc:
    sim = Proc([sys.executable, os.path.join(ROOT, "simulate.py"), "serve", "--port", str(port), *extra])
    sim.wait_for("listening on", 30)
    return sim


def run(cmd, timeout: float = 180.0, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=kw.pop("env", env()),
                          **kw)


def one_line(p: subprocess.CompletedProcess) -> str:
    """The single stderr line of a CLI that refused (no traceback)."""
    lines = [ln for ln in p.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    return lines[0]
