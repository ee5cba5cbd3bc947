"""Text views of a search: the status summary (`evo status`) and one trial in full (`evo show`)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter

from analysis.live import proposal_text
from analysis.noise import noise_floor, within_noise
from analysis.promotion import rung_rows
from analysis.text import crop, duration, fmt
from population.devices import DevicesRecord
from population.errors import ConfigError
from population.lineage import MIN_GAIN_ATTR, NOISE_MULTIPLE, Lineage, finish_order, min_gain_of
from population.repeats import REPEAT_ATTR, SKIPPED_ATTR, skipped_counts
from population.store import TrialRecord, TrialStatus


class TrialNotFound(ConfigError, LookupError):
    """`evo show` asked for a trial number the search does not have."""


RECENT_ROWS = 12   # the trials `evo status` lists, the newest last


def summarize(search, *, rows: int | None = None) -> dict:
    """Everything `evo status` shows, as plain data (`--json` prints exactly this). `rows`: list only the
    newest trials, as many (the text view shows a dozen; a row for each of 10,000 trials took ~0.3 s)."""
    trials = search.trials()
    lineage = search.lineage()
    best = lineage.best
    counts = Counter(t.status for t in trials)
    children = lineage.children()
    kept = sum(1 for t in children if lineage.kept(t.number))
    spend = search.store.ledger.spend_usd
    devices, run = _devices(search)
    finished = sum(1 for t in trials if t.spends_trial)
    best_record = lineage.by_number.get(best.trial) if best else None
    saved, skipped = skipped_counts(trials)
    return {
        "name": search.config.name,
        "folder": str(search.folder),
        "repo": str(search.repo.path),
        "profile": search.config.profile,
        "budget": search.config.budget,
        "sandbox": search.config.sandbox,
        "evaluation": search.config.evaluation,
        "trust": trust_line(search.config.sandbox, search.config.evaluation,
                            shared=sum(1 for t in trials if (t.attrs.get("provenance") or {}).get("program") == SHARED)),
        "flagged": sum(1 for t in trials if t.attrs.get("provenance", {}).get("suspicious")),
        "running": search.is_running(),
        "best": best.trial if best else None,
        "metric": search.config.metric,
        "direction": search.config.direction,
        "best_value": best.score if best else None,  # the metric's best, whatever its name
        **_named_best(search.config, best),
        "best_metrics": _metrics(best_record) if best_record else {},
        "best_rung": best.rung if best else 0,       # promoted searches: the rung the best is ranked at
        "best_rung_score": best.score_at(best.rung) if best else None,
        "best_spread": best.spread if best else None,
        "best_description": best.description if best else None,
        "finished": finished,
        "while_waiting": sum(1 for t in trials if t.counts and t.while_waiting),
        "run": _run_line_facts(run, finished),
        "counts": dict(counts),
        "keep_rate": kept / len(children) if children else None,
        # Proposals not trained because they repeated an idea the lab notebook measured (worse beyond the noise,
        # or already on that parent); a child with any of them before it is one trial saved.
        "known_ideas": {"trials_saved": saved, "skipped": skipped},
        "spend_usd": spend,
        "api_faults": search.store.ledger.api_faults,
        "cost_per_kept_usd": spend / kept if kept and spend else None,
        "devices": devices,
        **_front(search, lineage),
        **_noise(lineage),
        "hosts": _hosts(trials),
        "rungs": [dataclasses.asdict(r) for r in rung_rows(lineage)],
        "trials": [_trial_row(t, lineage, search.config.metric)
                   for t in (lineage.trials if rows is None else lineage.trials[max(0, len(lineage.trials) - rows):])],
    }


def _noise(lineage: Lineage) -> dict:
    """The noise floor, the min gain last applied, and the new bests that lie inside the floor."""
    floor = noise_floor(lineage)
    applied = [t for t in finish_order(lineage.trials) if MIN_GAIN_ATTR in t.attrs]
    return {"noise_sd": floor.sd if floor else None,
            "noise_evaluations": floor.evaluations if floor else 0,
            "noise_genomes": len(floor.genomes) if floor else 0,
            "min_gain": min_gain_of(applied[-1]) if applied else None,
            "within_noise": [r.trial.number for r in within_noise(lineage, floor)]}


def _hosts(trials: list[TrialRecord]) -> dict[str, dict]:
    """For a shared search: per host, how many trials it ran and how many it runs now."""
    hosts: dict[str, dict] = {}
    for t in trials:
        if t.host:
            row = hosts.setdefault(t.host, {"trials": 0, "running": 0})
            row["trials"] += 1
            row["running"] += t.state == "RUNNING"
    return hosts


def _devices(search) -> tuple[list[dict], dict]:
    """What each device of the running process is doing, and that run's limits and pace
    (devices.json, written by the loop); nothing when no process runs the search."""
    path = search.paths.devices
    if not path.exists() or not search.is_running():
        return [], {}
    state = DevicesRecord.read(path)
    if state is None:
        return [], {}
    rows = [dataclasses.asdict(row) for row in state.slots]
    age = time.time() - (state.updated or time.time())
    for row in rows:  # seconds since the snapshot was written
        if row.get("seconds") is not None:
            row["seconds"] = round(row["seconds"] + age, 1)
    run = dataclasses.asdict(state.run)
    run["waiting"] = state.waiting
    # Proposals being written: their seconds as of now, like the devices'.
    run["proposals"] = [dict(p, seconds=round(float(p.get("seconds") or 0) + age, 1)) for p in state.proposals]
    return rows, run


def _run_line_facts(run: dict, finished: int) -> dict | None:
    """The running process's target, elapsed time and ETA (None once it is stopping or unknown)."""
    if not run.get("started"):
        return None
    now = time.time()
    elapsed = now - run["started"]
    eta = None
    if not run.get("stopping") and run.get("finished"):
        left = []
        if run.get("target"):
            left.append(elapsed / run["finished"] * max(0, run["target"] - finished))
        if run.get("hours"):
            left.append(max(0.0, run["hours"] * 3600 - elapsed))
        eta = min(left) if left else None
    waiting = run.get("waiting")
    return {"target": run.get("target"), "elapsed": elapsed, "eta": eta, "stopping": bool(run.get("stopping")),
            "proposals": run.get("proposals") or [],
            "waiting": None if not waiting else {"retry_in": max(0.0, waiting["retry_at"] - now),
                                                  "error": waiting.get("error", "")}}


