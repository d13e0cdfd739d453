"""Held-out evaluation: one ``EvalConfig`` and one sampling path for train.py, ``eval.py`` and ``eval.py show``.

Contract
- ``EvalConfig`` (frozen) is everything that decides which episodes an evaluation samples. Its defaults ARE
  train.py's evaluation defaults: ``temperature`` 1.0 (the policy as trained, seeded; 0 = greedy),
  ``max_new_tokens`` 64 and ``max_turns`` 6 (the rollout's), ``batch`` 64 episodes decoded together, ``seed``
  (the run's seed: the tasks come from it, sampling from ``seed + SAMPLE_SEED_OFFSET``), ``tasks`` 24 per
  family (0 = no evaluation), ``split`` test (or val), ``families`` both, ``preferences`` all 20. A bad value
  raises ``ValueError`` naming the flag (train.py and eval.py accept the same names: the fields' knobs).
  ``run.config.eval_config(RunConfig)`` is the one derivation of a training run's ``EvalConfig``;
  ``add_eval_flags`` / ``eval_config_from_args`` give eval.py and ``eval.py show`` the same flags and defaults.
- ``eval_tasks(ecfg)``: the held-out tasks, family by family. ``eval_specs(ecfg, tasks)``: the grid (paper
  Table 2: every task's vague prompt with every preference; Fig. 6: its precise prompt once, with
  ``no_preference``), as ``rollout.EpisodeSpec`` with group id = index; ``eval_items`` builds one part.
- ``run_model(model, tok, specs, client, ecfg, progress=None, only=None) -> list[Episode]``: one sampled
  episode per spec, ``ecfg.batch`` consecutive specs decoded together; batch ``b`` samples from a generator
  seeded with ``batch_seed(ecfg, b)``, so one batch alone samples exactly what it samples in the whole
  evaluation. ``only`` (spec indices): just those episodes, in that order, sampling only the batches that hold
  them (how ``eval.py show MODEL_DIR`` shows measured episodes). The rows of a batch consume one generator,
  so the batch size changes the tokens drawn: it is part of the config. Exact for the same weights, device
  and torch thread count (floating-point sums may differ elsewhere).
- ``run_policy(policy, specs, client, max_turns, workers=1)``: the same for a text policy (scripted
  baselines, API agents): ``policy(state) -> str`` returns the next assistant turn.
- ``metrics(stats_list, weights) -> EvalMetrics``: ``reward.summarize`` over vague episodes, per family and overall
  (per-preference personalization included), plus the skill metrics of the vague episodes
  (``skills.summarize_skills``: ``skill/request_copy`` etc.), and on precise prompts (``precise``).
  ``headline(m)``: the figures train.py prints and returns for each evaluation (``sft``, ``final``) and eval.py
  writes per agent as ``summary``: productivity / proactivity / personalization (x100) and the rest of
  ``HEADLINE_KEYS``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import torch

from ppp_min.knobs import add_flag, flag_name, flag_values, knob, knob_fields
from ppp_min.rl.reward import RewardWeights, ppp_reward, summarize
from ppp_min.rl.rollout import EpisodeSpec, RolloutConfig, rollout
from ppp_min.userville.agent_env import EpisodeState, play
from ppp_min.userville.families.registry import FAMILIES, parse_family
from ppp_min.userville.preferences import PREFERENCES, parse_prefs
from ppp_min.userville.skills import summarize_skills
from ppp_min.userville.tasks import make_tasks

EVAL_SPLITS = ("test", "val")  # never train: its tasks are the ones trained on
SAMPLE_SEED_OFFSET = 7  # sampling seed = run seed + 7: not the seed of the tasks, nor of any RL step
HEADLINE_KEYS = ("productivity", "proactivity", "personalization", "personalization_seen",
                 "personalization_unseen", "ask_ratio", "answer_rate", "questions_low", "questions_medium",
                 "questions_high", "skill/request_copy", "skill/answer_use", "skill/low_effort_value",
                 "skill/question_compliance")

def _int(v, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation samples (see the module docstring); the defaults are train.py's."""
    temperature: float = knob(1.0, "eval", "sampling temperature of model agents (default %(default)s, train.py's "
                              "--eval-temperature; 0 = greedy)", "--eval-temperature", aliases=("--temperature",))
    # ^ the policy as trained, seeded (a model this small flips modes under greedy)
    max_new_tokens: int = knob(RolloutConfig.max_new_tokens, "eval", "tokens per turn of a model agent (default "
                               "%(default)s, train.py's --max-new-tokens)")  # as in the rollouts
    max_turns: int = knob(RolloutConfig.max_turns, "eval", "agent turns per episode (default %(default)s, train.py's "
                          "--max-turns)")
    # Episodes decoded together. The sampler's static KV cache holds max_len (1024) positions per row: 128 rows
    # of the small preset are ~540 MB, which set the default run's peak RSS (1,558 MiB); 64 halve it.
    batch: int = knob(64, "eval", "episodes a model agent decodes together (default %(default)s, train.py's "
                      "--eval-batch); the tokens sampled depend on it", "--eval-batch", aliases=("--batch",),
                      metavar="N")
    seed: int = knob(0, "eval", f"the run's seed (train.py --seed): tasks from it, sampling from seed + "
                     f"{SAMPLE_SEED_OFFSET}, scripted agents from it (default %(default)s)")
    tasks: int = knob(24, "eval", "held-out tasks per family (default %(default)s, train.py's --eval-tasks)",
                      "--eval-tasks", aliases=("--tasks",), metavar="N")
    split: str = knob("test", "eval", "held-out split: test (report) or val (choose settings) (default "
                      "%(default)s)", "--eval-split", choices=list(EVAL_SPLITS))
    families: tuple[str, ...] = knob(tuple(FAMILIES), "eval", "task family (paper: SWE-Func-Loc / BrowseComp-Plus; "
                                     "default both: every registered family)", "--family", cli_default="both",
                                     choices=[*FAMILIES, "both"],
                                     parse=parse_family)
    preferences: tuple[str, ...] = knob(tuple(PREFERENCES), "eval", "preferences of the vague prompts: all | seen | "
                                        "unseen | comma-separated names (default all = the paper's 20, as "
                                        "train.py)", "--prefs", cli_default="all", parse=parse_prefs)
    # ^ of the vague prompts (precise ones: no_preference)

    def __post_init__(self):
        def bad(name, want):
            flag = flag_name(next(f for f in fields(self) if f.name == name))
            raise ValueError(f"{flag} must be {want}, got {getattr(self, name)!r}")
        t = self.temperature
        if not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t >= 0):
            bad("temperature", "a finite number >= 0")
        for name in ("max_new_tokens", "max_turns", "batch"):
            if not _int(getattr(self, name), 1):
                bad(name, "an integer >= 1")
        if not _int(self.tasks, 0):
            bad("tasks", "an integer >= 0")
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool)):
            bad("seed", "an integer")
        if self.split not in EVAL_SPLITS:
            bad("split", " or ".join(EVAL_SPLITS))
        if not self.families or any(f not in FAMILIES for f in self.families):
            bad("families", f"families among {', '.join(FAMILIES)}")
        if not self.preferences or any(p not in PREFERENCES for p in self.preferences):
            bad("preferences", "preference names")

    @property
    def sampling_seed(self) -> int:
        return self.seed + SAMPLE_SEED_OFFSET

    def rollout_config(self) -> RolloutConfig:
        return RolloutConfig(group_size=1, max_turns=self.max_turns, max_new_tokens=self.max_new_tokens,
                             temperature=self.temperature)


