"""Scripted agents: the demonstrator of the SFT warm start ("skills, not policy", docs/design.md#the-warm-start)
and the evaluation baselines.

Contract
- ``ScriptedAgent(kind, seed)`` is a text policy (``agent(state) -> assistant turn``) for
  ``evaluation.run_policy`` and the demo generator. Kinds:
  ``skills`` — behaviour drawn at random per episode, INDEPENDENTLY of the preference and of vagueness:
  search or ask first, 0-3 questions, what each question targets (a missing detail, an already-stated
  detail, "more details", the hint, the file, the function / "who is it", something off-topic), one of
  ``STYLES`` per question, and whether the answer lists one or all candidates (where the family's score
  is set-valued, ``TaskFamily.lists_answers``). The answer is always
  consistent with what was revealed: the agent searches again with the request and what the replies revealed,
  copied as written: each reply that names a new catalog word, whole (``search_with="replies"``,
  ``skills.revealed_replies``) or only its facts (``"spans"``, ``skills.revealed_spans``), and answers the
  top hit. The SFT model thus has every skill in its support and no policy; RL must learn when, what and how
  to ask for *this* user.
  ``never_ask`` — search, answer the top hit. ``lazy`` — ask the family's lazy question ("which function is
  it?" / "who is it?": ``TaskFamily.lazy_target``, the high-effort question a task-only agent learns),
  search, answer. ``oracle`` — on a vague prompt ask for
  more details (low effort: every tier-1 fact) in the style the preference wants (or none for no_ask; three for answer_more),
  then search with what was revealed and answer; on a precise prompt never ask.
- ``demonstrations(tasks, preferences, n, seed, user) -> list[messages]`` runs the ``skills`` agent
  through the real environment (``agent_env``) so observations are genuine.
- ``corpus(demos)``: the texts a preset's BPE tokenizer is trained on. The SFT warm start on these demonstrations
  is ``ppp_min/rl/sft.py``.
"""

from __future__ import annotations

import json
import random
import weakref

from ppp_min.userville.agent_env import EpisodeState, play
from ppp_min.userville.families.registry import FAMILIES
from ppp_min.userville.skills import request_words, revealed_replies, revealed_spans

SEARCH_WITH = {"replies": revealed_replies, "spans": revealed_spans}  # what the post-reply search adds
STYLES = ("plain", "concise", "detailed", "choice", "italian", "multi", "caps", "json", "joke", "snippet",
          "three", "double")
# Which style the oracle uses for a preference (any compliant style would do).
ORACLE_STYLE = {"concise_question": "concise", "detail_question": "detailed", "do_selection": "choice",
                "amateur": "concise", "one_question": "concise", "lang_ita": "italian", "lang_multi": "multi",
                "capital": "caps", "commas": "concise", "json": "json", "joke": "joke", "snippet": "snippet",
                "length": "three"}
# Base questions per target: (English, Italian); each family adds its own (``TaskFamily.questions``: its
# attributes, hint and answer targets). Italian words come from the simulator's gloss.
QUESTIONS = {
    "generic": ("Can you give me more details", "Puoi darmi più dettagli"),
    "off": ("Do you like coffee", "Ti piace il caffè"),
}
TARGETS = ("missing", "missing", "missing", "stated", "generic", "hint", "answer", "off")
SNIPPET = "```\n# {path}\ndef run(data):\n    return handle(data)\n```\n"


def style_question(style: str, target: str, options: list[str], context: str, second: str | None,
                   family: str) -> str:
    """The question about ``target`` in ``style`` (``family``: whose ``questions`` name the target)."""
    questions = {**QUESTIONS, **FAMILIES[family].questions}
    en, it = questions[target]
    if style == "choice" and len(options) < 2:
        style = "concise"  # multiple choice needs candidates seen in a search
    if style == "plain":
        return f"Thanks. I have a question: {en.lower()}?"
    if style == "concise":
        return f"{en}?"
    if style == "detailed":
        return (f"I am working on your request about {context} and I found a few possible matches so I need "
                f"one more detail from you to pick the right one: {en.lower()}?")
    if style == "choice":
        return f"{en}? " + " ".join(f"{'ABCD'[i]}) {v}" for i, v in enumerate(options[:4]))
    if style == "italian":
        return f"{it}?"
    if style == "multi":
        return f"Hola, bonjour, hallo, ciao! {en}? Gracias, merci, danke, grazie."
    if style == "caps":
        return f"{en.upper()}?"
    if style == "json":
        return json.dumps({"question": f"{en}?"})
    if style == "joke":
        return f"{en}? Why did the bug cross the road? Haha."
    if style == "snippet":
        return SNIPPET.format(path="src/app.py") + f"{en}?"
    if style == "three":
        return f"I searched for it. I found a few matches. {en}?"
    if style == "double":
        return f"{en}? And {questions[second or 'generic'][0].lower()}?"
    raise ValueError(f"unknown question style {style!r}")


