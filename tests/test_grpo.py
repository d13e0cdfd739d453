"""GRPO advantages and policy loss on small hand-computed tensors."""

import math

import pytest
import torch

from ppp_min.rl.grpo import GRPOConfig, group_advantages, policy_loss

EPS = 1e-6


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


# --- advantages ---------------------------------------------------------------------------------------

# group 5: [1, 0, 0.5] (mean 0.5, unbiased std 0.5); group 9: [0.2, 0.2] (zero variance); group 2: singleton.
R = [1.0, 0.0, 0.2, 0.5, 0.2, 0.7]
G = [5, 5, 9, 5, 9, 2]


def test_advantages_std():
    res = group_advantages(t(R), t(G, torch.long), GRPOConfig(gdpo=False))
    adv = res.values
    s = 0.5 + EPS
    expected = [0.5 / s, -0.5 / s, 0.0, 0.0, 0.0, 0.7 / (1 + EPS)]  # singleton: mean 0, std 1 (verl)
    assert adv.tolist() == pytest.approx(expected, abs=1e-12)
    assert res.zero_var_frac == pytest.approx(1 / 3) and res.n_groups == 3
    assert res.keep.tolist() == [True] * 6
    assert res.adv_mean == pytest.approx(sum(expected) / 6)
    assert res.reward_mean == pytest.approx(sum(R) / 6)


def test_advantages_no_std_dr_grpo():
    adv = group_advantages(t(R), t(G, torch.long), GRPOConfig(adv_norm="none", gdpo=False)).values
    assert adv.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0, 0.7], abs=1e-12)


def test_advantages_keep_dtype_and_singleton_batch():
    res = group_advantages(t([0.3], torch.float32), t([0], torch.long), GRPOConfig(gdpo=False))
    adv = res.values
    assert adv.dtype == torch.float32 and adv.item() == pytest.approx(0.3 / (1 + EPS))
    assert res.zero_var_frac == 0.0 and res.adv_std == 0.0


def test_drop_zero_var():
    res = group_advantages(t(R), t(G, torch.long), GRPOConfig(drop_zero_var=True, gdpo=False))
    adv = res.values
    assert res.keep.tolist() == [True, True, False, True, False, True]
    assert adv[2].item() == 0.0 and adv[4].item() == 0.0
    assert adv[0].item() == pytest.approx(0.5 / (0.5 + EPS))


def test_zero_var_tolerates_float_dust():
    r = t([0.1 + 0.2, 0.3, 1.0, 0.0])  # 0.30000000000000004 vs 0.3
    res = group_advantages(r, t([0, 0, 1, 1], torch.long), GRPOConfig(gdpo=False))
    adv = res.values
    assert res.zero_var_frac == 0.5 and abs(adv[0].item()) < 1e-9


def _norm(xs):  # the reference: group normalisation by hand (unbiased std + eps)
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return [(x - m) / (sd + EPS) for x in xs]


def test_gdpo_two_components():
    comp = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.5], [0.0, 0.0], [0.0, 1.0]]
    groups = [0, 0, 0, 1, 1]
    rewards = t([sum(c) for c in comp])
    res = group_advantages(rewards, t(groups, torch.long), GRPOConfig(gdpo=True), t(comp),
                           weights=[1.0, 2.0])
    adv = res.values
    d0 = _norm([1.0, 0.0, 0.0]) + [0.0, 0.0]  # group 1's first dimension is constant: 0
    d1 = _norm([0.0, 1.0, 0.5]) + _norm([0.0, 1.0])
    summed = [a + 2.0 * b for a, b in zip(d0, d1)]
    m = sum(summed) / 5
    sd = math.sqrt(sum((x - m) ** 2 for x in summed) / 4)
    expected = [(x - m) / (sd + EPS) for x in summed]
    assert adv.tolist() == pytest.approx(expected, abs=1e-9)
    assert res.zero_var_frac == 0.0  # group 1 varies in dimension 1
    # Plain GRPO on the summed reward sees group 0 as [1, 1, 0.5]: a different advantage.
    plain = group_advantages(rewards, t(groups, torch.long), GRPOConfig(gdpo=False)).values
    assert not torch.allclose(plain, adv)


def test_gdpo_needs_components():
    with pytest.raises(ValueError, match="components"):
        group_advantages(t(R), t(G, torch.long), GRPOConfig(gdpo=True))
    with pytest.raises(ValueError, match="weights"):
        group_advantages(t([1.0, 0.0]), t([0, 0], torch.long), GRPOConfig(gdpo=True), t([[1.0], [0.0]]),
                         weights=[1.0, 1.0])


