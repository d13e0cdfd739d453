"""Held-out evaluation: run agents on (task, preference, vague|precise) items and compute the paper's metrics.

Contract
- ``eval_items(tasks, preferences, vague=True)``: the evaluation grid (paper Table 2: vague prompts averaged over
  preferences; precise prompts reported separately), as ``rollout.EpisodeSpec`` with group id = index.
- ``run_model(model, tok, specs, client, cfg, seed, batch)``: one sampled episode per spec (group size 1),
  deterministic for a seed; ``run_policy(policy, specs, client, max_turns, workers=1)``: the same for a text policy
  (scripted baselines, API agents): ``policy(state) -> str`` returns the next assistant turn.
- ``metrics(stats_list, weights) -> dict``: ``reward.summarize`` over vague episodes per family and overall,
  (``reward.summarize`` includes per-preference personalization) and the same on precise prompts, plus the
  skill metrics of the vague episodes (``skills.summarize_skills``: ``skill/request_copy`` etc.). The keys ``productivity``,
  ``proactivity``, ``personalization`` (x100) are what train.py's last JSON line reports.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from .agent_env import EpisodeState, play
from .reward import RewardWeights, ppp_reward, summarize
from .rollout import EpisodeSpec, RolloutConfig, rollout
from .skills import summarize_skills


def eval_items(tasks, preferences, vague: bool = True) -> list[EpisodeSpec]:
    specs = []
    for t in tasks:
        for p in preferences:
            specs.append(EpisodeSpec(task=t, preference=p, is_vague=vague, group_id=len(specs)))
    return specs


def run_model(model, tok, specs, client, cfg: RolloutConfig, seed: int = 0, batch: int = 128,
              progress=None, episodes: bool = False) -> list:
    """Sample one episode per spec with the model; returns their ``EpisodeStats`` in order (the whole
    ``Episode``s with ``episodes=True``)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    one = replace(cfg, group_size=1)
    out, t0 = [], time.time()
    for i in range(0, len(specs), batch):
        out.extend(ep if episodes else ep.stats for ep in rollout(model, tok, specs[i:i + batch], client, one, gen))
        if progress:
            progress(len(out), len(specs), time.time() - t0)
    model.train(was_training)
    return out


def run_policy(policy, specs, client, max_turns: int = 6, workers: int = 1) -> list:
    """Run a text policy (``policy(state) -> assistant turn text``) on every spec, all specs in lock step
    (``agent_env.play``; ``workers`` policy calls at a time); returns their ``EpisodeStats`` in order."""
    states = [EpisodeState(s.task, s.preference, s.is_vague) for s in specs]
    return [st.stats() for st in play(policy, states, client, max_turns, workers)]


def metrics(stats_list, weights: RewardWeights = RewardWeights()) -> dict:
    """Paper Table 2 metrics (x100) on vague episodes, per family and overall; precise ask ratio aside."""
    vague = [s for s in stats_list if s.is_vague]
    precise = [s for s in stats_list if not s.is_vague]
    out = {}
    if vague:
        out.update(summarize([ppp_reward(s, weights) for s in vague], vague))
        out.update(summarize_skills(vague))  # request copy, answer use, value of a question (skills.py)
        for fam in sorted({s.family for s in vague}):
            sub = [s for s in vague if s.family == fam]
            out[fam] = summarize([ppp_reward(s, weights) for s in sub], sub)
    if precise:
        out["precise"] = summarize([ppp_reward(s, weights) for s in precise], precise)
    return out
