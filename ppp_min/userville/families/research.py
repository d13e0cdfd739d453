"""research: BrowseComp-Plus in miniature (paper §4.1, §6.1): find the person behind a description.

Contract (the ``TaskFamily`` interface, ``families/base.py``)
- Items are fictional people with a document; attributes field (the intent), city, year and award. Names
  are split-partitioned (``catalog.stable_hash_split``).
- Facts (the paper code's search ladder): tier 1 one fact per criterion the vague prompt dropped; 2 nothing
  (a generic reply, "I don't know"); 3 the gold document snapshot, reached by lazy questions ("who is it?",
  "what is the name?").
- ``score`` = exact match after normalisation (the released code's BrowseComp-Plus accuracy).
- The amateur user holds every tier.
"""

from __future__ import annotations

import re

from ppp_min.userville.catalog import Item, Schema, stable_hash_split
from ppp_min.userville.families.base import LOW_EFFORT_BONUS, Ladder, TaskFamily, article
from ppp_min.userville.protocol import Fact

FIELDS = ("physics", "botany", "poetry", "chess", "music", "painting", "geology", "surgery", "architecture",
          "linguistics", "astronomy", "sculpture")
CITIES = ("Lyon", "Oslo", "Cairo", "Lima", "Pune", "Kyoto", "Perth", "Quito", "Riga", "Tunis", "Hanoi", "Porto")
YEARS = tuple(str(y) for y in range(1920, 2000, 4))
AWARDS = ("Orvel", "Kesta", "Brunn", "Talio", "Verne", "Mirel", "Sando", "Calix")
FIRST = ("Mara", "Ilya", "Tomas", "Elin", "Rafa", "Noor", "Kaito", "Lena", "Oren", "Sina", "Yusuf", "Ada",
         "Bruno", "Dagny", "Emil", "Femi")
LAST = tuple(a + b for a in ("Vel", "Dor", "Kan", "Mir", "Sol", "Tak", "Ber", "Lun")
             for b in ("ko", "ska", "ven", "ri", "mo", "dal", "ten", "ssa"))

# Keywords per fact: the words a question about it would use.
DETAILS = {
    "city": ("They were born in {v}.",
             ("city", "where", "place", "town", "born", "birthplace", "from", "country", "hometown")),
    "year": ("They were born in {v}.",
             ("year", "when", "born", "date", "decade", "age", "old", "birth", "era")),
    "award": ("They won the {v} prize.",
              ("award", "prize", "won", "win", "honor", "honour", "medal", "recognition", "awarded")),
}
DOC_KEYWORDS = ("who", "name", "named", "called", "answer", "person", "identity", "document", "page",
                "source", "snapshot", "article", "link")
# The released code's per-question penalty by tier on a vague prompt (paper §5.1).
VAGUE_PENALTY = {1: 0.0, 2: -0.05, 3: -0.9}


def _person_key(rng, v, split, used):
    for _ in range(20):
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        if stable_hash_split(name) == split and name not in used:
            return name
    return None


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


class Research(TaskFamily):
    name = "research"
    schema = Schema("research", "field", ("city", "year", "award"),
                    (("field", FIELDS), ("city", CITIES), ("year", YEARS), ("award", AWARDS)),
                    (("field", 3), ("city", 4), ("year", 4), ("award", 4)), _person_key,
                    lambda k, v: f"{k} is a {v['field']} expert born in {v['city']} in {v['year']}; "
                                 f"winner of the {v['award']} prize.")
    # Tier -> effort (paper §4.3, §5.1).
    ladder = Ladder(effort=("low", "medium", "high"), nothing=2,
                    labels=("the criteria of the full question", "nothing: a generic reply or \"I don't know\"",
                            "the gold document snapshot"))
    details = DETAILS
    questions = {"city": ("Which city were they born in", "In quale città è nata la persona"),
                 "year": ("What year were they born", "In quale anno è nata la persona"),
                 "award": ("Which prize did they win", "Quale premio ha vinto la persona"),
                 "who": ("Who is it", "Chi è la persona")}
    lazy_target = "who"

    def prompt(self, values: dict[str, str], kept: tuple[str, ...]) -> str:
        v = values
        s = f"Find the person: {article(v['field'])} {v['field']} expert"
        if "city" in kept or "year" in kept:
            s += " born" + (f" in {v['city']}" if "city" in kept else "") + (f" in {v['year']}" if "year" in kept else "")
        if "award" in kept:
            s += f" who won the {v['award']} prize"
        return s + "."

    def item_line(self, item: Item) -> str:
        v = dict(item.attrs)
        return f"{item.key}: {v['field']}, born {v['city']} {v['year']}, {v['award']} prize"

    def answer_facts(self, target: Item) -> tuple[Fact, ...]:
        return (Fact(3, f"Here is the page: {target.doc}", DOC_KEYWORDS),)

    def score(self, answer: str, gold: tuple[str, ...]) -> float:
        return 1.0 if normalize(answer) in {normalize(g) for g in gold} else 0.0

    def proactivity(self, levels: list[int], is_vague: bool) -> float:
        """The released code's search cost reward (``UserReward.calculate_cost_reward``; paper §5.1)."""
        c = sum(VAGUE_PENALTY[lv] for lv in levels)
        if not is_vague:
            c += -0.1 * sum(levels)  # precise adds -0.1*level per question
        elif any(lv == 1 for lv in levels):
            c += LOW_EFFORT_BONUS  # "any" level-1 reply (not "all", unlike funcloc)
        return c
