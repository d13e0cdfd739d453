"""The warm start's demonstrations: skills drawn independently of the preference and of vagueness, with an
optional share of questions in the stated preference's style (``--demo-style-match``)."""

import random

import pytest

from ppp_min.userville import scripted
from ppp_min.userville import tasks as tasklib
from ppp_min.userville.agent_env import EpisodeState, LocalUser, play
from ppp_min.userville.preferences import PREFERENCES

TASKS = tasklib.make_tasks("funcloc", "train", 6, 0) + tasklib.make_tasks("research", "train", 6, 0)
STYLED = tuple(scripted.ORACLE_STYLE)  # judged preferences that have a compliant question style


def _questions(style_match, prefs, n=240, seed=0):
    rng = random.Random(seed)
    states = [EpisodeState(rng.choice(TASKS), rng.choice(prefs), True) for _ in range(n)]
    play(scripted.ScriptedAgent("skills", seed, style_match), states, LocalUser(), 6)
    return [q for st in states for q in st.stats().questions]


def test_style_match_zero_is_the_plain_skills_agent():
    a = scripted.demonstrations(TASKS, tuple(PREFERENCES), 40, 3, LocalUser())
    b = scripted.demonstrations(TASKS, tuple(PREFERENCES), 40, 3, LocalUser(), style_match=0.0)
    assert a == b


def test_style_match_writes_questions_in_the_stated_style():
    judged = [q for q in _questions(1.0, STYLED) if q.pref_followed is not None]
    untaught = [q for q in _questions(0.0, STYLED) if q.pref_followed is not None]
    follow = sum(q.pref_followed for q in judged) / len(judged)
    base = sum(q.pref_followed for q in untaught) / len(untaught)
    assert len(judged) > 50 and follow > 0.8 and base < 0.5, (follow, base)


def test_style_match_leaves_the_decision_to_ask_untaught():
    """Whether an episode asks does not depend on the style share (statistically: the draws differ)."""
    def asks(style_match):
        rng = random.Random(1)
        states = [EpisodeState(rng.choice(TASKS), rng.choice(STYLED), rng.random() < 0.5) for _ in range(200)]
        play(scripted.ScriptedAgent("skills", 1, style_match), states, LocalUser(), 6)
        return sum(bool(st.stats().questions) for st in states) / len(states)
    assert abs(asks(0.0) - asks(0.8)) < 0.1


def test_style_match_is_validated():
    with pytest.raises(ValueError, match="style_match"):
        scripted.ScriptedAgent("skills", 0, 1.5)
