"""PPP evaluation CLI: paper-style tables for scripted baselines, trained checkpoints and API models.

    python eval.py                                   # the three scripted baselines (seconds on a CPU)
    python eval.py --agent runs/ppp/model --agent oracle --plots plots/   # train.py's final figures, + oracle
    python eval.py --agent openai:gpt-4.1-mini --agent-base-url http://127.0.0.1:8000/v1 --eval-tasks 10
    python eval.py curves runs/ppp [--plots DIR] [--bins N]   # training curves (paper Figs. 7-8)
    python eval.py show runs/ppp/samples.jsonl [-n N] [--step N|last] [--phase rl|eval|LABEL]  # dialogues
    python eval.py show runs/ppp/model [-n N] [--pref NAME] [--vague|--precise]  # measured episodes of a model

Every agent runs on the same held-out tasks (--eval-split test, or val): each task's vague prompt once per
preference (Table 2 averages over preferences) and its precise prompt once with `no_preference` (reported
apart: the ask ratio should stay low there). The evaluation flags and their defaults are train.py's
(ppp_min/evals/evaluation.py: EvalConfig), so `--agent OUT/model` with the run's --seed, --eval-tasks,
--max-new-tokens, --max-turns, --eval-temperature, --eval-batch and --eval-split gives exactly the figures of
the run's final evaluation (the JSON's `summary` per agent is train.py's `final`). Agents: `never_ask`,
`lazy`, `oracle` (scripted baselines), `skills` (the SFT demonstration policy), a directory (an HF model dir, e.g. train.py's OUT/model), or
`openai:MODEL` (any OpenAI-compatible chat endpoint; key from $OPENAI_API_KEY). The user simulator is
embedded (a local rules server, stopped on exit) unless --sim-url is given. Prints markdown tables to
stdout (Table 2 first), one progress line per agent to stderr. Exit 2: bad flags, bad model directory
or unreachable simulator; exit 1: the agent's endpoint failed (never replaced by a made-up turn); 130 Ctrl-C,
143 SIGTERM. A simulator outage is retried for --sim-retry-s seconds (one line while it waits).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

SCRIPTED = ("never_ask", "lazy", "oracle", "skills")


class EvalError(Exception):
    """A bad flag, directory or simulator: one line; exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from ppp_min.evals.evaluation import add_eval_flags
    p = argparse.ArgumentParser(prog="eval.py", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=110))
    g = p.add_argument_group("agents")
    g.add_argument("--agent", action="append", default=None, metavar="AGENT",
                   help="repeatable: never_ask | lazy | oracle | skills | MODEL_DIR | openai:MODEL "
                        "(default: never_ask, lazy, oracle)")
    g.add_argument("--device", default="auto", help="model agents: auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument("--threads", type=int, default=0, help="model agents: torch CPU threads (0 = torch's default); "
                   "the run's --threads, for its figures to the digit (sums in another order may round apart)")
    g.add_argument("--agent-base-url", default=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
                   help="openai agents: base URL, POST {URL}/chat/completions (default $OPENAI_BASE_URL "
                        "or https://api.openai.com/v1)")
    g.add_argument("--agent-workers", type=int, default=8, help="openai agents: concurrent calls (default 8)")
    g.add_argument("--agent-retries", type=int, default=2,
                   help="openai agents: retries on connection errors, 429 and 5xx (default 2)")
    g.add_argument("--agent-timeout", type=float, default=60.0,
                   help="openai agents: seconds per call, request to last byte (default 60)")
    g.add_argument("--agent-max-tokens", type=int, default=64,
                   help="openai agents: max_tokens of each turn (default 64, train.py's --max-new-tokens)")
    g.add_argument("--agent-temperature", type=float, default=0.0,
                   help="openai agents: sampling temperature (default 0; an endpoint's sampling is not seeded here)")
    add_eval_flags(p)
    g = p.add_argument_group("simulator and output")
    g.add_argument("--sim-url", default=None,
                   help="user simulator URL(s), comma-separated (default: start an embedded rules simulator)")
    g.add_argument("--sim-token", default=None,
                   help="bearer token of a --sim-url simulator started with --token (default: $PPP_SIM_TOKEN)")
    g.add_argument("--sim-retry-s", type=float, default=120.0,
                   help="seconds a simulator call keeps retrying an outage before the evaluation stops (default 120)")
    g.add_argument("--json", default=None, metavar="PATH", help="also write every figure as JSON to PATH (per agent, "
                   "`summary` holds the figures train.py prints for an evaluation)")
    g.add_argument("--samples", default=None, metavar="PATH", help="also write every episode of every agent as a "
                   "sample record, one JSON a line (`eval.py show PATH` renders them)")
    g.add_argument("--plots", default=None, metavar="DIR", help="write PNG bar charts to DIR (needs matplotlib)")
    return p


def curves_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval.py curves", description="Training curves of a train.py run "
                                "(RUN_DIR/metrics.jsonl): paper Fig. 7 (questions per episode by effort over "
                                "RL steps, binned) and Fig. 8 (personalization on the unseen preferences at "
                                "each evaluation), as markdown tables.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of a train.py run")
    p.add_argument("--bins", type=int, default=10, help="rows of the Fig. 7 table (default 10)")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots to DIR (needs matplotlib)")
    return p


