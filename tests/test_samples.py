"""Sample dialogues: records (reward recomputable from the record), best/worst selection, rendering, eval.py show."""

import io
import json
import sys
from pathlib import Path

import pytest

from ppp_min.evals.report import build_report, eval_markdown
from ppp_min.evals.samples import (SampleWriter, eval_samples, read_samples, rl_samples, stats_from_record,
    weights_from_record)
from ppp_min.evals.show import render, use_color
from ppp_min.rl.reward import RewardBreakdown, RewardWeights, ppp_reward
from ppp_min.rl.rollout import Episode
from ppp_min.userville import tasks as tasklib
from ppp_min.userville.agent_env import EpisodeState, LocalUser, step_all
from ppp_min.userville.scripted import ScriptedAgent

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import eval as eval_cli  # noqa: E402  (the CLI module at the repo root)

TASKS = tasklib.make_tasks("funcloc", "test", 2, 0) + tasklib.make_tasks("research", "test", 2, 0)
W = RewardWeights(prod=2.0, proact=1.0, pers=0.5)


def play(kind, task, pref, vague=True, group_id=0, max_turns=6) -> Episode:
    """A scripted agent's episode against the rules user, wrapped as a rollout ``Episode`` (no tokens)."""
    st, agent = EpisodeState(task, pref, vague), ScriptedAgent(kind, 0)
    while not st.done:
        step_all([st], [agent(st)], LocalUser(), max_turns)
    return Episode(group_id=group_id, task_id=task.task_id, family=task.family, preference=pref, is_vague=vague,
                   ids=(), loss_mask=(), logprobs=(), messages=tuple(st.messages), stats=st.stats(),
                   truncated=False)


def fake(total: float) -> RewardBreakdown:
    return RewardBreakdown((("productivity", total), ("proactivity", 0.0), ("personalization", 0.0)), total=total,
                           ask_ok=True, pref_ok=None, pref_penalty=None)


def test_record_holds_the_dialogue_and_its_reward_recomputes():
    eps = [play(k, TASKS[i], p, group_id=g) for g, (i, p) in enumerate([(0, "concise_question"), (2, "capital")])
           for k in ("lazy", "oracle", "never_ask")]
    bds = [ppp_reward(e.stats, W) for e in eps]
    recs = rl_samples(eps, bds, [0.5 * i for i in range(len(eps))], TASKS, k=2, step=7, weights=W)
    recs = [json.loads(json.dumps(r)) for r in recs]  # what a reader of samples.jsonl gets back
    assert len(recs) == 4 and {r["phase"] for r in recs} == {"rl"} and {r["step"] for r in recs} == {7}
    for r in recs:
        again = ppp_reward(stats_from_record(r), weights_from_record(r))
        assert again.record() == r["reward"]
        assert r["task"]["gold"] == list({t.task_id: t for t in TASKS}[r["task"]["id"]].gold)
    # group 0: lazy and oracle tie at 1.0 (w_prod 2), the first wins; never_ask scores 0; group 1: oracle best
    assert [(r["pick"], r["advantage"]) for r in recs] == [("best", 0.0), ("worst", 1.0), ("best", 2.0),
                                                           ("worst", 2.5)]
    lazy = recs[0]
    assert lazy["task"]["gold"] == list(TASKS[0].gold) and stats_from_record(lazy) == eps[0].stats
    replies = [t for t in lazy["dialogue"] if t.get("kind") == "reply"]
    asks = [t for t in lazy["dialogue"] if t.get("action") == "ask"]
    assert len(replies) == len(asks) == 1 and replies[0]["question"] == asks[0]["arg"]
    assert replies[0]["effort"] == "high" and replies[0]["text"] and replies[0]["shown"]


def test_best_and_worst_of_each_group():
    eps = [play("never_ask", TASKS[0], "no_preference", group_id=g) for g in (5, 5, 5, 9, 9, 9, 3)]
    totals = [0.2, 0.9, 0.1, 0.4, 0.4, 0.4, 0.7]
    adv = [float(i) for i in range(7)]
    recs = rl_samples(eps, [fake(t) for t in totals], adv, TASKS, k=2, step=1)
    assert [(r["group_id"], r["pick"], r["advantage"]) for r in recs] == \
        [(5, "best", 1.0), (5, "worst", 2.0), (9, "best", 3.0), (9, "worst", 5.0)]  # a tie still shows two
    recs = rl_samples(eps, [fake(t) for t in totals], None, TASKS, k=10, step=1)
    assert [(r["group_id"], r["pick"]) for r in recs][-1] == (3, "only") and len(recs) == 5
    assert all(r["advantage"] is None for r in recs)
    ev = eval_samples(eps, [fake(t) for t in totals], TASKS, k=3, label="final", step=4)
    assert [(r["phase"], r["label"], r["advantage"], r["reward"]["total"]) for r in ev] == \
        [("eval", "final", None, t) for t in totals[:3]]
    with pytest.raises(ValueError, match="2 breakdowns"):
        rl_samples(eps, [fake(0.0)] * 2, None, TASKS, k=1, step=1)
    with pytest.raises(ValueError, match="not among the tasks"):
        eval_samples(eps, [fake(0.0)] * 7, TASKS[1:], k=1, label="x")


