"""The PPP training run behind ``train.py``: setup, SFT warm start, GRPO loop, evaluation, checkpoints.

Contract: ``run(args) -> dict`` (args from ``train.build_parser``) returns the final JSON summary
``{"wall_s", "sft": {...}, "final": {...}, ...}`` with held-out productivity / proactivity /
personalization (x100, vague prompts). Bad input raises ``TrainError`` (one line; train.py exits 2).
Seeds are derived from (seed, step, rank), so a resumed run samples exactly what an uninterrupted one
would (DESIGN §10; lessons item 10).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import ExitStack

import torch
import torch.distributed as dist

from . import sft
from .agent_env import LocalUser
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .evaluation import eval_items, metrics, run_model
from .grpo import GRPOConfig
from .model import Decoder, count_params, load_pretrained, preset_config, save_pretrained
from .reward import RewardWeights, ppp_reward
from .rollout import EpisodeSpec, RolloutConfig, rollout
from .tokenizer import Tokenizer, train_bpe
from .trainer import grpo_update
from .userville import tasks as tasklib
from .userville.preferences import PREFERENCES, SEEN, UNSEEN

PRESETS = ("tiny", "small", "base")
PRETRAIN_STEPS = 200  # --pretrain-steps for a preset when not given (0 for a --model DIR)


class TrainError(RuntimeError):
    pass


def parse_prefs(spec: str) -> tuple[str, ...]:
    if spec == "all":
        return tuple(PREFERENCES)
    if spec in ("seen", "unseen"):
        return SEEN if spec == "seen" else UNSEEN
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    bad = [n for n in names if n not in PREFERENCES]
    if bad or not names:
        raise TrainError(f"--prefs: unknown preference(s) {bad}; use all|seen|unseen or names from: "
                         f"{', '.join(PREFERENCES)}")
    return names


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise TrainError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    return dev


def validate(args) -> None:
    for name in ("rl_steps", "sft_steps", "pretrain_steps", "train_tasks", "eval_tasks"):
        if (getattr(args, name) or 0) < 0:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("group_size", "prompts_per_step", "max_turns", "max_new_tokens", "micro_batch", "sft_batch"):
        if getattr(args, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1")
    if args.group_size < 2 and args.rl_steps > 0:
        raise TrainError("--group-size must be >= 2: GRPO compares rollouts within a group")
    for name in ("lr", "sft_lr", "temperature"):
        if not (getattr(args, name) > 0 and math.isfinite(getattr(args, name))):
            raise TrainError(f"--{name.replace('_', '-')} must be a positive number")


def training_mix(tasks, prefs, rng: random.Random) -> list[tuple]:
    """Paper §6.2: each task x each training preference on the vague prompt, plus one precise copy (~92%
    vague). The precise copy carries a training preference drawn at random (the paper does not say which)."""
    items = [(t, p, True) for t in tasks for p in prefs]
    items += [(t, rng.choice(prefs), False) for t in tasks]
    rng.shuffle(items)
    return items


def build_model(args, device, texts):
    """A preset from scratch (with a byte-level BPE trained on our own text) or a local HF directory."""
    if args.model in PRESETS:
        tok = train_bpe(texts, 4096)
        torch.manual_seed(args.seed)
        cfg = preset_config(args.model, tok.vocab_size, eos_token_ids=tok.eos_ids, pad_token_id=tok.pad_id)
        return Decoder(cfg).to(device), tok
    if not os.path.isdir(args.model):
        raise TrainError(f"--model {args.model!r} is neither a preset ({'|'.join(PRESETS)}) nor a directory")
    try:
        return load_pretrained(args.model, device=device), Tokenizer.from_dir(args.model)
    except (ValueError, OSError) as e:
        raise TrainError(f"--model {args.model}: {e}") from None


def rank_world() -> tuple[int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def connect_simulator(args, stack: ExitStack):
    """--sim-url, or the embedded rules simulator started here and stopped on exit (DESIGN §4)."""
    from .userville.client import SimulatorClient, SimulatorError, start_local_simulator
    try:
        if args.sim_url:
            client = SimulatorClient(args.sim_url)
            client.health()
            return client
        local = stack.enter_context(start_local_simulator())
        return SimulatorClient(local.url)
    except SimulatorError as e:
        raise TrainError(str(e)) from None


def sft_phase(model, tok, demos, args, device, log) -> None:
    """The warm start on the scripted transcripts, one AdamW with a cosine schedule over both parts:
    ``pretrain_steps`` of language modelling on every token (a from-scratch preset has no pretrained base
    model: this is where it learns the environment's text and to copy words from its context, which the
    task needs), then ``sft_steps`` on the assistant's own tokens only (DESIGN §8)."""
    from .trainer import pad, sft_step
    encoded = [sft.encode_demo(tok, m) for m in demos]
    total = args.pretrain_steps + args.sft_steps
    opt = torch.optim.AdamW(model.parameters(), lr=args.sft_lr, weight_decay=0.0, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(i, total) / max(1, total))))
    batches = sft.length_batches(encoded, args.sft_batch, random.Random(args.seed + 1))
    t0 = time.time()
    for step in range(total):
        batch = next(batches)
        phase = "pretrain" if step < args.pretrain_steps else "sft"
        masks = [[1.0] * len(b[0]) for b in batch] if phase == "pretrain" else [b[1] for b in batch]
        loss = sft_step(model, opt, pad([b[0] for b in batch], 0, device), pad(masks, 0.0, device),
                        args.grad_clip, bf16=args.sft_bf16, micro_batch=args.micro_batch)
        sched.step()
        if step % 25 == 0 or step == total - 1:
            log({"phase": phase, "step": step, "loss": loss}, f"{phase} {step + 1}/{total} loss {loss:.3f} "
                f"({time.time() - t0:.0f}s)")