def test_advantage_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(t([1.0, math.nan]), t([0, 0], torch.long), GRPOConfig(gdpo=False))
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(t([1.0, 0.0]), t([0.0, 0.0]), GRPOConfig(gdpo=False))
    with pytest.raises(ValueError, match="empty"):
        group_advantages(t([]), t([], torch.long), GRPOConfig(gdpo=False))


# --- the clipped loss per token -----------------------------------------------------------------------

# (advantage, ratio, expected per-token loss, expected d loss / d logp) with ε_low 0.2, ε_high 0.28, c = 3
CASES = [
    (1.0, 1.5, -1.28, 0.0),  # A > 0, ratio above 1+ε_high: clipped, no gradient
    (1.0, 0.5, -0.5, -0.5),  # A > 0, ratio low: unclipped, d(-Aρ)/dlogp = -Aρ
    (-1.0, 0.5, 0.8, 0.0),  # A < 0, ratio below 1-ε_low: clipped
    (-1.0, 1.5, 1.5, 1.5),  # A < 0, ratio high: unclipped (below the dual clip)
    (-1.0, 4.0, 3.0, 0.0),  # A < 0, ratio above c = 3: dual clip caps the loss at c|A|
    (2.0, 1.1, -2.2, -2.2),  # inside the trust region
]


def _one_token_batch():
    adv = t([c[0] for c in CASES])
    old = t([[math.log(0.3)]] * len(CASES))
    logp = (old + t([[math.log(c[1])] for c in CASES])).requires_grad_(True)
    return logp, old, adv


def test_clipped_loss_per_token_and_dual_clip():
    logp, old, adv = _one_token_batch()
    cfg = GRPOConfig(dual_clip=3.0)
    for i, (_, _, want, want_grad) in enumerate(CASES):
        mask = torch.zeros(len(CASES), 1, dtype=torch.float64)
        mask[i] = 1
        logp.grad = None
        loss, _ = policy_loss(logp, old, adv, mask, cfg)
        loss.backward()
        assert loss.item() == pytest.approx(want, abs=1e-6), CASES[i]
        assert logp.grad[i, 0].item() == pytest.approx(want_grad, abs=1e-6), CASES[i]
    # Without the dual clip the exploded ratio costs ρ|A| = 4.
    mask = torch.zeros(len(CASES), 1)
    mask[4] = 1
    assert policy_loss(logp, old, adv, mask, GRPOConfig(gdpo=False))[0].item() == pytest.approx(4.0, abs=1e-6)


def test_metrics():
    logp, old, adv = _one_token_batch()
    ent = torch.full((len(CASES), 1), 0.25)
    loss, m = policy_loss(logp, old, adv, torch.ones(len(CASES), 1), GRPOConfig(dual_clip=3.0), entropy=ent)
    n = len(CASES)
    assert loss.item() == pytest.approx(sum(c[2] for c in CASES) / n, abs=1e-6)
    assert m["clip_frac_low"] == pytest.approx(1 / n) and m["clip_frac_high"] == pytest.approx(1 / n)
    assert m["dual_clip_frac"] == pytest.approx(1 / n)
    assert m["ratio_mean"] == pytest.approx(sum(c[1] for c in CASES) / n, abs=1e-6)
    assert m["logprob_gap"] == pytest.approx(sum(abs(math.log(c[1])) for c in CASES) / n, abs=1e-6)
    assert m["entropy"] == pytest.approx(0.25) and m["n_tokens"] == n and "kl" not in m
    assert all(isinstance(v, float) for v in m.values())


def test_k3_kl():
    logp = t([[math.log(0.5), math.log(0.2)]]).requires_grad_(True)
    ref = t([[math.log(0.25), math.log(0.2)]])
    # token 0: q = log(0.25/0.5), kl = 0.5 - q - 1 = log 2 - 0.5; token 1: kl = 0. Advantage 0: only the KL.
    loss, m = policy_loss(logp, logp.detach(), t([0.0]), torch.ones(1, 2), GRPOConfig(kl_beta=0.1), ref_logp=ref)
    kl0 = math.log(2) - 0.5
    assert m["kl"] == pytest.approx(kl0 / 2, abs=1e-9)
    assert loss.item() == pytest.approx(0.1 * kl0 / 2, abs=1e-9)
    loss.backward()  # d/dlogp of exp(ref - logp) - (ref - logp) - 1 = 1 - exp(ref - logp)
    assert logp.grad[0].tolist() == pytest.approx([0.1 * (1 - 0.5) / 2, 0.0], abs=1e-9)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, logp, t([0.0]), torch.ones(1, 2), GRPOConfig(kl_beta=0.1))


