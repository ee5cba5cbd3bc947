"""The morning-after report of one search: figures and a single self-contained HTML page.

`write_report(search)` writes into `runs/NAME/report/`:

    progress.png   the score of every trial, the best-so-far line, improvements labelled
    lineage.png    the lineage tree, coloured by score, the path to the best in red

Every change between two scores is shown as a gain: positive means better, whether the
metric is minimised (val_bpb) or maximised.
    report.html    summary, both figures, an interactive lineage, the best-lineage walk with
                   diffs, yield by operator and proposer, and a sortable table of trials

The page needs nothing but itself (no network: images are embedded, script inline), so
it can be mailed or opened from a laptop. Only the report folder is written: the store
and the population repository are read, never changed.

>>> files = write_report(Search.open("demo"))     # doctest: +SKIP
>>> files.html                                     # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from analysis import _html
from analysis._html import esc, num
from analysis.front import plot_front
from analysis.noise import NoiseFloor, noise_floor, within_noise
from analysis.summary import trust_line
from analysis.promotion import RungRow, describe_rho, rung_rows
from analysis.progress import (Progress, children, device_seconds, failure_rate, is_failure, keep_rate, plot_progress,
                               progress)
from analysis.tree import TreeView, lineage_svg, plot_lineage, tree_view
from analysis.walk import Step, best_lineage
from analysis.ideas import IdeaRow, notebook_rows, weights_over_time
from analysis.yields import Yield, gains, yield_by
from population.lineage import MIN_GAIN_ATTR, MINIMIZE, NOISE_MULTIPLE, Lineage, finish_order, gain, min_gain_of
from population.store import IMPORTED_ATTR, TrialRecord, TrialStatus


@dataclass(frozen=True)
class ReportFiles:
    """Where a report was written."""

    folder: Path
    html: Path
    progress: Path
    lineage: Path
    front: Path | None = None     # several objectives: the Pareto front (analysis.front)


@dataclass
class SearchFacts:
    """The numbers at the top of a report, computed once from the store."""

    name: str
    profile: str
    budget: float
    data: str
    created: str
    strategies: dict[str, int]
    proposers: dict[str, int]
    counts: dict[str, int]
    finished: int
    best: int | None
    best_score: float | None
    best_spread: float | None
    best_evaluations: int
    best_description: str
    seed_score: float | None
    keep_rate: float | None
    failure_rate: float | None
    children: int
    device_hours: float
    first_start: dt.datetime | None
    last_finish: dt.datetime | None
    spend_usd: float
    noise: NoiseFloor | None
    imported: dict | None
    within_noise: tuple[int, ...] = ()   # new bests that beat the best before them by less than the floor allows
    min_gain: float | None = None        # the min gain the search last applied (None: a search from before it)
    trust: str = ""              # how trials ran and who scored them (analysis.summary.trust_line)
    untrusted: bool = False      # no sandbox, or scores the genomes reported themselves
    flagged: int = 0             # trials whose code reaches past its model
    metric: str = "val_bpb"
    direction: str = MINIMIZE
    rungs: tuple[RungRow, ...] = ()   # a search that promotes genomes: each rung, and how it predicted the next

    @property
    def gain(self) -> float | None:
        """How much better the best is than the seed (positive: better)."""
        if self.best_score is None or self.seed_score is None:
            return None
        return gain(self.seed_score, self.best_score, self.direction)

    def headline(self) -> str:
        """One sentence: where the search got to and at what cost."""
        if self.best is None:
            return f"No successful trial yet ({self.finished} finished)."
        text = f"Best {self.metric} {self.best_score:.4f} (trial #{self.best}: {self.best_description or '-'})"
        if self.gain is not None and self.seed_score and self.best_score != self.seed_score:
            text += (f", {self.gain:.4f} ({100 * self.gain / abs(self.seed_score):.2f}%) better than the seed's "
                     f"{self.seed_score:.4f}")
        text += f", after {self.finished} trials and {self.device_hours:.2f} device-hours"
        if self.keep_rate is not None:
            kept = round(self.keep_rate * self.children)
            text += f"; {kept} of {self.children} children improved the best"
        return text + "."


def search_facts(search, trials: list[TrialRecord] | None = None) -> SearchFacts:
    """The summary numbers of a search.

    Args:
        search: an open `evo.Search`.
        trials: its trials, when already read (saves reading the store again).
    """
    trials = search.trials() if trials is None else trials
    cfg = search.config
    lineage = Lineage(trials, direction=cfg.direction, directions=search.objectives.directions)
    best = lineage.best
    seed = lineage.seed
    seed_ind = lineage.individual(seed.number) if seed else None
    counted = [t for t in trials if t.counts]
    return SearchFacts(
        name=cfg.name, profile=cfg.profile, budget=cfg.budget, data=cfg.data, created=cfg.created,
        strategies=dict(Counter(t.attrs.get("strategy", "") for t in counted if t.attrs.get("strategy"))),
        proposers=dict(Counter(t.proposer for t in children(trials) if t.proposer)),
        counts=dict(Counter(t.status for t in trials)), finished=len(counted),
        best=best.trial if best else None, best_score=best.score if best else None,
        best_spread=best.spread if best else None, best_evaluations=len(best.values) if best else 0,
        best_description=best.description if best else "", seed_score=seed_ind.score if seed_ind else None,
        keep_rate=keep_rate(trials, direction=cfg.direction), failure_rate=failure_rate(trials), children=len(children(trials)),
        device_hours=sum(device_seconds(t) for t in counted) / 3600,
        first_start=min((t.started for t in trials if t.started), default=None),
        last_finish=max((t.finished for t in trials if t.finished), default=None),
        spend_usd=search.store.ledger.spend_usd, noise=noise_floor(lineage),
        imported=search.store.attr(IMPORTED_ATTR), within_noise=tuple(r.trial.number for r in within_noise(lineage)),
        min_gain=next((min_gain_of(t) for t in reversed(finish_order(trials)) if MIN_GAIN_ATTR in t.attrs), None),
        trust=trust_line(cfg.sandbox, cfg.evaluation),
        untrusted=cfg.sandbox == "none" or cfg.evaluation == "self-reported",
        flagged=sum(1 for t in trials if (t.attrs.get("provenance") or {}).get("suspicious")),
        metric=cfg.metric, direction=cfg.direction, rungs=tuple(rung_rows(lineage)))


def write_report(search, *, out: str | Path | None = None, max_nodes: int = 70, interactive_nodes: int = 300,
                 engine: str = "auto") -> ReportFiles:
    """Write the figures and the HTML page of a search.

    Args:
        search: an open `evo.Search` (finished or still running: the report is a snapshot).
        out: the folder to write into (default: the search folder's `report/`).
        max_nodes: thin the lineage figure to about this many nodes.
        interactive_nodes: thin the page's interactive lineage to about this many nodes
            (it can be zoomed, so it shows more).
        engine: lineage layout engine: "auto", "tree" or "dot" (see `analysis.tree.tree_view`).

    Returns:
        The paths written.
    """
    folder = Path(out) if out is not None else search.paths.report
    folder.mkdir(parents=True, exist_ok=True)
    trials = search.trials()
    facts = search_facts(search, trials)
    lineage = search.lineage()
    scale = dict(direction=facts.direction, metric=facts.metric)
    spec = search.objectives
    files = ReportFiles(folder=folder, html=folder / "report.html", progress=folder / "progress.png",
                        lineage=folder / "lineage.png", front=folder / "front.png" if spec.multi else None)
    if files.front is not None:
        plot_front(lineage, spec.names, files.front, title=f"{facts.name}: Pareto front of {', '.join(spec.names)}")
    best = f" (best {facts.best_score:.4f} at #{facts.best})" if facts.best is not None else ""
    plot_progress(trials, files.progress, title=f"{facts.name}: {facts.metric} over {facts.finished} trials{best}",
                  noise_sd=facts.noise.sd if facts.noise else None, **scale)
    view = tree_view(trials, max_nodes=max_nodes, engine=engine, **scale)
    plot_lineage(trials, files.lineage, title=f"{facts.name}: lineage", view=view)
    big_view = view if interactive_nodes <= max_nodes else tree_view(trials, max_nodes=interactive_nodes,
                                                                      engine=engine, **scale)
    steps = best_lineage(lineage, diff=search.repo.diff)
    files.html.write_text(render_html(facts, trials, files=files, steps=steps, view=big_view,
                                      by_operator=yield_by(trials, key="operator", direction=facts.direction),
                                      by_proposer=yield_by(trials, key="proposer", direction=facts.direction),
                                      prog=progress(trials, direction=facts.direction),
                                      ideas=notebook_rows(search), weights=weights_over_time(trials)))
    return files


# -- the page ---------------------------------------------------------------------------------

def render_html(facts: SearchFacts, trials: list[TrialRecord], *, files: ReportFiles, steps: list[Step],
                view: TreeView, by_operator: list[Yield], by_proposer: list[Yield], prog: Progress,
                ideas: list[IdeaRow] = (), weights: list[tuple[int, dict[str, float]]] = ()) -> str:
    """The report page as one HTML string.

    Args:
        facts: from `search_facts`.
        trials: the search's trials.
        files: where the figures are (they are embedded into the page).
        steps: the best-lineage walk (`analysis.walk.best_lineage`).
        view: the lineage for the interactive view (`analysis.tree.tree_view`).
        by_operator: yields by operator.
        by_proposer: yields by proposer.
        prog: the search's progress (for each trial's order and keep flag).
        ideas: the lab notebook's ideas of the search's task (`analysis.ideas.notebook_rows`).
        weights: an adaptive mix's weights over the trials (`analysis.ideas.weights_over_time`).
    """
    sections = [f"<h1>Search {esc(facts.name)}</h1>",
                f'<p class="headline">{esc(facts.headline())}</p>',
                _summary(facts),
                _rungs(facts),
                "<h2>Progress</h2>",
                '<p class="muted">Every finished trial in the order its result arrived. The red line is the best '
                "genome so far (its mean over re-evaluations); circled points made a new best and are labelled "
                f"with their gain; crosses on the axis are trials that produced no {esc(facts.metric)}.</p>",
                _html.image(files.progress, f"{facts.metric} progress"),
                *(["<h2>Pareto front</h2>",
                   '<p class="muted">Every genome by its mean in the first two objectives; red: the front now '
                   "(genomes no other beats in every objective), blue: the front earlier in the search.</p>",
                   _html.image(files.front, "Pareto front")] if files.front is not None else []),
                "<h2>Lineage</h2>",
                '<p class="muted">Each trial is a node, drawn from its parent (a crossover also from its second '
                f"parent, dashed). Colour is the genome's {esc(facts.metric)}; the red line is the path from the seed "
                "to the best."
                " Grey squares stand for branches folded away (their trial count, failures and best).</p>",
                _html.image(files.lineage, "lineage tree"),
                "<h3>Interactive lineage</h3>",
                '<p class="muted">Scroll to zoom, drag to pan, hover a node for its trial, click it to jump to its row.'
                + (f" {view.folded} trials are folded into +n nodes." if view.folded else "") + "</p>",
                f'<div class="lineage-box">{lineage_svg(view)}</div>',
                "<h2>The best lineage: what worked</h2>",
                _walk(steps, facts),
                "<h2>Yield: which operators and proposers pay off</h2>",
                f'<p class="muted">A child improves when its genome\'s {esc(facts.metric)} is better than its '
                "parent's (the better parent's for a crossover). The gain says by how much, positive is better; "
                "means are over children with a result.</p>",
                _yields(by_operator, "operator"),
                _yields(by_proposer, "proposer") if len(by_proposer) > 1 or by_proposer else "",
                _weights(weights),
                _ideas(ideas, facts),
                "<h2>All trials</h2>",
                '<p class="muted">Click a header to sort. Highlighted rows made a new best.</p>',
                _trials_table(trials, prog, facts)]
    return _html.page(f"evo report: {facts.name}", "\n".join(s for s in sections if s))


def _summary(f: SearchFacts) -> str:
    rows = [("profile, budget", f"{f.profile}, {f.budget:g} s of training per trial, data {f.data}")
            if f.profile != "command" else ("budget", f"{f.budget:g} s per trial"),
            ("how trials ran", f.trust + (f"; {f.flagged} trial(s) flagged for code that reaches past the model"
                                          if f.flagged else "")),
            ("strategy", ", ".join(f"{k} ({v} trials)" for k, v in f.strategies.items()) or "-"),
            ("proposers", ", ".join(f"{k} ({v} children)" for k, v in f.proposers.items()) or "-"),
            ("trials", f"{f.finished} finished: " + ", ".join(f"{v} {k}" for k, v in sorted(f.counts.items()))),
            ("best", "-" if f.best is None else
             f"#{f.best}: {f.metric} {f.best_score:.6f}"
             + (f" ± {f.best_spread:.6f} over {f.best_evaluations} evaluations" if f.best_spread is not None else
                " (one evaluation)") + f" — {f.best_description}"),
            ("seed", num(f.seed_score, 6)),
            ("keep rate", "-" if f.keep_rate is None else f"{100 * f.keep_rate:.0f}% of {f.children} children improved "
             "the best so far"),
            ("failure rate", "-" if f.failure_rate is None else f"{100 * f.failure_rate:.0f}% of children produced no "
             f"{f.metric}"),
            ("device time", f"{f.device_hours:.3f} device-hours"),
            ("wall clock", _span(f.first_start, f.last_finish)),
            ("LLM spend", f"${f.spend_usd:.2f}" if f.spend_usd else "$0")]
    if f.noise:
        rows.append(("noise floor", f.noise.describe(f.metric)))
    else:
        rows.append(("noise floor", "unknown: no genome was evaluated twice (run with --noise-runs K or --reeval K "
                     "to measure it)"))
    if f.min_gain is not None:
        rows.append(("min gain", f"{f.min_gain:.4f}: a child counted as better only when it beat the best by more"
                     if f.min_gain else "0: any gain counted as better"))
    if f.within_noise:
        rows.append(("within the noise", f"{len(f.within_noise)} new best(s) beat the best before them by less than "
                     f"{NOISE_MULTIPLE:g} x the floor ({', '.join(f'#{n}' for n in f.within_noise)}): they may be "
                     "luck; marked ★? below"))
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows)
    note = ""
    if f.untrusted and not f.imported:
        note += (f'<p class="note">Trust: {esc(f.trust)}. Treat its scores as claims, not measurements.</p>')
    if f.imported:
        note = (f'<p class="note">Imported from {esc(f.imported.get("source", "a results.tsv"))}: '
                "autoresearch records no genomes, parents or times, so each row's parent is taken to be the last kept "
                "row before it, no diffs are available, and device time assumes "
                f"{esc(f.imported.get('seconds_per_trial', f.budget))} s per trial.</p>")
    return note + f'<dl class="facts">{facts}</dl>'


def _span(a: dt.datetime | None, b: dt.datetime | None) -> str:
    if a is None or b is None:
        return "-"
    hours = (b - a).total_seconds() / 3600
    return f"{a:%Y-%m-%d %H:%M} to {b:%Y-%m-%d %H:%M} ({hours:.2f} h)"


def _walk(steps: list[Step], facts: SearchFacts) -> str:
    if not steps:
        return '<p class="muted">No successful trial yet.</p>'
    rows = []
    for i, s in enumerate(steps):
        via = " × ".join(f'<a href="#trial-{p}">#{p}</a>' for p in s.parents)
        step_gain = s.gain
        delta_cls = "good" if step_gain is not None and step_gain > 0 else ("bad" if step_gain is not None and step_gain < 0 else "")
        change = esc(s.description or s.operator)
        if s.diff:
            lines = sum(1 for line in s.diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---"))
            change += f"<details><summary>diff ({lines} lines changed)</summary>{_html.diff_block(s.diff)}</details>"
        elif i > 0:
            change += ' <span class="muted">(no diff: genome not in the population repository)</span>'
        rows.append((str(i), f'<a href="#trial-{s.trial}">#{s.trial}</a>', esc(s.operator) + (f" of {via}" if via else ""),
                     num(s.score, 6) + (f' <span class="muted">({s.evaluations}×)</span>' if s.evaluations > 1 else ""),
                     f'<span class="{delta_cls}">{num(step_gain, 6, signed=True)}</span>', change))
    intro = (f'<p class="muted">{len(steps) - 1} steps from the seed to the best genome, following first parents. '
             f"The gain is how much better the step's {esc(facts.metric)} is than the step before (positive is better)"
             + (f"; with a noise floor of {facts.noise.sd:.4f}, steps smaller than ~{2 * facts.noise.sd:.4f} "
                "may be luck" if facts.noise else "") + ".</p>")
    headers = [("step", True), ("trial", False), ("operator", False), (facts.metric, True), ("gain", True),
               ("change", False)]
    return intro + '<div class="walk">' + _html.table(headers, rows) + "</div>"


def _yields(rows: list[Yield], title: str) -> str:
    if not rows:
        return f'<p class="muted">No children yet, so no yield by {esc(title)}.</p>'
    body = [(esc(r.group), str(r.children), str(r.improved), "-" if r.rate is None else f"{100 * r.rate:.0f}%",
             str(r.failed), num(r.mean_gain, 4, signed=True), num(r.best_gain, 4, signed=True)) for r in rows]
    headers = [(title, False), ("children", True), ("improved on parent", True), ("yield", True), ("failed", True),
               ("mean gain", True), ("best gain", True)]
    return f"<h3>By {esc(title)}</h3>" + _html.table(headers, body)


def _weights(weights: list[tuple[int, dict[str, float]]]) -> str:
    if not weights:
        return ""
    names = sorted({name for _, w in weights for name in w})
    rows = [(f"#{n}", *(f"{100 * w.get(name, 0):.0f}%" for name in names)) for n, w in weights]
    return ("<h3>How the adaptive mix moved</h3>"
            '<p class="muted">Each member\'s chance to propose the trial, from how often its children made a new best '
            "(Thompson sampling).</p>" + _html.table([("trial", True), *((esc(n), True) for n in names)], rows))


def _ideas(rows: list[IdeaRow], facts: SearchFacts, limit: int = 25) -> str:
    if not rows:
        return ""
    body = [(esc(r.idea[:120]), num(r.mean, 4, signed=True),
             f"[{num(r.low, 4, signed=True)}, {num(r.high, 4, signed=True)}]" if r.low is not None else "-",
             str(r.tries), str(r.failed), str(r.kept), esc(", ".join(r.searches[:3]) + ("..." if len(r.searches) > 3 else "")))
            for r in rows[:limit]]
    headers = [("idea", False), ("effect", True), ("95% interval", False), ("tries", True), ("failed", True),
               ("new bests", True), ("searches", False)]
    return ("<h2>Lab notebook: what the searches of this task measured</h2>"
            f'<p class="muted">Every idea tried in a search of this task (this one and others; `evo ideas` lists them '
            f"all), the best measured first. Effect is the child's {esc(facts.metric)} against its parent's, positive "
            f"is better, with a bootstrap interval where it was tried twice or more.</p>" + _html.table(headers, body))


def _rungs(f: SearchFacts) -> str:
    """The promotion ladder: what each rung scored and how well the rung below ranked the same genomes."""
    if not f.rungs:
        return ""
    headers = [("rung", True), ("scale", False), ("genomes scored", True), ("trials", True),
               (f"best {f.metric}", True), ("predicted by the rung below", False)]
    rows = [(str(r.rung), esc(r.label), str(r.genomes), str(r.attempts), num(r.best, 4) if r.best is not None else "-",
             esc(describe_rho(r))) for r in f.rungs]
    return ("<h2>Promotion</h2>"
            '<p class="muted">Genomes climb the ladder when they rank in the top of a rung. The last column is the '
            "rank correlation between a rung and the one below over the genomes scored at both: how well the "
            "cheaper scale predicted this one. Parents come from the highest rung.</p>" + _html.table(headers, rows))


def _trials_table(trials: list[TrialRecord], prog: Progress, facts: SearchFacts) -> str:
    lineage = Lineage(trials, direction=facts.direction)
    order = {p.trial.number: p for p in prog.points}
    delta = gains(trials, direction=facts.direction)
    rows, attrs = [], []
    extra = other_metrics(trials, facts.metric)
    for t in sorted(trials, key=lambda t: t.number):
        point = order.get(t.number)
        ind = lineage.individual(t.number) if t.finished_ok else None
        value = t.value if t.value is not None and math.isfinite(t.value) else None
        parents = ", ".join(f'<a href="#trial-{p}">#{p}</a>' for p in t.parents) or "-"
        gain = delta.get(t.number)
        text = t.description or ""
        if t.error and t.status != TrialStatus.OK:
            text = (text + " — " if text else "") + t.error
        flags = (t.attrs.get("provenance") or {}).get("suspicious")
        if flags:
            text += " ⚑ flagged: " + "; ".join(flags)
        kept = bool(point and point.improved)
        rows.append(((str(t.number), t.number), ((str(point.index), point.index) if point else ("-", "Infinity")),
                     esc(t.operator), parents, esc(t.proposer or "-"), esc(t.status),
                     (num(value, 6), value if value is not None else "Infinity"),
                     (num(ind.score, 6) if ind and len(ind.values) > 1 else "", ind.score if ind else "Infinity"),
                     (f'<span class="{"good" if gain > 0 else "bad"}">{num(gain, 4, signed=True)}</span>'
                      if gain is not None else "-", gain if gain is not None else "-Infinity"),
                     ("★?" if t.number in facts.within_noise else "★") if kept else "",
                     *(_metric_cell(t.metrics.get(m)) for m in extra),
                     (f"{device_seconds(t):.0f}", round(device_seconds(t), 1)),
                     esc(text)))
        cls = "kept" if kept else ("failed" if is_failure(t) else "")
        attrs.append(f' id="trial-{t.number}"' + (f' class="{cls}"' if cls else ""))
    headers = [("#", True), ("order", True), ("operator", False), ("parents", False), ("proposer", False),
               ("status", False), (facts.metric, True), ("genome mean", True), ("gain vs parent", True), ("new best", False),
               *((esc(m), True) for m in extra), ("device s", True), ("description / error", False)]
    return _html.table(headers, rows, cls="sortable", row_attrs=attrs)


# What the engine measures of every trial: not the evaluator's metrics.
ENGINE_METRICS = {"peak_memory_mb", "cpu_seconds", "peak_vram_mb", "training_seconds", "eval_seconds"}
MAX_METRIC_COLUMNS = 8


def other_metrics(trials: list[TrialRecord], metric: str) -> list[str]:
    """The evaluator's metrics besides the objective, in the order first seen (at most MAX_METRIC_COLUMNS)."""
    names: dict[str, None] = {}
    for t in sorted(trials, key=lambda t: t.number):
        for name in t.metrics:
            if name != metric and name not in ENGINE_METRICS and not name.startswith("reported_"):
                names.setdefault(name)
    return list(names)[:MAX_METRIC_COLUMNS]


def _metric_cell(value) -> tuple[str, object]:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return num(value, 6), value
    return "-", "-Infinity"
