"""The decoder's static KV cache: per layer, row and slot, the keys and values a chunk wrote.

Contract: ``KVCache(cfg, batch, max_len, device, dtype)`` allocates once; slot index == position; a row's
slots are written by ``Decoder.forward`` (``update``; ``previous_raw`` for a model with smeared keys) and
copied between rows by ``fork``; ``row_view(a, b)`` is rows [a, b) as a cache of their own, sharing storage.
"""
from __future__ import annotations

import torch

from ppp_min.lm.config import ModelConfig


class KVCache:
    """Static cache allocated once: `.k` / `.v` (and `.kr`) are [layers, batch, kv_heads, max_len, head_dim]
    tensors, so `.k[layer]` is the [batch, kv_heads, max_len, head_dim] view a layer writes and reads.
    Slot == position."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        if batch <= 0 or max_len <= 0:
            raise ValueError(f"KVCache needs batch > 0 and max_len > 0, got batch={batch}, max_len={max_len}")
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # smeared keys: the raw (unsmeared, unrotated) keys, which the next chunk's first token mixes in
        self.kr = torch.zeros(shape, device=device, dtype=dtype) if cfg.smear_keys else None
        # query taps (smear_window > 1): the raw queries of the window's earlier tokens
        wide = cfg.smear_keys and cfg.smear_window > 1
        qshape = (cfg.num_layers, batch, cfg.num_heads, max_len, cfg.head_dim)
        self.qr = torch.zeros(qshape, device=device, dtype=dtype) if wide else None
        self.batch, self.max_len = batch, max_len

    def tensors(self) -> list[torch.Tensor]:
        """Every per-slot tensor of the cache (k, v and, with smeared keys, the raw keys and queries)."""
        return [t for t in (self.k, self.v, self.kr, self.qr) if t is not None]

    def row_view(self, a: int, b: int) -> "KVCache":
        """Rows [a, b) as a cache of their own: views sharing this cache's storage."""
        view = KVCache.__new__(KVCache)
        view.k, view.v, view.batch, view.max_len = self.k[:, a:b], self.v[:, a:b], b - a, self.max_len
        view.kr = self.kr[:, a:b] if self.kr is not None else None
        view.qr = self.qr[:, a:b] if self.qr is not None else None
        return view

    def fork(self, src: torch.Tensor, dst: torch.Tensor, n: int) -> None:
        """Copy slots [0, n) of rows src into rows dst (all layers, every tensor)."""
        for t in self.tensors():
            for layer in t:
                layer[dst, :, :n] = layer[src, :, :n]

    def previous_raw(self, name: str, layer: int, x, positions, rows, n: int) -> list[torch.Tensor]:
        """Write the raw values x [B, T, H, hd] at their slots of ``name`` ("kr" or "qr"); return the raw
        values of the n tokens before each one, [x_{p-1}, ..., x_{p-n}], each [B, T, H, hd]: the chunk's own
        where they are in the chunk, the cache's slots before its first position otherwise (zero before
        position 0). A chunk's positions are consecutive, as everywhere slot == position."""
        c, ridx = getattr(self, name)[layer], _row_index(x, rows)
        back = positions[:, :1] - torch.arange(n, 0, -1, device=x.device)  # [B, n]: the n slots before the chunk
        before = c[ridx[:, None], :, back.clamp(min=0)].to(x.dtype)  # [B, n, H, hd]
        before = before * (back >= 0)[..., None, None].to(x.dtype)
        c[ridx[:, None], :, positions] = x.to(c.dtype)
        history = torch.cat([before, x], 1)  # [B, n + T, H, hd]
        T = x.shape[1]
        return [history[:, n - j:n - j + T] for j in range(1, n + 1)]

    def update(self, layer: int, k, v, positions, rows, S: int):
        """Write token (b, t) of k, v [B, T, kv, hd] into slot positions[b, t] of cache row rows[b] (rows
        None: row b), then return the keys and values of slots [0, S) of those rows, each [B, kv, S, hd]."""
        ck, cv, ridx = self.k[layer], self.v[layer], _row_index(k, rows)
        ck[ridx[:, None], :, positions] = k.to(ck.dtype)
        cv[ridx[:, None], :, positions] = v.to(cv.dtype)
        if rows is None:
            return ck[:, :, :S], cv[:, :, :S]
        return ck[rows, :, :S], cv[rows, :, :S]


def _row_index(k: torch.Tensor, rows) -> torch.Tensor:
    """The cache row of each of k's B rows: ``rows``, or 0..B-1 when it is None."""
    return rows if rows is not None else torch.arange(k.shape[0], device=k.device)