# --- aggregation ----------------------------------------------------------------------------------------

# Ratio 1, so ℓ = -A per token: row 0 has 2 tokens of -1, row 1 one token of +3, row 2 no tokens.
AGG_MASK = t([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
AGG_ADV = t([1.0, -3.0, 5.0])


@pytest.mark.parametrize("agg,cfg_extra,expected", [
    ("token-mean", {}, (-2 + 3) / 3),
    ("seq-mean-token-mean", {}, (-1 + 3) / 2),  # the empty row is not a sequence of the mean
    ("constant", {"constant_norm": 4.0}, (-2 + 3) / (4 * 2)),
])
def test_aggregation_modes(agg, cfg_extra, expected):
    logp = torch.zeros(3, 3, dtype=torch.float64)
    loss, m = policy_loss(logp, logp, AGG_ADV, AGG_MASK, GRPOConfig(loss_agg=agg, **cfg_extra))
    assert loss.item() == pytest.approx(expected, abs=1e-12) and m["n_tokens"] == 3


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "constant"])
def test_uneven_micro_batches_sum_to_the_full_batch(agg):
    g = torch.Generator().manual_seed(0)
    b, tt = 7, 6
    logp0 = -torch.rand(b, tt, generator=g, dtype=torch.float64) * 3
    old = logp0 + (torch.rand(b, tt, generator=g, dtype=torch.float64) - 0.5)  # ratios on both clip sides
    ref = logp0 + (torch.rand(b, tt, generator=g, dtype=torch.float64) - 0.5)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    lengths = [6, 1, 3, 0, 5, 2, 4]
    mask = t([[1] * n + [0] * (tt - n) for n in lengths])
    cfg = GRPOConfig(loss_agg=agg, dual_clip=3.0, kl_beta=0.05, constant_norm=8.0)

    full = logp0.clone().requires_grad_(True)
    loss_full, mf = policy_loss(full, old, adv, mask, cfg, ref_logp=ref)
    loss_full.backward()
    assert 0 < mf["clip_frac_low"] + mf["clip_frac_high"]

    micro = logp0.clone().requires_grad_(True)
    n_tok, n_seq = int(mask.sum()), sum(n > 0 for n in lengths)
    total = 0.0
    for lo, hi in [(0, 1), (1, 5), (5, 7)]:  # uneven: 1, 4 and 2 rows
        loss, _ = policy_loss(micro[lo:hi], old[lo:hi], adv[lo:hi], mask[lo:hi], cfg,
                              n_tokens_total=n_tok, n_seqs_total=n_seq, ref_logp=ref[lo:hi])
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(loss_full.item(), abs=1e-12)
    assert torch.allclose(micro.grad, full.grad, atol=1e-12)
    # Without the global counts, averaging micro-batch losses would weight tokens unequally.
    naive = sum(policy_loss(logp0[lo:hi], old[lo:hi], adv[lo:hi], mask[lo:hi], cfg, ref_logp=ref[lo:hi])[0].item()
                for lo, hi in [(0, 1), (1, 5), (5, 7)]) / 3
    assert naive != pytest.approx(loss_full.item(), abs=1e-6)


def test_loss_is_zero_at_ratio_one_but_gradient_is_not():
    rewards = t([1.0, 0.0, 0.5, 0.5, 0.0, 1.0])
    adv = group_advantages(rewards, t([0, 0, 0, 1, 1, 1], torch.long), GRPOConfig(gdpo=False)).values
    logp = (-torch.rand(6, 4, dtype=torch.float64)).requires_grad_(True)
    mask = torch.ones(6, 4, dtype=torch.float64)  # equal lengths: advantages sum to 0 per group
    loss, m = policy_loss(logp, logp.detach(), adv, mask, GRPOConfig(gdpo=False))
    assert abs(loss.item()) < 1e-12 and m["ratio_mean"] == 1.0 and m["logprob_gap"] == 0.0
    loss.backward()
    expected = (-adv[:, None] / 24).expand(6, 4)  # ∇L = -A / N_tok per token: the policy gradient
    assert torch.allclose(logp.grad, expected, atol=1e-12) and logp.grad.abs().sum() > 0


