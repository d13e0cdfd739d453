"""The PPP reward: productivity, proactivity, personalization, their weighted clipped sum, and eval metrics.

Contract
- The environment (``userville/agent_env.py``) fills one frozen ``EpisodeStats`` per episode (one
  ``QuestionStat`` per ``ask`` call, with the simulated user's labels). ``ppp_reward(stats, weights)`` returns a
  frozen ``RewardBreakdown``: the value of each of ``DIMENSIONS`` (productivity s, proactivity c,
  personalization p) *unweighted and unclipped*, and ``total = clip(w_prod*s + w_proact*c + w_pers*p, 0, 1)``
  (paper eq. 1, §5.1). Ablations ("w/o Proact.", "w/o Pers.") are weights set to 0.
- ``DIMENSIONS`` is the reward as data: each ``Dimension`` names itself, its weight's field in ``RewardWeights``
  and its value function. The breakdown, the GDPO components (``BatchRewards.components``), the step record,
  the progress line and ``show`` iterate it, so a new term is ``register_dimension`` (or an entry) here, plus a
  ``RewardWeights`` field and its flag to set its weight.
- Values are the released code's, not the paper text's cleaner -0.1/-0.5 (paper §4.3, §5.1; the released code's `UserReward`):
  proactivity per family and prompt kind (the family's rule, ``TaskFamily.proactivity`` in
  ``userville/families/``), personalization per preference kind (paper Table 5). Tables: docs/design.md#the-reward.
- ``summarize(breakdowns, stats)`` returns the paper's evaluation metrics (x100, paper §6.3) plus counts,
  as one flat dict of python floats/ints; ``None`` where a metric is undefined (never NaN).
- Bad input (unknown family/preference/effort, a cost outside the family's ladder, a score outside [0, 1],
  ask turns out of order) raises ``ValueError`` with one line saying what is wrong.

Deliberately left out: the paper code's quirk 1 (an untagged reply *earns* +0.1 on SWE-vague): an
unparsed reply here costs the family's "nothing" tier (medium effort). And quirk 3
(``only_begin`` is a substring search of the transcript): we check the actual ask turns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ppp_min.knobs import knob
from ppp_min.userville.agent_env import EpisodeStats, QuestionStat
from ppp_min.userville.families.registry import FAMILIES
from ppp_min.userville.preferences import SEEN, UNSEEN, episode_penalty
from ppp_min.userville.protocol import EFFORTS


@dataclass(frozen=True)
class RewardWeights:
    prod: float = knob(1.0, "reward", "productivity weight (paper: 1) (default: 2 with --gdpo, which otherwise gives "
                       "productivity a third of the signal; 1 with --no-gdpo)", "--w-prod", auto=True)
    # 0 = the paper's "w/o Proact." / "w/o Pers." ablations (paper Table 2; a weight of 0 is our reading)
    proact: float = knob(1.0, "reward", "proactivity weight (paper: 1; 0 = w/o Proact.)", "--w-proact")
    pers: float = knob(1.0, "reward", "personalization weight (paper: 1; 0 = w/o Pers.)", "--w-pers")
    clip: bool = knob(True, "reward", "do not clip the reward to [0, 1] (paper clips)", "--no-clip",  # eq. 1
                      cli_default=False, parse=lambda no_clip: not no_clip, action="store_true")

    def of(self, dim: Dimension) -> float:
        """The weight of a dimension: the field its ``weight`` names, else the dimension's default."""
        return float(getattr(self, dim.weight)) if hasattr(self, dim.weight) else dim.default

    @property
    def vector(self) -> tuple[float, ...]:
        """One weight per ``DIMENSIONS``, in the order of ``BatchRewards.components``."""
        return tuple(self.of(d) for d in DIMENSIONS)

    def __post_init__(self):
        for name in ("prod", "proact", "pers"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"RewardWeights.{name} must be a finite number >= 0, got {v!r}")