def _front(search, lineage: Lineage) -> dict:
    """A search with several objectives: its objectives and its Pareto front, each member's mean vector."""
    spec = search.objectives
    if not spec.multi:
        return {}
    return {"objectives": [o.spelled() for o in spec.objectives],
            "front": [{"trial": i.trial, "values": list(i.objectives), "description": i.description}
                      for i in lineage.front()]}


def _named_best(config, best) -> dict:
    """The best under the metric's own name; the harness's also as best_val_bpb, which scripts read."""
    value = best.score if best else None
    if config.target:
        return {f"best_{config.metric}": value}
    return {"best_val_bpb": value}


def _metrics(t: TrialRecord) -> dict:
    """A trial's numeric metrics, a non-finite one as None (JSON has no NaN)."""
    return {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in sorted(t.metrics.items())}


def _trial_row(t: TrialRecord, lineage: Lineage, metric: str = "val_bpb") -> dict:
    return {"number": t.number, "commit": t.commit, "parents": t.parents, "operator": t.operator, "status": t.status,
            "value": t.value, metric: t.value, "metrics": _metrics(t), "description": t.description, "proposer": t.proposer, "kept": lineage.kept(t.number),
            "seed": t.seed, "error": t.error, "cost_usd": t.cost_usd,
            "peak_vram_mb": t.metrics.get("peak_vram_mb"), "duplicate_of": t.attrs.get("duplicate_of")}


SHARED = "program and evaluator share a process"  # a peer project's runner says so of such a trial


