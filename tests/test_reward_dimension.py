"""A reward term added the way a fork adds one (a ``Dimension`` registered from this file alone) reaches the
breakdown, the GDPO advantage and the step record of a real GRPO step of the tiny model."""

import copy

import torch
from tiny import tiny_policy

from ppp_min.rl import reward
from ppp_min.rl.grpo import GRPOConfig, group_advantages
from ppp_min.rl.reward import Dimension, RewardWeights, register_dimension
from ppp_min.rl.rollout import EpisodeSpec, RolloutConfig
from ppp_min.rl.step import StepConfig, grpo_step
from ppp_min.run.loop import step_record
from ppp_min.userville.agent_env import LocalUser


def _brevity(stats) -> float:
    """The toy term: fewer turns and fewer questions are better."""
    return -0.1 * stats.n_turns - 0.2 * len(stats.questions)


def test_a_registered_dimension_reaches_the_advantage_and_the_step_record():
    tasks, _, tok, model = tiny_policy(tasks_per_family=4, n_demos=120, vocab=1024, sft_steps=60)
    specs = [EpisodeSpec(tasks[i], ("json", "one_question")[i % 2], True, group_id=i) for i in range(3)]
    cfg = StepConfig(RolloutConfig(group_size=4, max_turns=4, max_new_tokens=20), RewardWeights(),
                     GRPOConfig(gdpo=True))
    brevity = Dimension("brevity", "brev", _brevity, default=0.5)  # no RewardWeights field: its default
    register_dimension(brevity)
    try:
        policy = copy.deepcopy(model)
        res = grpo_step(policy, tok, torch.optim.SGD(policy.parameters(), lr=0.0), specs, LocalUser(), cfg,
                        torch.Generator().manual_seed(0))
        rec = step_record(1, res)
        assert cfg.weights.vector == (1.0, 1.0, 1.0, 0.5)
    finally:
        reward.DIMENSIONS.remove(brevity)
    toy = [_brevity(e.stats) for e in res.episodes]
    assert rec["brevity"] == sum(toy) / len(toy)
    assert [c[3] for c in res.rewards.components] == toy
    comps = torch.tensor(res.rewards.components)  # as grpo_step hands them to the advantage
    assert comps.shape == (12, 4)
    for b, e in zip(res.rewards.breakdowns, res.episodes):  # the total weighs the new term too (then clips)
        want = sum(w * v for w, v in zip((1.0, 1.0, 1.0, 0.5), b.components))
        assert b.total == min(max(want, 0.0), 1.0) and b.value("brevity") == _brevity(e.stats)
    gids = torch.tensor([e.group_id for e in res.episodes])
    totals = torch.tensor(res.rewards.totals)
    with_it = group_advantages(totals, gids, cfg.grpo, comps, weights=(1.0, 1.0, 1.0, 0.5)).values
    without = group_advantages(totals, gids, cfg.grpo, comps[:, :3], weights=(1.0, 1.0, 1.0)).values
    assert torch.equal(res.advantages.values, with_it)
    varies = any(len(set(toy[g * 4:g * 4 + 4])) > 1 for g in range(3))
    assert varies, "the toy term must vary within a group for this test to say anything"
    assert not torch.allclose(with_it, without)
    assert reward.DIMENSIONS[-1].name == "personalization"  # unregistered again
