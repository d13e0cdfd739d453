"""Paper-style reports: held-out evaluations (Table 2 and friends) and training curves (Figs. 7-8).

Contract
- ``build_report(agent, stats) -> AgentReport`` (frozen): the paper's metrics (x100; docs/design.md#metrics)
  of one agent's ``EpisodeStats`` over vague prompts (averaged over preferences) per family, ``avg``
  = the mean of the six Table 2 cells (of those defined when a family or a metric is missing; None if
  none is), ask ratio and productivity on vague vs precise prompts, questions per vague episode by effort,
  personalization per preference, and the three metrics on seen vs unseen preferences.
- ``eval_markdown(reports, examples=None) -> str``: Table 2 (one row per agent) then the extra tables, as
  markdown, then one example dialogue per agent (``examples``: agent -> plain text, e.g. ``show.render``);
  ``reports_json(reports, config) -> dict``; ``plot_reports(reports, out_dir) -> list[str] | None``
  (bar charts; None when matplotlib is not importable).
- ``load_run(run_dir) -> RunLog`` reads ``RUN_DIR/metrics.jsonl`` (records with ``"phase": "rl"`` and
  ``"eval"``; other phases are skipped); ``RunLogError`` (one line) when it is missing or malformed.
  ``curves_markdown(run, bins)``: Fig. 7 (questions per episode by effort over training, binned by step)
  and Fig. 8 (personalization on the unseen preferences at each evaluation); ``plot_curves(run, out_dir)``.

A metric with no episode to average is None and prints as "–" (never NaN, never a silent 0).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from ppp_min.rl.reward import ppp_reward, summarize
from ppp_min.userville.families.registry import FAMILIES
from ppp_min.userville.preferences import PREFERENCES, SEEN, UNSEEN
from ppp_min.userville.protocol import EFFORTS
from ppp_min.userville.skills import summarize_skills

DIMS = ("productivity", "proactivity", "personalization")
SHORT = {"productivity": "Prod", "proactivity": "Proact", "personalization": "Pers"}  # Table 2 headers


@dataclass(frozen=True)
class Dims:
    """The paper's three metrics (x100); None where undefined."""
    productivity: float | None
    proactivity: float | None
    personalization: float | None


@dataclass(frozen=True)
class VaguePrecise:
    """Paper Fig. 6: the agent should ask on vague prompts and not on precise ones (x100)."""
    ask_vague: float | None
    ask_precise: float | None
    productivity_vague: float | None
    productivity_precise: float | None


@dataclass(frozen=True)
class AgentReport:
    agent: str
    families: dict[str, Dims]  # family -> Table 2 cells (vague prompts, averaged over preferences)
    avg: float | None  # mean of the six cells (paper Table 2 "Avg")
    vague_precise: dict[str, VaguePrecise]  # family -> ask ratio / productivity by prompt kind
    questions: dict[str, dict[str, float | None]]  # family -> effort (low|medium|high|total) -> per episode
    per_preference: dict[str, float | None]  # personalization on vague prompts, both families pooled
    seen: Dims  # vague prompts with a training (seen) preference
    unseen: Dims  # vague prompts with a held-out (unseen) preference
    skills: dict[str, float | int | None]  # skills.summarize_skills: request copy, answer use, ... (vague)
    n_episodes: int


SKILLS = (("skill/request_copy", "request copy"), ("skill/answer_use", "answer use"),
          ("skill/low_effort_value", "value of a low-effort question"),
          ("skill/question_compliance", "question compliance"))


def _summary(stats) -> dict:
    return summarize([ppp_reward(s) for s in stats], stats) if stats else {}


def _dims(m: dict) -> Dims:
    return Dims(*(m.get(k) for k in DIMS))


def build_report(agent: str, stats) -> AgentReport:
    stats = list(stats)
    vague = [s for s in stats if s.is_vague]
    fams = [f for f in FAMILIES if any(s.family == f for s in stats)]
    families, vp, questions = {}, {}, {}
    for f in fams:
        mv = _summary([s for s in vague if s.family == f])
        mp = _summary([s for s in stats if s.family == f and not s.is_vague])
        families[f] = _dims(mv)
        vp[f] = VaguePrecise(mv.get("ask_ratio"), mp.get("ask_ratio"), mv.get("productivity"),
                             mp.get("productivity"))
        questions[f] = {e: mv.get(f"questions_{e}") for e in EFFORTS}
        questions[f]["total"] = mv.get("questions_per_episode")
    cells = [getattr(d, k) for d in families.values() for k in DIMS]
    cells = [c for c in cells if c is not None]
    avg = sum(cells) / len(cells) if cells else None  # Table 2: Avg = mean of the six numbers
    mall = _summary(vague)
    prefs = [p for p in PREFERENCES if any(s.preference == p for s in vague)]
    return AgentReport(
        agent=agent, families=families, avg=avg, vague_precise=vp, questions=questions,
        per_preference={p: mall.get(f"personalization/{p}") for p in prefs},
        seen=_dims(_summary([s for s in vague if s.preference in SEEN])),
        unseen=_dims(_summary([s for s in vague if s.preference in UNSEEN])),
        skills=summarize_skills(vague), n_episodes=len(stats))