def check_agents(args) -> list[str]:
    agents = args.agent or ["never_ask", "lazy", "oracle"]
    for a in agents:
        if agents.count(a) > 1:
            raise EvalError(f"--agent {a} is given twice; list each agent once")
        if a in SCRIPTED:
            continue
        if a.startswith("openai:"):
            if not a[len("openai:"):]:
                raise EvalError("--agent openai: needs a model name, e.g. --agent openai:gpt-4.1-mini")
            if not args.agent_base_url.startswith(("http://", "https://")):
                raise EvalError(f"--agent-base-url must look like http://host:port/v1, got {args.agent_base_url!r}")
            continue
        if not os.path.isdir(a):
            raise EvalError(f"--agent {a!r} is not one of {'|'.join(SCRIPTED)}, not openai:MODEL and not a "
                            "directory")
        missing = [f for f in ("config.json", "tokenizer.json") if not os.path.isfile(os.path.join(a, f))]
        if missing:
            raise EvalError(f"--agent {a}: not an HF model directory (no {' or '.join(missing)}); pass e.g. "
                            "train.py's OUT/model")
    return agents


def validate(args):
    """The agents' flags here; the evaluation's in EvalConfig (one place, shared with train.py). Returns it."""
    from ppp_min.evals.evaluation import eval_config_from_args
    for name in ("agent_workers", "agent_max_tokens"):
        if getattr(args, name) < 1:
            raise EvalError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads < 0:
        raise EvalError(f"--threads must be >= 0, got {args.threads}")
    if not 0 <= args.sim_retry_s < float("inf"):
        raise EvalError(f"--sim-retry-s must be a finite number >= 0, got {args.sim_retry_s}")
    if args.sim_token and not args.sim_url:
        raise EvalError("--sim-token is for a --sim-url simulator started with --token; the embedded one needs none")
    if args.agent_retries < 0 or not args.agent_timeout > 0:
        raise EvalError("--agent-retries must be >= 0 and --agent-timeout > 0")
    if not (args.agent_temperature >= 0 and args.agent_temperature < float("inf")):
        raise EvalError(f"--agent-temperature must be a finite number >= 0, got {args.agent_temperature}")
    for flag, path in (("--json", args.json), ("--samples", args.samples)):
        if path and os.path.isdir(path):
            raise EvalError(f"{flag} {path} is a directory; give a file path")
    try:
        ecfg = eval_config_from_args(args)
    except ValueError as e:
        raise EvalError(str(e)) from None
    return ecfg


class KeepStates:
    """Wraps a text policy and remembers the episode states it plays, so the report's example dialogue and
    ``--samples`` are the measured episodes (no extra call to an API agent)."""

    def __init__(self, policy):
        self.policy, self.states = policy, {}

    def __call__(self, st):
        self.states[id(st)] = st
        return self.policy(st)

    def records(self, specs, label: str) -> list[dict]:
        from ppp_min.rl.reward import ppp_reward
        from ppp_min.evals.samples import dialogue_record
        played = {(st.task.task_id, st.preference, st.is_vague): st for st in self.states.values()}
        out = []
        for i, spec in enumerate(specs):
            st = played[(spec.task.task_id, spec.preference, spec.is_vague)]
            out.append(dialogue_record(st.task, st.preference, st.is_vague, st.messages, st.stats(),
                                       ppp_reward(st.stats()), phase="eval", label=label, group_id=i, pick="first"))
        return out