def trust_line(sandbox: str, evaluation: str, shared: int = 0) -> str:
    """How far a search's scores can be trusted, in one sentence. shared: how many trials' programs ran
    in their evaluator's own process (a peer evaluator that imports the program), where a program
    can reach what scores it."""
    secret = "the validation data" if evaluation in ("harness", "self-reported") else "whatever scores it"
    where = {"bwrap": "in a bubblewrap sandbox", "none": f"WITHOUT A SANDBOX (a genome can read {secret}, "
             "fake its score or change the search folder)"}.get(sandbox, "in a bubblewrap sandbox where bwrap works")
    how = {"harness": "scored by the harness in separate processes (causality and statelessness probed)",
           "evaluated": "scored by the project's evaluation command, run apart from the genome (evaluated)"}.get(
        evaluation, "scored by what each run prints itself (self-reported)")
    if shared:
        how = (f"scored by the project's evaluation command; in {shared} trial{'s' if shared != 1 else ''} "
               f"the {SHARED} (evaluated; such a program can reach its own score)")
    return f"trials run {where}; {how}"


def render_status(s: dict, recent: int = RECENT_ROWS, *, width: int | None = None, height: int | None = None) -> str:
    """The text of `evo status`. With `width` and `height` (a terminal's, for --watch) every line is
    cut to the width, never wrapped, and the recent trials give way first, then the lesser lines,
    so the search's name, its trials and pace, the best and the devices always show."""
    head = _status_head(s)
    devices = [_device_line(d) for d in s["devices"]]
    if s["running"] and s.get("run"):
        devices += [f"  {'proposing':8s} {proposal_text(p)}" for p in s["run"].get("proposals") or []]
    table = [f"{'#':>4}  {'operator':9s} {'parents':9s} {'status':16s} {s['metric'][:12]:>12}  description"]
    for row in s["trials"][-recent:]:
        parents = ",".join(str(p) for p in row["parents"]) or "-"
        mark = ("?" if row["number"] in s.get("within_noise", ()) else "*") if row["kept"] else " "
        table.append(f"{row['number']:>4}{mark} {row['operator']:9s} {parents:9s} {row['status']:16s} "
                     f"{fmt(row['value']):>12}  {' '.join((row['description'] or row['error'] or '').split())[:80]}")
    if height is not None:
        room = height - len(devices)  # lines for the summary and the table
        while len(head) > room - 3 and any(rank for rank, _ in head):  # lesser lines give way, highest rank first
            worst = max(rank for rank, _ in head)
            head.pop(max(i for i, (rank, _) in enumerate(head) if rank == worst))
        rows = room - len(head) - 2  # below a blank line and the table's header
        table = [table[0], *table[1:][-rows:]] if rows >= 1 else []
    lines = [text for _, text in head] + devices + ([""] + table if table else [])
    return "\n".join(crop(line, width) for line in lines)


