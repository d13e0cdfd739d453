"""The agent side of UserVille: prompts, action parsing, observations and per-episode bookkeeping.

Contract (pure Python, no torch; shared by the batched model rollout, the scripted baselines and API agents)
- ``initial_messages(task, preference, is_vague)``: the ChatML messages the agent starts from (see docs/design.md):
  a system message with the tools and a user message ``User preference: …`` + the vague or precise request.
- ``parse_action(text)``: the first complete ``<search>…</search>``, ``<ask>…</ask>`` or
  ``<answer>…</answer>`` in an assistant turn (free text before it is allowed), or ``None``.
- ``EpisodeState``: one episode in progress. ``step_all(states, actions, client)`` applies one action per
  live episode and returns each one's observation text; all the ``ask`` actions of the call go to the
  simulator as ONE batched request (docs/design.md#one-rl-step). A simulator failure raises (the client's
  ``SimulatorError``): an error is never turned into a user reply, so no episode is mis-scored.
- ``EpisodeState.stats()`` -> ``EpisodeStats`` (frozen; one ``QuestionStat`` per ask), what the PPP reward needs.
- ``play(policy, states, client, max_turns, workers=1)``: the episode loop for a text policy
  (``policy(state) -> assistant turn``): scripted baselines, SFT demonstrations, API agents.

Deliberately left out: the paper's ``open_page`` tool (search lines already carry the attributes) and its
rule rejecting an answer given before any search; a turn without a parsable action costs a turn, nothing else.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ppp_min.userville import tasks as tasklib
from ppp_min.userville.families.registry import FAMILIES
from ppp_min.userville.preferences import PREFERENCES
from ppp_min.userville.protocol import EFFORTS, Exchange, ReplyRequest
from ppp_min.userville.skills import EpisodeSkills, episode_skills

SYSTEM_PROMPT = ("You help a user. Each turn, write exactly one action: <search>keywords</search> to search, "
                 "<ask>question</ask> to ask the user, or <answer>answer</answer> to finish (an answer may "
                 "name search results by number: <answer>1</answer>).")
_REFS = re.compile(r"\s*\d+(\s*,\s*\d+)*\s*")
FORMAT_OBSERVATION = "[format] write one action: <search>...</search>, <ask>...</ask> or <answer>...</answer>"
_ACTION = re.compile(r"<(search|ask|answer)>(.*?)</\1>", re.DOTALL)
MAX_OBSERVATION_CHARS = 600  # keeps episodes short for small models; search lines are already compact


@dataclass(frozen=True)
class QuestionStat:
    """One ``ask`` call and its labelled reply. ``turn``: index of the agent turn that asked (0-based)."""
    turn: int
    cost: int  # information tier used by the reply (1..the family's ladder.max_tier)
    effort: str  # low | medium | high (the user's label)
    pref_followed: bool | None  # judge verdict; None when the preference has no per-question judge
    parsed: bool = True  # False: the LLM user's reply had no parsable cost tag
    question: str = ""  # the agent's question as sent (for samples; the reward never reads it)
    reply: str = ""  # the user's full reply (the agent's observation may be clipped or, on the last turn, absent)


@dataclass(frozen=True)
class EpisodeStats:
    """What the PPP reward needs of one finished episode (``EpisodeState.stats()`` fills it)."""
    family: str  # a name in families.registry.FAMILIES (funcloc | research)
    is_vague: bool  # the agent got the vague prompt (else the precise one)
    preference: str  # a name in PREFERENCES
    score: float  # productivity s in [0, 1] (F1 / exact match)
    questions: tuple[QuestionStat, ...]
    n_turns: int  # agent turns taken
    answered: bool  # the episode ended with an <answer>
    skills: EpisodeSkills = EpisodeSkills()  # request copy / answer use verdicts (userville/skills.py; the reward never reads them)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"EpisodeStats.family {self.family!r} is unknown; expected one of {list(FAMILIES)}")
        if self.preference not in PREFERENCES:
            raise ValueError(f"EpisodeStats.preference {self.preference!r} is unknown; see userville.preferences")
        if not (isinstance(self.score, (int, float)) and 0.0 <= self.score <= 1.0):
            raise ValueError(f"EpisodeStats.score must be a number in [0, 1], got {self.score!r}")
        if self.n_turns < 0:
            raise ValueError("EpisodeStats.n_turns must be >= 0")
        last, top = -1, FAMILIES[self.family].ladder.max_tier
        for i, q in enumerate(self.questions):
            if not 1 <= q.cost <= top:
                raise ValueError(f"questions[{i}].cost={q.cost} outside 1..{top} for {self.family}")
            if q.effort not in EFFORTS:
                raise ValueError(f"questions[{i}].effort={q.effort!r}; expected one of {list(EFFORTS)}")
            # One action per agent turn: ask turns strictly increase and lie inside the episode.
            if not last < q.turn < self.n_turns:
                raise ValueError(f"questions[{i}].turn={q.turn}: ask turns must strictly increase and be "
                                 f"< n_turns={self.n_turns} (one ask per agent turn)")
            last = q.turn


@dataclass(frozen=True)
class Action:
    kind: str  # search | ask | answer
    arg: str


def parse_action(text: str) -> Action | None:
    m = _ACTION.search(text)
    if m is None:
        return None
    return Action(m.group(1), m.group(2).strip())


def user_message(task, preference: str, is_vague: bool) -> str:
    """The user's opening turn: the preference (shown to the agent, as the paper's Fig. 12 implies) and the request."""
    request = task.vague_prompt if is_vague else task.precise_prompt
    return f"User preference: {PREFERENCES[preference].text}\n{request}"


def initial_messages(task, preference: str, is_vague: bool) -> list[tuple[str, str]]:
    return [("system", SYSTEM_PROMPT), ("user", user_message(task, preference, is_vague))]


@dataclass(eq=False)  # compared (and hashed) by identity: a policy may key its own notes by the state
class EpisodeState:
    """Mutable bookkeeping of one episode; frozen results come out through ``stats()``."""

    task: object  # userville.tasks.Task
    preference: str
    is_vague: bool
    turn: int = 0  # agent turns taken so far
    done: bool = False
    answer: str | None = None
    n_searches: int = 0
    exchanges: list[Exchange] = field(default_factory=list)
    questions: list[QuestionStat] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)  # the transcript as text
    last_search: list[str] = field(default_factory=list)  # the latest search's lines, for numbered answers
    actions: list[tuple[str, str]] = field(default_factory=list)  # parsed actions in order: (kind, argument)
    action_replies: list = field(default_factory=list)  # per action: the ask's Exchange, else None

    def __post_init__(self):
        if not self.messages:
            self.messages = initial_messages(self.task, self.preference, self.is_vague)

    @property
    def score(self) -> float:
        """Productivity: the task score of the final answer; no answer scores 0."""
        return tasklib.score(self.task, self.answer) if self.answer is not None else 0.0

    def resolve(self, answer: str) -> str:
        """An answer of result numbers ("1" or "1, 3") names lines of the latest search: the keys they show.
        Small models find pointing easier than copying identifiers; literal answers work as well."""
        if not _REFS.fullmatch(answer):
            return answer
        lines = self.last_search
        picked = [lines[int(n) - 1].split(": ")[0] for n in answer.split(",") if 0 < int(n) <= len(lines)]
        return ", ".join(picked)

    def stats(self) -> EpisodeStats:
        skills = episode_skills(self.task, self.messages[1][1], self.actions, self.action_replies)
        return EpisodeStats(family=self.task.family, is_vague=self.is_vague, preference=self.preference,
                            score=self.score, questions=tuple(self.questions), n_turns=self.turn,
                            answered=self.answer is not None, skills=skills)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_OBSERVATION_CHARS else text[:MAX_OBSERVATION_CHARS] + " ..."


def step_all(states: list[EpisodeState], turn_texts: list[str], client, max_turns: int,
             search_k: int = 4) -> list[str | None]:
    """Apply each live episode's assistant turn; return its observation (None once the episode ended).

    ``client``: anything with ``reply_batch(list[ReplyRequest]) -> list[Reply]`` (the HTTP client or an
    in-process ``RulesUser`` wrapper). All questions of this call are sent as one batch.
    """
    observations: list[str | None] = [None] * len(states)
    asks: list[tuple[int, ReplyRequest]] = []
    for i, (st, text) in enumerate(zip(states, turn_texts)):
        if st.done:
            continue
        st.messages.append(("assistant", text))
        action = parse_action(text)
        st.turn += 1
        if action is not None:
            st.actions.append((action.kind, action.arg))
            st.action_replies.append(None)  # an ask's Exchange replaces it below
        if action is None:
            observations[i] = FORMAT_OBSERVATION
        elif action.kind == "answer":
            st.answer, st.done = st.resolve(action.arg), True
        elif action.kind == "search":
            st.n_searches += 1
            lines = tasklib.search(st.task, action.arg, k=search_k)
            st.last_search = lines
            observations[i] = _clip("[search] " + ("\n".join(f"{n}. {ln}" for n, ln in enumerate(lines, 1))
                                                   if lines else "no results"))
        else:  # ask: the simulator labels effort, cost and the preference verdict
            asks.append((i, ReplyRequest(st.task.user, st.preference, action.arg or "?",
                                         tuple(st.exchanges), st.n_searches)))
    if asks:
        replies = client.reply_batch([req for _, req in asks])
        for (i, req), rep in zip(asks, replies):
            st = states[i]
            st.questions.append(QuestionStat(turn=st.turn - 1, cost=rep.cost, effort=rep.effort,
                                             pref_followed=rep.pref_followed, parsed=rep.parsed,
                                             question=req.question, reply=rep.reply))
            st.exchanges.append(Exchange(req.question, rep.reply))
            st.action_replies[-1] = st.exchanges[-1]
            observations[i] = _clip("[user] " + rep.reply)
    for i, st in enumerate(states):
        if not st.done and st.turn >= max_turns:  # out of turns = no answer
            st.done, observations[i] = True, None
        if observations[i] is not None:
            st.messages.append(("user", observations[i]))
    return observations


def play(policy, states: list[EpisodeState], client, max_turns: int, workers: int = 1) -> list[EpisodeState]:
    """Run a text policy (``policy(state) -> the next assistant turn``) on every episode in lock step until
    all have ended; return ``states``. The one episode loop of the scripted baselines, the SFT
    demonstrations and API agents (a model's episodes run token by token in ``rollout``). ``workers`` > 1
    calls the policy for that many live episodes at a time from threads (an API call takes seconds, a
    scripted turn microseconds); the turns are applied in the same order either way."""
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        while True:
            live = [st for st in states if not st.done]
            if not live:
                return states
            turns = list(pool.map(policy, live)) if pool is not None else [policy(st) for st in live]
            step_all(live, turns, client, max_turns)
    finally:  # on the first failure, drop the queued calls instead of waiting for each to fail too
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class LocalUser:
    """In-process stand-in for the HTTP client (same ``reply_batch``), for tests and scripted evals."""

    def __init__(self, user=None):
        from ppp_min.userville.simulator import RulesUser
        self.user = user or RulesUser()

    def reply_batch(self, reqs):
        return [self.user.reply(r) for r in reqs]
