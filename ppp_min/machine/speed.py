"""Throughput of the training phases: tokens/s, achieved GFLOP/s, and the share of the machine's matmul peak.

Contract
- ``matmul_trials(dtype, device, trials=5) -> tuple[float, ...]``: GFLOP/s of each of ``trials`` timed trials,
  after one untimed warm-up product; a trial times ``reps`` back-to-back n x n products (n = 1024 on a CPU,
  4096 on CUDA) written into one preallocated output, ``reps`` chosen from the warm-up so that a trial lasts
  >= ~20 ms (a single 1024 product on a GPU is mostly launch and sync). Capped at ~1 s: a slow dtype (bf16
  emulated on an AVX2 CPU) gives one trial, its warm-up.
- ``PeakMeter(dtype, device)``: ``measure(label)`` adds one session of trials; ``gflops`` is the MAX over
  every trial of every session. train.py measures a session at the start of the run and one at the end (a
  shared machine's load changes during a run; one measurement at the end of a run on a loaded machine once
  gave an MFU of 1.10) and reports ``throughput.peak_gflops`` with ``peak_trials``, ``peak_by_session`` and
  ``peak_method`` (``PEAK_METHOD``). Against a max over trials, a phase that ran at the speed of any timed
  trial has MFU <= 1; it is the denominator of an MFU-style figure, as nanoGPT prints one, measured rather
  than read from a spec sheet because a shared 2-core CPU has no fixed peak.
- ``fast_bf16(device) -> bool``: whether bf16 autocast pays here (decides the warm start's dtype by default).
- ``Meter(name)``: ``add(tokens, flops, seconds)`` accumulates; ``summary(peak)`` returns
  ``{name_tok_s, name_gflops, name_mfu}`` (python floats; MFU as a share of ``peak``).
- FLOPs are model FLOPs: 3 x ``presets.flops_per_token`` per trained token (forward + backward), counting
  the LM head on every position although the code computes it only where the loss is taken: the one way
  an MFU above 1 can still appear (the model FLOPs overstate the work done).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

TRIALS = 5
TRIAL_S = 0.02  # a trial lasts at least this long (reps products back to back)
BUDGET_S = 1.0  # a session stops once it has spent this long
PEAK_METHOD = (f"max over timed trials (best of {TRIALS} per session, each >= {TRIAL_S * 1000:.0f} ms of back-to-back "
               "n x n matmuls in the phase's dtype, n = 1024 on a CPU and 4096 on CUDA, after a warm-up), "
               "measured at the start and at the end of the run")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def matmul_trials(dtype: torch.dtype, device: torch.device | str = "cpu", trials: int = TRIALS,
                  n: int | None = None, budget_s: float = BUDGET_S) -> tuple[float, ...]:
    device = torch.device(device)
    n = n or (4096 if device.type == "cuda" else 1024)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    warm = _timed(lambda: torch.matmul(a, b, out=c), device)  # kernel selection, first touch of the pages
    flops = 2.0 * n ** 3
    if warm > budget_s:  # a slow dtype here: the warm-up is the one trial
        return (flops / warm / 1e9,)
    reps = max(1, min(256, math.ceil(TRIAL_S / max(warm, 1e-9))))
    out, spent = [], warm

    def product():
        for _ in range(reps):
            torch.matmul(a, b, out=c)
    for _ in range(trials):
        dt = _timed(product, device)
        out.append(flops * reps / dt / 1e9)
        spent += dt
        if spent > budget_s:
            break
    return tuple(out)


@dataclass
class PeakMeter:
    """The matmul peak of one dtype on one device: the max over every timed trial of every session."""
    dtype: torch.dtype
    device: torch.device | str = "cpu"
    sessions: dict = field(default_factory=dict)  # label ("start", "end") -> GFLOP/s of its trials

    def measure(self, label: str, trials: int = TRIALS) -> None:
        self.add(label, matmul_trials(self.dtype, self.device, trials))

    def add(self, label: str, trial_gflops) -> None:
        self.sessions[label] = tuple(self.sessions.get(label, ())) + tuple(trial_gflops)

    @property
    def trials(self) -> int:
        return sum(len(v) for v in self.sessions.values())

    @property
    def gflops(self) -> float:
        return max((x for v in self.sessions.values() for x in v), default=0.0)

    def by_session(self) -> dict:
        return {k: round(max(v), 1) for k, v in self.sessions.items() if v}


def fast_bf16(device: torch.device | str) -> bool:
    """Whether bf16 matmuls are fast here: CUDA with bf16 support, or a CPU with AVX-512 BF16 or AMX. A CPU
    without them emulates bf16 (measured on an AVX2-only AMD EPYC: 0.4 GFLOP/s against 10 in fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class Meter:
    """Running totals of one phase (``sft`` or ``update``)."""
    name: str
    tokens: float = 0.0
    flops: float = 0.0
    seconds: float = 0.0

    def add(self, tokens: float, flops: float, seconds: float) -> None:
        self.tokens += tokens
        self.flops += flops
        self.seconds += seconds

    def summary(self, peak_gflops: float) -> dict:
        if self.seconds <= 0:
            return {}
        gflops = self.flops / self.seconds / 1e9
        return {f"{self.name}_tok_s": round(self.tokens / self.seconds, 1),
                f"{self.name}_gflops": round(gflops, 2),
                f"{self.name}_mfu": round(gflops / peak_gflops, 4) if peak_gflops > 0 else None}