def _status_head(s: dict) -> list[tuple[int, str]]:
    """The summary lines of `evo status`, each with its rank: 0 must show, higher gives way first."""
    task = (f"profile {s['profile']}" if s["profile"] != "command" else f"{s['direction']} {s['metric']}")
    head = [(0, f"search {s['name']} ({'running' if s['running'] else 'stopped'}): {task}, "
                f"budget {s['budget']:g}s, folder {s['folder']}"),
            (3, ("WARNING: " if s["sandbox"] == "none" or s["evaluation"] == "self-reported" else "") + s["trust"])]
    if s["flagged"]:
        head.append((2, f"flagged: {s['flagged']} trial(s) reach for frames, gc, sys.modules, ctypes or the harness "
                        "(see evo show)"))
    counts = s["counts"]
    ok, dup, running, interrupted = (counts.get(k, 0) for k in (TrialStatus.OK, TrialStatus.DUPLICATE,
                                                                 TrialStatus.RUNNING, TrialStatus.INTERRUPTED))
    failed = sum(counts.values()) - ok - dup - running - interrupted
    head.append((0, f"trials: {s['finished']} finished ({ok} ok, {failed} failed, {dup} duplicate), {running} running"
                    + (f", {interrupted} interrupted" if interrupted else "")
                    + (f"; {s['while_waiting']} re-evaluations while the API was down (not counted towards --trials)"
                       if s.get("while_waiting") else "")))
    run = s.get("run")
    if run and s["running"]:
        pace = f"this run: {s['finished']}/{run['target']} trials" if run.get("target") else "this run:"
        pace += f", elapsed {duration(run['elapsed'])}"
        pace += ", stopping" if run["stopping"] else (f", eta {duration(run['eta'])}" if run["eta"] is not None else "")
        head.append((0, pace))
        if run.get("waiting"):
            head.append((0, f"waiting for the API (retry in {duration(run['waiting']['retry_in'])}): "
                            f"{run['waiting']['error']}"))
    if s["best"] is not None:
        spread = f" ± {s['best_spread']:.4f}" if s["best_spread"] is not None else ""
        rung = f" ({s['best_rung_score']:.6f} at rung {s['best_rung']})" if s.get("best_rung") else ""
        best = f"best: {s['metric']} {s['best_value']:.6f}{spread}{rung} at trial #{s['best']}: {s['best_description']}"
        head.append((0, " ".join(best.split())))
    else:
        head.append((0, "best: none yet"))
    if s.get("front"):
        head.append((0, f"front ({len(s['front'])} genomes; {', '.join(s['objectives'])}):"))
        head += [(1, f"  #{m['trial']}: " + ", ".join(f"{v:.6g}" for v in m["values"]) + f"  {m['description']}")
                 for m in s["front"]]
    if s["keep_rate"] is not None:
        head.append((1, f"keep rate: {100 * s['keep_rate']:.0f}% of children improved the best so far"))
    known = s.get("known_ideas") or {}
    if known.get("trials_saved"):
        head.append((1, f"known ideas: {known['trials_saved']} trial(s) saved ({known['skipped']} proposal(s) repeated an "
                        "idea the lab notebook measured and were not trained; evo show N says which)"))
    head += [(1, line) for line in _noise_lines(s)]
    for r in s.get("rungs", []):
        if r["rung"]:
            rho = f"rho {r['rho']:+.2f} over {r['pairs']}" if r["rho"] is not None else f"rho n/a ({r['pairs']} pairs)"
            head.append((1, f"rung {r['rung']} ({r['label']}): {r['genomes']} genomes, best {fmt(r['best'])}, {rho}"))
    faults = s.get("api_faults") or {}
    if faults.get("proposals"):
        tokens = int(faults.get("input_tokens", 0) + faults.get("output_tokens", 0))
        head.append((1, f"proposals lost to the API: {faults['proposals']} (no trial: the server failed, not the idea; "
                        f"{duration(faults.get('seconds', 0))} of calls, {tokens:,} tokens)"))
    if s["spend_usd"]:
        per = f", ${s['cost_per_kept_usd']:.2f} per kept improvement" if s["cost_per_kept_usd"] else ""
        head.append((1, f"LLM spend: ${s['spend_usd']:.2f}{per}"))
    if s.get("hosts"):
        head.append((2, "hosts: " + ", ".join(f"{h} ({v['trials']} trials" + (f", {v['running']} running)"
                                                                          if v["running"] else ")")
                                              for h, v in sorted(s["hosts"].items()))))
    return head


def _device_line(d: dict) -> str:
    if d.get("trial") is None:
        return f"  {d['slot']:8s} idle"
    loss = f", loss {d['loss']:.3f}" if d.get("loss") is not None else ""
    return f"  {d['slot']:8s} trial #{d['trial']}: {100 * (d.get('fraction') or 0):.0f}% of budget{loss}, {d['seconds']:.0f}s"


def _noise_lines(s: dict) -> list[str]:
    """The noise floor and the min gain, and a warning for new bests inside the floor."""
    gain = "" if not s.get("min_gain") else f"; min gain {s['min_gain']:.4f}"
    if s.get("noise_sd") is None:
        return [f"noise floor: unknown (no genome evaluated twice: run with --noise-runs K or --reeval K){gain}"]
    lines = [f"noise floor: {s['metric']} sd {s['noise_sd']:.4f} over {s['noise_evaluations']} evaluations of "
             f"{s['noise_genomes']} genome{'s' if s['noise_genomes'] != 1 else ''}{gain}"]
    inside = s.get("within_noise") or []
    if inside:
        lines.append(f"warning: {len(inside)} new best{'s' if len(inside) != 1 else ''} (marked ?) beat the best before "
                     f"by less than {NOISE_MULTIPLE:g} x the floor = {NOISE_MULTIPLE * s['noise_sd']:.4f}: may be luck "
                     "(re-measure with --reeval K, or require more with --min-gain auto)")
    return lines


