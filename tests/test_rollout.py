"""Rollout: masks decoded back to text, the token layout shared with SFT, and a simulator restart mid-rollout."""

import threading
import time

import pytest
import torch
from tiny import tiny_policy

from ppp_min.rl.rollout import EpisodeSpec, RolloutConfig, rollout
from ppp_min.rl.sft import encode_demo
from ppp_min.userville import tasks as tasklib
from ppp_min.userville.agent_env import FORMAT_OBSERVATION, LocalUser, parse_action
from ppp_min.userville.scripted import ScriptedAgent


@pytest.fixture(scope="module")
def world():
    return tiny_policy()


def _specs(tasks, n=4):
    prefs = ["one_question", "no_preference", "lang_ita", "json"]
    return [EpisodeSpec(tasks[i], prefs[i % 4], i % 3 != 0, group_id=100 + i) for i in range(n)]


def test_parse_action():
    assert parse_action("thinking... <ask>Which module?</ask> trailing").kind == "ask"
    assert parse_action("<answer> a/b.py:f </answer>").arg == "a/b.py:f"
    assert parse_action("<search>x</search><ask>y</ask>").kind == "search"  # the first complete action
    assert parse_action("<ask>unclosed") is None


def test_loss_mask_decodes_to_agent_turns_only(world):
    tasks, _, tok, model = world
    cfg = RolloutConfig(group_size=3, max_turns=4, max_new_tokens=24)
    eps = rollout(model, tok, _specs(tasks), LocalUser(), cfg, torch.Generator().manual_seed(1))
    assert len(eps) == 12 and [e.group_id for e in eps[:3]] == [100] * 3
    for e in eps:
        assert len(e.ids) == len(e.loss_mask) == len(e.logprobs)
        prompt_len = len(tok.render(list(e.messages[:2]), add_generation_prompt=True))
        assert not any(e.loss_mask[:prompt_len])  # the prompt is never trained
        # the maximal runs of mask-1 tokens, decoded, are exactly the assistant turns (+ their <|im_end|>)
        runs, cur = [], []
        for t, m in zip(e.ids, e.loss_mask):
            if m:
                cur.append(t)
            elif cur:
                runs.append(cur)
                cur = []
        if cur:
            runs.append(cur)
        assistant = [text for role, text in e.messages if role == "assistant"]
        assert len(runs) == len(assistant) == e.stats.n_turns
        for run, text in zip(runs, assistant):
            body = run[:-1] if run[-1] == tok.im_end_id else run
            assert tok.decode(body) == text
        # everything unmasked after the prompt is observation text or chat scaffolding, never agent text
        forced = tok.decode([t for t, m in zip(e.ids[prompt_len:], e.loss_mask[prompt_len:]) if not m])
        for role, text in e.messages[2:]:
            if role == "user":
                assert text in forced
        # logprobs: negative on sampled tokens, exactly 0 on forced ones
        assert all(lp <= 0 for lp, m in zip(e.logprobs, e.loss_mask) if m)
        assert all(lp == 0 for lp, m in zip(e.logprobs, e.loss_mask) if not m)


def test_group_rows_are_independent_samples(world):
    tasks, _, tok, model = world
    cfg = RolloutConfig(group_size=8, max_turns=2, max_new_tokens=16)
    eps = rollout(model, tok, _specs(tasks, 1), LocalUser(), cfg, torch.Generator().manual_seed(3))
    assert len({e.ids for e in eps}) > 1


def test_sft_layout_equals_rollout_layout(world):
    """A scripted episode encoded for SFT has the ids a rollout would produce for the same turns."""
    tasks, demos, tok, _ = world
    ids, mask = encode_demo(tok, demos[0])
    msgs = demos[0]
    assert ids[:len(tok.render(msgs[:2], add_generation_prompt=True))] == tok.render(msgs[:2], True)
    text = tok.decode([t for t, m in zip(ids, mask) if m])
    assert text == "".join(t + "<|im_end|>" for r, t in msgs[2:] if r == "assistant")
    # and the whole sequence is the ChatML rendering of the conversation (append-only, no drift),
    # less the newline that follows the final <|im_end|>
    for m in demos[:20]:
        ids, _ = encode_demo(tok, m)
        assert tok.render(m) == ids + tok.encode("\n")


