"""A setting declared once: the checks of its value and its command-line flag, for every config dataclass.

Contract
- ``positive_int(flag, v, minimum=1)`` and ``positive_float(flag, v, allow_zero=False)`` return None or raise
  ``ValueError`` with one line naming the flag (``--flag must be ...``).
- ``knob(default, group, help, flag=None, ...)`` is a dataclass ``field`` whose metadata (``Knob``) says how it
  appears in ``train.py``: the flag, its help and group, and how a flag's value becomes the field's. The parser
  and the reading of the flags back are built from these (``run/config.py: add_flags``, ``from_args``), so a knob
  is written once: a field with its default, its flag and its help. ``add_flag`` / ``read_flags`` do the
  argparse side for any such dataclass (train.py's settings, eval.py's ``EvalConfig``).
- No imports from the package: every layer may use it.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields, replace
from typing import Callable


def positive_int(flag: str, v, minimum: int = 1) -> None:
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= minimum):
        raise ValueError(f"--{flag} must be an integer >= {minimum}, got {v!r}")


def positive_float(flag: str, v, allow_zero: bool = False) -> None:
    ok = isinstance(v, (int, float)) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        raise ValueError(f"--{flag} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {v!r}")


def unit_float(flag: str, v) -> None:
    if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
        raise ValueError(f"--{flag} must be a number in [0, 1], got {v!r}")


@dataclass(frozen=True)
class Knob:
    """How a config field appears on the command line (``knob`` puts one in the field's metadata)."""
    group: str  # the --help group it is listed under
    help: str  # %(default)s is the flag's default
    flag: str | None = None  # None: "--" + the field name with "-" for "_"
    auto: bool = False  # the flag defaults to "unset": the preset's or the pretrained model's value (run/config.py)
    cli_default: object = None  # the flag's default when it is not the field's (e.g. --prefs all)
    parse: Callable | None = None  # the flag's value -> the field's value (e.g. --prefs seen -> 12 names)
    arg: tuple = ()  # argparse keywords (type, choices, action, metavar), as (key, value) pairs
    aliases: tuple[str, ...] = ()  # more option strings for the same flag (eval.py's --tasks for --eval-tasks)


def knob(default, group: str, help: str, flag: str | None = None, *, auto: bool = False, cli_default=None,
         parse: Callable | None = None, repr: bool = True, aliases: tuple[str, ...] = (), **arg):
    """A dataclass field declared once: its default, and its flag with the help (``Knob``), from which
    ``run/cli.py`` builds train.py's parser and reads the parsed flags back. A bool field without an ``action``
    is ``--flag`` (default False) or ``--flag/--no-flag`` (default True)."""
    k = Knob(group, help, flag, auto, cli_default, parse, tuple(arg.items()), tuple(aliases))
    return field(default=default, repr=repr, metadata={"knob": k})


def flag_name(f) -> str:
    """The train.py flag of a dataclass field declared with ``knob``."""
    k = f.metadata["knob"]
    return k.flag or "--" + f.name.replace("_", "-")


def knob_fields(cls) -> list:
    """The fields of a dataclass that are settings with a flag."""
    return [f for f in fields(cls) if "knob" in f.metadata]


def add_flag(group, f, dest: str, value, help: str | None = None) -> None:
    """The flag of a ``knob`` field: its default is ``value`` (the field's value in the defaults the CLI shows),
    unset for an "auto" knob; its argparse type follows the value (bool: --flag or --flag/--no-flag)."""
    k, arg = f.metadata["knob"], dict(f.metadata["knob"].arg)
    if isinstance(f.default, bool) and "action" not in arg:
        arg["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
    elif "action" not in arg and "type" not in arg and "choices" not in arg and type(value) in (int, float):
        arg["type"] = type(value)
    if arg.get("action") is None and "choices" not in arg:
        arg["metavar"] = arg.get("metavar") or flag_name(f)[2:].upper().replace("-", "_")
    default = None if k.auto else (k.cli_default if k.cli_default is not None else value)
    group.add_argument(flag_name(f), *k.aliases, dest=dest, default=default, help=k.help if help is None else help,
                       **arg)


def flag_values(args, cls, prefix: str = "") -> dict:
    """The field values the parsed ``args`` give the flags of ``cls`` (dest ``prefix + name``), an unset "auto"
    flag left out."""
    kw = {}
    for f in knob_fields(cls):
        k, v = f.metadata["knob"], getattr(args, prefix + f.name)
        if v is None and k.auto:
            continue
        kw[f.name] = k.parse(v) if k.parse else v
    return kw


def read_flags(args, cls, prefix: str, base):
    """``base`` with the values of the flags of ``cls`` (``flag_values``); the dataclass validates the result."""
    return replace(base, **flag_values(args, cls, prefix))
