"""PPP evaluation CLI: paper-style tables for scripted baselines, trained checkpoints and API models.

    python eval.py                                   # the three scripted baselines (seconds on a CPU)
    python eval.py --agent runs/ppp/model --agent oracle --tasks 24 --plots plots/
    python eval.py --agent openai:gpt-4.1-mini --agent-base-url http://127.0.0.1:8000/v1 --tasks 10
    python eval.py curves runs/ppp [--plots DIR] [--bins N]   # training curves (paper Figs. 7-8)
    python eval.py show runs/ppp/samples.jsonl [-n N] [--step N|last] [--phase rl|eval|LABEL]  # dialogues
    python eval.py show runs/ppp/model [-n N] [--pref NAME] [--vague|--precise]  # run a model, show dialogues

Every agent runs on the same held-out (test split) tasks: each task's vague prompt once per preference
(Table 2 averages over preferences) and its precise prompt once with `no_preference` (reported apart:
the ask ratio should stay low there). Agents: `never_ask`, `lazy`, `oracle` (scripted baselines),
`skills` (the SFT demonstration policy), a directory (an HF model dir, e.g. train.py's OUT/model), or
`openai:MODEL` (any OpenAI-compatible chat endpoint; key from $OPENAI_API_KEY). The user simulator is
embedded (a local rules server, stopped on exit) unless --sim-url is given. Prints markdown tables to
stdout (Table 2 first), one progress line per agent to stderr. Exit 2: bad flags, bad model directory
or unreachable simulator; exit 1: the agent's endpoint failed (never replaced by a made-up turn).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

SCRIPTED = ("never_ask", "lazy", "oracle", "skills")
FAMILIES = ("funcloc", "research")


class EvalError(Exception):
    """A bad flag, directory or simulator: one line; exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval.py", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=110))
    g = p.add_argument_group("agents")
    g.add_argument("--agent", action="append", default=None, metavar="AGENT",
                   help="repeatable: never_ask | lazy | oracle | skills | MODEL_DIR | openai:MODEL "
                        "(default: never_ask, lazy, oracle)")
    g.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature of model and API agents (default 0 = greedy)")
    g.add_argument("--max-new-tokens", type=int, default=48, help="tokens per turn of a model agent (default 48)")
    g.add_argument("--batch", type=int, default=128,
                   help="episodes decoded together by a model agent (default 128: 1,008 episodes 21%% faster than 64 on 2 cores)")
    g.add_argument("--device", default="auto", help="model agents: auto | cpu | cuda | cuda:N (default auto)")
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
    g = p.add_argument_group("tasks")
    g.add_argument("--family", default="both", choices=["funcloc", "research", "both"],
                   help="task family (paper: SWE-Func-Loc / BrowseComp-Plus; default both)")
    g.add_argument("--tasks", type=int, default=100,
                   help="held-out test tasks per family (default 100, as the paper's BC+ N=100)")
    g.add_argument("--prefs", default="all",
                   help="preferences of the vague prompts: all | seen | unseen | comma-separated names "
                        "(default all = the paper's 20)")
    g.add_argument("--seed", type=int, default=0, help="seeds the tasks, the skills agent and sampling (default 0)")
    g.add_argument("--max-turns", type=int, default=6, help="agent turns per episode (default 6)")
    g = p.add_argument_group("simulator and output")
    g.add_argument("--sim-url", default=None,
                   help="user simulator URL(s), comma-separated (default: start an embedded rules simulator)")
    g.add_argument("--json", default=None, metavar="PATH", help="also write every figure as JSON to PATH")
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


def parse_prefs(spec: str) -> tuple[str, ...]:
    from ppp_min.run_config import parse_prefs as parse  # the one reader of --prefs, shared with train.py
    try:
        return parse(spec)
    except ValueError as e:
        raise EvalError(str(e)) from None


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


def validate(args) -> None:
    for name in ("tasks", "max_turns", "max_new_tokens", "batch", "agent_workers", "agent_max_tokens"):
        if getattr(args, name) < 1:
            raise EvalError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.agent_retries < 0 or not args.agent_timeout > 0:
        raise EvalError("--agent-retries must be >= 0 and --agent-timeout > 0")
    if not (args.temperature >= 0 and args.temperature < float("inf")):
        raise EvalError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.json and os.path.isdir(args.json):
        raise EvalError(f"--json {args.json} is a directory; give a file path")


class KeepStates:
    """Wraps a text policy and remembers the episode states it plays, so the report's example dialogue
    is one of the measured episodes (no extra call to an API agent)."""

    def __init__(self, policy):
        self.policy, self.states = policy, {}

    def __call__(self, st):
        self.states[id(st)] = st
        return self.policy(st)

    def example(self, spec) -> dict:
        from ppp_min.reward import ppp_reward
        from ppp_min.samples import dialogue_record
        st = next(st for st in self.states.values() if st.task is spec.task and
                  st.preference == spec.preference and st.is_vague == spec.is_vague)
        return dialogue_record(st.task, st.preference, st.is_vague, st.messages, st.stats(),
                               ppp_reward(st.stats()), phase="eval", label="example", pick="first")


