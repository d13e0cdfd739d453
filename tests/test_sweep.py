"""Seed sweeps (ppp_min/sweep/runner.py): a tiny 2-seed sweep of the real train.py end to end and resumed, then the
runner's failure paths with a fake train script (seconds), and the criteria grammar and aggregation by hand."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from ppp_min.sweep import report as sweep_report, runner as sweep
from ppp_min.sweep.report import SeedResult, SweepError, aggregate, judge, parse_criterion
from ppp_min.sweep.runner import parse_seeds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "tiny", "--copy-steps", "2", "--pretrain-steps", "2", "--sft-steps", "6", "--sft-batch", "4",
        "--prompts-per-step", "2", "--group-size", "2", "--train-tasks", "4",
        "--prefs", "no_preference,json,one_question", "--max-turns", "3", "--max-new-tokens", "12",
        "--micro-batch", "3", "--rl-steps", "2", "--eval-tasks", "1"]

# A stand-in for train.py: prints its pid, sleeps --sleep s, fails for --fail-seed, else writes a summary
# whose figures follow the seed (final productivity 10 + seed + 1, SFT 10).
FAKE = r'''
import argparse, json, os, sys, time
p = argparse.ArgumentParser()
p.add_argument("--seed", type=int); p.add_argument("--out"); p.add_argument("--threads")
p.add_argument("--fail-seed", type=int, default=-1); p.add_argument("--sleep", type=float, default=0)
a = p.parse_args()
print("pid", os.getpid(), "threads", a.threads, os.environ.get("OMP_NUM_THREADS"), flush=True)
time.sleep(a.sleep)
if a.seed == a.fail_seed:
    print("boom: seed failed", file=sys.stderr)
    sys.exit(3)
m = lambda x: {"productivity": 10.0 + x, "proactivity": 20.0 + x, "personalization": 30.0, "ask_ratio": 40.0,
               "ask_ratio_precise": 10.0 * x, "questions_medium": 0.1, "questions_high": 0.05,
               "skill/request_copy": 50.0, "skill/answer_use": None, "skill/low_effort_value": 1.5,
               "skill/question_compliance": 70.0}
s = {"wall_s": 1.0 + a.seed, "sft": m(0), "final": m(a.seed + 1)}
open(os.path.join(a.out, "metrics.jsonl"), "w").write(json.dumps({"phase": "summary", **s}) + "\n")
print(json.dumps(s))
'''


def _sweep(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "ppp_min.sweep", *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake_train.py"
    path.write_text(FAKE)
    return str(path)


def _result(seed, sft, final, wall=10.0, **extra):
    """A hand-built result: ``sft`` and ``final`` are (productivity, proactivity, personalization)."""
    def m(dims):
        return {**dict(zip(sweep_report.DIMS, dims)), **extra}
    return SeedResult(seed, m(sft), m(final), wall)


# ---------------------------------------------------------------------- the real train.py, end to end
def test_two_seed_sweep_end_to_end_then_resumed(tmp_path):
    out = tmp_path / "sweep"
    p = _sweep("--seeds", "0-1", "--out", out, "--jobs", "1", "--require", "wall_s<=100000",
               "--require", "final.ask_ratio<=-1", "--", *TINY)
    assert p.returncode == 1, p.stdout + p.stderr  # both seeds ran; the impossible criterion fails
    report = json.loads((out / "sweep.json").read_text())
    assert [s["seed"] for s in report["seeds"]] == [0, 1] and report["n_finished"] == 2
    assert [c["pass"] for c in report["criteria"]] == [True, False]
    for s in (0, 1):
        d = out / f"seed_{s}"
        summary = json.loads((d / "result.json").read_text())
        assert set(summary) >= {"sft", "final", "wall_s", "time_s"}
        log = (d / "train.log").read_text()
        assert json.loads(log.strip().splitlines()[-1]) == summary
        f = report["seeds"][s]["figures"]
        assert f["delta.productivity"] == pytest.approx(summary["final"]["productivity"]
                                                        - summary["sft"]["productivity"])
    md = (out / "sweep.md").read_text()
    assert "| mean ± std |" in md and "| 0 |" in md and "| 1 |" in md and "**FAIL**" in md
    assert "python -m ppp_min.sweep --seeds 0-1" in md
    # the second invocation re-runs nothing: the logs are untouched, the report is the same
    mtimes = {s: os.stat(out / f"seed_{s}" / "train.log").st_mtime_ns for s in (0, 1)}
    p = _sweep("--seeds", "0-1", "--out", out, "--jobs", "1", "--", *TINY)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 seed(s) to run, 2 finished and kept (0, 1)" in p.stdout and "started" not in p.stdout
    assert {s: os.stat(out / f"seed_{s}" / "train.log").st_mtime_ns for s in (0, 1)} == mtimes
    assert json.loads((out / "sweep.json").read_text())["mean"] == report["mean"]
    # other train flags into the same OUT: refused, nothing run
    p = _sweep("--seeds", "0-1", "--out", out, "--", *TINY, "--lr", "1e-3")
    assert p.returncode == 2 and "other train flags" in p.stderr and "--overwrite" in p.stderr


# ---------------------------------------------------------------------- the runner, with a fake train.py
def test_failed_child_is_reported_and_the_others_go_on(tmp_path, fake):
    out = tmp_path / "s"
    p = _sweep("--seeds", "0,1,2", "--out", out, "--train-py", fake, "--", "--fail-seed", "1")
    assert p.returncode == 3, p.stdout + p.stderr
    fails = [ln for ln in p.stderr.splitlines() if "failed" in ln]
    assert fails == ["sweep: seed 1 failed: exit 3; last log line: boom: seed failed"]
    assert (out / "seed_0" / "result.json").exists() and (out / "seed_2" / "result.json").exists()
    assert not (out / "seed_1" / "result.json").exists()
    log = (out / "seed_0" / "train.log").read_text()
    assert "threads 1 1" in log  # --threads 1 and OMP_NUM_THREADS=1
    report = json.loads((out / "sweep.json").read_text())
    assert [s["status"] for s in report["seeds"]] == ["ok", "failed", "ok"]
    assert "seed 1: failed (exit 3" in (out / "sweep.md").read_text()
    # rerun: only the failed seed runs again (and fails again)
    p = _sweep("--seeds", "0-2", "--out", out, "--train-py", fake, "--", "--fail-seed", "1")
    assert p.returncode == 3 and "1 seed(s) to run, 2 finished and kept (0, 2)" in p.stdout


def test_unfinished_seed_is_restarted_and_a_summary_in_metrics_counts_as_finished(tmp_path, fake):
    out = tmp_path / "s"
    for s in (0, 1):
        (out / f"seed_{s}").mkdir(parents=True)
    # seed 0: a run that finished (its summary in metrics.jsonl) but whose result.json was never written
    summary = {"wall_s": 5.0, "sft": {"productivity": 1.0}, "final": {"productivity": 2.0}}
    (out / "seed_0" / "metrics.jsonl").write_text(json.dumps({"phase": "summary", **summary}) + "\n")
    # seed 1: an interrupted run: metrics without the summary, a checkpoint, a log
    (out / "seed_1" / "metrics.jsonl").write_text('{"phase": "rl", "step": 1}\n')
    (out / "seed_1" / "checkpoint.safetensors").write_bytes(b"x")
    (out / "seed_1" / "train.log").write_text("step 1/2\n")
    p = _sweep("--seeds", "0-1", "--out", out, "--train-py", fake)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 seed(s) to run, 1 finished and kept (0)" in p.stdout
    assert json.loads((out / "seed_0" / "result.json").read_text()) == summary
    assert not (out / "seed_1" / "checkpoint.safetensors").exists()  # cleared before the restart
    assert "step 1/2" not in (out / "seed_1" / "train.log").read_text()
    # --overwrite re-runs every seed
    p = _sweep("--seeds", "0-1", "--out", out, "--train-py", fake, "--overwrite")
    assert p.returncode == 0 and "2 seed(s) to run, 0 finished and kept" in p.stdout
    # a file that is not a run's in an unfinished seed's directory is never deleted: refused
    (out / "seed_2").mkdir()
    (out / "seed_2" / "metrics.jsonl").write_text("")
    (out / "seed_2" / "notes.txt").write_text("mine")
    p = _sweep("--seeds", "0-2", "--out", out, "--train-py", fake)
    assert p.returncode == 2 and (out / "seed_2" / "notes.txt").exists()
    assert len(p.stderr.strip().splitlines()) == 1 and "not a run's" in p.stderr


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _pids(out, seeds):
    deadline, pids = time.monotonic() + 30, {}
    while len(pids) < len(seeds) and time.monotonic() < deadline:
        for s in seeds:
            log = out / f"seed_{s}" / "train.log"
            if log.exists() and log.read_text().startswith("pid "):
                pids[s] = int(log.read_text().split()[1])
        time.sleep(0.05)
    assert len(pids) == len(seeds), pids
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux's")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_children_die_with_the_sweep(tmp_path, fake, sig):
    """Ctrl-C: the sweep stops its children and exits 130 with one line; SIGKILL: the children die anyway."""
    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "ppp_min.sweep", "--seeds", "0-3", "--out", str(out),
                             "--jobs", "2", "--train-py", fake, "--", "--sleep", "60"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = _pids(out, (0, 1))  # two at a time
        assert not (out / "seed_2" / "train.log").exists()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while not all(_gone(p) for p in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(p) for p in pids.values())
        if sig == signal.SIGINT:
            assert proc.returncode == 130
            assert err.strip().splitlines() == [err.strip()] and "interrupted" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_refused_flags_and_bad_usage_are_one_line(tmp_path, fake):
    cases = ((["--seeds", "0", "--", "--seed", "3"], "--seed"), (["--seeds", "0", "--", "--out=x"], "--out"),
             (["--seeds", "0", "--", "--thr", "2"], "--threads"), (["--seeds", "0", "--", "--resume"], "--resume"),
             (["--seeds", "2-1"], "--seeds"), (["--seeds", "a"], "--seeds"), ([], "--seeds is required"),
             (["--seeds", "0", "--require", "delta>>3"], "expected"),
             (["--seeds", "0", "--require", "final.nope<=3"], "unknown key"),
             (["--report-only"], "no seed_N"))
    for argv, needle in cases:
        p = _sweep("--out", tmp_path / "o", "--train-py", fake, *argv)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, argv
    assert not (tmp_path / "o" / "seed_0").exists()  # nothing ran


# ---------------------------------------------------------------------- grammar, aggregation, verdicts
def test_parse_seeds():
    assert parse_seeds("0,1,2") == (0, 1, 2) and parse_seeds("0-4") == (0, 1, 2, 3, 4)
    assert parse_seeds("3, 0-1,1") == (0, 1, 3)
    for bad in ("", "1,", "x", "3-1", "-1", "1.5"):
        with pytest.raises(SweepError):
            parse_seeds(bad)


def test_criterion_grammar():
    c = parse_criterion("delta>=3")
    assert (c.agg, c.names, c.op, c.value) == ("every", ("delta.productivity", "delta.proactivity",
                                                         "delta.personalization"), ">=", 3.0)
    c = parse_criterion(" mean.final.ask_ratio_precise <= 30 ")
    assert (c.agg, c.names, c.op, c.value) == ("mean", ("final.ask_ratio_precise",), "<=", 30.0)
    assert parse_criterion("std.sft.skill/request_copy<.5").names == ("sft.skill/request_copy",)
    assert parse_criterion("wall_s<600").names == ("wall_s",)
    assert parse_criterion("delta.productivity>-2.5").value == -2.5
    for bad in ("delta", "delta>=", "delta=>3", "max.delta>=3", "final.nope>=1", "wall_s.x<1", "delta>=3;rm",
                "__import__('os')>=1", "delta>=1e3", "final.productivity>=x"):
        with pytest.raises(SweepError) as e:
            parse_criterion(bad)
        assert "\n" not in str(e.value)


def test_flags_check_allows_other_flags():
    sweep.check_flags(TINY + ["--sft-steps", "3", "--save-every", "2", "--sim-url", "http://x"])
    for bad in (["--seed", "1"], ["--seed=1"], ["--se", "1"], ["--threads", "2"], ["--out", "x"], ["--overwrite"]):
        with pytest.raises(SweepError):
            sweep.check_flags(bad)


def test_aggregation_by_hand():
    results = [_result(0, (30, 40, 20), (34, 43, 27), wall=100, ask_ratio=50.0, ask_ratio_precise=10.0,
                       questions_medium=0.25, questions_high=0.05),
               _result(1, (30, 40, 20), (36, 40, 23), wall=200, ask_ratio=70.0, ask_ratio_precise=None,
                       questions_medium=0.5, questions_high=0.1)]
    mean, std = aggregate(results)
    assert mean["final.productivity"] == 35 and std["final.productivity"] == pytest.approx(math.sqrt(2))
    assert mean["delta.productivity"] == 5 and std["delta.productivity"] == pytest.approx(math.sqrt(2))
    assert mean["delta.proactivity"] == 1.5 and std["delta.proactivity"] == pytest.approx(math.sqrt(4.5))
    assert mean["wall_s"] == 150 and std["wall_s"] == pytest.approx(math.sqrt(5000))
    assert mean["final.ask_ratio"] == 60 and mean["delta.ask_ratio"] == 0
    assert mean["final.ask_ratio_precise"] == 10 and std["final.ask_ratio_precise"] is None  # one value
    assert mean["final.questions_mh"] == pytest.approx(0.45)
    assert mean["sft.skill/answer_use"] is None
    one, _ = aggregate(results[:1])
    assert one["final.productivity"] == 34


def test_judge_on_known_numbers():
    results = [_result(0, (30, 40, 20), (34, 43, 27)), _result(1, (30, 40, 20), (36, 40, 23))]
    mean, std = aggregate(results)

    def ok(expr):
        return judge(parse_criterion(expr), results, mean, std)
    assert ok("delta>=3") == (False, "seed 1: delta.proactivity = 0.0")
    assert ok("delta>=0")[0] and ok("delta.productivity>=4")[0] and not ok("delta.productivity>4")[0]
    assert ok("mean.delta.proactivity==1.5") == (True, "mean.delta.proactivity = 1.5")
    assert ok("mean.final.productivity>=35")[0] and not ok("mean.final.productivity>35")[0]
    assert ok("std.final.productivity<1.5")[0] and not ok("std.final.productivity<1.4")[0]
    assert not ok("final.ask_ratio<=30")[0]  # the metric is missing from these results: fails
    assert judge(parse_criterion("delta>=0"), [], {}, {}) == (False, "no finished seed")


def test_report_only_exit_codes(tmp_path):
    """--report-only on hand-built result.json files: 0 when every criterion passes, 1 when one fails."""
    out = tmp_path / "s"
    for r in (_result(0, (30, 40, 20), (34, 43, 27)), _result(1, (30, 40, 20), (36, 40, 23))):
        (out / f"seed_{r.seed}").mkdir(parents=True)
        (out / f"seed_{r.seed}" / "result.json").write_text(json.dumps({"sft": r.sft, "final": r.final,
                                                                        "wall_s": r.wall_s}))
    assert sweep.main(["--out", str(out), "--report-only", "--require", "delta>=0"]) == 0
    assert sweep.main(["--out", str(out), "--report-only", "--require", "delta>=0", "--require", "delta>=3"]) == 1
    report = json.loads((out / "sweep.json").read_text())
    assert [c["pass"] for c in report["criteria"]] == [True, False] and not report["pass"]
    md = (out / "sweep.md").read_text()
    assert "| 0 | 10 s | 30.0 / 40.0 / 20.0 | 34.0 / 43.0 / 27.0 | +4.0 / +3.0 / +7.0 |" in md
    assert ("| mean ± std | 10 ± 0 s | 30.0 ± 0.0 / 40.0 ± 0.0 / 20.0 ± 0.0 "
            "| 35.0 ± 1.4 / 41.5 ± 2.1 / 25.0 ± 2.8 "
            "| +5.0 ± 1.4 / +1.5 ± 2.1 / +5.0 ± 2.8 |") in md
    assert "- `delta>=3`: **FAIL** (seed 1: delta.proactivity = 0.0)" in md
    assert sweep.main(["--out", str(out), "--report-only", "--seeds", "0-2"]) == 3  # seed 2 has no result
    assert "seed 2: not run" in (out / "sweep.md").read_text()


def test_keys_cover_what_train_reports():
    from ppp_min.run.setup import EVAL_KEYS
    assert set(sweep_report.KEYS) == set(EVAL_KEYS) | {"ask_ratio_precise", "questions_mh"}
