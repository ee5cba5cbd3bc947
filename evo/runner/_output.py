"""Reading what a trial prints, one line at a time.

A genome prints progress lines (`step 00042 | 37.5% | loss 3.1234 | ...`), maybe a line
starting with FAIL when its loss diverged, and at the end a summary block: a line `---`
followed by `key: value` lines. `TrialOutput` keeps what those lines say; it holds no
process and no clock of its own, so it can be tested by feeding it lines.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

TAIL_LINES = 30

_PROGRESS = re.compile(r"^step\s+\d+\s*\|\s*([\d.]+)%\s*\|\s*loss\s+(\S+)")
_SUMMARY = re.compile(r"^(\w+):\s+(\S+)\s*$")
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan)"


def metric_pattern(metric: str, pattern: str | None = None) -> re.Pattern:
    """The regex that finds a metric in a line: `pattern` (its first group is the number), or a
    `metric: value` / `metric = value` line by default."""
    if pattern:
        return re.compile(pattern)
    return re.compile(rf"^\s*{re.escape(metric)}\s*[:=]\s*{_NUMBER}\s*$")


@dataclass(frozen=True)
class SummaryBlock:
    """The summary block a genome prints after a `---` line: its keys in order (the last one
    completes it), and those the engine measures itself when the score is not self-reported
    (the genome's own values of those are kept as `reported_<key>`). The harness's block is
    `evo.runner._harness.HARNESS_SUMMARY`."""

    keys: tuple[str, ...] = ()
    measured: tuple[str, ...] = ()


@dataclass(frozen=True)
class Progress:
    """One progress line: how much of the budget is done, and the smoothed training loss."""

    fraction: float
    loss: float


@dataclass
class TrialOutput:
    """What a trial's output has said so far.

    >>> out = TrialOutput(summary_keys=("val_bpb",))
    >>> out.feed("step 00010 | 50.0% | loss 3.25 | lrm 1.00", now=1.0)
    Progress(fraction=0.5, loss=3.25)
    >>> out.feed("---", now=2.0); out.feed("val_bpb: 1.5", now=2.0); out.summary
    {'val_bpb': 1.5}

    summary_keys: the keys of the summary block; the last one completes it.
    watch: (name, pattern) pairs looked for in every line; `found[name]` keeps the last match
        (first group, as a float) and `found_in_summary` the names last seen after a `---` line.
    """

    summary_keys: tuple[str, ...] = ()
    watch: tuple[tuple[str, re.Pattern], ...] = ()
    found: dict[str, float] = field(default_factory=dict)
    found_in_summary: set[str] = field(default_factory=set)
    summary: dict[str, float] = field(default_factory=dict)
    diverged: bool = False               # a FAIL line, or a progress line with a non-finite loss
    complete_at: float | None = None     # when the summary's last key arrived
    tail: list[str] = field(default_factory=list)
    lines: int = 0
    _in_summary: bool = False

    @property
    def complete(self) -> bool:
        return self.complete_at is not None

    def feed(self, line: str, *, now: float) -> Progress | None:
        """Take one line (without its newline); return the progress it reports, if any."""
        self.lines += 1
        self.tail.append(line)
        del self.tail[:-TAIL_LINES]
        if line.startswith("FAIL"):
            self.diverged = True
        for name, pattern in self.watch:
            m = pattern.search(line)
            if m:
                self._found(name, m.group(1) if m.groups() else m.group(0))
        if line.strip() == "---":
            self._in_summary = True
            return None
        if self._in_summary:
            self._summary_line(line, now)
            return None
        return self._progress_line(line)

    def _found(self, name: str, text: str) -> None:
        try:
            self.found[name] = float(text)
        except ValueError:
            self.found[name] = math.nan
        if self._in_summary:
            self.found_in_summary.add(name)
        else:
            self.found_in_summary.discard(name)

    def _summary_line(self, line: str, now: float) -> None:
        m = _SUMMARY.match(line)
        if not m or m.group(1) not in self.summary_keys:
            return
        try:
            self.summary[m.group(1)] = float(m.group(2))
        except ValueError:
            self.summary[m.group(1)] = math.nan
        if m.group(1) == self.summary_keys[-1]:
            self.complete_at = now

    def _progress_line(self, line: str) -> Progress | None:
        m = _PROGRESS.match(line)
        if not m:
            return None
        try:
            fraction, loss = float(m.group(1)) / 100.0, float(m.group(2))
        except ValueError:
            return None
        if not math.isfinite(loss):
            self.diverged = True
            return None
        return Progress(fraction, loss)

    def last_line(self, prefer: str | None = None) -> str:
        """The line that best says what went wrong: the last one starting with `prefer`, else the last one."""
        if prefer:
            for line in reversed(self.tail):
                if line.startswith(prefer):
                    return line.strip()
        for line in reversed(self.tail):
            if line.strip() and not line.startswith("[evo]"):
                return line.strip()[:300]
        return ""
