"""RulesUser: tier selection, replies, labels, the 4-question cap, preference behaviours, determinism."""

import threading

import pytest

from ppp_min.userville.families.registry import FAMILIES
from ppp_min.userville.protocol import Exchange, Fact, ReplyRequest, UserTask
from ppp_min.userville.simulator import RulesUser, needed_tier, question_text

FUNCLOC = UserTask("funcloc", "Find the function to fix: a crash in the auth module with an empty token.", (
    Fact(1, "It is in the auth module.", ("module", "part", "where", "auth", "db", "more")),
    Fact(1, "It is triggered by empty input.", ("input", "when", "empty", "null", "more")),
    Fact(2, "My hunch: it has to do with logging in.", ("hint", "idea", "think")),
    Fact(4, "It is in the file auth/token.py.", ("file", "path", "where", "module")),
    Fact(5, "The function is auth/token.py:parse_token.", ("function", "name")),
))
RESEARCH = UserTask("research", "Find the person: a botany expert born in Lyon in 1931 who won the Orvel prize.", (
    Fact(1, "They were born in Lyon.", ("city", "where", "born", "lyon", "oslo")),
    Fact(1, "They won the Orvel prize.", ("prize", "award", "won", "orvel", "kesta")),
    Fact(3, "Here is the page: Mara Velko is a botany expert born in Lyon in 1931; winner of the Orvel prize.",
         ("who", "name", "document", "page")),
))
USER = RulesUser()


def ask(task, q, pref="no_preference", history=(), searches=0):
    return USER.reply(ReplyRequest(task, pref, q, tuple(history), searches))


@pytest.mark.parametrize("q, tier, effort, needle", [
    ("Which part of the app is it in?", 1, "low", "auth module"),
    ("When does it crash, with which input?", 1, "low", "empty input"),
    ("Any hint where to look?", 1, "low", "auth module"),  # "where" is a tier-1 keyword: lowest tier wins
    ("Any hint for me?", 2, "high", "logging in"),
    ("What's the weather like?", 3, "medium", "know"),
    ("Which file is it?", 4, "high", "auth/token.py"),
    ("Which function is it?", 5, "high", "auth/token.py:parse_token"),
    ("What is the name?", 5, "high", "parse_token"),
])
def test_funcloc_every_tier(q, tier, effort, needle):
    r = ask(FUNCLOC, q)
    assert (r.cost, r.effort, r.pref_followed) == (tier, effort, None)
    assert FAMILIES["funcloc"].ladder.effort_of(tier) == effort
    assert needle in r.reply


def test_tier1_answers_only_matched_facts_and_generic_question_gets_all():
    r = ask(FUNCLOC, "Which part is it in?")
    assert "auth module" in r.reply and "empty" not in r.reply
    r = ask(FUNCLOC, "Can you tell me more?")
    assert "auth module" in r.reply and "empty input" in r.reply and r.cost == 1


@pytest.mark.parametrize("q, tier, effort, needle", [
    ("Where was this person born?", 1, "low", "Lyon"),
    ("Which prize did they win?", 1, "low", "Orvel"),
    ("What year is it?", 2, "medium", "know"),
    ("Who is it?", 3, "high", "Mara Velko"),
    ("What is the name of the person?", 3, "high", "Mara Velko"),
])
def test_research_every_tier(q, tier, effort, needle):
    r = ask(RESEARCH, q)
    assert (r.cost, r.effort) == (tier, effort)
    assert needle in r.reply


def test_keywords_match_whole_words_and_phrases():
    words_task = UserTask("research", "p", (Fact(1, "They won.", ("won", "which prize")),))
    assert needed_tier(words_task.facts, "Was it wonderful?", "research") == (2, ())
    assert needed_tier(words_task.facts, "Which prize was it?", "research")[0] == 1
    assert needed_tier(words_task.facts, "which  PRIZE?", "research")[0] == 1


def test_question_cap_after_four_answers():
    hist = [Exchange(f"q{i}", "a") for i in range(4)]
    assert ask(FUNCLOC, "Which part is it in?", history=hist[:3]).cost == 1
    r = ask(FUNCLOC, "Which part is it in?", history=hist)
    assert (r.cost, r.effort) == (3, "medium") and "auth" not in r.reply
    r = ask(RESEARCH, "Which prize?", "capital", history=hist)
    assert (r.cost, r.effort, r.pref_followed) == (2, "medium", False)


def test_do_selection_answers_multiple_choice_with_the_matching_letter():
    r = ask(FUNCLOC, "Which part is it in? A) db B) auth C) net", "do_selection")
    assert (r.reply, r.cost, r.effort, r.pref_followed) == ("B", 1, "low", True)
    r = ask(FUNCLOC, "Which input triggers it? (A) empty (B) null", "do_selection")
    assert r.reply == "A"
    r = ask(FUNCLOC, "Which file? A. auth/cache.py B. auth/token.py", "do_selection")
    assert (r.reply, r.cost) == ("B", 4)
    r = ask(FUNCLOC, "Which part is it in? A) db B) net", "do_selection")
    assert r.reply == "None of them." and r.cost == 1
    r = ask(FUNCLOC, "Which part is it in?", "do_selection")
    assert (r.cost, r.effort, r.pref_followed) == (3, "medium", False) and "know" in r.reply


