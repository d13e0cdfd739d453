"""PPP reward: hand-computed values from the paper's released code (paper §5.1, eq. 1, Table 5)."""

import math

import pytest

from ppp_min.rl.reward import RewardWeights, ppp_reward, preference_penalty, proactivity, summarize
from ppp_min.userville.agent_env import EpisodeStats
from ppp_min.userville.agent_env import QuestionStat

FUNCLOC_EFFORT = {1: "low", 2: "high", 3: "medium", 4: "high", 5: "high"}
RESEARCH_EFFORT = {1: "low", 2: "medium", 3: "high"}


def q(turn, cost, family="funcloc", followed=True, parsed=True):
    eff = (FUNCLOC_EFFORT if family == "funcloc" else RESEARCH_EFFORT).get(cost, "high") if parsed else "medium"
    return QuestionStat(turn=turn, cost=cost, effort=eff, pref_followed=followed, parsed=parsed)


def ep(questions=(), family="funcloc", vague=True, pref="concise_question", score=0.6, n_turns=None,
       answered=True):
    questions = tuple(questions)
    n_turns = n_turns if n_turns is not None else (questions[-1].turn + 2 if questions else 1)
    return EpisodeStats(family=family, is_vague=vague, preference=pref, score=score, questions=questions,
                        n_turns=n_turns, answered=answered)


A = dict(abs=1e-12)


# --- worked examples of eq. 1 with the code's values (SWE, vague, F1 = 0.6) -----------------------------

def test_worked_examples():
    assert ppp_reward(ep([q(0, 1)])).total == pytest.approx(0.70, **A)  # 0.6 + 0.05 + 0.05
    assert ppp_reward(ep([q(0, 4)])).total == pytest.approx(0.35, **A)  # 0.6 - 0.3 + 0.05
    assert ppp_reward(ep([])).total == pytest.approx(0.50, **A)  # 0.6 - 0.1
    r = ppp_reward(ep([], score=0.0))  # max(-0.1, 0)
    assert r.total == 0.0 and r.value("proactivity") == pytest.approx(-0.1, **A) and not r.ask_ok


# --- proactivity per family, prompt kind and level -----------------------------------------------------

@pytest.mark.parametrize("level,expected", [(1, 0.05), (2, -0.1), (3, -0.2), (4, -0.3), (5, -0.4)])
def test_funcloc_vague_one_question(level, expected):
    assert proactivity(ep([q(0, level)])) == pytest.approx(expected, **A)


@pytest.mark.parametrize("level,expected", [(1, -0.2), (2, -0.4), (3, -0.6), (4, -0.8), (5, -1.0)])
def test_funcloc_precise_one_question(level, expected):
    assert proactivity(ep([q(0, level)], vague=False)) == pytest.approx(expected, **A)


def test_funcloc_sums_and_bonus_needs_all_level_1():
    assert proactivity(ep([q(0, 1), q(1, 1)])) == pytest.approx(0.05, **A)  # one bonus, not per question
    assert proactivity(ep([q(0, 1), q(1, 3)])) == pytest.approx(-0.2, **A)  # no bonus: one medium
    assert proactivity(ep([q(0, 2), q(1, 5)])) == pytest.approx(-0.5, **A)
    assert proactivity(ep([q(0, 1), q(1, 4)], vague=False)) == pytest.approx(-1.0, **A)


@pytest.mark.parametrize("level,expected", [(1, 0.05), (2, -0.05), (3, -0.9)])
def test_research_vague_one_question(level, expected):
    assert proactivity(ep([q(0, level, "research")], family="research")) == pytest.approx(expected, **A)


@pytest.mark.parametrize("level,expected", [(1, -0.1), (2, -0.25), (3, -1.2)])
def test_research_precise_one_question(level, expected):
    e = ep([q(0, level, "research")], family="research", vague=False)
    assert proactivity(e) == pytest.approx(expected, **A)


def test_research_bonus_is_any_level_1_and_ask_ok_at_zero():
    e = ep([q(0, 1, "research"), q(1, 2, "research")], family="research")
    r = ppp_reward(e)
    assert r.value("proactivity") == 0.0 and r.ask_ok  # +0.05 - 0.05 = 0 passes (ask_ok is c >= 0)
    e = ep([q(0, 1, "research"), q(1, 3, "research")], family="research")
    assert proactivity(e) == pytest.approx(-0.85, **A)


@pytest.mark.parametrize("family", ["funcloc", "research"])
def test_missing_question_penalty_only_vague_and_imperfect(family):
    assert proactivity(ep([], family=family, score=0.99)) == pytest.approx(-0.1, **A)
    assert proactivity(ep([], family=family, score=1.0)) == 0.0
    assert proactivity(ep([], family=family, vague=False, score=0.0)) == 0.0
    assert ppp_reward(ep([], family=family, score=1.0)).ask_ok


