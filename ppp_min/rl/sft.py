"""The SFT warm start ("skills, not policy", docs/design.md#the-warm-start): what a from-scratch model learns
before RL, on the scripted demonstrations of ``userville/scripted.py``.

Contract
- ``WarmStartConfig`` (frozen): the schedule; validates its own fields (one line naming the flag).
- ``encode_demo(tok, messages, loss) -> (ids, mask)``: exactly the token layout the rollout produces (prompt
  with generation prompt; each assistant turn's text + ``<|im_end|>`` with mask 1, or 1/its length where
  ``loss`` is "turn"; the forced ``\\n`` + user turn + generation prompt with mask 0), so SFT and RL train
  the same positions.
- ``length_batches(encoded, batch, rng, pool)`` yields batches of similar length (less padding: ~1.4x
  more demonstrations per second at the same batch size), drawn at random without replacement.
- ``sft_step(model, optimizer, ids, mask, grad_clip) -> float``: one step of cross-entropy weighted by the
  mask (the assistant's own turns in SFT, every token in the language-modelling part), normalised by the
  mask's sum: the mean over tokens, or with "turn" masks the mean over turns of each turn's mean.
- ``copy_drills(tokens, batch, gen)``: endless batches of synthetic copy drills (a random sequence, then the
  same again after a varying offset), where a from-scratch model with smeared keys learns to copy by content.
- ``warm_start(model, batches, cfg, log, ..., drills)``: the whole schedule: the copy drills (their own AdamW,
  constant lr), then one AdamW with warm-up and cosine over language modelling and SFT; ``log(WarmStep)``
  after every step (the caller prints and meters).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ppp_min.knobs import knob, positive_float, positive_int, unit_float
from ppp_min.rl.step import pad, shifted_logprobs
from ppp_min.userville.scripted import SEARCH_WITH

PRETRAIN_STEPS = 200  # language-modelling steps of a from-scratch preset's warm start
COPY_STEPS = 400  # copy-drill steps of a from-scratch preset's warm start (before the language modelling)
COPY_MIN, COPY_LEN = 8, 48  # a copy drill: L in COPY_MIN..COPY_LEN random tokens, then the same L again
AMBIGUOUS_POOL = 16  # --copy-ambiguity draws from this many of the text's most frequent tokens
SFT_DTYPES = {"auto": None, "bf16": True, "fp32": False}  # --sft-dtype -> WarmStartConfig.bf16
SFT_LOSS = ("token", "turn")  # --sft-loss: what the SFT phase averages over


@dataclass(frozen=True)
class WarmStartConfig:
    """The SFT warm start ("skills, not policy"): LM steps on whole transcripts, then assistant-only SFT."""
    copy_steps: int = knob(COPY_STEPS, "warm", "steps of synthetic copy drills before language modelling (random "
                           "tokens, then the same again after a varying offset; loss on the repeat): where a "
                           "from-scratch preset with smeared keys forms the induction heads that copying from its "
                           "context needs", auto=True)
    copy_lr: float = knob(1e-3, "warm", "learning rate of the copy drills (their own AdamW, 20 warm-up steps, then "
                          "constant); 2e-3 fits the drills sooner but gave worse skills (%(default)s)")
    copy_ambiguity: float = knob(0.0, "warm", "share of copy-drill tokens drawn from the text's most frequent "
                                 "ones, so that one token of context does not say where to copy from "
                                 "(%(default)s)")
    pretrain_steps: int = knob(PRETRAIN_STEPS, "warm", "language-modelling steps on every token of the scripted "
                               "transcripts before SFT, where a from-scratch preset learns the text and to copy from "
                               "its context", auto=True)
    sft_steps: int = knob(300, "warm", "SFT steps on scripted demonstrations, loss on the assistant's tokens only",
                          auto=True)
    loss: str = knob("token", "warm", "what the SFT loss averages: every assistant token alike (token), or each "
                     "assistant turn alike, its tokens averaged first (turn: a short search weighs what a long "
                     "question does) (%(default)s)", "--sft-loss", choices=list(SFT_LOSS))
    batch: int = knob(16, "warm", "demonstrations per SFT step", "--sft-batch", auto=True)
    lr: float = knob(3e-3, "warm", "SFT learning rate, AdamW, warm-up + cosine", "--sft-lr", auto=True)
    bf16: bool | None = knob(None, "warm", "warm-start matmuls: bf16 autocast or fp32; auto = bf16 where the hardware "
                             "has fast bf16 (CUDA, AVX-512 BF16/AMX CPUs), else fp32. RL keeps fp32 on CPU",
                             "--sft-dtype", cli_default="auto", parse=SFT_DTYPES.__getitem__, choices=list(SFT_DTYPES))
    style_match: float = knob(0.0, "warm", "share of demonstration questions written in the stated preference's "
                              "style, as an instruct model would (0 = styles drawn independently of the preference) "
                              "(%(default)s)", "--demo-style-match")  # userville/scripted.py: ScriptedAgent
    search_with: str = knob("replies", "warm", "what the demonstrator's post-reply search adds to the request: each "
                            "reply that named a new catalog word, whole (replies) or only its facts (spans) "
                            "(%(default)s)", "--demo-search", choices=sorted(SEARCH_WITH))

    def __post_init__(self):
        if self.loss not in SFT_LOSS:
            raise ValueError(f"--sft-loss must be one of {list(SFT_LOSS)}, got {self.loss!r}")
        if self.search_with not in SEARCH_WITH:
            raise ValueError(f"--demo-search must be one of {sorted(SEARCH_WITH)}, got {self.search_with!r}")
        positive_int("copy-steps", self.copy_steps, 0)
        positive_float("copy-lr", self.copy_lr)
        unit_float("copy-ambiguity", self.copy_ambiguity)
        positive_int("pretrain-steps", self.pretrain_steps, 0)
        positive_int("sft-steps", self.sft_steps, 0)
        positive_int("sft-batch", self.batch)
        positive_float("sft-lr", self.lr)
        unit_float("demo-style-match", self.style_match)

    @property
    def total_steps(self) -> int:
        return self.copy_steps + self.pretrain_steps + self.sft_steps



def encode_demo(tok, messages, loss: str = "token") -> tuple[list[int], list[float]]:
    """(ids, loss mask) of a demonstration, in the rollout's layout (see ``Tokenizer.observation_turn``);
    ``loss`` "turn" weighs each assistant turn's tokens 1/its length (``WarmStartConfig.loss``)."""
    ids = tok.render(messages[:2], add_generation_prompt=True)
    mask = [0.0] * len(ids)
    for role, text in messages[2:]:
        if role == "assistant":  # what the policy samples: its text and <|im_end|>
            chunk = tok.encode(text) + [tok.im_end_id]
            m = 1.0 / len(chunk) if loss == "turn" else 1.0
        else:  # what the environment forces
            chunk, m = tok.observation_turn(text), 0.0
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


