"""What a task family is: the one small interface every family implements (docs/design.md#adding-a-task-family).

Contract
- A family is one subclass of ``TaskFamily``, instantiated once and registered by name
  (``families/registry.py: register``). Instances are stateless: every method is a pure function of its
  arguments, so one instance serves every thread, process and split. No other module branches on a
  family's name; they ask the registry (``FAMILIES[task.family]``) for what differs:
  * the catalog skin (paper §4.1: a precise prompt singles out one item, a vague one matches 2-4):
    ``schema`` (``catalog.Schema``: the intent attribute, the attributes a vague prompt may drop, value
    pools, key and document makers), ``prompt(values, kept)`` (the request stating the ``kept``
    attributes; all of them = the precise prompt) and ``item_line(item)`` (one search-result line,
    ``"KEY: attributes"``: numbered answers resolve to the KEY);
  * what the simulated user holds, ``user_facts(target, kept, candidates)``: tier 1 one fact per attribute
    the vague prompt dropped (``details``: its text and the words a question about it uses, plus
    ``GENERIC`` and the candidates' values), then ``answer_facts(target)``, the higher tiers, whose keywords
    are the words of lazy questions ("which function", "who is it"). An attribute the vague prompt already
    states has no tier-1 fact: asking about it again is an unnecessary question (the nothing tier);
  * ``ladder`` (``Ladder``): the cost tiers, their effort labels (paper §4.3, Fig. 3) and the tier that
    holds nothing; ``amateur_tiers``: the tiers the ``amateur`` user holds (None = all);
  * ``score(answer, gold)``: productivity s in [0, 1] (paper §6.3);
  * ``proactivity(levels, is_vague)``: the released code's cost reward c for the episode's reply tiers, per
    prompt kind (paper §5.1), before the term shared by every family (``rl/reward.py``: nothing asked on a
    vague prompt and s < 1);
  * the scripted agents (``userville/scripted.py``): ``questions`` (English, Italian) per question target
    (every optional attribute, the hint and answer targets), ``lazy_target`` (the high-effort question a
    task-only agent learns: "which function is it?"), ``hint_target``, ``answer_targets`` and
    ``lists_answers`` (answers may list every candidate: a set-valued score rewards it).
- ``Ladder.effort[t - 1]`` is tier t's effort; ``max_tier`` = len(effort) <= ``protocol.MAX_COST``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from ppp_min.userville.catalog import Item, Schema
from ppp_min.userville.protocol import EFFORTS, MAX_COST, Fact

# Words of any "tell me more" question: they reach every tier-1 fact (the low-effort question, paper §4.3).
GENERIC = ("more", "detail", "details", "describe", "explain", "context", "else", "elaborate", "clarify",
           "information", "info")
# The proactivity bonus of the released code: +0.05 when the replies were low effort (paper §5.1).
LOW_EFFORT_BONUS = 0.05


def article(word: str) -> str:
    return "an" if word[0] in "aeio" else "a"  # "a url", "a unicode": no initial-u words take "an" here


@dataclass(frozen=True)
class Ladder:
    """A family's information tiers, least sensitive first (the released code's ``[Cost N]`` ladders)."""
    effort: tuple[str, ...]  # effort label of tier t = effort[t - 1] (paper §4.3: low | medium | high)
    nothing: int  # the tier that means "nothing / I don't know": never carries facts
    labels: tuple[str, ...]  # what tier t holds, as the LLM user's prompt says it (labels[t - 1])

    def __post_init__(self):
        if not 1 <= len(self.effort) <= MAX_COST or any(e not in EFFORTS for e in self.effort):
            raise ValueError(f"Ladder.effort must be 1..{MAX_COST} labels among {list(EFFORTS)}, got {self.effort}")
        if not 1 <= self.nothing <= len(self.effort):
            raise ValueError(f"Ladder.nothing must be a tier 1..{len(self.effort)}, got {self.nothing}")
        if len(self.labels) != len(self.effort):
            raise ValueError(f"Ladder.labels needs one label per tier ({len(self.effort)}), got {len(self.labels)}")

    @property
    def max_tier(self) -> int:
        return len(self.effort)

    def effort_of(self, tier: int) -> str:
        return self.effort[tier - 1]


class TaskFamily(ABC):
    """One task family (see the module docstring). Subclasses set the class attributes and the methods."""
    name: str  # the wire name (``UserTask.family``, ``--family``)
    schema: Schema  # the catalog skin; ``schema.family == name``
    ladder: Ladder
    details: dict[str, tuple[str, tuple[str, ...]]]  # optional attribute -> (tier-1 fact text, keywords)
    questions: dict[str, tuple[str, str]]  # question target -> (English, Italian), without the "?"
    lazy_target: str  # the lazy, high-effort question of a task-only agent
    hint_target: str = "generic"  # what a scripted "hint" question asks for
    answer_targets: tuple[str, ...] = ()  # questions asking for the answer itself (() = the lazy one)
    lists_answers: bool = False  # a scripted answer may list every candidate (set-valued scores)
    amateur_tiers: frozenset[int] | None = None  # tiers the amateur user holds; None = every tier

    @abstractmethod
    def prompt(self, values: dict[str, str], kept: tuple[str, ...]) -> str:
        """The request that states only the ``kept`` attributes of an item with these ``values``."""

    @abstractmethod
    def item_line(self, item: Item) -> str:
        """One search-result line: ``"KEY: ..."``, the key first, then the item's attributes."""

    @abstractmethod
    def answer_facts(self, target: Item) -> tuple[Fact, ...]:
        """The user's facts above tier 1 (the hint, the file, the answer, the gold document, ...)."""

    @abstractmethod
    def score(self, answer: str, gold: tuple[str, ...]) -> float:
        """Productivity s in [0, 1] of a final answer."""

    @abstractmethod
    def proactivity(self, levels: list[int], is_vague: bool) -> float:
        """The cost reward c of the episode's reply tiers (paper §5.1; the released code's values)."""

    def user_facts(self, target: Item, kept: tuple[str, ...], candidates: tuple[Item, ...]) -> tuple[Fact, ...]:
        """The user's tiered facts: one tier-1 fact per attribute the vague prompt dropped, then the rest."""
        facts = []
        for a in self.schema.optional:
            if a in kept:
                continue
            text, keywords = self.details[a]
            v = target.get(a)
            values = tuple(dict.fromkeys(c.get(a).lower() for c in candidates))
            facts.append(Fact(1, text.format(v=v, an=article(v)), keywords + GENERIC + values))
        return tuple(facts) + self.answer_facts(target)

    def check(self) -> None:
        """Raise ValueError (one line) when the class attributes do not fit together (``register`` calls it)."""
        where = f"task family {getattr(self, 'name', type(self).__name__)!r}"
        if not (isinstance(getattr(self, "name", None), str) and self.name.isidentifier()):
            raise ValueError(f"{where}: name must be an identifier")
        if self.schema.family != self.name:
            raise ValueError(f"{where}: schema.family is {self.schema.family!r}")
        if set(self.details) != set(self.schema.optional):
            raise ValueError(f"{where}: details must cover exactly the optional attributes {self.schema.optional}")
        targets = {*self.schema.optional, self.lazy_target, self.hint_target, *self.answer_targets} - {"generic"}
        if targets - set(self.questions):
            raise ValueError(f"{where}: no question for {sorted(targets - set(self.questions))}")