def render_trial(search, number: int) -> str:
    trials = {t.number: t for t in search.trials()}
    if number not in trials:
        last = max(trials) if trials else None
        raise TrialNotFound(f"search {search.config.name!r} has no trial #{number}" + (f" (trials 0..{last})" if last is not None else ""))
    t = trials[number]
    lineage = Lineage(list(trials.values()), direction=search.config.direction,
                      directions=search.objectives.directions)
    folder = search.paths.trial(number)
    lines = [f"trial #{t.number} of {search.config.name}: {t.status}" + (" (kept: improved the best)" if lineage.kept(number) else ""),
             f"operator: {t.operator}" + (f" of {', '.join('#' + str(p) for p in t.parents)}" if t.parents else ""),
             f"proposer: {t.proposer or '-'}   seed: {t.seed}   commit: {t.commit[:12] or '-'}"
             + (f"   branch: {search.branch(number)}" if t.commit and search.repo.has_branch(search.branch(number))
                else "")]
    if t.value is not None:
        scorer = (t.attrs.get("provenance") or {}).get("evaluator", "self-reported")
        lines.append(f"{search.config.metric}: {t.value:.6f} ({'scored by the harness' if scorer == 'harness' else scorer})")
    if t.description:
        lines.append(f"description: {t.description}")
    if t.rationale:
        lines.append(f"rationale: {t.rationale}")
    ind = lineage.individual(number)
    if ind and len(ind.values) > 1:
        lines.append(f"genome score: {ind.score:.6f} ± {ind.spread:.6f} over {len(ind.values)} evaluations (trials {ind.evaluations})")
    if t.attrs.get("duplicate_of") is not None:
        lines.append(f"duplicate of trial #{t.attrs['duplicate_of']}: not trained again")
    lines += known_idea_lines(t.attrs)
    if t.error:
        lines.append(f"error: {t.error}")
    if t.metrics:
        lines.append("metrics: " + ", ".join(f"{k} {v:g}" for k, v in t.metrics.items()))
    lines += provenance_lines(t.attrs.get("provenance") or {})
    for name, text in (t.attrs.get("artifacts") or {}).items():  # the evaluator's text feedback
        lines += ["", f"evaluator artifact '{name}':"] + ["  " + line for line in str(text).splitlines()[-20:]]
    usage = t.attrs.get("usage") or {}
    if usage:
        lines.append("LLM usage: " + ", ".join(f"{k} {v}" for k, v in usage.items()))
    lines += answer_lines(folder)
    diff = folder.diff.read_text() if folder.diff.exists() else _diff_from_git(search, t, trials)
    if diff.strip():
        lines += ["", "diff against parent(s):", diff.rstrip()]
    log = folder.run_log
    if log.exists():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        lines += ["", f"log tail ({log}):"] + tail
    elif t.attrs.get("log_tail"):  # run by another host of a shared search: its full log stayed there
        where = f"{t.host}:{folder.run_log}" if t.host else str(folder.run_log)
        lines += ["", f"log tail (the full log is on {where}):"] + t.attrs["log_tail"].splitlines()[-15:]
    return "\n".join(lines)


def known_idea_lines(attrs: dict) -> list[str]:
    """What the lab notebook's check said of a child: the proposals refused before it, and whether it repeats a
    known idea it was trained for all the same (`population.repeats`)."""
    lines = []
    skipped = attrs.get(SKIPPED_ATTR) or []
    if skipped:
        lines.append(f"skipped before this child: {len(skipped)} proposal(s) that repeated a known idea, not trained:")
        lines += [f"  - {s.get('description') or '(no description)'}" + (f" [{s['proposer']}]" if s.get("proposer") else "")
                  + f": {s.get('reason', '')}" for s in skipped]
    repeat = attrs.get(REPEAT_ATTR)
    if repeat:
        lines.append(f"repeats a known idea: {repeat.get('reason', '')}")
    return lines


