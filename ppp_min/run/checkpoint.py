"""Atomic save / exact resume of the full training state, in safetensors only (no pickle), checksummed.

Contract
- ``save_checkpoint(path, model, optimizer, generators, step, config)`` writes ONE safetensors file:
  model weights (``model.*``), optimizer tensors (``optim.<param index>.<name>``), every RNG state as uint8
  tensors (``rng.torch``, ``rng.<generator name>``, ``rng.cuda.<i>``), and a JSON metadata entry holding the
  format, the step, the training config, the optimizer's param groups, Python's ``random``
  state and ``sha256``: a SHA-256 over every tensor's name, dtype, shape and bytes.
  It is written to a temporary file in the same directory and renamed into place (``os.replace`` is
  atomic), so a crash mid-write never leaves a half checkpoint. The file is fsynced before the rename and
  its directory after it, so a finished save also survives a power loss; temporary files left by an
  interrupted earlier save (``<name>.tmp.<pid>``) are removed by the next save. A failed write (a full disk)
  removes its temporary file and raises ``CheckpointError`` naming the path and saying that the last good
  checkpoint (its step) is intact: the old file is never touched before the rename.
- ``read_meta(path) -> dict``: the validated metadata alone (cheap: no tensor is read), e.g. to compare the
  stored config before anything is built.
- ``load_checkpoint(path, model, optimizer, generators) -> TrainState`` verifies the file, then restores all
  of it in place, so that N steps == N/2 steps + resume + N/2 steps, bit for bit on CPU (tests/test_train.py).
- Every problem is a one-line ``CheckpointError`` saying what is wrong: a missing or unreadable file, another
  format, a missing metadata key or tensor, a checksum that does not match the tensor data (a damaged file),
  a step that is not an integer >= 0, a non-finite weight or optimizer value, a tensor whose shape
  does not match the model or its parameter, an RNG state that cannot be restored. Nothing of the model or
  the optimizer is changed before the whole file has been verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT = "ppp_min-checkpoint-2"  # 2: with the sha256 of the tensor data
META_KEYS = ("format", "step", "config", "param_groups", "python_random", "sha256")


class CheckpointError(RuntimeError):
    pass


@dataclass(frozen=True)
class TrainState:
    step: int
    config: dict


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _state_tensors(model, optimizer, generators) -> tuple[dict[str, torch.Tensor], list]:
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
    return tensors, opt["param_groups"]


def save_checkpoint(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    generators: dict[str, torch.Generator], step: int, config: dict) -> None:
    tensors, param_groups = _state_tensors(model, optimizer, generators)
    meta = {"format": FORMAT, "step": step, "config": config, "param_groups": param_groups,
            "python_random": _py_state_to_json(random.getstate()), "sha256": digest(tensors)}
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(directory, exist_ok=True)
        _remove_stale_tmp(path)
        save_file(tensors, tmp, metadata={"ppp_min": json.dumps(meta)})
        _fsync_path(tmp)  # the bytes are on disk before the name points at them
        os.replace(tmp, path)  # atomic: readers see the old or the new checkpoint, never half of one
    except (SafetensorError, OSError) as e:
        _remove(tmp)
        raise CheckpointError(f"cannot write the checkpoint {path} ({_reason(e)}); {last_good(path, named=False)}: "
                              "free space (or fix what failed) and rerun with --resume") from None
    _fsync_path(directory)  # the rename itself is on disk


def last_good(path: str, named: bool = True) -> str:
    """What a failed write leaves: the previous checkpoint, intact, or none."""
    try:
        step = read_meta(path)["step"]
    except CheckpointError:
        return f"no checkpoint was written to {path} yet" if named else "no checkpoint was written yet"
    return f"the last good checkpoint {path} (step {step}) is intact" if named else \
        f"the last good one (step {step}) is intact"


def _reason(e: Exception) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    text = " ".join(str(e).split())  # safetensors wraps the OS error in its own, worded by version
    m = re.search(r'message: "([^"]+)"', text) or re.search(r"I/O error: ([^(]+?) \(os error \d+\)", text)
    return m.group(1) if m else text[:200]


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


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
            _remove(os.path.join(directory, name))


# ------------------------------------------------------------------------------------------- loading
def read_meta(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}; run without --resume to start fresh")
    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("ppp_min", "{}"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable ppp_min checkpoint ({_reason(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path} is not a {FORMAT} file (format={got!r}); start a fresh run")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{path} is damaged: its metadata lacks {', '.join(missing)}")
    v = meta["step"]
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        raise CheckpointError(f"{path} is damaged: step = {v!r} is not an integer >= 0")
    if not isinstance(meta["config"], dict) or not isinstance(meta["param_groups"], list):
        raise CheckpointError(f"{path} is damaged: config or param_groups has the wrong type")
    return meta


def _read(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    meta = read_meta(path)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable ppp_min checkpoint ({_reason(e)})") from None
    if digest(tensors) != meta["sha256"]:
        raise CheckpointError(f"{path} is damaged: its tensor data does not match the checksum saved with it; "
                              "resume from a copy or start a fresh run")
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path} holds non-finite values in {name}; resume from an earlier copy")
    return meta, tensors


def load_checkpoint(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    generators: dict[str, torch.Generator]) -> TrainState:
    meta, tensors = _read(path)
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    _check_model(path, model, model_sd)
    opt_state = _optimizer_state(path, optimizer, tensors, meta) if optimizer is not None else None
    _check_rng(path, meta, tensors, generators)
    model.load_state_dict(model_sd, strict=False)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: the optimizer state does not fit this run ({e})") from None
    _restore_rng(path, meta, tensors, generators)
    return TrainState(step=meta["step"], config=meta["config"])


def _check_model(path: str, model: torch.nn.Module, model_sd: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    first: dict[int, str] = {}
    tied = {n for n, t in expected.items() if first.setdefault(t.data_ptr(), n) != n}  # stored once, re-tied
    missing = [n for n in expected if n not in model_sd and n not in tied]
    unexpected = [n for n in model_sd if n not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match this model (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}); resume with the same --model")
    for n, t in model_sd.items():
        if tuple(t.shape) != tuple(expected[n].shape):
            raise CheckpointError(f"{path} does not match this model ({n}: shape {tuple(t.shape)} in the "
                                  f"checkpoint, {tuple(expected[n].shape)} in the model); resume with the same --model")


def _optimizer_state(path: str, optimizer, tensors: dict, meta: dict) -> dict:
    """The optimizer's state dict from the file, each tensor checked against its parameter's shape."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    device = params[0].device if params else torch.device("cpu")
    groups = meta["param_groups"]
    if (not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
            or sum(len(g["params"]) for g in groups) != len(params)):
        raise CheckpointError(f"{path} is damaged: its param_groups do not describe this model's "
                              f"{len(params)} parameters")
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if not k.startswith("optim."):
            continue
        _, idx, key = k.split(".", 2)
        if not idx.isdigit() or int(idx) >= len(params):
            raise CheckpointError(f"{path} is damaged: optimizer tensor {k} names no parameter")
        if v.dim() > 0 and tuple(v.shape) != tuple(params[int(idx)].shape):
            raise CheckpointError(f"{path} is damaged: optimizer tensor {k} has shape {tuple(v.shape)}, its "
                                  f"parameter {tuple(params[int(idx)].shape)}")
        state.setdefault(int(idx), {})[key] = v.to(device) if v.dim() > 0 else v
    return {"state": state, "param_groups": groups}


