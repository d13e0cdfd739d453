"""train.py's flags -> RunConfig: one source of truth for defaults, one validation per value, the training mix,
and the throughput figures (tokens/s, GFLOP/s, MFU) of the final JSON."""

import os
import random
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train  # noqa: E402
from ppp_min.machine.speed import Meter, matmul_trials  # noqa: E402
from ppp_min.rl.grpo import GRPOConfig  # noqa: E402
from ppp_min.rl.reward import RewardWeights  # noqa: E402
from ppp_min.rl.rollout import RolloutConfig  # noqa: E402
from ppp_min.rl.sft import WarmStartConfig  # noqa: E402
from ppp_min.run.cli import from_args  # noqa: E402
from ppp_min.run.config import GDPO_W_PROD, RLConfig, RunConfig  # noqa: E402
from ppp_min.run.loop import training_mix  # noqa: E402


def cfg_of(*argv):
    return from_args(train.build_parser().parse_args(list(argv)))


def test_cli_defaults_are_the_library_defaults():
    c = cfg_of()
    assert c.rl == RLConfig() and c.rollout == RolloutConfig() and c.grpo == GRPOConfig()
    assert c.warm == WarmStartConfig() and c.weights == RewardWeights(prod=GDPO_W_PROD)
    lib = RunConfig()
    for name in ("model", "prefs", "families", "train_tasks", "eval_tasks", "seed", "eval_every", "log_samples",
                 "samples_every", "out", "save_every", "device", "threads", "eval_temperature", "eval_batch",
                 "eval_split"):
        assert getattr(c, name) == getattr(lib, name), name


def test_auto_settings_resolve_in_one_place(tmp_path):
    assert cfg_of().warm.pretrain_steps == 200 and cfg_of().warm.copy_steps == 400
    assert cfg_of("--model", str(tmp_path)).warm.copy_steps == 0  # a pretrained model needs no copy drills
    assert cfg_of("--model", str(tmp_path)).warm.pretrain_steps == 0  # a pretrained directory
    assert cfg_of("--model", str(tmp_path), "--pretrain-steps", "7").warm.pretrain_steps == 7
    from ppp_min.run.config import PRETRAINED_RL, PRETRAINED_WARM
    pre = cfg_of("--model", str(tmp_path))
    assert (pre.warm.sft_steps, pre.warm.batch, pre.warm.lr, pre.rl.lr, pre.rl.micro_batch) == (
        PRETRAINED_WARM.sft_steps, PRETRAINED_WARM.batch, PRETRAINED_WARM.lr, PRETRAINED_RL.lr, PRETRAINED_RL.micro_batch)
    assert cfg_of("--model", str(tmp_path), "--lr", "3e-5").rl.lr == 3e-5  # a given flag always wins
    assert cfg_of().weights.prod == 2.0 and cfg_of("--no-gdpo").weights.prod == 1.0  # the paper's, one flag away
    assert cfg_of("--no-gdpo").grpo.gdpo is False
    assert cfg_of("--w-prod", "1.5").weights.prod == 1.5
    assert cfg_of("--sft-dtype", "fp32").warm.bf16 is False and cfg_of().warm.bf16 is None
    args = train.build_parser().parse_args([])
    before = dict(vars(args))
    from_args(args)
    assert vars(args) == before  # args is never mutated


@pytest.mark.parametrize("argv,needle", [
    (["--rl-steps", "-1"], "--rl-steps"), (["--group-size", "1"], "--group-size"),
    (["--precise-share", "1.0"], "--precise-share"), (["--lr", "0"], "--lr"), (["--sft-batch", "0"], "--sft-batch"),
    (["--max-new-tokens", "0"], "--max-new-tokens"), (["--temperature", "0"], "--temperature"),
    (["--clip-low", "1.5"], "clip_low"), (["--adv-norm", "mad"], "adv_norm"), (["--w-pers", "-1"], "pers"),
    (["--prefs", "nope"], "unknown preference"), (["--resume", "--overwrite"], "--resume"),
])
def test_bad_values_raise_one_line(argv, needle):
    with pytest.raises(ValueError, match=needle) as e:
        cfg_of(*argv)
    assert "\n" not in str(e.value)


def test_training_mix_precise_share():
    tasks, prefs = list(range(12)), tuple(f"p{i}" for i in range(12))
    default = training_mix(tasks, prefs, random.Random(0))
    assert len(default) == 12 * 13 and sum(not v for _, _, v in default) == 12  # paper §6.2: 1 in 13
    assert sorted(t for t, _, v in default if not v) == tasks  # one precise copy per task
    for share in (0.0, 0.25, 0.5):
        mix = training_mix(tasks, prefs, random.Random(0), share)
        n_precise = sum(not v for _, _, v in mix)
        assert sum(v for _, _, v in mix) == 144  # the vague part is unchanged
        assert n_precise == round(share / (1 - share) * 144)
        assert abs(n_precise / len(mix) - share) < 0.01