def test_render_plain_and_colour(monkeypatch):
    ep = play("lazy", TASKS[0], "concise_question")
    rec = eval_samples([ep], [ppp_reward(ep.stats, W)], TASKS, k=1, label="final", weights=W)[0]
    text = render(rec)
    q = next(t for t in rec["dialogue"] if t.get("kind") == "reply")
    assert q["question"] in text and q["text"] in text and "effort high" in text
    assert f"reward {rec['reward']['total']:.3f}" in text and "proact -0.400" in text
    assert "preference followed" in text and "gold " + TASKS[0].gold[0] in text
    assert "\x1b" not in text and "\x1b[" in render(rec, color=True)
    rec["dialogue"][0]["text"] = "\x1b[2J<search>x</search>\t"  # a model may sample an ESC
    rec["dialogue"][1]["text"] = " \n \n"
    text = render(rec)
    assert "\x1b" not in text and "\ufffd[2J<search>x</search>" in text and "(empty)" in text

    class Tty(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(Tty()) and not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty())


def test_ask_on_the_last_turn_keeps_the_unshown_reply():
    ep = play("lazy", TASKS[0], "no_preference", max_turns=2)  # search, then ask: out of turns
    rec = eval_samples([ep], [ppp_reward(ep.stats)], TASKS, k=1, label="x")[0]
    last = rec["dialogue"][-1]
    assert last["kind"] == "reply" and not last["shown"] and last["text"]
    assert "not shown to the agent" in render(rec)


def test_writer_and_show_on_a_samples_file(tmp_path, capsys):
    eps = [play(k, TASKS[0], "capital", group_id=0) for k in ("lazy", "oracle")]
    bds = [ppp_reward(e.stats) for e in eps]
    path = tmp_path / "run" / "samples.jsonl"
    with SampleWriter(path) as w:
        w.write(rl_samples(eps, bds, [-1.0, 1.0], TASKS, k=1, step=1))
        w.write(eval_samples(eps, bds, TASKS, k=1, label="final", step=1))
        assert len(path.read_text().splitlines()) == 3  # flushed while still open
    assert eval_cli.main(["show", str(path), "--phase", "rl", "-n", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("=== rl") == 2 and "advantage -1.000" in out and "\x1b" not in out
    assert eval_cli.main(["show", str(tmp_path / "run"), "--phase", "final", "--step", "last"]) == 0
    assert capsys.readouterr().out.count("=== eval · final · step 1") == 1
    assert len(read_samples(path)) == 3


def one_line_exit_2(capsys, argv, needle):
    assert eval_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_show_errors(tmp_path, capsys):
    one_line_exit_2(capsys, ["show", str(tmp_path / "nope")], "no such file or directory")
    one_line_exit_2(capsys, ["show", str(tmp_path)], "neither samples.jsonl nor an HF model")
    ep = play("lazy", TASKS[0], "capital")
    good = json.dumps(eval_samples([ep], [ppp_reward(ep.stats)], TASKS, k=1, label="x")[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n{oops\n")
    one_line_exit_2(capsys, ["show", str(bad)], "bad.jsonl:2: not JSON")
    bad.write_text(good + '\n{"task": {}, "dialogue": [], "reward": {}}\n')
    one_line_exit_2(capsys, ["show", str(bad)], "bad.jsonl:2: not a sample record")
    bad.write_text(good.replace('"effort"', '"effort_"'))
    one_line_exit_2(capsys, ["show", str(bad)], "a sample record is malformed (KeyError: 'effort')")
    bad.write_text("")
    one_line_exit_2(capsys, ["show", str(bad)], "no sample matches")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from ppp_min.lm.model import Decoder
    from ppp_min.lm.presets import preset_config
    from ppp_min.weights.hf_io import save_pretrained
    from ppp_min.lm.tokenizer import train_bpe
    tok = train_bpe(["<search>find the function</search> <ask>which one?</ask> <answer>x</answer>"] * 4, 300)
    torch.manual_seed(0)
    model = Decoder(preset_config("tiny", tok.vocab_size, eos_token_ids=tok.eos_ids, pad_token_id=tok.pad_id))
    d = tmp_path_factory.mktemp("show") / "model"
    save_pretrained(model, d)
    tok.save(d)
    return d


def test_show_runs_a_model_directory(model_dir, capsys):
    argv = ["show", str(model_dir), "-n", "2", "--pref", "capital", "--max-new-tokens", "6", "--max-turns", "2"]
    assert eval_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("=== show · model") == 2 and out.count("preference capital") == 2
    assert "task funcloc" in out and "task research" in out and out.count("\nreward ") == 2
    one_line_exit_2(capsys, ["show", str(model_dir), "--pref", "klingon"], "--pref 'klingon' is unknown")


def test_report_shows_one_example_per_agent(capsys):
    ep = play("oracle", TASKS[0], "capital")
    text = render(eval_samples([ep], [ppp_reward(ep.stats)], TASKS, k=1, label="example")[0])
    md = eval_markdown([build_report("oracle", [ep.stats])], {"oracle": text})
    assert "#### oracle" in md and "```text\n" + text + "\n```" in md
    assert "Example dialogue" not in eval_markdown([build_report("oracle", [ep.stats])])
    assert eval_cli.main(["--agent", "lazy", "--family", "funcloc", "--tasks", "1", "--prefs", "capital"]) == 0
    out = capsys.readouterr().out
    assert "#### lazy" in out and "effort high" in out and "<ask>" in out
