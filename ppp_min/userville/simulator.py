"""The rule-based simulated user (docs/design.md#the-simulated-user): the paper's LLM user, as rules.

Contract
- ``RulesUser().reply(req: ReplyRequest) -> Reply``: deterministic for a request, pure, thread-safe (no
  state is kept between calls; the request carries everything).
- Which information a question needs: the LOWEST tier whose facts the question is about, a fact being
  "about" the question when one of its keywords occurs in it (a word, or a phrase of words). Tier-1 facts
  are answered selectively (only the matched ones); a higher tier answers with all of its facts. No match:
  the family's "nothing" tier (``Ladder.nothing``), an "I don't know"-style reply, medium effort.
  Lazy questions ("which function", "which file", "what is the name", "who is it") hit funcloc tiers 5/4 or
  research tier 3 because those facts carry these keywords (the family files build them).
- Labels: ``effort = ladder.effort_of(tier)``, ``cost = tier`` (the family's ladder, the paper code's;
  ``families/registry.py: FAMILIES``); ``pref_followed`` =
  ``judge_question`` for judge preferences (task context = the precise prompt), None otherwise.
- Question cap (as in the paper's code): when 4 questions were already answered (``len(history) >= 4``) the
  reply is a refusal labelled medium at the nothing tier (the paper's refusal carried no tag; we label it
  medium: docs/design.md#left-out). The question is still judged for the preference.
- Preferences that change behaviour:
  * ``do_selection``: only multiple-choice questions are answered (the tier is read from the stem before
    the options when it matches a fact, else from the whole question), with the single letter of the option
    whose text matches the fact ("None of them." when none does, at that tier's cost); a question without
    options gets "I don't know" (nothing tier, medium, pref_followed False).
  * ``amateur``: technical questions (the amateur judge fails) get "I don't know" (nothing tier, medium,
    pref_followed False). The amateur holds only the family's ``amateur_tiers`` (funcloc: not tiers 4-5,
    the file path and function name, which the paper's simulator blanks; it keeps the hint, tier 2, the
    area in everyday words; research: every tier); a question needing another gets "I don't know".
  * ``json``: the question is read out of the JSON object (its string values) before keyword matching.
- Italian questions (``lang_ita``) are matched through a small Italian->English gloss; other languages
  only match through the English keywords they contain (a rules user is weaker than an LLM user here).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re

from ppp_min.userville.families.registry import FAMILIES
from ppp_min.userville.judges import judge_amateur, options_of, question_stem
from ppp_min.userville.preferences import PREFERENCES, judge_question
from ppp_min.userville.protocol import Fact, Reply, ReplyRequest

MAX_ANSWERED = 4  # as in the paper's code: from the 5th question on, a fixed refusal

_DONT_KNOW = ("I don't know.", "Sorry, I don't know that.", "No idea, sorry.", "Hmm, I really don't know.")
_NOT_TECHNICAL = ("Sorry, I don't know, I'm not technical.", "No idea, that's too technical for me.")
_NO_OPTIONS = ("I don't know. Give me options A, B, C.", "I don't know; please ask with lettered options.")
_CAPPED = "I've answered enough questions already; please go on without me."
# Templates around the fact text(s); {f} is the joined fact text. The openers carry no information (a
# reader of the reply, skills.reply_words, drops them: "Let me check." names no catalog verb "check").
REPLY_OPENERS = ("Sure.", "Let me check.", "Good question.")
_TEMPLATES = ("{f}",) + tuple(f"{o} {{f}}" for o in REPLY_OPENERS)

# Italian -> English keyword gloss, so that lang_ita questions can be understood (weaker than an LLM user).
_GLOSS = {
    "modulo": "module", "parte": "part", "funzione": "function", "nome": "name", "quando": "when",
    "dove": "where", "anno": "year", "città": "city", "premio": "prize", "campo": "field", "chi": "who",
    "percorso": "path", "dettagli": "details", "dettaglio": "detail", "più": "more", "dati": "data",
    "ingresso": "input", "suggerimento": "hint", "indizio": "clue", "tipo": "type", "oggetto": "object",
    "nato": "born", "nata": "born", "vinto": "won", "settore": "field", "documento": "document",
    "pagina": "page", "valore": "value", "causa": "cause", "succede": "happens", "cartella": "folder",
    "identificatore": "identifier", "metodo": "method", "risposta": "answer", "persona": "person",
}
_TOKEN = re.compile(r"[^\W_]+(?:_[^\W_]+)*")


def _norm_words(text: str) -> list[str]:
    words = [w.lower() for w in _TOKEN.findall(text)]
    return [_GLOSS.get(w, w) for w in words]


@functools.lru_cache(maxsize=65536)
def _keyword_words(keyword: str) -> tuple[str, ...]:
    return tuple(_norm_words(keyword))


def _mentions(words: list[str], keyword: str) -> bool:
    """Keyword = one word or a phrase of words; matched on whole words."""
    kw = _keyword_words(keyword)
    if not kw:
        return False
    if len(kw) == 1:
        return kw[0] in words
    n = len(kw)
    return any(tuple(words[i:i + n]) == kw for i in range(len(words) - n + 1))


def question_text(question: str, preference: str) -> str:
    """The text to match: for the json preference, the string values of the JSON object."""
    if preference != "json":
        return question
    try:
        obj = json.loads(question)
    except (ValueError, RecursionError):
        return question
    out: list[str] = []

    def walk(x, depth=0):
        if depth > 20:
            return
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v, depth + 1)
        elif isinstance(x, list):
            for v in x:
                walk(v, depth + 1)
    walk(obj)
    return " ".join(out) if out else question


def needed_tier(facts: tuple[Fact, ...], question: str, family: str, held=None) -> tuple[int, tuple[Fact, ...]]:
    """(tier, matched facts of that tier): the lowest tier with a fact whose keywords the question uses.
    ``held``: the tiers this user holds (None = all). No match: (the family's nothing tier, ())."""
    nothing = FAMILIES[family].ladder.nothing
    words = _norm_words(question)
    matched: dict[int, list[Fact]] = {}
    for f in facts:
        if any(_mentions(words, k) for k in f.keywords):
            matched.setdefault(f.tier, []).append(f)
    if not matched:
        return nothing, ()
    tier = min(matched)
    if held is not None and tier not in held:
        return nothing, ()
    # Tier 1 answers only what was asked; a higher tier is one piece of information (all its facts).
    chosen = matched[tier] if tier == 1 else [f for f in facts if f.tier == tier]
    return tier, tuple(chosen)


def _pick(options: tuple[str, ...], seed: int) -> str:
    return options[seed % len(options)]


# Words of the fact templates (tasks.py) that say nothing specific; an option must share something else.
_TEMPLATE_WORDS = frozenset("""a an the it is in of or by to with happens happen triggered input module file
function they were born won prize maybe my hunch has do here page this that be and on""".split())


def _match_option(options: list[tuple[str, str]], facts: tuple[Fact, ...]) -> str | None:
    """The letter whose option text best matches the facts' text: the option contained in the fact text
    first, then the most shared specific (non-template) words; None when no option shares anything."""
    fact_text = " ".join(f.text for f in facts).lower()
    fact_words = set(_norm_words(fact_text)) - _TEMPLATE_WORDS
    best, best_score = None, (0, 0)
    for letter, text in options:
        shared = len(set(_norm_words(text)) & fact_words)
        opt = text.strip().lower().rstrip(".")
        contained = int(bool(shared) and re.search(r"(?<!\w)" + re.escape(opt) + r"(?!\w)", fact_text) is not None)
        if (contained, shared) > best_score:
            best, best_score = letter, (contained, shared)
    return best


class RulesUser:
    """The deterministic rules backend of the simulated user (see the module docstring)."""

    name = "rules"

    def reply(self, req: ReplyRequest) -> Reply:
        task, pref = req.task, req.preference
        family = task.family
        ladder = FAMILIES[family].ladder
        nothing = ladder.nothing
        if pref not in PREFERENCES:
            raise ValueError(f"unknown preference {pref!r}; valid: {', '.join(PREFERENCES)}")
        # Template choice: a hash of the whole request, so equal requests get equal replies (no RNG state).
        seed = int.from_bytes(hashlib.sha256(
            json.dumps(req.to_json(), sort_keys=True).encode()).digest()[:8], "big")
        kind = PREFERENCES[pref].kind
        followed = (judge_question(pref, req.question, task_context=task.precise_prompt,
                                   searches_before=req.searches_before) if kind == "judge" else None)

        def nothing_reply(text: str) -> Reply:
            return Reply(text, ladder.effort_of(nothing), nothing, followed)

        if len(req.history) >= MAX_ANSWERED:
            return nothing_reply(_CAPPED)
        text = question_text(req.question, pref)
        if pref == "amateur" and not judge_amateur(text):
            return nothing_reply(_pick(_NOT_TECHNICAL, seed))
        if pref == "do_selection" and not followed:
            return nothing_reply(_pick(_NO_OPTIONS, seed))

        held = FAMILIES[family].amateur_tiers if pref == "amateur" else None  # funcloc: not tiers 4-5
        tier, facts = needed_tier(task.facts, text, family, held)
        if pref == "do_selection":  # what is asked is in the stem; the options only name candidates
            stem_tier, stem_facts = needed_tier(task.facts, question_stem(text), family, held)
            if stem_facts:
                tier, facts = stem_tier, stem_facts
        if not facts:
            return nothing_reply(_pick(_DONT_KNOW, seed))
        if pref == "do_selection":
            letter = _match_option(options_of(text), facts)
            return Reply(letter if letter else "None of them.", ladder.effort_of(tier), tier, followed)
        joined = " ".join(f.text for f in facts)
        return Reply(_pick(_TEMPLATES, seed).format(f=joined), ladder.effort_of(tier), tier, followed)