def batch_seed(ecfg: EvalConfig, b: int) -> int:
    """The sampling seed of the evaluation's batch ``b`` (derived like an RL step's, loop.rl_phase)."""
    return hash((ecfg.sampling_seed, b)) & 0x7FFFFFFF


def eval_tasks(ecfg: EvalConfig) -> list:
    return [t for f in ecfg.families for t in make_tasks(f, ecfg.split, ecfg.tasks, ecfg.seed)]


def eval_items(tasks, preferences, vague: bool = True, start: int = 0) -> list[EpisodeSpec]:
    specs = []
    for t in tasks:
        for p in preferences:
            specs.append(EpisodeSpec(task=t, preference=p, is_vague=vague, group_id=start + len(specs)))
    return specs


def eval_specs(ecfg: EvalConfig, tasks=None) -> list[EpisodeSpec]:
    """The evaluation grid: vague prompts x ``ecfg.preferences`` (Table 2), then each precise prompt once."""
    tasks = eval_tasks(ecfg) if tasks is None else list(tasks)
    vague = eval_items(tasks, ecfg.preferences)
    return vague + eval_items(tasks, ("no_preference",), vague=False, start=len(vague))


def run_model(model, tok, specs, client, ecfg: EvalConfig, progress=None, only=None) -> list:
    """Sample one ``Episode`` per spec with the model (see the module docstring), in spec order, or the
    episodes of the spec indices ``only`` in that order."""
    specs, B = list(specs), ecfg.batch
    if only is not None and any(not 0 <= i < len(specs) for i in only):
        raise ValueError(f"spec index out of range: the evaluation has {len(specs)} episodes")
    starts = range(0, len(specs), B) if only is None else sorted({i // B * B for i in only})
    device = next(model.parameters()).device
    was_training, out, t0 = model.training, {}, time.time()
    model.eval()
    try:
        for start in starts:
            gen = torch.Generator(device=device).manual_seed(batch_seed(ecfg, start // B))
            for k, ep in enumerate(rollout(model, tok, specs[start:start + B], client, ecfg.rollout_config(), gen)):
                out[start + k] = ep
            if progress:
                progress(len(out), len(specs) if only is None else len(starts) * B, time.time() - t0)
    finally:
        model.train(was_training)
    return [out[i] for i in (range(len(specs)) if only is None else only)]


def run_policy(policy, specs, client, max_turns: int = 6, workers: int = 1) -> list:
    """Run a text policy (``policy(state) -> assistant turn text``) on every spec, all specs in lock step
    (``agent_env.play``; ``workers`` policy calls at a time); returns their ``EpisodeStats`` in order."""
    states = [EpisodeState(s.task, s.preference, s.is_vague) for s in specs]
    return [st.stats() for st in play(policy, states, client, max_turns, workers)]


@dataclass(frozen=True)
class EvalMetrics:
    """What ``metrics`` returns: flat summaries (metric name -> number or None, ``reward.summarize``'s keys):
    of the vague episodes, with the skill metrics; of each family's vague episodes; of the precise prompts."""
    vague: dict
    families: tuple[tuple[str, dict], ...]
    precise: dict | None

    def family(self, name: str) -> dict | None:
        return dict(self.families).get(name)


def metrics(stats_list, weights: RewardWeights = RewardWeights()) -> EvalMetrics:
    """Paper Table 2 metrics (x100) on vague episodes, per family and overall; precise prompts apart."""
    vague = [s for s in stats_list if s.is_vague]
    precise = [s for s in stats_list if not s.is_vague]
    overall, families = {}, []
    if vague:
        overall.update(summarize([ppp_reward(s, weights) for s in vague], vague))
        overall.update(summarize_skills(vague))  # request copy, answer use, value of a question (skills.py)
        for fam in sorted({s.family for s in vague}):
            sub = [s for s in vague if s.family == fam]
            families.append((fam, summarize([ppp_reward(s, weights) for s in sub], sub)))
    return EvalMetrics(overall, tuple(families),
                       summarize([ppp_reward(s, weights) for s in precise], precise) if precise else None)


def headline(m: EvalMetrics) -> dict:
    """The short summary of ``metrics``: ``HEADLINE_KEYS`` (floats to 2 decimals) and the precise ask ratio.
    None of these depend on the reward weights."""
    short = {k: (round(m.vague[k], 2) if isinstance(m.vague.get(k), float) else m.vague.get(k))
             for k in HEADLINE_KEYS}
    short["ask_ratio_precise"] = (m.precise or {}).get("ask_ratio")
    return short


# ------------------------------------------------------------------------ the CLIs' evaluation flags
def add_eval_flags(p, title: str = "evaluation (EvalConfig; every default is train.py's)"):
    """The evaluation flags of eval.py and ``eval.py show``, named as in train.py, from EvalConfig's fields."""
    g, d = p.add_argument_group(title), EvalConfig()
    for f in knob_fields(EvalConfig):
        add_flag(g, f, f.name, getattr(d, f.name))
    return g


def eval_config_from_args(args) -> EvalConfig:
    """``add_eval_flags``' namespace -> EvalConfig; ValueError (one line) on a bad value."""
    if args.tasks < 1:  # a CLI evaluation needs tasks (train.py's --eval-tasks 0 means "none")
        raise ValueError(f"--eval-tasks must be >= 1, got {args.tasks}")
    return EvalConfig(**flag_values(args, EvalConfig))


def describe(ecfg: EvalConfig) -> dict:
    """The config as JSON (for the run's summary and eval.py's --json)."""
    return {f.name: (list(v) if isinstance(v := getattr(ecfg, f.name), tuple) else v) for f in fields(ecfg)}
