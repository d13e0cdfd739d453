"""Throughput of the training phases: tokens/s, achieved GFLOP/s, and the share of the machine's matmul peak.

Contract
- ``matmul_peak_gflops(dtype, device) -> float``: the machine's measured matmul throughput in that dtype
  (square matmuls of 1024, best of a few timed repeats after a warm-up; measured once per process and
  (dtype, device) pair, ~0.3 s). It is the denominator of the MFU-style figure, as nanoGPT prints one; here
  it is measured rather than read from a spec sheet, because a shared 2-core CPU has no fixed peak.
- ``fast_bf16(device) -> bool``: whether bf16 autocast pays here (decides the warm start's dtype by default).
- ``Meter(name)``: ``add(tokens, flops, seconds)`` accumulates; ``summary(peak)`` returns
  ``{name_tok_s, name_gflops, name_mfu}`` (python floats; MFU in [0, 1] of ``peak``).
- FLOPs are model FLOPs: 3 x ``presets.flops_per_token`` per trained token (forward + backward), counting
  the LM head on every position although the code computes it only where the loss is taken.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

_PEAKS: dict = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device | str = "cpu", n: int = 1024,
                       repeats: int = 5) -> float:
    device = torch.device(device)
    key = (dtype, str(device), n)
    if key not in _PEAKS:
        g = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        times = []
        for _ in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            times.append(time.perf_counter() - t0)
            if sum(times) > 1.0:  # a slow dtype here (emulated bf16): one timing is enough
                break
        best = min(times[1:]) if len(times) > 1 else times[0]  # the first product warms up the kernels
        _PEAKS[key] = 2.0 * n ** 3 / best / 1e9
    return _PEAKS[key]


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
