"""One evaluation path: EvalConfig's defaults are train.py's, eval.py reproduces a run's figures exactly, and
`eval.py show MODEL_DIR` shows the episodes the evaluation measured."""

import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import eval as eval_cli  # noqa: E402
import train  # noqa: E402
from ppp_min.evals.evaluation import EvalConfig, eval_config_from_args, eval_specs, eval_tasks, run_model  # noqa: E402
from ppp_min.evals.samples import read_samples  # noqa: E402
from ppp_min.evals.show import load_path, parser as show_parser, pick_specs  # noqa: E402
from ppp_min.run.cli import from_args  # noqa: E402
from ppp_min.run.config import RunConfig, eval_config  # noqa: E402
from ppp_min.userville.agent_env import LocalUser  # noqa: E402
from ppp_min.userville.preferences import PREFERENCES  # noqa: E402

# The tiny run of tests/test_train.py, evaluated on 1 val task per family in batches of 16, seed 3.
TINY = ["--model", "tiny", "--copy-steps", "2", "--pretrain-steps", "2", "--sft-steps", "6", "--sft-batch", "4",
        "--prompts-per-step", "2", "--group-size", "2", "--train-tasks", "4", "--prefs", "no_preference,json",
        "--max-turns", "3", "--max-new-tokens", "12", "--micro-batch", "3", "--lr", "1e-3", "--rl-steps", "2"]
EVAL = ["--seed", "3", "--eval-tasks", "1", "--eval-batch", "16", "--eval-split", "val"]
N_EVAL = 2 * 20 + 2  # 1 task per family: vague x 20 preferences, and its precise prompt
SAME = EVAL + ["--max-turns", "3", "--max-new-tokens", "12"]  # the flags eval.py needs to sample the same


def test_defaults_are_train_pys_in_every_cli():
    assert eval_config(RunConfig()) == EvalConfig()
    assert eval_config(from_args(train.build_parser().parse_args([]))) == EvalConfig()
    assert eval_config_from_args(eval_cli.build_parser().parse_args([])) == EvalConfig()
    assert eval_config_from_args(show_parser().parse_args(["x"])) == EvalConfig()
    d = EvalConfig()
    assert (d.temperature, d.max_new_tokens, d.max_turns, d.batch, d.seed, d.tasks, d.split) == \
        (1.0, 64, 6, 64, 0, 24, "test")
    assert d.families == ("funcloc", "research") and d.preferences == tuple(PREFERENCES)
    assert d.sampling_seed == 7  # the run's seed + 7, as train.py always sampled its evaluations


def test_train_flags_derive_the_eval_config_in_one_place():
    cfg = from_args(train.build_parser().parse_args(TINY + EVAL + ["--eval-temperature", "0.5",
                                                                     "--family", "research"]))
    e = eval_config(cfg)
    assert e == EvalConfig(temperature=0.5, max_new_tokens=12, max_turns=3, batch=16, seed=3, tasks=1,
                           split="val", families=("research",))
    # the same flags in eval.py give the same config (train.py's --prefs are the training ones: not evaluated)
    args = eval_cli.build_parser().parse_args(SAME + ["--eval-temperature", "0.5", "--family", "research"])
    assert eval_config_from_args(args) == e
    alias = eval_cli.build_parser().parse_args(["--tasks", "1", "--batch", "16", "--temperature", "0.5"])
    assert (alias.tasks, alias.batch, alias.temperature) == (1, 16, 0.5)


@pytest.mark.parametrize("kw, flag", [({"temperature": -1.0}, "--eval-temperature"), ({"batch": 0}, "--eval-batch"),
                                      ({"max_new_tokens": 0}, "--max-new-tokens"), ({"max_turns": 0}, "--max-turns"),
                                      ({"tasks": -1}, "--eval-tasks"), ({"split": "train"}, "--eval-split"),
                                      ({"families": ("swe",)}, "--family"), ({"preferences": ("x",)}, "--prefs"),
                                      ({"temperature": float("nan")}, "--eval-temperature")])
def test_bad_values_name_the_flag(kw, flag):
    with pytest.raises(ValueError) as e:
        EvalConfig(**kw)
    assert str(e.value).startswith(flag) and "\n" not in str(e.value)


