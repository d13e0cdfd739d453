"""PPP training CLI: SFT warm start ("skills, not policy"), then multi-objective GRPO (paper §5-6).

    python train.py --model small --prefs all          # the default run: minutes on a 2-core CPU

Each RL step samples `--prompts-per-step` (task, preference, vague|precise) items from the training mix
(paper §6.2: every task with every training preference on its vague prompt, plus precise copies), rolls
out `--group-size` episodes each against the simulated user, scores them with the PPP reward, and takes one
GRPO step. Progress goes to stdout, metrics to OUT/metrics.jsonl, example dialogues to OUT/samples.jsonl
(`python eval.py show OUT/samples.jsonl`), checkpoints to OUT/checkpoint.safetensors (atomic; `--resume`
continues bit-identically on CPU), the final model to OUT/model as an HF directory. The last stdout line is
JSON: wall time, peak memory, time per phase, throughput, and held-out metrics of the SFT and final models.
Under `torchrun`, each rank rolls out its share and gradients are averaged (gloo/nccl).
Exit status: 0 done; 2 a bad flag, file or directory (one line); 1 the run could not go on (the simulator
stayed down past --sim-retry-s, a full disk: one line naming the checkpoint to --resume from); 130 Ctrl-C;
143 SIGTERM.
Every default below is the library's (ppp_min/run/config.py and the dataclasses it holds).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def _data_flags(p, run) -> None:
    """Which model, preferences and tasks."""
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=run.model,
                   help="preset tiny|small|base (from scratch) or a local HF directory (Llama/Qwen2/Qwen3) "
                        "(default: %(default)s)")
    g.add_argument("--prefs", default="all", help="training preferences: all | seen (the paper's 12) | unseen | "
                   "name,name,...; evaluation always covers all 20 (default: %(default)s)")
    g.add_argument("--family", default="both", choices=["funcloc", "research", "both"],
                   help="task family (paper: SWE-Func-Loc and BrowseComp-Plus, in miniature)")
    g.add_argument("--train-tasks", type=int, default=run.train_tasks, help="training tasks per family (%(default)s)")
    g.add_argument("--eval-tasks", type=int, default=run.eval_tasks,
                   help="held-out tasks per family, each vague prompt with all 20 preferences (0 = no evaluation) "
                        "(%(default)s)")
    g.add_argument("--seed", type=int, default=run.seed, help="seeds data, init, sampling (per step and rank)")


def _warm_start_flags(p, warm, both) -> None:
    """The SFT warm start (run_config.WarmStartConfig)."""
    g = p.add_argument_group("SFT warm start")
    g.add_argument("--pretrain-steps", type=int, default=None,
                   help=f"language-modelling steps on every token of the scripted transcripts before SFT, where a "
                        f"from-scratch preset learns the text and to copy from its context "
                        f"{both('pretrain_steps', warm.pretrain_steps)}")
    g.add_argument("--sft-steps", type=int, default=None, help=f"SFT steps on scripted demonstrations, loss on the "
                   f"assistant's tokens only {both('sft_steps', warm.sft_steps)}")
    g.add_argument("--sft-batch", type=int, default=None,
                   help=f"demonstrations per SFT step {both('sft_batch', warm.batch)}")
    g.add_argument("--sft-lr", type=float, default=None,
                   help=f"SFT learning rate, AdamW, warm-up + cosine {both('sft_lr', warm.lr)}")
    g.add_argument("--sft-dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="warm-start matmuls: bf16 autocast or fp32; auto = bf16 where the hardware has fast bf16 "
                        "(CUDA, AVX-512 BF16/AMX CPUs), else fp32. RL keeps fp32 on CPU")
    g.add_argument("--warm-start-cache", default="auto", metavar="DIR",
                   help="reuse the SFT model of an earlier run with the same code, warm-start settings and seed, "
                        "stored under DIR (auto: $PPP_MIN_CACHE or ~/.cache/ppp_min, /warm_start)")
    g.add_argument("--no-warm-start-cache", dest="warm_start_cache", action="store_const", const=None,
                   help="always run the warm start (and store nothing)")
    g.add_argument("--demo-style-match", type=float, default=warm.style_match,
                   help="share of demonstration questions written in the stated preference's style, as an instruct "
                        "model would (0 = styles drawn independently of the preference) (%(default)s)")


def _rl_flags(p, rl, ro, both) -> None:
    """The GRPO loop and the rollout (run_config.RLConfig, rollout.RolloutConfig)."""
    g = p.add_argument_group("PPP-GRPO (paper §5.2, §6.2)")
    g.add_argument("--rl-steps", type=int, default=rl.steps, help="RL steps (paper: 200) (%(default)s)")
    g.add_argument("--group-size", type=int, default=ro.group_size, help="G rollouts per prompt (paper: 8)")
    g.add_argument("--prompts-per-step", type=int, default=rl.prompts_per_step,
                   help="prompts per RL step (paper: 32-64) (%(default)s)")
    g.add_argument("--precise-share", type=float, default=rl.precise_share,
                   help="share of precise prompts in the training mix, in [0, 1) (default: one precise copy per "
                        "task, the paper's mix: 1 in 13 with the 12 seen preferences, 1 in 21 with all 20)")
    g.add_argument("--lr", type=float, default=None, help=f"RL learning rate (paper: 1e-6 on a 36B model; a small "
                   f"model needs more) {both('lr', rl.lr)}")
    g.add_argument("--weight-decay", type=float, default=rl.weight_decay, help="AdamW weight decay (paper: 0.01)")
    g.add_argument("--grad-clip", type=float, default=rl.grad_clip, help="global grad-norm clip, 0 = off (%(default)s)")
    g.add_argument("--temperature", type=float, default=ro.temperature, help="rollout and loss temperature (paper: 1)")
    g.add_argument("--max-turns", type=int, default=ro.max_turns, help="agent turns per episode (%(default)s)")
    g.add_argument("--max-new-tokens", type=int, default=ro.max_new_tokens, help="tokens per agent turn (%(default)s)")
    g.add_argument("--micro-batch", type=int, default=None, help=f"sequences per forward/backward in SFT and the "
                   f"update; gradients accumulate to the whole batch's {both('micro_batch', rl.micro_batch)}")


def _reward_flags(p, w) -> None:
    """The reward weights (reward.RewardWeights)."""
    g = p.add_argument_group("reward (paper eq. 1)")
    g.add_argument("--w-prod", type=float, default=None,
                   help="productivity weight (paper: 1) (default: 2 with --gdpo, which otherwise gives productivity "
                        "a third of the signal; 1 with --no-gdpo)")
    g.add_argument("--w-proact", type=float, default=w.proact, help="proactivity weight (paper: 1; 0 = w/o Proact.)")
    g.add_argument("--w-pers", type=float, default=w.pers, help="personalization weight (paper: 1; 0 = w/o Pers.)")
    g.add_argument("--no-clip", action="store_true", help="do not clip the reward to [0, 1] (paper clips)")


def _loss_flags(p, gr) -> None:
    """The advantage and the loss (grpo.GRPOConfig)."""
    g = p.add_argument_group("advantage and loss (paper §5.2; docs/design.md#grpo)")
    g.add_argument("--clip-low", type=float, default=gr.clip_low, help="PPO clip epsilon low (paper/DAPO: 0.2)")
    g.add_argument("--clip-high", type=float, default=gr.clip_high, help="clip-higher epsilon (DAPO: 0.28)")
    g.add_argument("--adv-norm", default=gr.adv_norm, help="group advantage normalisation: std (GRPO, paper) or "
                   "none (Dr.GRPO) (%(default)s)")
    g.add_argument("--loss-agg", default=gr.loss_agg, help="token-mean (paper: over the global token count) | "
                   "seq-mean-token-mean | constant (%(default)s)")
    g.add_argument("--constant-norm", type=float, default=gr.constant_norm, help="normaliser of --loss-agg constant")
    g.add_argument("--dual-clip", type=float, default=gr.dual_clip, help="dual-clip constant c for A<0 (e.g. 3.0)")
    g.add_argument("--kl-beta", type=float, default=gr.kl_beta, help="k3 KL to the frozen SFT model (paper: no KL)")
    g.add_argument("--ppo-epochs", type=int, default=gr.ppo_epochs, help="updates per batch (paper: 1)")
    g.add_argument("--gdpo", action=argparse.BooleanOptionalAction, default=gr.gdpo,
                   help="GDPO: normalise each reward dimension in the group, then sum; --no-gdpo is the paper's scalar "
                        "advantage (docs/experiments.md#why-the-gdpo-advantage-by-default)")
    g.add_argument("--drop-zero-var", action="store_true", help="drop zero-variance groups (DAPO dynamic sampling)")
    g.add_argument("--pers-scope", default=gr.pers_scope, choices=["group", "askers"],
                   help="GDPO: normalise personalization over the whole group, or only among the episodes that "
                        "asked (answer_more and no_ask score every episode) (%(default)s)")


def _run_flags(p, run) -> None:
    """Output, resume, evaluation, samples, device (run_config.RunConfig)."""
    from ppp_min.run.resume import safe_flags
    g = p.add_argument_group("run")
    g.add_argument("--sim-url", default=None,
                   help="simulator URL(s), comma-separated; default: start the embedded rules simulator")
    g.add_argument("--sim-token", default=None,
                   help="bearer token of a --sim-url simulator started with --token (default: $PPP_SIM_TOKEN)")
    g.add_argument("--sim-retry-s", type=float, default=run.sim_retry_s,
                   help="seconds a simulator call keeps retrying an outage (one line while it waits); past it "
                        "the run stops with a checkpoint to --resume from (%(default)s)")
    g.add_argument("--sim-timeout", type=float, default=run.sim_timeout,
                   help="seconds to wait for one simulator answer (%(default)s)")
    g.add_argument("--out", default=run.out, help="output directory (%(default)s)")
    g.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.safetensors. Every setting must be the checkpoint's (a "
                        f"difference is refused, naming it) except: {safe_flags()}")
    g.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (a fresh run refuses it)")
    g.add_argument("--save-every", type=int, default=run.save_every, help="checkpoint every N RL steps (%(default)s)")
    g.add_argument("--eval-every", type=int, default=run.eval_every,
                   help="also evaluate on the held-out tasks every N RL steps (0 = only SFT and final)")
    g.add_argument("--eval-temperature", type=float, default=run.eval_temperature,
                   help="held-out eval sampling temperature (0 = greedy; 1 = the policy as trained, seeded)")
    g.add_argument("--eval-batch", type=int, default=run.eval_batch,
                   help="episodes decoded together in an evaluation; the tokens sampled depend on it (%(default)s)")
    g.add_argument("--eval-split", default=run.eval_split, choices=["test", "val"],
                   help="held-out split of the evaluations: test (report) or val (choose settings) (%(default)s)")
    g.add_argument("--log-samples", type=int, default=run.log_samples,
                   help="groups (best and worst episode each) per --samples-every RL steps, and episodes per "
                        "evaluation, written to OUT/samples.jsonl (0 = none) (%(default)s)")
    g.add_argument("--samples-every", type=int, default=run.samples_every, help="RL steps between samples (%(default)s)")
    g.add_argument("--device", default=run.device, help="auto | cpu | cuda | cuda:N (%(default)s)")
    g.add_argument("--threads", type=int, default=run.threads, help="torch CPU threads (0 = torch's default)")


def build_parser() -> argparse.ArgumentParser:
    # Defaults come from the dataclasses (one source of truth); their values are checked there, once.
    from ppp_min.rl.grpo import GRPOConfig
    from ppp_min.rl.reward import RewardWeights
    from ppp_min.rl.rollout import RolloutConfig
    from ppp_min.run.config import RLConfig, RunConfig
    from ppp_min.rl.sft import WarmStartConfig
    from ppp_min.run.config import PRETRAINED
    run, warm, rl, ro, gr, w = RunConfig(), WarmStartConfig(), RLConfig(), RolloutConfig(), GRPOConfig(), RewardWeights()

    def both(name, preset):  # flags whose default depends on the model: a preset's, or a pretrained --model DIR's
        return f"(default: {preset} for a preset, {PRETRAINED[name]} for --model DIR)"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _data_flags(p, run)
    _warm_start_flags(p, warm, both)
    _rl_flags(p, rl, ro, both)
    _reward_flags(p, w)
    _loss_flags(p, gr)
    _run_flags(p, run)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM: unwinds like Ctrl-C, but exits 143 (128 + 15), not 130."""


