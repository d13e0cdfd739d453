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
from dataclasses import fields, replace

from ppp_min.knobs import flag_name
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


def _knobs(cls):
    return [f for f in fields(cls) if "knob" in f.metadata]


def _add(group, f, dest: str, defaults, pretrained) -> None:
    k, arg = f.metadata["knob"], dict(f.metadata["knob"].arg)
    value = getattr(defaults, f.name)
    help = k.help.replace("{safe_flags}", safe_flags()) if "{safe_flags}" in k.help else k.help
    if k.auto and pretrained is not None:
        help += f" (default: {value} for a preset, {getattr(pretrained, f.name)} for --model DIR)"
    if isinstance(f.default, bool) and "action" not in arg:
        arg["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
    elif "action" not in arg and "type" not in arg and "choices" not in arg and type(value) in (int, float):
        arg["type"] = type(value)
    default = None if k.auto else (k.cli_default if k.cli_default is not None else value)
    if arg.get("action") is None and "choices" not in arg:
        arg["metavar"] = arg.get("metavar") or flag_name(f)[2:].upper().replace("-", "_")
    group.add_argument(flag_name(f), dest=dest, default=default, help=help, **arg)


def add_flags(p: argparse.ArgumentParser) -> None:
    run = RunConfig()
    knobs = [(f, f.name, run, None) for f in _knobs(RunConfig)]
    for prefix, (cls, pretrained) in SECTIONS.items():
        defaults = getattr(run, prefix) if prefix != "weights" else cls()  # w_prod is "auto"
        knobs += [(f, f"{prefix}.{f.name}", defaults, pretrained) for f in _knobs(cls)]
    order = list(GROUPS)
    for key in order:
        group = p.add_argument_group(GROUPS[key])
        for f, dest, defaults, pretrained in knobs:
            if f.metadata["knob"].group == key:
                _add(group, f, dest, defaults, pretrained)
            if f.name == "warm_start_cache" and key == "warm":  # its second flag
                group.add_argument("--no-warm-start-cache", dest="warm_start_cache", action="store_const",
                                   const=None, help="always run the warm start (and store nothing)")


def _read(args, prefix: str, cls, base):
    """``base`` with every flag of ``cls`` that was given (an unset "auto" flag keeps ``base``'s value)."""
    kw = {}
    for f in _knobs(cls):
        k, v = f.metadata["knob"], getattr(args, prefix + f.name)
        if v is None and k.auto:
            continue
        kw[f.name] = k.parse(v) if k.parse else v
    return replace(base, **kw)


def from_args(args) -> RunConfig:
    """The run's configuration from ``train.build_parser()``'s namespace; raises ValueError on a bad value."""
    pretrained = args.model not in PRESETS
    if args.sim_token and not args.sim_url:
        raise ValueError("--sim-token is for a --sim-url simulator started with --token; the embedded one needs none")
    w_prod = GDPO_W_PROD if getattr(args, "grpo.gdpo") else 1.0
    bases = {"warm": PRETRAINED_WARM if pretrained else WarmStartConfig(),
             "rl": PRETRAINED_RL if pretrained else RLConfig(), "rollout": RolloutConfig(),
             "weights": RewardWeights(prod=w_prod), "grpo": GRPOConfig()}
    nested = {prefix: _read(args, f"{prefix}.", cls, bases[prefix]) for prefix, (cls, _) in SECTIONS.items()}
    token = args.sim_token or (os.environ.get("PPP_SIM_TOKEN") if args.sim_url else None)
    top = {}
    for f in _knobs(RunConfig):
        k, v = f.metadata["knob"], getattr(args, f.name)
        top[f.name] = k.parse(v) if k.parse else v
    return RunConfig(**{**top, "sim_token": token or None}, **nested)
