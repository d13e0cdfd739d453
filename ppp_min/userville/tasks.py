"""UserVille-mini tasks: the two skins of the catalog engine, splits, scoring, search, JSONL (docs/design.md#tasks).

Contract
- ``Task`` (frozen): ``task_id, family, split, vague_prompt, precise_prompt, gold, user, catalog_id,
  catalog, kept``. The agent sees only ``vague_prompt`` / ``precise_prompt`` (and search results); ``user``
  (a protocol ``UserTask``: precise prompt + tiered facts) goes to the simulated user.
- ``make_tasks(family, split, n, seed) -> list[Task]``: seeded, deterministic; ``split`` is ``train``, ``val``
  or ``test``. The splits use disjoint catalogs and split-partitioned keys (``stable_hash_split``), so no
  catalog item, gold identifier or name is shared between two splits. Half the keys are ``train``; the
  held-out half is cut in two, ``val`` (for choosing settings) and ``test`` (for reporting). ``train`` is the
  same as before ``val`` existed; ``test`` was re-drawn when ``val`` was cut out of it.
  Guaranteed (asserted): the precise prompt matches exactly one catalog item, the vague prompt 2-4.
- ``funcloc`` (SWE-Func-Loc in miniature): items are functions ``area/object.py:verb_object`` with attributes
  symptom (intent, always stated), area, trigger, object. Facts (the paper code's SWE ladder): tier 1 one
  fact per attribute missing from the vague prompt; 2 a hint (the area in everyday words); 4 the file path;
  5 the function. ``score`` = set F1 over identifiers parsed from the answer (the paper's Func-Loc F1).
- ``research`` (BrowseComp-Plus in miniature): items are fictional people with a document; attributes field
  (intent), city, year, award. Facts: tier 1 one per criterion missing from the vague prompt; tier 3 the gold
  document snapshot. ``score`` = exact match after normalisation.
- Fact keywords are the words a question about that fact would use (plus the candidate values), so
  lazy questions ("which function", "which file", "what is the name", "who is it") reach tiers 5/4/3.
  An attribute the vague prompt already states has no tier-1 fact: asking about it again is an unnecessary
  question (the "nothing" tier, medium effort), or reaches the file tier through "module"/"where".
- ``search(task, query, k=3)``: the task's catalog ranked by keyword overlap; each line shows the key and
  its attributes. ``export_jsonl`` / ``import_jsonl``: exact round trip (catalog included); a bad line
  raises ``TaskFileError`` naming the line number and the field.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass

from ppp_min.userville import catalog as cat
from ppp_min.userville.catalog import Catalog, Item, Schema
from ppp_min.userville.protocol import FAMILIES, Fact, ProtocolError, UserTask, parse_user_task

SPLITS = ("train", "val", "test")

# ------------------------------------------------------------------ funcloc skin: value pools (all one word)
AREAS = {"auth": "logging in", "db": "the database", "net": "the network", "io": "reading and writing disks",
         "ui": "the screen", "cache": "cached results", "cli": "the terminal", "mail": "outgoing messages",
         "pay": "billing", "sync": "syncing devices"}
OBJECTS = ("date", "profile", "token", "order", "image", "price", "email", "table", "queue", "url", "cart",
           "report", "session", "invoice", "photo", "ticket")
TRIGGERS = ("empty", "unicode", "negative", "huge", "corrupt", "null", "duplicate", "zero", "nested",
            "expired", "malformed", "stale")
SYMPTOMS = ("crash", "hang", "timeout", "leak", "overflow", "slowdown", "mismatch", "glitch")
VERBS = ("parse", "load", "save", "format", "check", "send", "merge", "build", "read", "write", "sort", "clean")

# ------------------------------------------------------------------ research skin
FIELDS = ("physics", "botany", "poetry", "chess", "music", "painting", "geology", "surgery", "architecture",
          "linguistics", "astronomy", "sculpture")
CITIES = ("Lyon", "Oslo", "Cairo", "Lima", "Pune", "Kyoto", "Perth", "Quito", "Riga", "Tunis", "Hanoi", "Porto")
YEARS = tuple(str(y) for y in range(1920, 2000, 4))
AWARDS = ("Orvel", "Kesta", "Brunn", "Talio", "Verne", "Mirel", "Sando", "Calix")
FIRST = ("Mara", "Ilya", "Tomas", "Elin", "Rafa", "Noor", "Kaito", "Lena", "Oren", "Sina", "Yusuf", "Ada",
         "Bruno", "Dagny", "Emil", "Femi")
LAST = tuple(a + b for a in ("Vel", "Dor", "Kan", "Mir", "Sol", "Tak", "Ber", "Lun")
             for b in ("ko", "ska", "ven", "ri", "mo", "dal", "ten", "ssa"))

# Keywords of tier-1 facts, per attribute: the words a question about that attribute would use.
GENERIC = ("more", "detail", "details", "describe", "explain", "context", "else", "elaborate", "clarify",
           "information", "info")
ATTRIBUTE_KEYWORDS = {
    "area": ("module", "area", "part", "component", "where", "package", "section", "subsystem", "app"),
    "object": ("object", "kind", "type", "thing", "entity", "record", "item", "handled", "handling"),
    "trigger": ("input", "when", "trigger", "triggers", "triggered", "data", "value", "happen", "happens",
                "cause", "causes", "reproduce", "case", "condition"),
    "city": ("city", "where", "place", "town", "born", "birthplace", "from", "country", "hometown"),
    "year": ("year", "when", "born", "date", "decade", "age", "old", "birth", "era"),
    "award": ("award", "prize", "won", "win", "honor", "honour", "medal", "recognition", "awarded"),
}
HINT_KEYWORDS = ("hint", "hints", "idea", "guess", "suspect", "think", "clue", "tip", "suggestion", "hunch",
                 "pointer", "intuition", "feeling")
FILE_KEYWORDS = ("file", "files", "path", "filename", "located", "location", "directory", "folder", "module",
                 "where", "py", "script", "source")
FUNCTION_KEYWORDS = ("function", "functions", "name", "named", "called", "identifier", "method", "def",
                     "answer", "culprit", "routine")
DOC_KEYWORDS = ("who", "name", "named", "called", "answer", "person", "identity", "document", "page",
                "source", "snapshot", "article", "link")


def _an(word: str) -> str:
    return "an" if word[0] in "aeio" else "a"  # "a url", "a unicode": no initial-u words take "an" here


def _func_key(rng, v, split, used):
    verbs = [x for x in VERBS if stable_hash_split(v["area"], x, v["object"]) == split
             and f"{v['area']}/{v['object']}.py:{x}_{v['object']}" not in used]
    return f"{v['area']}/{v['object']}.py:{rng.choice(verbs)}_{v['object']}" if verbs else None


def _person_key(rng, v, split, used):
    for _ in range(20):
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        if stable_hash_split(name) == split and name not in used:
            return name
    return None


def stable_hash_split(*parts: str) -> str:
    """Which split a key belongs to: keys are partitioned so that splits never share a gold answer. The crc32
    bit that made train / test is kept (train unchanged); the held-out half is cut by a sha256 bit, not by a
    second crc32: crc32 is linear, so a crc32 of the same key with a prefix differs from it by a constant per
    key length, and the cut would follow the length of the key."""
    if cat.stable_hash(*parts) % 2 == 0:
        return "train"
    return "val" if hashlib.sha256("\x1f".join(parts).encode()).digest()[0] & 1 else "test"


FUNCLOC = Schema("funcloc", "symptom", ("area", "trigger", "object"),
                 (("symptom", SYMPTOMS), ("area", tuple(AREAS)), ("trigger", TRIGGERS), ("object", OBJECTS)),
                 (("symptom", 3), ("area", 4), ("trigger", 4), ("object", 4)), _func_key, lambda k, v: "")
RESEARCH = Schema("research", "field", ("city", "year", "award"),
                  (("field", FIELDS), ("city", CITIES), ("year", YEARS), ("award", AWARDS)),
                  (("field", 3), ("city", 4), ("year", 4), ("award", 4)), _person_key,
                  lambda k, v: f"{k} is a {v['field']} expert born in {v['city']} in {v['year']}; "
                               f"winner of the {v['award']} prize.")
SCHEMAS = {"funcloc": FUNCLOC, "research": RESEARCH}


def item_line(item: Item, family: str) -> str:
    """One search-result line: the key the agent must copy, then the item's attributes."""
    v = dict(item.attrs)
    if family == "funcloc":
        return f"{item.key}: {v['symptom']} in {v['area']} with {v['trigger']} {v['object']}"
    return f"{item.key}: {v['field']}, born {v['city']} {v['year']}, {v['award']} prize"