def copy_drills(tokens: list[int], batch: int, gen: torch.Generator, ambiguity: float = 0.0):
    """Endless (ids, mask) batches of copy drills, each row ``2 * COPY_LEN`` tokens drawn uniformly from
    ``tokens``: L of them (L drawn from ``COPY_MIN..COPY_LEN`` per row), the same L again, then random filler;
    mask 1 on the repeat after its first token. A random token has no prior, so only copying from the context
    lowers this loss, and since L varies, only copying by content (an induction head: find the earlier
    occurrence of the current token, read the one after it; Olsson et al., 2022), not a head at a fixed
    distance. Searching with the request's and the user's words needs exactly that. ``ambiguity``: the share
    of tokens drawn instead from the ``AMBIGUOUS_POOL`` most frequent of ``tokens`` (the text's function words),
    which recur within a row, so that the token before is not enough to know where to copy from: the case of
    "the file db/report.py" copied past search results that list "db/url.py". At 0 no extra random number is
    drawn. Measured: docs/experiments.md#smeared-keys-and-copy-drills."""
    if batch < 1 or not tokens:
        raise ValueError(f"copy_drills needs tokens and batch >= 1 (got {len(tokens)}, {batch})")
    if not 0.0 <= ambiguity <= 1.0:
        raise ValueError(f"copy drills' ambiguity must be in [0, 1], got {ambiguity!r}")
    pool = torch.tensor(sorted(set(tokens)))
    frequent = torch.tensor([t for t, _ in Counter(tokens).most_common(AMBIGUOUS_POOL)]) if ambiguity > 0 else None
    cols = torch.arange(2 * COPY_LEN)
    while True:
        x = pool[torch.randint(0, len(pool), (batch, 2 * COPY_LEN), generator=gen)]
        if ambiguity > 0:
            common = frequent[torch.randint(0, len(frequent), x.shape, generator=gen)]
            x = torch.where(torch.rand(x.shape, generator=gen) < ambiguity, common, x)
        L = torch.randint(COPY_MIN, COPY_LEN + 1, (batch, 1), generator=gen)
        rep = (cols >= L) & (cols < 2 * L)  # [batch, 2 * COPY_LEN]: the repeat's columns
        src = torch.where(rep, cols - L, cols)  # a repeat column reads the column L before it
        yield x.gather(1, src), (rep & (cols > L)).float()


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
    phase: str  # copy | pretrain | sft
    loss: float
    lengths: tuple[int, ...]  # the batch's sequence lengths
    seconds: float  # the step's wall time
    elapsed: float  # since the warm start began


