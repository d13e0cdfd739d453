"""Seed sweeps: train.py once per seed, then one table of every seed, the mean ± std, and pass/fail criteria.

    python -m ppp_min.sweep --seeds 0-4 --out runs/sweep --require 'delta>=3' -- --model small --prefs all

Contract
- Runs ``python train.py FLAGS --seed S --out OUT/seed_S --threads 1`` per seed of ``--seeds`` (``0,1,2``, ``0-4``,
  ``0-2,7``), ``--jobs`` (2) at a time, one thread each (OMP_NUM_THREADS=1), stdout + stderr in OUT/seed_S/train.log.
  FLAGS (after ``--``) holding --seed / --out / --threads (the sweep sets them) or --resume / --overwrite (it
  decides) are refused. Warm starts come from the default warm-start cache (one SFT model per seed and recipe).
- Children die with the sweep: each in its own process group, with PR_SET_PDEATHSIG = SIGTERM (Linux), which
  train.py turns into a clean stop. Ctrl-C / SIGTERM: SIGTERM to each child's group (SIGKILL after 10 s), exit 130.
- Resumable: a seed is finished when OUT/seed_S/result.json (its final JSON line, saved by the sweep) exists, or
  its metrics.jsonl ends with the ``{"phase": "summary"}`` record (result.json is then written from it); it is not
  re-run. An unfinished seed's directory is cleared (train.log, then the run's files by train.py's --overwrite
  rules: never a file that is not a run's) and the seed runs again. ``--overwrite`` re-runs every seed. OUT/sweep.json
  records FLAGS: other FLAGS into the same OUT are refused. A failed child (non-zero exit or no final JSON line)
  gets one line (exit code, last log line) and the other seeds go on.
- OUT/sweep.md and OUT/sweep.json: the command; per seed the SFT and final productivity / proactivity /
  personalization (x100), final - SFT, ask ratios vague / precise and medium + high questions per vague episode
  (SFT -> final), the SFT model's skill metrics, wall time; mean ± sample std over finished seeds; each criterion's
  verdict. ``--report-only`` runs nothing and rebuilds both from disk.
- Criteria (``--require EXPR``, repeatable) are matched by one regex, never eval'd:
      EXPR  := [AGG "."] STAGE ["." KEY] OP NUMBER       e.g. delta>=3, mean.final.ask_ratio_precise<=30
      AGG   := mean | std          absent: every finished seed must pass
      STAGE := sft | final | delta (final - sft) | wall_s (takes no KEY)
      KEY   := one of KEYS (ask_ratio: vague prompts; questions_mh: medium + high questions per vague episode);
               absent: each of productivity, proactivity, personalization
      OP    := >= | <= | > | < | ==
  A bad expression is one line (exit 2); a missing value (no finished seed, an undefined metric) fails.
- Errors are one line. Exit 0: every seed finished and every criterion passes; 1: a criterion failed; 2: bad
  usage; 3: a seed failed or has no result; 130: interrupted.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from ppp_min.run.out_dir import prepare_run_dir
from ppp_min.sweep.report import (DIMS, KEYS, SeedResult, SweepError, build_report, fmt_num, last_line, load_result,
    parse_criterion, render_md, summary_in, write_file)

TRAIN_PY = str(Path(__file__).resolve().parents[2] / "train.py")
FORBIDDEN = ("--seed", "--out", "--threads", "--resume", "--overwrite")


def parse_seeds(text: str) -> tuple[int, ...]:
    """``0,1,2`` / ``0-4`` / ``0-2,7`` -> sorted unique seeds; a bad list is a ``SweepError``."""
    seeds: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise SweepError(f"--seeds {text!r}: expected seeds like 0,1,2 or 0-4")
        seeds.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return tuple(sorted(seeds))


def check_flags(flags: list[str]) -> None:
    """Refuse the flags the sweep sets itself (argparse abbreviations such as --se or --thr included)."""
    for tok in flags:
        name = tok.split("=", 1)[0]
        if name.startswith("--") and len(name) > 2:
            hit = [f for f in FORBIDDEN if f.startswith(name)]
            if hit:
                raise SweepError(f"train flags must not contain {tok} ({hit[0]}): the sweep sets --seed, --out "
                                 "and --threads and decides on --resume/--overwrite itself")


def _clear(seed_dir: Path) -> None:
    """An unfinished (or --overwrite) seed starts clean: the sweep's files, then the run's (run_dir rules)."""
    for name in ("result.json", "result.json.tmp", "train.log"):
        (seed_dir / name).unlink(missing_ok=True)
    try:
        prepare_run_dir(str(seed_dir), resume=False, overwrite=True)
    except ValueError as e:
        raise SweepError(str(e)) from None


def _die_with_parent(parent: int) -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the sweep died before the signal was armed
        os._exit(143)


def _spawn(train_py: str, flags: list[str], seed: int, seed_dir: Path):
    cmd = [sys.executable, train_py, *flags, "--seed", str(seed), "--out", str(seed_dir), "--threads", "1"]
    log = open(seed_dir / "train.log", "w")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True, preexec_fn=functools.partial(_die_with_parent, os.getpid()))
    return proc, log


def _finish(seed: int, rc: int, seed_dir: Path) -> str | None:
    """Save a finished child's final JSON line as result.json; a failure's one-line report otherwise."""
    summary = summary_in(seed_dir / "train.log", lambda r: "final" in r and "sft" in r) if rc == 0 else None
    if summary is None:
        why = f"exit {rc}" if rc else "exit 0 without a final JSON line"
        return f"{why}; last log line: {last_line(seed_dir / 'train.log')}"
    write_file(seed_dir / "result.json", json.dumps(summary) + "\n")
    r = SeedResult.from_summary(seed, summary)
    print(f"sweep: seed {seed} done in {r.wall_s:.0f} s: final " + " / ".join(fmt_num(r.final.get(k)) for k in DIMS),
          flush=True)
    return None


def _stop(running: dict) -> None:
    """SIGTERM to every child's process group, SIGKILL to what is left after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for proc, _ in running.values():
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p, _ in running.values()):
            time.sleep(0.05)
    for _, log in running.values():
        log.close()


