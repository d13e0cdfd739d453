"""What a from-scratch preset adds to attention so that it can copy from its context (no Hugging Face
architecture has any of it; ``ModelConfig.smear_keys``, ``smear_window``, ``recency``).

Contract: pure functions of tensors that ``lm/model.py: Attention`` calls before RoPE (``smear``, ``taps``,
both reading the tokens before each one through ``past``)
or instead of its plain attention (``recent_attention``); with a ``KVCache`` they write and read the raw
keys / queries it keeps (``KVCache.kr``, ``KVCache.qr``), so cached decoding equals the full forward.

- *Smeared keys* (Olsson et al. 2022, "In-context learning and induction heads", §model analysis): each
  head's key at position p is sigmoid(a) k_p + (1 - sigmoid(a)) k_{p-1} (k_{-1} = 0), one learned a per kv
  head. A query can then match "the token before this key", so one layer forms an induction head (find the
  earlier occurrence of the current token, copy the token after it): copying from the context, which the
  agent needs for every search, is learned in hundreds of steps instead of not at all
  (docs/experiments.md#smeared-keys-and-copy-drills).
- *Taps* (``smear_window`` W > 1) widen that one-token match to W tokens: learned per-channel taps (a short
  causal depthwise convolution, as the short convolutions of H3 / Mamba before attention):
  k'_p = sum_{j=0..W} a_j * k_{p-j} and q'_t = sum_{j=0..W-1} b_j * q_{t-j} (elementwise, zero before
  position 0). A head whose channels pair q_{t-m} with k_{p-1-m} scores a match of the W tokens before p
  with the W tokens ending at t: "the file db/" finds the reply's "db/report.py", where "/" alone also finds
  every "db/..." of earlier search results. At init each rotary pair of channels takes one such offset, or
  W = 1's even mix (``init_taps``).
- *Recency* (``recency``): each head adds -softplus(r_h) * log(1 + t - s) to the score of query t on key s
  (a learned, log-distance form of ALiBi, Press et al. 2022), r_h = ``RECENCY_INIT`` at init (0.13). Among
  keys that match equally the head reads the most recent: "pay/price.py:" is followed by "check_price" in
  earlier search results and by "build_price" in the user's reply, and no window short of seven tokens tells
  them apart. This path attends with SDPA and a [B, heads, T, S] float mask (none of fastpath's tricks).
Measured: docs/experiments.md#a-wider-or-a-more-recent-match-smeared-keys-over-a-window-and-a-recency-bias.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RECENCY_INIT = -2.0  # the recency logit of every head at init (softplus: 0.13 per unit of log-distance)


def past(x, raw: str, layer: int, cache, positions, rows, n: int) -> list[torch.Tensor]:
    """[x_{p-1}, ..., x_{p-n}] for every token of x [B, T, H, hd]. Without a cache, the chunk's token j back,
    zero where position p - j < 0 (before a packed row's start); with one, ``KVCache.previous_raw`` on its
    ``raw`` tensor ("kr" or "qr"), which also keeps x for the next chunk."""
    if cache is not None:
        return cache.previous_raw(raw, layer, x, positions, rows, n)
    return [torch.cat([torch.zeros_like(x[:, :j]), x[:, :-j]], 1) * (positions >= j)[..., None, None].to(x.dtype)
            for j in range(1, n + 1)]


def smear(k, logit, layer: int, cache, positions, rows):
    """Smeared keys: sigmoid(a) k_p + (1 - sigmoid(a)) k_{p-1}, k_{-1} = 0; k [B, T, kv, hd], logit [kv, 1]."""
    (prev,) = past(k, "kr", layer, cache, positions, rows, 1)
    g = torch.sigmoid(logit).to(k.dtype)  # [kv, 1], broadcast over [B, T, kv, hd]
    return g * k + (1 - g) * prev


@torch.no_grad()
def init_taps(key_taps, query_taps):
    """Taps at init, by rotary pair (channels i and i + hd/2 rotate together): pair i belongs to group
    g = i mod (W + 1). Group 0 is W = 1's even mix (keys 1/2 this token + 1/2 the previous, queries this
    token); group m >= 1 pairs the query of token t - (m - 1) with the key of token p - m. Summed over the
    groups, a head's score is then a match of the W tokens ending at t with the W tokens before p from the
    first step: the drills train a W-token induction head instead of having to find one.
    key_taps [W + 1, kv, hd], query_taps [W, heads, hd], filled in place."""
    W, half = query_taps.shape[0], key_taps.shape[-1] // 2
    key_taps.zero_()
    query_taps.zero_()
    for i in range(half):
        g, ch = i % (W + 1), [i, i + half]
        if g == 0:
            key_taps[:2, :, ch] = 0.5
            query_taps[0, :, ch] = 1.0
        else:
            key_taps[g, :, ch] = 1.0
            query_taps[g - 1, :, ch] = 1.0


def taps(x, weights, raw: str, layer: int, cache, positions, rows):
    """sum_j weights[j] * x_{p-j} over the window; x [B, T, H, hd], weights [n, H, hd]; x_{p-j} from ``past``."""
    weights = weights.to(x.dtype)
    out = weights[0] * x
    for j, prev in enumerate(past(x, raw, layer, cache, positions, rows, weights.shape[0] - 1), 1):
        out = out + weights[j] * prev
    return out


def recent_attention(q, k, v, recency, layer: int, cache, positions, mask, rows):
    """Attention with the recency bias: q [B, nh, T, hd], k / v [B, T, nkv, hd], recency [nh] ->
    [B, nh, T, hd]. Key s sits at position s in the cache, at positions[b, s] within a chunk; ``mask`` as
    ``Attention.forward`` gets it (None: causal; bool, or additive with its rows tiled per query head)."""
    B, T = positions.shape
    if cache is None:
        keys, vals, kpos = k.transpose(1, 2), v.transpose(1, 2), positions  # [B, nkv, T, hd], [B, T]
        S = T
    else:
        S = mask.shape[-1]
        keys, vals = cache.update(layer, k, v, positions, rows, S=S)
        kpos = torch.arange(S, device=q.device).expand(B, S)
    if mask is None:  # a square chunk, causal
        allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()[None, None]
    elif mask.dtype == torch.bool:
        allowed = mask[:, :, :T]
    else:  # fastpath.prepare_mask's additive form; its first T rows are the chunk's (the rest repeat them)
        allowed = mask[:, :, :T] == 0
    dist = (positions[:, :, None] - kpos[:, None, :]).clamp(min=0).to(q.dtype)  # [B, T, S]
    bias = -F.softplus(recency.to(q.dtype))[None, :, None, None] * torch.log1p(dist)[:, None]
    bias = bias.masked_fill(~allowed, -math.inf)  # [B, nh, T, S]
    return F.scaled_dot_product_attention(q, keys.to(q.dtype), vals.to(q.dtype), attn_mask=bias, enable_gqa=True)
