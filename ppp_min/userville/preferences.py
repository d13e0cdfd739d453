"""The 20 user preferences of PPP (paper Table 4 / Table 5; paper notes §3).

Contract
- ``PREFERENCES``: name -> ``Preference`` (frozen), in the paper's order. ``split`` is ``seen`` (1-12,
  training) or ``unseen`` (13-20, held out). ``kind`` says who judges it:
  ``none`` (no_preference, professional: no penalty, no bonus), ``function`` (checked in code from the
  episode by ``reward.py``: answer_more, only_begin, no_ask, ask_many) or ``judge`` (each question is
  judged; the rules backend uses ``judge_question`` below, the LLM backend uses ``rule``).
- ``penalty``: for ``judge`` preferences, the reward per violating question (Table 5: -0.1 or -0.5).
  For ``function`` preferences the penalty is computed in ``reward.py`` (see its docstring).
- ``SEEN`` / ``UNSEEN``: the two splits as tuples of names.
- ``judge_question(name, question, *, task_context="", searches_before=0) -> bool | None``: the rules
  backend's per-question verdict for ``judge`` preferences (True = followed); None for ``none`` and
  ``function`` kinds; ``ValueError`` for an unknown name. One small pure function per judged preference
  (``JUDGES``), each documented with examples. They are deliberately simple rules (DESIGN §4): for
  ``joke``, ``lang_ita`` and ``lang_multi`` they are much weaker than the paper's LLM judge (word lists
  cannot tell a real joke or real Italian from a few marker words); the LLM backend uses ``rule`` instead.
- ``preference_names()``: all 20 names in the paper's order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


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


def preference_names() -> tuple[str, ...]:
    return tuple(PREFERENCES)


# ---------------------------------------------------------------- rule judges (rules backend, DESIGN §4)

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?|\d+")
# "Stop" words that carry no task context (used by the detail judge).
_STOP = frozenset("""a an the and or but if of to in on at by for with from as is are was were be been it its
this that these those i you we they he she me my your our their what which who whom when where why how do does
did can could would should will shall may might must have has had not no yes so than then there here about
into over under please tell give more any some all just also very find""".split())


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _sentences(text: str) -> list[str]:
    """Sentences = pieces ending in . ! ? (or the end) that contain a letter or digit."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return [p for p in parts if re.search(r"\w", p)]


def judge_concise(question: str) -> bool:
    """At most 12 words and one sentence.

    >>> judge_concise("Which module is it in?")
    True
    >>> judge_concise("Which module is it in? And which input triggers the crash you saw?")
    False
    """
    return len(_words(question)) <= 12 and len(_sentences(question)) == 1


def judge_detail(question: str, task_context: str) -> bool:
    """At least 20 words and at least one content word shared with the task (the precise prompt).

    >>> ctx = "Find the function to fix: a crash in the auth module with an empty token."
    >>> judge_detail("I am looking for the function behind the crash you reported; could you tell me "
    ...              "which input triggers it, for example an empty or a null value?", ctx)
    True
    >>> judge_detail("Which input triggers it?", ctx)
    False
    """
    words = _words(question)
    content = {w.lower() for w in _words(task_context)} - _STOP
    return len(words) >= 20 and any(w.lower() in content for w in words)


_OPTION = re.compile(r"(?:^|[\s(\[])([A-H])(?:\)|\.|:)(?=\s|$)|\(([A-H])\)")


def options_of(question: str) -> list[tuple[str, str]]:
    """Labelled options of a multiple-choice question: [(letter, option text), ...] in order.
    Labels: ``(A) x``, ``A) x``, ``A. x`` or ``A: x``. Used by the do_selection judge and the simulator."""
    marks = []
    for m in _OPTION.finditer(question):
        letter = m.group(1) or m.group(2)
        marks.append((letter, m.start(), m.end()))
    out, seen = [], set()
    for i, (letter, _, end) in enumerate(marks):
        stop = marks[i + 1][1] if i + 1 < len(marks) else len(question)
        if letter in seen:
            continue
        seen.add(letter)
        out.append((letter, question[end:stop].strip(" ,;?\n\t").strip()))
    return out


def question_stem(question: str) -> str:
    """The text before the first option label ("Which part? A) x B) y" -> "Which part?")."""
    m = _OPTION.search(question)
    return question[:m.start()].strip() if m else question


def judge_selection(question: str) -> bool:
    """At least two distinct labelled options (A/B/...).

    >>> judge_selection("Which part is it? A) auth B) db C) net")
    True
    >>> judge_selection("Is it (A) the auth module or (B) the db module?")
    True
    >>> judge_selection("Is it the auth module or the db module?")
    False
    """
    return len(options_of(question)) >= 2


