"""What `evo run` prints while a search runs: a live view on a terminal, lines in a log.

`Reporter` (plain mode: stdout is a file, a pipe, `nohup`) prints one line per trial start
and end, a line for each stop, wait and recovery, and a progress line (devices, trials
done/target, best, ETA) at most every `PLAIN_PROGRESS_SECONDS` while trials run.
`LiveReporter` (a terminal) keeps a small `rich` view of the same facts redrawn in place
below the finished trials' lines. Both read the run's events; neither changes the search.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from analysis.live import RunView, duration, progress_line, render_live
from analysis.text import best_score, fmt
from evo.cli._common import as_flags, finished_line

PLAIN_PROGRESS_SECONDS = 30.0  # the most often plain mode prints a progress line
MARGIN = 3                     # columns the live view leaves free at the terminal's right edge
# The library text an event carries (a wait's error, a proposer's remark, a stop's reason) names
# parameters; shown here, it names this command line's flags. A trial's error is left as recorded:
# `evo show` prints the same record, and a genome's description is never rewritten.
FLAGGED = {"waiting": "error", "proposer": "line", "stopped": "reason"}


class Reporter:
    """Prints the run's events as lines (plain mode). `clock` and `every` are for tests."""

    live = False

    def __init__(self, search, options, *, quiet: bool = False, out=None, clock=time.time,
                 every: float | None = None, strategy: str = "", proposer: str = ""):
        self.search, self.quiet, self.out, self.clock = search, quiet, out, clock
        self.options = lambda: options     # this run's options: the loop's own once it follows one
        cfg = search.config
        self.view = RunView(name=cfg.name, metric=cfg.metric, strategy=strategy, proposer=proposer, budget=cfg.budget,
                            target=options.limits.trials, hours=options.limits.hours, started=clock(),
                            estimate=bool(cfg.target))  # any project's budget covers its whole run
        self.every = every if every is not None else float(os.environ.get("EVO_PROGRESS_SECONDS",
                                                                          PLAIN_PROGRESS_SECONDS))
        self.stopping = lambda: False      # the loop's stop flag, once it follows one
        self._last = self.view.started     # when the last progress line was printed
        self._lock = threading.Lock()
        self._count()  # a resumed search starts from what it has

    def follow(self, loop) -> None:
        """Read the loop's stop flag and its engine's options from now on (a shared search's limits change
        while it runs: the engine owns them, and each event reads them anew)."""
        self.stopping = loop.stop.is_set
        self.options = lambda: loop.engine.options

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def __call__(self, kind: str, info: dict) -> None:
        now = self.clock()
        if kind in FLAGGED and isinstance(info.get(FLAGGED[kind]), str):
            info = {**info, FLAGGED[kind]: as_flags(info[FLAGGED[kind]])}
        with self._lock:
            # A shared search's limits come from its study once the loop has begun: read them each time.
            o = self.options().limits
            self.view.target, self.view.hours, self.view.since = o.trials, o.hours, o.since
            self.view.stopping = self.view.stopping or self.stopping()
            self.view.record(kind, info, now=now)
            if kind == "finished":
                self._count()
        if self.quiet and kind != "stopped":
            return
        line = self.line(kind, info, now)
        if line is not None:
            self.emit(line)

    def emit(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def notice(self, line: str) -> None:
        """A line from a signal handler (what Ctrl-C does): on stderr."""
        print(f"\n{line}", file=sys.stderr, flush=True)

    def abort(self) -> None:
        """The process is about to end at once (a second Ctrl-C): leave the terminal usable."""

    def _count(self) -> None:
        """Trials done and the best, from the study (other hosts' trials count too)."""
        try:
            lineage = self.search.lineage()
        except Exception:  # a worker whose database is away: keep the last known numbers
            return
        self.view.done = sum(1 for t in lineage.trials if t.spends_trial)
        best = lineage.best
        # A promoted search's best is ranked at its highest rung: show that score, and say so.
        rung = f"[rung {best.rung}] " if best and best.rung else ""
        self.view.best = (best.score_at(best.rung), best.trial, rung + (best.description or "")) if best else None

    def line(self, kind: str, info: dict, now: float) -> str | None:
        """The line an event prints, or None."""
        if kind == "progress":
            if now - self._last < self.every or not (self.view.running or self.view.waiting or self.view.proposals):
                return None
            self._last = now
            return progress_line(self.view, now)
        if kind == "started":
            parents = ",".join(f"#{p}" for p in info.get("parents", []))
            return (f"       #{info['trial']:<4} started on {info['slot']}: {info.get('operator', '')} {parents} "
                    f"{(info.get('description') or '')[:70]}")
        if kind == "finished":
            return self._finished(info, now)
        if kind == "stopped":
            return f"stopped: {info['reason']}; {self._best()}"
        return event_line(kind, info, now)

    def _finished(self, info: dict, now: float) -> str:
        v = self.view
        count = f"[{v.done:>3}/{v.target}]" if v.target else f"[{v.done:>3}]"
        best = f" | best {fmt(v.best[0])} (#{v.best[1]})" if v.best else ""
        eta = v.eta(now)
        kept = "new rung-0 best" if self.options().promotion.ladder else "new best"
        return (f"{count} {finished_line(info, metric=v.metric, kept=kept)}{best}"
                + (f" | eta {duration(eta)}" if eta is not None else ""))

    def _best(self) -> str:
        try:
            best = self.search.lineage().best
        except Exception:  # a worker that lost its database still says why it stopped
            return "best unknown (the database does not answer)"
        return (f"best {self.search.config.metric} {best_score(best)} (trial #{best.trial}: {best.description})"
                if best else "no successful trial")


class LiveReporter(Reporter):
    """A terminal's view: the finished trials' lines scroll, and below them a few lines redrawn in
    place (devices with their trial's share of the budget, loss and time; trials done/target,
    best, ETA; a wait for the API). `console`: a rich Console (default: stdout's)."""

    live = True

    def __init__(self, search, options, *, console=None, **kw):
        from rich.console import Console
        from rich.live import Live

        super().__init__(search, options, **kw)
        self.console = console or Console()
        self._live = Live(console=self.console, get_renderable=self.render, refresh_per_second=2, transient=True,
                          redirect_stdout=True, redirect_stderr=True)

    def render(self):
        from rich.constrain import Constrain

        # A few columns short of the terminal: the "^C" a terminal echoes after the last line must not
        # wrap it, or the view's redraw starts a line too low and leaves its first line behind.
        width = max(20, self.console.width - MARGIN)
        with self._lock:
            return Constrain(render_live(self.view, self.clock(), width=width), width=width)

    def __enter__(self):
        self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        self._live.stop()

    def line(self, kind: str, info: dict, now: float) -> str | None:
        if kind in ("started", "progress"):  # the view shows them
            return None
        return super().line(kind, info, now)

    def __call__(self, kind: str, info: dict) -> None:
        super().__call__(kind, info)
        if kind != "progress" and self._live.is_started:
            self._live.refresh()  # show a start or an end now, not at the next tick

    def notice(self, line: str) -> None:
        """Shown in the view at its next redraw: a signal handler must not draw into a view being drawn."""
        self.view.notice = line

    def abort(self) -> None:
        """Show the cursor again and end the line; the view cannot be cleaned up from a signal handler."""
        try:
            os.write(self.console.file.fileno(), b"\x1b[?25h\n")
        except (OSError, ValueError, AttributeError):
            pass

    def emit(self, line: str) -> None:
        """A line above the view, cut to the terminal's width (`evo show` has the rest)."""
        self.console.print(line, markup=False, highlight=False, no_wrap=True, overflow="ellipsis", crop=True)


def make_reporter(search, options, *, quiet: bool, strategy: str = "", proposer: str = "") -> Reporter:
    """The live view on a terminal; lines for a file, a pipe, `nohup`, TERM=dumb or --quiet."""
    terminal = sys.stdout.isatty() and os.environ.get("TERM", "") not in ("", "dumb")
    kind = LiveReporter if terminal and not quiet else Reporter
    return kind(search, options, quiet=quiet, strategy=strategy, proposer=proposer)


def event_line(kind: str, info: dict, now: float) -> str | None:
    """The line of an event that is not a trial starting or ending: data preparation, a failed seed
    run again, a wait for the API, trials left behind, lost, a database coming and going."""
    if kind == "preparing":
        return f"  {info['line']}" if "line" in info else f"preparing data: {info['data']} for profile {info['profile']}"
    if kind == "seed":
        what = "was replaced (evo reseed) and runs now" if info.get("replaced") else "runs again"
        return (f"the seed genome has not run successfully yet (trial #{info['trial']}, {info['status']}: "
                f"{(info.get('error') or '')[:100]}): it {what}")
    if kind == "waiting":
        ran = (info.get("usage") or {}).get("seconds")
        ran = f" after a call of {duration(ran)}" if ran else ""
        return (f"waiting for the API (retry in {duration(info['seconds'])}; down for "
                f"{duration(now - info['since'])}){ran}: {info['error'][:160]}")
    if kind == "proposer":
        return f"proposer: {info['line']}"
    if kind == "resumed":
        return f"the API answers again (it was down for {duration(info['seconds'])})"
    if kind == "recovered":
        where = f" on {info['host']}" if info.get("host") else ""
        return f"trial #{info['trial']} was left running by a stopped worker{where}: marked interrupted, will re-run"
    if kind == "lost":
        return (f"trial #{info['trial']} was taken over by another worker while this one could not beat for it: "
                "its result is dropped here")
    if kind == "outage":
        return f"lost {info['what']} ({info['error']}); retrying for up to {info['patience']:g} s"
    if kind == "reconnected":
        return f"{info['what']} is back; carrying on"
    return None
