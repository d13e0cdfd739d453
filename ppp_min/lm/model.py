"""The decoder: a Llama-family transformer (Llama / Qwen2 / Qwen3 variants) with a static KV cache.

Contract
- `ModelConfig` (frozen, `ppp_min.lm.config`) fully describes the network; the from-scratch sizes and the
  parameter / FLOPs accounting are in `ppp_min.lm.presets`.
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
  gathered logit - logsumexp (no full log_softmax copy), in fp32: the one formula, used by the sampler
  and the trainer.
- `autocast(device, dtype)`: the one mixed-precision rule (bf16 autocast, or nothing for None / fp32).
- Device-agnostic (fp32 on CPU, bf16 autocast on CUDA).
- This file is the reference path. The CPU speed tricks (a decode-friendly `Linear`, attention over the
  cache as two matmuls, the additive mask made once, the RoPE table) are in `ppp_min.lm.fastpath`, each equal
  to the plain form it replaces, with its measured gain.
- Loading/saving HF directories lives in `ppp_min.weights.hf_io` (a layer above: it imports this module).
- `smear_keys`, `smear_window`, `recency` (the from-scratch presets only): the attention extras that let a
  small model copy from its context, in `ppp_min.lm.copying` (smeared keys, taps over a window, a recency
  bias). With a cache, the raw keys (and queries) they read are kept too (`KVCache.kr`, `KVCache.qr`).

Deliberately left out: dropout, sliding-window attention, rope types other than default and llama3,
attention biases other than Qwen2's q/k/v bias, tensor parallelism.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ppp_min.lm import copying
from ppp_min.lm.cache import KVCache
from ppp_min.lm.config import ModelConfig
# The CPU speed tricks (each equal to the plain form it replaces) live in one place: ppp_min/lm/fastpath.py.
from ppp_min.lm.fastpath import Linear, RopeTable, cached_attention, prepare_mask


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019, eq. 4): x / sqrt(mean(x^2) + eps) * w, in fp32, cast back."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
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


def rope_cos_sin(cfg: ModelConfig, positions: torch.Tensor):
    """(cos, sin_signed) of the angles m * theta_i at positions m [...], each [..., 1, hd] in fp32 (the 1
    broadcasts over heads): cos = cat(cos, cos), sin_signed = cat(-sin, sin), for `apply_rope`."""
    inv = rope_inv_freq(cfg, device=positions.device)
    freqs = positions[..., None].float() * inv  # [..., hd/2]: angle m * theta_i
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), -1)[..., None, :], torch.cat((-sin, sin), -1)[..., None, :]


def apply_rope(x, cos, sin_signed):
    """RoPE (RoFormer eq. 34), rotate-half pairing (i, i + d/2): x * cos + rotate_half(x) * sin with
    rotate_half(x) = cat(-x2, x1) for x = cat(x1, x2) [..., d]. The sign is folded into
    sin_signed = cat(-sin[:d/2], sin[d/2:]) so the swap of the halves is one roll by d/2; (-a) * s ==
    a * (-s) exactly, so this equals the textbook form bit for bit (tests/test_model.py)."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin_signed