def prompt(family: str, v: dict, kept: tuple[str, ...]) -> str:
    """The request stating only the ``kept`` attributes (all of them = the precise prompt)."""
    if family == "funcloc":
        s = f"Find the function to fix: a {v['symptom']}"
        if "area" in kept:
            s += f" in the {v['area']} module"
        has_t, has_o = "trigger" in kept, "object" in kept
        if has_t and has_o:
            s += f" with {_an(v['trigger'])} {v['trigger']} {v['object']}"
        elif has_o:
            s += f" with {_an(v['object'])} {v['object']}"
        elif has_t:
            s += f" with {v['trigger']} input"
        return s + "."
    s = f"Find the person: {_an(v['field'])} {v['field']} expert"
    if "city" in kept or "year" in kept:
        s += " born" + (f" in {v['city']}" if "city" in kept else "") + (f" in {v['year']}" if "year" in kept else "")
    if "award" in kept:
        s += f" who won the {v['award']} prize"
    return s + "."


_FACT_TEXT = {"area": "It is in the {} module.", "object": "It happens with {} {}.",
              "trigger": "It is triggered by {} input.", "city": "They were born in {}.",
              "year": "They were born in {}.", "award": "They won the {} prize."}


def user_facts(family: str, target: Item, kept: tuple[str, ...], candidates: tuple[Item, ...]) -> tuple[Fact, ...]:
    """The user's tiered facts (the paper code's ladders; see the module docstring)."""
    v = dict(target.attrs)
    facts = []
    for a in SCHEMAS[family].optional:  # tier 1: one fact per attribute missing from the vague prompt
        if a in kept:
            continue
        text = (_FACT_TEXT[a].format(_an(v[a]), v[a]) if a == "object" else _FACT_TEXT[a].format(v[a]))
        values = tuple(dict.fromkeys(c.get(a).lower() for c in candidates))
        facts.append(Fact(1, text, ATTRIBUTE_KEYWORDS[a] + GENERIC + values))
    if family == "funcloc":
        path, func = target.key.split(":")
        facts.append(Fact(2, f"My hunch: it has to do with {AREAS[v['area']]}.", HINT_KEYWORDS))
        facts.append(Fact(4, f"It is in the file {path}.", FILE_KEYWORDS))
        facts.append(Fact(5, f"The function is {target.key}.", FUNCTION_KEYWORDS + (func,)))
    else:
        facts.append(Fact(3, f"Here is the page: {target.doc}", DOC_KEYWORDS))
    return tuple(facts)


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
    schema, tasks, i = SCHEMAS[family], [], 0
    while len(tasks) < n:
        cid = f"{family[0]}{split[:2]}{seed}-{i}"
        catalog, plans = cat.build_catalog(schema, cid, split, random.Random(f"{family}|{split}|{seed}|{i}"))
        for j, plan in enumerate(plans[: n - len(tasks)]):
            target = catalog.item(plan.target)
            v = dict(target.attrs)
            candidates = catalog.matching(tuple((a, v[a]) for a in plan.kept))
            assert 2 <= len(candidates) <= 4 and catalog.matching(target.attrs) == (target,)
            precise = prompt(family, v, schema.attributes)
            user = UserTask(family, precise, user_facts(family, target, plan.kept, candidates))
            tasks.append(Task(f"{cid}-{j}", family, split, prompt(family, v, plan.kept), precise,
                              (target.key,), user, cid, catalog, plan.kept))
        i += 1
    return tasks


