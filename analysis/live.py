"""The live view of a running search: what `evo run` shows while it works.

`RunView` is plain data a run's events fill in (the loop's "started", "progress",
"finished", "waiting", "resumed" and "stopped", as dicts). Two renderings read it:

- `render_live(view)`: a `rich` renderable for a terminal, redrawn in place: the search's
  trials done/target, best and ETA, then one row per device with the running trial's share
  of the budget, its last loss and elapsed time. It stays a few lines high and never wraps,
  so it fits 80x24 however many trials have run (finished trials scroll above it).
- `progress_line(view)`: the same facts on one line, for logs and `nohup` (plain mode).

    view = RunView(name="demo", metric="val_bpb", target=12, budget=300)
    view.record("started", {"trial": 3, "slot": "cuda0", "description": "..."}, now=time.time())
    Console().print(render_live(view, now=time.time()))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from analysis.text import duration, fmt, shorten
from population.store import TrialStatus


@dataclass
class Running:
    """One device's trial as the view knows it."""

    trial: int
    description: str = ""
    started: float = 0.0
    fraction: float | None = None
    loss: float | None = None
    seconds: float | None = None


@dataclass
class RunView:
    """What a run has done and is doing, filled in from its events.

    name, strategy, proposer, metric: labels; budget: seconds per trial (for a trial whose
    output reports no progress, its share is estimated from the time it has run).
    target, hours: this run's limits (None: none). done: finished trials in the search (set
    by the caller from the store); done_here, failed_here: finished by this run.
    best: (score, trial number, description) of the best genome, or None.
    stopping: Ctrl-C was pressed: the run only winds down (no ETA any more).
    estimate: a trial's share of the budget may be estimated from the time it has run, until
        its output reports one (right for a project whose budget covers the whole run; a
        harness trial's budget starts after its start-up, so it waits for the report).
    """

    name: str = ""
    metric: str = "val_bpb"
    strategy: str = ""
    proposer: str = ""
    budget: float | None = None
    target: int | None = None
    hours: float | None = None
    started: float = field(default_factory=time.time)
    since: float | None = None          # when the hours limit counts from (a shared search: its first trial)
    slots: list[str] = field(default_factory=list)
    running: dict[str, Running] = field(default_factory=dict)
    done: int = 0
    done_here: int = 0
    failed_here: int = 0
    best: tuple[float, int, str] | None = None
    waiting: dict | None = None
    stopping: bool = False
    stopped: str = ""
    estimate: bool = True
    notice: str = ""     # a line the run wants seen now (what Ctrl-C does), shown below the devices
    proposals: list[dict] = field(default_factory=list)   # proposals being written now (see proposal_text)

    def record(self, kind: str, info: dict, *, now: float) -> None:
        """Take one event of the run into the view."""
        if kind == "started":
            self.running[info["slot"]] = Running(info["trial"], info.get("description") or info.get("operator", ""),
                                                 started=now)
            if info["slot"] not in self.slots:
                self.slots.append(info["slot"])
        elif kind == "progress":
            self._progress(info, now)
        elif kind == "finished":
            self.running = {s: r for s, r in self.running.items() if r.trial != info["trial"]}
            self.done_here += 1
            self.failed_here += info.get("status") not in (TrialStatus.OK, TrialStatus.DUPLICATE)
        elif kind == "waiting":
            self.waiting = {"since": info["since"], "retry_at": now + info["seconds"], "error": info["error"]}
        elif kind == "resumed":
            self.waiting = None
        elif kind == "stopped":
            self.stopped, self.stopping = info.get("reason", "stopped"), True

    def _progress(self, info: dict, now: float) -> None:
        for row in info.get("slots", []):
            if row["slot"] not in self.slots:
                self.slots.append(row["slot"])
            run = self.running.get(row["slot"])
            if row.get("trial") is None or run is None or run.trial != row["trial"]:
                continue
            run.fraction, run.loss, run.seconds = row.get("fraction"), row.get("loss"), row.get("seconds")
        if info.get("waiting") is not None:
            self.waiting = dict(info["waiting"])
        if "proposals" in info:
            self.proposals = [dict(p, seen=now) for p in info["proposals"] or []]

    def eta(self, now: float) -> float | None:
        """Seconds until the run's limit, from its pace so far; None when unknown or stopping."""
        if self.stopping or not self.done_here:
            return None
        left = []
        if self.target:
            left.append((now - self.started) / self.done_here * max(0, self.target - self.done))
        if self.hours:
            left.append(max(0.0, (self.since or self.started) + self.hours * 3600 - now))
        return min(left) if left else None

    def share(self, run: Running, now: float) -> tuple[float | None, bool]:
        """(fraction of the budget done, whether it is estimated from the time run so far)."""
        if run.fraction:
            return min(1.0, run.fraction), False
        if self.budget and self.estimate:
            return min(1.0, (now - run.started) / self.budget), True
        return None, False


# -- one line, for logs --------------------------------------------------------------------------

