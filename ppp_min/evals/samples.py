"""Sample dialogues as JSON records: what the agent actually did, next to the reward it got.

Contract
- ``dialogue_record(task, preference, is_vague, messages, stats, breakdown, *, phase, ...) -> dict``: one
  episode as a JSON-ready dict: ``phase`` ("rl", "eval", "show", ...), ``label``, ``step``, ``pick``
  (best | worst | only | first), ``group_id``; ``task`` (id, family, preference and its text, vague,
  the request the agent saw, the gold answer); ``dialogue``: the turns after the system prompt, each
  ``{"role": "user" | "agent" | "tool" | "env", "kind", "text", ...}``: an agent turn carries its parsed
  ``action`` and ``arg``; a user reply to a question carries ``question``, ``effort``, ``cost``,
  ``pref_followed`` (the preference verdict) and ``parsed``; ``stats`` (every ``EpisodeStats`` field,
  questions as dicts), ``weights`` (``RewardWeights`` or None), ``reward`` (every ``RewardBreakdown``
  field), ``advantage`` (None in evaluation) and ``truncated``.
- ``stats_from_record(rec)`` / ``weights_from_record(rec)`` rebuild the reward's inputs, so
  ``ppp_reward(stats_from_record(r), weights_from_record(r))`` reproduces ``r["reward"]`` (paper eq. 1).
- ``rl_samples(episodes, breakdowns, advantages, tasks, k, step, weights=None)``: for the first ``k``
  groups (by ``group_id``, in order of appearance) the best and the worst episode by total reward (the
  first best, the last worst, so a tied group still shows two episodes; a singleton group gives one
  record, ``pick = "only"``). ``eval_samples(episodes, breakdowns, tasks, k, label, step, weights=None)``:
  the first ``k`` episodes. ``tasks``: any iterable of ``Task`` or ``EpisodeSpec`` (looked up by task id).
- ``SampleWriter(path).write(records)`` appends one JSON object per line and flushes; ``read_samples(path)``
  reads them back (``SampleError``, one line naming the line number, on a malformed file).
Bad input (mismatched lengths, an unknown task id, k < 0) raises ``ValueError`` with one line.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from ppp_min.rl.reward import RewardWeights
from ppp_min.userville.agent_env import EpisodeStats
from ppp_min.userville.agent_env import FORMAT_OBSERVATION, parse_action, user_message
from ppp_min.userville.agent_env import QuestionStat
from ppp_min.userville.preferences import PREFERENCES
from ppp_min.userville.skills import EpisodeSkills


class SampleError(ValueError):
    """A samples file is missing or malformed; the message is one line."""


def _task_map(tasks) -> dict:
    out = {}
    for t in tasks:
        t = getattr(t, "task", t)  # an EpisodeSpec or a Task
        out[t.task_id] = t
    return out


def _turns(messages, questions) -> list[dict]:
    """The dialogue after the system prompt and the opening request, with the user's labels attached."""
    by_turn = {q.turn: q for q in questions}
    out, k, pending = [], -1, None
    for role, text in messages[2:]:
        if role == "assistant":
            k += 1
            a = parse_action(text)
            out.append({"role": "agent", "kind": "turn", "text": text,
                        "action": a.kind if a else None, "arg": a.arg if a else None})
            pending = by_turn.pop(k, None) if a is not None and a.kind == "ask" else None
        elif pending is not None and text.startswith("[user] "):
            out.append(_reply(pending, shown=True))
            pending = None
        elif text.startswith("[search] "):
            out.append({"role": "tool", "kind": "search", "text": text[len("[search] "):]})
        else:
            out.append({"role": "env", "kind": "format" if text == FORMAT_OBSERVATION else "note", "text": text})
    if pending is not None:  # an ask on the last allowed turn: the reply was labelled but never shown
        out.append(_reply(pending, shown=False))
    return out


def _reply(q: QuestionStat, shown: bool) -> dict:
    return {"role": "user", "kind": "reply", "text": q.reply, "question": q.question, "effort": q.effort,
            "cost": q.cost, "pref_followed": q.pref_followed, "parsed": q.parsed, "shown": shown}


