"""The PPP training run behind ``train.py``, in phases: setup, warm start, RL, evaluation, saving.

Contract: ``run(cfg: RunConfig) -> dict`` returns the final JSON summary: ``wall_s``, ``peak_rss_mb``, the
held-out metrics of the SFT model (``sft``) and of the final model (``final``): productivity / proactivity
/ personalization (x100, vague prompts), seen / unseen personalization and the ask ratios; ``time_s`` (seconds
per phase: warm_start, rollout, update, eval) and ``throughput`` (tokens/s, GFLOP/s and MFU of the SFT and
update steps). Bad input raises ``TrainError`` (one line; train.py exits 2). A run that cannot go on raises
``TrainFailure`` (one line; exit 1) that names the checkpoint to ``--resume`` from: a simulator still down after
``--sim-retry-s`` (a checkpoint of the last finished step is written first), or a write that failed (a full
disk: the last checkpoint is intact, checkpoints being written atomically). Each checkpoint stores the run's
settings (``resume.record``: what ``--resume`` compares) and the sizes of the logs (what it cuts them back to).
``grpo_step`` is one step of the paper's loop (rollout -> reward -> advantage -> update), on its own.
Seeds are derived from (seed, step, rank), so a resumed run samples exactly what an uninterrupted one would.
The KL reference (``--kl-beta`` > 0) is the frozen model RL started from, saved as OUT/sft_model (the initial
model when there is no warm start) and loaded from there by ``--resume``, never the resumed policy.
"""

from __future__ import annotations

import copy
import os
import random
import time
from contextlib import ExitStack

import torch

from ppp_min.evals.evaluation import describe
from ppp_min.machine.resources import is_disk_full, trim_freed_memory
from ppp_min.machine.speed import PEAK_METHOD, PeakMeter
from ppp_min.rl.reward import DIMENSIONS
from ppp_min.rl.rollout import EpisodeSpec
from ppp_min.rl.sft import WarmStep, copy_drills, encode_demo, length_batches, warm_start
from ppp_min.rl.step import StepResult, grpo_step
from ppp_min.run import resume, warm_cache
from ppp_min.run.checkpoint import CheckpointError, last_good, load_checkpoint, save_checkpoint
from ppp_min.run.config import RunConfig
from ppp_min.run.out_dir import CHECKPOINT
from ppp_min.run.setup import Run, TrainError, TrainFailure, evaluate, setup
from ppp_min.userville.client import SimulatorError
from ppp_min.userville.preferences import PREFERENCES
from ppp_min.weights.hf_io import load_pretrained


def step_record(step: int, res: StepResult) -> dict:
    """The metrics.jsonl line of an RL step: reward components, asking behaviour, the update's figures."""
    n, eps, bds = len(res.episodes), res.episodes, res.rewards.breakdowns
    rec = {"phase": "rl", "step": step, "reward": sum(res.rewards.totals) / n,
           **{d.name: sum(b.value(d.name) for b in bds) / n for d in DIMENSIONS},
           "ask_ratio": _ask_share(eps),
           **{f"ask_ratio_{kind}": _ask_share([e for e in eps if e.stats.is_vague == vague])
              for kind, vague in (("vague", True), ("precise", False))},
           "mean_len": sum(len(e.ids) for e in eps) / n, "rollout_s": res.rollout_s, "update_s": res.update_s}
    for effort in ("low", "medium", "high"):
        rec[f"questions_{effort}"] = sum(q.effort == effort for e in eps for q in e.stats.questions) / n
    return {**rec, **res.advantages.record(), **res.update.record()}


def _ask_share(eps) -> float | None:
    """The share of ``eps`` that asked at least once; None for no episodes (a step may draw no precise one)."""
    return sum(bool(e.stats.questions) for e in eps) / len(eps) if eps else None


def training_mix(tasks, prefs, rng: random.Random, precise_share: float | None = None) -> list[tuple]:
    """Paper §6.2: each task with each training preference on its vague prompt, plus precise copies: one per
    task by default (1 in 13 with the 12 seen preferences), or ``precise_share`` of the whole mix. A precise
    copy carries a training preference drawn at random (the paper does not say which)."""
    items = [(t, p, True) for t in tasks for p in prefs]
    n = len(tasks) if precise_share is None else round(precise_share / (1 - precise_share) * len(items))
    items += [(tasks[i % len(tasks)], rng.choice(prefs), False) for i in range(n)]
    rng.shuffle(items)
    return items