def run_agent(name: str, specs, client, args) -> tuple[list, dict]:
    """One episode per spec for one agent: ``EpisodeStats`` in spec order, and the first spec's episode
    as a sample record (the report's example dialogue)."""
    from ppp_min.evaluation import run_model, run_policy
    if name in SCRIPTED:
        from ppp_min.sft import ScriptedAgent
        policy = KeepStates(ScriptedAgent(name, args.seed))
        return run_policy(policy, specs, client, args.max_turns), policy.example(specs[0])
    if name.startswith("openai:"):
        from ppp_min.api_agent import APIAgent, run_api_policy
        agent = APIAgent(args.agent_base_url, name[len("openai:"):], temperature=args.temperature,
                         timeout=args.agent_timeout, retries=args.agent_retries,
                         max_tokens=args.agent_max_tokens)
        policy = KeepStates(agent)
        return run_api_policy(policy, specs, client, args.max_turns, args.agent_workers), policy.example(specs[0])
    import torch
    from ppp_min.model import load_pretrained
    from ppp_min.reward import ppp_reward
    from ppp_min.rollout import RolloutConfig
    from ppp_min.samples import episode_record
    from ppp_min.tokenizer import Tokenizer
    from ppp_min.train_loop import TrainError, pick_device
    try:
        device = pick_device(args.device)
        model, tok = load_pretrained(name, device=device, dtype=torch.float32), Tokenizer.from_dir(name)
    except (TrainError, ValueError, OSError) as e:
        raise EvalError(f"--agent {name}: {' '.join(str(e).split())}") from None
    cfg = RolloutConfig(group_size=1, max_turns=args.max_turns, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature)

    def progress(done, total, secs):
        print(f"[eval] {name}: {done}/{total} episodes ({secs:.0f}s)", file=sys.stderr, flush=True)
    try:
        eps = run_model(model, tok, specs, client, cfg, seed=args.seed, batch=args.batch, progress=progress,
                        episodes=True)
    except ValueError as e:  # e.g. a prompt that does not fit the model's context
        raise EvalError(f"--agent {name}: {e}") from None
    example = episode_record(eps[0], specs[0].task, ppp_reward(eps[0].stats), phase="eval", label="example",
                             pick="first")
    return [e.stats for e in eps], example


def evaluate(args) -> int:
    from contextlib import ExitStack

    from ppp_min.api_agent import AgentError
    from ppp_min.evaluation import eval_items
    from ppp_min.report import build_report, eval_markdown, plot_reports, reports_json
    from ppp_min.show import render
    from ppp_min.userville.client import SimulatorClient, SimulatorError, start_local_simulator
    from ppp_min.userville.tasks import make_tasks

    validate(args)
    agents = check_agents(args)
    prefs = parse_prefs(args.prefs)
    families = FAMILIES if args.family == "both" else (args.family,)
    tasks = [t for f in families for t in make_tasks(f, "test", args.tasks, args.seed)]
    # Vague prompts x preferences (Table 2), plus each task's precise prompt once (Fig. 6).
    specs = eval_items(tasks, prefs) + eval_items(tasks, ("no_preference",), vague=False)
    reports, examples = [], {}
    with ExitStack() as stack:
        try:
            if args.sim_url:
                client = stack.enter_context(SimulatorClient(args.sim_url))
                client.health()
            else:
                local = stack.enter_context(start_local_simulator())
                client = stack.enter_context(SimulatorClient(local.url))
        except (SimulatorError, ValueError) as e:
            raise EvalError(f"simulator: {e}") from None
        for name in agents:
            t0 = time.time()
            try:
                stats, example = run_agent(name, specs, client, args)
            except SimulatorError as e:
                raise EvalError(f"simulator failed while evaluating {name}: {e}") from None
            except AgentError as e:
                print(f"eval.py: error: {e}", file=sys.stderr)
                return 1
            reports.append(build_report(name, stats))
            examples[name] = render(example)
            print(f"[eval] {name}: {len(stats)} episodes in {time.time() - t0:.1f}s", file=sys.stderr, flush=True)
    print(f"Held-out test tasks: {args.tasks} per family x {len(prefs)} preferences (vague) + 1 precise each; "
          f"seed {args.seed}, max {args.max_turns} turns, simulator {args.sim_url or 'embedded rules'}\n")
    print(eval_markdown(reports, examples))
    config = {k: v for k, v in vars(args).items() if k not in ("agent",)} | {"agents": agents,
                                                                            "preferences": list(prefs)}
    if args.json:
        write_json(args.json, reports_json(reports, config))
    if args.plots:
        paths = plot_reports(reports, args.plots)
        print("plots: " + (", ".join(paths) if paths is not None else "skipped (matplotlib is not installed)"),
              file=sys.stderr)
    return 0


def write_json(path: str, obj: dict) -> None:
    try:
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(path, "w") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
    except OSError as e:
        raise EvalError(f"--json {path}: cannot write ({e.strerror})") from None


def curves(argv) -> int:
    from ppp_min.report import RunLogError, curves_markdown, load_run, plot_curves
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
    from ppp_min.show import ShowError, show_main
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
    except KeyboardInterrupt:
        print("eval.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