# ---------------------------------------------------------------------------------------------- text
def _f(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(r: AgentReport, fam: str, key: str):
    d = r.families.get(fam)
    return None if d is None else getattr(d, key)


def eval_markdown(reports: list[AgentReport], examples: dict[str, str] | None = None) -> str:
    short = SHORT
    out = ["### Main results (paper Table 2): vague prompts, averaged over preferences (x100)", "",
           markdown_table(["Agent", "Avg"] + [f"{f} {short[k]}" for f in FAMILIES for k in DIMS],
                          [[r.agent, _f(r.avg)] + [_f(_cell(r, f, k)) for f in FAMILIES for k in DIMS]
                           for r in reports])]
    out += ["", "### Vague vs precise prompts (paper Fig. 6): ask ratio and productivity (x100)", "",
            markdown_table(["Agent"] + [f"{f} {c}" for f in FAMILIES for c in
                                        ("ask vague", "ask precise", "Prod vague", "Prod precise")],
                           [[r.agent] + [_f(getattr(r.vague_precise[f], a)) if f in r.vague_precise else "–"
                                         for f in FAMILIES for a in ("ask_vague", "ask_precise",
                                                                     "productivity_vague",
                                                                     "productivity_precise")]
                            for r in reports])]
    out += ["", "### Questions per episode by effort level (paper Fig. 7), vague prompts", "",
            markdown_table(["Agent"] + [f"{f} {e}" for f in FAMILIES for e in EFFORTS + ("total",)],
                           [[r.agent] + [_f(r.questions[f][e]) if f in r.questions else "–"
                                         for f in FAMILIES for e in EFFORTS + ("total",)] for r in reports])]
    prefs = [p for p in PREFERENCES if any(p in r.per_preference for r in reports)]
    out += ["", "### Personalization per preference (x100; – = the agent never asked and was never penalised)",
            "", markdown_table(["Preference", "split"] + [r.agent for r in reports],
                               [[p, PREFERENCES[p].split] + [_f(r.per_preference.get(p)) for r in reports]
                                for p in prefs])]
    out += ["", "### Seen vs unseen preferences (x100), vague prompts", "",
            markdown_table(["Agent"] + [f"{s} {short[k]}" for s in ("seen", "unseen") for k in DIMS],
                           [[r.agent] + [_f(getattr(getattr(r, s), k)) for s in ("seen", "unseen") for k in DIMS]
                            for r in reports])]
    out += ["", "### Skills, vague prompts (x100; docs/design.md#skill-metrics)", "",
            markdown_table(["Agent"] + [name for _, name in SKILLS],
                           [[r.agent] + [_f(r.skills.get(k)) for k, _ in SKILLS] for r in reports])]
    if examples:  # plain text in a fenced block: markdown would eat the <ask>/<answer> tags otherwise
        out += ["", "### Example dialogue per agent (the first held-out vague item)"]
        for name, text in examples.items():
            out += ["", f"#### {name}", "", "```text", text.replace("```", "'''"), "```"]
    return "\n".join(out) + "\n"


def reports_json(reports: list[AgentReport], config: dict) -> dict:
    agents = {}
    for r in reports:
        d = asdict(r)
        agents[r.agent] = {**d.pop("families"), **{k: v for k, v in d.items() if k != "agent"}}
    return {"config": config, "agents": agents}


# --------------------------------------------------------------------------------------------- plots
def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _bars(plt, path: str, groups: list[str], series: dict[str, list], title: str, ylabel: str) -> str:
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 2.0 + 0.6 * len(groups))), 4.5))
    width = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [float("nan") if v is None else v for v in vals], width, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_reports(reports: list[AgentReport], out_dir: str) -> list[str] | None:
    plt = _pyplot()
    if plt is None:
        return None
    os.makedirs(out_dir, exist_ok=True)
    cols = [(f, k) for f in FAMILIES for k in DIMS]
    prefs = [p for p in PREFERENCES if any(p in r.per_preference for r in reports)]
    efforts = [(f, e) for f in FAMILIES for e in EFFORTS]
    return [
        _bars(plt, os.path.join(out_dir, "table2.png"), ["Avg"] + [f"{f} {SHORT[k]}" for f, k in cols],
              {r.agent: [r.avg] + [_cell(r, f, k) for f, k in cols] for r in reports},
              "Vague prompts, averaged over preferences", "x100"),
        _bars(plt, os.path.join(out_dir, "personalization.png"), prefs,
              {r.agent: [r.per_preference.get(p) for p in prefs] for r in reports},
              "Personalization per preference", "x100"),
        _bars(plt, os.path.join(out_dir, "questions.png"), [f"{f} {e}" for f, e in efforts],
              {r.agent: [r.questions[f][e] if f in r.questions else None for f, e in efforts] for r in reports},
              "Questions per episode by effort (vague prompts)", "questions / episode"),
    ]


