"""One PPP-GRPO step (paper §5.2): rollout -> reward -> group advantages -> the policy-gradient update.

Contract
- ``grpo_step(model, tok, opt, specs, client, cfg: StepConfig, gen, ref_model) -> StepResult``: G episodes per
  prompt (``rollout.py``), the PPP reward (``reward.py``), group advantages and the clipped loss (``grpo.py``),
  one optimizer step here. The four files, with ``lm/model.py``'s ``token_logprobs``, are the whole step.
- ``grpo_update(model, optimizer, episodes, advantages, cfg, ...) -> UpdateStats``: ``cfg.ppo_epochs`` passes over the
  batch in micro-batches, one optimizer step each. The advantages come in (``grpo.group_advantages``); each
  micro-batch's loss is normalised by the GLOBAL masked-token count (all ranks, all micro-batches), so the
  accumulated gradient equals the full batch's. Under torch.distributed the token count is all-reduced and
  gradients are summed across ranks: each rank holds whole groups, so advantages need no communication
  (GDPO's batch normalisation is then per rank: noted, not fixed). Returns an ``UpdateStats``.
- Log-probs are gathered at the sampled tokens only (logit − logsumexp), at the sampling temperature, so
  the sampler/trainer gap (``logprob_gap``) measures numerics, not a temperature mismatch (scoring at T = 1
  tokens sampled at T ≠ 1 is a classic silent bug of RL-for-LLM code).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ppp_min.lm.model import autocast, token_logprobs
from ppp_min.machine.resources import trim_freed_memory
from ppp_min.rl.grpo import Advantages, GRPOConfig, group_advantages, policy_loss
from ppp_min.rl.reward import DIMENSIONS, BatchRewards, RewardWeights, score_batch
from ppp_min.rl.rollout import Episode, EpisodeSpec, RolloutConfig, rollout
from ppp_min.userville.preferences import SCORES_NON_ASKERS


@dataclass(frozen=True)
class StepConfig:
    """What one GRPO step reads: the rollout, the reward weights, the loss and the update's batching."""
    rollout: RolloutConfig
    weights: RewardWeights
    grpo: GRPOConfig
    micro_batch: int = 8  # sequences per forward/backward
    grad_clip: float = 1.0  # global grad-norm clip; 0 = off


@dataclass(frozen=True)
class UpdateStats:
    """What ``grpo_update`` did. ``skipped``: no optimizer step (no loss token in the batch, or a non-finite
    loss / gradient, named by ``nonfinite``); ``means``: token-weighted means of ``policy_loss``'s metrics over
    the episodes that carry gradient (entropy, clip fractions, logprob_gap, ...)."""
    loss: float
    skipped: bool
    skipped_episodes: int  # episodes whose forward/backward was skipped (no loss token, or A = 0 without KL)
    nonfinite: str | None = None  # "loss" | "grad"
    grad_norm: float | None = None
    n_tokens: float | None = None  # the global masked-token count the loss is normalised by
    means: tuple[tuple[str, float], ...] = ()

    def record(self) -> dict:
        """The step record's keys (metrics.jsonl): each figure present only when it was measured."""
        rec = {"skipped_episodes": self.skipped_episodes, **dict(self.means), "loss": self.loss,
               "skipped": int(self.skipped)}
        for k in ("grad_norm", "n_tokens", "nonfinite"):
            if getattr(self, k) is not None:
                rec[k] = getattr(self, k)
        return rec


@dataclass(frozen=True)
class StepResult:
    episodes: tuple[Episode, ...]
    rewards: BatchRewards
    advantages: Advantages
    update: UpdateStats
    rollout_s: float
    update_s: float


