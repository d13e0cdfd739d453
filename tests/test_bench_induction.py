"""The induction diagnostic (ppp_min/bench/induction.py): its sequences, and that it detects learned copying."""

import json
import re

import pytest
import torch

from ppp_min.bench import induction
from ppp_min.bench.induction import FIRST_CONTENT, GAP, PREFIX, SPAN, copy_batch


@pytest.mark.parametrize("variable", [False, True])
def test_the_span_is_a_piece_of_the_prefix(variable):
    ids, mask = copy_batch(32, torch.Generator().manual_seed(0), variable)
    assert ids.shape == mask.shape == (32, PREFIX + GAP + SPAN)
    offsets = set()
    for r in range(32):
        row = ids[r].tolist()
        hits = [(g, s) for g in range(GAP + 1) for s in range(PREFIX - SPAN + 1)
                if row[PREFIX + g:PREFIX + g + SPAN] == row[s:s + SPAN]]
        assert hits, "the copied span must be a piece of the prefix"
        g, s = hits[0]
        offsets.add((g, s))
        want = torch.zeros(PREFIX + GAP + SPAN)
        want[PREFIX + g + 1:PREFIX + g + SPAN] = 1.0  # after the span's first token
        assert torch.equal(mask[r], want * (ids[r] >= FIRST_CONTENT))  # content tokens only
    assert (offsets == {(0, 0)}) != variable  # fixed: always gap 0, start 0; variable: many offsets
    assert variable is False or len(offsets) > 20


def test_a_learned_positional_copy_reads_as_copying():
    """Fixed offset, tiny preset: a positional head is learned (measured: 2.9 % at step 100, 63 % at 200, 98.6 %
    at 300, 99.8 % at 350), and the diagnostic sees it; nothing but copying scores on random tokens."""
    rec = induction.probe("tiny", False, 350, 16, 3e-3, 350, 0, torch.float32, log=lambda line: None)
    assert rec["final_acc"] > 0.9 and rec["steps_to_90"] is not None
    assert rec["offset"] == "fixed" and rec["preset"] == "tiny"


def test_cli_prints_a_table_then_json(capsys):
    assert induction.main(["--preset", "tiny", "--steps", "2", "--eval-every", "1", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("|   step") and len([ln for ln in out if re.match(r"\|\s+\d+ \|", ln)]) == 2
    rec = json.loads(out[-1])
    assert rec["steps"] == 2 and rec["offset"] == "variable" and 0.0 <= rec["final_acc"] <= 1.0
    assert rec["task"] == "span" and rec["smear_keys"] is False and rec["smear_window"] == 1
    assert induction.main(["--preset", "tiny", "--steps", "1", "--dtype", "fp32", "--smear-keys",
                           "--smear-window", "3"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["smear_keys"] is True and rec["smear_window"] == 3


@pytest.mark.parametrize("argv, says", [(["--steps", "0"], "--steps must be >= 1"),
                                        (["--smear-window", "9"], "--smear-window must be in 1..8")])
def test_bad_flags_are_one_line(capsys, argv, says):
    with pytest.raises(SystemExit) as e:
        induction.main(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_repeat_rows_repeat_their_prefix():
    ids, mask = induction.repeat_batch(16, torch.Generator().manual_seed(0), True)
    lens = set()
    for r in range(16):
        L = int(mask[r].sum().item()) + 1
        lens.add(L)
        assert ids[r, L:2 * L].tolist() == ids[r, :L].tolist() and mask[r, L + 1:2 * L].all()
    assert len(lens) > 3 and min(lens) >= induction.REPEAT_MIN and max(lens) <= induction.REPEAT_MAX


def test_smeared_keys_learn_copying_by_content_and_plain_keys_do_not():
    """The variable-length repeat, tiny preset, lr 3e-3, fp32 (measured, CPU-AVX512-BF16, 1 thread): smeared keys
    13 % at step 100, 55 % at 150, 92 % at 300, 95.7 % at 350; plain keys 0.4-1.1 % through step 600."""
    quiet = dict(log=lambda line: None, task="repeat")
    smeared = induction.probe("tiny", True, 350, 16, 3e-3, 350, 0, torch.float32, smear_keys=True, **quiet)
    plain = induction.probe("tiny", True, 200, 16, 3e-3, 200, 0, torch.float32, smear_keys=False, **quiet)
    assert smeared["final_acc"] > 0.85 and smeared["smear_keys"] is True
    assert plain["final_acc"] < 0.1
