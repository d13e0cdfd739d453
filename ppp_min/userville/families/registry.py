"""The task families by name: ``FAMILIES`` (name -> ``TaskFamily``) and ``register``.

Contract
- ``FAMILIES`` is the one list of families: the protocol validates ``task.family`` against it (the
  simulator server passes it to ``protocol.parse_reply_request``), and tasks, the simulated users, the
  environment, the reward, the evaluation and the CLIs' ``--family`` read it. Iteration order is the
  order of registration (funcloc, then research: the column order of every report).
- ``parse_family(flag)``: ``--family NAME|both`` -> the families it names (train.py and eval.py).
- ``register(family) -> family`` checks the family (``TaskFamily.check``) and adds it; a name registered
  twice raises ``ValueError``. Adding a family: one file next to this one, plus its ``register`` line
  below (docs/design.md#adding-a-task-family); a test or a fork may register one from its own module.
"""

from __future__ import annotations

from ppp_min.userville.families.base import TaskFamily
from ppp_min.userville.families.funcloc import FuncLoc
from ppp_min.userville.families.research import Research

FAMILIES: dict[str, TaskFamily] = {}


def register(fam: TaskFamily) -> TaskFamily:
    if not isinstance(fam, TaskFamily):
        raise ValueError(f"register() takes a TaskFamily instance, got {type(fam).__name__}")
    fam.check()
    if fam.name in FAMILIES:
        raise ValueError(f"task family {fam.name!r} is already registered")
    FAMILIES[fam.name] = fam
    return fam


def parse_family(flag: str) -> tuple[str, ...]:
    """The CLIs' ``--family``: one registered name, or ``both`` for every registered family."""
    return tuple(FAMILIES) if flag == "both" else (flag,)


register(FuncLoc())  # SWE-Func-Loc in miniature (paper §6.1)
register(Research())  # BrowseComp-Plus in miniature (paper §6.1)