# ------------------------------------------------------------------------------------ training curves
class RunLogError(ValueError):
    """RUN_DIR/metrics.jsonl is missing, unreadable or malformed; the message says which line."""


@dataclass(frozen=True)
class RLPoint:
    step: int
    questions: dict[str, float]  # effort -> questions per episode in this step's rollouts
    ask_ratio: float
    reward: float


@dataclass(frozen=True)
class EvalPoint:
    label: str
    personalization: dict[str, float | None]  # preference -> held-out personalization (x100)
    seen: float | None
    unseen: float | None


@dataclass(frozen=True)
class RunLog:
    rl: tuple[RLPoint, ...]
    evals: tuple[EvalPoint, ...]


def load_run(run_dir: str) -> RunLog:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise RunLogError(f"{path} not found: pass the --out directory of a train.py run")
    rl, evals = [], []
    try:
        with open(path, encoding="utf-8") as fh:
            lines = list(fh)
    except (OSError, UnicodeDecodeError) as e:
        raise RunLogError(f"{path}: cannot read it as UTF-8 JSON lines ({type(e).__name__})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if rec.get("phase") == "rl":
                rl.append(RLPoint(int(rec["step"]), {e: float(rec[f"questions_{e}"]) for e in EFFORTS},
                                  float(rec["ask_ratio"]), float(rec["reward"])))
            elif rec.get("phase") == "eval":
                pers = {k.split("/", 1)[1]: v for k, v in rec.items() if k.startswith("personalization/")}
                evals.append(EvalPoint(str(rec.get("label", f"eval {len(evals) + 1}")), pers,
                                       rec.get("personalization_seen"), rec.get("personalization_unseen")))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise RunLogError(f"{path}:{n}: not a metrics record ({type(e).__name__}: {e})") from None
    if not rl and not evals:
        raise RunLogError(f"{path} has no 'rl' or 'eval' records yet")
    return RunLog(tuple(rl), tuple(evals))


def bin_rl(points, bins: int) -> list[tuple[int, int, dict[str, float]]]:
    """Split the RL steps into ``bins`` consecutive groups of (nearly) equal size; mean of each figure."""
    points = list(points)
    bins = max(1, min(bins, len(points)))
    out = []
    for b in range(bins):
        chunk = points[b * len(points) // bins:(b + 1) * len(points) // bins]
        mean = {e: sum(p.questions[e] for p in chunk) / len(chunk) for e in EFFORTS}
        mean["total"] = sum(mean[e] for e in EFFORTS)
        mean["ask_ratio"] = sum(p.ask_ratio for p in chunk) / len(chunk)
        mean["reward"] = sum(p.reward for p in chunk) / len(chunk)
        out.append((chunk[0].step, chunk[-1].step, mean))
    return out


def curves_markdown(run: RunLog, bins: int = 10) -> str:
    out = ["### Questions per episode by effort level over training (paper Fig. 7), training rollouts", ""]
    if run.rl:
        out.append(markdown_table(["steps"] + list(EFFORTS) + ["total", "ask ratio", "reward"],
                                  [[f"{a}-{b}" if a != b else str(a)] + [f"{m[k]:.3f}" for k in
                                   EFFORTS + ("total", "ask_ratio", "reward")] for a, b, m in bin_rl(run.rl, bins)]))
    else:
        out.append("(no RL steps logged)")
    out += ["", "### Personalization on the unseen preferences at each evaluation (paper Fig. 8, x100)", ""]
    if run.evals:
        rows = [[p] + [_f(e.personalization.get(p)) for e in run.evals] for p in UNSEEN]
        rows += [["unseen (all)"] + [_f(e.unseen) for e in run.evals],
                 ["seen (all)"] + [_f(e.seen) for e in run.evals]]
        out.append(markdown_table(["Preference"] + [e.label for e in run.evals], rows))
    else:
        out.append("(no evaluations logged)")
    return "\n".join(out) + "\n"


def plot_curves(run: RunLog, out_dir: str) -> list[str] | None:
    plt = _pyplot()
    if plt is None:
        return None
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    if run.rl:
        fig, ax = plt.subplots(figsize=(6.5, 4.0))
        steps = [p.step for p in run.rl]
        for e in EFFORTS:
            ax.plot(steps, [p.questions[e] for p in run.rl], label=e)
        ax.plot(steps, [sum(p.questions.values()) for p in run.rl], label="total", color="black")
        ax.set_xlabel("RL step")
        ax.set_ylabel("questions / episode")
        ax.set_title("Questions per episode by effort (Fig. 7)")
        ax.legend()
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "fig7_questions.png"))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    if run.evals:
        paths.append(_bars(plt, os.path.join(out_dir, "fig8_unseen_personalization.png"), list(UNSEEN),
                           {e.label: [e.personalization.get(p) for p in UNSEEN] for e in run.evals},
                           "Personalization on unseen preferences (Fig. 8)", "x100"))
    return paths
