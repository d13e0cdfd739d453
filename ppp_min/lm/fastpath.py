"""CPU speed tricks of the decoder, fenced off here so that model.py reads as the plain reference.

Each piece computes what a plain PyTorch form computes (named in its docstring): bit for bit (the mask,
the RoPE table) or to float rounding (`Linear`, `cached_attention`); tests/test_model.py checks each
against the plain form. Each exists only because it was measured faster on a 2-core CPU, mostly when
decoding (one new token per row), where a step is ~300 small ops and ~29 small matmuls and per-op
overhead is a large share of the time. 1 and 2 were measured with `python -m ppp_min.bench sampler`
(small preset, batch 16, fp32, 2 threads):

1. `Linear`: for <= 64 rows without autograd on CPU, (W x^T)^T instead of x W^T. The small fp32 matmuls
   of a decode step are bound by streaming the weights from L3, and MKL streams W unpacked in this form:
   the step's 29 matmuls went from 2.4 to 1.8 ms, ~10% faster decode at batch 16-64; no gain at 128 rows,
   hence the threshold.
2. `cached_attention`: attention over the KV cache. (a) Grouped-query attention as g*T query rows per kv
   head instead of SDPA's `enable_gqa` (15% cheaper at T = 1); (b) for one query per row (decode) on CPU,
   softmax(q k^T / sqrt(d) + mask) v as two matmuls: ~100 vs ~250 us per layer at batch 16 for SDPA's
   flash kernel. SDPA is kept for chunks (T > 1), where it is 2-3x faster than the matmuls.
3. `prepare_mask`: the bool mask made additive (0 / -inf) and tiled for 2(a) once per forward instead of
   in every layer: ~50 us each at batch 16, saved num_layers - 1 times per step.
4. `RopeTable`: cos / sin of every position computed once per device and gathered, instead of computing
   the angles and their cos / sin in every forward: ~11 vs ~130 us per decode step at batch 16.
(3 and 4 were timed alone, 1 thread, on a shared machine: read them as ratios. A quiet decode step at
batch 16 takes ~4.5-5 ms.)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Linear):
    """nn.Linear (F.linear: x W^T + b); for <= 64 rows without autograd on CPU it returns (W x^T)^T, a
    transposed view of the same values (trick 1)."""

    def forward(self, x):
        if x.dim() == 2 and x.shape[0] <= 64 and not torch.is_grad_enabled() and x.device.type == "cpu":
            if self.bias is None:
                return torch.mm(self.weight, x.t()).t()
            return torch.addmm(self.bias[:, None], self.weight, x.t()).t()  # one op: dtypes as F.linear's
        return super().forward(x)


def prepare_mask(mask: torch.Tensor, dtype: torch.dtype, n_rep: int) -> torch.Tensor:
    """Bool mask [B|1, 1, T, S] (True = may attend) -> the same mask as SDPA uses it (trick 3): additive
    0 / -inf in `dtype` (kept bool under autocast, where the compute dtype is not known here), then its
    query rows tiled `n_rep` times for `cached_attention`'s g*T query rows per kv head."""
    if not torch.is_autocast_enabled(mask.device.type):
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -math.inf)
    return mask.repeat(1, 1, n_rep, 1) if n_rep > 1 else mask


def cached_attention(q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """= F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, enable_gqa=True) (trick 2).
    q [B, nh, T, hd]; keys, vals [B, nkv, S, hd]; mask [B|1, 1, T or g*T, S], g = nh / nkv. Returns
    [B, nh, T, hd]."""
    B, nh, T, hd = q.shape
    nkv = keys.shape[1]
    g = nh // nkv
    # query heads h*g .. h*g+g-1 share kv head h (as enable_gqa pairs them): g*T query rows per kv head
    q = q.reshape(B, nkv, g * T, hd)
    if mask.shape[-2] != g * T:
        mask = mask.repeat(1, 1, g, 1)
    if T == 1 and mask.dtype == q.dtype and q.device.type == "cpu":  # decode: two matmuls
        s = torch.matmul(q, keys.transpose(-1, -2)).mul_(hd ** -0.5).add_(mask)
        y = torch.matmul(torch.softmax(s, dim=-1), vals)
    else:
        y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)
    return y.reshape(B, nh, T, hd)


class RopeTable:
    """cos / sin_signed rows for positions 0..n-1, made once per device by `rows_fn(arange(n))` and gathered
    (trick 4). A plain object, not a buffer: never saved, never cast, always fp32."""

    def __init__(self, rows_fn, max_positions: int):
        self.rows_fn = rows_fn  # positions [...] -> (cos, sin_signed), each [..., 1, hd]
        self.size = min(max_positions, 4096)  # a few MiB at most
        self.cos = self.sin_signed = None

    def __call__(self, positions: torch.Tensor, bound: int | None = None):
        """Rows at `positions` [B, T], each [B, T, 1, hd]. `bound` (> every position) sizes the table; the
        table is remade longer when a bound exceeds it. Without a bound it is read from the positions on
        CPU; elsewhere (where reading them is a device sync) the rows are computed directly."""
        if bound is None and positions.device.type == "cpu":
            bound = int(positions.max()) + 1 if positions.numel() else 0
        if bound is None:
            return self.rows_fn(positions)
        if self.cos is None or self.cos.device != positions.device or self.cos.shape[0] < bound:
            n = max(bound, self.size)
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable in training too
                self.cos, self.sin_signed = self.rows_fn(torch.arange(n, device=positions.device))
        return self.cos[positions], self.sin_signed[positions]
