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
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ppp_min.evals import samples
from ppp_min.evals.evaluation import HEADLINE_KEYS, EvalConfig, eval_specs, eval_tasks, headline, metrics, run_model
from ppp_min.lm.model import Decoder
from ppp_min.lm.presets import count_params, flops_per_token, preset_config
from ppp_min.lm.tokenizer import Tokenizer, train_bpe
from ppp_min.machine.resources import trim_freed_memory
from ppp_min.machine.speed import Meter, fast_bf16
from ppp_min.rl.reward import ppp_reward
from ppp_min.rl.step import update_dtype
from ppp_min.run import warm_cache
from ppp_min.run.checkpoint import CheckpointError
from ppp_min.run.checks import check_sizes, prepare_out
from ppp_min.run.config import RunConfig, eval_config
from ppp_min.run.out_dir import CHECKPOINT
from ppp_min.userville import scripted
from ppp_min.userville import tasks as tasklib
from ppp_min.userville.agent_env import LocalUser
from ppp_min.userville.families.registry import FAMILIES
from ppp_min.userville.preferences import PREFERENCES
from ppp_min.weights.hf_io import load_pretrained, save_pretrained


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


@dataclass(eq=False)
class Run:
    """What a running run holds, every field declared here and filled once by ``setup``. Rank 0 alone writes
    files and prints. The phases (``loop.py``) read it and advance its model, optimizer, timers and logs."""
    cfg: RunConfig
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    tok: Tokenizer
    opt: torch.optim.Optimizer  # the RL optimizer (the warm start has its own)
    sample_gen: torch.Generator  # the rollout's sampling generator, re-seeded per step
    client: object  # the simulator client (userville/client.py)
    train_tasks: list
    test_tasks: list  # the held-out split's tasks (test, or val with --eval-split val)
    eval_cfg: EvalConfig
    demos: list | None  # the scripted demonstrations; None when the warm start comes from the cache
    warm_key: tuple | None  # (cache root, key, settings) of this run's warm start, None when not cached
    warm_entry: str | None  # the cached SFT model's directory when it is there
    sft_bf16: bool  # the warm start's matmuls in bf16
    metrics_file: object | None  # OUT/metrics.jsonl (rank 0)
    samples_writer: samples.SampleWriter | None  # OUT/samples.jsonl (rank 0, --log-samples > 0)
    time_s: dict = field(default_factory=lambda: {"warm_start": 0.0, "rollout": 0.0, "update": 0.0, "eval": 0.0})
    meters: dict = field(default_factory=lambda: {"sft": Meter("sft"), "update": Meter("update")})
    t_start: float = field(default_factory=time.time)

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.cfg.out, CHECKPOINT)

    @property
    def update_dtype(self) -> torch.dtype:
        return update_dtype(self.device)

    def say(self, line: str) -> None:
        if self.rank == 0:
            print(line, flush=True)

    def log(self, record: dict, line: str | None = None) -> None:
        if self.rank != 0:
            return
        with _writing(self.metrics_file.name):
            self.metrics_file.write(json.dumps({"time": round(time.time() - self.t_start, 2), **record}) + "\n")
            self.metrics_file.flush()
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
        if self.samples_writer:
            with _writing(self.samples_writer.path):
                self.samples_writer.write(samples.rl_samples(res.episodes, res.rewards.breakdowns, res.advantages.values.tolist(),
                                                       self.train_tasks, self.cfg.log_samples, step, self.cfg.weights))

    def write_eval_samples(self, episodes, label: str, step: int) -> None:
        if self.samples_writer:
            breakdowns = [ppp_reward(e.stats, self.cfg.weights) for e in episodes]
            with _writing(self.samples_writer.path):
                self.samples_writer.write(samples.eval_samples(episodes, breakdowns, self.test_tasks, self.cfg.log_samples,
                                                         label, step, self.cfg.weights))

    def peak_rss_mb(self) -> float:
        from ppp_min.machine.resources import peak_rss_mb
        return round(peak_rss_mb(), 1)

    def close(self) -> None:
        """The last call of a run (its log files are closed by setup's stack): all ranks leave together."""
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
        mcfg = preset_config(cfg.model, tok.vocab_size, eos_token_ids=tok.eos_ids, pad_token_id=tok.pad_id,
                             smear_keys=cfg.smear_keys, smear_window=cfg.smear_window,
                             recency=cfg.recency)
        return Decoder(mcfg).to(device), tok
    if not os.path.isdir(cfg.model):
        raise TrainError(f"--model {cfg.model!r} is neither a preset (tiny|small|base) nor a directory")
    try:
        return load_pretrained(cfg.model, device=device), Tokenizer.from_dir(cfg.model)
    except (ValueError, OSError) as e:
        raise TrainError(f"--model {cfg.model}: {e}") from None


