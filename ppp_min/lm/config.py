"""What the network is: ``ModelConfig`` (frozen), ``RopeScaling`` and the supported ``ARCHS``.

Contract: a ``ModelConfig`` fully describes a Llama / Qwen2 / Qwen3 decoder and validates itself on
construction (ValueError naming the field). ``ppp_min.lm.model`` builds the network from it, ``ppp_min.lm.presets``
gives the from-scratch sizes, ``ppp_min.weights.hf_io`` maps it to and from an HF ``config.json``.
"""
from __future__ import annotations

from dataclasses import dataclass

ARCHS = ("llama", "qwen2", "qwen3")


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3 rope scaling ("rope_type": "llama3") parameters, as in the Llama 3.1 config.json."""
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 2048
    attention_bias: bool = False   # Qwen2: bias on q/k/v projections (never on o)
    qk_norm: bool = False          # Qwen3: per-head RMSNorm on q and k before RoPE
    smear_keys: bool = False       # from-scratch presets: each key mixed with the previous token's (model.py)
    smear_window: int = 1          # with smear_keys: how many previous tokens a key mixes in (> 1: taps, model.py)
    recency: bool = False          # from-scratch presets: a learned per-head bias toward recent keys (model.py)
    rope_scaling: RopeScaling | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"ModelConfig.arch={self.arch!r} is not one of {ARCHS}")
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads", "head_dim", "max_position_embeddings"):
            if int(getattr(self, f)) <= 0:
                raise ValueError(f"ModelConfig.{f} must be positive, got {getattr(self, f)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if not 1 <= int(self.smear_window) <= 8:
            raise ValueError(f"ModelConfig.smear_window must be in 1..8, got {self.smear_window}")
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))
