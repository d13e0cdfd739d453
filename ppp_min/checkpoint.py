"""Atomic save / exact resume of the full training state, in safetensors only (no pickle).

Contract
- ``save_checkpoint(path, model, optimizer, generators, step, cursor, config)`` writes ONE safetensors file:
  model weights (``model.*``), optimizer tensors (``optim.<param index>.<name>``), every RNG state as uint8
  tensors (``rng.torch``, ``rng.<generator name>``, ``rng.cuda.<i>``), and a JSON metadata entry holding the
  step, the data cursor, the training config, the optimizer's param groups and Python's ``random`` state.
  It is written to a temporary file in the same directory and renamed into place (``os.replace`` is
  atomic), so a crash mid-write never leaves a half checkpoint. The file is fsynced before the rename and
  its directory after it, so a finished save also survives a power loss; temporary files left by an
  interrupted earlier save (``<name>.tmp.<pid>``) are removed by the next save.
- ``load_checkpoint(path, model, optimizer, generators) -> TrainState`` restores all of it in place, so that
  N steps == N/2 steps + resume + N/2 steps, bit for bit on CPU (tested in tests/test_train.py).
- A file that is missing, not safetensors, or lacks a key raises ``CheckpointError`` with what to do.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "ppp_min-checkpoint-1"


class CheckpointError(RuntimeError):
    pass


@dataclass(frozen=True)
class TrainState:
    step: int
    cursor: int
    config: dict


def save_checkpoint(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    generators: dict[str, torch.Generator], step: int, cursor: int, config: dict) -> None:
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:  # tied weights are stored once (the model re-ties them)
            continue
        seen.add(t.data_ptr())
        tensors[f"model.{name}"] = t.detach().cpu().contiguous()
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for key, val in st.items():
            val = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"optim.{idx}.{key}"] = val.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    for name, g in generators.items():
        tensors[f"rng.{name}"] = g.get_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {"format": FORMAT, "step": step, "cursor": cursor, "config": config,
            "param_groups": opt["param_groups"], "python_random": _py_state_to_json(random.getstate())}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    _remove_stale_tmp(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    save_file(tensors, tmp, metadata={"ppp_min": json.dumps(meta)})
    _fsync_path(tmp)  # the bytes are on disk before the name points at them
    os.replace(tmp, path)  # atomic: readers see the old or the new checkpoint, never half of one
    _fsync_path(directory)  # the rename itself is on disk


def _fsync_path(path: str) -> None:
    """fsync a file or a directory (directories only where the OS allows opening them, i.e. POSIX)."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. a directory on Windows: nothing more we can do
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_tmp(path: str) -> None:
    """Delete ``<path>.tmp.<pid>`` files of earlier saves that died before their rename."""
    directory, prefix = os.path.dirname(os.path.abspath(path)), os.path.basename(path) + ".tmp."
    for name in os.listdir(directory):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            try:
                os.remove(os.path.join(directory, name))
            except OSError:
                pass


def load_checkpoint(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    generators: dict[str, torch.Generator]) -> TrainState:
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}; run without --resume to start fresh")
    try:
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("ppp_min", "{}"))
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable ppp_min checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file (format={meta.get('format')!r})")
    device = next(model.parameters()).device
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        missing, unexpected = model.load_state_dict(model_sd, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise CheckpointError(f"{path} does not match this model ({str(e).splitlines()[-1].strip()}); "
                              "resume with the same --model") from None
    tied = {n for n in missing if n.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"{path} does not match this model (missing {sorted(set(missing) - tied)[:3]}, "
                              f"unexpected {unexpected[:3]}); resume with the same --model")
    if optimizer is not None:
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                state.setdefault(int(idx), {})[key] = v.to(device) if v.dim() > 0 else v
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    for name, g in generators.items():
        if f"rng.{name}" not in tensors:
            raise CheckpointError(f"{path} lacks the RNG state {name!r}")
        g.set_state(tensors[f"rng.{name}"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)
    random.setstate(_py_state_from_json(meta["python_random"]))
    return TrainState(step=int(meta["step"]), cursor=int(meta["cursor"]), config=meta["config"])


def _py_state_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_state_from_json(obj) -> tuple:
    version, internal, gauss = obj
    return (version, tuple(internal), gauss)
