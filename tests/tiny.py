"""A tiny policy that writes actions: the tiny preset after a few SFT steps on scripted demonstrations, with its
own BPE. Shared by the tests that need real multi-turn episodes (rollout, a GRPO step, plug-ins)."""

import torch

from ppp_min.lm.model import Decoder
from ppp_min.lm.presets import preset_config
from ppp_min.lm.tokenizer import train_bpe
from ppp_min.rl.sft import encode_demo, sft_step
from ppp_min.rl.step import pad
from ppp_min.userville import tasks as tasklib
from ppp_min.userville.agent_env import LocalUser
from ppp_min.userville.preferences import PREFERENCES
from ppp_min.userville.scripted import demonstrations


def tiny_policy(tasks_per_family: int = 6, n_demos: int = 200, vocab: int = 2048, sft_steps: int = 30):
    """(train tasks of both families, demonstrations, tokenizer, model), seeded: the same every call."""
    tasks = [t for f in ("funcloc", "research") for t in tasklib.make_tasks(f, "train", tasks_per_family, 0)]
    demos = demonstrations(tasks, list(PREFERENCES), n_demos, 0, LocalUser())
    tok = train_bpe([t for m in demos for _, t in m], vocab)
    torch.manual_seed(0)
    model = Decoder(preset_config("tiny", tok.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    enc = [encode_demo(tok, m) for m in demos]
    for i in range(sft_steps):  # enough for the policy to emit actions, so episodes have real turns
        batch = enc[(i * 8) % len(enc):(i * 8) % len(enc) + 8]
        sft_step(model, opt, pad([b[0] for b in batch], 0, "cpu"), pad([b[1] for b in batch], 0.0, "cpu"))
    return tasks, demos, tok, model