def test_unparsed_reply_costs_the_nothing_tier():
    # funcloc: tier 3 (-0.2), never the +0.1 of the paper code's quirk 1; research: tier 2 (-0.05).
    assert proactivity(ep([q(0, 1, parsed=False)])) == pytest.approx(-0.2, **A)
    e = ep([q(0, 1, "research", parsed=False)], family="research")
    assert proactivity(e) == pytest.approx(-0.05, **A)


# --- personalization: all 20 preferences, passing and failing ------------------------------------------

JUDGE = {"concise_question": -0.1, "detail_question": -0.1, "do_selection": -0.5, "amateur": -0.1,
         "one_question": -0.5, "first_try": -0.1, "lang_ita": -0.5, "lang_multi": -0.5, "capital": -0.5,
         "commas": -0.5, "json": -0.5, "joke": -0.5, "snippet": -0.5, "length": -0.5}


@pytest.mark.parametrize("pref,penalty", sorted(JUDGE.items()))
def test_judge_preferences(pref, penalty):
    ok = ppp_reward(ep([q(0, 1, followed=True)], pref=pref))
    assert ok.pref_penalty == 0.0 and ok.pref_ok is True and ok.value("personalization") == pytest.approx(0.05, **A)
    bad = ep([q(0, 1, followed=False), q(1, 1, followed=True), q(2, 1, followed=False)], pref=pref)
    r = ppp_reward(bad)
    assert r.pref_penalty == pytest.approx(2 * penalty, **A) and r.pref_ok is False
    assert r.value("personalization") == pytest.approx(2 * penalty, **A)  # no bonus when penalised
    # A reply without a verdict is not a violation (the code counts [Reward 0] tags).
    assert preference_penalty(ep([q(0, 1, followed=None)], pref=pref)) == 0.0


@pytest.mark.parametrize("pref", ["no_preference", "professional"])
def test_none_kind_preferences(pref):
    for questions in ([], [q(0, 1, followed=None)], [q(0, 4), q(1, 3)]):
        r = ppp_reward(ep(questions, pref=pref))
        assert r.pref_penalty is None and r.pref_ok is None and r.value("personalization") == 0.0  # never a bonus


def test_answer_more():
    assert ppp_reward(ep([], pref="answer_more")).pref_penalty == -3.0
    r = ppp_reward(ep([q(0, 1)], pref="answer_more"))
    assert r.pref_penalty == -2.0 and r.pref_ok is False
    r = ppp_reward(ep([q(0, 1), q(1, 1), q(2, 1)], pref="answer_more"))
    assert r.pref_penalty == 0.0 and r.pref_ok and r.value("personalization") == pytest.approx(0.05, **A)
    assert preference_penalty(ep([q(i, 1) for i in range(5)], pref="answer_more")) == 0.0


def test_answer_more_without_questions_is_a_defined_failure():
    r = ppp_reward(ep([], pref="answer_more"))
    assert r.pref_ok is False  # f_pref != 0 makes it defined (docs/design.md#metrics)


def test_only_begin_checks_ask_turns():
    r = ppp_reward(ep([q(0, 1)], pref="only_begin"))
    assert r.pref_penalty == 0.0 and r.pref_ok
    r = ppp_reward(ep([q(1, 1)], pref="only_begin"))  # asked after a first (e.g. search) turn
    assert r.pref_penalty == -1.0 and not r.pref_ok
    assert preference_penalty(ep([q(0, 1), q(1, 1)], pref="only_begin")) == -1.0


def test_no_ask():
    r = ppp_reward(ep([], pref="no_ask"))
    assert r.pref_penalty == 0.0 and r.pref_ok is None and r.value("personalization") == 0.0  # undefined: no ask
    r = ppp_reward(ep([q(0, 1)], pref="no_ask"))
    assert r.pref_penalty == -1.0 and r.pref_ok is False and r.value("personalization") == -1.0


def test_ask_many():
    r = ppp_reward(ep([q(3, 1)], pref="ask_many"))
    assert r.pref_penalty == 0.0 and r.pref_ok
    r = ppp_reward(ep([q(0, 1), q(1, 1)], pref="ask_many"))
    assert r.pref_penalty == -1.0 and r.pref_ok is False


def test_all_20_preferences_covered():
    from ppp_min.userville.preferences import PREFERENCES
    covered = set(JUDGE) | {"no_preference", "professional", "answer_more", "only_begin", "no_ask", "ask_many"}
    assert covered == set(PREFERENCES)
    for name, pen in JUDGE.items():
        assert PREFERENCES[name].penalty == pen  # Table 5


