"""One line and a non-zero exit for every bad flag, file and size: a full disk (the last checkpoint intact),
model configs and batches beyond the memory, unreadable files; eval.py --threads, SIGTERM = 143."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from procs import ROOT, TINY, Proc, one_line, run, train_cmd  # noqa: E402

from ppp_min.lm.bounds import LIMITS, check_decode, check_model, param_count  # noqa: E402
from ppp_min.lm.presets import preset_config  # noqa: E402
from ppp_min.run.checkpoint import read_meta  # noqa: E402

QUICK = [*TINY, "--copy-steps", "0", "--pretrain-steps", "0", "--sft-steps", "0", "--rl-steps", "1", "--eval-tasks", "0"]


# ----------------------------------------------------------------------------------------- bad flags, files
@pytest.mark.parametrize("extra,needle", [
    (["--train-tasks", "0"], "--train-tasks must be an integer >= 1"),
    (["--sim-url", "ftp://x"], "--sim-url must be http://"),
    (["--sim-retry-s", "-1"], "--sim-retry-s must be a finite number >= 0"),
    (["--sim-token", "x"], "--sim-token is for a --sim-url simulator"),
    (["--smear-window", "0"], "--smear-window must be in 1..8")])
def test_bad_flags_are_one_line(extra, needle):
    import train
    from ppp_min.run.cli import from_args
    with pytest.raises(ValueError, match=needle) as e:  # what train.py prints after "train.py: error: "
        from_args(train.build_parser().parse_args(QUICK + extra))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("extra,needle", [
    (["--train-tasks", "0"], "--train-tasks must be an integer >= 1"),
    (["--prompts-per-step", str(10 ** 7)], "lower --prompts-per-step or --group-size")])
def test_bad_flags_and_sizes_at_the_cli(tmp_path, extra, needle):
    p = run(train_cmd(*QUICK, "--out", str(tmp_path / "run"), *extra))
    assert p.returncode == 2 and needle in one_line(p)


def test_a_turn_budget_beyond_the_context_is_refused_before_the_warm_start(tmp_path):
    import train
    from ppp_min.run.cli import from_args
    from ppp_min.run.setup import TrainError
    from ppp_min.run.loop import run as train_run
    cfg = from_args(train.build_parser().parse_args(QUICK + ["--max-new-tokens", "5000", "--out", str(tmp_path)]))
    with pytest.raises(TrainError, match="plus one turn does not fit the 512 positions .* lower --max-new-tokens"):
        train_run(cfg)


def test_an_out_below_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    p = run(train_cmd(*QUICK, "--out", str(tmp_path / "file" / "sub")))
    assert p.returncode == 2 and "cannot create the directory (Not a directory)" in one_line(p)


def test_eval_show_and_curves_of_a_binary_file_are_one_line(tmp_path):
    (tmp_path / "samples.jsonl").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "metrics.jsonl").write_bytes(b"\xff\xfe" * 100)
    for argv, needle in ((["show", str(tmp_path / "samples.jsonl")], "not a UTF-8 text file"),
                         (["curves", str(tmp_path)], "cannot read it as UTF-8")):
        p = run([sys.executable, "eval.py", *argv])
        assert p.returncode == 2 and needle in one_line(p)


# --------------------------------------------------------------------------------------------- size bounds
def _model_dir(tmp_path, **config):
    d = tmp_path / "model"
    d.mkdir()
    cfg = {"architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, **config}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "tokenizer.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")
    return d


@pytest.mark.parametrize("config,needle", [({"num_hidden_layers": 1e9}, "num_layers=1000000000 (limit 1024)"),
                                           ({"vocab_size": 200000, "hidden_size": 60000, "intermediate_size": 60000,
                                             "num_attention_heads": 500, "num_key_value_heads": 500},
                                            "use a smaller model"),
                                           ({"num_hidden_layers": 1e400}, "invalid value")])
def test_a_model_config_beyond_the_bounds_is_refused_before_anything_is_built(tmp_path, config, needle):
    from ppp_min.weights.hf_io import ModelLoadError, load_pretrained
    d = _model_dir(tmp_path, **config)
    with pytest.raises(ModelLoadError, match=re.escape(needle)) as e:
        load_pretrained(d)
    assert "\n" not in str(e.value)


def test_eval_of_a_model_of_1e9_layers_is_one_line_within_seconds(tmp_path):
    d = _model_dir(tmp_path, num_hidden_layers=1e9)
    t0 = time.monotonic()
    p = run([sys.executable, "eval.py", "--agent", str(d), "--tasks", "1"], timeout=60)
    assert p.returncode == 2 and "num_layers=1000000000 (limit 1024)" in one_line(p)
    assert time.monotonic() - t0 < 30


def test_bounds_count_parameters_and_estimate_decoding():
    from ppp_min.lm.model import Decoder
    from ppp_min.lm.presets import count_params
    cfg = preset_config("tiny", 300)
    assert param_count(cfg) == count_params(Decoder(cfg))
    assert param_count(preset_config("tiny", 300, smear_keys=True)) == count_params(Decoder(cfg)) + 2 * 2
    taps = preset_config("tiny", 300, smear_keys=True, smear_window=3)
    assert param_count(taps) == count_params(Decoder(taps)) == count_params(Decoder(cfg)) + 2 * (4 * 2 + 3 * 4) * 16
    from ppp_min.lm.bounds import cache_bytes
    from ppp_min.lm.cache import KVCache
    recent = preset_config("tiny", 300, recency=True)
    assert param_count(recent) == count_params(Decoder(recent)) == count_params(Decoder(cfg)) + 2 * 4
    for c in (cfg, preset_config("tiny", 300, smear_keys=True), taps):  # the estimate is what is allocated
        assert cache_bytes(c, 3, 40) == sum(t.numel() * 4 for t in KVCache(c, 3, 40).tensors())
    check_model(cfg)  # a tiny model fits
    assert set(LIMITS) <= set(cfg.__dataclass_fields__)
    with pytest.raises(ValueError, match=r"an evaluation batch of 10\^9 .* lower --eval-tasks"):
        check_decode(cfg, 10 ** 9, 10 ** 9, 300, 512, "cpu", 0, "an evaluation batch of 10^9", "lower --eval-tasks")
    check_decode(cfg, 64, 64, 300, 512, "cpu", 0, "a batch", "lower it")


def test_eval_batch_beyond_the_memory_is_one_line(tmp_path):
    """A small model (8M parameters) with a huge KV cache per position (1 MiB): 420 rows of 1024 positions."""
    from ppp_min.lm.model import Decoder
    from ppp_min.weights.hf_io import save_pretrained
    from ppp_min.lm.tokenizer import train_bpe
    tok = train_bpe(["a small corpus of words for a tiny tokenizer"] * 4, 300)
    d = tmp_path / "model"
    cfg = preset_config("tiny", tok.vocab_size, hidden_size=16, intermediate_size=32, num_layers=8, num_heads=64,
                        num_kv_heads=64, head_dim=256, max_position_embeddings=1024)
    save_pretrained(Decoder(cfg), d)
    tok.save(d)
    p = run([sys.executable, "eval.py", "--agent", str(d), "--tasks", "10", "--batch", "420", "--threads", "1"])
    assert p.returncode == 2 and "--eval-batch 420 (420 episodes decoded together) needs about" in one_line(p)
    assert "lower --eval-batch" in one_line(p)


# ------------------------------------------------------------------------------------------------ disk full
def _mount(path, size):
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)


def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or _mount(mnt, "3m").returncode != 0:
        pytest.skip("needs root to mount a 3 MB tmpfs")
    try:
        out = mnt / "run"
        args = [*TINY, "--rl-steps", "4", "--save-every", "2", "--eval-tasks", "0", "--out", str(out)]
        p = run(train_cmd(*args))
        line = one_line(p)
        assert p.returncode == 1 and str(out) in line and "No space left on device" in line
        assert "the last good one (step 0) is intact" in line and "--resume" in line
        assert read_meta(str(out / "checkpoint.safetensors"))["step"] == 0
        assert not [n for n in os.listdir(out) if ".tmp." in n]
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        q = run(train_cmd(*args, "--resume"))
        assert q.returncode == 0, q.stderr[-2000:]
        assert read_meta(str(out / "checkpoint.safetensors"))["step"] == 4
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ------------------------------------------------------------------------------------------ eval.py signals
def test_eval_threads_and_sigterm_exits_143(capsys):
    import eval as eval_cli
    assert eval_cli.main(["--tasks", "1", "--prefs", "no_preference", "--agent", "oracle", "--threads", "1"]) == 0
    assert eval_cli.main(["--threads", "-1"]) == 2 and "--threads must be >= 0" in capsys.readouterr().err
    e = Proc([sys.executable, os.path.join(ROOT, "eval.py"), "--tasks", "100", "--agent", "skills"])
    time.sleep(2.5)  # past the imports: the handler is installed
    e.signal(signal.SIGTERM)
    assert e.finish(60) == 143 and e.errors() == ["eval.py: terminated (SIGTERM)"]