def run_seeds(seeds, flags: list[str], out: Path, jobs: int, train_py: str) -> dict[int, str]:
    """Run the seeds, ``jobs`` at a time; returns the failures' one-line reports by seed."""
    pending, running, failed = list(seeds), {}, {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                s = pending.pop(0)
                running[s] = _spawn(train_py, flags, s, out / f"seed_{s}")
                print(f"sweep: seed {s} started (log: {out / f'seed_{s}' / 'train.log'})", flush=True)
            time.sleep(0.1)
            for s, (proc, log) in list(running.items()):
                if proc.poll() is not None:
                    del running[s]
                    log.close()
                    failed_line = _finish(s, proc.returncode, out / f"seed_{s}")
                    if failed_line:
                        failed[s] = failed_line
                        print(f"sweep: seed {s} failed: {failed_line}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        _stop(running)
        raise
    return failed


def build_parser() -> argparse.ArgumentParser:
    grammar = __doc__[__doc__.index("- Criteria"):] + "\nKEYS: " + ", ".join(KEYS)
    p = argparse.ArgumentParser(prog="python -m ppp_min.sweep", description=__doc__.split("\n\n")[0],
                                usage="%(prog)s --seeds 0-4 --out OUT [options] [-- TRAIN.PY FLAGS]",
                                epilog=grammar, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", help="seeds: 0,1,2 or 0-4 (--report-only: default every OUT/seed_N)")
    p.add_argument("--out", required=True, help="sweep directory: OUT/seed_S per seed, OUT/sweep.md, OUT/sweep.json")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (%(default)s)")
    p.add_argument("--require", action="append", default=[], metavar="EXPR",
                   help="pass/fail criterion, repeatable: delta>=3, delta.productivity>=3, "
                        "mean.final.productivity>=55, final.ask_ratio<=30, std.final.proactivity<=5, wall_s<=600")
    p.add_argument("--overwrite", action="store_true", help="re-run every seed, finished ones too")
    p.add_argument("--report-only", action="store_true", help="run nothing: rebuild sweep.md/json from disk")
    p.add_argument("--train-py", default=TRAIN_PY, help="the training script (default: this repository's train.py)")
    return p


def _setup(args, flags: list[str], argv: list[str]):
    """Validate the command line and OUT; returns (seeds, command, flags, criteria)."""
    out = Path(args.out)
    criteria = [parse_criterion(t) for t in args.require]
    check_flags(flags)
    if args.jobs < 1:
        raise SweepError(f"--jobs {args.jobs}: needs at least 1")
    try:
        old = json.loads((out / "sweep.json").read_text())
    except (OSError, ValueError):
        old = None
    command = "python -m ppp_min.sweep " + shlex.join(argv)
    if args.report_only:
        found = sorted(int(d.name[5:]) for d in out.glob("seed_*") if re.fullmatch(r"seed_\d+", d.name))
        old = old or {}
        if not args.seeds and not found:
            raise SweepError(f"--report-only: no seed_N directory under {out}")
        return (parse_seeds(args.seeds) if args.seeds else tuple(found), old.get("command", command),
                old.get("flags", flags), criteria)
    if not args.seeds:
        raise SweepError("--seeds is required (e.g. --seeds 0-4)")
    if old is not None and old.get("flags") != flags and not args.overwrite:
        raise SweepError(f"{out} holds a sweep with other train flags ({shlex.join(old.get('flags') or [])}); "
                         "pass --overwrite to re-run every seed, or pick another --out")
    return parse_seeds(args.seeds), command, flags, criteria


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:cut])
    out, failed = Path(args.out), {}
    try:
        seeds, command, flags, criteria = _setup(args, argv[cut + 1:], argv)
        if not args.report_only:
            todo = [s for s in seeds if args.overwrite or load_result(out / f"seed_{s}", s) is None]
            out.mkdir(parents=True, exist_ok=True)
            for s in todo:
                (out / f"seed_{s}").mkdir(exist_ok=True)
                _clear(out / f"seed_{s}")
            write_file(out / "sweep.json", json.dumps({"command": command, "flags": flags, "status": "running"}) + "\n")
            kept = [s for s in seeds if s not in todo]
            print(f"sweep: {len(todo)} seed(s) to run, {len(kept)} finished and kept"
                  + (f" ({', '.join(map(str, kept))})" if kept else ""), flush=True)
            failed = run_seeds(todo, flags, out, args.jobs, args.train_py)
    except SweepError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sweep: interrupted; its runs were stopped; rerun the same command to resume (finished seeds are "
              "kept)", file=sys.stderr)
        return 130
    report = build_report(out, command, flags, seeds, failed, criteria)
    out.mkdir(parents=True, exist_ok=True)
    write_file(out / "sweep.json", json.dumps(report, indent=1) + "\n")
    write_file(out / "sweep.md", render_md(report))
    for c in report["criteria"]:
        print(f"sweep: {'pass' if c['pass'] else 'FAIL'} {c['expr']}: {c['detail']}")
    print(f"sweep: {report['n_finished']}/{len(seeds)} seeds finished; report in {out / 'sweep.md'}")
    return 3 if report["n_finished"] < len(seeds) else (0 if report["pass"] else 1)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the children like Ctrl-C
    sys.exit(main())