def test_all_masked_batch_gives_zero_loss_with_a_graph():
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, m = policy_loss(logp, logp.detach(), torch.ones(2), torch.zeros(2, 3), GRPOConfig(gdpo=False))
    loss.backward()
    assert loss.item() == 0.0 and m["n_tokens"] == 0.0 and logp.grad.abs().sum() == 0


def test_policy_loss_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="mask"):
        policy_loss(x, x, torch.zeros(2), torch.ones(2, 2), GRPOConfig(gdpo=False))
    with pytest.raises(ValueError, match="adv"):
        policy_loss(x, x, torch.zeros(3), torch.ones(2, 3), GRPOConfig(gdpo=False))
    with pytest.raises(ValueError, match="n_tokens_total"):
        policy_loss(x, x, torch.zeros(2), torch.ones(2, 3), GRPOConfig(gdpo=False), n_tokens_total=0)


# --- config ---------------------------------------------------------------------------------------------

def test_config_defaults_are_the_papers_except_gdpo():
    c = GRPOConfig()
    assert (c.clip_low, c.clip_high, c.adv_norm, c.loss_agg, c.kl_beta, c.ppo_epochs) == \
        (0.2, 0.28, "std", "token-mean", 0.0, 1)
    assert c.dual_clip is None and not c.drop_zero_var and c.eps == 1e-6
    assert c.gdpo  # the one deviation, measured (README); --no-gdpo gives the paper's scalar advantage
    assert GRPOConfig(ppo_epochs=4).ppo_epochs == 4


@pytest.mark.parametrize("kwargs,name", [
    ({"clip_low": 0.0}, "clip_low"), ({"clip_low": 1.0}, "clip_low"), ({"clip_high": 0}, "clip_high"),
    ({"adv_norm": "mad"}, "adv_norm"), ({"loss_agg": "sum"}, "loss_agg"), ({"constant_norm": 0}, "constant_norm"),
    ({"dual_clip": 1.0}, "dual_clip"), ({"kl_beta": -0.1}, "kl_beta"), ({"ppo_epochs": 0}, "ppo_epochs"),
    ({"ppo_epochs": 1.5}, "ppo_epochs"), ({"eps": 0.0}, "eps"), ({"gdpo": "yes"}, "gdpo"),
    ({"clip_high": math.inf}, "clip_high"),
])
def test_config_validation(kwargs, name):
    with pytest.raises(ValueError, match=f"GRPOConfig.{name}="):
        GRPOConfig(**kwargs)


@pytest.mark.parametrize("micro_batch", [0, 1, 2])
def test_sft_step_loss_is_masked_cross_entropy_of_a_full_forward(micro_batch):
    """sft_step runs the LM head only on masked positions, in micro-batches normalised by the whole
    batch's token count; its loss and gradient must equal the slow reference: full logits, log_softmax over
    the vocabulary, mean negative log-likelihood over the mask-1 targets of the whole batch at once."""
    from ppp_min.lm.model import Decoder
    from ppp_min.lm.presets import preset_config
    from ppp_min.rl.step import pad
    from ppp_min.rl.sft import sft_step
    torch.manual_seed(0)
    model = Decoder(preset_config("tiny", 50))
    seqs = [[1, 5, 7, 9, 11, 2], [1, 4, 4, 8], [3, 9, 2]]
    masks = [[0, 0, 1, 1, 0, 1], [0, 1, 1, 1], [0, 0, 1]]
    ids, mask = pad(seqs, 0, "cpu"), pad(masks, 0.0, "cpu")
    logp = torch.log_softmax(model(ids[:, :-1]).float(), -1)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
    m = mask[:, 1:]
    ref_loss = (nll * m).sum() / m.sum()
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    got = sft_step(model, opt, ids, mask, grad_clip=0.0, micro_batch=micro_batch)
    assert got == pytest.approx(ref_loss.item(), rel=1e-6, abs=1e-6)
    for p, g in zip(model.parameters(), ref_grads):
        assert torch.allclose(p.grad, g, atol=1e-6)


