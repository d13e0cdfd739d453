"""The SFT warm start ("skills, not policy", docs/design.md#the-warm-start): what a from-scratch model learns
before RL, on the scripted demonstrations of ``userville/scripted.py``.

Contract
- ``WarmStartConfig`` (frozen): the schedule; validates its own fields (one line naming the flag).
- ``encode_demo(tok, messages) -> (ids, mask)``: exactly the token layout the rollout produces (prompt with
  generation prompt; each assistant turn's text + ``<|im_end|>`` with mask 1; the forced ``\\n`` + user turn
  + generation prompt with mask 0), so SFT and RL train the same positions.
- ``length_batches(encoded, batch, rng, pool)`` yields batches of similar length (less padding: ~1.4x
  more demonstrations per second at the same batch size), drawn at random without replacement.
- ``sft_step(model, optimizer, ids, mask, grad_clip) -> float``: one step of cross-entropy on the tokens whose
  mask is 1 (the assistant's own turns in SFT, every token in the language-modelling part), normalised by
  their count.
- ``warm_start(model, batches, cfg, log, ...)``: the whole schedule, one AdamW with warm-up and cosine over
  both parts; ``log(WarmStep)`` after every step (the caller prints and meters).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ppp_min.knobs import knob, positive_float, positive_int
from ppp_min.rl.step import pad, shifted_logprobs

PRETRAIN_STEPS = 200  # language-modelling steps of a from-scratch preset's warm start
SFT_DTYPES = {"auto": None, "bf16": True, "fp32": False}  # --sft-dtype -> WarmStartConfig.bf16


@dataclass(frozen=True)
class WarmStartConfig:
    """The SFT warm start ("skills, not policy"): LM steps on whole transcripts, then assistant-only SFT."""
    pretrain_steps: int = knob(PRETRAIN_STEPS, "warm", "language-modelling steps on every token of the scripted "
                               "transcripts before SFT, where a from-scratch preset learns the text and to copy from "
                               "its context", auto=True)
    sft_steps: int = knob(300, "warm", "SFT steps on scripted demonstrations, loss on the assistant's tokens only",
                          auto=True)
    batch: int = knob(16, "warm", "demonstrations per SFT step", "--sft-batch", auto=True)
    lr: float = knob(3e-3, "warm", "SFT learning rate, AdamW, warm-up + cosine", "--sft-lr", auto=True)
    bf16: bool | None = knob(None, "warm", "warm-start matmuls: bf16 autocast or fp32; auto = bf16 where the hardware "
                             "has fast bf16 (CUDA, AVX-512 BF16/AMX CPUs), else fp32. RL keeps fp32 on CPU",
                             "--sft-dtype", cli_default="auto", parse=SFT_DTYPES.__getitem__, choices=list(SFT_DTYPES))
    style_match: float = knob(0.0, "warm", "share of demonstration questions written in the stated preference's "
                              "style, as an instruct model would (0 = styles drawn independently of the preference) "
                              "(%(default)s)", "--demo-style-match")  # userville/scripted.py: ScriptedAgent

    def __post_init__(self):
        positive_int("pretrain-steps", self.pretrain_steps, 0)
        positive_int("sft-steps", self.sft_steps, 0)
        positive_int("sft-batch", self.batch)
        positive_float("sft-lr", self.lr)
        if not (isinstance(self.style_match, (int, float)) and 0.0 <= self.style_match <= 1.0):
            raise ValueError(f"--demo-style-match must be a number in [0, 1], got {self.style_match!r}")

    @property
    def total_steps(self) -> int:
        return self.pretrain_steps + self.sft_steps



def encode_demo(tok, messages) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of a demonstration, in the rollout's layout (see ``Tokenizer.observation_turn``)."""
    ids = tok.render(messages[:2], add_generation_prompt=True)
    mask = [0] * len(ids)
    for role, text in messages[2:]:
        if role == "assistant":  # what the policy samples: its text and <|im_end|>
            chunk, m = tok.encode(text) + [tok.im_end_id], 1
        else:  # what the environment forces
            chunk, m = tok.observation_turn(text), 0
        ids, mask = ids + chunk, mask + [m] * len(chunk)
    return ids, mask


