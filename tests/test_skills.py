"""Skill metrics (ppp_min/userville/skills.py): known transcripts through the real environment give known verdicts."""

import pytest

from ppp_min.evals.evaluation import eval_items, metrics, run_policy
from ppp_min.userville import tasks as tasklib
from ppp_min.userville.agent_env import EpisodeState, LocalUser, step_all
from ppp_min.userville.agent_env import EpisodeStats
from ppp_min.userville.agent_env import QuestionStat
from ppp_min.userville.scripted import ScriptedAgent
from ppp_min.userville.protocol import Exchange
from ppp_min.userville.skills import EpisodeSkills, episode_skills, request_words, revealed_replies, revealed_spans, \
    revealed_words, summarize_skills


@pytest.fixture(scope="module")
def task():
    t = tasklib.make_tasks("research", "test", 2, 0)[0]
    assert t.vague_prompt == "Find the person: a geology expert born in 1936."  # the transcripts below use it
    return t


def play_turns(task, turns, vague=True):
    st = EpisodeState(task, "no_preference", vague)
    for text in turns:
        step_all([st], [text], LocalUser(), max_turns=6)
    return st


def test_request_words():
    assert request_words("User preference: x\nFind the person: a geology expert born in 1936.") == \
        "a geology expert born in 1936"
    assert request_words("Find the function to fix: a leak with null input.") == "a leak with null input"


def test_request_copy_verdicts(task):
    exact = play_turns(task, ["<search>a geology expert born in 1936</search>", "<answer>1</answer>"])
    assert exact.stats().skills.request_copy is True
    case = play_turns(task, ["<search>A Geology  expert born in 1936.</search>"])  # case, spacing, period
    assert case.stats().skills.request_copy is True
    other = play_turns(task, ["<search>a geology expert born in 1940</search>"])
    assert other.stats().skills.request_copy is False
    asked_first = play_turns(task, ["<ask>Which city?</ask>", "<search>a geology expert born in 1936</search>"])
    assert asked_first.stats().skills.request_copy is None  # first action is not a search: no occasion
    # a format error is not an action: the first action is the search after it
    late = play_turns(task, ["hello", "<search>a geology expert born in 1936</search>"])
    assert late.stats().skills.request_copy is True


def test_answer_use_verdicts(task):
    ask = "<ask>Can you give me more details?</ask>"  # reveals every tier-1 fact: Riga, Mirel
    st = play_turns(task, [ask])
    assert [w.lower() for w in revealed_words(task, st.exchanges)] == ["riga", "mirel"]
    used = play_turns(task, [ask, "<search>a geology expert born in 1936 Riga Mirel</search>"])
    assert used.stats().skills.answer_use is True
    partly = play_turns(task, [ask, "<search>a geology expert born in 1936 Riga</search>"])
    assert partly.stats().skills.answer_use is False
    before = play_turns(task, ["<search>Riga Mirel</search>", ask, "<answer>1</answer>"])
    assert before.stats().skills.answer_use is False  # a search before the reply does not count
    never = play_turns(task, ["<search>a geology expert born in 1936</search>"])
    assert never.stats().skills.answer_use is None  # nothing revealed: no occasion
    off = play_turns(task, ["<ask>Do you like coffee?</ask>", "<search>geology</search>"])
    assert off.exchanges and off.stats().skills.answer_use is None  # the reply named no catalog word


@pytest.fixture(scope="module")
def funcloc():
    t = tasklib.make_tasks("funcloc", "test", 2, 0)[0]
    assert t.vague_prompt == "Find the function to fix: a slowdown with a queue."  # the replies below use it
    assert "ui/queue.py:load_queue" in [it.key for it in t.catalog.items]  # so ui, py, load are catalog words
    return t