def search(task: Task, query: str, k: int = 3) -> list[str]:
    """The top-k lines of the task's catalog for a keyword query (each: key, then attributes)."""
    return cat.search(task.catalog, query, lambda it: item_line(it, task.family), k)


# ------------------------------------------------------------------ scoring (the paper code's F1 / EM)
_IDENT = re.compile(r"[\w./-]+\.py:[\w.]+")


def parse_identifiers(text: str) -> set[str]:
    """Function identifiers ``path/file.py:name`` in free text (prefixes /testbed/, /workspace/, ./ removed)."""
    out = set()
    for m in _IDENT.findall(text):
        m = m.rstrip(".")
        for prefix in ("/testbed/", "/workspace/", "./"):
            if m.startswith(prefix):
                m = m[len(prefix):]
        out.add(m)
    return out


def set_f1(pred: set[str], gold: set[str]) -> float:
    """2|P∩G| / (|P|+|G|); 1 when both are empty, 0 when only one is (as in the paper's code)."""
    if not pred and not gold:
        return 1.0
    return 2 * len(pred & gold) / (len(pred) + len(gold))


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def score(task: Task, answer_text: str) -> float:
    """Task score (productivity): funcloc set F1; research normalised exact match."""
    if task.family == "funcloc":
        return set_f1(parse_identifiers(answer_text), set(task.gold))
    return 1.0 if normalize(answer_text) in {normalize(g) for g in task.gold} else 0.0


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
        user = parse_user_task(obj.get("user"), "user")
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
