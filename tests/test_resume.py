"""The resume contract (default-deny on every setting that changes what is trained), logs cut back to the
checkpoint, interrupts with real processes (SIGINT in RL, SIGTERM in the warm start), failed starts."""

import json
import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from procs import TINY, Proc, one_line, run, train_cmd  # noqa: E402

import train  # noqa: E402
from ppp_min.run import resume  # noqa: E402
from ppp_min.run.checkpoint import read_meta  # noqa: E402
from ppp_min.run.cli import from_args  # noqa: E402
from ppp_min.run.config import RunConfig, flag_of  # noqa: E402
from ppp_min.run.loop import run as train_run  # noqa: E402
from ppp_min.run.out_dir import prepare_run_dir  # noqa: E402
from ppp_min.run.setup import TrainError  # noqa: E402


def cfg_of(*extra):
    return from_args(train.build_parser().parse_args(TINY + list(extra)))


def records(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A finished 2-step run (checkpoints at steps 1 and 2); no warm-start cache (a module fixture starts before
    conftest's per-test cache directory)."""
    out = tmp_path_factory.mktemp("resume") / "run"
    train_run(cfg_of("--rl-steps", "2", "--eval-tasks", "1", "--save-every", "1", "--out", str(out),
                     "--no-warm-start-cache"))
    return out


@pytest.mark.parametrize("extra,needle", [
    (["--group-size", "8"], "--group-size 2 -> 8"), (["--prompts-per-step", "4"], "--prompts-per-step 2 -> 4"),
    (["--no-gdpo"], "--gdpo/--no-gdpo True -> False"), (["--temperature", "0.5"], "--temperature 1.0 -> 0.5"),
    (["--lr", "2e-4"], "--lr 0.001 -> 0.0002"), (["--weight-decay", "0.1"], "--weight-decay 0.01 -> 0.1"),
    (["--seed", "1"], "--seed 0 -> 1"), (["--prefs", "seen"], "--prefs no_preference,json,one_question -> "),
    (["--train-tasks", "5"], "--train-tasks 4 -> 5"), (["--family", "funcloc"], "--family funcloc,research -> funcloc"),
    (["--max-turns", "4"], "--max-turns 3 -> 4"), (["--sft-steps", "7"], "--sft-steps 6 -> 7"),
    (["--micro-batch", "2"], "--micro-batch 3 -> 2"), (["--kl-beta", "0.1"], "--kl-beta 0.0 -> 0.1"),
    (["--w-pers", "0"], "--w-pers 1.0 -> 0.0"), (["--eval-tasks", "2"], "--eval-tasks 1 -> 2"),
    (["--model", "small"], "--model tiny -> small")])
def test_resume_refuses_every_change_of_what_is_trained(done_run, extra, needle):
    before = (done_run / "metrics.jsonl").read_bytes()
    with pytest.raises(TrainError) as e:
        train_run(cfg_of("--rl-steps", "2", "--eval-tasks", "1", "--out", str(done_run), "--resume", *extra))
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and "another --out" in msg, msg
    assert (done_run / "metrics.jsonl").read_bytes() == before  # refused before anything was touched


def test_resume_names_every_changed_flag_in_one_line_at_the_cli(done_run):
    p = run(train_cmd(*TINY, "--rl-steps", "2", "--eval-tasks", "1", "--out", str(done_run), "--resume",
                      "--lr", "3e-3", "--weight-decay", "0", "--group-size", "4"))
    line = one_line(p)
    assert p.returncode == 2
    for needle in ("--lr 0.001 -> 0.003", "--weight-decay 0.01 -> 0.0", "--group-size 2 -> 4"):
        assert needle in line, line


def test_default_deny_covers_fields_added_later_and_the_help_lists_the_safe_ones():
    cfg = RunConfig()
    stored = resume.record(cfg)
    resume.check(cfg, stored, 0)  # the same settings: accepted
    with pytest.raises(ValueError, match=r"--new-knob 1 -> \(not a setting of this version\)"):
        resume.check(cfg, {**stored, "new_knob": 1}, 0)
    older = {k: v for k, v in stored.items() if k != "seed"}
    with pytest.raises(ValueError, match=r"--seed \(not in the checkpoint\) -> 0"):
        resume.check(cfg, older, 0)
    assert "sim_token" not in stored  # a secret never lands in a checkpoint
    # every compared setting names a real train.py flag (or is marked as library-only)
    opts = {o for a in train.build_parser()._actions for o in a.option_strings}
    for path in resume.flatten(stored):
        for f in flag_of(path).split("/"):
            assert f in opts or f == path, path  # a flag of train.py, or a library-only setting
    helptext = train.build_parser().format_help()
    assert all(f in " ".join(helptext.split()) for f in ("--sim-retry-s", "--save-every", "--rl-steps"))


def test_safe_changes_are_accepted_and_the_logs_are_cut_back_to_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    train_run(cfg_of("--rl-steps", "3", "--eval-tasks", "1", "--save-every", "2", "--out", str(out)))
    size = read_meta(str(out / "checkpoint.safetensors"))["config"]["log_sizes"]["metrics.jsonl"]
    assert records(out / "metrics.jsonl")[-1]["phase"] == "summary" and os.path.getsize(out / "metrics.jsonl") > size
    with pytest.raises(TrainError, match="past --rl-steps 2"):
        train_run(cfg_of("--rl-steps", "2", "--eval-tasks", "1", "--out", str(out), "--resume"))
    train_run(cfg_of("--rl-steps", "5", "--eval-tasks", "1", "--save-every", "5", "--threads", "1", "--device", "cpu",
                     "--log-samples", "1", "--samples-every", "2", "--sim-retry-s", "5", "--out", str(out), "--resume"))
    recs = records(out / "metrics.jsonl")
    assert [r["step"] for r in recs if r["phase"] == "rl"] == [1, 2, 3, 4, 5]
    assert [r["label"] for r in recs if r["phase"] == "eval"] == ["sft", "final"]
    assert [r["phase"] for r in recs].count("summary") == 1 and recs[-1]["phase"] == "summary"
    samples = records(out / "samples.jsonl")
    keys = [(r["phase"], r["step"], r.get("group_id"), r["pick"], r["task"]["id"]) for r in samples]
    assert len(keys) == len(set(keys))  # no sample logged twice


def test_sigint_in_rl_then_resume_logs_every_step_once(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--rl-steps", "14", "--save-every", "4", "--eval-tasks", "0", "--out", str(out)]
    p = Proc(train_cmd(*args))
    p.wait_for(r"^step 5/14")
    p.signal(signal.SIGINT)
    assert p.finish(120) == 130
    assert p.errors() == ["train.py: interrupted; continue with --resume"]
    assert not any("Traceback" in ln for ln in p.lines)
    step = read_meta(str(out / "checkpoint.safetensors"))["step"]
    assert 4 <= step < 14
    q = run(train_cmd(*args, "--resume"))
    assert q.returncode == 0, q.stderr[-2000:]
    assert [r["step"] for r in records(out / "metrics.jsonl") if r["phase"] == "rl"] == list(range(1, 15))


def test_sigterm_in_the_warm_start_exits_143_and_resume_starts_the_run_again(tmp_path):
    out = tmp_path / "run"
    p = Proc(train_cmd(*TINY, "--sft-steps", "300", "--sft-batch", "1", "--rl-steps", "1", "--eval-tasks", "0",
                       "--out", str(out)))
    p.wait_for(r"^pretrain 3/")  # after the 2 copy-drill steps
    p.signal(signal.SIGTERM)
    assert p.finish(120) == 143
    assert p.errors() == ["train.py: terminated (SIGTERM); continue with --resume"]
    assert not (out / "checkpoint.safetensors").exists() and (out / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match="--resume starts it again"):  # a fresh run: refused, the way back named
        prepare_run_dir(str(out), resume=False, overwrite=False)
    again = run(train_cmd(*TINY, "--rl-steps", "1", "--eval-tasks", "0", "--out", str(out), "--resume"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "starting it from the beginning" in again.stdout
    phases = [(r["phase"], r.get("step")) for r in records(out / "metrics.jsonl")]
    assert phases.count(("copy", 0)) == 1 and phases.count(("pretrain", 2)) == 1  # the killed start's are gone


def test_a_failed_start_leaves_no_run_behind(tmp_path):
    out = tmp_path / "run"
    p = run(train_cmd(*TINY, "--rl-steps", "1", "--eval-tasks", "0", "--sim-url", "http://127.0.0.1:1",
                      "--out", str(out)))
    assert p.returncode == 2 and "unreachable" in one_line(p)
    assert (out / "metrics.jsonl").exists() and os.path.getsize(out / "metrics.jsonl") == 0
    assert prepare_run_dir(str(out), resume=False, overwrite=False) is False  # empty logs are not a run
    assert prepare_run_dir(str(out), resume=True, overwrite=False) is True  # --resume: start it again
    assert list(out.iterdir()) == []


def test_kill_9_in_rl_with_kl_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """--kl-beta 0.01: SIGKILL mid-RL, --resume from the last checkpoint; the KL reference is still the frozen
    start model (OUT/sft_model), so the final weights equal an uninterrupted run's, bit for bit."""
    import torch
    from safetensors.torch import load_file
    common = [*TINY, "--rl-steps", "8", "--save-every", "2", "--eval-tasks", "0", "--kl-beta", "0.01"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(train_cmd(*common, "--out", str(a))).returncode == 0
    p = Proc(train_cmd(*common, "--out", str(b)))
    p.wait_for(r"^step 5/8")
    p.kill()
    p.finish(60)
    assert 2 <= read_meta(str(b / "checkpoint.safetensors"))["step"] < 8
    q = run(train_cmd(*common, "--out", str(b), "--resume"))
    assert q.returncode == 0, q.stderr[-2000:]
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