def test_an_opener_names_nothing(funcloc):
    # "check" is a catalog verb (ui/url.py:check_url), but "Let me check." is the simulator's opener
    ex = [Exchange("Which module is it in?", "Let me check. It is in the ui module.")]
    assert revealed_words(funcloc, ex) == ["ui"]
    actions = [("ask", "Which module is it in?"), ("search", "a slowdown with a queue ui")]
    assert episode_skills(funcloc, funcloc.vague_prompt, actions, [ex[0], None]).answer_use is True


def test_revealed_spans_are_copied_as_written(funcloc):
    request = request_words(funcloc.vague_prompt)
    ex = [Exchange("Which file?", "Sure. It is in the file ui/queue.py."),
          Exchange("Which module?", "It is in the ui module."),  # ui: in the span above
          Exchange("What object?", "Good question. It happens with a queue."),  # queue: in the request
          Exchange("Where? A) ui B) cli", "B.")]  # a letter stands for its option
    assert revealed_spans(funcloc, ex, request) == ["ui/queue.py", "cli"]
    assert revealed_words(funcloc, ex) == ["ui", "queue", "py", "cli"]
    # the default demonstrator copies each reply that names a new catalog word whole, opener and final period
    # dropped; a multiple-choice letter still stands for its option
    assert revealed_replies(funcloc, ex, request) == ["It is in the file ui/queue.py", "cli"]


def ep(score, efforts=(), followed=(), vague=True, skills=EpisodeSkills()):
    qs = tuple(QuestionStat(turn=i, cost=1 if e == "low" else 2, effort=e, pref_followed=f)
               for i, (e, f) in enumerate(zip(efforts, followed or [None] * len(efforts))))
    return EpisodeStats(family="research", is_vague=vague, preference="capital", score=score, questions=qs,
                        n_turns=len(qs) + 1, answered=True, skills=skills)


def test_summary_by_hand():
    stats = [
        ep(1.0, ["low"], [True], skills=EpisodeSkills(True, True)),
        ep(0.5, ["low", "low"], [False, True], skills=EpisodeSkills(False, True)),
        ep(1.0, ["low", "medium"], [None, False], skills=EpisodeSkills(True, False)),  # not only-low
        ep(0.0, skills=EpisodeSkills(True, None)),
        ep(0.5),
        ep(1.0, ["low"], [False], vague=False, skills=EpisodeSkills(False, False)),  # precise: ignored
    ]
    s = summarize_skills(stats)
    assert s["skill/request_copy"] == pytest.approx(100 * 3 / 4)
    assert s["skill/answer_use"] == pytest.approx(100 * 2 / 3)
    assert s["skill/low_effort_value"] == pytest.approx(100 * (0.75 - 0.25))  # (1 + .5)/2 - (0 + .5)/2
    assert s["skill/question_compliance"] == pytest.approx(100 * 2 / 4)  # None is not judged
    assert (s["skill/n_request_copy"], s["skill/n_answer_use"], s["skill/n_low_effort"],
            s["skill/n_no_question"], s["skill/n_judged"]) == (4, 3, 2, 2, 4)
    empty = summarize_skills([ep(1.0, ["low"], vague=False)])
    assert empty["skill/request_copy"] is None and empty["skill/low_effort_value"] is None


def test_the_demonstrator_has_every_skill():
    tasks = tasklib.make_tasks("funcloc", "test", 4, 0) + tasklib.make_tasks("research", "test", 4, 0)
    specs = eval_items(tasks, ("no_preference", "capital", "do_selection", "lang_ita"))
    m = metrics(run_policy(ScriptedAgent("skills", 0), specs, LocalUser()))
    assert m.vague["skill/request_copy"] == 100.0 and m.vague["skill/answer_use"] == 100.0
    assert m.vague["skill/n_request_copy"] > 0 and m.vague["skill/n_answer_use"] > 0
    assert m.vague["skill/low_effort_value"] > 20
    never = metrics(run_policy(ScriptedAgent("never_ask", 0), specs, LocalUser()))
    assert never.vague["skill/answer_use"] is None and never.vague["skill/low_effort_value"] is None
