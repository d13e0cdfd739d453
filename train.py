"""PPP training CLI: SFT warm start ("skills, not policy"), then multi-objective GRPO (DESIGN §3, §7, §8).

    python train.py --model small --prefs all          # the default run: minutes on a 2-core CPU

Each RL step samples `--prompts-per-step` (task, preference, vague|precise) items from the training mix
(paper §6.2: every task with every training preference on its vague prompt, plus one precise copy),
rolls out `--group-size` episodes each against the simulated user, scores them with the PPP reward,
and takes one GRPO step. Progress goes to stdout, metrics to OUT/metrics.jsonl, checkpoints to
OUT/checkpoint.safetensors (atomic; `--resume` continues bit-identically on CPU), the final model to
OUT/model as an HF directory. The last stdout line is JSON: wall_s and held-out metrics of the SFT and
final models. Under `torchrun`, each rank rolls out its share and gradients are averaged (gloo/nccl).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

PAPER = "paper"  # marks help texts whose default is the paper's value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="small",
                   help="preset tiny|small|base (from scratch) or a local HF directory (Llama/Qwen2/Qwen3)")
    g.add_argument("--prefs", default="all",
                   help="training preferences: all | seen (the paper's 12) | unseen | name,name,...")
    g.add_argument("--family", default="both", choices=["funcloc", "research", "both"],
                   help="task family (paper: SWE-Func-Loc and BrowseComp-Plus, in miniature)")
    g.add_argument("--train-tasks", type=int, default=96, help="generated training tasks per family")
    g.add_argument("--eval-tasks", type=int, default=24, help="held-out test tasks per family")
    g.add_argument("--seed", type=int, default=0, help="seeds data, init, sampling (per step and rank)")
    g = p.add_argument_group("SFT warm start (DESIGN §8)")
    g.add_argument("--pretrain-steps", type=int, default=None,
                   help="language-modelling steps on every token of the scripted transcripts before SFT (a "
                        "from-scratch preset learns the text and to copy from context here) "
                        "(default: 200 for a preset, 0 for --model DIR)%(default).0s")
    g.add_argument("--sft-steps", type=int, default=300,
                   help="SFT steps on scripted demonstrations, loss on the assistant's tokens only")
    g.add_argument("--sft-batch", type=int, default=16, help="demonstrations per SFT step")
    g.add_argument("--sft-lr", type=float, default=3e-3, help="SFT learning rate (AdamW, cosine)")
    g.add_argument("--sft-fp32", dest="sft_bf16", action="store_false",
                   help="SFT in fp32 instead of bf16 autocast (bf16 is ~1.5x faster on AVX-512 CPUs; RL is fp32)")
    g = p.add_argument_group("PPP-GRPO (paper §5-6; notes §5)")
    g.add_argument("--rl-steps", type=int, default=36, help="RL steps (paper: 200)")
    g.add_argument("--group-size", type=int, default=8, help="G rollouts per prompt (paper: 8)")
    g.add_argument("--prompts-per-step", type=int, default=8, help="prompts per RL step (paper: 32-64)")
    g.add_argument("--lr", type=float, default=2e-4,
                   help="RL learning rate (paper: 1e-6 on a 36B model; a small model needs more)")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (paper: 0.01)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="global grad-norm clip (0 = off)")
    g.add_argument("--temperature", type=float, default=1.0, help="rollout and loss temperature (paper: 1.0)")
    g.add_argument("--max-turns", type=int, default=6, help="agent turns per episode")
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens per agent turn")
    g.add_argument("--micro-batch", type=int, default=8,
                   help="sequences per forward/backward, in SFT and the GRPO update (gradients accumulate to "
                        "the whole batch's; 8 measured fastest on 2 CPU cores)")
    g = p.add_argument_group("reward (paper eq. 1; DESIGN §6)")
    g.add_argument("--w-prod", type=float, default=None,
                   help="productivity weight (paper: 1) (default: 2 with --gdpo, which otherwise gives "
                        "productivity a third of the signal; 1 with --no-gdpo)%(default).0s")
    g.add_argument("--w-proact", type=float, default=1.0, help="proactivity weight (paper: 1; 0 = w/o Proact.)")
    g.add_argument("--w-pers", type=float, default=1.0, help="personalization weight (paper: 1; 0 = w/o Pers.)")
    g.add_argument("--no-clip", action="store_true", help="do not clip the reward to [0, 1] (paper clips)")
    g = p.add_argument_group("loss variants (DESIGN §7)")
    g.add_argument("--clip-low", type=float, default=0.2, help="PPO clip epsilon low (paper/DAPO: 0.2)")
    g.add_argument("--clip-high", type=float, default=0.28, help="clip-higher epsilon (DAPO; notes §5: 0.28)")
    g.add_argument("--adv-norm", default="std", choices=["std", "none"],
                   help="group advantage normalisation: std (GRPO, paper) or none (Dr.GRPO)")
    g.add_argument("--loss-agg", default="token-mean", choices=["token-mean", "seq-mean-token-mean", "constant"],
                   help="loss aggregation (paper: token-mean over the global token count)")
    g.add_argument("--constant-norm", type=int, default=256, help="normaliser for --loss-agg constant (Dr.GRPO)")
    g.add_argument("--dual-clip", type=float, default=None, help="dual-clip constant c for A<0 (e.g. 3.0)")
    g.add_argument("--kl-beta", type=float, default=0.0, help="k3 KL to the frozen SFT model (paper: no KL)")
    g.add_argument("--ppo-epochs", type=int, default=1, help="updates per batch (paper: 1)")
    g.add_argument("--gdpo", action=argparse.BooleanOptionalAction, default=True,
                   help="GDPO: normalise each reward dimension in the group, then sum (measured: the paper's "
                        "scalar advantage, --no-gdpo, stops asking here; see README)")
    g.add_argument("--drop-zero-var", action="store_true", help="drop zero-variance groups (DAPO)")
    g = p.add_argument_group("run")
    g.add_argument("--sim-url", default=None,
                   help="simulator URL(s), comma-separated; default: start the embedded rules simulator")
    g.add_argument("--out", default="runs/ppp", help="output directory")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    g.add_argument("--save-every", type=int, default=10, help="checkpoint every N RL steps")
    g.add_argument("--eval-every", type=int, default=0,
                   help="also evaluate on the held-out tasks every N RL steps (0 = only SFT and final)")
    g.add_argument("--eval-temperature", type=float, default=1.0,
                   help="held-out eval sampling temperature (0 = greedy; 1 = the policy as trained, seeded)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    return p


def fail(msg: str) -> None:
    print(f"train.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the embedded simulator and open files are closed on the way out
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    from ppp_min.train_loop import TrainError, run  # heavy imports after --help
    try:
        result = run(args)
    except TrainError as e:
        fail(str(e))
    except KeyboardInterrupt:
        print("train.py: interrupted; resume with --resume", file=sys.stderr)
        return 130
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
