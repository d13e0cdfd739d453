"""Checkpoints: exact round trip of weights, optimizer, RNG states; atomic write; clear errors."""

import os
import random

import pytest
import torch

from ppp_min.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


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
    save_checkpoint(path, m, o, {"sample": g}, step=5, cursor=7, config={"lr": 0.1})
    expect = (torch.rand(2, generator=g), random.random(), torch.rand(1))
    m2, o2 = _trained(1)
    g2 = torch.Generator()
    state = load_checkpoint(path, m2, o2, {"sample": g2})
    assert (state.step, state.cursor, state.config) == (5, 7, {"lr": 0.1})
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
    save_checkpoint(path, m, o, {}, step=1, cursor=0, config={})
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path, torch.nn.Linear(4, 2), None, {})


def test_stale_tmp_files_of_an_interrupted_save_are_removed(tmp_path):
    m, o = _trained(0)
    path = str(tmp_path / "ck.safetensors")
    stale = tmp_path / "ck.safetensors.tmp.999999"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "ck.safetensors.tmp.notes"  # not ours (no pid suffix): kept
    other.write_text("keep me")
    save_checkpoint(path, m, o, {}, step=1, cursor=0, config={})
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
    save_checkpoint(path, m, o, {}, step=1, cursor=0, config={})
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    if os.path.exists("/proc/self/fd"):
        assert ".tmp." in events[0][1]  # the temporary file's data, before it takes the name
        assert events[2][1] == os.path.realpath(tmp_path)  # the directory entry, after the rename
