"""Skill metrics: can the agent do what asking needs? (request copy, answer use, the value of a question).

PPP's reward only pays for a question if the agent can *use* the answer (paper §4-5: a low-effort question
helps only when its answer reaches the search). These metrics say whether a model has the skills RL needs
before it can learn when, what and how to ask; they explain why RL does what it does (a model that cannot
use answers rationally learns to stop asking). Definitions (docs/design.md#skill-metrics):

- ``request_words(prompt)``: the search keywords of a request, what follows "Find ...:" without the period.
  The scripted agents search with exactly these words.
- ``revealed_words(task, exchanges)``: catalog words (values or key parts) named in the user's replies, as
  written, in order, each once; a multiple-choice reply ("B") names its option. A reply's opener ("Let me
  check.", ``simulator.REPLY_OPENERS``) names nothing.
- ``revealed_spans(task, exchanges, request)``: the same facts as the demonstrator copies them: each run
  of characters that names catalog words, exactly as written ("sync/profile.py", "Elin", "Lunven"), in
  order, without those whose words the request or an earlier span already holds.
- Per episode (``episode_skills`` -> ``EpisodeSkills``, filled by the environment into ``EpisodeStats``):
  *request copy* (defined when the first action is a search): its query equals the request's keywords, up to
  case and spacing; *answer use* (defined when the replies named catalog words absent from the request): a
  search after the last reply that named one contains all of them.
- Over a set of episodes (``summarize_skills(stats)``, vague episodes only, x100 like the paper's metrics):
  ``skill/request_copy``, ``skill/answer_use``, ``skill/low_effort_value`` (mean task score of episodes whose
  questions were all low-effort minus that of episodes with no question), ``skill/question_compliance``
  (share of judged questions that followed the preference) and the counts each is over. ``None`` where a
  metric has no episode to average.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ppp_min.userville import catalog as cat
from ppp_min.userville.simulator import REPLY_OPENERS

_LETTER = re.compile(r"\W*([A-D])\W*")
_OPTION = re.compile(r"\b([A-D])\) (\w+)")
_TOKEN = re.compile(r"[A-Za-z0-9]+")  # catalog.words' split, case kept
_SPAN = re.compile(r"[A-Za-z0-9]+(?:[/._:][A-Za-z0-9]+)*")  # an identifier as written: sync/profile.py:clean_profile


def request_words(prompt: str) -> str:
    """The search keywords of a request: what follows 'Find ...:' without the final period."""
    body = prompt.split("\n")[-1]
    body = body.split(":", 1)[1] if ":" in body else body
    return body.strip().rstrip(".")


def _catalog_vocab(task) -> set[str]:
    return {w for it in task.catalog.items for w in cat.words(it.key + " " + " ".join(it.values))}


def _without_opener(reply: str) -> str:
    for opener in REPLY_OPENERS:
        if reply.startswith(opener + " "):
            return reply[len(opener) + 1:]
    return reply


def _reply_spans(question: str, reply: str) -> list[str]:
    """The runs of characters of one reply that may name catalog words, as written, opener dropped; a
    multiple-choice reply's letter ("B." / "Sure. B.") stands for its option."""
    option = _chosen_option(question, reply)
    return ([option] if option else []) + _SPAN.findall(_without_opener(reply))


def _chosen_option(question: str, reply: str) -> str | None:
    """The option a multiple-choice reply's letter picks ("B." -> "url"), or None."""
    reply = _without_opener(reply)
    letter = _LETTER.fullmatch(reply.split(".")[-2] if "." in reply else reply)
    options = dict(_OPTION.findall(question))
    return options.get(letter.group(1)) if letter else None


def reply_words(vocab: set[str], question: str, reply: str) -> list[str]:
    """Catalog words named in one reply, as written (see ``_reply_spans``)."""
    return [w for span in _reply_spans(question, reply) for w in _TOKEN.findall(span) if w.lower() in vocab]


def revealed_words(task, exchanges) -> list[str]:
    """Every catalog word the user's replies named, in order, each once (kept as written: "Hanoi")."""
    vocab, out, seen = _catalog_vocab(task), [], set()
    for ex in exchanges:
        for w in reply_words(vocab, ex.question, ex.reply):
            if w.lower() not in seen:
                out.append(w)
                seen.add(w.lower())
    return out


