"""The decoder: a Llama-family transformer (Llama / Qwen2 / Qwen3 variants) with a static KV cache.

Contract
- `ModelConfig` (frozen; defined in `ppp_min.config`, re-exported here) fully describes the network;
  `preset_config(name, vocab_size)` gives the from-scratch sizes `tiny` (tests), `small` (CPU training,
  the default) and `base` (one GPU) — they and `count_params` / `flops_per_token` live in
  `ppp_min.presets` and are re-exported here.
- `Decoder.forward(ids, positions=None, cache=None, mask=None, rows=None, hidden_only=False)`:
  * no cache: attention inside the chunk, causal unless `mask` (Bool[B,1,T,T], True = may attend) is given;
  * with a `KVCache`: every layer first writes the k/v of token (b, t) into slot `positions[b, t]` of cache
    row `rows[b]` (rows default to 0..B-1, then B must equal cache.batch), then attends over the cache
    slots [0, S) with S = mask.shape[-1]. Slot index == position. The caller builds the mask; without one
    the mask is "slot s visible iff s <= position", S = max position + 1 (costs one host sync).
  * the mask may broadcast over B ([1,1,T,S]); each of its query rows must allow at least one slot
    (an all-False row gives NaN, as in SDPA);
  * returns logits Float[B,T,V], or the final-normed hidden state [B,T,H] when `hidden_only`
    (`model.logits(hidden)` applies the LM head, so a trainer can gather log-probs in chunks).
- `token_logprobs(logits, targets, temperature)`: log softmax(logits / T)[target] computed as
  gathered logit - logsumexp (no full log_softmax copy), in fp32.
- Device-agnostic (fp32 on CPU, bf16 autocast on CUDA). Loading/saving HF directories lives in
  `ppp_min.hf_io`; `load_pretrained` / `save_pretrained` are re-exported here.

Deliberately left out: dropout, sliding-window attention, rope types other than default and llama3,
attention biases other than Qwen2's q/k/v bias, tensor parallelism.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ppp_min.config import ARCHS, ModelConfig, RopeScaling  # noqa: F401 (re-exported)


class KVCache:
    """Static cache allocated once: `.k` / `.v` are (layers, batch, kv_heads, max_len, head_dim) tensors,
    so `.k[layer]` is the (batch, kv_heads, max_len, head_dim) view a layer writes and reads, and a fork
    of row i into rows js is `cache.k[:, js] = cache.k[:, i:i+1]` (all layers at once)."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        if batch <= 0 or max_len <= 0:
            raise ValueError(f"KVCache needs batch > 0 and max_len > 0, got batch={batch}, max_len={max_len}")
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.batch, self.max_len = batch, max_len


