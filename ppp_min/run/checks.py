"""What a run checks before it builds or allocates anything big: its output directory, the resume contract,
and whether its decoding batches fit the context and the memory.

Contract (``setup.setup`` calls both; every refusal is a one-line ``ValueError``)
- ``prepare_out(cfg, rank, world, say) -> RunConfig``: the output directory (``out_dir.prepare_run_dir``, rank
  0); on ``--resume``, the checkpoint's metadata alone is read, its settings must satisfy the resume contract
  (``resume.check``) and metrics.jsonl / samples.jsonl are cut back to their sizes at that checkpoint, so no
  step is logged twice. A run that stopped before its first checkpoint starts again from the beginning: the
  returned config then has ``resume`` off, on every rank, and ``say`` tells the user.
- ``check_sizes(cfg, model, tok, tasks, eval_rows, device) -> None``: the longest prompt of ``tasks`` plus one
  turn of ``--max-new-tokens`` must fit an episode's positions; a rollout of ``--prompts-per-step x
  --group-size`` rows and an evaluation batch of ``eval_rows`` rows must fit the memory left beside the
  training state (gradients and AdamW's two moments; the KL reference model too) (``bounds.check_decode``).
- ``check_batch(model, rows, distinct, longest, max_len, reserved, what, lower)``: one such check;
  ``check_eval_batch(model, tok, specs, ecfg, what)``: eval.py's, for ``--eval-batch`` episodes of ``specs``;
  ``longest_prompt(tok, tasks)``: the prompt length they assume.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch.distributed as dist

from ppp_min.lm.bounds import check_decode
from ppp_min.lm.presets import count_params
from ppp_min.run import resume
from ppp_min.run.checkpoint import read_meta
from ppp_min.run.config import RunConfig
from ppp_min.run.out_dir import CHECKPOINT, prepare_run_dir
from ppp_min.userville.agent_env import initial_messages
from ppp_min.userville.preferences import PREFERENCES


def prepare_out(cfg: RunConfig, rank: int, world: int, say) -> RunConfig:
    ckpt = os.path.join(cfg.out, CHECKPOINT)
    if rank == 0:
        restart = prepare_run_dir(cfg.out, cfg.resume, cfg.overwrite)
        if cfg.resume and not restart:
            meta = read_meta(ckpt)
            resume.check(cfg, meta["config"], meta["step"])
            cut = resume.cut_logs(cfg.out, meta["config"].get("log_sizes"))
            if cut:
                say(f"--resume: {' and '.join(cut)} cut back to the checkpoint's step {meta['step']}")
        if restart:
            say(f"--resume: {cfg.out} holds no checkpoint yet (the run stopped before its first one); "
                "starting it from the beginning")
    if world > 1:
        dist.barrier()  # the other ranks wait until rank 0 has checked (and maybe cleaned) the directory
    if cfg.resume and not os.path.isfile(ckpt):  # rank 0 refused any other way to lack a checkpoint
        cfg = replace(cfg, resume=False)
    return cfg


def longest_prompt(tok, tasks) -> int:
    """Tokens of the longest opening prompt among ``tasks`` (vague and precise, the longest preference text)."""
    pref = max(PREFERENCES, key=lambda n: len(PREFERENCES[n].text))
    return max(len(tok.render(initial_messages(t, pref, vague), add_generation_prompt=True))
               for t in tasks for vague in (True, False))


def check_sizes(cfg: RunConfig, model, tok, tasks, eval_rows: int, device) -> None:
    mc = model.config
    max_len = min(cfg.rollout.max_len, mc.max_position_embeddings)
    longest = longest_prompt(tok, tasks)
    if longest + cfg.rollout.max_new_tokens > max_len:
        raise ValueError(f"--max-new-tokens {cfg.rollout.max_new_tokens}: a prompt of {longest} tokens plus one "
                         f"turn does not fit the {max_len} positions of an episode; lower --max-new-tokens")
    reserved = count_params(model) * next(model.parameters()).element_size() * (3 + (cfg.grpo.kl_beta > 0))
    P, G = cfg.rl.prompts_per_step, cfg.rollout.group_size
    if cfg.rl.steps:
        check_batch(model, P * G, P, longest, max_len, reserved,
                    f"a rollout of --prompts-per-step {P} x --group-size {G} = {P * G} episodes",
                    "lower --prompts-per-step or --group-size")
    if eval_rows:
        check_batch(model, eval_rows, eval_rows, longest, max_len, reserved,
                    f"an evaluation batch of {eval_rows} episodes", "lower --eval-tasks")


def check_batch(model, rows: int, distinct: int, longest: int, max_len: int, reserved: int, what: str,
                lower: str) -> None:
    """``bounds.check_decode`` for this model, on its device and in its dtype."""
    p = next(model.parameters())
    check_decode(model.config, rows, distinct, longest, max_len, p.device, reserved, what, lower, p.element_size())


def check_eval_batch(model, tok, specs, ecfg, what: str) -> None:
    rows = min(ecfg.batch, len(specs))
    longest = longest_prompt(tok, {s.task.task_id: s.task for s in specs}.values())
    max_len = min(ecfg.rollout_config().max_len, model.config.max_position_embeddings)
    check_batch(model, rows, rows, longest, max_len, 0, f"{what} ({rows} episodes decoded together)",
                "lower --eval-batch")
