"""What a training run is: every setting of ``train.py`` as frozen dataclasses, built and validated once.

Contract
- The dataclass defaults ARE the defaults: ``train.py``'s parser reads them (``WarmStartConfig()`` etc.), so
  the library and the CLI cannot disagree. Each value is validated in exactly one place, the
  ``__post_init__`` of the dataclass that owns it (``GRPOConfig``, ``RewardWeights`` and ``RolloutConfig``
  validate their own fields); a bad value raises ``ValueError`` with one line naming the flag.
- ``from_args(args) -> RunConfig`` turns the parsed flags into the run's configuration; ``args`` is never
  modified. Settings that depend on others ("auto") are resolved here, and only here:
  the warm start, RL lr and micro-batch (a from-scratch preset's, or ``PRETRAINED``'s for a ``--model DIR``) and ``w_prod``
  (2 under the GDPO advantage, 1 under the paper's scalar advantage; see ``GDPO_W_PROD``); the simulator
  token (``--sim-token``, else ``$PPP_SIM_TOKEN``, for a ``--sim-url`` only).
- ``eval_config(cfg) -> evaluation.EvalConfig`` is the one derivation of the run's held-out evaluation (its
  temperature, the rollout's per-turn token budget and turns, batch, seed, tasks, split and families; all 20
  preferences), so ``eval.py --agent OUT/model`` with the same flags samples the same episodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ppp_min.evals.evaluation import EvalConfig
from ppp_min.knobs import positive_float, positive_int
from ppp_min.lm.presets import PRESETS as _PRESET_SIZES
from ppp_min.rl.grpo import GRPOConfig
from ppp_min.rl.reward import RewardWeights
from ppp_min.rl.rollout import RolloutConfig
from ppp_min.rl.sft import WarmStartConfig
from ppp_min.rl.step import StepConfig
from ppp_min.userville.preferences import PREFERENCES, parse_prefs

PRESETS = tuple(_PRESET_SIZES)  # tiny | small | base: from-scratch models
FAMILIES = ("funcloc", "research")
# Under GDPO each reward dimension is normalised within its group before the weighted sum, so with the paper's
# weights (1, 1, 1) productivity gets a third of the signal; 2 keeps the task first. Measured: docs/experiments.md.
GDPO_W_PROD = 2.0
# A pretrained --model DIR already speaks: a short, gentle warm start that teaches the tags, small micro-batches
# for memory, and a small RL lr. Measured on SmolLM2-135M-Instruct (docs/experiments.md#a-real-pretrained-model).
PRETRAINED = {"pretrain_steps": 0, "sft_steps": 48, "sft_batch": 4, "sft_lr": 3e-4, "lr": 1e-5, "micro_batch": 2}


@dataclass(frozen=True)
class RLConfig:
    """The GRPO loop around the update: how many steps, how many prompts, the optimiser."""
    steps: int = 36  # paper: 200 on a 36B model
    prompts_per_step: int = 8  # paper: 32-64
    lr: float = 2e-4  # paper: 1e-6 on a 36B model; a small model needs more
    weight_decay: float = 0.01  # paper: 0.01
    grad_clip: float = 1.0  # global grad-norm clip; 0 = off
    micro_batch: int = 8  # sequences per forward/backward (SFT and update); 8 measured fastest on 2 cores
    precise_share: float | None = None  # share of precise prompts in the mix; None = one per task (paper §6.2)

    def __post_init__(self):
        positive_int("rl-steps", self.steps, 0)
        positive_int("prompts-per-step", self.prompts_per_step)
        positive_float("lr", self.lr)
        positive_float("weight-decay", self.weight_decay, allow_zero=True)
        positive_float("grad-clip", self.grad_clip, allow_zero=True)
        positive_int("micro-batch", self.micro_batch)
        if self.precise_share is not None and not (isinstance(self.precise_share, (int, float))
                                                   and 0.0 <= self.precise_share < 1.0):
            raise ValueError(f"--precise-share must be a number in [0, 1), got {self.precise_share!r}")


@dataclass(frozen=True)
class RunConfig:
    """One training run. Built once by ``from_args``; every phase reads it, nothing mutates it."""
    model: str = "small"  # a preset (PRESETS) or a local HF directory
    prefs: tuple[str, ...] = tuple(PREFERENCES)  # training preferences; evaluation always uses all 20
    families: tuple[str, ...] = FAMILIES
    train_tasks: int = 96  # per family
    eval_tasks: int = EvalConfig.tasks  # held-out tasks per family (0 = no evaluation)
    seed: int = 0
    warm: WarmStartConfig = field(default_factory=WarmStartConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    weights: RewardWeights = field(default_factory=lambda: RewardWeights(prod=GDPO_W_PROD))
    eval_every: int = 0  # also evaluate every N RL steps (0 = only the SFT and the final model)
    eval_temperature: float = EvalConfig.temperature  # 0 = greedy; 1 = the policy as trained (seeded)
    eval_batch: int = EvalConfig.batch  # episodes decoded together in an evaluation
    eval_split: str = EvalConfig.split  # test | val
    log_samples: int = 2  # dialogues written to OUT/samples.jsonl per group-contrast / evaluation (0 = none)
    samples_every: int = 6  # RL steps between sample dumps
    out: str = "runs/ppp"
    resume: bool = False
    overwrite: bool = False
    save_every: int = 10
    sim_url: str | None = None
    sim_token: str | None = field(default=None, repr=False)  # never stored in a checkpoint (resume.SECRET)
    sim_retry_s: float = 120.0  # how long a simulator call keeps retrying an outage before the run stops
    sim_timeout: float = 30.0  # seconds to wait for one simulator answer
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0 = torch's default)
    warm_start_cache: str | None = "auto"  # cache dir of SFT models (warm_cache.py); auto = the user's; None = off

    def __post_init__(self):
        positive_int("train-tasks", self.train_tasks)  # demonstrations and the training mix need tasks
        for name in ("eval_every", "log_samples", "threads"):
            positive_int(name.replace("_", "-"), getattr(self, name), 0)
        positive_float("sim-retry-s", self.sim_retry_s, allow_zero=True)
        positive_float("sim-timeout", self.sim_timeout)
        for url in (self.sim_url or "").split(","):
            if url.strip() and not url.strip().startswith(("http://", "https://")):
                raise ValueError(f"--sim-url must be http://host:port or https://..., got {url.strip()!r}")
        positive_int("save-every", self.save_every)
        positive_int("samples-every", self.samples_every)
        eval_config(self)  # the evaluation's settings are validated by EvalConfig
        if not self.rollout.temperature > 0:  # the loss scores tokens at the sampling temperature
            raise ValueError(f"--temperature must be > 0 for RL, got {self.rollout.temperature!r}")
        if self.rl.steps > 0 and self.rollout.group_size < 2:
            raise ValueError("--group-size must be >= 2: GRPO compares rollouts within a group")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other; give one")

    @property
    def step(self) -> StepConfig:
        """What one GRPO step reads (``rl/step.py: grpo_step``)."""
        return StepConfig(self.rollout, self.weights, self.grpo, self.rl.micro_batch, self.rl.grad_clip)

    @property
    def pretrained(self) -> bool:
        return self.model not in PRESETS


def eval_config(cfg: RunConfig) -> EvalConfig:
    """The run's held-out evaluation (train.py's sft / final / every --eval-every steps): every preference on
    vague prompts, whatever the training preferences (paper Fig. 8), sampled like the rollouts but at
    ``--eval-temperature``."""
    return EvalConfig(temperature=cfg.eval_temperature, max_new_tokens=cfg.rollout.max_new_tokens,
                      max_turns=cfg.rollout.max_turns, batch=cfg.eval_batch, seed=cfg.seed, tasks=cfg.eval_tasks,
                      split=cfg.eval_split, families=cfg.families)


def from_args(args) -> RunConfig:
    """The run's configuration from ``train.build_parser()``'s namespace; raises ValueError on a bad value."""
    pretrained = args.model not in PRESETS
    warm0, rl0 = WarmStartConfig(), RLConfig()
    preset = {"pretrain_steps": warm0.pretrain_steps, "sft_steps": warm0.sft_steps, "sft_batch": warm0.batch,
              "sft_lr": warm0.lr, "lr": rl0.lr, "micro_batch": rl0.micro_batch}

    def auto(name):  # a flag left unset: the preset's default, or the pretrained model's
        v = getattr(args, name)
        return v if v is not None else (PRETRAINED if pretrained else preset)[name]
    w_prod = args.w_prod if args.w_prod is not None else (GDPO_W_PROD if args.gdpo else 1.0)
    if args.sim_token and not args.sim_url:
        raise ValueError("--sim-token is for a --sim-url simulator started with --token; the embedded one needs none")
    token = args.sim_token or (os.environ.get("PPP_SIM_TOKEN") if args.sim_url else None)
    return RunConfig(
        model=args.model, prefs=parse_prefs(args.prefs),
        families=FAMILIES if args.family == "both" else (args.family,),
        train_tasks=args.train_tasks, eval_tasks=args.eval_tasks, seed=args.seed,
        warm=WarmStartConfig(pretrain_steps=auto("pretrain_steps"), sft_steps=auto("sft_steps"),
                             batch=auto("sft_batch"), lr=auto("sft_lr"), bf16={"auto": None, "bf16": True, "fp32": False}[args.sft_dtype],
                             style_match=args.demo_style_match),
        rl=RLConfig(steps=args.rl_steps, prompts_per_step=args.prompts_per_step, lr=auto("lr"),
                    weight_decay=args.weight_decay, grad_clip=args.grad_clip, micro_batch=auto("micro_batch"),
                    precise_share=args.precise_share),
        rollout=RolloutConfig(group_size=args.group_size, max_turns=args.max_turns,
                              max_new_tokens=args.max_new_tokens, temperature=args.temperature),
        grpo=GRPOConfig(clip_low=args.clip_low, clip_high=args.clip_high, adv_norm=args.adv_norm,
                        loss_agg=args.loss_agg, constant_norm=args.constant_norm, dual_clip=args.dual_clip,
                        kl_beta=args.kl_beta, ppo_epochs=args.ppo_epochs, gdpo=args.gdpo,
                        drop_zero_var=args.drop_zero_var, pers_scope=args.pers_scope),
        weights=RewardWeights(prod=w_prod, proact=args.w_proact, pers=args.w_pers, clip=not args.no_clip),
        eval_every=args.eval_every, eval_temperature=args.eval_temperature, eval_batch=args.eval_batch,
        eval_split=args.eval_split, log_samples=args.log_samples,
        samples_every=args.samples_every, out=args.out, resume=args.resume, overwrite=args.overwrite,
        save_every=args.save_every, sim_url=args.sim_url, device=args.device, threads=args.threads,
        warm_start_cache=args.warm_start_cache, sim_token=token or None, sim_retry_s=args.sim_retry_s,
        sim_timeout=args.sim_timeout)
