"""Local Hugging Face model directories <-> `Decoder` (safetensors only; pickle is never loaded).

Contract
- `load_pretrained(path, device='cpu', dtype=torch.float32) -> Decoder` reads `config.json`
  (LlamaForCausalLM, Qwen2ForCausalLM or Qwen3ForCausalLM), `model.safetensors` or a sharded
  `model.safetensors.index.json`, and `generation_config.json` (eos ids: int or list, merged with
  config.json's). A config beyond `bounds.LIMITS`, or whose weights would not fit the available memory, is
  refused before anything is built. The model is built on the meta device and the tensors are assigned into it
  (`load_state_dict(assign=True)`), so weights are allocated once, on `device`, in `dtype`.
  Tied embeddings: when `tie_word_embeddings` is set, `lm_head.weight` is shared with the embedding
  (a stored copy is ignored). Every problem - missing directory/file, other architecture or unsupported
  feature, pickle-only weights, missing/unexpected tensor, shape mismatch - raises `ModelLoadError`
  (a `ValueError`) with one line naming the problem and what to do.
- `save_pretrained(model, path)` writes config.json, model.safetensors (HF tensor names; a tied LM head is
  written once, as the embedding) and generation_config.json, loadable by
  `transformers.AutoModelForCausalLM.from_pretrained(path)`.
Left out: writing shards, tokenizer files (the tokenizer saves itself), rope types other than llama3.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ppp_min.lm.bounds import check_model
from ppp_min.lm.config import ModelConfig, RopeScaling
from ppp_min.lm.model import Decoder

_ARCHS = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
_HF_NAME = {v: k for k, v in _ARCHS.items()}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints stored; recomputed here


class ModelLoadError(ValueError):
    """A model directory that cannot be loaded; the message says what is wrong and what to do."""


def _read_json(path: Path, required: bool) -> dict:
    if not path.is_file():
        if required:
            raise ModelLoadError(f"{path} not found: a model directory needs config.json "
                                 f"(a Hugging Face LlamaForCausalLM/Qwen2ForCausalLM/Qwen3ForCausalLM export)")
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path} is not valid JSON ({e}); re-export the model directory") from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} must hold a JSON object; re-export the model directory")
    return obj


def _ids(x) -> list[int]:
    if x is None:
        return []
    return [int(i) for i in (x if isinstance(x, (list, tuple)) else [x])]


SMEAR_FIELD = "ppp_min_smear_keys"  # config.json field of a from-scratch model with smeared keys (lm/model.py)
WINDOW_FIELD = "ppp_min_smear_window"  # and its window, when over 1
RECENCY_FIELD = "ppp_min_recency"  # a from-scratch model with the recency bias (lm/model.py)


def config_from_hf(d: dict, gen: dict | None = None) -> ModelConfig:
    """ModelConfig from a config.json dict (+ generation_config.json dict for eos/bos/pad ids)."""
    gen = gen or {}
    archs = d.get("architectures") or []
    known = [a for a in archs if a in _ARCHS]
    if not known:
        raise ModelLoadError(f"unsupported architecture {archs or d.get('model_type')!r}: ppp_min loads "
                             f"only {sorted(_ARCHS)}; use one of those or convert the model")
    arch = _ARCHS[known[0]]

    def unsupported(what):
        raise ModelLoadError(f"{known[0]} with {what} is not supported by ppp_min; use a model without it")

    if d.get("hidden_act", "silu") != "silu":
        unsupported(f"hidden_act={d.get('hidden_act')!r}")
    if d.get("mlp_bias"):
        unsupported("mlp_bias=true")
    if arch != "qwen2" and d.get("attention_bias"):
        unsupported("attention_bias=true")
    if d.get("use_sliding_window"):
        unsupported("use_sliding_window=true")
    rp = d.get("rope_scaling") or d.get("rope_parameters") or {}  # transformers: rope_scaling wins
    if not isinstance(rp, dict) or any(isinstance(v, dict) for v in rp.values()):
        unsupported(f"per-layer rope parameters {rp!r}")
    if rp.get("partial_rotary_factor", 1.0) != 1.0:
        unsupported("partial_rotary_factor != 1")
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    scaling = None
    if rope_type == "llama3":
        scaling = RopeScaling(factor=float(rp["factor"]), low_freq_factor=float(rp["low_freq_factor"]),
                              high_freq_factor=float(rp["high_freq_factor"]),
                              original_max_position_embeddings=int(rp["original_max_position_embeddings"]))
    elif rope_type != "default":
        unsupported(f"rope_type={rope_type!r} (only default and llama3 are implemented)")
    try:
        heads = int(d["num_attention_heads"])
        hidden = int(d["hidden_size"])
        eos = _ids(gen.get("eos_token_id")) + [i for i in _ids(d.get("eos_token_id"))
                                               if i not in _ids(gen.get("eos_token_id"))]
        pick = lambda k: gen.get(k) if gen.get(k) is not None else d.get(k)
        return ModelConfig(
            arch=arch, vocab_size=int(d["vocab_size"]), hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]), num_layers=int(d["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or hidden // heads),
            rope_theta=float(rp.get("rope_theta") or d.get("rope_theta") or 10000.0),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            attention_bias=arch == "qwen2", qk_norm=arch == "qwen3", rope_scaling=scaling,
            smear_keys=bool(d.get(SMEAR_FIELD, False)), smear_window=int(d.get(WINDOW_FIELD, 1)),
            recency=bool(d.get(RECENCY_FIELD, False)),
            bos_token_id=pick("bos_token_id"), eos_token_ids=tuple(eos), pad_token_id=pick("pad_token_id"))
    except KeyError as e:
        raise ModelLoadError(f"config.json lacks the field {e.args[0]!r}; re-export the model directory") from e
    except (TypeError, ValueError, OverflowError) as e:
        if isinstance(e, ModelLoadError):
            raise
        raise ModelLoadError(f"config.json has an invalid value ({e}); re-export the model directory") from e


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    """config.json fields that transformers (4.x and 5.x) needs to rebuild the same network."""
    d = {"architectures": [_HF_NAME[cfg.arch]], "model_type": cfg.arch, "vocab_size": cfg.vocab_size,
         "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
         "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
         "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
         "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.rms_norm_eps,
         "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tie_word_embeddings,
         "initializer_range": 0.02, "use_cache": True, "attention_dropout": 0.0,
         "bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id,
         "eos_token_id": (list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1
                          else (cfg.eos_token_ids[0] if cfg.eos_token_ids else None)),
         "torch_dtype": str(dtype).removeprefix("torch."), "dtype": str(dtype).removeprefix("torch.")}
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope = {"rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": s.factor,
                "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings}
        d["rope_scaling"] = rope
    d["rope_parameters"] = rope
    if cfg.smear_keys:  # ppp_min's own field: transformers has no smeared keys and cannot run this model
        d[SMEAR_FIELD] = True
        if cfg.smear_window > 1:
            d[WINDOW_FIELD] = cfg.smear_window
    if cfg.recency:  # ppp_min's own field too
        d[RECENCY_FIELD] = True
    if cfg.arch == "llama":
        d.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    else:
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
        if cfg.arch == "qwen3":
            d["attention_bias"] = False
    return d


def _weight_files(root: Path) -> list[Path]:
    single, index = root / "model.safetensors", root / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        wm = _read_json(index, True).get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise ModelLoadError(f"{index} has no weight_map; re-export the model directory")
        files = [root / f for f in sorted(set(wm.values()))]
        for f in files:
            if not f.is_file():
                raise ModelLoadError(f"shard {f} listed in {index.name} is missing; copy the complete directory")
        return files
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise ModelLoadError(f"{root} has only pickle weights ({', '.join(pickles[:3])}); ppp_min never loads "
                             f"pickle: convert them to model.safetensors (e.g. save_pretrained("
                             f"safe_serialization=True) in transformers) and retry")
    raise ModelLoadError(f"{root} has no model.safetensors or model.safetensors.index.json; "
                         f"add the weights in safetensors format")


def load_pretrained(path, device="cpu", dtype=torch.float32) -> Decoder:
    root = Path(path)
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        raise ModelLoadError(f"model directory {root} {what}; pass a local Hugging Face model directory")
    cfg = config_from_hf(_read_json(root / "config.json", True),
                         _read_json(root / "generation_config.json", False))
    try:  # before anything is built: a config.json of 1e9 layers would fill the memory with empty modules
        check_model(cfg, torch.empty((), dtype=dtype).element_size(), device)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
    files = _weight_files(root)
    with torch.device("meta"):
        model = Decoder(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {}
    for f in files:
        try:
            handle = safe_open(str(f), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ModelLoadError(f"{f} is not a readable safetensors file ({e}); re-download it") from e
        with handle:
            for hf_name in handle.keys():
                if hf_name.endswith(_IGNORED_SUFFIXES):
                    continue
                name = hf_name[len("model."):] if hf_name.startswith("model.") else hf_name
                if name not in expected:
                    raise ModelLoadError(f"unexpected tensor {hf_name!r} in {f.name} for {_HF_NAME[cfg.arch]} "
                                         f"as described by config.json; check that config.json matches the weights")
                if name == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue  # tied: the embedding is the LM head
                t = handle.get_tensor(hf_name)
                if tuple(t.shape) != expected[name]:
                    raise ModelLoadError(f"tensor {hf_name!r} has shape {tuple(t.shape)} but config.json implies "
                                         f"{expected[name]}; check that config.json matches the weights")
                state[name] = t.to(device=device, dtype=dtype)
    if cfg.tie_word_embeddings and "embed_tokens.weight" in state:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    missing = sorted(set(expected) - set(state))
    if missing:
        hf = ["lm_head.weight" if m == "lm_head.weight" else "model." + m for m in missing]
        raise ModelLoadError(f"missing tensor(s) {', '.join(hf[:3])}{' ...' if len(hf) > 3 else ''} "
                             f"({len(hf)} in all); the weights are incomplete or do not match config.json")
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()  # assign=True replaced the shared Parameter objects; share again
    model.to(device)     # nothing left on meta (the rope table is made lazily on the input's device)
    return model.eval()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_pretrained(model: Decoder, path) -> None:
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    dtype = model.embed_tokens.weight.dtype
    tensors = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # written once, as model.embed_tokens.weight
        hf = name if name == "lm_head.weight" else "model." + name
        tensors[hf] = t.detach().to("cpu").contiguous()
    _atomic_write(root / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    gen = {"bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id,
           "eos_token_id": list(cfg.eos_token_ids) if cfg.eos_token_ids else None}
    for name, obj in (("config.json", config_to_hf(cfg, dtype)), ("generation_config.json", gen)):
        _atomic_write(root / name, lambda p, obj=obj: p.write_text(json.dumps(obj, indent=2) + "\n"))
