"""UserVille-mini tasks: a family's skin of the catalog engine, splits, scoring, search, JSONL (docs/design.md#tasks).

Contract
- ``Task`` (frozen): ``task_id, family, split, vague_prompt, precise_prompt, gold, user, catalog_id,
  catalog, kept``. The agent sees only ``vague_prompt`` / ``precise_prompt`` (and search results); ``user``
  (a protocol ``UserTask``: precise prompt + tiered facts) goes to the simulated user.
- ``make_tasks(family, split, n, seed) -> list[Task]``: seeded, deterministic; ``split`` is ``train``, ``val``
  or ``test``. The splits use disjoint catalogs and split-partitioned keys (``catalog.stable_hash_split``), so no
  catalog item, gold identifier or name is shared between two splits. Half the keys are ``train``; the
  held-out half is cut in two, ``val`` (for choosing settings) and ``test`` (for reporting). ``train`` is the
  same as before ``val`` existed; ``test`` was re-drawn when ``val`` was cut out of it.
  Guaranteed (asserted): the precise prompt matches exactly one catalog item, the vague prompt 2-4.
- What differs between families (schema, prompts, facts, score, search lines) is the family's, asked of the
  registry (``families/registry.py: FAMILIES``; ``families/funcloc.py``, ``families/research.py``): this
  module knows no family by name. ``score(task, answer)`` is the family's score of an answer.
- ``search(task, query, k=3)``: the task's catalog ranked by keyword overlap; each line shows the key and
  its attributes. ``export_jsonl`` / ``import_jsonl``: exact round trip (catalog included); a bad line
  raises ``TaskFileError`` naming the line number and the field.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from ppp_min.userville import catalog as cat
from ppp_min.userville.catalog import Catalog, Item
from ppp_min.userville.families.registry import FAMILIES
from ppp_min.userville.protocol import ProtocolError, UserTask, parse_user_task

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Task:
    task_id: str
    family: str
    split: str
    vague_prompt: str
    precise_prompt: str
    gold: tuple[str, ...]
    user: UserTask
    catalog_id: str
    catalog: Catalog
    kept: tuple[str, ...] = ()  # attributes the vague prompt states ("" for imported hand-written tasks)


def make_tasks(family: str, split: str, n: int, seed: int = 0) -> list[Task]:
    """``n`` tasks of ``family`` from ``split``, deterministic in ``seed``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {list(FAMILIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    fam, tasks, i = FAMILIES[family], [], 0
    schema = fam.schema
    while len(tasks) < n:
        cid = f"{family[0]}{split[:2]}{seed}-{i}"
        catalog, plans = cat.build_catalog(schema, cid, split, random.Random(f"{family}|{split}|{seed}|{i}"))
        for j, plan in enumerate(plans[: n - len(tasks)]):
            target = catalog.item(plan.target)
            v = dict(target.attrs)
            candidates = catalog.matching(tuple((a, v[a]) for a in plan.kept))
            assert 2 <= len(candidates) <= 4 and catalog.matching(target.attrs) == (target,)
            precise = fam.prompt(v, schema.attributes)
            user = UserTask(family, precise, fam.user_facts(target, plan.kept, candidates))
            tasks.append(Task(f"{cid}-{j}", family, split, fam.prompt(v, plan.kept), precise,
                              (target.key,), user, cid, catalog, plan.kept))
        i += 1
    return tasks


def search(task: Task, query: str, k: int = 3) -> list[str]:
    """The top-k lines of the task's catalog for a keyword query (each: key, then attributes)."""
    return cat.search(task.catalog, query, FAMILIES[task.family].item_line, k)


def score(task: Task, answer_text: str) -> float:
    """Task score (productivity, paper §6.3): the family's (funcloc set F1, research exact match)."""
    return FAMILIES[task.family].score(answer_text, task.gold)


# ------------------------------------------------------------------ JSONL (bring your own tasks)
class TaskFileError(ValueError):
    """A bad line in a task file: names the line number and the field."""

    def __init__(self, line: int, field: str, message: str):
        super().__init__(f"line {line}: {field}: {message}")
        self.line, self.field, self.message = line, field, message


def task_to_json(task: Task) -> dict:
    return {"task_id": task.task_id, "family": task.family, "split": task.split,
            "vague_prompt": task.vague_prompt, "precise_prompt": task.precise_prompt, "gold": list(task.gold),
            "user": task.user.to_json(), "catalog_id": task.catalog_id, "kept": list(task.kept),
            "catalog": [{"key": it.key, "attrs": [list(a) for a in it.attrs], "doc": it.doc}
                        for it in task.catalog.items]}


def export_jsonl(tasks, path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for t in tasks:
            f.write(json.dumps(task_to_json(t), ensure_ascii=False) + "\n")


def _field(obj: dict, key: str, kind, line: int, where: str = ""):
    name = f"{where}{key}"
    if key not in obj:
        raise TaskFileError(line, name, "missing")
    v = obj[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise TaskFileError(line, name, f"expected {kind.__name__}, got {type(v).__name__}")
    return v


def _strings(obj: dict, key: str, line: int, where: str = "") -> tuple[str, ...]:
    v = _field(obj, key, list, line, where)
    if not all(isinstance(x, str) for x in v):
        raise TaskFileError(line, f"{where}{key}", "expected a list of strings")
    return tuple(v)


def task_from_json(obj, line: int = 1) -> Task:
    if not isinstance(obj, dict):
        raise TaskFileError(line, "(line)", "expected a JSON object")
    s = {k: _field(obj, k, str, line) for k in ("task_id", "family", "split", "vague_prompt",
                                                 "precise_prompt", "catalog_id")}
    if s["family"] not in FAMILIES:
        raise TaskFileError(line, "family", f"unknown family {s['family']!r}; expected one of {list(FAMILIES)}")
    for k in ("vague_prompt", "precise_prompt", "task_id"):
        if not s[k].strip():
            raise TaskFileError(line, k, "must not be empty")
    gold = _strings(obj, "gold", line)
    kept = _strings(obj, "kept", line) if "kept" in obj else ()
    try:
        user = parse_user_task(obj.get("user"), FAMILIES, "user")
    except ProtocolError as e:
        raise TaskFileError(line, e.field, e.message) from None
    if user.family != s["family"]:
        raise TaskFileError(line, "user.family", f"{user.family!r} differs from family {s['family']!r}")
    items = []
    for i, it in enumerate(_field(obj, "catalog", list, line)):
        w = f"catalog[{i}]."
        if not isinstance(it, dict):
            raise TaskFileError(line, f"catalog[{i}]", "expected a JSON object")
        attrs = _field(it, "attrs", list, line, w)
        if not all(isinstance(a, list) and len(a) == 2 and all(isinstance(x, str) for x in a) for a in attrs):
            raise TaskFileError(line, f"{w}attrs", "expected a list of [attribute, value] string pairs")
        items.append(Item(_field(it, "key", str, line, w), tuple(tuple(a) for a in attrs),
                          _field(it, "doc", str, line, w) if "doc" in it else ""))
    return Task(s["task_id"], s["family"], s["split"], s["vague_prompt"], s["precise_prompt"], gold, user,
                s["catalog_id"], Catalog(s["catalog_id"], s["family"], tuple(items)), kept)


def import_jsonl(path) -> list[Task]:
    tasks = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as e:
                raise TaskFileError(n, "(line)", f"not valid JSON ({e.msg}); one task object per line") from None
            tasks.append(task_from_json(obj, n))
    return tasks