def evaluate(model, tok, tasks, prefs, client, args, label, log, step: int = 0) -> dict:
    rcfg = RolloutConfig(group_size=1, max_turns=args.max_turns, max_new_tokens=args.max_new_tokens,
                         temperature=args.eval_temperature)
    specs = eval_items(tasks, prefs) + eval_items(tasks, ("no_preference",), vague=False)
    t0 = time.time()
    m = metrics(run_model(model, tok, specs, client, rcfg, seed=args.seed + 7))
    short = {k: (round(m[k], 2) if isinstance(m[k], float) else m[k])
             for k in ("productivity", "proactivity", "personalization", "ask_ratio")}
    short["ask_ratio_precise"] = m["precise"]["ask_ratio"]
    log({"phase": "eval", "label": label, "step": step, **{k: v for k, v in m.items() if not isinstance(v, dict)},
         "funcloc": m.get("funcloc"), "research": m.get("research"), "precise": m.get("precise")},
        f"eval[{label}] {short} ({time.time() - t0:.0f}s, {len(specs)} episodes)")
    return short


def run(args) -> dict:
    t_start = time.time()
    validate(args)
    rank, world = rank_world()
    device = pick_device(args.device) if world == 1 or not torch.cuda.is_available() else torch.device(f"cuda:{rank}")
    if args.threads:
        torch.set_num_threads(args.threads)
    prefs = parse_prefs(args.prefs)
    families = ("funcloc", "research") if args.family == "both" else (args.family,)
    train_tasks = [t for f in families for t in tasklib.make_tasks(f, "train", args.train_tasks, args.seed)]
    test_tasks = [t for f in families for t in tasklib.make_tasks(f, "test", args.eval_tasks, args.seed)]
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.safetensors")
    metrics_file = open(os.path.join(args.out, "metrics.jsonl"), "a") if rank == 0 else None

    def log(record: dict, line: str | None = None) -> None:
        if rank != 0:
            return
        metrics_file.write(json.dumps({"time": round(time.time() - t_start, 2), **record}) + "\n")
        metrics_file.flush()
        if line:
            print(line, flush=True)

    with ExitStack() as stack:
        client = connect_simulator(args, stack)
        demo_user = LocalUser()
        if args.pretrain_steps is None:  # auto: a preset starts from scratch, a --model DIR is pretrained
            args.pretrain_steps = PRETRAIN_STEPS if args.model in PRESETS else 0
        n_demos = max(64, (args.pretrain_steps + args.sft_steps) * args.sft_batch)  # each seen about once
        demos = sft.demonstrations(train_tasks, prefs, n_demos,
                                   args.seed, demo_user, args.max_turns)
        model, tok = build_model(args, device, sft.corpus(demos))
        if rank == 0:
            print(f"model {args.model}: {count_params(model) / 1e6:.2f}M params, vocab {tok.vocab_size}, "
                  f"device {device}; {len(train_tasks)} train / {len(test_tasks)} test tasks, "
                  f"{len(prefs)} preferences", flush=True)
        gcfg = GRPOConfig(clip_low=args.clip_low, clip_high=args.clip_high, adv_norm=args.adv_norm,
                          loss_agg=args.loss_agg, constant_norm=args.constant_norm, dual_clip=args.dual_clip,
                          kl_beta=args.kl_beta, ppo_epochs=args.ppo_epochs, gdpo=args.gdpo,
                          drop_zero_var=args.drop_zero_var)
        if args.w_prod is None:  # auto (train.py --help): GDPO gives each dimension equal say otherwise
            args.w_prod = 2.0 if args.gdpo else 1.0
        weights = RewardWeights(prod=args.w_prod, proact=args.w_proact, pers=args.w_pers, clip=not args.no_clip)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.99))
        sample_gen = torch.Generator(device=device)
        config = dict(vars(args))
        start, sft_eval = 0, None
        if args.resume:
            try:
                state = load_checkpoint(ckpt_path, model, opt, {"sample": sample_gen})
            except CheckpointError as e:
                raise TrainError(str(e)) from None
            start, sft_eval = state.step, state.config.get("sft_eval")
            tok = Tokenizer.from_file(os.path.join(args.out, "tokenizer", "tokenizer.json")) \
                if args.model in PRESETS else tok
            if rank == 0:
                print(f"resumed from {ckpt_path} at step {start}", flush=True)
        else:
            if args.model in PRESETS:
                tok.save(os.path.join(args.out, "tokenizer"))
            sft_phase(model, tok, demos, args, device, log)
            if rank == 0 and args.eval_tasks:
                sft_eval = evaluate(model, tok, test_tasks, prefs, client, args, "sft", log)
            config["sft_eval"] = sft_eval
            if rank == 0:
                save_checkpoint(ckpt_path, model, opt, {"sample": sample_gen}, 0, 0, config)
                if args.sft_steps or args.pretrain_steps:  # the SFT model, so ablations can start from the same point (issue 5)
                    save_pretrained(model, os.path.join(args.out, "sft_model"))
                    tok.save(os.path.join(args.out, "sft_model"))
        config["sft_eval"] = sft_eval
        ref_model = None
        if args.kl_beta > 0:  # the frozen SFT model as the KL reference (only when beta > 0)
            import copy
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        mix = training_mix(train_tasks, prefs, random.Random(args.seed))
        rcfg = RolloutConfig(group_size=args.group_size, max_turns=args.max_turns,
                             max_new_tokens=args.max_new_tokens, temperature=args.temperature)
        t_rl = time.time()
        for step in range(start, args.rl_steps):
            # this rank's prompts: a contiguous slice of the global step's prompts; seeds from (seed, step, rank)
            base = step * args.prompts_per_step * world
            idx = [(base + rank * args.prompts_per_step + j) % len(mix) for j in range(args.prompts_per_step)]
            specs = [EpisodeSpec(mix[i][0], mix[i][1], mix[i][2], group_id=base + rank * args.prompts_per_step + j)
                     for j, i in enumerate(idx)]
            sample_gen.manual_seed(hash((args.seed, step, rank)) & 0x7FFFFFFF)
            t0 = time.time()
            episodes = rollout(model, tok, specs, client, rcfg, sample_gen)
            t_roll = time.time() - t0
            breakdowns = [ppp_reward(e.stats, weights) for e in episodes]
            rewards = [b.total for b in breakdowns]
            comps = [[b.productivity, b.proactivity, b.personalization] for b in breakdowns]
            m = grpo_update(model, opt, episodes, rewards, comps, gcfg, temperature=args.temperature,
                            micro_batch=args.micro_batch, grad_clip=args.grad_clip, ref_model=ref_model,
                            weights=[args.w_prod, args.w_proact, args.w_pers])
            n = len(episodes)
            rec = {"phase": "rl", "step": step + 1, "reward": sum(rewards) / n,
                   "productivity": sum(b.productivity for b in breakdowns) / n,
                   "proactivity": sum(b.proactivity for b in breakdowns) / n,
                   "personalization": sum(b.personalization for b in breakdowns) / n,
                   "ask_ratio": sum(bool(e.stats.questions) for e in episodes) / n,
                   "questions_low": sum(q.effort == "low" for e in episodes for q in e.stats.questions) / n,
                   "questions_medium": sum(q.effort == "medium" for e in episodes for q in e.stats.questions) / n,
                   "questions_high": sum(q.effort == "high" for e in episodes for q in e.stats.questions) / n,
                   "mean_len": sum(len(e.ids) for e in episodes) / n, "rollout_s": t_roll,
                   "step_s": time.time() - t0, **m}
            if m.get("skipped") and m.get("nonfinite"):
                print(f"step {step + 1}: non-finite {m['nonfinite']}; step skipped", flush=True)
            done = step + 1 - start
            eta = (time.time() - t_rl) / done * (args.rl_steps - step - 1)
            log(rec, f"step {step + 1}/{args.rl_steps} reward {rec['reward']:.3f} prod {rec['productivity']:.2f} "
                f"proact {rec['proactivity']:+.3f} pers {rec['personalization']:+.3f} ask {rec['ask_ratio']:.2f} "
                f"q(l/m/h) {rec['questions_low']:.2f}/{rec['questions_medium']:.2f}/{rec['questions_high']:.2f} "
                f"zero-var {m.get('zero_var_frac', 0):.2f} ({rec['step_s']:.1f}s, ~{eta:.0f}s left)")
            if rank == 0 and args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.rl_steps:
                evaluate(model, tok, test_tasks, prefs, client, args, f"step{step + 1}", log, step + 1)
            if rank == 0 and ((step + 1) % args.save_every == 0 or step + 1 == args.rl_steps):
                save_checkpoint(ckpt_path, model, opt, {"sample": sample_gen}, step + 1, base, config)
        final_eval = None
        if rank == 0:
            save_pretrained(model, os.path.join(args.out, "model"))
            tok.save(os.path.join(args.out, "model"))
            if args.eval_tasks and args.rl_steps > 0:
                final_eval = evaluate(model, tok, test_tasks, prefs, client, args, "final", log, args.rl_steps)
            elif args.eval_tasks:  # no RL step ran: the final model is the SFT model
                final_eval = sft_eval
    if metrics_file:
        metrics_file.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"wall_s": round(time.time() - t_start, 1), "sft": sft_eval, "final": final_eval,
            "model_dir": os.path.join(args.out, "model")}