def test_bonus_only_when_vague_and_asked():
    assert ppp_reward(ep([q(0, 1)], vague=False)).value("personalization") == 0.0
    r = ppp_reward(ep([]))
    assert r.value("personalization") == 0.0 and r.pref_ok is None


# --- weights and clipping -------------------------------------------------------------------------------

def test_clip_switch():
    e = ep([q(0, 4), q(1, 5)], score=0.2)  # 0.2 - 0.7 + 0.05 = -0.45
    assert ppp_reward(e).total == 0.0
    assert ppp_reward(e, RewardWeights(clip=False)).total == pytest.approx(-0.45, **A)
    e = ep([q(0, 1)], score=1.0)  # 1 + 0.05 + 0.05
    assert ppp_reward(e).total == 1.0
    assert ppp_reward(e, RewardWeights(clip=False)).total == pytest.approx(1.1, **A)


def test_weight_ablations():
    e = ep([q(0, 4, followed=False)], score=0.8)  # s 0.8, c -0.3, p -0.1
    assert ppp_reward(e).total == pytest.approx(0.4, **A)
    assert ppp_reward(e, RewardWeights(proact=0)).total == pytest.approx(0.7, **A)
    assert ppp_reward(e, RewardWeights(pers=0)).total == pytest.approx(0.5, **A)
    assert ppp_reward(e, RewardWeights(proact=0, pers=0)).total == pytest.approx(0.8, **A)
    r = ppp_reward(e, RewardWeights(prod=0, clip=False))
    assert r.total == pytest.approx(-0.4, **A) and r.value("productivity") == 0.8  # components stay unweighted
    assert ppp_reward(e, RewardWeights(proact=2.0, clip=False)).total == pytest.approx(0.1, **A)


# --- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(family="web"), "family"), (dict(pref="polite"), "preference"), (dict(score=1.5), "score"),
    (dict(questions=[q(0, 6)]), "cost"), (dict(questions=[q(0, 4, "funcloc")], family="research"), "cost"),
    (dict(questions=[q(1, 1), q(1, 1)]), "strictly increase"), (dict(questions=[q(0, 1)], n_turns=0), "n_turns"),
])
def test_bad_episode_stats(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ep(**kwargs)


def test_bad_effort_and_weights():
    with pytest.raises(ValueError, match="effort"):
        ep([QuestionStat(0, 1, "tiny", True)])
    with pytest.raises(ValueError, match="pers"):
        RewardWeights(pers=-1)
    with pytest.raises(ValueError, match="prod"):
        RewardWeights(prod=math.nan)


# --- summarize ------------------------------------------------------------------------------------------

def test_summarize():
    eps = [
        ep([q(0, 1)], score=1.0),  # ask_ok, pref_ok True
        ep([q(0, 4, followed=False), q(1, 3)], score=0.5, pref="lang_ita"),  # not ok, pref_ok False
        ep([], score=0.0, pref="no_preference"),  # c -0.1: not ok; pref undefined
        ep([], score=0.5, vague=False, pref="no_ask", answered=False),  # ok; pref undefined
    ]
    br = [ppp_reward(e) for e in eps]
    m = summarize(br, eps)
    assert m["productivity"] == pytest.approx(50.0)
    assert m["proactivity"] == pytest.approx(50.0)
    assert m["personalization"] == pytest.approx(50.0) and m["n_pref_defined"] == 2
    assert m["personalization_seen"] == 100.0 and m["personalization_unseen"] == 0.0
    assert m["personalization/concise_question"] == 100.0 and m["personalization/lang_ita"] == 0.0
    assert "personalization/no_preference" not in m
    assert m["ask_ratio"] == 50.0 and m["ask_ratio_vague"] == pytest.approx(200 / 3) and m["ask_ratio_precise"] == 0
    assert m["answer_rate"] == 75.0
    assert m["questions_per_episode"] == 0.75
    assert (m["questions_low"], m["questions_medium"], m["questions_high"]) == (0.25, 0.25, 0.25)
    assert m["reward/total"] == pytest.approx(sum(b.total for b in br) / 4)
    assert (m["n_episodes"], m["n_vague"], m["n_precise"]) == (4, 3, 1)


def test_summarize_empty_and_undefined():
    m = summarize([], [])
    assert m["n_episodes"] == 0 and m["productivity"] is None and m["questions_low"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())
    e = [ep([], pref="no_preference", vague=False)]
    m = summarize([ppp_reward(e[0])], e)
    assert m["personalization"] is None and m["ask_ratio_vague"] is None and m["ask_ratio_precise"] == 0.0
    with pytest.raises(ValueError, match="same order"):
        summarize([ppp_reward(e[0])], [])
