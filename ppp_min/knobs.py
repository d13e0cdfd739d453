"""Checks of a setting's value, shared by every frozen config dataclass that validates its own fields.

Contract: ``positive_int(flag, v, minimum=1)`` and ``positive_float(flag, v, allow_zero=False)`` return None or
raise ``ValueError`` with one line naming the flag (``--flag must be ...``). No imports from the package: every
layer may use it.
"""

from __future__ import annotations

import math


def positive_int(flag: str, v, minimum: int = 1) -> None:
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= minimum):
        raise ValueError(f"--{flag} must be an integer >= {minimum}, got {v!r}")


def positive_float(flag: str, v, allow_zero: bool = False) -> None:
    ok = isinstance(v, (int, float)) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        raise ValueError(f"--{flag} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {v!r}")