def test_meter_figures_are_hand_computed():
    m = Meter("update")
    m.add(tokens=1000, flops=4e9, seconds=0.5)
    m.add(tokens=1000, flops=4e9, seconds=1.5)
    s = m.summary(peak_gflops=8.0)
    assert s == {"update_tok_s": 1000.0, "update_gflops": 4.0, "update_mfu": 0.5}
    assert Meter("sft").summary(10.0) == {}  # nothing measured: no figure, never a division by zero


def test_matmul_trials_are_timed_products():
    trials = matmul_trials(torch.float32, "cpu", trials=3, n=256, budget_s=0.5)
    assert 1 <= len(trials) <= 3 and all(t > 0 for t in trials)


def test_peak_is_the_max_over_every_trial_of_every_session():
    from ppp_min.machine.speed import PeakMeter
    p = PeakMeter(torch.float32, "cpu")
    assert p.gflops == 0.0 and p.trials == 0
    p.add("start", [30.0, 50.0, 40.0])  # a quiet machine at the start
    p.add("end", [20.0, 25.0])  # loaded at the end: the old single end-of-run measurement would say 25
    assert p.gflops == 50.0 and p.trials == 5 and p.by_session() == {"start": 50.0, "end": 25.0}
    # MFU <= 1 bookkeeping: a phase that ran at the speed of any timed trial is at most 100 % of the peak
    for rate in (30.0, 50.0, 40.0, 20.0, 25.0):
        m = Meter("update")
        m.add(tokens=100, flops=rate * 1e9 * 2.0, seconds=2.0)
        assert m.summary(p.gflops)["update_mfu"] <= 1.0
    # the one end-of-run measurement against the phase that ran at 40: the MFU above 1 this fixes
    m = Meter("update")
    m.add(tokens=100, flops=40e9, seconds=1.0)
    assert m.summary(25.0)["update_mfu"] > 1.0 >= m.summary(p.gflops)["update_mfu"]


def test_peak_trials_are_timed_matmuls():
    from ppp_min.machine.speed import PEAK_METHOD, PeakMeter, matmul_trials
    t = matmul_trials(torch.float32, "cpu", trials=3, n=128)
    assert 1 <= len(t) <= 3 and all(x > 0 for x in t)
    p = PeakMeter(torch.float32, "cpu")
    p.measure("start", trials=2)
    p.measure("end", trials=2)
    assert set(p.sessions) == {"start", "end"} and 2 <= p.trials <= 4
    assert p.gflops == max(max(v) for v in p.sessions.values())
    assert "max over timed trials" in PEAK_METHOD and "start and at the end" in PEAK_METHOD


def test_the_run_warns_when_most_groups_carry_no_signal():
    from ppp_min.run.loop import warn_no_signal

    class FakeRun:
        lines: list = []

        def say(self, line):
            self.lines.append(line)

    r = FakeRun()
    warn_no_signal(r, 5, [0.2, 0.3, 0.4, 0.3, 0.2])  # mostly signal: quiet
    warn_no_signal(r, 4, [1.0] * 5)  # only every 5 steps
    assert r.lines == []
    warn_no_signal(r, 10, [1.0, 1.0, 0.5, 0.5, 0.5])
    assert len(r.lines) == 1 and "70% of groups had zero reward variance" in r.lines[0]
    assert "--sft-steps" in r.lines[0]  # says what to do


def test_step_record_splits_the_ask_ratio_by_prompt_kind():
    """Three vague episodes (two ask) and one precise one that asks: hand-counted shares; a step without
    precise episodes reports None for them, not 0."""
    from types import SimpleNamespace as NS

    from ppp_min.rl.reward import DIMENSIONS
    from ppp_min.run.loop import step_record

    def ep(vague, n_questions):
        stats = NS(is_vague=vague, questions=[NS(effort="low")] * n_questions)
        return NS(stats=stats, ids=[0] * 10)

    def result(eps):
        bd = NS(value=lambda name: 0.0)
        rec = NS(record=lambda: {})
        return NS(episodes=eps, rewards=NS(breakdowns=[bd] * len(eps), totals=[0.0] * len(eps)),
                  advantages=rec, update=rec, rollout_s=0.0, update_s=0.0)

    rec = step_record(1, result([ep(True, 1), ep(True, 0), ep(True, 2), ep(False, 1)]))
    assert rec["ask_ratio"] == 0.75 and rec["ask_ratio_vague"] == 2 / 3 and rec["ask_ratio_precise"] == 1.0
    assert rec["questions_low"] == 1.0 and all(d.name in rec for d in DIMENSIONS)
    rec = step_record(2, result([ep(True, 0), ep(True, 1)]))
    assert rec["ask_ratio_vague"] == 0.5 and rec["ask_ratio_precise"] is None
