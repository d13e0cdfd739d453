"""Size bounds, checked before anything big is allocated: a model's config, a decoding batch.

Contract
- ``available_bytes(device) -> int | None``: memory this process can still take: for a CUDA device its free
  memory (``torch.cuda.mem_get_info``); else Linux's ``MemAvailable``, lowered to what a cgroup limit leaves
  (``memory.max - memory.current``); None where neither is known (then only the hard limits apply).
- ``param_count(cfg) -> int``: a ``ModelConfig``'s parameter count from its fields alone (what
  ``count_params`` gives for the built model, tied embeddings counted once).
- ``check_model(cfg, bytes_per_param, device, reserved=0) -> None``: ``ValueError`` (one line) when a
  dimension is past its hard limit (``LIMITS``: no supported model comes near them), or when the weights
  (``param_count * bytes_per_param``) plus ``reserved`` bytes would not fit the available memory.
- ``cache_bytes(cfg, rows, max_len, elem=4) -> int``: the static KV cache's size.
- ``decode_bytes(cfg, rows, distinct, prompt_len, max_len, elem=4) -> int``: what the sampler allocates for
  ``rows`` rows of ``max_len`` positions (static KV cache, the rows' logits) plus the larger of two forwards:
  the prefill of ``distinct`` prompts of ``prompt_len`` tokens, and an observation turn
  (``OBSERVATION_TOKENS``) appended to every row late in an episode, when attention spans ``max_len``
  (activations, mask, attention scores and their softmax). An upper estimate: on the CPU the measured peak
  of a prefill or an extend (tiny and small presets, 64-2000 rows) was 45-65 % of it.
- ``check_decode(cfg, rows, distinct, prompt_len, max_len, device, reserved, what, lower, elem=4) -> None``:
  ``ValueError`` naming ``what``, the estimate, the memory available and what to ``lower`` when
  ``decode_bytes`` plus ``reserved`` bytes would not fit.
"""

from __future__ import annotations

import torch

from ppp_min.lm.config import ModelConfig

GIB = float(1 << 30)
LIMITS = {"num_layers": 1024, "hidden_size": 1 << 16, "intermediate_size": 1 << 18, "vocab_size": 1 << 21,
          "num_heads": 1024, "num_kv_heads": 1024, "head_dim": 1024, "max_position_embeddings": 1 << 21}
_S_ROUND = 64  # the sampler rounds attention widths up to this (sampler._S_ROUND or less)
OBSERVATION_TOKENS = 64  # an observation turn appended to every live row (search results, a user reply)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes(device="cpu") -> int | None:
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(dev)[0])
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        avail = min(avail, limit - used) if avail is not None else limit - used
    return avail


def param_count(cfg: ModelConfig) -> int:
    h, hd, nh, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    attn = h * nh * hd + 2 * h * nkv * hd + nh * hd * h
    if cfg.attention_bias:
        attn += nh * hd + 2 * nkv * hd
    layer = attn + 3 * h * cfg.intermediate_size + 2 * h + (2 * hd if cfg.qk_norm else 0)
    if cfg.smear_keys:  # one logit per kv head, or the taps over the window (lm/model.py)
        w = cfg.smear_window
        layer += nkv if w == 1 else ((w + 1) * nkv + w * nh) * hd
    layer += nh if cfg.recency else 0
    head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * h
    return cfg.num_layers * layer + cfg.vocab_size * h + head + h


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def check_model(cfg: ModelConfig, bytes_per_param: int = 4, device="cpu", reserved: int = 0) -> None:
    over = [f"{k}={getattr(cfg, k)} (limit {v})" for k, v in LIMITS.items() if getattr(cfg, k) > v]
    if over:
        raise ValueError(f"the model config is beyond the size limits: {', '.join(over)}; check config.json")
    need, avail = param_count(cfg) * bytes_per_param + reserved, available_bytes(device)
    if avail is not None and need > avail:
        raise ValueError(f"the model has {param_count(cfg) / 1e9:.2f}B parameters and needs {_gib(need)}, but "
                         f"{_gib(avail)} of memory is available; use a smaller model")


def cache_bytes(cfg: ModelConfig, rows: int, max_len: int, elem: int = 4) -> int:
    """The static KV cache's bytes (lm/cache.py): k, v and, with smeared keys, the raw keys (and raw queries
    with a window over 1)."""
    per_slot = (3 if cfg.smear_keys else 2) * cfg.num_kv_heads
    per_slot += cfg.num_heads if cfg.smear_keys and cfg.smear_window > 1 else 0
    return cfg.num_layers * rows * max_len * per_slot * cfg.head_dim * elem


def decode_bytes(cfg: ModelConfig, rows: int, distinct: int, prompt_len: int, max_len: int, elem: int = 4) -> int:
    kv = cache_bytes(cfg, rows, max_len, elem)
    logits = 3 * rows * cfg.vocab_size * 4  # the last logits of every row, and a sampling step's temporaries

    def forward(tokens: int, width: int) -> int:  # attention scores and softmax (measured ~2x), mask, activations
        return tokens * (width * (cfg.num_heads * 4 * 2 + 1) + elem * (8 * cfg.hidden_size + 3 * cfg.intermediate_size))
    prefill = forward(distinct * prompt_len, min(max_len, -(-prompt_len // _S_ROUND) * _S_ROUND))
    extend = forward(rows * OBSERVATION_TOKENS, max_len)  # a turn's observations, late in the episode
    return kv + logits + max(prefill, extend)


def check_decode(cfg: ModelConfig, rows: int, distinct: int, prompt_len: int, max_len: int, device,
                 reserved: int, what: str, lower: str, elem: int = 4) -> None:
    need, avail = decode_bytes(cfg, rows, distinct, prompt_len, max_len, elem), available_bytes(device)
    if avail is not None and need + reserved > avail:
        kv = cache_bytes(cfg, rows, max_len, elem)
        raise ValueError(f"{what} needs about {_gib(need)} (a KV cache of {rows} rows x {max_len} positions is "
                         f"{_gib(kv)}), more than the {_gib(max(0, avail - reserved))} of memory left; {lower}")