def dialogue_record(task, preference: str, is_vague: bool, messages, stats: EpisodeStats, breakdown, *,
                    phase: str, label: str | None = None, step: int | None = None, advantage: float | None = None,
                    group_id: int | None = None, pick: str | None = None, truncated: bool = False,
                    weights: RewardWeights | None = None) -> dict:
    messages = [tuple(m) for m in messages]
    return {
        "phase": phase, "label": label, "step": step, "pick": pick, "group_id": group_id,
        "task": {"id": task.task_id, "family": task.family, "preference": preference,
                 "preference_text": PREFERENCES[preference].text, "vague": bool(is_vague),
                 "request": user_message(task, preference, is_vague).split("\n", 1)[1],
                 "gold": list(task.gold)},
        "dialogue": _turns(messages, stats.questions),
        "stats": asdict(stats),
        "weights": None if weights is None else asdict(weights),
        "reward": breakdown.record(),
        "advantage": None if advantage is None else float(advantage),
        "truncated": bool(truncated),
    }


def episode_record(ep, task, breakdown, **kw) -> dict:
    """``dialogue_record`` of a rollout ``Episode`` (its task looked up by the caller)."""
    if ep.task_id != task.task_id:
        raise ValueError(f"episode of task {ep.task_id!r} paired with task {task.task_id!r}")
    return dialogue_record(task, ep.preference, ep.is_vague, ep.messages, ep.stats, breakdown,
                           group_id=ep.group_id, truncated=ep.truncated, **kw)


def stats_from_record(rec: dict) -> EpisodeStats:
    s = dict(rec["stats"])
    s["questions"] = tuple(QuestionStat(**q) for q in s["questions"])
    s["skills"] = EpisodeSkills(**s.get("skills", {}))
    return EpisodeStats(**s)


def weights_from_record(rec: dict) -> RewardWeights:
    return RewardWeights(**rec["weights"]) if rec.get("weights") else RewardWeights()


def _check(episodes, breakdowns, advantages, k) -> None:
    if len(breakdowns) != len(episodes) or (advantages is not None and len(advantages) != len(episodes)):
        raise ValueError(f"samples: {len(episodes)} episodes, {len(breakdowns)} breakdowns, "
                         f"{'no' if advantages is None else len(advantages)} advantages; pass one per episode")
    if k < 0:
        raise ValueError(f"samples: k must be >= 0, got {k}")


def _lookup(tmap: dict, task_id: str):
    if task_id not in tmap:
        raise ValueError(f"samples: task {task_id!r} is not among the tasks passed")
    return tmap[task_id]


def rl_samples(episodes, breakdowns, advantages, tasks, k: int, step: int,
               weights: RewardWeights | None = None) -> list[dict]:
    """Best and worst episode (by total reward) of each of the first ``k`` groups."""
    _check(episodes, breakdowns, advantages, k)
    tmap, groups = _task_map(tasks), {}
    for i, e in enumerate(episodes):
        groups.setdefault(e.group_id, []).append(i)
    out = []
    for idx in list(groups.values())[:k]:
        totals = [breakdowns[i].total for i in idx]
        best = idx[totals.index(max(totals))]
        worst = idx[len(totals) - 1 - totals[::-1].index(min(totals))]
        picks = [(best, "best"), (worst, "worst")] if len(idx) > 1 else [(best, "only")]
        for i, pick in picks:
            e = episodes[i]
            out.append(episode_record(e, _lookup(tmap, e.task_id), breakdowns[i], phase="rl", step=step,
                                      pick=pick, weights=weights,
                                      advantage=None if advantages is None else float(advantages[i])))
    return out


def eval_samples(episodes, breakdowns, tasks, k: int, label: str, step: int | None = None,
                 weights: RewardWeights | None = None) -> list[dict]:
    """The first ``k`` evaluation episodes (no advantage)."""
    _check(episodes, breakdowns, None, k)
    tmap = _task_map(tasks)
    return [episode_record(e, _lookup(tmap, e.task_id), b, phase="eval", label=label, step=step, pick="first",
                           weights=weights) for e, b in list(zip(episodes, breakdowns))[:k]]


class SampleWriter:
    """Appends records to a JSONL file, one object per line, flushed after every ``write``."""

    def __init__(self, path: str | os.PathLike):
        d = os.path.dirname(os.fspath(path))
        if d:
            os.makedirs(d, exist_ok=True)
        self.path = os.fspath(path)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, records) -> None:
        for r in records:
            self._fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_samples(path: str | os.PathLike) -> list[dict]:
    try:
        fh = open(path, encoding="utf-8")
    except OSError as e:
        raise SampleError(f"{path}: cannot read ({e.strerror})") from None
    out = []
    with fh:
        try:
            lines = list(fh)
        except UnicodeDecodeError:
            raise SampleError(f"{path}: not a UTF-8 text file (a samples file is JSON lines)") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SampleError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not all(key in rec for key in ("task", "dialogue", "stats", "reward")):
                raise SampleError(f"{path}:{n}: not a sample record (needs task, dialogue, stats, reward)")
            out.append(rec)
    return out
