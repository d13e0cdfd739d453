"""Seed-sweep results: one seed's figures, the criteria grammar, mean ± std, and the sweep.md / sweep.json report.

Contract (the runner and the CLI are ``sweep.py``; the grammar is documented there)
- ``SeedResult.from_summary(seed, train.py's final JSON)``; ``figures()`` -> flat ``sft.KEY`` / ``final.KEY`` /
  ``delta.KEY`` / ``wall_s`` figures. ``load_result(seed_dir, seed)`` reads a finished seed from disk.
- ``parse_criterion(text) -> Criterion`` (one regex, never eval); ``judge(criterion, results, mean, std)``.
- ``aggregate(results) -> (mean, std)`` (sample std over seeds); ``build_report`` / ``render_md``.
- Errors are ``SweepError`` (one line).
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path

DIMS = ("productivity", "proactivity", "personalization")


SKILLS = ("skill/request_copy", "skill/answer_use", "skill/low_effort_value", "skill/question_compliance")


KEYS = DIMS + ("personalization_seen", "personalization_unseen", "ask_ratio", "ask_ratio_precise", "answer_rate",
               "questions_low", "questions_medium", "questions_high", "questions_mh") + SKILLS


_EXPR = re.compile(r"^(?:(mean|std)\.)?(sft|final|delta|wall_s)(?:\.([\w/]+))?\s*(>=|<=|==|>|<)\s*"
                   r"([-+]?(?:\d+\.?\d*|\.\d+))$")


_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


class SweepError(ValueError):
    """Bad usage, one line (exit 2)."""


@dataclass(frozen=True)
class SeedResult:
    """One finished seed: the held-out metrics of its SFT and final models (train.py's final JSON line)."""
    seed: int
    sft: dict
    final: dict
    wall_s: float

    @classmethod
    def from_summary(cls, seed: int, summary: dict) -> "SeedResult":
        return cls(seed, dict(summary.get("sft") or {}), dict(summary.get("final") or {}),
                   float(summary.get("wall_s") or 0.0))

    def figures(self) -> dict[str, float | None]:
        """Flat ``stage.key`` figures (sft / final / delta) and ``wall_s``: what criteria and means read."""
        out: dict[str, float | None] = {"wall_s": self.wall_s}
        for stage, m in (("sft", self.sft), ("final", self.final)):
            for k in KEYS:
                v = m.get(k)
                if k == "questions_mh":
                    lo, hi = m.get("questions_medium"), m.get("questions_high")
                    v = None if lo is None or hi is None else lo + hi
                out[f"{stage}.{k}"] = None if v is None else float(v)
        for k in KEYS:
            a, b = out[f"sft.{k}"], out[f"final.{k}"]
            out[f"delta.{k}"] = None if a is None or b is None else b - a
        return out


@dataclass(frozen=True)
class Criterion:
    text: str
    agg: str  # "every" | "mean" | "std"
    names: tuple[str, ...]  # the figures it tests, e.g. ("delta.productivity", ...)
    op: str
    value: float


def parse_criterion(text: str) -> Criterion:
    m = _EXPR.match(text.strip())
    if not m:
        raise SweepError(f"--require {text!r}: expected [mean.|std.]STAGE[.KEY] OP NUMBER with STAGE sft|final|"
                         "delta|wall_s and OP >=|<=|>|<|==, e.g. 'delta>=3' or 'mean.final.ask_ratio<=30'")
    agg, stage, key, op, num = m.groups()
    if stage == "wall_s" and key:
        raise SweepError(f"--require {text!r}: wall_s takes no .KEY")
    if key and key not in KEYS:
        raise SweepError(f"--require {text!r}: unknown key {key!r} (known: {', '.join(KEYS)})")
    names = ("wall_s",) if stage == "wall_s" else tuple(f"{stage}.{k}" for k in ((key,) if key else DIMS))
    return Criterion(text.strip(), agg or "every", names, op, float(num))


def aggregate(results: list[SeedResult]) -> tuple[dict, dict]:
    """Mean and sample standard deviation (n - 1) over seeds of every figure; None where undefined."""
    figs = [r.figures() for r in results]
    mean, std = {}, {}
    for name in (figs[0] if figs else {}):
        vals = [f[name] for f in figs if f[name] is not None]
        mean[name] = sum(vals) / len(vals) if vals else None
        std[name] = (math.sqrt(sum((v - mean[name]) ** 2 for v in vals) / (len(vals) - 1))
                     if len(vals) >= 2 else None)
    return mean, std


def judge(c: Criterion, results: list[SeedResult], mean: dict, std: dict) -> tuple[bool, str]:
    """(passed, what was seen): over every finished seed, or on their mean / std."""
    if not results:
        return False, "no finished seed"
    seen, bad = [], []
    for name in c.names:
        rows = ([(f"{c.agg}.{name}", (mean if c.agg == "mean" else std).get(name))] if c.agg != "every" else
                [(f"seed {r.seed}: {name}", r.figures()[name]) for r in results])
        for label, v in rows:
            ok = v is not None and _OPS[c.op](v, c.value)
            (seen if ok else bad).append(f"{label} = {fmt_num(v)}")
    return not bad, "; ".join(bad or (seen if len(seen) <= 6 else [f"all {len(seen)} values pass"]))


def fmt_num(v, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _lines(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return []


def last_line(path: Path) -> str:
    return (_lines(path) or ["(empty or no log)"])[-1][-300:]


def summary_in(path: Path, check) -> dict | None:
    """The last line of a JSON-lines file that parses as a dict, if it passes ``check``, else None."""
    for ln in reversed(_lines(path)):
        try:
            rec = json.loads(ln)
        except ValueError:
            continue
        if isinstance(rec, dict):
            return rec if check(rec) else None
    return None


def load_result(seed_dir: Path, seed: int) -> SeedResult | None:
    """A finished seed's result: result.json, or metrics.jsonl ending with the summary (then saved as result.json)."""
    try:
        return SeedResult.from_summary(seed, json.loads((seed_dir / "result.json").read_text()))
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    rec = summary_in(seed_dir / "metrics.jsonl", lambda r: r.get("phase") == "summary")
    if rec is None:
        return None
    summary = {k: v for k, v in rec.items() if k != "phase"}
    write_file(seed_dir / "result.json", json.dumps(summary) + "\n")
    return SeedResult.from_summary(seed, summary)


def write_file(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cells(f: dict, g=None) -> dict[str, str]:
    """The table cells of one seed's figures ``f`` (with ``g`` the std beside each mean)."""
    def v(name, spec=".1f", signed=False):
        if f.get(name) is None:
            return "n/a"
        s = format(f[name], ("+" if signed else "") + spec).replace("-", "−")
        return s + (f" ± {format(g[name], spec)}" if g and g.get(name) is not None else "")

    def three(stage, signed=False):
        return " / ".join(v(f"{stage}.{k}", signed=signed) for k in DIMS)

    def ask(stage):
        return f"{v(f'{stage}.ask_ratio', '.0f')} / {v(f'{stage}.ask_ratio_precise', '.0f')}"
    return {"wall": f"{v('wall_s', ',.0f')} s", "sft": three("sft"), "final": three("final"),
            "delta": three("delta", True), "ask": f"{ask('sft')} → {ask('final')}",
            "mh": f"{v('sft.questions_mh', '.2f')} → {v('final.questions_mh', '.2f')}",
            **{k: v(f"sft.{k}") for k in SKILLS}}


def render_md(report: dict) -> str:
    rows = [(str(s["seed"]), _cells(s["figures"])) for s in report["seeds"] if s["status"] == "ok"]
    if len(rows) > 1:
        rows.append(("mean ± std", _cells(report["mean"], report["std"])))
    lines = ["# Seed sweep", "", f"`{report['command']}`", "",
             f"{report['n_finished']} of {len(report['seeds'])} seeds finished. Held-out metrics ×100, written "
             "productivity / proactivity / personalization; std is the sample std over seeds.", "",
             "| seed | wall | SFT | final | final − SFT | ask vague / precise (SFT → final) "
             "| medium + high questions per vague episode (SFT → final) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {s} | {c['wall']} | {c['sft']} | {c['final']} | {c['delta']} | {c['ask']} | {c['mh']} |"
              for s, c in rows]
    lines += ["", "Skills of the SFT model (×100):", "",
              "| seed | request copy | answer use | value of a low-effort question | question compliance |",
              "|---|---|---|---|---|"]
    lines += [f"| {s} | " + " | ".join(c[k] for k in SKILLS) + " |" for s, c in rows]
    problems = [f"- seed {s['seed']}: {s['status']}" + (f" ({s['error']})" if s.get("error") else "")
                for s in report["seeds"] if s["status"] != "ok"]
    if problems:
        lines += ["", "Not finished:", "", *problems]
    if report["criteria"]:
        lines += ["", "Criteria:", ""]
        lines += [f"- `{c['expr']}`: **{'pass' if c['pass'] else 'FAIL'}** ({c['detail']})" for c in report["criteria"]]
    return "\n".join(lines) + "\n"


def build_report(out: Path, command: str, flags: list[str], seeds, failed: dict[int, str], criteria) -> dict:
    results, seed_rows = [], []
    for s in seeds:
        r, log = load_result(out / f"seed_{s}", s), out / f"seed_{s}" / "train.log"
        status = "ok" if r else "failed" if s in failed else "not finished" if log.exists() else "not run"
        error = failed.get(s) or (f"last log line: {last_line(log)}" if status == "not finished" else None)
        seed_rows.append({"seed": s, "status": status, "error": error, "figures": r.figures() if r else None})
        results += [r] if r else []
    mean, std = aggregate(results)
    verdicts = [dict(zip(("pass", "detail"), judge(c, results, mean, std)), expr=c.text) for c in criteria]
    return {"command": command, "flags": flags, "seeds": seed_rows, "n_finished": len(results),
            "mean": mean, "std": std, "criteria": verdicts, "pass": all(v["pass"] for v in verdicts)}
