"""Batched multi-turn episodes on the KV-cached sampler: model <-> tools <-> simulated user.

Contract
- ``rollout(model, tok, specs, client, cfg, generator) -> list[Episode]``: every ``EpisodeSpec`` (a task,
  a preference, vague or precise, a group id) becomes ``cfg.group_size`` episodes. Each distinct prompt is
  prefilled once and forked to its group's rows; each turn decodes every live row until ``<|im_end|>`` or
  the per-turn budget, applies the actions (``agent_env.step_all``: searches locally, all questions in one
  batched simulator call) and appends the observations with ``Sampler.extend`` — the conversation is never
  re-encoded. Row ``i*G + j`` is sample ``j`` of spec ``i``.
- ``Episode`` (frozen): token ids, the loss mask (1 exactly on tokens the policy sampled, its ``<|im_end|>``
  included; 0 on the prompt, observations, and tokens the environment forced), the sampler's logprobs,
  the group id, the transcript as text, and the ``EpisodeStats`` the reward needs.

Deliberately left out: asynchronous / off-policy rollouts (the paper's stack may have used them) and
dropping over-long episodes from the loss (verl's ``mask_overlong``): a truncated episode simply has no
answer and scores 0. ``Episode.truncated`` marks it (the sample records show it; a trainer could drop
such episodes from the loss with it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ppp_min.knobs import knob
from ppp_min.lm.sampler import Sampler, SamplingParams
from ppp_min.userville.agent_env import EpisodeState, EpisodeStats, initial_messages, step_all


@dataclass(frozen=True)
class RolloutConfig:
    group_size: int = knob(8, "rl", "G rollouts per prompt (paper: 8)")  # paper §6.2 (rollout.n = 8)
    max_turns: int = knob(6, "rl", "agent turns per episode (%(default)s)")
    max_new_tokens: int = knob(64, "rl", "tokens per agent turn (%(default)s)")  # the paper allows 2048 (36B model)
    temperature: float = knob(1.0, "rl", "rollout and loss temperature (paper: 1)")  # released config: T 1, top-p 1
    top_p: float = 1.0
    top_k: int = 0
    max_len: int = 1024  # cache length per row; an episode that would overflow it ends truncated

    def __post_init__(self):
        for name in ("group_size", "max_turns", "max_new_tokens", "max_len"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):  # 0 = greedy (evaluation only)
            raise ValueError(f"--temperature must be a finite number >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"top_p must be in (0, 1] and top_k >= 0, got {self.top_p!r}, {self.top_k!r}")


@dataclass(frozen=True)
class EpisodeSpec:
    task: object  # userville.tasks.Task
    preference: str
    is_vague: bool
    group_id: int


@dataclass(frozen=True)
class Episode:
    group_id: int
    task_id: str
    family: str
    preference: str
    is_vague: bool
    ids: tuple[int, ...]
    loss_mask: tuple[int, ...]
    logprobs: tuple[float, ...]
    messages: tuple[tuple[str, str], ...]
    stats: EpisodeStats
    truncated: bool  # ended because the next turn would not fit max_len (no answer, score 0)


@torch.no_grad()
def rollout(model, tok, specs: list[EpisodeSpec], client, cfg: RolloutConfig,
            generator: torch.Generator) -> list[Episode]:
    G = cfg.group_size
    prompts = [tok.render(initial_messages(s.task, s.preference, s.is_vague), add_generation_prompt=True)
               for s in specs]
    max_len = min(cfg.max_len, model.config.max_position_embeddings)
    longest = max(len(p) for p in prompts)
    if longest + cfg.max_new_tokens > max_len:
        raise ValueError(f"a prompt of {longest} tokens does not fit max_len={max_len}")
    sampler = Sampler(model, batch_rows=len(specs) * G, max_len=max_len)
    sampler.prefill(prompts, group_size=G)
    states = [EpisodeState(s.task, s.preference, s.is_vague) for s in specs for _ in range(G)]
    truncated = [False] * len(states)
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens)
    stop = {tok.im_end_id}
    live = list(range(len(states)))
    while live:
        gens = sampler.decode(live, params, stop, generator)
        texts = [tok.decode([t for t in g.ids if t != tok.im_end_id]) for g in gens]
        observations = step_all([states[r] for r in live], texts, client, cfg.max_turns)
        next_live, chunks = [], []
        for r, g, obs in zip(live, gens, observations):
            if obs is None:
                continue
            chunk = tok.observation_turn(obs, close_assistant=not g.stopped)
            if sampler.length(r) + len(chunk) + cfg.max_new_tokens > max_len:
                states[r].done, truncated[r] = True, True  # out of context: no answer, score 0
                continue
            next_live.append(r)
            chunks.append(chunk)
        if next_live:
            sampler.extend(next_live, chunks)
        live = next_live
    episodes = []
    for r, st in enumerate(states):
        spec = specs[r // G]
        ids, sampled, logprobs = sampler.transcript(r)
        episodes.append(Episode(group_id=spec.group_id, task_id=spec.task.task_id, family=spec.task.family,
                                preference=spec.preference, is_vague=spec.is_vague, ids=tuple(ids),
                                loss_mask=tuple(sampled), logprobs=tuple(logprobs),
                                messages=tuple(st.messages),
                                stats=st.stats(), truncated=truncated[r]))
    return episodes
