"""train.py on a pretrained model directory (``--model DIR``) end to end: warm start, one RL step, the saved model.

(a) a tiny random Llama saved as an HF directory with a ChatML tokenizer (seconds, always runs);
(b) one RL step on the real SmolLM2-135M-Instruct when ``python -m ppp_min.weights.convert_gguf --fetch-smollm2`` has
    put it in ~/.cache/ppp_min/smollm2-135m-instruct (skipped otherwise; settings sized to take well under a
    minute on one core: 2 episodes of at most 2 turns of 16 tokens, one update, no evaluation).
Both run the real CLI in a subprocess, so the 135M model's memory is returned when it exits.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMOLLM2 = Path(os.path.expanduser("~/.cache/ppp_min/smollm2-135m-instruct"))
SMALL_RUN = ["--prompts-per-step", "1", "--group-size", "2", "--train-tasks", "2", "--prefs", "no_preference,json",
             "--eval-tasks", "0", "--log-samples", "0", "--threads", "1"]


def train_cli(args: list[str], timeout: float) -> dict:
    """Run train.py; return its last stdout line (the run's JSON summary). Fails with the tail of its output."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"train.py exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


def check_saved_model(model_dir: Path, vocab_size: int) -> None:
    from ppp_min.weights.hf_io import load_pretrained
    from ppp_min.lm.tokenizer import Tokenizer
    model = load_pretrained(model_dir)
    tok = Tokenizer.from_dir(model_dir)
    assert model.config.vocab_size == vocab_size and tok.vocab_size <= vocab_size
    assert tok.im_end_id in model.config.eos_token_ids or tok.im_end_id in tok.eos_ids


@pytest.fixture
def tiny_hf_dir(tmp_path) -> Path:
    """A random tiny Llama with a byte-level BPE ChatML tokenizer, saved as a Hugging Face directory."""
    import torch
    from ppp_min.userville import scripted
    from ppp_min.userville.agent_env import LocalUser
    from ppp_min.lm.model import Decoder
    from ppp_min.lm.presets import preset_config
    from ppp_min.weights.hf_io import save_pretrained
    from ppp_min.lm.tokenizer import train_bpe
    from ppp_min.userville.tasks import make_tasks
    demos = scripted.demonstrations(make_tasks("funcloc", "train", 4, 0), ("no_preference",), 16, 0, LocalUser())
    tok = train_bpe(scripted.corpus(demos), 600)
    torch.manual_seed(0)
    model = Decoder(preset_config("tiny", tok.vocab_size, eos_token_ids=tok.eos_ids, pad_token_id=tok.pad_id))
    d = tmp_path / "tiny_hf"
    save_pretrained(model, d)
    tok.save(d)
    return d


def test_model_dir_warm_start_and_rl_step(tiny_hf_dir, tmp_path):
    """--model DIR: a couple of assistant-only warm-start steps (no language-modelling phase for a pretrained
    directory), one RL step, and a saved model that loads again; the same CLI path SmolLM2 takes."""
    out = tmp_path / "run"
    summary = train_cli(["--model", str(tiny_hf_dir), "--sft-steps", "2", "--sft-batch", "2", "--micro-batch", "2",
                         "--rl-steps", "1", "--max-turns", "2", "--max-new-tokens", "8", *SMALL_RUN,
                         "--out", str(out)], timeout=120)
    recs = records(out)
    assert not [r for r in recs if r["phase"] == "pretrain"]  # a pretrained directory skips the LM phase
    assert [r["step"] for r in recs if r["phase"] == "sft"] == [0, 1]
    rl = [r for r in recs if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1]
    assert rl[0]["rollout_s"] > 0 and "zero_var_frac" in rl[0] and 0.0 <= rl[0]["reward"] <= 1.0
    assert summary["time_s"]["warm_start"] > 0 and summary["peak_rss_mb"] > 0
    from ppp_min.lm.tokenizer import Tokenizer
    vocab = Tokenizer.from_dir(tiny_hf_dir).vocab_size
    check_saved_model(out / "sft_model", vocab)
    check_saved_model(out / "model", vocab)


@pytest.mark.skipif(not (SMOLLM2 / "config.json").is_file(),
                    reason="SmolLM2-135M-Instruct not converted (python -m ppp_min.weights.convert_gguf --fetch-smollm2)")
def test_smollm2_one_rl_step(tmp_path):
    """One RL step of the real 134.5M-parameter SmolLM2 (no warm start): rollout against the simulator, the
    GRPO update, checkpoint and the saved HF directory, which loads again with its own ChatML tokenizer."""
    out = tmp_path / "smol"
    summary = train_cli(["--model", str(SMOLLM2), "--sft-steps", "0", "--rl-steps", "1", "--max-turns", "2",
                         "--max-new-tokens", "16", "--micro-batch", "2", *SMALL_RUN, "--out", str(out)],
                        timeout=300)
    rl = [r for r in records(out) if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1] and rl[0]["rollout_s"] > 0 and rl[0]["update_s"] >= 0
    assert summary["peak_rss_mb"] > 0
    check_saved_model(out / "model", 49152)
