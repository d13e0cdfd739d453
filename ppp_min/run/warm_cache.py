"""The warm-start cache: the SFT model of a (code, settings, seed), stored once and reused.

The warm start is deterministic for the code, the settings that shape it and the seed, and it is most of a
CPU run's time; seed sweeps, ablations and RL recipe changes then cost only their RL phase.

Contract
- ``cache_key(cfg, device_type, bf16) -> (key, settings)``: ``settings`` is every input of the warm start
  (model, preferences, families, train tasks, seed, the whole ``WarmStartConfig``, the episode turn limit,
  micro-batch and grad clip, device type, matmul dtype) plus ``code``: a hash of every ``.py`` file of the
  package; ``key`` is the sha256 of ``settings``. A changed setting or code version is a new key. The thread
  count is not part of it (it changes rounding, not the recipe).
- ``default_dir()``: ``$PPP_MIN_CACHE`` or ``$XDG_CACHE_HOME/ppp_min`` or ``~/.cache/ppp_min``, + ``/warm_start``.
- ``lookup(root, key) -> str | None``: the entry directory when complete (``model.safetensors``, the tokenizer
  and ``settings.json`` present), else None. ``store(root, key, settings, model, tok) -> str``: written into
  a temporary directory and renamed, so a crash never leaves a half entry that a later run would trust.
- ``load_weights(entry, model)``: the cached weights into an already built model (the caller builds it the
  way a fresh run does, so the global RNG state after setup is the same with or without the cache).
- Entries are safetensors + JSON only (no pickle). Errors are ``WarmCacheError`` (one line).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from ppp_min.weights.hf_io import save_pretrained

_PACKAGE = Path(__file__).resolve().parents[1]  # the whole ppp_min package
_FILES = ("model.safetensors", "config.json", "tokenizer.json", "settings.json")


class WarmCacheError(RuntimeError):
    pass


def code_version() -> str:
    """sha256 over the package's Python sources (path and content), the first 16 hex digits."""
    h = hashlib.sha256()
    for p in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(p.relative_to(_PACKAGE)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _model_id(model: str) -> str | dict:
    """A preset by name; a model directory by its path and the size and mtime of its files."""
    if not os.path.isdir(model):
        return model
    files = sorted(p for p in Path(model).iterdir() if p.is_file())
    return {"dir": os.path.abspath(model), "files": [[p.name, p.stat().st_size, int(p.stat().st_mtime)]
                                                     for p in files]}


def cache_key(cfg, device_type: str, bf16: bool) -> tuple[str, dict]:
    settings = {"code": code_version(), "model": _model_id(cfg.model), "smear_keys": cfg.smear_keys,
                "smear_window": cfg.smear_window, "recency": cfg.recency,
                "prefs": list(cfg.prefs), "families": list(cfg.families), "train_tasks": cfg.train_tasks,
                "seed": cfg.seed,
                "warm": asdict(cfg.warm), "max_turns": cfg.rollout.max_turns, "micro_batch": cfg.rl.micro_batch,
                "grad_clip": cfg.rl.grad_clip, "device": device_type, "bf16": bool(bf16)}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    return key, settings


def default_dir() -> str:
    base = os.environ.get("PPP_MIN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ppp_min")
    return os.path.join(base, "warm_start")


def lookup(root: str, key: str) -> str | None:
    entry = os.path.join(root, key)
    return entry if all(os.path.isfile(os.path.join(entry, f)) for f in _FILES) else None


def store(root: str, key: str, settings: dict, model, tok) -> str:
    """Write the entry atomically (a temporary sibling, then one rename); an existing entry is kept."""
    entry = os.path.join(root, key)
    try:
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{key}.", dir=root)
        save_pretrained(model, tmp)
        tok.save(tmp)
        Path(tmp, "settings.json").write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(tmp, entry)
        except OSError:  # another run stored the same key first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        raise WarmCacheError(f"cannot write the warm-start cache under {root} ({e.strerror or e}); "
                             "pass --warm-start-cache DIR or --no-warm-start-cache") from None
    return entry


def load_weights(entry: str, model) -> None:
    """Copy the cached tensors into ``model`` (shapes must match: the key pins the model's settings)."""
    try:
        tensors = load_file(os.path.join(entry, "model.safetensors"))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise WarmCacheError(f"warm-start cache entry {entry} is unreadable ({e}); delete it") from None
    state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in tensors.items()}
    own = model.state_dict()
    if model.config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state.get("embed_tokens.weight"))
    if set(state) != set(own) or any(tuple(state[k].shape) != tuple(own[k].shape) for k in own):
        raise WarmCacheError(f"warm-start cache entry {entry} does not match this model; delete it")
    with torch.no_grad():
        for k, p in own.items():
            p.copy_(state[k].to(p.dtype))