def run_agent(name: str, specs, client, args, ecfg) -> tuple[list, list[dict]]:
    """One episode per spec for one agent: ``EpisodeStats`` in spec order, and every episode as a sample
    record (group id = its index in the evaluation; the first is the report's example dialogue). A model agent
    samples as ``ecfg`` says, exactly as train.py's evaluations do (``evaluation.run_model``)."""
    from ppp_min.evals.evaluation import run_model, run_policy
    if name in SCRIPTED:
        from ppp_min.userville.scripted import ScriptedAgent
        policy = KeepStates(ScriptedAgent(name, ecfg.seed))
        return run_policy(policy, specs, client, ecfg.max_turns), policy.records(specs, name)
    if name.startswith("openai:"):
        from ppp_min.evals.api_agent import APIAgent
        agent = APIAgent(args.agent_base_url, name[len("openai:"):], temperature=args.agent_temperature,
                         timeout=args.agent_timeout, retries=args.agent_retries,
                         max_tokens=args.agent_max_tokens)
        policy = KeepStates(agent)
        stats = run_policy(policy, specs, client, ecfg.max_turns, args.agent_workers)
        return stats, policy.records(specs, name)
    import torch
    from ppp_min.weights.hf_io import load_pretrained
    from ppp_min.rl.reward import ppp_reward
    from ppp_min.run.checks import check_eval_batch
    from ppp_min.evals.samples import episode_record
    from ppp_min.lm.tokenizer import Tokenizer
    from ppp_min.run.setup import TrainError, pick_device
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
        model, tok = load_pretrained(name, device=device, dtype=torch.float32), Tokenizer.from_dir(name)
    except (TrainError, ValueError, OSError) as e:
        raise EvalError(f"--agent {name}: {' '.join(str(e).split())}") from None
    try:  # before decoding: --eval-batch episodes at a time must fit the memory (KV cache, logits, prefill)
        check_eval_batch(model, tok, specs, ecfg, f"--agent {name}: --eval-batch {ecfg.batch}")
    except ValueError as e:
        raise EvalError(str(e)) from None

    def progress(done, total, secs):
        print(f"[eval] {name}: {done}/{total} episodes ({secs:.0f}s)", file=sys.stderr, flush=True)
    try:
        eps = run_model(model, tok, specs, client, ecfg, progress=progress)
    except ValueError as e:  # e.g. a prompt that does not fit the model's context
        raise EvalError(f"--agent {name}: {e}") from None
    return [e.stats for e in eps], [episode_record(e, s.task, ppp_reward(e.stats), phase="eval", label=name,
                                                   pick="first") for e, s in zip(eps, specs)]


def _connect(args, stack, prefs):
    """--sim-url, checked on an endpoint that needs its token, or an embedded rules simulator stopped by
    ``stack``; calls retry an outage for --sim-retry-s seconds, with one line on stderr while they wait."""
    from ppp_min.userville.client import SimulatorClient, SimulatorError, check_ready, start_local_simulator

    def say(line):
        print(f"[eval] {line}", file=sys.stderr, flush=True)
    token = (args.sim_token or os.environ.get("PPP_SIM_TOKEN")) if args.sim_url else None
    try:
        if args.sim_url:
            with SimulatorClient(args.sim_url, token=token, retries=2) as probe:
                check_ready(probe, prefs)
            url = args.sim_url
        else:
            url = stack.enter_context(start_local_simulator()).url
        return stack.enter_context(SimulatorClient(url, token=token, retry_s=args.sim_retry_s, on_wait=say))
    except (SimulatorError, ValueError) as e:
        raise EvalError(f"simulator: {e}") from None