def _warm_cache_entry(cfg: RunConfig, device, sft_bf16: bool) -> tuple[tuple | None, str | None]:
    """Where this run's warm start is cached (root, key, settings) and the entry when it is there."""
    root = warm_cache.default_dir() if cfg.warm_start_cache == "auto" else cfg.warm_start_cache
    if not (root and cfg.warm.total_steps and not cfg.resume):
        return None, None
    key, settings = warm_cache.cache_key(cfg, device.type, sft_bf16)
    return (root, key, settings), warm_cache.lookup(root, key)


def _model_and_demos(cfg: RunConfig, device, train_tasks, warm_entry):
    """(model, tokenizer, demonstrations): the cached SFT model (no demonstrations needed), or a fresh model and
    the scripted demonstrations its warm start trains on (a preset's BPE is trained on them)."""
    if warm_entry:
        cached_tok = None if cfg.pretrained else Tokenizer.from_dir(warm_entry)
        model, tok = _build_model(cfg, device, tok=cached_tok)
        try:
            warm_cache.load_weights(warm_entry, model)
        except warm_cache.WarmCacheError as e:
            raise TrainError(str(e)) from None
        return model, tok, None
    n_demos = max(64, (cfg.warm.pretrain_steps + cfg.warm.sft_steps) * cfg.warm.batch)  # each seen about once
    demos = scripted.demonstrations(train_tasks, cfg.prefs, n_demos, cfg.seed, LocalUser(), cfg.rollout.max_turns,
                                    cfg.warm.style_match, cfg.warm.search_with)
    model, tok = _build_model(cfg, device, scripted.corpus(demos))
    return model, tok, demos


def _open_logs(cfg: RunConfig, rank: int, stack: ExitStack):
    """OUT/metrics.jsonl and OUT/samples.jsonl, appended to (rank 0 only), closed by ``stack``."""
    if rank != 0:
        return None, None
    metrics_file = stack.enter_context(open(os.path.join(cfg.out, "metrics.jsonl"), "a"))
    writer = samples.SampleWriter(os.path.join(cfg.out, "samples.jsonl")) if cfg.log_samples else None
    if writer:
        stack.callback(writer.close)
    return metrics_file, writer


def setup(cfg: RunConfig, stack: ExitStack) -> Run:
    rank, world = _rank_world()
    device = pick_device(cfg.device) if world == 1 or not torch.cuda.is_available() else torch.device(f"cuda:{rank}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:  # the directory, and on --resume the resume contract, before anything is built
        cfg = prepare_out(cfg, rank, world, lambda line: print(line, flush=True))
    except (ValueError, CheckpointError) as e:
        raise TrainError(str(e)) from None
    metrics_file, samples_writer = _open_logs(cfg, rank, stack)
    say = (lambda line: print(line, flush=True)) if rank == 0 else (lambda line: None)
    train_tasks = [t for f in cfg.families for t in tasklib.make_tasks(f, "train", cfg.train_tasks, cfg.seed)]
    ecfg = eval_config(cfg)
    test_tasks = eval_tasks(ecfg)
    client = _connect_simulator(cfg, stack, say)
    sft_bf16 = fast_bf16(device) if cfg.warm.bf16 is None else cfg.warm.bf16
    warm_key, warm_entry = _warm_cache_entry(cfg, device, sft_bf16)
    model, tok, demos = _model_and_demos(cfg, device, train_tasks, warm_entry)
    try:
        if cfg.resume and not cfg.pretrained:  # the resumed run's own BPE, not a fresh one
            tok = Tokenizer.from_file(os.path.join(cfg.out, "tokenizer", "tokenizer.json"))
        check_sizes(cfg, model, tok, train_tasks + test_tasks,
                    min(ecfg.batch, len(eval_specs(ecfg, test_tasks))) if cfg.eval_tasks else 0, device)
    except ValueError as e:
        raise TrainError(str(e)) from None
    say(f"model {cfg.model}: {count_params(model) / 1e6:.2f}M params, vocab {tok.vocab_size}, device {device}, "
        f"SFT in {'bf16' if sft_bf16 else 'fp32'}; {len(train_tasks)} train / {len(test_tasks)} {ecfg.split} tasks, "
        f"{len(cfg.prefs)} training preferences")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.rl.lr, weight_decay=cfg.rl.weight_decay, betas=(0.9, 0.99))
    r = Run(cfg, rank, world, device, model, tok, opt, torch.Generator(device=device), client, train_tasks,
            test_tasks, ecfg, demos, warm_key, warm_entry, sft_bf16, metrics_file, samples_writer)
    stack.callback(r.close)
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
    r.log({"phase": "eval", "label": label, "step": step, **m.vague,
           **{f: m.family(f) for f in FAMILIES}, "precise": m.precise},
          f"eval[{label}] {short} ({time.time() - t0:.0f}s, {len(specs)} episodes)")
    r.write_eval_samples(episodes, label, step)
    return short
