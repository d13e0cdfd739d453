"""Rule judges of the 14 LLM-judged preferences (paper Table 4): small pure functions of the question text.

Contract: each ``judge_*`` returns True when the question follows the preference; ``JUDGES`` maps a
preference name to ``judge(question, task_context, searches_before) -> bool``. These stand in for the
paper's LLM judge in the rules backend; where a rule is weaker than an LLM judge (jokes, languages) the
function says so. ``preferences.judge_question`` is the entry point.
"""

from __future__ import annotations

import json
import re

# ---------------------------------------------------------------- rule judges (rules backend)

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