def grpo_step(model, tok, opt, specs: list[EpisodeSpec], client, cfg: StepConfig, gen: torch.Generator,
              ref_model=None) -> StepResult:
    """One PPP-GRPO step (paper §5.2): G episodes per prompt, the PPP reward, group advantages, one update."""
    t0 = time.perf_counter()
    episodes = rollout(model, tok, specs, client, cfg.rollout, gen)  # 1. G rollouts per (task, preference)
    t1 = time.perf_counter()
    rewards = score_batch([e.stats for e in episodes], cfg.weights)  # 2. R = clip(w·(s, c, p), 0, 1), eq. 1
    adv = group_advantages(  # 3. advantage within each group (GRPO, or GDPO per dimension)
        torch.tensor(rewards.totals), torch.tensor([e.group_id for e in episodes]), cfg.grpo,
        torch.tensor(rewards.components), weights=rewards.weights.vector, scope=advantage_scope(episodes, cfg))
    upd = grpo_update(model, opt, episodes, adv.values, cfg.grpo, keep=adv.keep,  # 4. clipped policy gradient
                      temperature=cfg.rollout.temperature, micro_batch=cfg.micro_batch,
                      grad_clip=cfg.grad_clip, ref_model=ref_model)
    trim_freed_memory()  # the rollout's KV caches and the update's activations leave RSS
    return StepResult(tuple(episodes), rewards, adv, upd, t1 - t0, time.perf_counter() - t1)


def advantage_scope(episodes, cfg: StepConfig) -> torch.Tensor | None:
    """GDPO's per-dimension scope (``grpo.group_advantages``): with ``--pers-scope askers`` personalization is
    normalised among the episodes that asked (or whose preference scores every episode); else None."""
    if not (cfg.grpo.gdpo and cfg.grpo.pers_scope == "askers"):
        return None
    pers = [bool(e.stats.questions) or e.stats.preference in SCORES_NON_ASKERS for e in episodes]
    return torch.tensor([[d.name != "personalization" or p for d in DIMENSIONS] for p in pers])


def update_dtype(device: torch.device) -> torch.dtype:
    """The GRPO update's matmul dtype: bf16 autocast on CUDA; fp32 on CPU, where the sampler also runs fp32,
    so the sampler/trainer log-prob gap stays at rounding level."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def pad(seqs: list[list], value, device) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long if isinstance(value, int) else torch.float32)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=out.dtype)
    return out.to(device)


def shifted_logprobs(model, ids: torch.Tensor, temperature: float, entropy: bool = False,
                     where: torch.Tensor | None = None, dtype: torch.dtype | None = None):
    """log π(ids[:, t+1] | ids[:, :t+1]) for every t, [B, L-1]; optionally the policy entropy there.
    ``where`` (Bool[B, L-1]): compute the LM head, log-probs and entropy only at those positions (the loss
    positions, ~1/5 of an episode) and return 0 elsewhere; the values where it is True are unchanged.
    ``dtype``: the matmul dtype (``model.autocast``); None = the update's (``update_dtype``)."""
    with autocast(ids.device, update_dtype(ids.device) if dtype is None else dtype):
        hidden = model(ids[:, :-1], hidden_only=True)
        logits = model.logits(hidden if where is None else hidden[where]).float()
    targets = ids[:, 1:] if where is None else ids[:, 1:][where]
    lp = token_logprobs(logits, targets, temperature)
    ent = None
    if entropy:
        with torch.no_grad():
            z = torch.log_softmax(logits / temperature, dim=-1)
            ent = -(z.exp() * z).sum(-1)
    if where is not None:  # scatter back to [B, L-1]; gradients flow to the selected positions only
        lp = torch.zeros(where.shape, dtype=lp.dtype, device=lp.device).masked_scatter(where, lp)
        if ent is not None:
            ent = torch.zeros(where.shape, dtype=ent.dtype, device=ent.device).masked_scatter(where, ent)
    return lp, ent


def _all_reduce_sum(x: float, device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t)


