"""The output directory of a training run: refuse to mix two runs, replace one only on request.

Contract
- ``prepare_run_dir(out, resume, overwrite) -> None``, called once (rank 0) before anything is written:
  * ``out`` missing: created (``resume`` then fails: there is nothing to resume).
  * ``resume``: ``out/checkpoint.safetensors`` must exist; nothing is touched.
  * a fresh run (neither flag) into a directory that already holds a run's files (``RUN_FILES`` /
    ``RUN_DIRS``: metrics.jsonl, samples.jsonl, checkpoint.safetensors and its temporaries, model/,
    sft_model/, tokenizer/) is refused: the metrics would be appended to the old run's and its model replaced.
    An empty directory, or one holding only other files, is fine (nothing of them is touched).
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
CHECKPOINT = "checkpoint.safetensors"
_TMP = re.compile(r"^checkpoint\.safetensors\.tmp\.\d+$")  # left by a save that died before its rename


def is_run_entry(name: str) -> bool:
    return name in RUN_FILES or name in RUN_DIRS or bool(_TMP.match(name))


def prepare_run_dir(out: str, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite deletes it: pass only one")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} is a file, not a directory; pick another --out")
    if resume:
        if not os.path.isfile(os.path.join(out, CHECKPOINT)):
            raise ValueError(f"no checkpoint at {os.path.join(out, CHECKPOINT)}; "
                             "run without --resume to start fresh")
        return
    if not os.path.isdir(out):
        os.makedirs(out)
        return
    names = sorted(os.listdir(out))
    ours = [n for n in names if is_run_entry(n)]
    if not ours:
        return
    if not overwrite:
        raise ValueError(f"--out {out} already holds a run ({', '.join(ours[:4])}); pass --resume to "
                         "continue it, --overwrite to replace it, or pick another --out")
    others = [n for n in names if not is_run_entry(n)]
    if others:
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        raise ValueError(f"--overwrite: {out} also holds files that are not a run's ({shown}); move them "
                         "away or pick another --out (nothing was deleted)")
    for name in ours:
        _remove(os.path.join(out, name))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
