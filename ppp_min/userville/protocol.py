"""The user-simulator protocol: the frozen dataclasses that cross the HTTP boundary, and their validation.

Contract
- ``UserTask``: what the *user* knows about a task (never shown to the agent): the family, the precise
  prompt and the tiered facts. Tiers follow the family's ladder (``families/base.py: Ladder``, the paper
  code's ladders; docs/design.md#proactivity), at most ``MAX_COST`` of them; the tier that holds nothing
  ("I don't know") never carries facts.
- ``ReplyRequest``: stateless: every request carries the task, the preference, the history and the question.
- ``Reply``: the user's answer plus the labels the reward needs (effort, cost tier, preference verdict).
- ``parse_reply_request(obj, known_preferences, families)`` turns decoded JSON into a ``ReplyRequest`` or
  raises ``ProtocolError`` naming the offending field. It is the single place where untrusted input is
  checked. ``families``: the known families by name, each with its ``ladder`` (the registry,
  ``families/registry.py: FAMILIES``); like the preferences it is passed in, so that this module knows no
  family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EFFORTS = ("low", "medium", "high")  # the user's effort labels (paper §4.3, §5.1)
MAX_COST = 5  # the longest ladder a family may have (funcloc's): replies carry a cost 1..MAX_COST

# Input limits: bad or oversized input is refused, never truncated silently.
MAX_TEXT = 8000
MAX_FACTS = 64
MAX_KEYWORDS = 32
MAX_HISTORY = 64


class ProtocolError(ValueError):
    """Malformed request. ``field`` names the offending JSON path, e.g. ``task.facts[2].tier``."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Fact:
    tier: int
    text: str
    keywords: tuple[str, ...] = ()  # lower-case words that show a question is about this fact

    def to_json(self) -> dict:
        return {"tier": self.tier, "text": self.text, "keywords": list(self.keywords)}


@dataclass(frozen=True)
class UserTask:
    family: str
    precise_prompt: str
    facts: tuple[Fact, ...]

    def to_json(self) -> dict:
        return {"family": self.family, "precise_prompt": self.precise_prompt,
                "facts": [f.to_json() for f in self.facts]}

    def facts_of(self, tier: int) -> tuple[Fact, ...]:
        return tuple(f for f in self.facts if f.tier == tier)


@dataclass(frozen=True)
class Exchange:
    question: str
    reply: str

    def to_json(self) -> dict:
        return {"question": self.question, "reply": self.reply}


@dataclass(frozen=True)
class ReplyRequest:
    task: UserTask
    preference: str
    question: str
    history: tuple[Exchange, ...] = ()
    # Optional episode context for preference judges that need it (e.g. first_try: did the agent search
    # before asking?). Filled by the rollout; absent means unknown (0).
    searches_before: int = 0

    def to_json(self) -> dict:
        return {"task": self.task.to_json(), "preference": self.preference, "question": self.question,
                "history": [h.to_json() for h in self.history], "searches_before": self.searches_before}


@dataclass(frozen=True)
class Reply:
    reply: str
    effort: str  # low | medium | high
    cost: int  # the information tier used (1..the family's ladder.max_tier)
    pref_followed: bool | None  # None: the preference has no per-question judge
    parsed: bool = True  # False when an LLM reply had no parsable cost tag (then effort = medium)

    def to_json(self) -> dict:
        return {"reply": self.reply, "effort": self.effort, "cost": self.cost,
                "pref_followed": self.pref_followed, "parsed": self.parsed}

    @staticmethod
    def from_json(obj: Any, where: str = "result") -> "Reply":
        """Validate a reply coming back from a server (the client trusts nothing either)."""
        if not isinstance(obj, dict):
            raise ProtocolError(where, "expected a JSON object")
        text = _str(obj, "reply", where, allow_empty=True)
        effort = obj.get("effort")
        if effort not in EFFORTS:
            raise ProtocolError(f"{where}.effort", f"expected one of {list(EFFORTS)}")
        cost = obj.get("cost")
        if not isinstance(cost, int) or isinstance(cost, bool) or not 1 <= cost <= MAX_COST:
            raise ProtocolError(f"{where}.cost", f"expected an integer 1..{MAX_COST}")
        pf = obj.get("pref_followed")
        if pf is not None and not isinstance(pf, bool):
            raise ProtocolError(f"{where}.pref_followed", "expected true, false or null")
        parsed = obj.get("parsed", True)
        if not isinstance(parsed, bool):
            raise ProtocolError(f"{where}.parsed", "expected a boolean")
        return Reply(text, effort, cost, pf, parsed)


