"""Diagnostic: does a model from scratch learn to copy by content (induction heads) within a budget of steps?

`python -m ppp_min.bench induction [--preset small] [--task span|repeat] [--offset variable|fixed]
[--smear-keys [--smear-window W]] [--steps N] [--batch B] [--lr LR]` trains a fresh preset on synthetic copy
sequences and prints held-out accuracy on the copied tokens every ``--eval-every`` steps (a table), then one
JSON line: ``steps_to_90`` (the first evaluated step at >= 90 %, or null), ``final_acc``, ``seconds`` and the
settings.

Why: searching with the request's and the user's words is copying from the context, and the SFT model's
failures are those of a model that does not copy by content ("a zero url" searched as "a url";
docs/experiments.md#why-the-sft-model-does-not-copy-ambiguous-copying-needs-induction-heads-and-they-do-not-form-in-time).

A sequence: ``PREFIX`` tokens, half of them from ``FUNCTION_WORDS`` frequent tokens (like " a", " with"), the
rest from the other ids; then a gap of filler; then a ``SPAN``-token span of the prefix; then filler to a fixed
length. ``--offset variable`` draws the gap (0..``GAP``) and the span's start at random, so only a head that
finds the previous copied token in the prefix and reads the token after it (an induction head) predicts the
span; ``fixed`` puts the span right after the prefix's start (gap 0, start 0), which a positional head solves.
Loss and accuracy on the span's tokens after its first (nothing predicts the first) that are not function
words. ``--task repeat`` is the classic induction sequence: ``REPEAT_MAX`` random content tokens (variable: a
length drawn from ``REPEAT_MIN..REPEAT_MAX``), then the same tokens again, then random filler; loss and
accuracy on the repeat's tokens after its first. ``--smear-keys`` trains the preset with smeared keys
(lm/model.py).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ppp_min.lm.model import Decoder, autocast, token_logprobs
from ppp_min.lm.presets import PRESETS, preset_config
from ppp_min.machine.speed import fast_bf16

PREFIX, SPAN, GAP, FUNCTION_WORDS, VOCAB, FIRST_CONTENT = 48, 16, 32, 20, 1400, 100
REPEAT_MIN, REPEAT_MAX = 8, 40


def copy_batch(n: int, gen: torch.Generator, variable: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [n, PREFIX + GAP + SPAN], mask): mask 1 on the span's tokens 2..SPAN that are content tokens."""
    def draw(length):
        content = torch.randint(FIRST_CONTENT, VOCAB, (n, length), generator=gen)
        func = torch.randint(10, 10 + FUNCTION_WORDS, (n, length), generator=gen)
        return torch.where(torch.rand(n, length, generator=gen) < 0.5, func, content)
    prefix, filler = draw(PREFIX), draw(GAP)
    gaps = torch.randint(0, GAP + 1, (n,), generator=gen) if variable else torch.zeros(n, dtype=torch.long)
    starts = torch.randint(0, PREFIX - SPAN + 1, (n,), generator=gen) if variable else torch.zeros(n, dtype=torch.long)
    ids = torch.empty(n, PREFIX + GAP + SPAN, dtype=torch.long)
    mask = torch.zeros(n, PREFIX + GAP + SPAN)
    for r in range(n):
        g, s = int(gaps[r]), int(starts[r])
        ids[r] = torch.cat([prefix[r], filler[r, :g], prefix[r, s:s + SPAN], filler[r, g:]])
        mask[r, PREFIX + g + 1:PREFIX + g + SPAN] = 1.0
    return ids, mask * (ids >= FIRST_CONTENT)


