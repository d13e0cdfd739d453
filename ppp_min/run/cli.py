"""train.py's command line, built from the config dataclasses' fields: a knob is declared once (``knobs.knob``).

Contract
- ``add_flags(parser)``: one flag per ``knob`` field of ``RunConfig`` and of the dataclasses it holds, listed
  under the ``GROUPS`` of ``--help``; the dest is the field's dotted path (``warm.sft_steps``); an "auto" flag
  defaults to unset and its help gives both of its defaults.
- ``from_args(args) -> RunConfig``: the parsed flags back into the dataclasses (each validates its own fields;
  ``args`` is never modified). Here, and only here, the settings that depend on others are resolved: an unset
  "auto" flag takes the from-scratch preset's default, or ``PRETRAINED_WARM`` / ``PRETRAINED_RL``'s for a
  ``--model DIR``; an unset ``--w-prod`` is ``GDPO_W_PROD`` under GDPO and 1 (the paper's) under ``--no-gdpo``;
  the simulator token is ``--sim-token``, else ``$PPP_SIM_TOKEN``, and only for a ``--sim-url``.
"""

from __future__ import annotations

import argparse
import os

from ppp_min.knobs import add_flag, flag_values, knob_fields, read_flags
from ppp_min.rl.grpo import GRPOConfig
from ppp_min.rl.reward import RewardWeights
from ppp_min.rl.rollout import RolloutConfig
from ppp_min.rl.sft import WarmStartConfig
from ppp_min.run.config import GDPO_W_PROD, PRESETS, PRETRAINED_RL, PRETRAINED_WARM, RLConfig, RunConfig
from ppp_min.run.resume import safe_flags

GROUPS = {"data": "model and data", "warm": "SFT warm start", "rl": "PPP-GRPO (paper §5.2, §6.2)",
          "reward": "reward (paper eq. 1)", "loss": "advantage and loss (paper §5.2; docs/design.md#grpo)",
          "run": "run"}
# RunConfig's nested settings: (the dataclass, the defaults of its "auto" flags for a pretrained --model DIR)
SECTIONS = {"warm": (WarmStartConfig, PRETRAINED_WARM), "rl": (RLConfig, PRETRAINED_RL),
            "rollout": (RolloutConfig, None), "weights": (RewardWeights, None), "grpo": (GRPOConfig, None)}


def _add(group, f, dest: str, defaults, pretrained) -> None:
    k, value = f.metadata["knob"], getattr(defaults, f.name)
    help = k.help.replace("{safe_flags}", safe_flags()) if "{safe_flags}" in k.help else k.help
    if k.auto and pretrained is not None:
        help += f" (default: {value} for a preset, {getattr(pretrained, f.name)} for --model DIR)"
    add_flag(group, f, dest, value, help)


def add_flags(p: argparse.ArgumentParser) -> None:
    run = RunConfig()
    knobs = [(f, f.name, run, None) for f in knob_fields(RunConfig)]
    for prefix, (cls, pretrained) in SECTIONS.items():
        defaults = getattr(run, prefix) if prefix != "weights" else cls()  # w_prod is "auto"
        knobs += [(f, f"{prefix}.{f.name}", defaults, pretrained) for f in knob_fields(cls)]
    order = list(GROUPS)
    for key in order:
        group = p.add_argument_group(GROUPS[key])
        for f, dest, defaults, pretrained in knobs:
            if f.metadata["knob"].group == key:
                _add(group, f, dest, defaults, pretrained)
            if f.name == "warm_start_cache" and key == "warm":  # its second flag
                group.add_argument("--no-warm-start-cache", dest="warm_start_cache", action="store_const",
                                   const=None, help="always run the warm start (and store nothing)")


def from_args(args) -> RunConfig:
    """The run's configuration from ``train.build_parser()``'s namespace; raises ValueError on a bad value."""
    pretrained = args.model not in PRESETS
    if args.sim_token and not args.sim_url:
        raise ValueError("--sim-token is for a --sim-url simulator started with --token; the embedded one needs none")
    w_prod = GDPO_W_PROD if getattr(args, "grpo.gdpo") else 1.0
    bases = {"warm": PRETRAINED_WARM if pretrained else WarmStartConfig(),
             "rl": PRETRAINED_RL if pretrained else RLConfig(), "rollout": RolloutConfig(),
             "weights": RewardWeights(prod=w_prod), "grpo": GRPOConfig()}
    nested = {prefix: read_flags(args, cls, f"{prefix}.", bases[prefix]) for prefix, (cls, _) in SECTIONS.items()}
    token = args.sim_token or (os.environ.get("PPP_SIM_TOKEN") if args.sim_url else None)
    return RunConfig(**{**flag_values(args, RunConfig), "sim_token": token or None}, **nested)
