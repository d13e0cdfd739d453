"""Benchmark: the simulator server (rules backend) in a subprocess, the client in this process.

`python -m ppp_min.bench simulator [--seconds S] [--batch N ...]` prints a table, then one JSON line with
``batched_qps`` (questions/s through ``/v1/reply:batch`` at the headline batch size), ``single_qps``,
``single_p50_ms`` and ``single_p99_ms`` (sequential ``/v1/reply`` calls over one keep-alive connection).
Targets: >= 5,000 q/s batched, p99 <= 10 ms single. Requests are realistic: UserVille tasks of both
families (``tasks.py``), all 20 preferences, short histories (0-3 exchanges), questions of every kind
(low-effort detail questions, lazy "which file/function", unanswerable ones, format-styled ones).
"""

from __future__ import annotations

import argparse
import json
import random
import time

from ppp_min.userville.client import SimulatorClient, start_local_simulator
from ppp_min.userville.families.registry import FAMILIES
from ppp_min.userville.preferences import PREFERENCES
from ppp_min.userville.protocol import Exchange, ReplyRequest

QUESTIONS = (
    "Which part of the system is affected?", "What happens exactly when it fails?", "Which file is it in?",
    "What is the name of the function?", "Who is it?", "WHAT ERROR DO YOU SEE?",
    "Is it about the input or the output?", "Could you tell me which year and which city this is about?",
    "Which option fits: A) parsing B) export C) network?", '{"question": "which module is it?"}',
    "Quale modulo è coinvolto?", "Do you like pizza?", "Which field, and what prize was won?",
    "Can you give me a hint about where to look?",
)


def _user_tasks(n: int, seed: int):
    from ppp_min.userville.tasks import make_tasks
    return [t.user for family in FAMILIES for t in make_tasks(family, "train", n // 2, seed)]


def make_requests(n: int, seed: int = 0) -> list[ReplyRequest]:
    rng = random.Random(seed)
    tasks = _user_tasks(64, seed)
    prefs = list(PREFERENCES)
    reqs = []
    for i in range(n):
        hist = tuple(Exchange(rng.choice(QUESTIONS), "I think so.") for _ in range(rng.randrange(4)))
        reqs.append(ReplyRequest(rng.choice(tasks), prefs[i % len(prefs)], rng.choice(QUESTIONS), hist,
                                 rng.randrange(3)))
    return reqs


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m ppp_min.bench simulator", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256, 1024],
                    help="batch sizes to measure (default 64 256 1024)")
    ap.add_argument("--headline-batch", type=int, default=256,
                    help="batch size reported as batched_qps (default 256 = 32 prompts x group 8)")
    args = ap.parse_args(argv)
    reqs = make_requests(4096)
    rows = []
    with start_local_simulator() as sim, SimulatorClient(sim.url, retries=0) as client:
        client.reply_batch(reqs[:256])  # warm-up
        for r in reqs[:50]:
            client.reply(r)
        qps_by_batch = {}
        for bs in args.batch:
            done, t0, i = 0, time.perf_counter(), 0
            while time.perf_counter() - t0 < args.seconds:
                chunk = [reqs[(i + j) % len(reqs)] for j in range(bs)]
                client.reply_batch(chunk)
                done, i = done + bs, i + bs
            dt = time.perf_counter() - t0
            qps_by_batch[bs] = done / dt
            rows.append((f"batch {bs}", done, dt, qps_by_batch[bs], 1000 * dt / (done / bs)))
        lat, t0, i = [], time.perf_counter(), 0
        while time.perf_counter() - t0 < args.seconds:
            s = time.perf_counter()
            client.reply(reqs[i % len(reqs)])
            lat.append(time.perf_counter() - s)
            i += 1
        dt = time.perf_counter() - t0
        rows.append(("single", len(lat), dt, len(lat) / dt, 1000 * dt / len(lat)))
    print(f"{'mode':<12}{'questions':>10}{'seconds':>9}{'q/s':>10}{'ms/call':>9}")
    for name, n, dt, qps, ms in rows:
        print(f"{name:<12}{n:>10}{dt:>9.2f}{qps:>10.0f}{ms:>9.2f}")
    p50, p99 = 1000 * _percentile(lat, 50), 1000 * _percentile(lat, 99)
    print(f"single latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms (targets: >= 5000 q/s batched, p99 <= 10 ms)")
    head = args.headline_batch if args.headline_batch in qps_by_batch else max(qps_by_batch)
    print(json.dumps({"bench": "simulator", "backend": "rules", "headline_batch": head,
                      "batched_qps": round(qps_by_batch[head], 1),
                      "batched_qps_by_size": {str(k): round(v, 1) for k, v in qps_by_batch.items()},
                      "single_qps": round(len(lat) / dt, 1), "single_p50_ms": round(p50, 3),
                      "single_p99_ms": round(p99, 3)}))
    return 0