def _schedule(params, lr: float, steps: int, cosine: bool):
    """AdamW with 20 warm-up steps (a fifth of a short schedule), then cosine to 0 over ``steps`` or constant."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    warmup = max(1, min(20, steps // 5))
    decay = (lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / max(1, steps)))) if cosine else (lambda i: 1.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * decay(i))


def warm_start(model, batches: Iterator[list], cfg: WarmStartConfig, log: Callable[[WarmStep], None], *,
               device, bf16: bool, grad_clip: float, micro_batch: int, drills: Iterator | None = None) -> None:
    """SFT warm start on the scripted transcripts in three parts: ``copy_steps`` of copy drills (``drills``:
    ``copy_drills`` batches; where the induction heads form; their own AdamW at ``copy_lr``), then one AdamW
    with warm-up and cosine over ``pretrain_steps`` of language modelling on every token (a from-scratch
    preset has no pretrained base model: this is where it learns the environment's text) and ``sft_steps``
    on the assistant's own tokens only: skills, not policy. ``batches``: ``length_batches`` of
    ``encode_demo`` items."""
    if cfg.copy_steps and drills is None:
        raise ValueError("copy_steps > 0 needs the copy_drills batches")
    t0 = time.time()
    opt, sched = _schedule(model.parameters(), cfg.copy_lr, cfg.copy_steps, cosine=False)
    for step in range(cfg.total_steps):
        if step == cfg.copy_steps:
            opt, sched = _schedule(model.parameters(), cfg.lr, cfg.pretrain_steps + cfg.sft_steps, cosine=True)
        phase = "copy" if step < cfg.copy_steps else "pretrain" if step < cfg.copy_steps + cfg.pretrain_steps \
            else "sft"
        if phase == "copy":
            ids, mask = (t.to(device) for t in next(drills))
            lengths = (ids.shape[1],) * ids.shape[0]
        else:
            batch = next(batches)
            masks = [[1.0] * len(b[0]) for b in batch] if phase == "pretrain" else [b[1] for b in batch]
            ids, mask = pad([b[0] for b in batch], 0, device), pad(masks, 0.0, device)
            lengths = tuple(len(b[0]) for b in batch)
        t = time.perf_counter()
        loss = sft_step(model, opt, ids, mask, grad_clip, bf16=bf16, micro_batch=micro_batch)
        seconds = time.perf_counter() - t
        sched.step()
        log(WarmStep(step, phase, loss, lengths, seconds, time.time() - t0))
