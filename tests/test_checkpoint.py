"""Checkpoints: exact round trip of weights, optimizer, RNG states; atomic write; clear errors."""

import os
import random

import pytest
import torch

from ppp_min.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _trained(seed):
    torch.manual_seed(seed)
    m = torch.nn.Linear(3, 2)
    o = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.randn(4, 3)).sum().backward()
    o.step()
    return m, o


def test_round_trip_restores_everything(tmp_path):
    m, o = _trained(0)
    g = torch.Generator().manual_seed(3)
    path = str(tmp_path / "ck.safetensors")
    save_checkpoint(path, m, o, {"sample": g}, step=5, config={"lr": 0.1})
    expect = (torch.rand(2, generator=g), random.random(), torch.rand(1))
    m2, o2 = _trained(1)
    g2 = torch.Generator()
    state = load_checkpoint(path, m2, o2, {"sample": g2})
    assert (state.step, state.config) == (5, {"lr": 0.1})
    assert torch.equal(m.weight, m2.weight) and torch.equal(m.bias, m2.bias)
    assert torch.equal(torch.rand(2, generator=g2), expect[0])
    assert random.random() == expect[1]
    assert torch.equal(torch.rand(1), expect[2])
    # the optimizer continues identically
    for mm, oo in ((m, o), (m2, o2)):
        oo.zero_grad()
        mm(torch.ones(1, 3)).sum().backward()
        oo.step()
    assert torch.equal(m.weight, m2.weight)
    assert not [f for f in os.listdir(tmp_path) if ".tmp." in f]  # temp file renamed away


def test_clear_errors(tmp_path):
    m, o = _trained(0)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "nope.safetensors"), m, o, {})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(str(bad), m, o, {})
    path = str(tmp_path / "ck.safetensors")
    save_checkpoint(path, m, o, {}, step=1, config={})
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path, torch.nn.Linear(4, 2), None, {})


def test_stale_tmp_files_of_an_interrupted_save_are_removed(tmp_path):
    m, o = _trained(0)
    path = str(tmp_path / "ck.safetensors")
    stale = tmp_path / "ck.safetensors.tmp.999999"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "ck.safetensors.tmp.notes"  # not ours (no pid suffix): kept
    other.write_text("keep me")
    save_checkpoint(path, m, o, {}, step=1, config={})
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors", "ck.safetensors.tmp.notes"]


def test_save_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    m, o = _trained(0)
    path = str(tmp_path / "ck.safetensors")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(path, m, o, {}, step=1, config={})
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    if os.path.exists("/proc/self/fd"):
        assert ".tmp." in events[0][1]  # the temporary file's data, before it takes the name
        assert events[2][1] == os.path.realpath(tmp_path)  # the directory entry, after the rename


# ------------------------------------------------------------------------------ damaged checkpoints
def _saved(tmp_path):
    m, o = _trained(0)
    path = str(tmp_path / "ck.safetensors")
    save_checkpoint(path, m, o, {"sample": torch.Generator()}, step=3, config={"lr": 0.1})
    return path


def _rewrite(path, meta_edit=None, tensor_edit=None, rehash=True):
    """Rewrite a checkpoint with edited metadata / tensors; ``rehash`` keeps its checksum consistent, so the
    loader's other checks are the ones under test."""
    import json
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from ppp_min.run.checkpoint import digest
    with safe_open(path, framework="pt") as f:
        meta = json.loads(f.metadata()["ppp_min"])
    tensors = load_file(path)
    if tensor_edit:
        tensor_edit(tensors)
    if meta_edit:
        meta_edit(meta)
    if rehash:
        meta["sha256"] = digest(tensors)
    save_file(tensors, path, metadata={"ppp_min": json.dumps(meta)})


def _load_fails(path, needle):
    m, o = _trained(1)
    before = m.weight.detach().clone()
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, m, o, {"sample": torch.Generator()})
    msg = str(e.value)
    assert "\n" not in msg and needle in msg, msg
    assert torch.equal(m.weight, before)  # nothing restored from a file that failed its checks
    return msg


def test_flipped_bytes_in_the_tensor_data_fail_the_checksum(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(open(path, "rb").read())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header + 4:header + 20] = b"\xff" * 16  # 16 bytes of the first tensor: NaNs
    open(path, "wb").write(bytes(data))
    _load_fails(path, "does not match the checksum")


@pytest.mark.parametrize("key", ["param_groups", "python_random", "step", "sha256"])
def test_a_missing_metadata_key_is_named(tmp_path, key):
    path = _saved(tmp_path)
    _rewrite(path, meta_edit=lambda meta: meta.pop(key), rehash=key != "sha256")
    _load_fails(path, f"lacks {key}")


def test_a_missing_rng_state_is_named(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, tensor_edit=lambda t: t.pop("rng.torch"))
    _load_fails(path, "lacks the RNG state rng.torch")
    path = _saved(tmp_path)
    _rewrite(path, tensor_edit=lambda t: t.pop("rng.sample"))
    _load_fails(path, "lacks the RNG state rng.sample")


def test_impossible_values_are_refused(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, meta_edit=lambda meta: meta.update(step=-5))
    _load_fails(path, "step = -5 is not an integer >= 0")
    path = _saved(tmp_path)
    _rewrite(path, tensor_edit=lambda t: t["model.weight"].__setitem__((0, 0), float("nan")))
    _load_fails(path, "non-finite values in model.weight")
    path = _saved(tmp_path)
    _rewrite(path, tensor_edit=lambda t: t.update({"rng.torch": t["rng.torch"][:10]}))
    _load_fails(path, "RNG state cannot be restored")


def test_a_wrong_optimizer_shape_fails_the_load_not_the_first_update(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, tensor_edit=lambda t: t.update({"optim.0.exp_avg": torch.zeros(3, 3)}))
    _load_fails(path, "optimizer tensor optim.0.exp_avg has shape (3, 3), its parameter (2, 3)")
    path = _saved(tmp_path)
    _rewrite(path, meta_edit=lambda meta: meta["param_groups"][0].update(params=[0]))
    _load_fails(path, "param_groups do not describe")


def test_a_failed_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from safetensors import SafetensorError
    import ppp_min.run.checkpoint as ck
    path = _saved(tmp_path)
    good = open(path, "rb").read()

    def full_disk(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')
    monkeypatch.setattr(ck, "save_file", full_disk)
    assert ck._reason(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")) \
        == "No space left on device"  # another safetensors version's wording
    m, o = _trained(0)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(path, m, o, {}, step=4, config={})
    msg = str(e.value)
    assert "\n" not in msg and f"cannot write the checkpoint {path} (No space left on device)" in msg
    assert "the last good one (step 3) is intact" in msg
    assert open(path, "rb").read() == good and sorted(os.listdir(tmp_path)) == ["ck.safetensors"]
