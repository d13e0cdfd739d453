"""Read sample dialogues in a terminal: ``python eval.py show PATH`` (records from ``ppp_min.evals.samples``).

Contract
- ``render(rec, color=False) -> str``: one record as text: a header (phase, label, step, pick, group), the
  task (family, id, vague/precise, the preference and its text, the gold answer), the dialogue with the
  roles set apart (USER / AGENT / TOOL / ENV), every reply to a question labelled with its effort, cost
  and preference verdict, and the reward line (total, the three components, weights, advantage).
  ``color=True`` adds ANSI colours; ``use_color(stream)`` is True only for a TTY without ``$NO_COLOR``.
- ``show_main(argv) -> int``: the ``show`` subcommand. PATH is a samples JSONL (``-n``, ``--step N|last``,
  ``--phase``), a run directory holding ``samples.jsonl``, or an HF model directory: then ``-n`` episodes of
  that model's held-out evaluation are shown, sampled exactly as the evaluation samples them (the evaluation
  flags and defaults of eval.py and train.py, ``evaluation.EvalConfig``; ``evaluation.run_model`` with
  ``only``: the batches holding the shown episodes run whole, on the CPU by default, against the rules
  simulator in process). ``pick_specs`` chooses them: episode ``i`` is family ``i mod F``'s task
  ``i div F``, on its vague prompt with preference ``i mod P`` (``--pref``: that one) or, with ``--precise``,
  on its precise prompt (always with ``no_preference``, as evaluated). Bad input raises
  ``ShowError`` (one line; eval.py exits 2). Text the model sampled is shown with its control characters
  (an ESC would drive the terminal) replaced by U+FFFD.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from ppp_min.evals.samples import SampleError, read_samples
from ppp_min.rl.reward import DIMENSIONS
from ppp_min.userville.preferences import PREFERENCES

LABEL_W = 7
_ANSI = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35",
         "cyan": "36"}
ROLE = {"user": ("USER", "green"), "agent": ("AGENT", "cyan"), "tool": ("TOOL", "dim"), "env": ("ENV", "yellow")}
EFFORT_COLOR = {"low": "green", "medium": "yellow", "high": "red"}
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


class ShowError(ValueError):
    """A bad path, flag or file for ``eval.py show``: one line."""


def use_color(stream) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def _paint(text: str, style: str | None, color: bool) -> str:
    return f"\x1b[{_ANSI[style]}m{text}\x1b[0m" if color and style else text


def _clean(text: str) -> str:
    """Control characters a model may emit (an ESC would drive the terminal) shown as U+FFFD."""
    return _CONTROL.sub("\ufffd", text.replace("\t", "    "))


def _block(label: str, text: str, style: str | None, color: bool, suffix: str = "") -> list[str]:
    text = _clean(text or "").rstrip()
    lines = text.split("\n") if text.strip() else [_paint("(empty)", "dim", color)]
    out = [_paint(label.ljust(LABEL_W), style, color) + lines[0]]
    out += [" " * LABEL_W + ln for ln in lines[1:]]
    if suffix:
        out[-1] += "  " + suffix
    return out


def _verdict(v, color: bool) -> str:
    if v is None:
        return "no verdict"
    return _paint("preference followed", "green", color) if v else _paint("preference VIOLATED", "red", color)


def _labels(t: dict, color: bool) -> str:
    parts = [_paint(f"effort {t['effort']}", EFFORT_COLOR.get(t["effort"]), color), f"cost {t['cost']}",
             _verdict(t["pref_followed"], color)]
    if not t.get("parsed", True):
        parts.append("untagged reply")
    if not t.get("shown", True):
        parts.append("out of turns: not shown to the agent")
    return "[" + " · ".join(parts) + "]"


def _num(x, sign: bool = False) -> str:
    return "–" if x is None else (f"{x:+.3f}" if sign else f"{x:.3f}")


def reward_line(rec: dict, color: bool = False) -> str:
    r, w, st = rec["reward"], rec.get("weights"), rec["stats"]
    ws = "" if not w else " · weights " + "/".join(f"{w.get(d.weight, d.default):g}" for d in DIMENSIONS)
    adv = "" if rec.get("advantage") is None else f" · advantage {rec['advantage']:+.3f}"
    nq = len(st["questions"])
    facts = [f"{nq} question{'' if nq == 1 else 's'}", f"{st['n_turns']} turns",
             "answered" if st["answered"] else "no answer"] + (["truncated"] if rec.get("truncated") else [])
    head = _paint(f"reward {_num(r['total'])}", "bold", color)
    dims = " · ".join(f"{d.weight} {_num(r.get(d.name), i > 0)}" for i, d in enumerate(DIMENSIONS))
    return f"{head} = {dims}{ws}{adv}  ({', '.join(facts)})"


def render(rec: dict, color: bool = False) -> str:
    t = rec["task"]
    head = " · ".join(str(x) for x in (rec.get("phase"), rec.get("label"),
                                       None if rec.get("step") is None else f"step {rec['step']}",
                                       None if rec.get("group_id") is None else f"group {rec['group_id']}",
                                       rec.get("pick")) if x is not None)
    out = [_paint(f"=== {head} " + "=" * max(3, 76 - len(head)), "bold", color),
           f"task {t['family']} {t['id']} · {'vague' if t['vague'] else 'precise'} · preference {t['preference']}: "
           f"\"{t['preference_text']}\"",
           f"gold {', '.join(t['gold'])}"]
    out += _block(ROLE["user"][0], t["request"], ROLE["user"][1], color)
    for turn in rec["dialogue"]:
        label, style = ROLE.get(turn["role"], (turn["role"].upper(), None))
        suffix = _labels(turn, color) if turn.get("kind") == "reply" else ""
        out += _block(label, turn["text"], style, color, suffix)
    out.append(reward_line(rec, color))
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval.py show", description="Render sample dialogues: a samples.jsonl "
                                "written during training, a run directory holding one, or an HF model "
                                "directory (then a few held-out episodes are run with the rules simulator).")
    p.add_argument("path", metavar="PATH", help="samples.jsonl | run directory | HF model directory")
    p.add_argument("-n", type=int, default=4, help="how many dialogues (default 4)")
    p.add_argument("--step", default=None, help="samples file: only this RL/eval step (a number or 'last')")
    p.add_argument("--phase", default=None, help="samples file: only this phase (rl | eval) or eval label")
    p.add_argument("--pref", default=None, help="model dir: this preference (default: cycle through --prefs)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--vague", dest="vague", action="store_true", default=True,
                   help="model dir: vague prompts (default)")
    g.add_argument("--precise", dest="vague", action="store_false",
                   help="model dir: precise prompts (evaluated with no_preference)")
    p.add_argument("--device", default="cpu", help="model dir: cpu | cuda | auto (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="model dir: torch CPU threads (0 = torch's default)")
    from ppp_min.evals.evaluation import add_eval_flags
    add_eval_flags(p, "model dir: the evaluation to show episodes of (eval.py's and train.py's flags and defaults)")
    return p


def select(records: list[dict], n: int, step: str | None, phase: str | None) -> list[dict]:
    if phase is not None:
        records = [r for r in records if phase in (r.get("phase"), r.get("label"))]
    if step is not None and records:
        steps = [r.get("step") for r in records if r.get("step") is not None]
        if step == "last":
            want = max(steps) if steps else None
        else:
            try:
                want = int(step)
            except ValueError:
                raise ShowError(f"--step must be a number or 'last', got {step!r}") from None
        records = [r for r in records if r.get("step") == want]
    return records[:n]


def _from_file(path: str, args) -> list[dict]:
    try:
        recs = read_samples(path)
    except SampleError as e:
        raise ShowError(str(e)) from None
    picked = select(recs, args.n, args.step, args.phase)
    if not picked:
        phases = sorted({str(r.get("label") or r.get("phase")) for r in recs})
        raise ShowError(f"{path}: no sample matches (it holds {len(recs)}; phases/labels: {', '.join(phases) or '-'})")
    return picked


def pick_specs(specs, ecfg, n: int, pref: str | None, vague: bool) -> list[int]:
    """Indices into the evaluation grid ``specs`` of the episodes to show (see the module docstring)."""
    if pref is not None and pref not in ecfg.preferences:
        what = "is unknown" if pref not in PREFERENCES else "is not among the evaluated ones (--prefs)"
        raise ShowError(f"--pref {pref!r} {what}; use one of: {', '.join(ecfg.preferences)}")
    if not vague and pref not in (None, "no_preference"):
        raise ShowError("--precise: the evaluation runs precise prompts with no_preference only; drop --pref")
    index = {(s.task.task_id, s.preference, s.is_vague): i for i, s in enumerate(specs)}
    by_family = {f: list({s.task.task_id: s.task for s in specs if s.task.family == f}.values())
                 for f in ecfg.families}  # each family's tasks, in the grid's order
    fams, out = ecfg.families, []
    for i in range(n):
        task = by_family[fams[i % len(fams)]][(i // len(fams)) % ecfg.tasks]
        p = (pref or ecfg.preferences[i % len(ecfg.preferences)]) if vague else "no_preference"
        out.append(index[(task.task_id, p, vague)])
    return out


def _from_model(path: str, args) -> list[dict]:
    from ppp_min.evals.evaluation import eval_config_from_args, eval_specs, run_model
    try:
        ecfg = eval_config_from_args(args)
    except ValueError as e:
        raise ShowError(str(e)) from None
    if args.threads < 0:
        raise ShowError(f"--threads must be >= 0, got {args.threads}")
    specs = eval_specs(ecfg)
    picks = pick_specs(specs, ecfg, args.n, args.pref, args.vague)
    import torch

    from ppp_min.userville.agent_env import LocalUser
    from ppp_min.weights.hf_io import load_pretrained
    from ppp_min.rl.reward import ppp_reward
    from ppp_min.evals.samples import episode_record
    from ppp_min.lm.tokenizer import Tokenizer
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                              else args.device)
        model = load_pretrained(path, device=device, dtype=torch.float32)
        tok = Tokenizer.from_dir(path)
        episodes = run_model(model, tok, specs, LocalUser(), ecfg, only=picks)  # the rules simulator, in process
    except (ValueError, OSError, RuntimeError) as e:
        raise ShowError(f"{path}: {' '.join(str(e).split())}") from None
    label = os.path.basename(os.path.normpath(path))
    return [episode_record(e, specs[i].task, ppp_reward(e.stats), phase="show", label=label, pick="first")
            for e, i in zip(episodes, picks)]  # group id = the episode's index in the evaluation


def load_path(path: str, args) -> list[dict]:
    if os.path.isfile(path):
        return _from_file(path, args)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "tokenizer.json")):
            return _from_model(path, args)
        if os.path.isfile(os.path.join(path, "samples.jsonl")):
            return _from_file(os.path.join(path, "samples.jsonl"), args)
        raise ShowError(f"{path}: a directory with neither samples.jsonl nor an HF model (config.json + "
                        "tokenizer.json)")
    raise ShowError(f"{path}: no such file or directory; pass a samples.jsonl, a run directory or a model directory")


def show_main(argv) -> int:
    args = parser().parse_args(argv)
    if args.n < 1:
        raise ShowError(f"-n must be >= 1, got {args.n}")
    color = use_color(sys.stdout)
    try:
        texts = [render(r, color) for r in load_path(args.path, args)]
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ShowError(f"{args.path}: a sample record is malformed ({type(e).__name__}: {e})") from None
    print("\n\n".join(texts))
    return 0
