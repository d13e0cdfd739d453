"""Token ids in, token ids out: a thin wrapper over ``tokenizers`` plus a hand-written ChatML renderer.

Contract (docs/design.md#agent-protocol):
- ``Tokenizer.from_file(tokenizer.json)``, ``Tokenizer.from_dir(hf_dir)`` (eos ids from
  generation_config.json, else config.json, always including ``<|im_end|>``), ``save(dir)`` writes
  tokenizer.json + tokenizer_config.json (loadable by ``transformers``' PreTrainedTokenizerFast).
- ``encode(text)`` adds no BOS; ChatML specials written in ``text`` become their single ids.
  ``decode(ids, skip_special=False)``.
- ChatML is rendered by hand, append-only by construction: ``render_turn(role, content)`` is the ids of
  ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` and ``render(messages)`` is the plain concatenation of
  turns, so a conversation grown turn by turn has exactly the ids of the whole conversation rendered at
  once (and, for content without special-token text, of ``encode`` of the whole ChatML text). Inside a
  turn the role and content are encoded as plain text: a user writing "<|im_end|>" cannot close a turn.
- ``train_bpe(texts, vocab_size)``: byte-level BPE (SmolLM2's pre-tokenizer: single digits, then the
  GPT-2 regex) with ``<|endoftext|>`` (pad, id 0), ``<|im_start|>`` (1), ``<|im_end|>`` (2, eos).

Deliberately left out: jinja chat templates (the saved tokenizer_config.json carries a ChatML template
string only so ``transformers`` users get the same text), BOS handling, truncation and padding.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _HFTokenizer

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIALS = (ENDOFTEXT, IM_START, IM_END)
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
                   " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|im_start|>assistant\\n' }}{% endif %}")


class TokenizerError(ValueError):
    """A tokenizer file is missing or malformed, or lacks what ChatML needs."""


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(obj, dict):
        raise TokenizerError(f"{path}: expected a JSON object")
    return obj


def _as_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    vals = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise TokenizerError(f"eos_token_id must be an int or a list of ints, got {value!r}")
    return tuple(vals)


class Tokenizer:
    """ChatML tokenizer over a ``tokenizers.Tokenizer`` (see the module docstring for the contract)."""

    def __init__(self, backend: _HFTokenizer, eos_ids: Sequence[int] = (), config: dict | None = None):
        self._tk = backend
        # A clone that treats special-token text as plain text: used for role/content inside a turn.
        self._plain = _HFTokenizer.from_str(backend.to_str())
        self._plain.encode_special_tokens = True
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._config = dict(config or {})
        self.im_start_id = self._special_id(IM_START)
        self.im_end_id = self._special_id(IM_END)
        pad = ENDOFTEXT if backend.token_to_id(ENDOFTEXT) is not None else self._config.get("pad_token")
        if not isinstance(pad, str) or backend.token_to_id(pad) is None:
            raise TokenizerError(f"the vocabulary has no {ENDOFTEXT} and tokenizer_config.json names no pad_token")
        self.pad_id = backend.token_to_id(pad)
        eos = tuple(dict.fromkeys([*eos_ids, self.im_end_id]))  # ChatML turns always end with <|im_end|>
        bad = [i for i in eos if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"eos ids {bad} are outside the vocabulary (size {self.vocab_size})")
        self.eos_ids: tuple[int, ...] = eos
        self._newline = self._plain.encode("\n", add_special_tokens=False).ids
        self._gen_prompt = [self.im_start_id, *self._plain.encode("assistant\n", add_special_tokens=False).ids]

    def _special_id(self, token: str) -> int:
        i = self._tk.token_to_id(token)
        specials = {t.content for t in self._tk.get_added_tokens_decoder().values() if t.special}
        if i is None or token not in specials:
            raise TokenizerError(f"the vocabulary has no special token {token}: ChatML needs "
                                 f"{IM_START} and {IM_END} as special tokens (train one with train_bpe)")
        return i

    # ---- loading and saving -------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, eos_ids: Sequence[int] = (), config: dict | None = None):
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path} does not exist: expected a tokenizers tokenizer.json")
        try:
            backend = _HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises plain Exception on malformed files
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
        return cls(backend, eos_ids, config)

    @classmethod
    def from_dir(cls, hf_dir: str | os.PathLike) -> "Tokenizer":
        d = Path(hf_dir)
        if not d.is_dir():
            raise TokenizerError(f"{d} is not a directory")
        eos: tuple[int, ...] = ()
        for name in ("generation_config.json", "config.json"):
            if (d / name).is_file():
                eos = _as_ids(_read_json(d / name).get("eos_token_id"))
                if eos:
                    break
        config = _read_json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
        return cls.from_file(d / "tokenizer.json", eos, config)

    def save(self, out_dir: str | os.PathLike) -> Path:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        self._tk.save(str(d / "tokenizer.json"))
        cfg = {**self._config, "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
               "eos_token": self._tk.id_to_token(self.eos_ids[0]), "pad_token": self._tk.id_to_token(self.pad_id)}
        cfg.setdefault("chat_template", CHATML_TEMPLATE)
        (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
        return d

    # ---- text <-> ids ---------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary (size {self.vocab_size})")
        return self._tk.decode(ids, skip_special_tokens=skip_special)

    def token(self, i: int) -> str:
        """The vocabulary string of id ``i`` (byte-level form, e.g. 'Ġworld')."""
        return self._tk.id_to_token(i)

    # ---- ChatML (append-only, ids are the single source of truth) ------------------------------------
    def render_turn(self, role: str, content: str) -> list[int]:
        if not role or not isinstance(role, str) or "\n" in role or "<|" in role:
            raise ValueError(f"invalid ChatML role {role!r}: a non-empty word without newlines or '<|'")
        if not isinstance(content, str):
            raise TypeError(f"turn content must be str, got {type(content).__name__}")
        body = self._plain.encode(f"{role}\n{content}", add_special_tokens=False).ids
        return [self.im_start_id, *body, self.im_end_id, *self._newline]

    def generation_prompt(self) -> list[int]:
        return list(self._gen_prompt)

    def render(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool = False) -> list[int]:
        ids = [t for role, content in messages for t in self.render_turn(role, content)]
        return ids + (self.generation_prompt() if add_generation_prompt else [])

    # ---- an agent episode's layout (the rollout and SFT both build exactly these ids) ----------------
    # prompt = render(system + user messages, add_generation_prompt=True); then per agent turn:
    #   the assistant's text + <|im_end|>          (sampled by the policy: loss mask 1)
    #   observation_turn(observation)              (forced by the environment: loss mask 0)
    def observation_turn(self, text: str, close_assistant: bool = False) -> list[int]:
        """The forced tokens after an assistant turn: ``<|im_end|>`` first if the turn still lacks it
        (``close_assistant``: the token budget cut it), the newline that ends the assistant turn, ``text``
        as a user turn and the next generation prompt. Appended after each assistant turn, this gives
        exactly ``render`` of the conversation (append-only, no drift)."""
        head = [self.im_end_id] if close_assistant else []
        return head + self.encode("\n") + self.render_turn("user", text) + self.generation_prompt()


def byte_level_bpe(vocab: dict[str, int] | None = None, merges: list[tuple[str, str]] | None = None,
                   specials: Sequence[str] = (), split_digits: bool = True) -> _HFTokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` (untrained when vocab is None). ``split_digits`` gives
    SmolLM2's pre-tokenizer (every digit its own piece, then the GPT-2 regex); otherwise GPT-2's."""
    model = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False) if vocab is not None \
        else models.BPE(fuse_unk=False, byte_fallback=False)
    tk = _HFTokenizer(model)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) \
        if split_digits else byte_level
    tk.decoder = decoders.ByteLevel()
    if specials:
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tk


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on ``texts``: ids 0-2 are the specials, then the 256 byte symbols, then
    merges in order of frequency. Deterministic for the same corpus and size."""
    min_size = len(SPECIALS) + 256
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be at least {min_size} (3 specials + 256 bytes), got {vocab_size}")
    corpus = [t for t in texts if t]
    if not corpus:
        raise ValueError("train_bpe needs a non-empty corpus")
    tk = byte_level_bpe()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, min_frequency=2,
                                  special_tokens=[AddedToken(s, special=True, normalized=False) for s in SPECIALS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus, trainer=trainer)
    return Tokenizer(tk, eos_ids=())
