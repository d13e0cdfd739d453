"""funcloc: SWE-Func-Loc in miniature (paper §4.1, §6.1): find the function behind a bug report.

Contract (the ``TaskFamily`` interface, ``families/base.py``)
- Items are functions ``area/object.py:verb_object`` with the attributes symptom (the intent, always
  stated), area, trigger and object, each one word. Keys are split-partitioned (``catalog.stable_hash_split``).
- Facts (the paper code's SWE ladder): tier 1 one fact per attribute the vague prompt dropped; 2 a hint (the
  area in everyday words); 3 nothing ("I don't know"); 4 the file path; 5 the function. The keywords of the
  tier 4/5 facts are the words of lazy questions ("which file", "which function", "what is the name").
- ``score`` = set F1 over the identifiers parsed from the answer (the released code's Func-Loc F1), so a
  scripted answer may list several candidates (``lists_answers``).
- The amateur user does not hold tiers 4-5 (the released simulator blanks the file and function for them);
  the hint (tier 2, everyday words) is kept.
"""

from __future__ import annotations

import re

from ppp_min.userville.catalog import Item, Schema, stable_hash_split
from ppp_min.userville.families.base import LOW_EFFORT_BONUS, Ladder, TaskFamily, article
from ppp_min.userville.protocol import Fact

# Value pools (all one word).
AREAS = {"auth": "logging in", "db": "the database", "net": "the network", "io": "reading and writing disks",
         "ui": "the screen", "cache": "cached results", "cli": "the terminal", "mail": "outgoing messages",
         "pay": "billing", "sync": "syncing devices"}
OBJECTS = ("date", "profile", "token", "order", "image", "price", "email", "table", "queue", "url", "cart",
           "report", "session", "invoice", "photo", "ticket")
TRIGGERS = ("empty", "unicode", "negative", "huge", "corrupt", "null", "duplicate", "zero", "nested",
            "expired", "malformed", "stale")
SYMPTOMS = ("crash", "hang", "timeout", "leak", "overflow", "slowdown", "mismatch", "glitch")
VERBS = ("parse", "load", "save", "format", "check", "send", "merge", "build", "read", "write", "sort", "clean")

# Keywords per fact: the words a question about it would use.
DETAILS = {
    "area": ("It is in the {v} module.",
             ("module", "area", "part", "component", "where", "package", "section", "subsystem", "app")),
    "trigger": ("It is triggered by {v} input.",
                ("input", "when", "trigger", "triggers", "triggered", "data", "value", "happen", "happens",
                 "cause", "causes", "reproduce", "case", "condition")),
    "object": ("It happens with {an} {v}.",
               ("object", "kind", "type", "thing", "entity", "record", "item", "handled", "handling")),
}
HINT_KEYWORDS = ("hint", "hints", "idea", "guess", "suspect", "think", "clue", "tip", "suggestion", "hunch",
                 "pointer", "intuition", "feeling")
FILE_KEYWORDS = ("file", "files", "path", "filename", "located", "location", "directory", "folder", "module",
                 "where", "py", "script", "source")
FUNCTION_KEYWORDS = ("function", "functions", "name", "named", "called", "identifier", "method", "def",
                     "answer", "culprit", "routine")


def _func_key(rng, v, split, used):
    verbs = [x for x in VERBS if stable_hash_split(v["area"], x, v["object"]) == split
             and f"{v['area']}/{v['object']}.py:{x}_{v['object']}" not in used]
    return f"{v['area']}/{v['object']}.py:{rng.choice(verbs)}_{v['object']}" if verbs else None


# ------------------------------------------------------------------ scoring (the released code's F1)
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


class FuncLoc(TaskFamily):
    name = "funcloc"
    schema = Schema("funcloc", "symptom", ("area", "trigger", "object"),
                    (("symptom", SYMPTOMS), ("area", tuple(AREAS)), ("trigger", TRIGGERS), ("object", OBJECTS)),
                    (("symptom", 3), ("area", 4), ("trigger", 4), ("object", 4)), _func_key, lambda k, v: "")
    # Tier -> effort (paper §4.3, §5.1): tier 2 (the hint) is high, as the paper's Fig. 3 counts it.
    ladder = Ladder(effort=("low", "high", "medium", "high", "high"), nothing=3,
                    labels=("details of the full issue description", "the hint",
                            "nothing: you refuse or say you don't know", "the path of the file to edit",
                            "the name of the function to edit"))
    amateur_tiers = frozenset({1, 2})  # the amateur never holds the file path (4) or the function name (5)
    details = DETAILS
    questions = {"area": ("Which module is it in", "In quale modulo si trova il problema"),
                 "trigger": ("What input triggers it", "Quale valore di ingresso causa il problema"),
                 "object": ("What type of object does it happen with", "Con quale tipo di oggetto succede"),
                 "hint": ("Do you have a hint", "Hai un suggerimento"),
                 "file": ("Which file is it in", "In quale file si trova il problema"),
                 "function": ("Which function is it", "Quale funzione è")}
    lazy_target = "function"
    hint_target = "hint"
    answer_targets = ("file", "function")
    lists_answers = True

    def prompt(self, values: dict[str, str], kept: tuple[str, ...]) -> str:
        v = values
        s = f"Find the function to fix: a {v['symptom']}"
        if "area" in kept:
            s += f" in the {v['area']} module"
        has_t, has_o = "trigger" in kept, "object" in kept
        if has_t and has_o:
            s += f" with {article(v['trigger'])} {v['trigger']} {v['object']}"
        elif has_o:
            s += f" with {article(v['object'])} {v['object']}"
        elif has_t:
            s += f" with {v['trigger']} input"
        return s + "."

    def item_line(self, item: Item) -> str:
        v = dict(item.attrs)
        return f"{item.key}: {v['symptom']} in {v['area']} with {v['trigger']} {v['object']}"

    def answer_facts(self, target: Item) -> tuple[Fact, ...]:
        path, func = target.key.split(":")
        return (Fact(2, f"My hunch: it has to do with {AREAS[target.get('area')]}.", HINT_KEYWORDS),
                Fact(4, f"It is in the file {path}.", FILE_KEYWORDS),
                Fact(5, f"The function is {target.key}.", FUNCTION_KEYWORDS + (func,)))

    def score(self, answer: str, gold: tuple[str, ...]) -> float:
        return set_f1(parse_identifiers(answer), set(gold))

    def proactivity(self, levels: list[int], is_vague: bool) -> float:
        """The released code's SWE cost reward (``UserReward.calculate_cost_reward``; paper §5.1)."""
        if is_vague:
            c = -0.1 * sum(lv - 1 for lv in levels)  # -0.1*(level_sum - ask_turn)
            if levels and all(lv == 1 for lv in levels):
                c += LOW_EFFORT_BONUS  # every reply came from the precise issue text
        else:
            c = -0.2 * sum(levels)  # precise prompt: every question costs -0.2*level; no bonus
        return c