def _str(obj: dict, key: str, where: str, allow_empty: bool = False, limit: int = MAX_TEXT) -> str:
    if key not in obj:
        raise ProtocolError(f"{where}.{key}", "missing")
    v = obj[key]
    if not isinstance(v, str):
        raise ProtocolError(f"{where}.{key}", f"expected a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise ProtocolError(f"{where}.{key}", "must not be empty")
    if len(v) > limit:
        raise ProtocolError(f"{where}.{key}", f"longer than {limit} characters")
    return v


def parse_user_task(obj: Any, families, where: str = "task") -> UserTask:
    """Validate one user task. ``families``: name -> family (its ``ladder``), e.g. the registry."""
    if not isinstance(obj, dict):
        raise ProtocolError(where, "expected a JSON object")
    family = obj.get("family")
    if not isinstance(family, str) or family not in families:
        raise ProtocolError(f"{where}.family", f"unknown family {family!r}; expected one of {list(families)}")
    ladder = families[family].ladder
    precise = _str(obj, "precise_prompt", where)
    facts_raw = obj.get("facts")
    if not isinstance(facts_raw, list):
        raise ProtocolError(f"{where}.facts", "expected a list of {tier, text, keywords}")
    if len(facts_raw) > MAX_FACTS:
        raise ProtocolError(f"{where}.facts", f"more than {MAX_FACTS} facts")
    facts = []
    for i, f in enumerate(facts_raw):
        w = f"{where}.facts[{i}]"
        if not isinstance(f, dict):
            raise ProtocolError(w, "expected a JSON object")
        tier = f.get("tier")
        if not isinstance(tier, int) or isinstance(tier, bool) or not 1 <= tier <= ladder.max_tier:
            raise ProtocolError(f"{w}.tier", f"expected an integer 1..{ladder.max_tier} for {family}")
        if tier == ladder.nothing:
            raise ProtocolError(f"{w}.tier", f"tier {tier} means 'nothing' for {family} and holds no facts")
        text = _str(f, "text", w)
        kws = f.get("keywords", [])
        if not isinstance(kws, list) or len(kws) > MAX_KEYWORDS or not all(
                isinstance(k, str) and 0 < len(k) <= 64 for k in kws):
            raise ProtocolError(f"{w}.keywords", f"expected a list of at most {MAX_KEYWORDS} short strings")
        facts.append(Fact(tier, text, tuple(k.lower() for k in kws)))
    return UserTask(family, precise, tuple(facts))


def parse_reply_request(obj: Any, known_preferences, families, where: str = "body") -> ReplyRequest:
    """Validate one reply request. ``known_preferences``: the valid preference names; ``families``: the
    known families by name (``parse_user_task``)."""
    if not isinstance(obj, dict):
        raise ProtocolError(where, "expected a JSON object")
    task = parse_user_task(obj.get("task"), families, "task" if where == "body" else f"{where}.task")
    pre = "" if where == "body" else f"{where}."
    pref = obj.get("preference")
    if not isinstance(pref, str) or pref not in known_preferences:
        raise ProtocolError(f"{pre}preference",
                            f"unknown preference {pref!r}; valid: {', '.join(sorted(known_preferences))}")
    question = _str(obj, "question", where)
    hist_raw = obj.get("history", [])
    if not isinstance(hist_raw, list) or len(hist_raw) > MAX_HISTORY:
        raise ProtocolError(f"{pre}history", f"expected a list of at most {MAX_HISTORY} {{question, reply}}")
    history = []
    for i, h in enumerate(hist_raw):
        w = f"{pre}history[{i}]"
        if not isinstance(h, dict):
            raise ProtocolError(w, "expected a JSON object")
        history.append(Exchange(_str(h, "question", w, True), _str(h, "reply", w, True)))
    sb = obj.get("searches_before", 0)
    if not isinstance(sb, int) or isinstance(sb, bool) or sb < 0:
        raise ProtocolError(f"{pre}searches_before", "expected a non-negative integer")
    return ReplyRequest(task, pref, question, tuple(history), sb)
