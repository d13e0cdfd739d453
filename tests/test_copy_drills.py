"""Copy drills (ppp_min/rl/sft.py): the synthetic phase where a from-scratch model learns to copy from context."""

import pytest
import torch

from ppp_min.lm.model import Decoder
from ppp_min.lm.presets import preset_config
from ppp_min.rl.sft import COPY_LEN, COPY_MIN, WarmStartConfig, copy_drills, sft_step, warm_start
from ppp_min.rl.step import shifted_logprobs


def test_a_drill_is_a_random_sequence_then_the_same_again():
    pool = [5, 9, 11, 40, 41]
    ids, mask = next(copy_drills(pool + [9, 9], 32, torch.Generator().manual_seed(0)))  # repeats: one pool
    assert ids.shape == mask.shape == (32, 2 * COPY_LEN)
    assert set(ids.flatten().tolist()) <= set(pool)
    lengths = set()
    for r in range(32):
        L = int(mask[r].sum().item()) + 1  # loss on the repeat after its first token
        lengths.add(L)
        assert COPY_MIN <= L <= COPY_LEN
        assert ids[r, L:2 * L].tolist() == ids[r, :L].tolist()
        assert mask[r, :L + 1].sum() == 0 and bool((mask[r, L + 1:2 * L] == 1).all()) and mask[r, 2 * L:].sum() == 0
    assert len(lengths) > 10  # the offset varies: no head at a fixed distance solves it
    again, _ = next(copy_drills(pool, 32, torch.Generator().manual_seed(0)))
    assert torch.equal(ids, again)  # seeded: the same drills every run
    with pytest.raises(ValueError, match="copy_drills needs"):
        next(copy_drills([], 3, torch.Generator()))


def test_ambiguous_drills_draw_the_frequent_tokens_and_still_repeat():
    """--copy-ambiguity: a share of tokens comes from the most frequent ones (so they recur within a row);
    the layout is that of the plain drills, and 0 gives exactly the plain drills."""
    from collections import Counter
    from ppp_min.rl.sft import AMBIGUOUS_POOL
    tokens = [t for t in range(100) for _ in range(1 + (t < AMBIGUOUS_POOL) * 50)]  # 0..15 are frequent
    plain, _ = next(copy_drills(tokens, 64, torch.Generator().manual_seed(0)))
    zero, _ = next(copy_drills(tokens, 64, torch.Generator().manual_seed(0), ambiguity=0.0))
    assert torch.equal(plain, zero)
    ids, mask = next(copy_drills(tokens, 64, torch.Generator().manual_seed(0), ambiguity=0.5))
    share = (ids < AMBIGUOUS_POOL).float().mean().item()
    assert 0.5 < share < 0.62  # half drawn from the 16, plus the plain draws that land there (16 of 100)
    for r in range(64):
        L = int(mask[r].sum().item()) + 1
        assert ids[r, L:2 * L].tolist() == ids[r, :L].tolist()
    assert max(Counter(ids[0, :COPY_LEN].tolist()).values()) > 2  # tokens recur: one of context is ambiguous
    with pytest.raises(ValueError, match="ambiguity"):
        next(copy_drills(tokens, 3, torch.Generator(), ambiguity=1.5))


def _repeat_logprob(model, drills) -> float:
    ids, mask = next(drills)
    with torch.no_grad():
        lp, _ = shifted_logprobs(model, ids, 1.0, dtype=torch.float32)
    return float((lp * mask[:, 1:]).sum() / mask[:, 1:].sum())


def test_drills_teach_copying_where_no_prior_helps():
    """Tiny preset with smeared keys, 300 drill steps: the repeat's mean log-prob rises from chance (log 1/V)
    towards certainty (measured: -5.13 at step 50, -3.02 at 150, -1.35 at 250, -0.87 at 300, -0.47 at 400); a
    model that does not copy cannot do better than log(1/V) on random tokens."""
    torch.manual_seed(0)
    V = 200
    model = Decoder(preset_config("tiny", V, smear_keys=True))
    drills = copy_drills(list(range(3, V)), 16, torch.Generator().manual_seed(1))
    before = _repeat_logprob(model, drills)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    for _ in range(300):
        sft_step(model, opt, *next(drills))
    after = _repeat_logprob(model, drills)
    assert before < -4.5  # ~log(1/197) = -5.28
    assert after > -1.3, after  # p > 0.27 per token, 50x chance: only copying gets there


def test_the_copy_phase_comes_first_and_needs_its_drills():
    cfg = WarmStartConfig(copy_steps=2, pretrain_steps=1, sft_steps=1, batch=2)
    assert cfg.total_steps == 4
    model = Decoder(preset_config("tiny", 50))
    demo = ([1, 5, 6, 7, 8], [0, 0, 1, 1, 1])
    phases = []
    warm_start(model, iter(lambda: [demo, demo], None), cfg, lambda s: phases.append((s.phase, s.lengths)),
               device="cpu", bf16=False, grad_clip=1.0, micro_batch=0,
               drills=copy_drills(list(range(3, 50)), 2, torch.Generator().manual_seed(0)))
    assert phases == [("copy", (2 * COPY_LEN,) * 2)] * 2 + [("pretrain", (5, 5)), ("sft", (5, 5))]
    with pytest.raises(ValueError, match="copy_steps > 0 needs"):
        warm_start(model, iter(lambda: [demo], None), cfg, lambda s: None, device="cpu", bf16=False,
                   grad_clip=1.0, micro_batch=0)
    with pytest.raises(ValueError, match="copy-steps"):
        WarmStartConfig(copy_steps=-1)