def run_warm_start(r: Run) -> None:
    """The warm start (``rl/sft.py: warm_start``) on this run's demonstrations, with its progress line (step,
    loss, elapsed, ETA), its throughput meter and its time."""
    w = r.cfg.warm
    encoded = [encode_demo(r.tok, m, w.loss) for m in r.demos]
    batches = length_batches(encoded, w.batch, random.Random(r.cfg.seed + 1))
    special = {r.tok.im_start_id, r.tok.im_end_id, r.tok.pad_id}
    drills = copy_drills([t for ids, _ in encoded for t in ids if t not in special], w.batch,
                         torch.Generator().manual_seed(r.cfg.seed + 2), w.copy_ambiguity) if w.copy_steps else None
    t0 = time.time()

    def log(s: WarmStep) -> None:
        r.count("sft", list(s.lengths), s.seconds)
        if s.step % 25 == 0 or s.step in (w.copy_steps, w.copy_steps + w.pretrain_steps, w.total_steps - 1):
            trim_freed_memory()  # freed activations of ~200 batch widths stay resident otherwise (resources.py)
            eta = s.elapsed / (s.step + 1) * (w.total_steps - s.step - 1)
            r.log({"phase": s.phase, "step": s.step, "loss": s.loss},
                  f"{s.phase} {s.step + 1}/{w.total_steps} loss {s.loss:.3f} ({s.elapsed:.0f}s, ~{eta:.0f}s left)")
    warm_start(r.model, batches, w, log, device=r.device, bf16=r.sft_bf16, grad_clip=r.cfg.rl.grad_clip,
               micro_batch=r.cfg.rl.micro_batch, drills=drills)
    r.time_s["warm_start"] += time.time() - t0


def cached_warm_start(r: Run) -> None:
    """The warm start, or its cached SFT model (``warm_cache``; setup loaded it): print which."""
    if r.warm_entry:
        r.say(f"warm start: reused the cached SFT model {r.warm_entry} (--no-warm-start-cache to redo it)")
        return
    run_warm_start(r)
    if r.warm_key and r.rank == 0:
        try:
            entry = warm_cache.store(*r.warm_key, r.model, r.tok)
        except warm_cache.WarmCacheError as e:
            r.say(f"warning: {e}")  # the run goes on; only the reuse is lost
        else:
            r.say(f"warm start: cached the SFT model in {entry}")


def start_or_resume(r: Run) -> tuple[int, dict | None]:
    """A fresh run: warm start, evaluate and checkpoint the SFT model. ``--resume``: restore everything (and
    finish the SFT evaluation if the simulator failed during it)."""
    if r.cfg.resume:
        try:
            state = load_checkpoint(r.ckpt_path, r.model, r.opt, {"sample": r.sample_gen})
        except CheckpointError as e:
            raise TrainError(str(e)) from None
        r.say(f"resumed from {r.ckpt_path} at step {state.step}")
        sft_eval = state.config.get("sft_eval")
        if state.step == 0 and sft_eval is None and r.cfg.eval_tasks:  # stopped during the SFT evaluation
            sft_eval = sft_done(r)
        return state.step, sft_eval
    if not r.cfg.pretrained:
        r.tok.save(os.path.join(r.cfg.out, "tokenizer"))
    cached_warm_start(r)
    return 0, sft_done(r)


def sft_done(r: Run) -> dict | None:
    """After the warm start: save the model RL starts from, evaluate it, checkpoint step 0."""
    if r.rank == 0 and (r.cfg.warm.total_steps or r.cfg.grpo.kl_beta > 0):
        # The model RL starts from: ablations start from it, and it is the KL reference (kl_reference), so it
        # is saved without a warm start too when KL is on. Before the checkpoint: a resumable run has it.
        r.save_model("sft_model")
    try:
        sft_eval = evaluate(r, "sft", 0) if r.rank == 0 and r.cfg.eval_tasks else None
    except SimulatorError as e:
        raise stopped(r, 0, None, e) from None
    if r.rank == 0:
        save(r, 0, sft_eval)
    return sft_eval


