"""Everything a training run holds while it runs, built once by ``setup``; and the held-out evaluation.

Contract
- ``setup(cfg, stack) -> Run``: the distributed rank (``torchrun``), the device, the output directory
  (``checks.prepare_out``: a fresh run never mixes with an old one, a resumed one keeps the resume
  contract), the tasks, the simulator (``--sim-url``
  or the embedded rules simulator, stopped by ``stack``), the scripted demonstrations, the model and tokenizer
  (a preset from scratch with its own BPE, or a local HF directory; ``checks.check_sizes``: its rollout
  and evaluation batches fit the context and the memory), the RL optimizer and sampling generator.
- ``Run`` is the one mutable object of a run: it carries the live model and optimizer, the phase timers
  (``time_s``) and throughput meters, and writes metrics.jsonl / samples.jsonl (rank 0 only).
- ``evaluate(r, label, step) -> dict``: held-out tasks x all 20 preferences on vague prompts, plus precise
  prompts, whatever the training preferences (paper §6.3, Fig. 8: seen and unseen personalization apart),
  sampled as ``r.eval_cfg`` (``run.config.eval_config``) says: ``eval.py`` with the same flags reproduces it.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack, contextmanager

import torch
import torch.distributed as dist

from ppp_min.evals import samples
from ppp_min.rl import sft
from ppp_min.run import warm_cache
from ppp_min.userville.agent_env import LocalUser
from ppp_min.run.checkpoint import CheckpointError
from ppp_min.evals.evaluation import HEADLINE_KEYS, eval_specs, eval_tasks, headline, metrics, run_model
from ppp_min.lm.model import Decoder
from ppp_min.lm.presets import count_params, flops_per_token, preset_config
from ppp_min.weights.hf_io import load_pretrained, save_pretrained
from ppp_min.machine.resources import trim_freed_memory
from ppp_min.rl.reward import ppp_reward
from ppp_min.run.checks import check_sizes, prepare_out
from ppp_min.run.config import RunConfig, eval_config
from ppp_min.machine.speed import Meter, fast_bf16
from ppp_min.lm.tokenizer import Tokenizer, train_bpe
from ppp_min.rl.update import update_dtype
from ppp_min.userville import tasks as tasklib
from ppp_min.userville.preferences import PREFERENCES


EVAL_KEYS = HEADLINE_KEYS  # the keys of evaluate()'s summary (evaluation.headline), under their old name


class TrainError(RuntimeError):
    """Bad input (a flag, a file, a directory): one line; train.py exits 2."""
    exit_code = 2


class TrainFailure(TrainError):
    """The run cannot go on (the simulator stayed down, a full disk); one line, train.py exits 1, and the
    message names the checkpoint to ``--resume`` from."""
    exit_code = 1


@contextmanager
def _writing(path: str):
    """A failed write names its file (a buffered ``write``/``flush`` error has no file name of its own)."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