def test_sft_step_with_turn_weights_is_the_mean_of_turn_means():
    """Hand-computed: with masks of 1/len(turn) the loss is the mean over turns of each turn's mean NLL."""
    from ppp_min.lm.model import Decoder
    from ppp_min.lm.presets import preset_config
    from ppp_min.rl.step import pad
    from ppp_min.rl.sft import sft_step
    torch.manual_seed(0)
    model = Decoder(preset_config("tiny", 50))
    seqs = [[1, 5, 7, 9, 11, 2], [1, 4, 4, 8]]
    masks = [[0, 0, 0.5, 0.5, 0, 1], [0, 1 / 3, 1 / 3, 1 / 3]]  # turns: (7, 9), (2,), (4, 4, 8)
    with torch.no_grad():
        nll = [-torch.log_softmax(model(torch.tensor([s[:-1]])).float(), -1)[0, range(len(s) - 1), s[1:]]
               for s in seqs]
    turns = [nll[0][1:3].mean(), nll[0][4:5].mean(), nll[1][0:3].mean()]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    got = sft_step(model, opt, pad(seqs, 0, "cpu"), pad(masks, 0.0, "cpu"), grad_clip=0.0)
    assert got == pytest.approx(sum(turns).item() / 3, rel=1e-5)


def test_shifted_logprobs_where_matches_the_full_computation_and_its_gradient():
    from ppp_min.lm.model import Decoder
    from ppp_min.lm.presets import preset_config
    from ppp_min.rl.step import shifted_logprobs
    torch.manual_seed(0)
    model = Decoder(preset_config("tiny", 40))
    ids = torch.randint(0, 40, (3, 9))
    where = torch.rand(3, 8) > 0.6
    where[0, 0] = True
    w = torch.randn(3, 8)

    def run(sel):
        model.zero_grad()
        lp, ent = shifted_logprobs(model, ids, 0.7, entropy=True, where=sel)
        (lp * w * where).sum().backward()
        return lp.detach(), ent, [p.grad.clone() for p in model.parameters()]
    lp_full, ent_full, g_full = run(None)
    lp_sel, ent_sel, g_sel = run(where)
    assert torch.allclose(lp_sel[where], lp_full[where], atol=1e-6)
    assert torch.allclose(ent_sel[where], ent_full[where], atol=1e-6)
    assert (lp_sel[~where] == 0).all() and (ent_sel[~where] == 0).all()
    for a, b in zip(g_full, g_sel):
        assert torch.allclose(a, b, atol=1e-6)


def test_personalization_among_askers_by_hand():
    """--pers-scope askers: the dimension is normalised among in-scope episodes only, 0 elsewhere; a lone
    in-scope episode keeps its raw value, so the size of its penalty counts (under 'group' it does not)."""
    from dataclasses import replace

    from ppp_min.rl.grpo import _gdpo_sum
    cfg = GRPOConfig()
    comp = torch.tensor([[0.0, 0.0, -0.5], [0.0, 0.0, 0.05], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    inv, counts = torch.zeros(4, dtype=torch.long), torch.tensor([4.0], dtype=torch.float64)
    scope = torch.tensor([[True, True, s] for s in (True, True, False, False)])
    summed, _ = _gdpo_sum(comp, (0.0, 0.0, 1.0), inv, counts, cfg, 4, scope)
    # in scope: [-0.5, 0.05], mean -0.225, unbiased std 0.275 * sqrt(2)
    a = 0.275 / (0.275 * 2 ** 0.5 + cfg.eps)
    assert summed.tolist() == pytest.approx([-a, a, 0.0, 0.0])
    # two groups, one lone asker each, penalties -0.5 and -0.05
    comp = torch.zeros(8, 3)
    comp[0, 2], comp[4, 2] = -0.5, -0.05
    gid = torch.tensor([0] * 4 + [1] * 4)
    scope = torch.tensor([[True, True, i in (0, 4)] for i in range(8)])
    grp = group_advantages(torch.zeros(8), gid, cfg, comp, weights=(0.0, 0.0, 1.0)).values
    ask = group_advantages(torch.zeros(8), gid, replace(cfg, pers_scope="askers"), comp,
                          weights=(0.0, 0.0, 1.0), scope=scope).values
    assert float(grp[0]) == pytest.approx(float(grp[4]), rel=1e-3)  # "group": the penalty size is lost (up to eps)
    assert ask[0] < 0 and ask[0] < ask[4] and len({round(float(ask[i]), 9) for i in (1, 2, 3, 5, 6, 7)}) == 1
    raw = comp[:, 2].double()  # in scope alone in their groups: raw values, then the batch normalisation
    assert ask.double().tolist() == pytest.approx(((raw - raw.mean()) / (raw.std() + cfg.eps)).tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="pers_scope"):
        GRPOConfig(pers_scope="nobody")
