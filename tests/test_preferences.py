"""Rule judges of the 14 judged preferences, on passing and failing questions; the table's invariants."""

import doctest

import pytest

from ppp_min.userville import preferences
from ppp_min.userville.judges import JUDGES, languages_in, options_of, question_stem
from ppp_min.userville.preferences import PREFERENCES, SEEN, UNSEEN, judge_question

CTX = "Find the function to fix: a crash in the auth module with an empty token."
LONG_OK = ("I searched the code for the crash you described and I found a few places that handle the token, "
           "so could you tell me which input triggers it?")
SNIPPET = "In auth/token.py I see:\n```\ndef parse(t):\n    if not t:\n        raise ValueError\n```\nIs this it?"

CASES = {  # name -> (questions that follow it, questions that violate it)
    "concise_question": (["Which part is it in?", "When does it crash?"],
                         [LONG_OK, "Which part is it in? Which input triggers it?"]),
    "detail_question": ([LONG_OK],
                        ["Which part is it in?",
                         "I would really like to know a little more about what you are seeing on your side so "
                         "that I can help you better with this, please?"]),  # 20+ words, no task word
    "do_selection": (["Which part? A) auth B) db", "Is it (A) empty or (B) null?", "Pick one: A. x  B. y"],
                     ["Which part is it in?", "Is it auth or db?", "Option A) auth only?"]),
    "amateur": (["Does it happen when the token is empty?", "Which part of the app is it in?"],
                ["Which function fails?", "Is it in auth/token.py?", "Is parse_token broken?",
                 "Does parseToken fail?", "Does parse() fail?", "Is it a traceback?"]),
    "one_question": (["Which part is it in?", "Tell me: which part is it in?"],
                     ["Which part? Which input?", "Please tell me which part."]),
    "lang_ita": (["In quale parte si trova il problema?", "Chi ha vinto il premio?"],
                 ["Which part is it in?", "Which part is it in il problema?"]),
    "lang_multi": (["Hola! Which part, bitte? Quel module, grazie? 哪个?",
                    "The part, s'il vous plaît merci, por favor gracias, bitte danke, grazie ciao?"],
                   ["Which part is it in, bitte?", "Hola, qué parte? Gracias."]),
    "capital": (["WHICH PART IS IT IN?", "IS IT AUTH/TOKEN.PY?"], ["Which part is it in?", "123?"]),
    "commas": (["Which part is it in?"], ["Which part, and which input?", "Which part，which input?"]),
    "json": (['{"question": "Which part is it in?"}', ' {"q": 1} '],
             ["Which part is it in?", '["Which part?"]', '{"q": ', "[" * 5000 + "]" * 5000]),
    "joke": (["Why did the token cross the road? Which part is it in?", "Haha, which part is it in?",
              "Which part is it in? 😂"], ["Which part is it in?", "Is the pundit on it?"]),
    "snippet": ([SNIPPET, "See https://x.org/doc:\n> line one\n> line two\n> line three\nWhich part?"],
                ["Which input triggers it in auth/token.py?",
                 "```\ndef parse(t):\n    if not t:\n        raise ValueError\n```\nIs this it?"]),
    "length": (["I saw your report. I need one detail. Which input triggers it?",
                "Thanks! I looked at auth/token.py already. Which input triggers it?"],
               ["Which input triggers it?", "One. Two. Three. Four?"]),
}


def test_every_judged_preference_has_cases_and_the_table_is_intact():
    judged = {n for n, p in PREFERENCES.items() if p.kind == "judge"}
    assert judged == set(JUDGES) == set(CASES) | {"first_try"} and len(judged) == 14
    assert len(PREFERENCES) == 20 and len(SEEN) == 12 and len(UNSEEN) == 8 and set(SEEN) | set(UNSEEN) == set(PREFERENCES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_judge_passing_and_failing(name):
    good, bad = CASES[name]
    for q in good:
        assert judge_question(name, q, task_context=CTX) is True, q
    for q in bad:
        assert judge_question(name, q, task_context=CTX) is False, q


def test_first_try_counts_searches_before_the_question():
    assert judge_question("first_try", "Which part?", searches_before=1) is True
    assert judge_question("first_try", "Which part?", searches_before=0) is False


def test_detail_needs_task_context():
    assert judge_question("detail_question", LONG_OK, task_context="") is False


def test_unjudged_kinds_return_none_and_unknown_names_raise():
    for n, p in PREFERENCES.items():
        if p.kind in ("none", "function"):
            assert judge_question(n, "Which part?") is None
    with pytest.raises(ValueError, match="unknown preference 'x'"):
        judge_question("x", "Which part?")


def test_options_and_stem():
    q = "Which part is it in? A) auth module B) db C) the net"
    assert options_of(q) == [("A", "auth module"), ("B", "db"), ("C", "the net")]
    assert question_stem(q) == "Which part is it in?"
    assert options_of("Is it (A) empty or (B) null?") == [("A", "empty or"), ("B", "null")]
    assert options_of("No options here.") == [] and question_stem("No options.") == "No options."


def test_languages_detected_by_script_and_words():
    assert languages_in("Привет, 你好, こんにちは, the end") == {"russian", "chinese", "japanese", "english"}


def test_docstring_examples_hold():
    assert doctest.testmod(preferences).failed == 0


def test_episode_penalty_every_kind_hand_computed():
    """f_pref of every kind from one place: none -> None; judge -> penalty per violation (a missing verdict
    is not one); function -> the episode checks."""
    from types import SimpleNamespace

    from ppp_min.userville.preferences import EPISODE_CHECKS, episode_penalty
    qs = lambda *specs: [SimpleNamespace(turn=t, pref_followed=f) for t, f in specs]  # noqa: E731
    assert episode_penalty("no_preference", qs((0, None))) is None
    assert episode_penalty("concise_question", qs((0, False), (1, True), (2, False))) == -0.2
    assert episode_penalty("do_selection", qs((0, None), (1, False))) == -0.5
    assert episode_penalty("one_question", qs((0, True))) == 0.0
    assert episode_penalty("answer_more", qs((0, None))) == -2.0 and episode_penalty("answer_more", []) == -3.0
    assert episode_penalty("only_begin", qs((0, None))) == 0.0 and episode_penalty("only_begin", qs((0, None), (2, None))) == -1.0
    assert episode_penalty("no_ask", []) == 0.0 and episode_penalty("no_ask", qs((1, None))) == -1.0
    assert episode_penalty("ask_many", qs((0, None))) == 0.0 and episode_penalty("ask_many", qs((0, None), (1, None))) == -1.0
    assert set(EPISODE_CHECKS) == {n for n, p in PREFERENCES.items() if p.kind == "function"}
