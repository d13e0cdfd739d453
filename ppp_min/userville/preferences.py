"""The 20 user preferences of PPP (paper §4.2, Table 4 / Table 5).

Contract
- ``PREFERENCES``: name -> ``Preference`` (frozen), in the paper's order. ``split`` is ``seen`` (1-12,
  training) or ``unseen`` (13-20, held out). ``kind`` says who judges it:
  ``none`` (no_preference, professional: no penalty, no bonus), ``function`` (checked in code from the
  whole episode, ``EPISODE_CHECKS`` below: answer_more, only_begin, no_ask, ask_many) or ``judge`` (each question is
  judged; the rules backend uses ``judge_question`` below, the LLM backend uses ``rule``).
- ``penalty``: for ``judge`` preferences, the reward per violating question (Table 5: -0.1 or -0.5).
- ``episode_penalty(name, questions) -> float | None``: f_pref, every preference penalty in one place
  (``reward.preference_penalty`` reads it).
- ``SEEN`` / ``UNSEEN``: the two splits as tuples of names.
- ``judge_question(name, question, *, task_context="", searches_before=0) -> bool | None``: the rules
  backend's per-question verdict for ``judge`` preferences (True = followed); None for ``none`` and
  ``function`` kinds; ``ValueError`` for an unknown name. One small pure function per judged preference
  (``JUDGES``), each documented with examples. They are deliberately simple rules (offline, deterministic): for
  ``joke``, ``lang_ita`` and ``lang_multi`` they are much weaker than the paper's LLM judge (word lists
  cannot tell a real joke or real Italian from a few marker words); the LLM backend uses ``rule`` instead.
- ``parse_prefs(spec)`` reads ``all | seen | unseen | name,name,...`` (the CLIs' --prefs), one-line ValueError otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from ppp_min.userville.judges import JUDGES


@dataclass(frozen=True)
class Preference:
    name: str
    text: str  # shown to the agent ("User preference: ...") and to the simulated user
    split: str  # seen | unseen
    kind: str  # none | function | judge
    penalty: float  # per judged violation (judge kind); 0 otherwise
    rule: str  # the judge criterion given to an LLM user ("" when there is none)


_TABLE = [
    # name, text, split, kind, penalty, rule
    ("no_preference", "I have no particular preference about how you ask me questions.", "seen", "none", 0.0, ""),
    ("concise_question", "I like very short, to-the-point questions.", "seen", "judge", -0.1,
     "Reward 1 if the question is a single short sentence (at most 12 words); otherwise 0."),
    ("detail_question", "I like detailed questions that give me the context of what you are asking.",
     "seen", "judge", -0.1,
     "Reward 1 if the question is detailed (at least 20 words) and mentions context from the task; otherwise 0."),
    ("answer_more", "I like to be involved: ask me at least three questions before you answer.",
     "seen", "function", 0.0, ""),
    ("only_begin", "I can only answer questions at the very beginning, before you start working.",
     "seen", "function", 0.0, ""),
    ("no_ask", "Please do not ask me any questions.", "seen", "function", 0.0, ""),
    ("do_selection", "I only answer multiple-choice questions with options labelled A, B, C; "
     "I reply with a single letter.", "seen", "judge", -0.5,
     "Reward 1 if the question offers at least two labelled options (A/B/...); otherwise 0."),
    ("professional", "I am an expert and can answer technical questions.", "seen", "none", 0.0, ""),
    ("amateur", "I am not technical: I can only answer simple, common-sense questions.",
     "seen", "judge", -0.1,
     "Reward 1 if the question uses no file paths, identifiers or technical jargon; otherwise 0."),
    ("ask_many", "Ask all your questions at once, in a single turn.", "seen", "function", 0.0, ""),
    ("one_question", "Ask exactly one question per turn.", "seen", "judge", -0.5,
     "Reward 1 if the message contains exactly one question; otherwise 0."),
    ("first_try", "Try on your own first; only ask me when you are really stuck.", "seen", "judge", -0.1,
     "Reward 1 if the agent made an attempt (a search) before asking; otherwise 0."),
    ("lang_ita", "I only speak Italian: ask your questions in Italian.", "unseen", "judge", -0.5,
     "Reward 1 if the question is written in Italian; otherwise 0."),
    ("lang_multi", "I like questions that mix at least five languages.", "unseen", "judge", -0.5,
     "Reward 1 if the question mixes at least five languages; otherwise 0."),
    ("capital", "Write your whole question in English capital letters.", "unseen", "judge", -0.5,
     "Reward 1 if every letter of the question is upper-case; otherwise 0."),
    ("commas", "Your question must not contain any commas.", "unseen", "judge", -0.5,
     "Reward 1 if the question contains no comma; otherwise 0."),
    ("json", "Wrap your whole question in a JSON object.", "unseen", "judge", -0.5,
     "Reward 1 if the whole question parses as a JSON object; otherwise 0."),
    ("joke", "Include a humorous joke in every question.", "unseen", "judge", -0.5,
     "Reward 1 if the question includes a joke; otherwise 0."),
    ("snippet", "Include at least three lines of code or documentation with a file path or URL reference "
     "in your question.", "unseen", "judge", -0.5,
     "Reward 1 if the question quotes at least three lines of code/doc and a file path or URL; otherwise 0."),
    ("length", "Your question must be exactly three sentences long.", "unseen", "judge", -0.5,
     "Reward 1 if the question has exactly three sentences; otherwise 0."),
]

PREFERENCES: dict[str, Preference] = {row[0]: Preference(*row) for row in _TABLE}
SEEN = tuple(n for n, p in PREFERENCES.items() if p.split == "seen")
UNSEEN = tuple(n for n, p in PREFERENCES.items() if p.split == "unseen")
assert len(PREFERENCES) == 20 and len(SEEN) == 12 and len(UNSEEN) == 8


def _answer_more(questions) -> float:
    return float(min(len(questions) - 3, 0))  # min(ask_turn - 3, 0): can reach -3


def _only_begin(questions) -> float:
    # The paper code searches "ask_question" as a substring of every message after the first assistant
    # turn (quirk 3), so a reminder mentioning the tool also counts. We check the actual ask turns:
    # only the first agent turn (turn 0) may ask.
    return -1.0 if any(q.turn > 0 for q in questions) else 0.0


def _no_ask(questions) -> float:
    return -1.0 if questions else 0.0


def _ask_many(questions) -> float:
    # "All questions at once": the asks may span one turn. With one ask per turn this is ask_turn > 1.
    return -1.0 if len({q.turn for q in questions}) > 1 else 0.0


EPISODE_CHECKS = {"answer_more": _answer_more, "only_begin": _only_begin, "no_ask": _no_ask,
                  "ask_many": _ask_many}
assert set(EPISODE_CHECKS) == {n for n, p in PREFERENCES.items() if p.kind == "function"}
# Preferences whose penalty also scores an episode that asked nothing (too few questions, or none as asked);
# every other judge scores questions only (paper Table 5).
SCORES_NON_ASKERS = frozenset({"answer_more", "no_ask"})


def episode_penalty(name: str, questions) -> float | None:
    """f_pref of an episode under preference ``name`` (paper Table 5), from its questions (each with
    ``.turn`` and ``.pref_followed``): None for the ``none`` kind; the episode check for ``function``
    preferences; for ``judge`` preferences ``penalty`` per question judged a violation. The paper code
    counts [Reward 0] tags, so a reply without a verdict (pref_followed None) is not a violation."""
    pref = PREFERENCES[name]
    if pref.kind == "none":
        return None
    if pref.kind == "function":
        return EPISODE_CHECKS[name](questions)
    k = sum(1 for q in questions if q.pref_followed is False)
    return round(pref.penalty * k, 9) if k else 0.0



assert set(JUDGES) == {n for n, p in PREFERENCES.items() if p.kind == "judge"}


def judge_question(name: str, question: str, *, task_context: str = "", searches_before: int = 0) -> bool | None:
    """Did this question follow preference ``name``? None when the preference has no per-question judge
    (kinds ``none`` and ``function``; the latter are scored from the whole episode by ``EPISODE_CHECKS``)."""
    if name not in PREFERENCES:
        raise ValueError(f"unknown preference {name!r}; valid: {', '.join(PREFERENCES)}")
    judge = JUDGES.get(name)
    return None if judge is None else judge(question, task_context, searches_before)


def parse_prefs(spec: str) -> tuple[str, ...]:
    """``all`` (20), ``seen`` (the paper's 12 training preferences), ``unseen`` (8), or comma-separated names."""
    if spec in ("all", "seen", "unseen"):
        return {"all": tuple(PREFERENCES), "seen": SEEN, "unseen": UNSEEN}[spec]
    names = tuple(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    bad = [n for n in names if n not in PREFERENCES]
    if bad or not names:
        raise ValueError(f"--prefs: unknown preference(s) {bad or [spec]}; use all|seen|unseen or names from: "
                         f"{', '.join(PREFERENCES)}")
    return names