def _on_sigterm(signum, frame) -> None:
    """SIGTERM unwinds like Ctrl-C, so the embedded simulator and open files are closed on the way out."""
    raise Terminated


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _leave(code: int) -> int:
    """Under torchrun with several processes, flush and leave with ``os._exit``: gloo's worker threads
    can otherwise abort the interpreter's exit ("terminate called without an active exception", SIGABRT
    ~1 run in 10). On success ``run`` has destroyed the process group and closed every file and the
    embedded simulator; on an error torchrun stops the other ranks."""
    if "RANK" in os.environ and _env_int("WORLD_SIZE", 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    from ppp_min.run.config import from_args
    from ppp_min.run.setup import TrainError
    from ppp_min.run.loop import run
    try:
        try:
            cfg = from_args(args)
        except ValueError as e:
            raise TrainError(str(e)) from None
        result = run(cfg)
    except TrainError as e:  # bad input: 2; a run that could not go on (TrainFailure): 1
        print(f"train.py: error: {e}", file=sys.stderr)
        return _leave(e.exit_code)
    except Terminated:
        print("train.py: terminated (SIGTERM); continue with --resume", file=sys.stderr)
        return _leave(143)
    except KeyboardInterrupt:
        print("train.py: interrupted; continue with --resume", file=sys.stderr)
        return _leave(130)
    if _env_int("RANK", 0) == 0:  # one JSON line per run, not one per process
        print(json.dumps(result))
    return _leave(0)


if __name__ == "__main__":
    sys.exit(main())