# Jargon a non-technical user would not follow (amateur). File paths and identifiers are caught by shape.
_JARGON = frozenset("""function functions method methods class module modules package file files path paths
directory folder repository repo commit traceback stack exception exceptions api endpoint regex parameter
parameters argument arguments variable variables identifier runtime compile compiler syntax import imports
def return parser serializer thread threads mutex boolean int str dict json yaml sql query schema callback
stacktrace debug debugger breakpoint refactor pointer""".split())
_CAMEL = re.compile(r"\b[a-z]+[A-Z][A-Za-z]*\b")


def judge_amateur(question: str) -> bool:
    """No file paths or identifiers ('/', '.py', '_' inside a word, '()', camelCase) and no jargon words.

    >>> judge_amateur("Does it happen when the token is empty?")
    True
    >>> judge_amateur("Which function in auth/token.py fails?")
    False
    >>> judge_amateur("Is parse_token the culprit?")
    False
    """
    if "/" in question or ".py" in question or "()" in question or _CAMEL.search(question):
        return False
    if re.search(r"[A-Za-z0-9]_[A-Za-z0-9]", question):
        return False
    return not any(w.lower() in _JARGON for w in _words(question))


def judge_one_question(question: str) -> bool:
    """Exactly one question mark.

    >>> judge_one_question("Which part is it in?")
    True
    >>> judge_one_question("Which part? Which input?")
    False
    """
    return question.count("?") + question.count("？") == 1


def judge_first_try(searches_before: int) -> bool:
    """The agent searched at least once before asking.

    >>> judge_first_try(1), judge_first_try(0)
    (True, False)
    """
    return searches_before >= 1


# Language marker words. WEAKER THAN AN LLM JUDGE: a handful of function words per language stands in
# for language identification; a question stuffed with marker words passes, real text may be missed.
_ITA = frozenset("""il lo la gli le di del della dello dei degli delle che non per una uno quale quali come
dove quando perché perche cosa sono è hai ho nel nella nei con questo questa anche ma più mi ti puoi può
chi qual sei era della sulla dal dalla funzione modulo città premio anno nato nata vinto""".split())
_ENG = frozenset("""the is are what which when where how does did you of and to it this that with was
were who can could would please""".split())
_LANGS = {
    "english": frozenset("the which what is you please where does".split()),
    "italian": frozenset("il della che quale perché grazie ciao sono questo".split()),
    "french": frozenset("le les est quel quelle vous merci avec pourquoi oui bonjour".split()),
    "spanish": frozenset("el los qué cuál dónde gracias hola usted también".split()),
    "german": frozenset("der das ist und nicht welche bitte danke wie".split()),
    "portuguese": frozenset("você não obrigado olá onde qual também".split()),
    "dutch": frozenset("het niet welke bedankt alstublieft een waar".split()),
}
_SCRIPTS = {"chinese": r"[\u4e00-\u9fff]", "japanese": r"[\u3040-\u30ff]", "korean": r"[\uac00-\ud7af]",
            "russian": r"[\u0400-\u04ff]", "greek": r"[\u0370-\u03ff]", "arabic": r"[\u0600-\u06ff]"}


def judge_italian(question: str) -> bool:
    """Italian by function words: at least two Italian marker words and at most a third as many English ones.

    >>> judge_italian("In quale modulo si trova il problema?")
    True
    >>> judge_italian("Which module is the problem in?")
    False
    """
    words = [w.lower() for w in _words(question)]
    ita = sum(w in _ITA for w in words)
    eng = sum(w in _ENG and w not in _ITA for w in words)
    return ita >= 2 and 3 * eng <= ita


def languages_in(question: str) -> set[str]:
    """Languages detected by marker words (Latin scripts) or by script (CJK, Cyrillic, Greek, Arabic)."""
    words = {w.lower() for w in _words(question)}
    found = {lang for lang, markers in _LANGS.items() if words & markers}
    found |= {lang for lang, pat in _SCRIPTS.items() if re.search(pat, question)}
    return found


def judge_multilingual(question: str) -> bool:
    """At least five languages detected (see ``languages_in``; weaker than an LLM judge).

    >>> judge_multilingual("Hola! Which module, bitte? Quel fichier, per favore grazie? 哪个函数?")
    True
    >>> judge_multilingual("Which module is it, bitte?")
    False
    """
    return len(languages_in(question)) >= 5