def grpo_update(model, optimizer, episodes, advantages: torch.Tensor, cfg: GRPOConfig, *,
                keep: torch.Tensor | None = None, temperature: float = 1.0, micro_batch: int = 8,
                grad_clip: float = 1.0, ref_model=None) -> UpdateStats:
    """The policy-gradient update (steps 3-6 of ``grpo``'s docstring) on episodes with their advantages.
    ``keep`` (Bool[N], from ``group_advantages``): episodes whose tokens stay in the loss normaliser."""
    device = next(model.parameters()).device
    n = len(episodes)
    keep = torch.ones(n, dtype=torch.bool) if keep is None else keep
    # Global normalisers: masked tokens and non-empty episodes of the whole batch, all ranks.
    masks = [[float(m) * float(keep[i]) for m in e.loss_mask] for i, e in enumerate(episodes)]
    counts = [sum(m[1:]) for m in masks]  # loss tokens per episode (position 0 is never a target)
    n_tok = _all_reduce_sum(sum(counts), device)
    n_seq = _all_reduce_sum(sum(1 for c in counts if c > 0), device)
    if n_tok == 0:  # nothing to learn from (e.g. every group dropped): skip, and say so
        return UpdateStats(loss=0.0, skipped=True, skipped_episodes=n)
    # An episode with no loss token, or (without a KL term) with advantage exactly 0 -- a zero-variance
    # group -- adds exactly 0 to the loss and the gradient (the clipped objective is rho * A), so its
    # forward/backward is skipped; the normalisers above still count it, as the paper's token mean does.
    # Logged means (entropy, clip fractions, logprob gap) are over the episodes that carry gradient.
    active = [i for i in range(n) if counts[i] > 0 and (cfg.kl_beta > 0 or float(advantages[i]) != 0.0)]
    order = sorted(active, key=lambda i: len(episodes[i].ids))  # similar lengths share a micro-batch
    skipped_episodes, grad_norm = n - len(active), None
    sums: dict = {}
    for _epoch in range(cfg.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        total_loss = 0.0
        for s in range(0, len(order), micro_batch):
            idx = order[s:s + micro_batch]
            loss, m = _micro_batch_loss(model, ref_model, [episodes[i] for i in idx], [masks[i] for i in idx],
                                        advantages[idx], cfg, temperature, int(n_tok), int(n_seq))
            if not torch.isfinite(loss):
                optimizer.zero_grad(set_to_none=True)
                return UpdateStats(float("nan"), True, skipped_episodes, "loss", grad_norm)
            loss.backward()
            total_loss += loss.item()
            _accumulate(sums, m)
        gnorm = _reduce_clip_step(model, optimizer, grad_clip)
        if gnorm is None:
            return UpdateStats(total_loss, True, skipped_episodes, "grad", grad_norm)
        grad_norm = gnorm
    means = tuple((k, a / b) for k, (a, b) in sums.items() if b > 0)
    return UpdateStats(total_loss, False, skipped_episodes, None, grad_norm, n_tok, means)


def _micro_batch_loss(model, ref_model, eps, masks, adv, cfg, temperature, n_tok, n_seq):
    device = next(model.parameters()).device
    ids = pad([list(e.ids) for e in eps], 0, device)
    mask = pad(masks, 0.0, device)[:, 1:]
    old = pad([list(e.logprobs) for e in eps], 0.0, device)[:, 1:]
    where = mask > 0
    logp, ent = shifted_logprobs(model, ids, temperature, entropy=True, where=where)
    ref = None
    if cfg.kl_beta > 0:
        with torch.no_grad():
            ref, _ = shifted_logprobs(ref_model, ids, temperature, where=where)
    return policy_loss(logp, old, adv.to(device), mask, cfg, n_tokens_total=n_tok, n_seqs_total=n_seq,
                       ref_logp=ref, entropy=ent)


def _accumulate(sums: dict, m: dict) -> None:
    """Token-weighted running means of a micro-batch's loss metrics."""
    w = m.get("n_tokens", 0.0)
    for k, v in m.items():
        if k != "n_tokens" and v is not None and math.isfinite(v):
            a, b = sums.get(k, (0.0, 0.0))
            sums[k] = (a + v * w, b + w)


def _reduce_clip_step(model, optimizer, grad_clip: float) -> float | None:
    """Sum gradients over ranks, clip, step; the grad norm, or None (and no step) when it is not finite."""
    for p in model.parameters():  # a zero gradient, not none, where every episode was skipped: the
        if p.grad is None and p.requires_grad:  # optimizer (momentum, decay) and DDP see a normal step
            p.grad = torch.zeros_like(p)
    if dist.is_available() and dist.is_initialized():
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)  # each rank's loss is already over the global token count
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    if not torch.isfinite(gnorm):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    return float(gnorm)