class ScriptedAgent:
    """A text policy. It keeps its plan for each episode itself (keyed by the episode's state)."""

    def __init__(self, kind: str = "skills", seed: int = 0, style_match: float = 0.0, search_with: str = "replies"):
        if kind not in ("skills", "never_ask", "lazy", "oracle"):
            raise ValueError(f"unknown scripted agent {kind!r}; use skills|never_ask|lazy|oracle")
        if not 0.0 <= style_match <= 1.0:
            raise ValueError(f"style_match must be in [0, 1], got {style_match!r}")
        if search_with not in SEARCH_WITH:
            raise ValueError(f"search_with must be one of {sorted(SEARCH_WITH)}, got {search_with!r}")
        self.kind, self.rng, self.style_match = kind, random.Random(seed), style_match
        self._revealed = SEARCH_WITH[search_with]
        self._plans = weakref.WeakKeyDictionary()  # EpisodeState -> this agent's plan for that episode

    # -- planning ----------------------------------------------------------------------------------
    def _plan(self, st: EpisodeState) -> dict:
        if st not in self._plans:
            self._plans[st] = self._new_plan(st)
        return self._plans[st]

    def _new_plan(self, st: EpisodeState) -> dict:
        r, fam = self.rng, FAMILIES[st.task.family]
        optional = fam.schema.optional
        missing = [a for a in optional if a not in st.task.kept] or list(optional)
        stated = [a for a in optional if a in st.task.kept and a != fam.schema.intent] or list(optional)
        answers = fam.answer_targets or (fam.lazy_target,)
        if self.kind == "never_ask":
            return dict(first="search", asks=[], answer_all=False)
        if self.kind == "lazy":
            return dict(first="search", asks=[(fam.lazy_target, "concise", None)], answer_all=False)
        if self.kind == "oracle":
            n = 0 if (not st.is_vague or st.preference == "no_ask") else (3 if st.preference == "answer_more" else 1)
            style = ORACLE_STYLE.get(st.preference, "concise")
            asks = [("generic", style, None)] * n  # "more details" reveals every tier-1 fact (low effort)
            if style == "choice" and n:  # multiple choice: one question per missing detail, options from search
                asks = [(a, style, None) for a in missing]
            first = "ask" if st.preference == "only_begin" else "search"
            return dict(first=first, asks=asks, answer_all=False)
        n = r.choices((0, 1, 2, 3), weights=(3, 4, 2, 1))[0]
        asks = []
        for _ in range(n):
            kind = r.choice(TARGETS)
            target = {"missing": lambda: r.choice(missing), "stated": lambda: r.choice(stated),
                      "generic": lambda: "generic", "hint": lambda: fam.hint_target,
                      # one answer target draws no random number (the demonstrations stay those of before)
                      "answer": lambda: r.choice(answers) if len(answers) > 1 else answers[0],
                      "off": lambda: "off"}[kind]()
            style = self._style(st.preference)
            second = r.choice(missing) if style == "double" else None
            asks.append((target, style, second))
        return dict(first=r.choice(("search", "search", "ask")), asks=asks, answer_all=r.random() < 0.25)

    def _style(self, preference: str) -> str:
        """A question's style: with probability ``style_match`` the one the stated preference asks for (as an
        instruct model would write it), else any of ``STYLES``. Whether and what to ask stay untaught.
        At 0 no extra random number is drawn, so the demonstrations are those of the plain skills agent."""
        if self.style_match > 0 and preference in ORACLE_STYLE and self.rng.random() < self.style_match:
            return ORACLE_STYLE[preference]
        return self.rng.choice(STYLES)

    # -- acting --------------------------------------------------------------------------------------
    def __call__(self, st: EpisodeState) -> str:
        plan = self._plan(st)
        plan.setdefault("asked", 0)
        plan.setdefault("searched", 0)
        request = request_words(st.messages[1][1])
        if plan["first"] == "search" and plan["searched"] == 0:
            return self._search(plan, request)
        if plan["asked"] < len(plan["asks"]):
            target, style, second = plan["asks"][plan["asked"]]
            plan["asked"] += 1
            options = self._options(st, target)
            return f"<ask>{style_question(style, target, options, request, second, st.task.family)}</ask>"
        revealed = self._revealed(st.task, st.exchanges, request)
        if plan["searched"] == 0 or (revealed and not plan.get("researched")):
            plan["researched"] = True
            return self._search(plan, " ".join([request] + revealed))
        hits = self._last_search(st)
        if not hits:
            return "<answer>unknown</answer>"
        # point at results by number (the environment resolves them to the keys shown)
        answer = ", ".join(str(n) for n in range(1, len(hits) + 1)) \
            if (plan["answer_all"] and FAMILIES[st.task.family].lists_answers) else "1"
        return f"<answer>{answer}</answer>"

    def _search(self, plan: dict, query: str) -> str:
        plan["searched"] += 1
        return f"<search>{query}</search>"

    @staticmethod
    def _last_search(st: EpisodeState) -> list[str]:
        for role, text in reversed(st.messages):
            if role == "user" and text.startswith("[search] "):
                body = text[len("[search] "):]
                return [] if body == "no results" else [ln.split(". ", 1)[1] for ln in body.split("\n")]
        return []

    def _options(self, st: EpisodeState, target: str) -> list[str]:
        """Candidate values for a multiple-choice question, read from the last search's lines."""
        out = []
        for line in self._last_search(st):
            key = line.split(": ")[0]
            try:
                item = st.task.catalog.item(key)
                out.append(item.get(target))
            except KeyError:
                continue
        return list(dict.fromkeys(out))


def demonstrations(tasks, preferences, n: int, seed: int, user, max_turns: int = 6,
                   style_match: float = 0.0, search_with: str = "replies") -> list:
    """``n`` scripted episodes (messages) over random (task, preference, vague|precise) draws; questions in
    the preference's style with probability ``style_match`` (``ScriptedAgent._style``); the post-reply search
    adds what ``search_with`` says (``SEARCH_WITH``)."""
    rng = random.Random(seed)
    states = [EpisodeState(rng.choice(tasks), rng.choice(preferences), rng.random() < 12 / 13) for _ in range(n)]
    return [s.messages for s in play(ScriptedAgent("skills", seed, style_match, search_with), states, user, max_turns)]


def corpus(demos) -> list[str]:
    """Texts to train the preset BPE tokenizer on: every demo message."""
    return [text for msgs in demos for _, text in msgs]
