"""What a training run is: every setting of ``train.py`` as frozen dataclasses, built and validated once.

Contract
- Each setting is declared once, as a field with its default, its flag and its help (``knobs.knob``);
  ``run/cli.py`` builds train.py's parser from these fields and reads the flags back. Each value is validated in
  exactly one place, the ``__post_init__`` of the dataclass that owns it (``GRPOConfig``, ``RewardWeights``,
  ``RolloutConfig`` and ``WarmStartConfig`` validate their own fields); a bad value raises ``ValueError`` with
  one line naming the flag.
- ``PRETRAINED_WARM`` / ``PRETRAINED_RL``: the defaults of the "auto" settings for a pretrained ``--model DIR``
  (the preset's are the dataclasses' own); ``GDPO_W_PROD``: ``w_prod`` under the GDPO advantage.
- ``flag_of(path)``: the flag of a setting by dotted path (what ``--resume`` names when it refuses one).
- ``eval_config(cfg) -> evaluation.EvalConfig`` is the one derivation of the run's held-out evaluation (its
  temperature, the rollout's per-turn token budget and turns, batch, seed, tasks, split and families; all 20
  preferences), so ``eval.py --agent OUT/model`` with the same flags samples the same episodes.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

from ppp_min.evals.evaluation import EvalConfig
from ppp_min.knobs import flag_name, knob, positive_float, positive_int
from ppp_min.lm.presets import PRESETS as _PRESET_SIZES
from ppp_min.rl.grpo import GRPOConfig
from ppp_min.rl.reward import RewardWeights
from ppp_min.rl.rollout import RolloutConfig
from ppp_min.rl.sft import WarmStartConfig
from ppp_min.rl.step import StepConfig
from ppp_min.userville.families.registry import FAMILIES, parse_family
from ppp_min.userville.preferences import PREFERENCES, parse_prefs

PRESETS = tuple(_PRESET_SIZES)  # tiny | small | base: from-scratch models
# Under GDPO each reward dimension is normalised within its group before the weighted sum, so with the paper's
# weights (1, 1, 1) productivity gets a third of the signal; 2 keeps the task first. Measured: docs/experiments.md.
GDPO_W_PROD = 2.0


@dataclass(frozen=True)
class RLConfig:
    """The GRPO loop around the update: how many steps, how many prompts, the optimiser."""
    steps: int = knob(36, "rl", "RL steps (paper: 200) (%(default)s)", "--rl-steps")  # paper: 200 on a 36B model
    prompts_per_step: int = knob(8, "rl", "prompts per RL step (paper: 32-64) (%(default)s)")
    lr: float = knob(2e-4, "rl", "RL learning rate (paper: 1e-6 on a 36B model; a small model needs more)",
                     auto=True)
    weight_decay: float = knob(0.01, "rl", "AdamW weight decay (paper: 0.01)")
    grad_clip: float = knob(1.0, "rl", "global grad-norm clip, 0 = off (%(default)s)")
    micro_batch: int = knob(8, "rl", "sequences per forward/backward in SFT and the update; gradients accumulate to "
                            "the whole batch's", auto=True)  # 8 measured fastest on 2 cores
    precise_share: float | None = knob(None, "rl", "share of precise prompts in the training mix, in [0, 1) (default: "
                                       "one precise copy per task, the paper's mix: 1 in 13 with the 12 seen "
                                       "preferences, 1 in 21 with all 20)", type=float)  # paper §6.2

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


# A pretrained --model DIR already speaks: a short, gentle warm start that teaches the tags, small micro-batches
# for memory, and a small RL lr. Measured on SmolLM2-135M-Instruct (docs/experiments.md#a-real-pretrained-model).
# These are the defaults of the settings whose flag is "auto" (``knob(auto=True)``) for such a model.
PRETRAINED_WARM = WarmStartConfig(copy_steps=0, pretrain_steps=0, sft_steps=48, batch=4, lr=3e-4)
PRETRAINED_RL = RLConfig(lr=1e-5, micro_batch=2)


@dataclass(frozen=True)
class RunConfig:
    """One training run. Built once by ``from_args``; every phase reads it, nothing mutates it."""
    model: str = knob("small", "data", "preset tiny|small|base (from scratch) or a local HF directory "
                      "(Llama/Qwen2/Qwen3) (default: %(default)s)")
    smear_keys: bool = knob(True, "data", "a from-scratch preset with smeared keys: each attention key mixed with "
                            "the previous token's, so copying from the context is learned early (lm/copying.py; "
                            "ignored for --model DIR)")
    smear_window: int = knob(1, "data", "with smeared keys: how many previous tokens each key mixes in; over 1, "
                             "learned per-channel taps on keys and queries, so a head matches that many tokens "
                             "of context, not one (lm/copying.py; ignored for --model DIR) (%(default)s)")
    recency: bool = knob(False, "data", "a from-scratch preset whose heads each learn a bias toward recent keys "
                         "(-softplus(r) log(1 + distance)), so that of two equal matches the later is read "
                         "(lm/copying.py; ignored for --model DIR) (%(default)s)")
    prefs: tuple[str, ...] = knob(tuple(PREFERENCES), "data", "training preferences: all | seen (the paper's 12) | "
                                  "unseen | name,name,...; evaluation always covers all 20 (default: %(default)s)",
                                  cli_default="all", parse=parse_prefs)
    families: tuple[str, ...] = knob(tuple(FAMILIES), "data", "task family (paper: SWE-Func-Loc and BrowseComp-Plus, "
                                     "in miniature)", "--family", cli_default="both", choices=[*FAMILIES, "both"],
                                     parse=parse_family)
    train_tasks: int = knob(96, "data", "training tasks per family (%(default)s)")
    eval_tasks: int = knob(EvalConfig.tasks, "data", "held-out tasks per family, each vague prompt with all 20 "
                           "preferences (0 = no evaluation) (%(default)s)")
    seed: int = knob(0, "data", "seeds data, init, sampling (per step and rank)")
    warm: WarmStartConfig = field(default_factory=WarmStartConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    weights: RewardWeights = field(default_factory=lambda: RewardWeights(prod=GDPO_W_PROD))
    eval_every: int = knob(0, "run", "also evaluate on the held-out tasks every N RL steps (0 = only SFT and final)")
    eval_temperature: float = knob(EvalConfig.temperature, "run", "held-out eval sampling temperature (0 = greedy; "
                                   "1 = the policy as trained, seeded)")
    eval_batch: int = knob(EvalConfig.batch, "run", "episodes decoded together in an evaluation; the tokens sampled "
                           "depend on it (%(default)s)")
    eval_split: str = knob(EvalConfig.split, "run", "held-out split of the evaluations: test (report) or val (choose "
                           "settings) (%(default)s)", choices=["test", "val"])
    log_samples: int = knob(2, "run", "groups (best and worst episode each) per --samples-every RL steps, and "
                            "episodes per evaluation, written to OUT/samples.jsonl (0 = none) (%(default)s)")
    samples_every: int = knob(6, "run", "RL steps between samples (%(default)s)")
    out: str = knob("runs/ppp", "run", "output directory (%(default)s)")
    resume: bool = knob(False, "run", "continue from OUT/checkpoint.safetensors. Every setting must be the "
                        "checkpoint's (a difference is refused, naming it) except: {safe_flags}")
    overwrite: bool = knob(False, "run", "replace the run already in OUT (a fresh run refuses it)")
    save_every: int = knob(10, "run", "checkpoint every N RL steps (%(default)s)")
    sim_url: str | None = knob(None, "run", "simulator URL(s), comma-separated; default: start the embedded rules "
                               "simulator", type=str)
    sim_token: str | None = knob(None, "run", "bearer token of a --sim-url simulator started with --token (default: "
                                 "$PPP_SIM_TOKEN)", type=str, repr=False)  # never checkpointed (resume.SECRET)
    sim_retry_s: float = knob(120.0, "run", "seconds a simulator call keeps retrying an outage (one line while it "
                              "waits); past it the run stops with a checkpoint to --resume from (%(default)s)")
    sim_timeout: float = knob(30.0, "run", "seconds to wait for one simulator answer (%(default)s)")
    device: str = knob("auto", "run", "auto | cpu | cuda | cuda:N (%(default)s)")
    threads: int = knob(0, "run", "torch CPU threads (0 = torch's default)")
    warm_start_cache: str | None = knob("auto", "warm", "reuse the SFT model of an earlier run with the same code, "
                                        "warm-start settings and seed, stored under DIR (auto: $PPP_MIN_CACHE or "
                                        "~/.cache/ppp_min, /warm_start); --no-warm-start-cache: always run the warm "
                                        "start (and store nothing)", metavar="DIR")  # run/warm_cache.py

    def __post_init__(self):
        positive_int("train-tasks", self.train_tasks)  # demonstrations and the training mix need tasks
        if not 1 <= self.smear_window <= 8:
            raise ValueError(f"--smear-window must be in 1..8, got {self.smear_window}")
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


def flag_of(path: str) -> str:
    """The train.py flag of a RunConfig setting by dotted path (``rl.lr`` -> ``--lr``, ``grpo.gdpo`` ->
    ``--gdpo/--no-gdpo``); the path itself for a library-only setting (a field without a ``knob``, e.g.
    ``rollout.top_p``); ``--`` + the last name for a setting this version does not have."""
    cls, f = RunConfig, None
    for name in path.split("."):
        f = next((x for x in fields(cls) if x.name == name), None) if cls is not None else None
        if f is None:
            return "--" + path.rsplit(".", 1)[-1].replace("_", "-")
        cls = type(f.default_factory()) if f.default_factory is not MISSING else None
    if "knob" not in f.metadata:
        return path
    name = flag_name(f)
    return f"{name}/--no-{name[2:]}" if f.default is True and not dict(f.metadata["knob"].arg).get("action") else name