def test_amateur_refuses_technical_questions_and_holds_no_file_or_function():
    r = ask(FUNCLOC, "Which function is it?", "amateur")
    assert (r.cost, r.effort, r.pref_followed) == (3, "medium", False)
    r = ask(FUNCLOC, "What is it called?", "amateur")  # not technical, but needs tier 5: not held
    assert (r.cost, r.effort, r.pref_followed) == (3, "medium", True) and "parse_token" not in r.reply
    r = ask(FUNCLOC, "Any hint for me?", "amateur")  # the hint (tier 2) is kept
    assert (r.cost, r.pref_followed) == (2, True)
    r = ask(FUNCLOC, "Which part of the app is it in?", "amateur")
    assert (r.cost, r.effort, r.pref_followed) == (1, "low", True)
    r = ask(RESEARCH, "Who is it?", "amateur")  # research: the amateur holds every tier
    assert r.cost == 3 and "Mara Velko" in r.reply


def test_json_question_is_read_from_the_object():
    q = '{"question": "Which part is it in?", "extra": ["when"]}'
    assert question_text(q, "json") == "Which part is it in? when"
    r = ask(FUNCLOC, '{"question": "Which part is it in?"}', "json")
    assert (r.cost, r.pref_followed) == (1, True) and "auth module" in r.reply
    assert ask(FUNCLOC, "Which part is it in?", "json").pref_followed is False


def test_italian_question_is_understood():
    r = ask(RESEARCH, "In quale città è nata la persona?", "lang_ita")
    assert (r.cost, r.pref_followed) == (1, True) and "Lyon" in r.reply
    assert ask(RESEARCH, "Where was the person born?", "lang_ita").pref_followed is False


def test_pref_followed_uses_context_and_searches():
    assert ask(FUNCLOC, "Which part?", "first_try", searches=0).pref_followed is False
    assert ask(FUNCLOC, "Which part?", "first_try", searches=2).pref_followed is True
    long_q = ("I searched for the crash with the token in the code base and found several candidates that "
              "could match, so could you tell me which part of the app it is in?")
    assert ask(FUNCLOC, long_q, "detail_question").pref_followed is True
    assert ask(FUNCLOC, "Which part?", "detail_question").pref_followed is False
    for name in ("no_preference", "professional", "answer_more", "no_ask", "only_begin", "ask_many"):
        assert ask(FUNCLOC, "Which part?", name).pref_followed is None


def test_unknown_preference_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preference"):
        ask(FUNCLOC, "Which part?", "nope")


def test_deterministic_and_thread_safe():
    questions = ["Which part is it in?", "Which file?", "Who knows?", "Any hint?", "When?"] * 8
    expected = [ask(FUNCLOC, q) for q in questions]
    assert expected == [ask(FUNCLOC, q) for q in questions]
    results = [None] * len(questions)

    def work(i):
        results[i] = ask(FUNCLOC, questions[i])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected
    # Templates vary with the request (hash), not at random.
    assert len({ask(FUNCLOC, f"Which part is it in? ({i})").reply for i in range(12)}) > 1


# ---------------------------------------------------------------- with generated tasks (both families)
from ppp_min.userville.tasks import make_tasks  # noqa: E402

ATTRIBUTE_KEYWORDS = {a: kw for f in ("funcloc", "research") for a, (_, kw) in FAMILIES[f].details.items()}
SCHEMAS = {f: FAMILIES[f].schema for f in ("funcloc", "research")}

QUESTION_FOR = {"area": "Which part of the app is it in?", "object": "What kind of object is handled?",
                "trigger": "When does it happen?", "city": "Which city are they from?",
                "year": "In which year?", "award": "Which award did they get?"}


def test_question_templates_use_attribute_keywords():
    for a, q in QUESTION_FOR.items():
        assert any(k in q.lower().split() or k + "?" in q.lower().split() for k in ATTRIBUTE_KEYWORDS[a]), a


def test_generated_funcloc_tasks_every_tier():
    for t in make_tasks("funcloc", "train", 30, 5):
        gold = t.catalog.item(t.gold[0])
        for a in SCHEMAS["funcloc"].optional:
            r = ask(t.user, QUESTION_FOR[a])
            if a in t.kept:  # nothing more to say at tier 1 about a stated attribute
                assert r.cost != 1
            else:
                assert (r.cost, r.effort) == (1, "low") and gold.get(a) in r.reply
        r = ask(t.user, "Any hint?")
        assert (r.cost, r.effort) == (2, "high") and gold.get("area") not in r.reply.split()
        assert ask(t.user, "How is the weather today?").cost == 3
        r = ask(t.user, "Which file is it?")
        assert (r.cost, r.effort) == (4, "high") and t.gold[0].split(":")[0] in r.reply
        for lazy in ("Which function is it?", "What is the name?"):
            r = ask(t.user, lazy)
            assert (r.cost, r.effort) == (5, "high") and t.gold[0] in r.reply


def test_generated_research_tasks_every_tier():
    for t in make_tasks("research", "train", 30, 5):
        gold = t.catalog.item(t.gold[0])
        for a in ("award",) + (("city",) if "city" not in t.kept else ()):
            r = ask(t.user, QUESTION_FOR[a])
            if a not in t.kept:
                assert (r.cost, r.effort) == (1, "low") and gold.get(a) in r.reply
        assert (ask(t.user, "How is the weather today?").cost, ask(t.user, "Is it sunny?").effort) == (2, "medium")
        for lazy in ("Who is it?", "What is the name?"):
            r = ask(t.user, lazy)
            assert (r.cost, r.effort) == (3, "high") and t.gold[0] in r.reply


def test_generated_do_selection_with_candidate_options():
    for t in make_tasks("funcloc", "train", 20, 6):
        missing = [a for a in SCHEMAS["funcloc"].optional if a not in t.kept][0]
        cands = sorted({it.get(missing) for it in t.catalog.items})
        q = QUESTION_FOR[missing] + " " + " ".join(f"{chr(65 + i)}) {v}" for i, v in enumerate(cands))
        r = ask(t.user, q, "do_selection")
        assert r.reply == chr(65 + cands.index(t.catalog.item(t.gold[0]).get(missing))) and r.cost == 1
