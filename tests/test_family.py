"""A task family is one class and one registration: a toy family defined here alone runs through the scripted
agents, the rules user over HTTP, the PPP reward and one GRPO step of the tiny model
(docs/design.md#adding-a-task-family)."""

import random

import pytest
import torch

from ppp_min.lm.model import Decoder
from ppp_min.lm.presets import preset_config
from ppp_min.lm.tokenizer import train_bpe
from ppp_min.rl.grpo import GRPOConfig
from ppp_min.rl.reward import RewardWeights, ppp_reward
from ppp_min.rl.rollout import EpisodeSpec, RolloutConfig
from ppp_min.rl.sft import encode_demo, sft_step
from ppp_min.rl.step import StepConfig, grpo_step, pad
from ppp_min.userville.agent_env import EpisodeState, LocalUser, play
from ppp_min.userville.catalog import Item, Schema, stable_hash_split
from ppp_min.userville.client import SimulatorClient
from ppp_min.userville.families.base import Ladder, TaskFamily
from ppp_min.userville.families.registry import FAMILIES, register
from ppp_min.userville.protocol import Fact, ProtocolError, parse_user_task
from ppp_min.userville.scripted import ScriptedAgent, corpus
from ppp_min.userville.server import make_server, make_user
from ppp_min.userville.tasks import make_tasks, search

COLOURS = ("amber", "brown", "cream", "green", "ochre", "slate", "white", "black")
SHAPES = ("round", "tall", "squat", "flat", "wide", "slim", "small", "big")


def _jar_key(rng, v, split, used):
    for _ in range(20):
        key = f"{rng.choice(COLOURS)}-{rng.choice(SHAPES)}-jar"
        if stable_hash_split(key) == split and key not in used:
            return key
    return None


class Pantry(TaskFamily):
    """Find the spice jar: the intent is the dish; a vague request drops some of spice, herb and heat."""
    name = "pantry"
    schema = Schema("pantry", "dish", ("spice", "herb", "heat"),
                    (("dish", ("soup", "stew", "curry")), ("spice", ("cumin", "clove", "anise", "mace", "sumac")),
                     ("herb", ("basil", "thyme", "sage", "dill", "mint")), ("heat", ("mild", "warm", "hot", "fiery"))),
                    (("dish", 2), ("spice", 3), ("herb", 3), ("heat", 3)), _jar_key, lambda k, v: "")
    ladder = Ladder(effort=("low", "medium", "high"), nothing=2,
                    labels=("the details of the full request", "nothing: say you don't know", "the jar's label"))
    details = {"spice": ("It has {v} in it.", ("spice", "spices", "flavour")),
               "herb": ("It has {v} leaves.", ("herb", "herbs", "leaves")),
               "heat": ("It is {v}.", ("heat", "hot", "spicy", "strong"))}
    questions = {"spice": ("Which spice is in it", "Quale spezia contiene"),
                 "herb": ("Which herb is in it", "Quale erba contiene"),
                 "heat": ("How hot is it", "Quanto è piccante"),
                 "label": ("Which jar is it", "Quale barattolo è")}
    lazy_target = "label"

    def prompt(self, values, kept):
        return ", ".join([f"Find the jar: {values['dish']} mix"] + [values[a] for a in self.schema.optional
                                                                     if a in kept]) + "."

    def item_line(self, item: Item) -> str:
        return f"{item.key}: {', '.join(item.values)}"

    def answer_facts(self, target: Item):
        return (Fact(3, f"It is the jar labelled {target.key}.", ("jar", "label", "labelled", "name", "answer")),)

    def score(self, answer, gold):
        return 1.0 if answer.strip() in gold else 0.0

    def proactivity(self, levels, is_vague):
        if is_vague:
            return sum({1: 0.0, 2: -0.1, 3: -0.5}[lv] for lv in levels)  # the lazy label question costs most
        return -0.2 * len(levels)  # a precise request needs no question


@pytest.fixture
def pantry():
    fam = register(Pantry())
    yield fam
    del FAMILIES[fam.name]  # leave the registry as the other tests expect it