def summary_line(view: RunView, now: float) -> str:
    """trials done/target, failures, best, elapsed and ETA, as one line."""
    done = f"{view.done}/{view.target}" if view.target else f"{view.done}"
    parts = [f"trials {done}" + (f" ({view.failed_here} failed)" if view.failed_here else "")]
    parts.append(f"best {view.metric} {fmt(view.best[0])} (#{view.best[1]})" if view.best else "best -")
    parts.append(f"elapsed {duration(now - view.started)}")
    eta = view.eta(now)
    if eta is not None:
        parts.append(f"eta {duration(eta)}")
    elif view.stopping:
        parts.append("stopping")
    return " | ".join(parts)


def waiting_line(view: RunView, now: float) -> str | None:
    w = view.waiting
    if w is None:
        return None
    retry = w["retry_at"] - now
    when = f"retry in {duration(retry)}" if retry >= 1 else "asking again now"
    return f"waiting for the API ({when}; down {duration(now - w['since'])}): {' '.join(str(w['error']).split())}"


def proposal_text(p: dict, now: float | None = None) -> str:
    """One proposal in flight, e.g. 'mutate of #3 by openai-compatible (qwen3): 1m12s, 340 tokens so far, waiting
    for the model' (the time first: a narrow view cuts the end). `now` (with the fact's `seen`) ages the
    seconds a snapshot reported."""
    parents = " x ".join(f"#{n}" for n in p.get("parents") or [])
    model = f" ({p['model']})" if p.get("model") else ""
    seconds = float(p.get("seconds") or 0.0) + (now - p["seen"] if now is not None and p.get("seen") else 0.0)
    facts = [duration(seconds)]
    if p.get("tokens"):
        facts.append(f"{p['tokens']} tokens so far")
    if p.get("phase"):
        facts.append(p["phase"])
    return f"{p.get('operator', 'proposal')} of {parents or '?'} by {p.get('proposer', '?')}{model}: {', '.join(facts)}"


def device_text(view: RunView, slot: str, now: float) -> str:
    run = view.running.get(slot)
    if run is None:
        return f"{slot} idle"
    share, estimated = view.share(run, now)
    pct = "" if share is None else f" {'~' if estimated else ''}{100 * share:.0f}%"
    loss = f" loss {run.loss:.3f}" if run.loss is not None else ""
    return f"{slot} #{run.trial}{pct}{loss} {duration(now - run.started)}"


def progress_line(view: RunView, now: float | None = None) -> str:
    """The periodic line of plain mode: the summary, then each device."""
    now = time.time() if now is None else now
    line = f"progress: {summary_line(view, now)}"
    devices = [device_text(view, s, now) for s in view.slots]
    if devices:
        line += " | " + "; ".join(devices)
    line += "".join(f" | proposing {proposal_text(p, now)}" for p in view.proposals)
    waiting = waiting_line(view, now)
    return line + (f" | {waiting}" if waiting else "")


# -- the terminal view ------------------------------------------------------------------------

def render_live(view: RunView, now: float | None = None, *, width: int = 80):
    """A rich renderable of the view (a few lines, never wrapped): the search, then one row per device."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    now = time.time() if now is None else now
    head = f"{view.name} · {view.strategy} · {view.proposer}" if view.strategy else view.name
    lines = [Text(shorten(head, width), no_wrap=True, overflow="ellipsis", style="bold"),
             Text(summary_line(view, now), no_wrap=True, overflow="ellipsis")]
    if view.best:
        lines.append(Text(shorten(f"best #{view.best[1]}: {view.best[2]}", width), no_wrap=True, overflow="ellipsis"))
    table = Table(box=None, show_header=True, header_style="dim", pad_edge=False, expand=False)
    for name, kw in (("device", {}), ("trial", {"justify": "right"}), ("budget", {}), ("", {"justify": "right"}),
                     ("loss", {"justify": "right"}), ("time", {"justify": "right"}), ("change", {"max_width": 26})):
        table.add_column(name, no_wrap=True, overflow="ellipsis", **kw)
    for slot in view.slots:
        run = view.running.get(slot)
        if run is None:
            table.add_row(slot, "", "", "", "", "", Text("idle", style="dim"))
            continue
        share, estimated = view.share(run, now)
        bar = (ProgressBar(total=1.0, completed=share, width=14) if share is not None
               else Text("starting", style="dim"))  # no report yet: still starting up
        pct = "" if share is None else f"{'~' if estimated else ''}{100 * share:.0f}%"
        table.add_row(slot, f"#{run.trial}", bar, pct, fmt(run.loss, 3), duration(now - run.started),
                      shorten(run.description, 26))
    parts = [*lines, table]
    for p in view.proposals:  # a call to a model can take minutes: show it is under way
        parts.append(Text(shorten(f"proposing {proposal_text(p, now)}", width), no_wrap=True, overflow="ellipsis",
                          style="cyan"))
    waiting = waiting_line(view, now)
    if waiting:
        parts.append(Text(waiting, no_wrap=True, overflow="ellipsis", style="yellow"))
    if view.notice:
        parts.append(Text(view.notice, no_wrap=True, overflow="ellipsis", style="bold"))
    return Group(*parts)