@dataclass(frozen=True)
class RewardBreakdown:
    values: tuple[tuple[str, float], ...]  # (name, value) per dimension, unweighted and unclipped
    total: float  # clip(Σ_k w_k * value_k, 0, 1): clip(w_prod*s + w_proact*c + w_pers*p, 0, 1), eq. 1
    ask_ok: bool  # c >= 0: the episode's questions cost nothing (paper §6.3)
    pref_ok: bool | None  # f_pref == 0; None where undefined (no ask and f_pref == 0, or the none kind)
    pref_penalty: float | None  # f_pref itself (None for the none kind)

    def value(self, name: str) -> float:
        return dict(self.values)[name]

    @property
    def components(self) -> tuple[float, ...]:
        return tuple(v for _, v in self.values)

    def record(self) -> dict:
        """Flat, as sample records and ``show`` have it: each dimension by name, then the total and verdicts."""
        return {**dict(self.values), "total": self.total, "ask_ok": self.ask_ok, "pref_ok": self.pref_ok,
                "pref_penalty": self.pref_penalty}


BONUS = 0.05  # compliance (personalization) bonus (released code)
MISSING_ASK = -0.1  # vague prompt, nothing asked, s < 1 (released code)


def _level(q: QuestionStat, family: str) -> int:
    # An unparsed reply counts as the "nothing" tier (medium effort): the released code would reward it (its quirk, not kept).
    return q.cost if q.parsed else FAMILIES[family].ladder.nothing


def proactivity(stats: EpisodeStats) -> float:
    """The cost reward c of the paper code (``UserReward.calculate_cost_reward``; paper §5.1): the family's
    rule per prompt kind (``TaskFamily.proactivity``), then the term every family shares."""
    levels = [_level(q, stats.family) for q in stats.questions]
    c = FAMILIES[stats.family].proactivity(levels, stats.is_vague)
    if stats.is_vague and not levels and stats.score < 1:
        c += MISSING_ASK  # every family: a vague prompt, no question, and not a perfect answer
    # All constants are multiples of 0.05: rounding removes float dust so that ask_ok (c >= 0) is exact.
    return round(c, 9)


def preference_penalty(stats: EpisodeStats) -> float | None:
    """f_pref (paper §5.1, Table 5): None for the none kind, else a non-positive penalty. The values live
    with the preferences: ``userville.preferences.episode_penalty``."""
    return episode_penalty(stats.preference, stats.questions)


def personalization(stats: EpisodeStats) -> float:
    """p = f_pref, plus the compliance bonus on a vague prompt with at least one question (released code); 0 for
    the none kind (no_preference, professional: never a penalty, never the bonus)."""
    f = preference_penalty(stats)
    if f is None:
        return 0.0
    return f + (BONUS if stats.is_vague and stats.questions and f == 0 else 0.0)


@dataclass(frozen=True)
class Dimension:
    """One dimension of the PPP reward (paper eq. 1): its name in the breakdown, the step record and the
    metrics; the ``RewardWeights`` field that weighs it (flag ``--w-<weight>``; a dimension without a field gets
    ``default``); its value of an episode, unweighted and unclipped."""
    name: str
    weight: str
    value: Callable[[EpisodeStats], float]
    default: float = 1.0


# The reward's dimensions, in order: the breakdown, the GDPO components, the step record and show iterate
# them. A new term is one entry here (``register_dimension``) and, to set its weight, a RewardWeights field.
DIMENSIONS: list[Dimension] = [
    Dimension("productivity", "prod", lambda stats: float(stats.score)),  # s: F1 / exact match (§4.1)
    Dimension("proactivity", "proact", lambda stats: proactivity(stats)),  # c (§5.1)
    Dimension("personalization", "pers", lambda stats: personalization(stats)),  # p (§5.1, Table 5)
]


def register_dimension(dim: Dimension) -> None:
    """Add a reward dimension after the others (a name must be new)."""
    if any(d.name == dim.name for d in DIMENSIONS):
        raise ValueError(f"reward dimension {dim.name!r} exists already")
    DIMENSIONS.append(dim)


