"""The resume contract: ``--resume`` continues exactly the run in the checkpoint, or refuses.

Contract
- ``record(cfg) -> dict``: the run's configuration as the checkpoint stores it (``asdict``, JSON-ready),
  secrets (``SECRET``: the simulator token) left out.
- ``check(cfg, stored, step) -> None``: default-deny. EVERY ``RunConfig`` field (nested fields by dotted path,
  e.g. ``rl.lr``), and every setting the checkpoint holds, must be equal in ``cfg`` and ``stored``, except the
  ``SAFE`` ones: where the run writes, how often it logs, evaluates and checkpoints, how it reaches the
  simulator, the device and threads, the warm-start cache, and ``rl.steps`` (nothing that is trained depends
  on it: the RL learning rate has no schedule; a checkpoint past ``--rl-steps`` is refused). A field added to ``RunConfig`` later is
  therefore compared unless it is added to ``SAFE``. Any difference raises ``ValueError``, one line naming each
  changed flag with the checkpoint's value and the new one. Keys in ``RUN_STATE`` are the run's own records
  (the SFT evaluation, the log sizes), not settings.
- ``log_sizes(out) -> dict`` (bytes of metrics.jsonl and samples.jsonl now) is saved with each checkpoint;
  ``cut_logs(out, sizes)`` cuts both files back to those sizes before a resumed run appends, so a step is
  never logged twice. A file already shorter than its recorded size is left as it is.
- ``safe_flags() -> str``: the flags that may change on ``--resume``, for ``train.py --help``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from ppp_min.run.config import flag_of

SAFE = frozenset({"out", "resume", "overwrite", "save_every", "log_samples", "samples_every", "eval_every",
                  "threads", "device", "sim_url", "sim_token", "sim_retry_s", "sim_timeout", "rl.steps",
                  "warm_start_cache"})  # the cache only spares recomputing the same SFT model (a resume needs none)
SECRET = frozenset({"sim_token"})
RUN_STATE = frozenset({"sft_eval", "log_sizes"})
LOGS = ("metrics.jsonl", "samples.jsonl")


def record(cfg) -> dict:
    """What the checkpoint keeps of the configuration (JSON round trip: tuples become lists)."""
    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in SECRET}))


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _show(v) -> str:
    if isinstance(v, list):  # e.g. --prefs: the first names and the count
        return (",".join(map(str, v[:3])) + (f",... ({len(v)})" if len(v) > 3 else "")) or "[]"
    return "(unset)" if v is None else str(v)


def check(cfg, stored: dict, step: int) -> None:
    now = flatten(record(cfg))
    then = flatten({k: v for k, v in stored.items() if k not in RUN_STATE})
    missing = object()
    changed = []
    for path in sorted(set(now) | set(then)):
        if path in SAFE:
            continue
        a, b = then.get(path, missing), now.get(path, missing)
        if a != b:
            a_s = "(not in the checkpoint)" if a is missing else _show(a)
            b_s = "(not a setting of this version)" if b is missing else _show(b)
            changed.append(f"{flag_of(path)} {a_s} -> {b_s}")
    if changed:
        raise ValueError(f"--resume: the checkpoint was trained with other settings ({'; '.join(changed)}); "
                         "give the checkpoint's values, or start a new run in another --out")
    if cfg.rl.steps < step:
        raise ValueError(f"--resume: the checkpoint is at RL step {step}, past --rl-steps {cfg.rl.steps}; "
                         f"give --rl-steps >= {step}")


def log_sizes(out: str) -> dict:
    return {name: os.path.getsize(os.path.join(out, name)) for name in LOGS
            if os.path.isfile(os.path.join(out, name))}


def cut_logs(out: str, sizes: dict | None) -> list[str]:
    """Cut each log back to its recorded size; returns the names of the files that were cut."""
    cut = []
    for name, size in (sizes or {}).items():
        path = os.path.join(out, name)
        if name in LOGS and isinstance(size, int) and os.path.isfile(path) and os.path.getsize(path) > size:
            os.truncate(path, size)
            cut.append(name)
    return cut


def safe_flags() -> str:
    return ", ".join(sorted(flag_of(p) for p in SAFE - {"resume", "overwrite"}))