ANSWER_HEAD, ANSWER_TAIL = 1200, 600   # characters of a model's answer `evo show` prints (its start, its end)


def answer_lines(folder) -> list[str]:
    """What the model answered (the last answer's start and end, bounded) and where its prompt and
    response are kept in full; nothing for a trial no model wrote."""
    paths = [folder.artifact(name) for name in ("prompt.md", "response.json", "agent.log")]
    kept = [str(p) for p in paths if p.exists()]
    if not kept:
        return []
    lines = ["", "proposer files: " + ", ".join(kept)]
    answers = _answers(folder.artifact("response.json"))
    if answers:
        text = answers[-1].strip()
        which = f"answer {len(answers)} of {len(answers)}" if len(answers) > 1 else "answer"
        if len(text) > ANSWER_HEAD + ANSWER_TAIL:
            cut = len(text) - ANSWER_HEAD - ANSWER_TAIL
            text = f"{text[:ANSWER_HEAD]}\n[... {cut:,} characters not shown ...]\n{text[-ANSWER_TAIL:]}"
        lines += [f"the model's {which} ({len(answers[-1].strip()):,} characters):", text or "(empty)"]
    return lines


def _answers(path) -> list[str]:
    """The model's answers in a response.json: the `answers` it records, or (a file written before they
    were recorded) the text and tool arguments found in each response."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(record, dict):
        return []
    if isinstance(record.get("answers"), list):
        return [str(a) for a in record["answers"]]
    found = []
    for r in record.get("responses") or []:
        body = (r or {}).get("response", r) if isinstance(r, dict) else {}
        parts = []
        for choice in (body.get("choices") or [])[:1] if isinstance(body, dict) else []:
            message = choice.get("message") or {}
            parts.append(str(message.get("content") or ""))
            parts += [str((c.get("function") or {}).get("arguments") or "") for c in message.get("tool_calls") or []]
        for block in (body.get("content") or []) if isinstance(body, dict) and isinstance(body.get("content"), list) else []:
            parts.append(str(block.get("text") or "") if block.get("type") == "text" else
                         json.dumps(block.get("input")) if block.get("type") == "tool_use" else "")
        if parts:
            found.append("\n".join(p for p in parts if p))
    return found


def provenance_lines(p: dict) -> list[str]:
    """How one trial ran, for `evo show`: sandbox, evaluator and its verdict, clock, harness, flags."""
    if not p:
        return []
    how = f"ran in sandbox {p.get('sandbox', '?')}" + ("" if p.get("sandbox") != "none" else " (NO SANDBOX)")
    how += f", budget clock {p['clock']}" if p.get("clock") else ""
    if p.get("evaluator") == "harness":
        verdict = p.get("verdict", "not scored")
        how += f"; scored by the harness: {verdict}"
        if "probe_batches" in p:
            how += f" ({p['probe_batches']} probe batches, largest change {p.get('largest_change', 0):.2g} nats)"
        if p.get("reason"):
            how += f": {p['reason']}"
    else:
        how += f"; scored by {p.get('evaluator', 'its own summary')}"
    lines = [f"provenance: {how}"]
    if p.get("program"):
        lines.append(f"program: {p['program']}")
    if p.get("harness_sha256"):
        lines.append(f"harness: sha256 {p['harness_sha256'][:16]}..., memory {p.get('memory', '?')}")
    for flag in p.get("suspicious", []):
        lines.append(f"flagged: {flag}")
    return lines


def _diff_from_git(search, t: TrialRecord, trials: dict) -> str:
    """The diff of a trial whose files another host wrote, from the genomes themselves."""
    parents = [trials[n].commit for n in t.parents if n in trials and trials[n].commit]
    if not t.commit or not parents or search.repo.missing([t.commit, *parents]):
        return ""
    return "".join(f"# diff against parent {c[:10]}\n" + search.repo.diff(c, t.commit) for c in parents)