@pytest.fixture
def client():
    srv = make_server(make_user("rules"), "127.0.0.1", 0).start()  # the real server, validating families
    yield SimulatorClient(srv.url)
    srv.stop()


def test_registering_checks_the_family_and_the_protocol_knows_it(pantry):
    assert list(FAMILIES) == ["funcloc", "research", "pantry"]
    with pytest.raises(ValueError, match="already registered"):
        register(Pantry())
    t = make_tasks("pantry", "train", 3, 0)[0]
    assert parse_user_task(t.user.to_json(), FAMILIES) == t.user  # the wire accepts the new family
    bad = {**t.user.to_json(), "facts": [{"tier": 2, "text": "x", "keywords": []}]}
    with pytest.raises(ProtocolError, match="nothing"):  # its ladder's nothing tier holds no facts
        parse_user_task(bad, FAMILIES)
    assert search(t, t.precise_prompt, k=1)[0].startswith(t.gold[0] + ": ")


def test_scripted_episodes_over_http_and_their_reward(pantry, client):
    tasks = make_tasks("pantry", "train", 6, 0)
    for kind, tier, effort, c in (("oracle", 1, "low", 0.0), ("lazy", 3, "high", -0.5)):
        states = [EpisodeState(t, "no_preference", True) for t in tasks]
        for st in play(ScriptedAgent(kind), states, client, 6):
            s = st.stats()
            assert s.family == "pantry" and [(q.cost, q.effort) for q in s.questions] == [(tier, effort)]
            r = ppp_reward(s)
            assert (s.score, r.value("proactivity"), r.total) == (1.0, c, 1.0 + c), (kind, st.messages)
    never = play(ScriptedAgent("never_ask"), [EpisodeState(t, "no_preference", True) for t in tasks], client, 6)
    assert all(ppp_reward(st.stats()).value("proactivity") == (0.0 if st.score == 1 else -0.1) for st in never)


def test_one_grpo_step_of_the_tiny_model(pantry, client):
    tasks = make_tasks("pantry", "train", 8, 0)
    # the scripted agents' dialogues (asking low, asking lazily, not asking) as a short SFT warm start, so that
    # the policy writes actions and the groups differ
    demos = [st.messages for kind in ("oracle", "lazy", "never_ask") for st in
             play(ScriptedAgent(kind), [EpisodeState(t, "no_preference", True) for t in tasks * 4], LocalUser(), 6)]
    random.Random(0).shuffle(demos)
    tok = train_bpe(corpus(demos), 2048)
    torch.manual_seed(0)
    model = Decoder(preset_config("tiny", tok.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    enc = [encode_demo(tok, m) for m in demos]
    for i in range(50):
        batch = enc[i * 8 % len(enc):i * 8 % len(enc) + 8]
        sft_step(model, opt, pad([b[0] for b in batch], 0, "cpu"), pad([b[1] for b in batch], 0.0, "cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    specs = [EpisodeSpec(t, "no_preference", True, group_id=i) for i, t in enumerate(tasks)]
    cfg = StepConfig(RolloutConfig(group_size=4, max_turns=3, max_new_tokens=24, temperature=0.7), RewardWeights(),
                     GRPOConfig())
    res = grpo_step(model, tok, opt, specs, client, cfg, torch.Generator().manual_seed(0))
    assert len(res.episodes) == 32 and {e.stats.family for e in res.episodes} == {"pantry"}
    assert [b.value("proactivity") for b in res.rewards.breakdowns] == \
        [ppp_reward(e.stats).value("proactivity") for e in res.episodes]
    # the questions the policy sampled were labelled by the pantry ladder (which of its tiers depends on the
    # samples, so on the CPU's float kernels: AVX2 and AVX-512 draw different ones; the high tier itself is
    # checked on the scripted lazy agent, test_scripted_episodes_over_http_and_their_reward)
    asked = [(q.cost, q.effort) for e in res.episodes for q in e.stats.questions]
    assert asked and set(asked) <= {(1, "low"), (2, "medium"), (3, "high")}, asked
    assert bool(res.advantages.values.ne(0).any())  # the rewards differ within a group: something to learn
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