def _check_rng(path: str, meta: dict, tensors: dict, generators: dict[str, torch.Generator]) -> None:
    """Every RNG state present, of the size this torch expects; Python's tried on a scratch generator."""
    want = {"rng.torch": torch.get_rng_state(), **{f"rng.{n}": g.get_state() for n, g in generators.items()}}
    for key, ref in want.items():
        if key not in tensors:
            raise CheckpointError(f"{path} is damaged: it lacks the RNG state {key}")
        if tensors[key].dtype != ref.dtype or tensors[key].shape != ref.shape:
            raise CheckpointError(f"{path} is damaged: an RNG state cannot be restored ({key} has "
                                  f"{tensors[key].numel()} {tensors[key].dtype} values, not {ref.numel()})")
    try:
        random.Random().setstate(_py_state_from_json(meta["python_random"]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is damaged: an RNG state cannot be restored (python_random: {e})") from None


def _restore_rng(path: str, meta: dict, tensors: dict, generators: dict[str, torch.Generator]) -> None:
    try:
        torch.set_rng_state(tensors["rng.torch"])
        for name, g in generators.items():
            g.set_state(tensors[f"rng.{name}"])
        if torch.cuda.is_available():
            states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
            if states:
                torch.cuda.set_rng_state_all(states)
        random.setstate(_py_state_from_json(meta["python_random"]))
    except (RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is damaged: an RNG state cannot be restored "
                              f"({' '.join(str(e).split())[:200]})") from None


def _py_state_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_state_from_json(obj) -> tuple:
    version, internal, gauss = obj
    return (version, tuple(internal), gauss)