def save(r: Run, step: int, sft_eval: dict | None) -> None:
    """A checkpoint at a step boundary, with the run's settings (``resume.record``) and the log sizes that a
    resumed run cuts metrics.jsonl and samples.jsonl back to."""
    save_checkpoint(r.ckpt_path, r.model, r.opt, {"sample": r.sample_gen}, step,
                    {**resume.record(r.cfg), "sft_eval": sft_eval, "log_sizes": resume.log_sizes(r.cfg.out)})


def stopped(r: Run, step: int, sft_eval: dict | None, e: Exception) -> TrainFailure:
    """The simulator stayed down past --sim-retry-s: checkpoint the last finished step, say how to go on."""
    if r.rank == 0:
        save(r, step, sft_eval)
    return TrainFailure(f"{e}; stopped with a checkpoint at RL step {step} in {r.ckpt_path}: when the simulator "
                        "answers again, rerun with --resume (--sim-retry-s sets how long to wait)")


def kl_reference(r: Run):
    """The frozen reference of the k3 KL (None when beta = 0): the model RL started from. A fresh run copies
    the live model, which is that model before the first RL step; ``--resume`` loads OUT/sft_model."""
    if r.cfg.grpo.kl_beta <= 0:
        return None
    if not r.cfg.resume:
        return copy.deepcopy(r.model).eval().requires_grad_(False)
    path = os.path.join(r.cfg.out, "sft_model")
    try:
        ref = load_pretrained(path, device=r.device, dtype=next(r.model.parameters()).dtype)
    except (ValueError, OSError) as e:
        raise TrainError(f"--resume with --kl-beta > 0 needs the KL reference {path} (the model RL started from), "
                         f"but it cannot be read ({' '.join(str(e).split())})") from None
    return ref.eval().requires_grad_(False)


def rl_phase(r: Run, start: int, sft_eval: dict | None) -> None:
    """The GRPO loop: this rank's prompts of each step, one ``grpo_step``, logs, evaluations, checkpoints."""
    cfg, P = r.cfg, r.cfg.rl.prompts_per_step
    ref_model = kl_reference(r)  # the frozen start model (only when beta > 0), also after --resume
    mix = training_mix(r.train_tasks, cfg.prefs, random.Random(cfg.seed), cfg.rl.precise_share)
    t_rl, zero_var = time.time(), []
    for step in range(start, cfg.rl.steps):
        base = step * P * r.world  # this rank's prompts: a contiguous slice of the global step's prompts
        specs = [EpisodeSpec(*mix[(base + r.rank * P + j) % len(mix)], group_id=base + r.rank * P + j)
                 for j in range(P)]
        r.sample_gen.manual_seed(hash((cfg.seed, step, r.rank)) & 0x7FFFFFFF)
        try:
            res = grpo_step(r.model, r.tok, r.opt, specs, r.client, cfg.step, r.sample_gen, ref_model)
        except SimulatorError as e:  # the rollout failed: the model is still that of the last finished step
            raise stopped(r, step, sft_eval, e) from None
        r.time_s["rollout"] += res.rollout_s
        r.time_s["update"] += res.update_s
        r.count("update", [len(e.ids) for e, a in zip(res.episodes, res.advantages.values.tolist()) if a != 0.0],
                res.update_s, epochs=cfg.grpo.ppo_epochs)
        rec = step_record(step + 1, res)
        eta = (time.time() - t_rl) / (step + 1 - start) * (cfg.rl.steps - step - 1)
        dims = " ".join(f"{d.weight} {rec[d.name]:+.3f}" for d in DIMENSIONS)
        precise = "" if rec["ask_ratio_precise"] is None else f" (precise {rec['ask_ratio_precise']:.2f})"
        r.log(rec, f"step {step + 1}/{cfg.rl.steps} reward {rec['reward']:.3f} {dims} "
              f"ask {rec['ask_ratio']:.2f}{precise} "
              f"q(l/m/h) {rec['questions_low']:.2f}/{rec['questions_medium']:.2f}/{rec['questions_high']:.2f} "
              f"zero-var {rec.get('zero_var_frac', 0):.2f} ({res.rollout_s + res.update_s:.1f}s, ~{eta:.0f}s left)")
        if rec.get("nonfinite"):
            r.say(f"step {step + 1}: non-finite {rec['nonfinite']}; step skipped")
        zero_var = (zero_var + [rec.get("zero_var_frac", 0.0)])[-5:]
        warn_no_signal(r, step + 1, zero_var)
        if cfg.log_samples and (step + 1 - start == 1 or (step + 1) % cfg.samples_every == 0):
            r.write_rl_samples(res, step + 1)
        if r.rank == 0 and cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.rl.steps:
            try:
                evaluate(r, f"step{step + 1}", step + 1)
            except SimulatorError as e:
                raise stopped(r, step + 1, sft_eval, e) from None
        if r.rank == 0 and ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.rl.steps):
            save(r, step + 1, sft_eval)