class Run:
    """The state of a running run (see the module docstring). Rank 0 alone writes files and prints."""

    def __init__(self, cfg: RunConfig, rank: int, world: int, device: torch.device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.ckpt_path = os.path.join(cfg.out, "checkpoint.safetensors")
        self.time_s = {"warm_start": 0.0, "rollout": 0.0, "update": 0.0, "eval": 0.0}
        self.meters = {"sft": Meter("sft"), "update": Meter("update")}
        self.sft_bf16 = fast_bf16(device) if cfg.warm.bf16 is None else cfg.warm.bf16
        self.update_dtype = update_dtype(device)
        self._metrics = open(os.path.join(cfg.out, "metrics.jsonl"), "a") if rank == 0 else None
        self._samples = samples.SampleWriter(os.path.join(cfg.out, "samples.jsonl")) \
            if rank == 0 and cfg.log_samples else None
        self.t_start = time.time()

    def say(self, line: str) -> None:
        if self.rank == 0:
            print(line, flush=True)

    def log(self, record: dict, line: str | None = None) -> None:
        if self.rank != 0:
            return
        with _writing(self._metrics.name):
            self._metrics.write(json.dumps({"time": round(time.time() - self.t_start, 2), **record}) + "\n")
            self._metrics.flush()
        if line:
            print(line, flush=True)

    def count(self, meter: str, lengths: list[int], seconds: float, epochs: int = 1) -> None:
        """Model FLOPs of training on sequences of these lengths (forward + backward = 3x forward)."""
        flops = sum(3 * flops_per_token(self.model.config, n) * n for n in lengths) * epochs
        self.meters[meter].add(sum(lengths) * epochs, flops, seconds)

    def save_model(self, name: str) -> None:
        save_pretrained(self.model, os.path.join(self.cfg.out, name))
        self.tok.save(os.path.join(self.cfg.out, name))

    def write_rl_samples(self, res, step: int) -> None:
        if self._samples:
            with _writing(self._samples.path):
                self._samples.write(samples.rl_samples(res.episodes, res.rewards.breakdowns, res.advantages,
                                                       self.train_tasks, self.cfg.log_samples, step, self.cfg.weights))

    def write_eval_samples(self, episodes, label: str, step: int) -> None:
        if self._samples:
            breakdowns = [ppp_reward(e.stats, self.cfg.weights) for e in episodes]
            with _writing(self._samples.path):
                self._samples.write(samples.eval_samples(episodes, breakdowns, self.test_tasks, self.cfg.log_samples,
                                                         label, step, self.cfg.weights))

    def peak_rss_mb(self) -> float:
        from ppp_min.machine.resources import peak_rss_mb
        return round(peak_rss_mb(), 1)

    def close(self) -> None:
        for f in (self._metrics, self._samples):
            if f:
                f.close()
        self._metrics = self._samples = None
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def _rank_world() -> tuple[int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise TrainError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    return dev


def _connect_simulator(cfg: RunConfig, stack: ExitStack, say):
    """--sim-url (checked at start on an endpoint that needs its token), or the embedded rules simulator
    started here and stopped on exit. Calls retry an outage for ``--sim-retry-s`` seconds, saying so."""
    from ppp_min.userville.client import SimulatorClient, SimulatorError, check_ready, start_local_simulator
    timeout = (3.05, cfg.sim_timeout)
    try:
        if cfg.sim_url:
            with SimulatorClient(cfg.sim_url, token=cfg.sim_token, timeout=timeout, retries=2) as probe:
                check_ready(probe, PREFERENCES)
            url = cfg.sim_url
        else:
            url = stack.enter_context(start_local_simulator()).url
        return stack.enter_context(SimulatorClient(url, token=cfg.sim_token, timeout=timeout,
                                                   retry_s=cfg.sim_retry_s, on_wait=say))
    except SimulatorError as e:
        raise TrainError(str(e)) from None


def _build_model(cfg: RunConfig, device, texts=None, tok=None):
    """A preset from scratch (with a byte-level BPE trained on ``texts``, or the given ``tok``) or a local HF
    directory. The preset's init is seeded here, so a run that then loads cached weights leaves the global
    RNG exactly where a fresh run does."""
    if not cfg.pretrained:
        tok = tok if tok is not None else train_bpe(texts, 4096)
        torch.manual_seed(cfg.seed)
        mcfg = preset_config(cfg.model, tok.vocab_size, eos_token_ids=tok.eos_ids, pad_token_id=tok.pad_id)
        return Decoder(mcfg).to(device), tok
    if not os.path.isdir(cfg.model):
        raise TrainError(f"--model {cfg.model!r} is neither a preset (tiny|small|base) nor a directory")
    try:
        return load_pretrained(cfg.model, device=device), Tokenizer.from_dir(cfg.model)
    except (ValueError, OSError) as e:
        raise TrainError(f"--model {cfg.model}: {e}") from None


def _warm_cache_entry(r: Run, cfg: RunConfig) -> None:
    """Where this run's warm start is cached (``r.warm_key``) and whether it is there (``r.warm_entry``)."""
    r.warm_key = r.warm_entry = None
    root = warm_cache.default_dir() if cfg.warm_start_cache == "auto" else cfg.warm_start_cache
    if root and cfg.warm.total_steps and not cfg.resume:
        key, settings = warm_cache.cache_key(cfg, r.device.type, r.sft_bf16)
        r.warm_key, r.warm_entry = (root, key, settings), warm_cache.lookup(root, key)


def setup(cfg: RunConfig, stack: ExitStack) -> Run:
    rank, world = _rank_world()
    device = pick_device(cfg.device) if world == 1 or not torch.cuda.is_available() else torch.device(f"cuda:{rank}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:  # the directory, and on --resume the resume contract, before anything is built
        cfg = prepare_out(cfg, rank, world, lambda line: print(line, flush=True))
    except (ValueError, CheckpointError) as e:
        raise TrainError(str(e)) from None
    r = Run(cfg, rank, world, device)
    stack.callback(r.close)
    r.train_tasks = [t for f in cfg.families for t in tasklib.make_tasks(f, "train", cfg.train_tasks, cfg.seed)]
    r.eval_cfg = eval_config(cfg)
    r.test_tasks = eval_tasks(r.eval_cfg)  # the held-out split's tasks (test, or val with --eval-split val)
    r.client = _connect_simulator(cfg, stack, r.say)
    _warm_cache_entry(r, cfg)
    if r.warm_entry:  # the cached SFT model and its tokenizer: no demonstrations needed
        r.demos = None
        cached_tok = None if cfg.pretrained else Tokenizer.from_dir(r.warm_entry)
        r.model, tok = _build_model(cfg, device, tok=cached_tok)
        try:
            warm_cache.load_weights(r.warm_entry, r.model)
        except warm_cache.WarmCacheError as e:
            raise TrainError(str(e)) from None
    else:
        n_demos = max(64, cfg.warm.total_steps * cfg.warm.batch)  # each demonstration seen about once
        r.demos = sft.demonstrations(r.train_tasks, cfg.prefs, n_demos, cfg.seed, LocalUser(),
                                     cfg.rollout.max_turns, cfg.warm.style_match)
        r.model, tok = _build_model(cfg, device, sft.corpus(r.demos))
    try:
        if cfg.resume and not cfg.pretrained:  # the resumed run's own BPE, not a fresh one
            tok = Tokenizer.from_file(os.path.join(cfg.out, "tokenizer", "tokenizer.json"))
        check_sizes(cfg, r.model, tok, r.train_tasks + r.test_tasks,
                    min(r.eval_cfg.batch, len(eval_specs(r.eval_cfg, r.test_tasks))) if cfg.eval_tasks else 0, device)
    except ValueError as e:
        raise TrainError(str(e)) from None
    r.tok = tok
    r.say(f"model {cfg.model}: {count_params(r.model) / 1e6:.2f}M params, vocab {tok.vocab_size}, device {device}, "
          f"SFT in {'bf16' if r.sft_bf16 else 'fp32'}; {len(r.train_tasks)} train / {len(r.test_tasks)} test tasks, "
          f"{len(cfg.prefs)} training preferences")
    r.opt = torch.optim.AdamW(r.model.parameters(), lr=cfg.rl.lr, weight_decay=cfg.rl.weight_decay,
                              betas=(0.9, 0.99))
    r.sample_gen = torch.Generator(device=device)
    return r


def evaluate(r: Run, label: str, step: int) -> dict:
    """Held-out metrics (x100) of the current model; the whole set goes to metrics.jsonl, a summary back."""
    cfg = r.cfg
    specs = eval_specs(r.eval_cfg, r.test_tasks)
    t0 = time.time()
    episodes = run_model(r.model, r.tok, specs, r.client, r.eval_cfg)
    trim_freed_memory()  # the evaluation's KV caches leave RSS
    m = metrics([e.stats for e in episodes], cfg.weights)
    short = headline(m)
    r.time_s["eval"] += time.time() - t0
    r.log({"phase": "eval", "label": label, "step": step, **{k: v for k, v in m.items() if not isinstance(v, dict)},
           "funcloc": m.get("funcloc"), "research": m.get("research"), "precise": m.get("precise")},
          f"eval[{label}] {short} ({time.time() - t0:.0f}s, {len(specs)} episodes)")
    r.write_eval_samples(episodes, label, step)
    return short