def judge_capital(question: str) -> bool:
    """At least one letter, and every letter upper-case.

    >>> judge_capital("WHICH MODULE IS IT IN?"), judge_capital("Which module?"), judge_capital("123?")
    (True, False, False)
    """
    letters = [c for c in question if c.isalpha()]
    return bool(letters) and all(c.isupper() for c in letters)


def judge_commas(question: str) -> bool:
    """No comma (ASCII or full-width).

    >>> judge_commas("Which module is it in?"), judge_commas("Which module, and which input?")
    (True, False)
    """
    return "," not in question and "，" not in question


def judge_json(question: str) -> bool:
    """The whole question parses as a JSON object.

    >>> judge_json('{"question": "Which module is it in?"}'), judge_json("Which module?")
    (True, False)
    """
    try:
        return isinstance(json.loads(question), dict)
    except (ValueError, RecursionError):
        return False


# Humour markers. WEAKER THAN AN LLM JUDGE: it detects that a joke is announced, not that it is funny.
_JOKE_WORDS = frozenset("joke jokes joking haha hahaha hehe lol pun puns funny laugh humor humour kidding".split())
_JOKE_PHRASES = ("why did", "knock knock", "walks into a bar", "😄", "😂", "🤣", "😆", "😅", "😜")


def judge_joke(question: str) -> bool:
    """A humour marker word or phrase.

    >>> judge_joke("Why did the token cross the road? Haha. Which module is it in?")
    True
    >>> judge_joke("Which module is it in?")
    False
    """
    low = question.lower()
    return any(w.lower() in _JOKE_WORDS for w in _words(question)) or any(p in low for p in _JOKE_PHRASES)


_REF = re.compile(r"https?://\S+|\b[\w.-]+/[\w./-]*\w\.\w+\b|\b\w+\.(?:py|md|rst|txt|js|ts|json|yaml|toml|cfg|c|h)\b")


def judge_snippet(question: str) -> bool:
    """At least three lines of code/doc and a file path or URL. Code/doc lines are the non-empty lines
    inside ``` fences, or, without fences, the indented or '>'-quoted lines.

    >>> judge_snippet("See auth/token.py:\\n    def parse(t):\\n        if not t:\\n            raise E\\nWhich input?")
    True
    >>> judge_snippet("Which input triggers the bug in auth/token.py?")
    False
    """
    lines = question.splitlines()
    if "```" in question:
        inside, code = False, 0
        for line in lines:
            if line.strip().startswith("```"):
                inside = not inside
            elif inside and line.strip():
                code += 1
    else:
        code = sum(1 for ln in lines if ln.strip() and (ln[:1] in " \t" or ln.lstrip().startswith(">")))
    return code >= 3 and _REF.search(question) is not None


def judge_length(question: str) -> bool:
    """Exactly three sentences.

    >>> judge_length("I saw your report. I need one detail. Which input triggers it?")
    True
    >>> judge_length("Which input triggers it?")
    False
    """
    return len(_sentences(question)) == 3


# name -> judge(question, task_context, searches_before) -> bool
JUDGES = {
    "concise_question": lambda q, c, s: judge_concise(q), "detail_question": lambda q, c, s: judge_detail(q, c),
    "do_selection": lambda q, c, s: judge_selection(q), "amateur": lambda q, c, s: judge_amateur(q),
    "one_question": lambda q, c, s: judge_one_question(q), "first_try": lambda q, c, s: judge_first_try(s),
    "lang_ita": lambda q, c, s: judge_italian(q), "lang_multi": lambda q, c, s: judge_multilingual(q),
    "capital": lambda q, c, s: judge_capital(q), "commas": lambda q, c, s: judge_commas(q),
    "json": lambda q, c, s: judge_json(q), "joke": lambda q, c, s: judge_joke(q),
    "snippet": lambda q, c, s: judge_snippet(q), "length": lambda q, c, s: judge_length(q),
}
assert set(JUDGES) == {n for n, p in PREFERENCES.items() if p.kind == "judge"}


def judge_question(name: str, question: str, *, task_context: str = "", searches_before: int = 0) -> bool | None:
    """Did this question follow preference ``name``? None when the preference has no per-question judge
    (kinds ``none`` and ``function``; the latter are scored from the whole episode in ``reward.py``)."""
    if name not in PREFERENCES:
        raise ValueError(f"unknown preference {name!r}; valid: {', '.join(PREFERENCES)}")
    judge = JUDGES.get(name)
    return None if judge is None else judge(question, task_context, searches_before)