def test_bad_eval_flags_are_one_line_errors(capsys):
    for argv, needle in ((["--eval-batch", "0"], "--eval-batch must be"), (["--eval-tasks", "0"], "--eval-tasks must"),
                         (["--eval-temperature", "inf"], "--eval-temperature must be"),
                         (["--threads", "-1"], "--threads must be >= 0")):
        assert eval_cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert train.main(["--eval-batch", "0", "--eval-tasks", "0", "--rl-steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--eval-batch must be an integer >= 1" in err[0]


def test_val_split_is_selectable(tmp_path):
    e = eval_config(from_args(train.build_parser().parse_args(["--eval-split", "val", "--eval-tasks", "2"])))
    val = eval_tasks(e)
    assert {t.split for t in val} == {"val"} and len(val) == 4
    assert {t.task_id for t in val}.isdisjoint(t.task_id for t in eval_tasks(EvalConfig(tasks=2)))
    out, sj = tmp_path / "v.json", tmp_path / "v.jsonl"
    assert eval_cli.main(["--agent", "oracle", "--eval-split", "val", "--eval-tasks", "2", "--json", str(out),
                          "--samples", str(sj)]) == 0
    assert json.loads(out.read_text())["config"]["eval"]["split"] == "val"
    recs = read_samples(sj)  # a scripted agent's episodes too, in grid order
    assert [r["group_id"] for r in recs] == list(range(4 * 20 + 4)) and {r["label"] for r in recs} == {"oracle"}
    assert {r["task"]["id"] for r in recs} == {t.task_id for t in val}
    assert eval_cli.main(["show", str(sj), "-n", "1"]) == 0
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--eval-split", "train"])


# ------------------------------------------------------------------ sampling: per-batch seeds, only=
@pytest.fixture(scope="module")
def random_model():
    from ppp_min.lm.model import Decoder
    from ppp_min.lm.presets import preset_config
    from ppp_min.lm.tokenizer import train_bpe
    tok = train_bpe(["<search>find the function</search> <ask>which one?</ask> <answer>x</answer>"] * 4, 300)
    torch.manual_seed(0)
    model = Decoder(preset_config("tiny", tok.vocab_size, eos_token_ids=tok.eos_ids, pad_token_id=tok.pad_id))
    return model, tok


def test_any_batch_alone_samples_what_the_whole_evaluation_samples(random_model):
    model, tok = random_model
    e = EvalConfig(tasks=1, batch=8, max_new_tokens=6, max_turns=2)
    specs = eval_specs(e)
    assert len(specs) == 2 * 20 + 2 and [s.group_id for s in specs] == list(range(len(specs)))
    full = run_model(model, tok, specs, LocalUser(), e)
    picks = [41, 3, 20, 17]  # out of order, over four batches, the last one short
    assert run_model(model, tok, specs, LocalUser(), e, only=picks) == [full[i] for i in picks]
    assert model.training  # left as it was found
    with pytest.raises(ValueError, match="out of range"):
        run_model(model, tok, specs, LocalUser(), e, only=[42])


def test_show_picks_episodes_of_the_grid():
    e = EvalConfig(tasks=2)
    specs = eval_specs(e)
    picks = pick_specs(specs, e, 4, None, True)
    shown = [(specs[i].task.family, specs[i].preference, specs[i].is_vague) for i in picks]
    names = list(PREFERENCES)  # preference i of the cycle, family i mod 2, task i div 2
    assert shown == [("funcloc", names[0], True), ("research", names[1], True), ("funcloc", names[2], True),
                     ("research", names[3], True)]
    assert len({specs[i].task.task_id for i in picks}) == 4  # two tasks of each family
    precise = pick_specs(specs, e, 3, None, False)
    assert all(not specs[i].is_vague and specs[i].preference == "no_preference" for i in precise)
    assert {specs[i].preference for i in pick_specs(specs, e, 3, "capital", True)} == {"capital"}
    from ppp_min.evals.show import ShowError
    with pytest.raises(ShowError, match="precise prompts with no_preference only"):
        pick_specs(specs, e, 1, "capital", False)


# ------------------------------------------------------------------ a tiny run, then eval.py and show
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from ppp_min.run.loop import run
    out = tmp_path_factory.mktemp("run")
    # every evaluation episode recorded; no warm-start cache (a module fixture runs before conftest's own one)
    argv = TINY + EVAL + ["--log-samples", str(N_EVAL), "--no-warm-start-cache", "--out", str(out)]
    summary = run(from_args(train.build_parser().parse_args(argv)))
    return out, summary


def _same_episode(a: dict, b: dict) -> bool:
    """Two sample records of one episode (train.py's carry its reward weights, eval.py's the paper's)."""
    keys = ("group_id", "task", "dialogue", "stats", "truncated")
    dims = ("productivity", "proactivity", "personalization")
    return all(json.loads(json.dumps(a[k])) == json.loads(json.dumps(b[k])) for k in keys) and \
        all(a["reward"][d] == b["reward"][d] for d in dims)


def _recorded(out, label):
    return [r for r in read_samples(out / "samples.jsonl") if r["phase"] == "eval" and r["label"] == label]


def test_eval_py_reproduces_the_runs_figures_exactly(tiny_run, tmp_path):
    out, summary = tiny_run
    assert summary["eval"]["batch"] == 16 and summary["eval"]["split"] == "val"  # the flags to pass
    for model_dir, label in (("model", "final"), ("sft_model", "sft")):
        js, sj = tmp_path / f"{label}.json", tmp_path / f"{label}.jsonl"
        argv = ["--agent", str(out / model_dir), "--json", str(js), "--samples", str(sj), "--threads", "1", *SAME]
        assert eval_cli.main(argv) == 0
        got = json.loads(js.read_text())["agents"][str(out / model_dir)]["summary"]
        assert got == summary[label], label
        # not only the figures (a model this small scores 0 everywhere): every episode, token for token
        mine, run_s = read_samples(sj), _recorded(out, label)
        assert len(mine) == len(run_s) == N_EVAL and all(_same_episode(a, b) for a, b in zip(mine, run_s)), label
    # the full metrics record of the final evaluation agrees too (all 20 preferences, seen / unseen apart)
    rec = [json.loads(ln) for ln in open(out / "metrics.jsonl")]
    final = next(r for r in rec if r.get("phase") == "eval" and r["label"] == "final")
    agent = json.loads((tmp_path / "final.json").read_text())["agents"][str(out / "model")]
    assert agent["n_episodes"] == final["n_episodes"] + final["precise"]["n_episodes"] == N_EVAL
    assert set(agent["per_preference"]) == set(PREFERENCES)
    assert all(v == final.get(f"personalization/{p}") for p, v in agent["per_preference"].items())


def test_the_batch_and_the_seed_change_the_episodes(tiny_run, tmp_path):
    """Why --eval-batch and --seed must match the run's: either changes the tokens drawn."""
    out, _ = tiny_run
    run_s = _recorded(out, "final")
    for extra in (["--eval-batch", "64"], ["--seed", "4", "--eval-split", "val"]):
        sj = tmp_path / "x.jsonl"
        argv = ["--agent", str(out / "model"), "--samples", str(sj), *SAME, *extra]
        assert eval_cli.main(argv) == 0
        assert not all(a["dialogue"] == b["dialogue"] for a, b in zip(read_samples(sj), run_s)), extra


def test_show_of_a_model_dir_shows_the_measured_episodes(tiny_run):
    out, _ = tiny_run
    recorded = _recorded(out, "final")
    assert all(r["task"]["id"].startswith(("fva3-", "rva3-")) for r in recorded)  # val tasks, seed 3
    args = show_parser().parse_args([str(out / "model"), "-n", "4", *SAME])
    shown = load_path(str(out / "model"), args)
    # funcloc and research alternate (grid 0, 21, 2, 23): the second and fourth come from the second batch
    assert [r["group_id"] for r in shown] == [0, 21, 2, 23] and all(r["phase"] == "show" for r in shown)
    assert all(_same_episode(r, recorded[r["group_id"]]) for r in shown)
    precise = load_path(str(out / "model"), show_parser().parse_args([str(out / "model"), "--precise", "-n", "2",
                                                                       *SAME]))
    assert [r["group_id"] for r in precise] == [40, 41]
    assert all(_same_episode(r, recorded[r["group_id"]]) for r in precise)


def test_show_cli_renders_it(tiny_run, capsys):
    out, _ = tiny_run
    assert eval_cli.main(["show", str(out / "model"), "-n", "1", *SAME]) == 0
    text = capsys.readouterr().out
    assert text.startswith("=== show · model · group 0 · first") and "preference no_preference" in text
    assert eval_cli.main(["show", str(out / "model"), "--eval-batch", "0"]) == 2
    assert "--eval-batch must be" in capsys.readouterr().err
