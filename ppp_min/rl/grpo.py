"""GRPO: group advantages (``Advantages``) and the clipped policy loss (variants chosen by name).

Contract: this module knows nothing of users, tasks or models. It takes per-episode rewards with an explicit
group id, and per-token log-probs with a loss mask (1 exactly on tokens the policy sampled), and returns an
advantage per episode and a scalar loss whose gradient is the policy gradient. Bad config values or shapes
raise ``ValueError`` with one line naming the field.

The algorithm (PPP paper §5.2: GRPO + DAPO's clip-higher and token-level loss; defaults in brackets)

1. Rewards. Episode i of group g (the G rollouts of one prompt and preference) has the scalar
   R_i = clip(w·(s, c, p), 0, 1) from ``reward.py``.
2. Advantage (GRPO, Shao et al. 2024, arXiv 2402.03300):
   A_i = (R_i − mean_g R) / (std_g R + ε), std unbiased, ε = 1e-6; a singleton group uses mean 0, std 1
   (verl's convention). [adv_norm='std']  'none': A_i = R_i − mean_g R (Dr.GRPO, Liu et al. 2025,
   arXiv 2503.20783: the std division up-weights near-uniform groups).
   GDPO (arXiv 2601.05242): normalise each reward dimension k within the group, sum with weights,
   then normalise that sum over the batch: A_i = norm_batch(Σ_k w_k · norm_g(r_ik)).
   With a ``scope`` (Bool[N, K]), dimension k is normalised among the in-scope episodes of each group only
   and is 0 for the others ('askers': personalization among the episodes that asked, since a judge scores
   only questions; a lone in-scope episode keeps its raw value, so the size of its penalty counts). [off]
   Dynamic sampling (DAPO, Yu et al. 2025, arXiv 2503.14476): a group whose rewards are all equal has
   A = 0 and teaches nothing; with drop_zero_var its tokens also leave the normaliser (``Advantages.keep``).
3. Ratio per sampled token t of episode i: ρ_it = exp(logπθ(o_it) − logπold(o_it)), the log-ratio clamped
   to [−20, 20] before exp (verl). A_i is broadcast to every masked token of episode i.
4. Clipped surrogate (PPO, Schulman et al. 2017) with clip-higher (DAPO): [ε_low=0.2, ε_high=0.28]
   ℓ_it = −min(ρ_it A_i, clip(ρ_it, 1−ε_low, 1+ε_high) A_i).
   Dual clip (Ye et al. 2020, arXiv 1912.09729), for A_i < 0 only: ℓ_it = min(ℓ_it, −c·A_i) = min(ℓ_it, c|A_i|),
   so a token whose ratio exploded cannot dominate. [off]
5. KL to a frozen reference, k3 estimator (Schulman 2020, "Approximating KL divergence"):
   q = logπref − logπθ, KL_it = exp(q) − q − 1 ≥ 0;  ℓ_it += β·KL_it. [β = 0: no KL, no reference model]
6. Aggregation over the masked tokens of the WHOLE batch (m = mask):
   token-mean          L = Σ_it m ℓ / N_tok                      (DAPO; N_tok = global masked-token count) [default]
   seq-mean-token-mean L = (1/N_seq) Σ_i (Σ_t m ℓ / Σ_t m)       (original GRPO)
   constant            L = Σ_it m ℓ / (C · N_seq)                (Dr.GRPO; C = constant_norm)
   N_tok and N_seq are passed in by the trainer, so the losses of uneven micro-batches sum to the full
   batch's loss (and gradient); N_seq counts episodes with at least one masked token.

Why the loss is ≈ 0 while training works. With one update per batch (ppo_epochs=1, the paper's setting) the
policy that scores the tokens is the one that sampled them, so ρ ≡ 1 and no clip is active: ℓ_it = −A_i and
L = −Σ_i A_i n_i / N_tok, where n_i is episode i's token count. Advantages sum to ≈ 0 within a group, so L is
0 when lengths are equal and small otherwise: its value says nothing about progress. The gradient is not
zero: ∇ρ = ρ ∇logπθ = ∇logπθ at ρ = 1, so ∇L = −(1/N_tok) Σ_it m A_i ∇logπθ(o_it), the REINFORCE gradient
with the group mean as baseline. Watch rewards, clip fractions and the log-prob gap, not the loss.

Deliberately left out: an entropy bonus (the paper's entropy_coeff is 0; entropy is only logged), value
functions, and the token-level process rewards of FoldGRPO (unused by PPP). ``ppo_epochs`` is read
by the trainer, which loops over the same batch; only then does ρ move away from 1 and clipping matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ppp_min.knobs import knob

ADV_NORMS = ("std", "none")
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "constant")
PERS_SCOPES = ("group", "askers")


@dataclass(frozen=True)
class GRPOConfig:
    """The advantage and loss settings (defaults in brackets in the module docstring); train.py reads these
    defaults. Two differ from the paper, each one flag away: ``gdpo`` (``--no-gdpo`` gives the paper's
    scalar advantage) and, with it, the productivity weight (``run_config.GDPO_W_PROD``)."""
    clip_low: float = knob(0.2, "loss", "PPO clip epsilon low (paper/DAPO: 0.2)")  # ratio floor 1 − ε_low
    clip_high: float = knob(0.28, "loss", "clip-higher epsilon (DAPO: 0.28)")  # ratio ceiling 1 + ε_high (DAPO)
    adv_norm: str = knob("std", "loss", "group advantage normalisation: std (GRPO, paper) or none (Dr.GRPO) "
                         "(%(default)s)")
    loss_agg: str = knob("token-mean", "loss", "token-mean (paper: over the global token count) | "
                         "seq-mean-token-mean | constant (%(default)s)")  # DAPO, PPP | GRPO | Dr.GRPO
    constant_norm: float = knob(256.0, "loss", "normaliser of --loss-agg constant")  # C
    dual_clip: float | None = knob(None, "loss", "dual-clip constant c for A<0 (e.g. 3.0)", type=float)  # Ye 2020
    kl_beta: float = knob(0.0, "loss", "k3 KL to the frozen SFT model (paper: no KL)")  # 0: no KL (PPP, DAPO)
    ppo_epochs: int = knob(1, "loss", "updates per batch (paper: 1)")  # PPP uses 1, so ρ = 1 at the update
    gdpo: bool = knob(True, "loss", "GDPO: normalise each reward dimension in the group, then sum; --no-gdpo is the "
                      "paper's scalar advantage (docs/experiments.md#why-the-gdpo-advantage-by-default)")
    drop_zero_var: bool = knob(False, "loss", "drop zero-variance groups (DAPO dynamic sampling)")
    pers_scope: str = knob("group", "loss", "GDPO: normalise personalization over the whole group, or only among the "
                           "episodes that asked (answer_more and no_ask score every episode) (%(default)s)",
                           choices=list(PERS_SCOPES))  # docstring, step 2
    eps: float = 1e-6  # added to the std (verl's value)

    def __post_init__(self):
        def bad(name, want):
            raise ValueError(f"GRPOConfig.{name}={getattr(self, name)!r}: expected {want}")

        def num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not (num(self.clip_low) and 0 < self.clip_low < 1):
            bad("clip_low", "a number in (0, 1)")
        if not (num(self.clip_high) and self.clip_high > 0):
            bad("clip_high", "a number > 0")
        if self.adv_norm not in ADV_NORMS:
            bad("adv_norm", f"one of {list(ADV_NORMS)}")
        if self.loss_agg not in LOSS_AGGS:
            bad("loss_agg", f"one of {list(LOSS_AGGS)}")
        if not (num(self.constant_norm) and self.constant_norm > 0):
            bad("constant_norm", "a number > 0")
        if self.dual_clip is not None and not (num(self.dual_clip) and self.dual_clip > 1):
            bad("dual_clip", "None or a number > 1 (e.g. 3.0)")
        if not (num(self.kl_beta) and self.kl_beta >= 0):
            bad("kl_beta", "a number >= 0")
        if not (isinstance(self.ppo_epochs, int) and not isinstance(self.ppo_epochs, bool) and self.ppo_epochs >= 1):
            bad("ppo_epochs", "an integer >= 1")
        if not (num(self.eps) and self.eps > 0):
            bad("eps", "a number > 0")
        if self.pers_scope not in PERS_SCOPES:
            bad("pers_scope", f"one of {list(PERS_SCOPES)}")
        for name in ("gdpo", "drop_zero_var"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "a bool")


def _group_stats(x: torch.Tensor, inv: torch.Tensor, counts: torch.Tensor):
    """Per-group mean, unbiased std and spread (max − min) of x (float64)."""
    n = counts.numel()
    mean = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, inv, x) / counts
    sq = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, inv, (x - mean[inv]) ** 2)
    std = (sq / (counts - 1).clamp(min=1)).sqrt()
    hi = torch.zeros(n, dtype=x.dtype, device=x.device).scatter_reduce(0, inv, x, "amax", include_self=False)
    lo = torch.zeros(n, dtype=x.dtype, device=x.device).scatter_reduce(0, inv, x, "amin", include_self=False)
    return mean, std, hi - lo


def _normalise_in_groups(x, inv, counts, cfg):
    mean, std, spread = _group_stats(x, inv, counts)
    single = counts == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)  # singleton: mean 0, std 1 (verl)
    std = torch.where(single, torch.ones_like(std), std)
    a = x - mean[inv]
    if cfg.adv_norm == "std":
        a = a / (std[inv] + cfg.eps)
    return a, spread


def _normalise_in_scope(x, inv, counts, cfg, scope):
    """``_normalise_in_groups`` over the episodes where ``scope`` is True; 0 elsewhere (and no spread)."""
    if scope is None:
        return _normalise_in_groups(x, inv, counts, cfg)
    m = scope.to(torch.float64)
    n_in = torch.zeros_like(counts).index_add_(0, inv, m)
    sub = torch.where(scope, inv, inv.new_full(inv.shape, counts.numel()))  # out of scope: one spare group
    a, spread = _normalise_in_groups(x, sub, torch.cat([n_in, (counts - n_in).sum().view(1)]).clamp(min=1), cfg)
    return torch.where(scope, a, torch.zeros_like(a)), spread[:-1]


def _gdpo_sum(components, weights, inv, counts, cfg: GRPOConfig, n: int, scope=None):
    """GDPO's per-episode Σ_k w_k · norm_g(r_ik) (before the batch normalisation), and each group's largest
    per-dimension spread (a group is zero-variance only when every dimension is flat)."""
    if components is None or components.dim() != 2 or components.shape[0] != n:
        raise ValueError(f"GRPOConfig.gdpo needs components of shape (N={n}, K), got "
                         f"{None if components is None else tuple(components.shape)}")
    k = components.shape[1]
    w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (k,):
        raise ValueError(f"weights must have one entry per component (K={k}), got {tuple(w.shape)}")
    comp = components.detach().to(torch.float64)
    if not bool(torch.isfinite(comp).all()):
        raise ValueError("components contain NaN or inf; check the reward computation")
    if scope is not None and scope.shape != (n, k):
        raise ValueError(f"scope must be a Bool tensor of shape (N={n}, K={k}), got {tuple(scope.shape)}")
    per_dim, spreads = zip(*(_normalise_in_scope(comp[:, j], inv, counts, cfg, None if scope is None
                                                 else scope[:, j]) for j in range(k)))
    return (torch.stack(per_dim, 1) * w.to(comp.device)).sum(1), torch.stack(spreads, 1).amax(1)


@dataclass(frozen=True)
class Advantages:
    """What ``group_advantages`` returns: A_i per episode, the episodes whose tokens stay in the loss normaliser,
    and the batch's figures (python floats, the step record's keys: ``record()``)."""
    values: torch.Tensor  # Float[N], A_i
    keep: torch.Tensor  # Bool[N]: all True unless drop_zero_var
    zero_var_frac: float  # zero-variance groups / all groups
    n_groups: int
    adv_mean: float  # over the kept episodes
    adv_std: float
    reward_mean: float  # of the scalar R
    reward_std: float

    def record(self) -> dict:
        return {"zero_var_frac": self.zero_var_frac, "n_groups": self.n_groups, "adv_mean": self.adv_mean,
                "adv_std": self.adv_std, "reward_mean": self.reward_mean, "reward_std": self.reward_std}


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: GRPOConfig,
                     components: torch.Tensor | None = None, *, weights=None, scope=None) -> Advantages:
    """Advantage per episode (step 2 of the module docstring), with the batch's figures (``Advantages``).

    ``components`` (Float[N, K], the unweighted reward dimensions) and ``weights`` (K numbers, default 1)
    are used only when ``cfg.gdpo`` (pass the RewardWeights as ``weights``: they scale each normalised
    dimension, since a weight applied before the group normalisation would cancel; the total's clip to
    [0, 1] plays no part under GDPO). A group is zero-variance when it has ≥ 2 episodes and every signal
    the advantage uses (R, or each component under GDPO) spans less than ``eps``.
    ``keep`` (Bool[N]): multiply the loss mask by it; all True unless ``drop_zero_var``. ``scope`` (Bool[N, K], GDPO only): the episodes each dimension is
    normalised among (step 2); None = the whole group.
    """
    if rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a 1-D float tensor, got shape {tuple(rewards.shape)} {rewards.dtype}")
    n = rewards.shape[0]
    if group_ids.shape != (n,) or group_ids.is_floating_point() or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be a 1-D integer tensor of length {n}, got {tuple(group_ids.shape)} "
                         f"{group_ids.dtype}")
    if n == 0:
        raise ValueError("group_advantages: empty batch (no episodes)")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contain NaN or inf; check the reward computation")
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    r = rewards.detach().to(torch.float64)
    if cfg.gdpo:
        adv, spread = _gdpo_sum(components, weights, inv, counts, cfg, n, scope)
    else:
        adv, spread = _normalise_in_groups(r, inv, counts, cfg)
    zero_var = (spread < cfg.eps) & (counts > 1)  # per group
    keep = ~zero_var[inv] if cfg.drop_zero_var else torch.ones(n, dtype=torch.bool, device=rewards.device)
    if cfg.gdpo:  # batch normalisation of the summed advantage, over the episodes that stay
        kept = adv[keep]
        if kept.numel() >= 2:
            adv = (adv - kept.mean()) / (kept.std() + cfg.eps)
    if cfg.drop_zero_var:
        adv = torch.where(keep, adv, torch.zeros_like(adv))
    kept = adv[keep]
    stats = torch.stack([
        zero_var.to(torch.float64).mean(),
        kept.mean() if kept.numel() else torch.zeros((), dtype=torch.float64),
        kept.std() if kept.numel() >= 2 else torch.zeros((), dtype=torch.float64),
        r.mean(),
        r.std() if n >= 2 else torch.zeros((), dtype=torch.float64),
    ]).tolist()
    return Advantages(adv.to(rewards.dtype), keep, zero_var_frac=stats[0], n_groups=int(counts.numel()),
                      adv_mean=stats[1], adv_std=stats[2], reward_mean=stats[3], reward_std=stats[4])


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                cfg: GRPOConfig, *, n_tokens_total: int | None = None, n_seqs_total: int | None = None,
                ref_logp: torch.Tensor | None = None, entropy: torch.Tensor | None = None):
    """The clipped policy loss (steps 3-6 of the module docstring) and a metrics dict of python floats.

    logp: Float[B,T] log-probs of the sampled tokens under the policy being trained (same temperature as the
    sampler); old_logp: the sampler's; adv: Float[B]; mask: [B,T], 1 on sampled tokens. ``n_tokens_total`` /
    ``n_seqs_total``: the whole batch's masked-token count / episodes with ≥ 1 masked token, when this call
    sees one micro-batch (default: this batch's). ref_logp: needed when kl_beta > 0. entropy: logged only.
    """
    _check_loss_inputs(logp, old_logp, adv, mask, cfg, ref_logp, entropy, n_tokens_total, n_seqs_total)
    dt = torch.promote_types(logp.dtype, torch.float32)  # bf16 log-probs are upcast; float64 stays
    logp, m = logp.to(dt), mask.to(dt)
    a = adv.detach().to(dt)[:, None]  # A_i broadcast to every token of episode i
    log_ratio = (logp - old_logp.detach().to(dt)).clamp(-20.0, 20.0)  # step 3 (clamp: verl)
    ratio = torch.exp(log_ratio)
    loss_tok = torch.maximum(-a * ratio, -a * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high))  # step 4
    if cfg.dual_clip is not None:  # A < 0 only: min(ℓ, c|A|)
        loss_tok = torch.where(a < 0, torch.minimum(loss_tok, -a * cfg.dual_clip), loss_tok)
    kl = None
    if cfg.kl_beta > 0:  # step 5: k3 estimator of KL(πθ || πref)
        q = (ref_logp.detach().to(dt) - logp).clamp(-20.0, 20.0)
        kl = torch.exp(q) - q - 1.0
        loss_tok = loss_tok + cfg.kl_beta * kl
    loss = _aggregate(loss_tok, m, cfg, n_tokens_total, n_seqs_total)  # step 6
    return loss, _loss_metrics(ratio, log_ratio, a, m, cfg, kl, entropy)


def _aggregate(loss_tok, m, cfg: GRPOConfig, n_tokens_total, n_seqs_total) -> torch.Tensor:
    """Step 6: token-mean | seq-mean-token-mean | constant, over the whole batch's counts when given."""
    per_seq_tokens = m.sum(1)
    if cfg.loss_agg == "token-mean":
        return (loss_tok * m).sum() / (m.sum().clamp(min=1) if n_tokens_total is None else n_tokens_total)
    n_seqs = (per_seq_tokens > 0).sum().clamp(min=1) if n_seqs_total is None else n_seqs_total
    if cfg.loss_agg == "seq-mean-token-mean":
        return ((loss_tok * m).sum(1) / per_seq_tokens.clamp(min=1)).sum() / n_seqs
    return (loss_tok * m).sum() / (cfg.constant_norm * n_seqs)  # constant (Dr.GRPO)


def _check_loss_inputs(logp, old_logp, adv, mask, cfg, ref_logp, entropy, n_tokens_total, n_seqs_total) -> None:
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    b, t = logp.shape
    for name, x in (("old_logp", old_logp), ("mask", mask), ("ref_logp", ref_logp), ("entropy", entropy)):
        if x is not None and x.shape != (b, t):
            raise ValueError(f"{name} must have logp's shape {(b, t)}, got {tuple(x.shape)}")
    if adv.shape != (b,):
        raise ValueError(f"adv must be [B]={b} (one advantage per episode), got {tuple(adv.shape)}")
    if cfg.kl_beta > 0 and ref_logp is None:
        raise ValueError("GRPOConfig.kl_beta > 0 needs ref_logp (log-probs under the frozen reference)")
    for name, v in (("n_tokens_total", n_tokens_total), ("n_seqs_total", n_seqs_total)):
        if v is not None and not v > 0:
            raise ValueError(f"{name}={v!r}: expected a positive count for the whole batch")


@torch.no_grad()
def _loss_metrics(ratio, log_ratio, a, m, cfg: GRPOConfig, kl, entropy) -> dict:
    """Means over this call's masked tokens: clip_frac_low (A < 0 and ρ < 1−ε_low), clip_frac_high (A > 0 and
    ρ > 1+ε_high), dual_clip_frac, ratio_mean, logprob_gap (mean |logπθ − logπold|), kl, entropy; n_tokens."""
    tok_count = m.sum()
    r = ratio.detach()

    def mmean(x):
        return (x.to(m.dtype) * m).sum() / tok_count.clamp(min=1)

    names = ["clip_frac_low", "clip_frac_high", "ratio_mean", "logprob_gap", "n_tokens"]
    vals = [mmean((a < 0) & (r < 1.0 - cfg.clip_low)), mmean((a > 0) & (r > 1.0 + cfg.clip_high)),
            mmean(r), mmean(log_ratio.detach().abs()), tok_count]
    if cfg.dual_clip is not None:
        names.append("dual_clip_frac")
        vals.append(mmean((a < 0) & (r > cfg.dual_clip)))
    if kl is not None:
        names.append("kl")
        vals.append(mmean(kl.detach()))
    if entropy is not None:
        names.append("entropy")
        vals.append(mmean(entropy.detach().to(m.dtype)))
    return dict(zip(names, torch.stack([v.float() for v in vals]).tolist()))  # one host sync