def test_turn_loss_weighs_each_assistant_turn_alike(world):
    """--sft-loss turn: every token of an assistant turn weighs 1/len(turn), so each turn sums to 1; the ids and
    which positions are trained are those of the token loss."""
    tasks, demos, tok, _ = world
    for m in demos[:20]:
        ids, mask = encode_demo(tok, m)
        ids_t, mask_t = encode_demo(tok, m, "turn")
        assert ids_t == ids and [w > 0 for w in mask_t] == [w > 0 for w in mask]
        n_turns = sum(r == "assistant" for r, _ in m[2:])
        assert sum(mask_t) == pytest.approx(n_turns)
        first = tok.encode(m[2][1]) + [tok.im_end_id]  # the first assistant turn, right after the prompt
        start = len(tok.render(m[:2], add_generation_prompt=True))
        assert mask_t[start:start + len(first)] == [1 / len(first)] * len(first)


def test_format_errors_cost_a_turn():
    from ppp_min.userville.agent_env import EpisodeState, step_all
    t = tasklib.make_tasks("funcloc", "test", 1, 0)[0]
    st = EpisodeState(t, "no_preference", True)
    obs = step_all([st], ["I think it is the parser."], LocalUser(), max_turns=2)
    assert obs == [FORMAT_OBSERVATION] and st.turn == 1 and not st.done
    obs = step_all([st], ["still no action"], LocalUser(), max_turns=2)
    assert obs == [None] and st.done and st.stats().score == 0.0 and not st.stats().answered


def test_simulator_restart_mid_rollout_loses_nothing(world):
    """Stop the HTTP simulator during a rollout and start it again on the same port: the client's retries
    carry the episodes through, and every episode equals the one of an uninterrupted run."""
    from ppp_min.userville.client import SimulatorClient
    from ppp_min.userville.server import make_server
    from ppp_min.userville.simulator import RulesUser
    tasks, _, tok, _ = world
    # the scripted 'skills' agent asks often; run it as a model-free policy over HTTP
    from ppp_min.evals.evaluation import eval_items, run_policy
    specs = eval_items(tasks[:6], ["one_question", "json", "amateur"])
    expect = run_policy(ScriptedAgent("skills", 5), specs, LocalUser())
    server = make_server(RulesUser(), port=0)
    server.start()
    port = int(server.url.rsplit(":", 1)[1])
    client = SimulatorClient(server.url, retries=8, backoff=0.05)
    restarted = []

    def bounce():
        time.sleep(0.05)
        server.stop()
        time.sleep(0.3)
        s2 = make_server(RulesUser(), port=port)
        s2.start()
        restarted.append(s2)

    th = threading.Thread(target=bounce)
    th.start()

    class Slow:
        def reply_batch(self, reqs):
            time.sleep(0.02)
            return client.reply_batch(reqs)

    got = run_policy(ScriptedAgent("skills", 5), specs, Slow())
    th.join()
    restarted[0].stop()
    assert got == expect


def test_one_episode_loop_for_text_policies():
    """Scripted baselines, API agents (worker threads) and SFT demonstrations share agent_env.play: with
    threads the same episodes come out as in line. A scripted agent keeps its plans itself."""
    from ppp_min.userville.agent_env import EpisodeState
    from ppp_min.evals.evaluation import eval_items, run_policy
    tasks = tasklib.make_tasks("funcloc", "test", 2, 0) + tasklib.make_tasks("research", "test", 2, 0)
    specs = eval_items(tasks, ["one_question", "no_ask", "answer_more"])
    oracle = lambda: ScriptedAgent("oracle", 0)  # noqa: E731 (draws no random numbers: call order is free)
    want = run_policy(oracle(), specs, LocalUser())
    assert any(s.questions for s in want)
    assert run_policy(oracle(), specs, LocalUser(), workers=3) == want
    assert not hasattr(EpisodeState(tasks[0], "no_ask", True), "memo")


def test_length_batches_use_each_item_once_per_pass_and_cut_padding():
    import random

    from ppp_min.rl.sft import length_batches
    items = [([0] * n, [1] * n) for n in random.Random(0).choices(range(5, 400), k=96)]
    gen = length_batches(items, 8, random.Random(1), pool=4)
    first_pass = [next(gen) for _ in range(12)]
    assert all(len(b) == 8 for b in first_pass)
    assert sorted(id(x) for b in first_pass for x in b) == sorted(id(x) for x in items)

    def padded(batches):
        return sum(len(b) * max(len(x[0]) for x in b) for b in batches)
    rand = random.Random(2)
    random_batches = [rand.sample(items, 8) for _ in range(12)]
    assert padded(first_pass) < 0.85 * padded(random_batches)  # real tokens are the same either way
    with pytest.raises(ValueError, match="batch >= 1"):
        next(length_batches(items, 0, random.Random(0)))
