"""Model sizes: the from-scratch presets and the parameter / FLOPs accounting of a ``ModelConfig``.

Contract: ``preset_config(name, vocab_size, **overrides) -> ModelConfig`` for ``tiny`` (tests), ``small``
(CPU training, the default) and ``base`` (one GPU); ``count_params(model)``; ``flops_per_token(cfg,
seq_len)``.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ppp_min.lm.config import ModelConfig

PRESETS = {
    # name: (hidden, layers, heads, kv_heads, head_dim, intermediate, max_pos)
    "tiny": (64, 2, 4, 2, 16, 192, 512),        # ~0.1M + 64*V params: tests, trains in seconds
    "small": (256, 4, 8, 4, 32, 704, 2048),     # ~2.95M + 256*V: RL on 2 CPU cores in minutes
    "base": (768, 12, 12, 4, 64, 2048, 4096),   # ~75.5M + 768*V: one GPU
}


def preset_config(name: str, vocab_size: int, **overrides) -> ModelConfig:
    """A from-scratch Llama-style config (tied embeddings, GQA). `overrides` replace any field."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    h, n, nh, nkv, hd, inter, maxpos = PRESETS[name]
    cfg = ModelConfig(arch="llama", vocab_size=int(vocab_size), hidden_size=h, intermediate_size=inter,
                      num_layers=n, num_heads=nh, num_kv_heads=nkv, head_dim=hd, rope_theta=10000.0,
                      rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=maxpos)
    return dataclasses.replace(cfg, **overrides) if overrides else cfg



def count_params(model: nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs per token at context length seq_len (multiply by 3 for forward + backward):
        2 * N_matmul + 4 * num_layers * seq_len * num_heads * head_dim
    where N_matmul = weights used in matrix multiplies (q, k, v, o, gate, up, down per layer, plus the LM
    head; the embedding lookup and norms are not matmuls), and the attention term counts QK^T and AV
    (2 FLOPs per multiply-add, each over seq_len keys; causal masking is not discounted, as in PaLM app. B).
    """
    h, hd = cfg.hidden_size, cfg.head_dim
    attn = h * cfg.num_heads * hd * 2 + h * cfg.num_kv_heads * hd * 2
    mlp = 3 * h * cfg.intermediate_size
    n_matmul = cfg.num_layers * (attn + mlp) + h * cfg.vocab_size
    return 2 * n_matmul + 4 * cfg.num_layers * seq_len * cfg.num_heads * hd
