"""The warm-start cache (ppp_min/run/warm_cache.py): a second run of the same settings reuses the SFT model."""

import json
import os
import sys

from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train  # noqa: E402
from ppp_min.run import warm_cache  # noqa: E402
from ppp_min.run.cli import from_args  # noqa: E402
from ppp_min.run.loop import run  # noqa: E402

TINY = ["--model", "tiny", "--copy-steps", "2", "--pretrain-steps", "2", "--sft-steps", "4", "--sft-batch", "4", "--rl-steps", "1",
        "--prompts-per-step", "2", "--group-size", "2", "--train-tasks", "4", "--eval-tasks", "1",
        "--prefs", "no_preference,json", "--max-turns", "3", "--max-new-tokens", "12", "--threads", "1"]


def _run(capsys, out, *extra):
    res = run(from_args(train.build_parser().parse_args(TINY + ["--out", str(out)] + list(extra))))
    return res, capsys.readouterr().out


def test_second_run_reuses_the_warm_start(tmp_path, capsys):
    cache = tmp_path / "cache"
    a, log_a = _run(capsys, tmp_path / "a", "--warm-start-cache", str(cache))
    assert "warm start: cached the SFT model in" in log_a and a["time_s"]["warm_start"] > 0
    b, log_b = _run(capsys, tmp_path / "b", "--warm-start-cache", str(cache))
    assert "warm start: reused the cached SFT model" in log_b and "copy 1/" not in log_b and "sft " not in log_b
    assert b["time_s"]["warm_start"] == 0
    assert b["sft"] == a["sft"] and b["final"] == a["final"]  # same SFT model, same RL after it
    for name in ("sft_model", "model"):
        wa, wb = (load_file(d / name / "model.safetensors") for d in (tmp_path / "a", tmp_path / "b"))
        assert all(wa[k].equal(wb[k]) for k in wa), name
    entries = os.listdir(cache)
    assert len(entries) == 1
    settings = json.load(open(cache / entries[0] / "settings.json"))
    assert settings["seed"] == 0 and settings["warm"]["sft_steps"] == 4 and len(settings["code"]) == 16


def test_a_changed_setting_is_a_new_key(tmp_path, capsys):
    cache = tmp_path / "cache"
    _run(capsys, tmp_path / "a", "--warm-start-cache", str(cache))
    _, log = _run(capsys, tmp_path / "b", "--warm-start-cache", str(cache), "--sft-steps", "5")
    assert "cached the SFT model" in log
    _, log = _run(capsys, tmp_path / "c", "--warm-start-cache", str(cache), "--seed", "1")
    assert "cached the SFT model" in log
    _, log = _run(capsys, tmp_path / "d", "--warm-start-cache", str(cache), "--lr", "5e-4")  # RL only: same key
    assert "reused the cached SFT model" in log
    assert len(os.listdir(cache)) == 3


def test_no_cache_flag_and_default_dir(tmp_path, capsys, monkeypatch):
    _, log = _run(capsys, tmp_path / "a", "--no-warm-start-cache")
    assert "warm start:" not in log
    monkeypatch.setenv("PPP_MIN_CACHE", str(tmp_path / "c"))
    assert warm_cache.default_dir() == str(tmp_path / "c" / "warm_start")
    _, log = _run(capsys, tmp_path / "b")  # default: on, under $PPP_MIN_CACHE
    assert f"cached the SFT model in {tmp_path / 'c' / 'warm_start'}" in log


def test_key_follows_the_code(tmp_path, monkeypatch):
    cfg = from_args(train.build_parser().parse_args(TINY))
    k1, s1 = warm_cache.cache_key(cfg, "cpu", False)
    assert warm_cache.cache_key(cfg, "cpu", False)[0] == k1
    assert warm_cache.cache_key(cfg, "cpu", True)[0] != k1
    monkeypatch.setattr(warm_cache, "code_version", lambda: "0" * 16)
    assert warm_cache.cache_key(cfg, "cpu", False)[0] != k1


def test_a_damaged_entry_is_one_line(tmp_path, capsys):
    cache = tmp_path / "cache"
    _run(capsys, tmp_path / "a", "--warm-start-cache", str(cache))
    entry = cache / os.listdir(cache)[0]
    (entry / "model.safetensors").write_bytes(b"garbage")
    import pytest
    from ppp_min.run.setup import TrainError
    with pytest.raises(TrainError, match="unreadable.*delete it"):
        _run(capsys, tmp_path / "b", "--warm-start-cache", str(cache))