def ppp_reward(stats: EpisodeStats, weights: RewardWeights = RewardWeights()) -> RewardBreakdown:
    """The episode's reward (paper eq. 1 with the released code's values; paper §5.1)."""
    values = tuple((d.name, d.value(stats)) for d in DIMENSIONS)
    total = 0.0
    for d, (_, v) in zip(DIMENSIONS, values):
        total += weights.of(d) * v  # w_prod*s + w_proact*c + w_pers*p (+ any added dimension)
    if weights.clip:
        total = min(max(total, 0.0), 1.0)  # clip(R, 0, 1) (paper eq. 1)
    f = preference_penalty(stats)
    pref_ok = None if f is None else ((f == 0) if (stats.questions or f != 0) else None)  # defined when asked
    return RewardBreakdown(values, total, ask_ok=proactivity(stats) >= 0, pref_ok=pref_ok, pref_penalty=f)


@dataclass(frozen=True)
class BatchRewards:
    """The rewards of a batch of episodes together with the weights that made them: what the advantage reads.

    ``totals``: the clipped scalar R_i (paper eq. 1); ``components``: one value per ``DIMENSIONS`` ((s, c, p)
    in the paper) per episode, unweighted and unclipped (GDPO normalises each and weighs them with ``weights.vector``)."""
    breakdowns: tuple[RewardBreakdown, ...]
    weights: RewardWeights

    @property
    def totals(self) -> list[float]:
        return [b.total for b in self.breakdowns]

    @property
    def components(self) -> list[tuple[float, ...]]:
        return [b.components for b in self.breakdowns]


def score_batch(stats, weights: RewardWeights) -> BatchRewards:
    """``ppp_reward`` of every episode's stats, with the weights kept beside the rewards."""
    return BatchRewards(tuple(ppp_reward(s, weights) for s in stats), weights)


def _pct(values) -> float | None:
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else None


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def summarize(breakdowns, stats) -> dict:
    """Evaluation metrics of a set of episodes (paper §6.3, Table 2).

    Percentages (x100): ``productivity`` (mean s), ``proactivity`` (mean ask_ok), ``personalization``
    (mean pref_ok over episodes where it is defined), ``ask_ratio`` (+ ``_vague`` / ``_precise``),
    ``answer_rate``, ``personalization_seen`` / ``_unseen`` and ``personalization/<preference>``.
    Per-episode means (not x100): ``questions_per_episode`` and ``questions_low|medium|high``; raw reward
    means ``reward/total|productivity|proactivity|personalization``. Counts: ``n_episodes``, ``n_vague``,
    ``n_precise``, ``n_pref_defined``. A metric with no episode to average is ``None``.
    """
    breakdowns, stats = list(breakdowns), list(stats)
    if len(breakdowns) != len(stats):
        raise ValueError(f"summarize: {len(breakdowns)} breakdowns but {len(stats)} episode stats; "
                         "pass one of each per episode, in the same order")
    pairs = list(zip(breakdowns, stats))
    defined = [(b, e) for b, e in pairs if b.pref_ok is not None]
    out: dict = {
        "productivity": _pct(b.value("productivity") for b in breakdowns),
        "proactivity": _pct(b.ask_ok for b in breakdowns),
        "personalization": _pct(b.pref_ok for b, _ in defined),
        "personalization_seen": _pct(b.pref_ok for b, e in defined if e.preference in SEEN),
        "personalization_unseen": _pct(b.pref_ok for b, e in defined if e.preference in UNSEEN),
        "ask_ratio": _pct(bool(e.questions) for e in stats),
        "ask_ratio_vague": _pct(bool(e.questions) for e in stats if e.is_vague),
        "ask_ratio_precise": _pct(bool(e.questions) for e in stats if not e.is_vague),
        "answer_rate": _pct(e.answered for e in stats),
        "questions_per_episode": _mean(len(e.questions) for e in stats),
    }
    for effort in EFFORTS:
        out[f"questions_{effort}"] = _mean(sum(q.effort == effort for q in e.questions) for e in stats)
    out["reward/total"] = _mean(b.total for b in breakdowns)
    for name in dict(breakdowns[0].values) if breakdowns else ():
        out[f"reward/{name}"] = _mean(b.value(name) for b in breakdowns)
    for name in sorted({e.preference for _, e in defined}):
        out[f"personalization/{name}"] = _pct(b.pref_ok for b, e in defined if e.preference == name)
    out.update(n_episodes=len(stats), n_vague=sum(e.is_vague for e in stats),
               n_precise=sum(not e.is_vague for e in stats), n_pref_defined=len(defined))
    return out