def repeat_batch(n: int, gen: torch.Generator, variable: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [n, PREFIX + GAP + SPAN], mask): L random content tokens, the same L again, filler; mask 1 on the
    repeat's tokens 2..L. L = REPEAT_MAX (fixed) or drawn from REPEAT_MIN..REPEAT_MAX (variable)."""
    length = PREFIX + GAP + SPAN
    ids = torch.randint(FIRST_CONTENT, VOCAB, (n, length), generator=gen)
    lens = (torch.randint(REPEAT_MIN, REPEAT_MAX + 1, (n,), generator=gen) if variable
            else torch.full((n,), REPEAT_MAX))
    mask = torch.zeros(n, length)
    for r in range(n):
        L = int(lens[r])
        ids[r, L:2 * L] = ids[r, :L]
        mask[r, L + 1:2 * L] = 1.0
    return ids, mask


TASKS = {"span": copy_batch, "repeat": repeat_batch}


def _loss_and_acc(model, ids, mask, dtype) -> tuple[torch.Tensor, float]:
    with autocast(ids.device, dtype):
        logits = model(ids[:, :-1])
    m = mask[:, 1:]
    lp = token_logprobs(logits, ids[:, 1:])
    acc = float(((logits.argmax(-1) == ids[:, 1:]).float() * m).sum() / m.sum())
    return -(lp * m).sum() / m.sum(), acc


def probe(preset: str, variable: bool, steps: int, batch: int, lr: float, eval_every: int, seed: int,
          dtype: torch.dtype, log=print, task: str = "span", smear_keys: bool = False,
          smear_window: int = 1) -> dict:
    """Train a fresh ``preset`` on copy batches; returns the JSON record (see the module docstring)."""
    torch.manual_seed(seed)
    model = Decoder(preset_config(preset, VOCAB, smear_keys=smear_keys, smear_window=smear_window))
    make = TASKS[task]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 20))  # warm-up, then constant
    gen = torch.Generator().manual_seed(seed + 1)
    held_out = make(64, torch.Generator().manual_seed(seed + 2), variable)
    rows, t0, acc = [], time.time(), 0.0
    for step in range(1, steps + 1):
        loss, _ = _loss_and_acc(model, *make(batch, gen, variable), dtype)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                _, acc = _loss_and_acc(model, *held_out, dtype)
            rows.append((step, loss.item(), acc))
            log(f"| {step:6d} | {loss.item():7.3f} | {100 * acc:6.1f} % | {time.time() - t0:6.0f} s |")
    first = next((s for s, _, a in rows if a >= 0.9), None)
    return {"preset": preset, "task": task, "offset": "variable" if variable else "fixed",
            "smear_keys": smear_keys, "smear_window": smear_window, "steps": steps, "batch": batch,
            "lr": lr, "seed": seed, "dtype": str(dtype).removeprefix("torch."), "steps_to_90": first,
            "final_acc": round(acc, 4), "seconds": round(time.time() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ppp_min.bench induction", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--task", default="span", choices=sorted(TASKS))
    p.add_argument("--offset", default="variable", choices=("variable", "fixed"))
    p.add_argument("--smear-keys", action="store_true", help="the preset with smeared keys (lm/model.py)")
    p.add_argument("--smear-window", type=int, default=1, help="with --smear-keys: tokens a key mixes in "
                   "(> 1: per-channel taps on keys and queries, lm/copying.py) (%(default)s)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    a = p.parse_args(argv)
    for name in ("steps", "batch", "eval_every"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if not 1 <= a.smear_window <= 8:
        p.error(f"--smear-window must be in 1..8, got {a.smear_window}")
    if not a.lr > 0:
        p.error(f"--lr must be > 0, got {a.lr}")
    if a.threads:
        torch.set_num_threads(a.threads)
    bf16 = a.dtype == "bf16" or (a.dtype == "auto" and fast_bf16(torch.device("cpu")))
    print("|   step |    loss | copy acc |   time |\n|---|---|---|---|")
    rec = probe(a.preset, a.offset == "variable", a.steps, a.batch, a.lr, a.eval_every, a.seed,
                torch.bfloat16 if bf16 else torch.float32, task=a.task, smear_keys=a.smear_keys,
                smear_window=a.smear_window)
    print(json.dumps(rec))
    return 0