class Attention(nn.Module):
    """Multi-head attention with grouped-query attention (GQA, Ainslie et al. 2023): each group of
    num_heads / num_kv_heads query heads shares one key/value head."""

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
        self.smear_keys, self.window = cfg.smear_keys, cfg.smear_window
        if cfg.recency:  # softplus(-2) = 0.13 per unit of log-distance at init
            self.recency = nn.Parameter(torch.full((self.nh,), copying.RECENCY_INIT))
        if cfg.smear_keys and cfg.smear_window == 1:  # one mixing logit per kv head, 0 at init (an even mix)
            self.smear = nn.Parameter(torch.zeros(self.nkv, 1))
        elif cfg.smear_keys:  # per-channel taps over the window (values at init: copying.init_taps)
            self.key_taps = nn.Parameter(torch.zeros(cfg.smear_window + 1, self.nkv, self.hd))
            self.query_taps = nn.Parameter(torch.zeros(cfg.smear_window, self.nh, self.hd))
            copying.init_taps(self.key_taps, self.query_taps)

    def forward(self, x, cos, sin_signed, layer: int, cache, positions, mask, rows):
        """x [B*T, D] (the flattened residual stream; [B, T, D] works too), output alike; positions [B, T];
        cos / sin_signed [B, T, 1, hd]; mask None (causal) or [B|1, 1, T, S], bool or additive in q's dtype."""
        B, T = positions.shape
        x2 = x.reshape(B * T, x.shape[-1])
        q = self.q_proj(x2).view(B, T, self.nh, self.hd)  # [B, T, nh, hd]
        k = self.k_proj(x2).view(B, T, self.nkv, self.hd)  # [B, T, nkv, hd]
        v = self.v_proj(x2).view(B, T, self.nkv, self.hd)  # [B, T, nkv, hd]
        if self.qk_norm:  # Qwen3: RMSNorm over head_dim, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        if self.smear_keys and self.window == 1:
            k = copying.smear(k, self.smear, layer, cache, positions, rows)
        elif self.smear_keys:
            k = copying.taps(k, self.key_taps, "kr", layer, cache, positions, rows)
            q = copying.taps(q, self.query_taps, "qr", layer, cache, positions, rows)
        cos, sin_signed = cos.to(q.dtype), sin_signed.to(q.dtype)
        q, k = apply_rope(q, cos, sin_signed), apply_rope(k, cos, sin_signed)
        q = q.transpose(1, 2)  # [B, nh, T, hd]
        if hasattr(self, "recency"):
            y = copying.recent_attention(q, k, v, self.recency, layer, cache, positions, mask, rows)
        elif cache is None:  # attention within the chunk
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, nkv, T, hd]
            if mask is None:  # square chunk: top-left causal == bottom-right causal
                y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        else:  # write this chunk's k, v into the cache, then attend over its slots [0, S)
            keys, vals = cache.update(layer, k, v, positions, rows, S=mask.shape[-1])  # [B, nkv, S, hd]
            keys, vals = keys.to(q.dtype), vals.to(q.dtype)
            # = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, enable_gqa=True), faster on CPU
            y = cached_attention(q, keys, vals, mask)
        y = y.transpose(1, 2).reshape(B * T, self.nh * self.hd)  # [B*T, nh*hd]
        return self.o_proj(y).view(x.shape)


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
        # rope(positions, bound) -> (cos, sin_signed) [B, T, 1, hd]: rope_cos_sin's rows, from a table
        self.rope = RopeTable(partial(rope_cos_sin, cfg), cfg.max_position_embeddings)
        self.reset_parameters()
        self.tie_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self):
        """Normal(0, 0.02) weights, residual-branch outputs (o_proj, down_proj) scaled by 1/sqrt(2L)
        (GPT-2 init), zero biases and smear logits, taps as at init (copying.init_taps), unit norms."""
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("bias", "smear")):
                p.zero_()
            elif name.endswith("recency"):
                p.fill_(copying.RECENCY_INIT)
            elif name.endswith("_taps"):
                continue  # copying.init_taps, after the loop
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, std / math.sqrt(2 * self.config.num_layers))
            else:
                p.normal_(0.0, std)
        for layer in self.layers:
            if hasattr(layer.self_attn, "key_taps"):
                copying.init_taps(layer.self_attn.key_taps, layer.self_attn.query_taps)

    def logits(self, hidden):
        """The LM head on a hidden state [..., D] -> [..., V] (flattened to 2-D like forward's)."""
        return self.lm_head(hidden.reshape(-1, hidden.shape[-1])).view(*hidden.shape[:-1], -1)

    def forward(self, ids, positions=None, cache: KVCache | None = None, mask=None, rows=None,
                hidden_only: bool = False):
        """ids [B, T] -> logits [B, T, V], or the final-normed hidden state [B, T, D] when `hidden_only`
        (see the module docstring for positions, cache, mask and rows)."""
        if ids.dim() != 2:
            raise ValueError(f"Decoder expects ids of shape [B, T], got {tuple(ids.shape)}")
        B, T = ids.shape
        default_positions = positions is None
        if default_positions:
            positions = torch.arange(T, device=ids.device).expand(B, T)
        mask = self._check_inputs(ids, positions, cache, mask, rows)
        # cos / sin rows [B, T, 1, hd]; with a cache, slot == position < max_len (the cache write checks it)
        cos, sin = self.rope(positions, cache.max_len if cache is not None else T if default_positions else None)
        if mask is not None:  # in the form attention uses (fastpath.prepare_mask), once for all layers
            g = self.config.num_heads // self.config.num_kv_heads if cache is not None else 1
            mask = prepare_mask(mask, self.embed_tokens.weight.dtype, g)
        x = self.embed_tokens(ids.reshape(-1))  # [B*T, D]: the residual stream, kept 2-D
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, i, cache, positions, mask, rows)
        x = self.norm(x)
        return (x if hidden_only else self.lm_head(x)).view(B, T, -1)

    @staticmethod
    def _check_inputs(ids, positions, cache, mask, rows):
        """Validate forward's arguments; return the mask, made "slot s visible iff s <= position" when a
        cache is given without one."""
        B, T = ids.shape
        if positions.shape != ids.shape:
            raise ValueError(f"positions shape {tuple(positions.shape)} must equal ids shape {tuple(ids.shape)}")
        if mask is not None and mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = may attend), got {mask.dtype}")
        if cache is not None:
            if rows is None and B != cache.batch:
                raise ValueError(f"batch {B} != cache.batch {cache.batch}: pass rows=[B] naming cache rows")
            if rows is not None and tuple(rows.shape) != (B,):
                raise ValueError(f"rows must have shape [{B}], got {tuple(rows.shape)}")
            if mask is None:  # default: causal by position over slots [0, max position] (one host sync)
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
        return mask


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[targets] = z[target] - logsumexp(z), in fp32. The one log-prob
    formula: the sampler reports it for the tokens it draws, the trainer recomputes it for the loss."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    picked = z.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(z, dim=-1)


def autocast(device, dtype: torch.dtype | None = None):
    """The one mixed-precision rule, for the sampler and the trainer: with `dtype` bfloat16 (or float16,
    CUDA only) the matmuls run in it under torch.autocast, while weights, norms, softmax and log-probs stay
    fp32; None or float32 is plain full precision (a no-op context)."""
    device = torch.device(device)
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("float16 autocast is not supported on CPU; use bfloat16")
    return torch.autocast(device.type, dtype=dtype)