def warn_no_signal(r: Run, step: int, recent: list[float]) -> None:
    """Say so when most groups carry no learning signal (every episode of a group got the same reward)."""
    if len(recent) == 5 and step % 5 == 0 and sum(recent) / 5 >= 0.5:
        r.say(f"warning: {100 * sum(recent) / 5:.0f}% of groups had zero reward variance over the last 5 steps: "
              "GRPO learns nothing from them. If the model never writes a <search>/<ask>/<answer> tag, give it "
              "a warm start (--sft-steps); otherwise raise --group-size or --temperature.")


def peak_meters(r: Run) -> dict[str, PeakMeter]:
    """The matmul peak of the warm start's and of the update's dtype (one meter when they are the same), its
    first session measured now; ``run`` measures the second at the end and takes the max (speed.py)."""
    dtypes = {"sft": torch.bfloat16 if r.sft_bf16 else torch.float32, "update": r.update_dtype}
    meters = {dt: PeakMeter(dt, r.device) for dt in set(dtypes.values())}
    for m in meters.values():
        m.measure("start")
    return {phase: meters[dt] for phase, dt in dtypes.items()}


def throughput(r: Run, peaks: dict[str, PeakMeter]) -> dict:
    return {**r.meters["sft"].summary(peaks["sft"].gflops), **r.meters["update"].summary(peaks["update"].gflops),
            "peak_gflops": {k: round(p.gflops, 1) for k, p in peaks.items()},
            "peak_trials": {k: p.trials for k, p in peaks.items()},
            "peak_by_session": {k: p.by_session() for k, p in peaks.items()}, "peak_method": PEAK_METHOD}


def run(cfg: RunConfig) -> dict:
    """The whole run; a write that fails (a full disk) is one line saying the last checkpoint is intact."""
    try:
        return _run(cfg)
    except CheckpointError as e:  # a checkpoint that could not be written; the previous one is untouched
        raise TrainFailure(str(e)) from None
    except Exception as e:
        if not is_disk_full(e):
            raise
        path, last = getattr(e, "filename", None) or cfg.out, last_good(os.path.join(cfg.out, CHECKPOINT))
        raise TrainFailure(f"cannot write {path} (no space left on the device); {last}: free space and rerun "
                           "with --resume") from None


def _run(cfg: RunConfig) -> dict:
    t_start = time.time()
    with ExitStack() as stack:
        r = setup(cfg, stack)
        peaks = peak_meters(r)
        start, sft_eval = start_or_resume(r)
        rl_phase(r, start, sft_eval)
        final_eval = None
        if r.rank == 0:
            r.save_model("model")
            try:  # with no RL step the final model is the SFT model
                final_eval = (evaluate(r, "final", cfg.rl.steps) if cfg.rl.steps > 0 else sft_eval) \
                    if cfg.eval_tasks else None
            except SimulatorError as e:
                raise TrainFailure(f"{e}; the final model is saved and the checkpoint in {r.ckpt_path} is at the "
                                   "last step: rerun with --resume to evaluate it") from None
        for p in {id(p): p for p in peaks.values()}.values():
            p.measure("end")
        summary = {"wall_s": round(time.time() - t_start, 1), "peak_rss_mb": r.peak_rss_mb(),
                   "sft": sft_eval, "final": final_eval, "time_s": {k: round(v, 1) for k, v in r.time_s.items()},
                   "throughput": throughput(r, peaks), "model_dir": os.path.join(cfg.out, "model"),
                   "eval_prefs": len(PREFERENCES), "eval": describe(r.eval_cfg)}
        r.log({"phase": "summary", **summary})
    return summary