def length_batches(encoded: list, batch: int, rng: random.Random, pool: int = 4):
    """Endless batches of ``batch`` items: shuffle, cut into pools of ``pool`` batches, sort each pool by
    length and cut it into batches, then shuffle the batches. Each item is used once per pass; a batch's
    rows differ little in length, so padding costs little, while ``pool`` small keeps every batch a mix of
    episode kinds (sorting the whole set would put all the short "search, answer" episodes together)."""
    if batch < 1 or pool < 1 or not encoded:
        raise ValueError(f"length_batches needs items, batch >= 1 and pool >= 1 (got {len(encoded)}, "
                         f"{batch}, {pool})")
    batch = min(batch, len(encoded))
    while True:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        batches = []
        for i in range(0, len(order) - batch + 1, batch * pool):
            chunk = sorted(order[i:i + batch * pool], key=lambda j: len(encoded[j][0]))
            batches += [chunk[k:k + batch] for k in range(0, len(chunk) - batch + 1, batch)]
        rng.shuffle(batches)
        for b in batches:
            yield [encoded[j] for j in b]


def sft_step(model, optimizer, ids: torch.Tensor, mask: torch.Tensor, grad_clip: float = 1.0,
             bf16: bool = False, micro_batch: int = 0) -> float:
    """``bf16``: autocast matmuls to bf16 (only where the hardware has fast bf16: ``speed.fast_bf16``).
    Used for SFT only; RL keeps the sampler's and the trainer's numerics identical (fp32 on CPU).
    ``micro_batch`` rows per forward/backward (0 = all), each normalised by the whole batch's token count,
    so the gradient is the full batch's (measured on 2 CPU cores: 8 rows of 16 per pass is ~12% faster)."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    m = mask[:, 1:].float()
    n_tok = m.sum().clamp(min=1)
    step = micro_batch if micro_batch > 0 else ids.shape[0]
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for s in range(0, ids.shape[0], step):
        mi = m[s:s + step]
        # the LM head runs only where the loss is taken (~1/6 of an episode's positions)
        lp, _ = shifted_logprobs(model, ids[s:s + step], 1.0, where=mi > 0, dtype=dtype)
        loss = -(lp * mi).sum() / n_tok
        loss.backward()
        total += loss.item()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return total


@dataclass(frozen=True)
class WarmStep:
    """One finished warm-start step, for the caller's progress line and throughput meter."""
    step: int  # 0-based
    phase: str  # pretrain | sft
    loss: float
    lengths: tuple[int, ...]  # the batch's sequence lengths
    seconds: float  # the step's wall time
    elapsed: float  # since the warm start began


def warm_start(model, batches: Iterator[list], cfg: WarmStartConfig, log: Callable[[WarmStep], None], *,
               device, bf16: bool, grad_clip: float, micro_batch: int) -> None:
    """SFT warm start on the scripted transcripts, one AdamW with warm-up and cosine over both parts:
    ``pretrain_steps`` of language modelling on every token (a from-scratch preset has no pretrained base
    model: this is where it learns the environment's text and to copy words from its context), then
    ``sft_steps`` on the assistant's own tokens only: skills, not policy. ``batches``: ``length_batches``
    of ``encode_demo`` items."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.95))
    warmup = max(1, min(20, cfg.total_steps // 5))  # 20 steps, or a fifth of a short (pretrained) warm start
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(i, cfg.total_steps) / max(1, cfg.total_steps))))
    t0 = time.time()
    for step in range(cfg.total_steps):
        batch = next(batches)
        phase = "pretrain" if step < cfg.pretrain_steps else "sft"
        masks = [[1.0] * len(b[0]) for b in batch] if phase == "pretrain" else [b[1] for b in batch]
        t = time.perf_counter()
        loss = sft_step(model, opt, pad([b[0] for b in batch], 0, device), pad(masks, 0.0, device),
                        grad_clip, bf16=bf16, micro_batch=micro_batch)
        seconds = time.perf_counter() - t
        sched.step()
        log(WarmStep(step, phase, loss, tuple(len(b[0]) for b in batch), seconds, time.time() - t0))
