"""PPP training CLI: SFT warm start ("skills, not policy"), then multi-objective GRPO (paper §5-6).

    python train.py --model small --prefs all          # the default run: minutes on a 2-core CPU

Each RL step samples `--prompts-per-step` (task, preference, vague|precise) items from the training mix
(paper §6.2: every task with every training preference on its vague prompt, plus precise copies), rolls
out `--group-size` episodes each against the simulated user, scores them with the PPP reward, and takes one
GRPO step. Progress goes to stdout, metrics to OUT/metrics.jsonl, example dialogues to OUT/samples.jsonl
(`python eval.py show OUT/samples.jsonl`), checkpoints to OUT/checkpoint.safetensors (atomic; `--resume`
continues bit-identically on CPU), the final model to OUT/model as an HF directory. The last stdout line is
JSON: wall time, peak memory, time per phase, throughput, and held-out metrics of the SFT and final models.
Under `torchrun`, each rank rolls out its share and gradients are averaged (gloo/nccl).
Exit status: 0 done; 2 a bad flag, file or directory (one line); 1 the run could not go on (the simulator
stayed down past --sim-retry-s, a full disk: one line naming the checkpoint to --resume from); 130 Ctrl-C;
143 SIGTERM.
Every flag, its default and its help are declared once, on the fields of the config dataclasses
(ppp_min/run/config.py and the dataclasses it holds; ppp_min/run/cli.py builds the parser from them).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting, from the config dataclasses' fields (ppp_min/run/cli.py: add_flags)."""
    from ppp_min.run.cli import add_flags
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_flags(p)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM: unwinds like Ctrl-C, but exits 143 (128 + 15), not 130."""


def _on_sigterm(signum, frame) -> None:
    """SIGTERM unwinds like Ctrl-C, so the embedded simulator and open files are closed on the way out."""
    raise Terminated


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _leave(code: int) -> int:
    """Under torchrun with several processes, flush and leave with ``os._exit``: gloo's worker threads
    can otherwise abort the interpreter's exit ("terminate called without an active exception", SIGABRT
    ~1 run in 10). On success ``run`` has destroyed the process group and closed every file and the
    embedded simulator; on an error torchrun stops the other ranks."""
    if "RANK" in os.environ and _env_int("WORLD_SIZE", 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    from ppp_min.run.cli import from_args
    from ppp_min.run.setup import TrainError
    from ppp_min.run.loop import run
    try:
        try:
            cfg = from_args(args)
        except ValueError as e:
            raise TrainError(str(e)) from None
        result = run(cfg)
    except TrainError as e:  # bad input: 2; a run that could not go on (TrainFailure): 1
        print(f"train.py: error: {e}", file=sys.stderr)
        return _leave(e.exit_code)
    except Terminated:
        print("train.py: terminated (SIGTERM); continue with --resume", file=sys.stderr)
        return _leave(143)
    except KeyboardInterrupt:
        print("train.py: interrupted; continue with --resume", file=sys.stderr)
        return _leave(130)
    if _env_int("RANK", 0) == 0:  # one JSON line per run, not one per process
        print(json.dumps(result))
    return _leave(0)


if __name__ == "__main__":
    sys.exit(main())