def revealed_spans(task, exchanges, request: str) -> list[str]:
    """What the replies revealed, as the demonstrator's post-reply search copies it: each span that names a
    catalog word, exactly as written (a plain copy of context tokens, which a small model learns far sooner
    than copy-and-split: "sync/profile.py", not "sync profile py"), in order; a span is left out when the
    request or an earlier span already holds all of its catalog words."""
    vocab, have, out = _catalog_vocab(task), set(cat.words(request)), []
    for ex in exchanges:
        for span in _reply_spans(ex.question, ex.reply):
            named = {w for w in cat.words(span) if w in vocab}
            if named and not named <= have:
                out.append(span)
                have |= named
    return out


def revealed_replies(task, exchanges, request: str) -> list[str]:
    """What the replies revealed, as the default demonstrator's post-reply search copies it: each reply that
    names a catalog word the request and the earlier replies do not, whole and as written, its opener and
    final period dropped ("They won the Sando prize"; a multiple-choice letter: its option). Copying a whole
    reply continues an earlier sequence token after token, which an induction head does; copying only its
    fact ("Sando") means picking the word out of the reply, which a small model learns far less well
    (docs/experiments.md#smeared-keys-and-copy-drills)."""
    vocab, have, out = _catalog_vocab(task), set(cat.words(request)), []
    for ex in exchanges:
        named = {w for span in _reply_spans(ex.question, ex.reply) for w in cat.words(span) if w in vocab}
        if named and not named <= have:  # a letter stands for its option, which is copied instead
            out.append(_chosen_option(ex.question, ex.reply) or _without_opener(ex.reply).strip().rstrip("."))
            have |= named
    return out


@dataclass(frozen=True)
class EpisodeSkills:
    """One episode's skill verdicts; ``None`` where the episode gives no occasion for the skill."""
    request_copy: bool | None = None
    answer_use: bool | None = None


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def episode_skills(task, prompt: str, actions: list[tuple[str, str]], replies: list) -> EpisodeSkills:
    """``actions``: the episode's parsed actions in order, as (kind, argument); ``replies``: for each action,
    the ``Exchange`` of an ask (None for the others)."""
    request = request_words(prompt)
    copy = None
    if actions and actions[0][0] == "search":
        copy = _norm(actions[0][1]) == _norm(request)
    vocab, in_request = _catalog_vocab(task), set(cat.words(request))
    wanted, last = [], -1
    for i, ex in enumerate(replies):
        if ex is None:
            continue
        new = [w.lower() for w in reply_words(vocab, ex.question, ex.reply)
               if w.lower() not in in_request and w.lower() not in wanted]
        if new:
            wanted, last = wanted + new, i
    use = None
    if wanted:
        use = any(kind == "search" and set(wanted) <= set(cat.words(arg))
                  for kind, arg in actions[last + 1:])
    return EpisodeSkills(copy, use)


def _pct(flags) -> float | None:
    flags = list(flags)
    return 100.0 * sum(flags) / len(flags) if flags else None


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def summarize_skills(stats) -> dict:
    """The skill metrics (x100) of the vague episodes among ``stats`` (``reward.EpisodeStats``)."""
    vague = [s for s in stats if s.is_vague]
    copy = [s.skills.request_copy for s in vague if s.skills.request_copy is not None]
    use = [s.skills.answer_use for s in vague if s.skills.answer_use is not None]
    low = [s.score for s in vague if s.questions and all(q.effort == "low" for q in s.questions)]
    none = [s.score for s in vague if not s.questions]
    judged = [q.pref_followed for s in vague for q in s.questions if q.pref_followed is not None]
    value = None if not low or not none else 100.0 * (_mean(low) - _mean(none))
    return {"skill/request_copy": _pct(copy), "skill/answer_use": _pct(use), "skill/low_effort_value": value,
            "skill/question_compliance": _pct(judged), "skill/n_request_copy": len(copy),
            "skill/n_answer_use": len(use), "skill/n_low_effort": len(low), "skill/n_no_question": len(none),
            "skill/n_judged": len(judged)}
