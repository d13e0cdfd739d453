"""The output directory of a training run: refuse to mix two runs, replace one only on request.

Contract
- ``prepare_run_dir(out, resume, overwrite) -> bool``, called once (rank 0) before anything is written;
  True when the run must start from the beginning (see ``resume`` below), else False:
  * ``out`` missing: created (``resume`` then fails: there is nothing to resume). A path that cannot be a
    directory (under a file, no permission) is refused.
  * ``resume``: ``out/checkpoint.safetensors`` must exist; nothing is touched. Without one, a directory that
    holds only what a run leaves before its first checkpoint (``EARLY``: its logs, its tokenizer, the model
    RL starts from, a save's temporaries; e.g. Ctrl-C during the warm start, a failed start) is cleared of
    those and the run starts from the beginning (True); anything else without a checkpoint is refused.
  * a fresh run (neither flag) into a directory that already holds a run's files (``RUN_FILES`` /
    ``RUN_DIRS``: metrics.jsonl, samples.jsonl, checkpoint.safetensors and its temporaries, model/,
    sft_model/, tokenizer/) is refused: the metrics would be appended to the old run's and its model replaced.
    Empty metrics.jsonl / samples.jsonl (a start that failed before logging anything) are not a run. An
    empty directory, or one holding only other files, is fine (nothing of them is touched).
  * ``overwrite``: the old run's files are removed and the run starts clean; refused when the directory
    also holds files that are not a run's (they may be the user's: never deleted). Symlinks among the
    run's entries are unlinked, never followed.
  * ``resume`` together with ``overwrite``, or ``out`` naming a file: refused.
- Every refusal is a ``ValueError`` with one line naming the directory and the flag to use.
"""

from __future__ import annotations

import os
import re
import shutil

RUN_FILES = ("metrics.jsonl", "samples.jsonl", "checkpoint.safetensors")
RUN_DIRS = ("model", "sft_model", "tokenizer")
LOGS = ("metrics.jsonl", "samples.jsonl")
EARLY = ("metrics.jsonl", "samples.jsonl", "tokenizer", "sft_model")  # written before the first checkpoint
CHECKPOINT = "checkpoint.safetensors"
_TMP = re.compile(r"^checkpoint\.safetensors\.tmp\.\d+$")  # left by a save that died before its rename


def is_run_entry(name: str) -> bool:
    return name in RUN_FILES or name in RUN_DIRS or bool(_TMP.match(name))


def _empty_log(out: str, name: str) -> bool:
    path = os.path.join(out, name)
    return name in LOGS and os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) == 0


def prepare_run_dir(out: str, resume: bool, overwrite: bool) -> bool:
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite deletes it: pass only one")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} is a file, not a directory; pick another --out")
    if resume:
        return _resume(out)
    if not os.path.isdir(out):
        try:
            os.makedirs(out)
        except OSError as e:
            raise ValueError(f"--out {out}: cannot create the directory ({e.strerror}); pick another --out") from None
        return False
    names = sorted(os.listdir(out))
    ours = [n for n in names if is_run_entry(n)]
    live = [n for n in ours if not _empty_log(out, n)]
    if not overwrite:
        if not live:
            return False
        early = " (stopped before its first checkpoint: --resume starts it again)" \
            if all(n in EARLY or _TMP.match(n) for n in live) else ""
        raise ValueError(f"--out {out} already holds a run{early} ({', '.join(live[:4])}); pass --resume to "
                         "continue it, --overwrite to replace it, or pick another --out")
    if not ours:
        return False
    others = [n for n in names if not is_run_entry(n)]
    if others:
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        raise ValueError(f"--overwrite: {out} also holds files that are not a run's ({shown}); move them "
                         "away or pick another --out (nothing was deleted)")
    for name in ours:
        _remove(os.path.join(out, name))
    return False


def _resume(out: str) -> bool:
    """``--resume``: a checkpoint to continue, or a run that never reached one, started again."""
    if os.path.isfile(os.path.join(out, CHECKPOINT)):
        return False
    ours = [n for n in sorted(os.listdir(out)) if is_run_entry(n)] if os.path.isdir(out) else []
    if not ours or not all(n in EARLY or _TMP.match(n) for n in ours):
        raise ValueError(f"no checkpoint at {os.path.join(out, CHECKPOINT)}; run without --resume to start fresh")
    for name in ours:  # the logs of a warm start that never finished: that run starts again
        _remove(os.path.join(out, name))
    return True


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
