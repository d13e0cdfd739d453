"""train.py end to end (tiny, seconds), exact resume, and DDP gradient averaging on 2 gloo processes."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train  # noqa: E402
from ppp_min.lm.model import Decoder  # noqa: E402
from ppp_min.lm.presets import preset_config  # noqa: E402
from ppp_min.rl.grpo import GRPOConfig  # noqa: E402
from ppp_min.rl.step import grpo_update  # noqa: E402
from ppp_min.run.loop import run  # noqa: E402

TINY = ["--model", "tiny", "--copy-steps", "2", "--pretrain-steps", "2", "--sft-steps", "6", "--sft-batch", "4",
        "--prompts-per-step", "2", "--group-size", "2",
        "--train-tasks", "4", "--prefs", "no_preference,json,one_question", "--max-turns", "3",
        "--max-new-tokens", "12", "--micro-batch", "3", "--lr", "1e-3"]


def _args(*extra):
    from ppp_min.run.cli import from_args
    return from_args(train.build_parser().parse_args(TINY + list(extra)))


def test_end_to_end_tiny(tmp_path):
    out = run(_args("--rl-steps", "2", "--eval-tasks", "1", "--out", str(tmp_path)))
    assert set(out) >= {"wall_s", "sft", "final"}
    for key in ("sft", "final"):
        assert set(out[key]) >= {"productivity", "proactivity", "personalization"}
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    rl = [r for r in records if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2]
    for r in rl:
        assert 0.0 <= r["reward"] <= 1.0
        # loss metrics, unless the step was skipped or every episode had advantage 0 (nothing to compute)
        assert "clip_frac_high" in r or r.get("skipped") == 1 or r["skipped_episodes"] == 4
    assert {r["label"] for r in records if r["phase"] == "eval"} == {"sft", "final"}
    # evaluation covers all 20 preferences (seen and unseen apart) although training used 3
    ev = [r for r in records if r["phase"] == "eval"]
    assert all(r["n_vague"] == 2 * 20 and r["precise"]["n_episodes"] == 2 for r in ev)
    assert all("personalization_seen" in r and "personalization_unseen" in r for r in ev)
    # the final JSON: peak memory, time per phase, throughput against the measured matmul peak
    assert out["peak_rss_mb"] > 0
    assert set(out["time_s"]) == {"warm_start", "rollout", "update", "eval"} and out["time_s"]["warm_start"] > 0
    tp = out["throughput"]
    assert tp["sft_tok_s"] > 0 and tp["sft_gflops"] > 0 and 0 < tp["sft_mfu"] < 1.5
    assert tp["peak_gflops"]["sft"] > 0 and tp["peak_gflops"]["update"] > 0
    # the peak: the max over timed trials at the start and at the end of the run (speed.PeakMeter)
    for phase in ("sft", "update"):
        assert set(tp["peak_by_session"][phase]) == {"start", "end"} and tp["peak_trials"][phase] >= 2
        assert tp["peak_gflops"][phase] == max(tp["peak_by_session"][phase].values())
    assert "max over timed trials" in tp["peak_method"]
    assert records[-1]["phase"] == "summary"
    # samples.jsonl: the best and worst episode of a group at RL steps, the first episodes of evaluations
    from ppp_min.evals.samples import read_samples
    recs = read_samples(tmp_path / "samples.jsonl")
    assert {r["phase"] for r in recs} == {"rl", "eval"}
    assert {r["pick"] for r in recs if r["phase"] == "rl"} <= {"best", "worst"}
    from ppp_min.weights.hf_io import load_pretrained
    from ppp_min.lm.tokenizer import Tokenizer
    model = load_pretrained(tmp_path / "model")
    assert Tokenizer.from_dir(tmp_path / "model").vocab_size == model.config.vocab_size


def test_resume_is_bit_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(_args("--rl-steps", "4", "--eval-tasks", "0", "--save-every", "2", "--out", str(a)))
    run(_args("--rl-steps", "2", "--eval-tasks", "0", "--out", str(b)))
    run(_args("--rl-steps", "4", "--eval-tasks", "0", "--save-every", "2", "--out", str(b), "--resume"))
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # and training did move the weights after SFT (the checkpoint at step 0 differs)
    s0 = a / "checkpoint.safetensors"
    assert s0.exists()


@pytest.mark.parametrize("warm", ["sft", "no_warm_start"])
def test_resume_with_kl_keeps_the_frozen_start_model_as_reference(tmp_path, warm):
    """--kl-beta > 0: the reference is the model RL started from (OUT/sft_model), also after --resume, so
    2 steps + resume + 2 steps == 4 steps. Without a warm start the reference is the initial model, which the
    run saves (it cannot be rebuilt from the checkpoint, which holds the policy)."""
    extra = ["--kl-beta", "0.01", "--eval-tasks", "0"]
    if warm == "no_warm_start":
        extra += ["--copy-steps", "0", "--pretrain-steps", "0", "--sft-steps", "0"]
    a, b = tmp_path / "a", tmp_path / "b"
    run(_args("--rl-steps", "4", "--save-every", "2", "--out", str(a), *extra))
    run(_args("--rl-steps", "2", "--out", str(b), *extra))
    ref = load_file(b / "sft_model" / "model.safetensors")
    run(_args("--rl-steps", "4", "--save-every", "2", "--out", str(b), "--resume", *extra))
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # the reference on disk is the start model, untouched by the resumed run, and RL moved away from it
    assert all(torch.equal(ref[k], v) for k, v in load_file(b / "sft_model" / "model.safetensors").items())
    assert any(not torch.equal(ref[k], wa[k]) for k in wa)


def test_resume_with_kl_and_no_saved_reference_is_a_one_line_error(tmp_path):
    import shutil
    from ppp_min.run.setup import TrainError
    extra = ["--kl-beta", "0.01", "--eval-tasks", "0", "--out", str(tmp_path)]
    run(_args("--rl-steps", "1", *extra))
    shutil.rmtree(tmp_path / "sft_model")
    with pytest.raises(TrainError, match="KL reference") as e:
        run(_args("--rl-steps", "2", "--resume", *extra))
    assert "\n" not in str(e.value)


def test_cli_errors_are_one_line(tmp_path):
    cases = ((["--prefs", "nope"], "unknown preference"), (["--group-size", "1"], "group-size"),
             (["--model", str(tmp_path / "no_such_dir")], "neither a preset"),
             (["--resume", "--out", str(tmp_path / "empty")], "no checkpoint"),
             (["--out", str(tmp_path / "old")], "--overwrite"))  # a fresh run never appends to an old one
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.jsonl").write_text('{"phase": "rl", "step": 1}\n')
    for argv, needle in cases:
        argv = ["--model", "tiny", "--copy-steps", "0", "--pretrain-steps", "0", "--sft-steps", "0", "--rl-steps", "1",
                "--eval-tasks", "0", "--out", str(tmp_path / "run")] + argv
        p = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 2, p.stderr
        lines = [ln for ln in p.stderr.strip().splitlines() if ln]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------- DDP
@dataclass(frozen=True)
class _Ep:
    group_id: int
    ids: tuple
    loss_mask: tuple
    logprobs: tuple


def _episodes():
    g = torch.Generator().manual_seed(0)
    eps, rewards = [], []
    for i in range(8):  # 4 groups of 2, uneven lengths
        n = 6 + (i * 5) % 9
        ids = torch.randint(3, 60, (n,), generator=g).tolist()
        mask = [0, 0] + [1 if (j % 3) else 0 for j in range(n - 2)]
        lps = [(-0.5 - 0.1 * j) if m else 0.0 for j, m in enumerate(mask)]
        eps.append(_Ep(i // 2, tuple(ids), tuple(mask), tuple(lps)))
        rewards.append(float((i * 7) % 5) / 4)
    return eps, rewards


def _model():
    torch.manual_seed(1)
    return Decoder(preset_config("tiny", 64))


def _update(model, opt, eps, rewards, **kw):
    """The scalar-advantage GRPO update (the paper's): its record and the advantage's, as the step record has them."""
    from ppp_min.rl.grpo import group_advantages
    cfg = GRPOConfig(gdpo=False)
    res = group_advantages(torch.tensor(rewards), torch.tensor([e.group_id for e in eps]), cfg)
    return {**res.record(), **grpo_update(model, opt, eps, res.values, cfg, keep=res.keep, **kw).record()}


def _flat_odd_groups(rewards):
    """Groups 1 and 3 (rank 1's share on 2 ranks) get zero reward variance: advantage 0."""
    return [rewards[i - i % 2] if (i // 2) % 2 else r for i, r in enumerate(rewards)]


def test_zero_advantage_episodes_are_skipped_and_the_update_is_unchanged():
    """Skipping zero-advantage episodes (no KL) gives the full-batch clipped token-mean update."""
    from ppp_min.rl.grpo import group_advantages
    from ppp_min.rl.step import pad, shifted_logprobs
    eps, rewards = _episodes()
    rewards = _flat_odd_groups(rewards)
    model, ref = _model(), _model()
    m = _update(model, torch.optim.SGD(model.parameters(), lr=0.5), eps, rewards, micro_batch=3, grad_clip=0.0)
    assert m["skipped_episodes"] == 4 and m["zero_var_frac"] == 0.5
    # slow reference: every episode in one batch, the loss written out (clip-higher 0.2 / 0.28)
    adv = group_advantages(torch.tensor(rewards), torch.tensor([e.group_id for e in eps]), GRPOConfig(gdpo=False)).values
    ids = pad([list(e.ids) for e in eps], 0, "cpu")
    mask = pad([list(map(float, e.loss_mask)) for e in eps], 0.0, "cpu")[:, 1:]
    old = pad([list(e.logprobs) for e in eps], 0.0, "cpu")[:, 1:]
    logp, _ = shifted_logprobs(ref, ids, 1.0)
    ratio = torch.exp(logp - old)
    a = adv[:, None]
    obj = torch.minimum(ratio * a, ratio.clamp(0.8, 1.28) * a)
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    (-(obj * mask).sum() / mask.sum()).backward()
    opt.step()
    for (k, v), w in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(v, w, atol=1e-6), k
    assert not torch.equal(ref.state_dict()["embed_tokens.weight"], _model().state_dict()["embed_tokens.weight"])


def _worker(rank, world, path, out, flat_odd=False):
    import datetime
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    eps, rewards = _episodes()
    if flat_odd:  # rank 1 skips every episode and must still join the gradient all-reduce
        rewards = _flat_odd_groups(rewards)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mine = [i for i in range(len(eps)) if (eps[i].group_id % world) == rank]  # whole groups per rank
    _update(model, opt, [eps[i] for i in mine], [rewards[i] for i in mine], micro_batch=2, grad_clip=0.0)
    if rank == 0:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}, out)
    dist.barrier()
    dist.destroy_process_group()
    # gloo's worker threads can abort the interpreter's exit ("terminate called without an active
    # exception", ~1 run in 10 here); the work and the file are done, so leave without the C++ teardown
    os._exit(0)


@pytest.mark.parametrize("flat_odd", [False, True])
def test_ddp_two_gloo_processes_equal_one_process(tmp_path, flat_odd):
    eps, rewards = _episodes()
    rewards = _flat_odd_groups(rewards) if flat_odd else rewards
    ref = _model()
    _update(ref, torch.optim.SGD(ref.parameters(), lr=0.5), eps, rewards, micro_batch=3, grad_clip=0.0)
    out = str(tmp_path / "rank0.safetensors")
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), out, flat_odd), nprocs=2, join=True)
    got = load_file(out)
    for k, v in ref.state_dict().items():
        if k not in got:
            continue
        assert torch.allclose(got[k], v, atol=1e-6), k
    assert not torch.equal(ref.state_dict()["embed_tokens.weight"], _model().state_dict()["embed_tokens.weight"])


def test_torchrun_two_processes_cli_exits_0_with_one_json_line(tmp_path):
    """The real CLI under torchrun (2 gloo processes): exit 0 (no SIGABRT from gloo's threads at exit)
    and exactly one JSON line (rank 0's)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           "--model", "tiny", "--copy-steps", "2", "--pretrain-steps", "1", "--sft-steps", "1", "--sft-batch", "4",
           "--prompts-per-step", "1", "--group-size", "2", "--train-tasks", "4", "--prefs", "no_preference,json",
           "--max-turns", "2", "--max-new-tokens", "8", "--micro-batch", "4", "--rl-steps", "1",
           "--eval-tasks", "1", "--threads", "1", "--out", str(tmp_path / "run")]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    json_lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(json_lines) == 1, p.stdout
    assert set(json.loads(json_lines[0])) >= {"wall_s", "sft", "final"}


def test_nonfinite_loss_skips_the_step():
    eps, rewards = _episodes()
    model = _model()
    with torch.no_grad():
        model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = _update(model, torch.optim.SGD(model.parameters(), lr=0.5), eps, rewards, micro_batch=4)
    assert m["skipped"] == 1 and m["nonfinite"] in ("loss", "grad")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) or torch.isnan(before[k]).any() for k in before)