class Linear(nn.Linear):
    """nn.Linear; for <= 64 rows without autograd on CPU (decode) it returns (W x^T)^T, a transposed view:
    MKL then streams W instead of packing it, ~10% faster decode at batch 16-64 (bench sampler)."""

    def forward(self, x):
        if x.dim() == 2 and x.shape[0] <= 64 and not torch.is_grad_enabled() and x.device.type == "cpu":
            if self.bias is None:
                return torch.mm(self.weight, x.t()).t()
            return torch.addmm(self.bias[:, None], self.weight, x.t()).t()  # one op: dtypes as F.linear's
        return super().forward(x)


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019, eq. 4): x / sqrt(mean(x^2) + eps) * w, in fp32, cast back."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        if x.dtype == torch.float32:  # already fp32: the same ops without the no-op casts
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(cfg: ModelConfig, device=None) -> torch.Tensor:
    """theta^(-2i/d), i = 0..d/2-1 (RoFormer eq. 15); with Llama-3 scaling, frequencies whose wavelength
    exceeds original_max/low_freq_factor are divided by `factor`, those shorter than
    original_max/high_freq_factor are kept, and the band between is interpolated linearly in
    original_max/wavelength."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d))
    s = cfg.rope_scaling
    if s is not None:
        wavelen = 2 * math.pi / inv
        low_wl = s.original_max_position_embeddings / s.low_freq_factor
        high_wl = s.original_max_position_embeddings / s.high_freq_factor
        smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor)
        mid = (1 - smooth) * inv / s.factor + smooth * inv
        inv = torch.where(wavelen < high_wl, inv, torch.where(wavelen > low_wl, inv / s.factor, mid))
    return inv.float()


def apply_rope(x, cos, sin_signed):
    """RoPE (RoFormer eq. 34), rotate-half pairing (i, i + d/2): x * cos + rotate_half(x) * sin with
    rotate_half(x) = cat(-x2, x1) for x = cat(x1, x2) [..., d]. The sign is folded into
    sin_signed = cat(-sin[:d/2], sin[d/2:]) so the swap of the halves is one roll by d/2; (-a) * s ==
    a * (-s) exactly, so this equals the textbook form bit for bit (tests/test_model.py)."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin_signed


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        b = cfg.attention_bias
        self.q_proj = Linear(cfg.hidden_size, self.nh * self.hd, bias=b)
        self.k_proj = Linear(cfg.hidden_size, self.nkv * self.hd, bias=b)
        self.v_proj = Linear(cfg.hidden_size, self.nkv * self.hd, bias=b)
        self.o_proj = Linear(self.nh * self.hd, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
        self.qk_norm = cfg.qk_norm

    def forward(self, x, cos, sin_signed, layer: int, cache, positions, mask, rows):
        """x: (B, T, H) or flattened (B*T, H), output alike; cos / sin_signed: `Decoder.rope(positions)`,
        each (B, T, 1, hd); mask: bool, or additive float (0 / -inf) in q's dtype."""
        B, T = positions.shape
        x2 = x.reshape(B * T, x.shape[-1])  # 2-D matmuls: fewer small ops per projection
        q = self.q_proj(x2).view(B, T, self.nh, self.hd)
        k = self.k_proj(x2).view(B, T, self.nkv, self.hd)
        v = self.v_proj(x2).view(B, T, self.nkv, self.hd)
        if self.qk_norm:  # Qwen3: RMSNorm over head_dim, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        # RoPE in the (B, T, heads, hd) layout, so that k stays contiguous for the cache write
        cos, sin_signed = cos.to(q.dtype), sin_signed.to(q.dtype)
        q, k = apply_rope(q, cos, sin_signed), apply_rope(k, cos, sin_signed)
        q = q.transpose(1, 2)  # (B, heads, T, hd)
        if cache is None:
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            if mask is None:
                # square chunk, no cache: top-left causal == bottom-right causal. GQA (Ainslie et al.
                # 2023): each group of num_heads/num_kv_heads query heads shares one kv head.
                y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        else:
            ck, cv = cache.k[layer], cache.v[layer]
            # write token (b, t) into slot positions[b, t] of cache row rows[b]; k, v are (B, T, kv, hd)
            ridx = rows if rows is not None else torch.arange(B, device=x.device)
            ck[ridx[:, None], :, positions] = k.to(ck.dtype)
            cv[ridx[:, None], :, positions] = v.to(cv.dtype)
            S, g = mask.shape[-1], self.nh // self.nkv
            keys, vals = (ck[:, :, :S], cv[:, :, :S]) if rows is None else (ck[rows, :, :S], cv[rows, :, :S])
            # GQA as g*T query rows per kv head (heads h*g..h*g+g-1 share kv head h, as enable_gqa pairs
            # them): cheaper on CPU than SDPA's enable_gqa. Decoder tiles the mask to match, once.
            if mask.shape[-2] != g * T:
                mask = mask.repeat(1, 1, g, 1)
            q, keys, vals = q.reshape(B, self.nkv, g * T, self.hd), keys.to(q.dtype), vals.to(q.dtype)
            if T == 1 and mask.dtype == q.dtype and x.device.type == "cpu":
                # decode on CPU: softmax(q k^T / sqrt(d) + mask) v as two matmuls, ~2x faster than SDPA's
                # flash kernel for one query per row (measured; SDPA wins for chunks, T > 1)
                s = torch.matmul(q, keys.transpose(-1, -2)).mul_(self.hd ** -0.5).add_(mask)
                y = torch.matmul(torch.softmax(s, dim=-1), vals)
            else:
                y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)
            y = y.reshape(B, self.nh, T, self.hd)
        return self.o_proj(y.transpose(1, 2).reshape(B * T, self.nh * self.hd)).view(x.shape)


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020, eq. 6, Swish_1 = SiLU): down(silu(gate(x)) * up(x)); no biases."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, layer, cache, positions, mask, rows):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layer, cache, positions, mask, rows)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Pre-norm decoder. Parameter names equal Hugging Face's minus the "model." prefix."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._rope_tab = None  # (cos, sin_signed) rows per position, see rope()
        self.reset_parameters()
        self.tie_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self):
        """Normal(0, 0.02) weights, residual-branch outputs (o_proj, down_proj) scaled by 1/sqrt(2L)
        (GPT-2 init), zero biases, unit norms."""
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, std / math.sqrt(2 * self.config.num_layers))
            else:
                p.normal_(0.0, std)

    def rope(self, positions, bound: int | None = None):
        """(cos, sin_signed) at `positions` [B, T], each (B, T, 1, hd) fp32: rows of a per-device table
        (a plain attribute: never saved, stays fp32) of max(min(max_pos, 4096), bound) positions, remade
        longer when `bound` (> every position) exceeds it. Without a bound: read from the positions on
        CPU; elsewhere (a device sync) the rows are computed directly."""
        if bound is None and positions.device.type == "cpu":
            bound = int(positions.max()) + 1 if positions.numel() else 0
        if bound is None:
            return self._rope_rows(positions)
        tab = self._rope_tab
        if tab is None or tab[0].device != positions.device or tab[0].shape[0] < bound:
            n = max(bound, min(self.config.max_position_embeddings, 4096))  # a few MiB at most
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable in training too
                tab = self._rope_tab = self._rope_rows(torch.arange(n, device=positions.device))
        return tab[0][positions][:, :, None], tab[1][positions][:, :, None]

    def _rope_rows(self, positions):
        inv = rope_inv_freq(self.config, device=positions.device)
        freqs = positions[..., None].float() * inv  # (..., hd/2): angle m * theta_i, fp32
        cos, sin = freqs.cos(), freqs.sin()
        return torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1)

    def logits(self, hidden):  # flattened to 2-D like forward's, so both take the same Linear path
        return self.lm_head(hidden.reshape(-1, hidden.shape[-1])).view(*hidden.shape[:-1], -1)

    def forward(self, ids, positions=None, cache: KVCache | None = None, mask=None, rows=None,
                hidden_only: bool = False):
        if ids.dim() != 2:
            raise ValueError(f"Decoder expects ids of shape [B, T], got {tuple(ids.shape)}")
        B, T = ids.shape
        default_positions = positions is None
        if default_positions:
            positions = torch.arange(T, device=ids.device).expand(B, T)
        elif positions.shape != ids.shape:
            raise ValueError(f"positions shape {tuple(positions.shape)} must equal ids shape {tuple(ids.shape)}")
        if mask is not None and mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = may attend), got {mask.dtype}")
        if cache is not None:
            if rows is None and B != cache.batch:
                raise ValueError(f"batch {B} != cache.batch {cache.batch}: pass rows=[B] naming cache rows")
            if rows is not None and tuple(rows.shape) != (B,):
                raise ValueError(f"rows must have shape [{B}], got {tuple(rows.shape)}")
            if mask is None:  # default: causal by position over slots [0, max position]
                S = int(positions.max()) + 1
                mask = (torch.arange(S, device=ids.device) <= positions[..., None])[:, None]
            if mask.shape[-1] > cache.max_len:
                raise ValueError(f"mask covers {mask.shape[-1]} slots but the cache holds {cache.max_len}")
        elif rows is not None:
            raise ValueError("rows names cache rows; pass a KVCache with it (or drop rows)")
        elif mask is not None and mask.shape[-1] != T:
            raise ValueError(f"without a cache the mask must be Bool[B, 1, T, T={T}], got {tuple(mask.shape)}")
        if mask is not None and (mask.dim() != 4 or mask.shape[0] not in (1, B) or mask.shape[2] != T):
            raise ValueError(f"mask must be Bool[B={B}, 1, T={T}, S], got {tuple(mask.shape)}")
        # with a cache, slot == position < max_len (the cache write checks it)
        bound = cache.max_len if cache is not None else T if default_positions else None
        cos, sin = self.rope(positions, bound)
        if mask is not None and not torch.is_autocast_enabled(ids.device.type):
            # bool -> additive (0 / -inf) once here instead of inside every layer's SDPA call
            w = self.embed_tokens.weight
            mask = torch.zeros(mask.shape, dtype=w.dtype, device=w.device).masked_fill_(~mask, -math.inf)
        if cache is not None:  # tiled for Attention's g query rows per kv head, once for all layers
            mask = mask.repeat(1, 1, self.config.num_heads // self.config.num_kv_heads, 1)
        x = self.embed_tokens(ids.reshape(-1))  # the residual stream is kept as (B*T, H)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, i, cache, positions, mask, rows)
        x = self.norm(x)
        return (x if hidden_only else self.lm_head(x)).view(B, T, -1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[targets] = z[target] - logsumexp(z), in fp32."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    picked = z.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(z, dim=-1)


# PEP 562 re-exports: presets and FLOPs accounting live in ppp_min.presets, HF directories in ppp_min.hf_io
_REEXPORTS = {"preset_config": "presets", "count_params": "presets", "flops_per_token": "presets",
              "PRESETS": "presets", "load_pretrained": "hf_io", "save_pretrained": "hf_io"}


def __getattr__(name):
    if name in _REEXPORTS:
        import importlib
        return getattr(importlib.import_module(f"ppp_min.{_REEXPORTS[name]}"), name)
    raise AttributeError(f"module 'ppp_min.model' has no attribute {name!r}")