def evaluate(args) -> int:
    from contextlib import ExitStack

    from ppp_min.evals.api_agent import AgentError
    from ppp_min.evals.evaluation import describe, eval_specs, headline, metrics
    from ppp_min.evals.report import build_report, eval_markdown, plot_reports, reports_json
    from ppp_min.evals.show import render
    from ppp_min.userville.client import SimulatorError

    ecfg = validate(args)
    agents = check_agents(args)
    specs = eval_specs(ecfg)  # vague prompts x preferences (Table 2), then each precise prompt once (Fig. 6)
    reports, examples, summaries, records = [], {}, {}, []
    with ExitStack() as stack:
        client = _connect(args, stack, ecfg.preferences)
        for name in agents:
            t0 = time.time()
            try:
                stats, recs = run_agent(name, specs, client, args, ecfg)
            except SimulatorError as e:
                raise EvalError(f"simulator failed while evaluating {name}: {e}") from None
            except AgentError as e:
                print(f"eval.py: error: {e}", file=sys.stderr)
                return 1
            reports.append(build_report(name, stats))
            summaries[name] = headline(metrics(stats))  # what train.py prints as sft / final
            examples[name] = render({**recs[0], "label": "example"})
            records += recs
            print(f"[eval] {name}: {len(stats)} episodes in {time.time() - t0:.1f}s", file=sys.stderr, flush=True)
    print(f"Held-out {ecfg.split} tasks: {ecfg.tasks} per family x {len(ecfg.preferences)} preferences (vague) + 1 "
          f"precise each; seed {ecfg.seed}, max {ecfg.max_turns} turns; model agents: T = {ecfg.temperature:g}, "
          f"{ecfg.max_new_tokens} tokens per turn, batch {ecfg.batch}; simulator {args.sim_url or 'embedded rules'}\n")
    print(eval_markdown(reports, examples))
    if args.json:
        keep = ("device", "threads", "sim_url", "agent_base_url", "agent_workers", "agent_retries", "agent_timeout",
                "agent_max_tokens", "agent_temperature")
        config = {"eval": describe(ecfg), "agents": agents, **{k: getattr(args, k) for k in keep}}
        obj = reports_json(reports, config)
        for name, short in summaries.items():
            obj["agents"][name]["summary"] = short
        write_json(args.json, obj)
    if args.samples:
        write_lines(args.samples, records, "--samples")
    if args.plots:
        paths = plot_reports(reports, args.plots)
        print("plots: " + (", ".join(paths) if paths is not None else "skipped (matplotlib is not installed)"),
              file=sys.stderr)
    return 0


def write_json(path: str, obj: dict) -> None:
    write_lines(path, [obj], "--json", indent=2)


def write_lines(path: str, objs, flag: str, indent=None) -> None:
    """Each object as JSON (one a line unless ``indent``), replacing the file."""
    try:
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            for obj in objs:
                json.dump(obj, fh, indent=indent, ensure_ascii=False)
                fh.write("\n")
    except OSError as e:
        raise EvalError(f"{flag} {path}: cannot write ({e.strerror})") from None


def curves(argv) -> int:
    from ppp_min.evals.report import RunLogError, curves_markdown, load_run, plot_curves
    args = curves_parser().parse_args(argv)
    if args.bins < 1:
        raise EvalError(f"--bins must be >= 1, got {args.bins}")
    try:
        run = load_run(args.run_dir)
    except RunLogError as e:
        raise EvalError(str(e)) from None
    print(curves_markdown(run, args.bins))
    if args.plots:
        paths = plot_curves(run, args.plots)
        print("plots: " + (", ".join(paths) if paths is not None else "skipped (matplotlib is not installed)"),
              file=sys.stderr)
    return 0


def show(argv) -> int:
    from ppp_min.evals.show import ShowError, show_main
    try:
        return show_main(argv)
    except ShowError as e:
        raise EvalError(str(e)) from None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["curves"]:
            return curves(argv[1:])
        if argv[:1] == ["show"]:
            return show(argv[1:])
        return evaluate(build_parser().parse_args(argv))
    except EvalError as e:
        print(f"eval.py: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("eval.py: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("eval.py: interrupted", file=sys.stderr)
        return 130


class Terminated(KeyboardInterrupt):
    """SIGTERM: unwinds like Ctrl-C (the embedded simulator is stopped), exit 143."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.exit(main())
