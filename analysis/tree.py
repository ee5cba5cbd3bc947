"""The lineage tree of a search: trials as a DAG, thinned when large, laid out by generation.

Nodes are trials (a re-evaluation is folded into the node of the genome it re-measured;
interrupted trials, re-run later, are left out); an edge runs from each parent to its
child, so a crossover child has two incoming edges. The first parent is the one whose
line the child continues (its diff is against it); the tree drawn is the first-parent
tree with crossovers' second parents as dashed arcs.

Large searches are thinned: the path to the best, the best genomes and all their
ancestors stay; every other branch is folded into one "+n" node under the nearest kept
ancestor, counting its trials and failures and giving its best val_bpb.

>>> view = tree_view(search.trials(), max_nodes=120)     # doctest: +SKIP
>>> plot_lineage(search.trials(), "lineage.png")          # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import networkx as nx

from analysis.progress import is_failure
from analysis.text import shorten
from population.lineage import MINIMIZE, Lineage, sign
from population.store import DUPLICATE, TrialRecord, TrialStatus

Node = int | str  # a trial number, or "+N" for the folded branches under trial N


def lineage_graph(trials: Iterable[TrialRecord], *, direction: str = MINIMIZE, metric: str = "val_bpb") -> nx.DiGraph:
    """The full DAG of a search's trials.

    Graph attributes: direction, metric, best (the best genome's trial as `Lineage.best` names
    it: the report and `evo status` agree on it) and best_path (`Lineage.path_to` it).
    Node attributes: operator, status, description, proposer, value (the trial's own
    score), score (its genome's mean over evaluations, None without a result), rank (the
    score with the sign that makes lower better, for ordering), failed,
    duplicate, evaluations (how many times the genome was measured), first_parent,
    generation (longest chain of parents back to a root). Edge attribute: second (True for
    a crossover's second parent).

    Args:
        trials: the trials of one search.
        direction, metric: the search's metric (graph attributes, for ordering and labels).
    """
    lineage = Lineage(list(trials), direction=direction)
    best = lineage.best.trial if lineage.best else None
    g = nx.DiGraph(direction=direction, metric=metric, best=best,
                   best_path=lineage.path_to(best) if best is not None else [])
    s = sign(direction)
    for t in lineage.trials:
        if not t.counts or t.operator == "reeval":
            continue
        ind = lineage.individual(t.number) if t.finished_ok else None
        home = ind is not None and ind.trial == t.number
        g.add_node(t.number, operator=t.operator, status=t.status, description=t.description, proposer=t.proposer,
                   value=t.value, score=ind.score if home else None, rank=s * ind.score if home else None,
                   failed=is_failure(t),
                   duplicate=t.status == DUPLICATE or (ind is not None and not home),
                   evaluations=len(ind.values) if home else 0, first_parent=None)
    for n in list(g.nodes):
        parents = [p for p in lineage.by_number[n].parents if p in g]
        if parents:
            g.nodes[n]["first_parent"] = parents[0]
        for i, p in enumerate(parents):
            g.add_edge(p, n, second=i > 0)
    for n in nx.topological_sort(g):
        g.nodes[n]["generation"] = max((g.nodes[p]["generation"] + 1 for p in g.predecessors(n)), default=0)
    return g


def best_node(g: nx.DiGraph) -> int | None:
    """The trial of the best genome in `g`, as `Lineage.best` decided it (never re-ranked here: an
    infeasible genome, or one better only by less than the min gain, is not the best).

    Args:
        g: a graph from `lineage_graph`.
    """
    return g.graph.get("best")


def thin(g: nx.DiGraph, *, max_nodes: int = 70, top: int | None = None) -> tuple[nx.DiGraph, int]:
    """Fold the branches that led nowhere so the graph has at most about `max_nodes` nodes.

    Kept: every root, the best genome and all its ancestors (always, so a best with a
    longer ancestry than `max_nodes` gives a larger graph), then the next-best genomes
    with their ancestors for as long as the kept trials plus one "+n" node per kept
    trial with folded children fit in `max_nodes`. Every other trial is folded into a
    summary node "+A" under its nearest kept first-parent ancestor A, with attributes
    count, failed and score (the best genome score among the folded trials).

    Args:
        g: a graph from `lineage_graph` (left unchanged).
        max_nodes: the most nodes to keep, summary nodes included; a graph that already
            fits is returned whole.
        top: keep exactly the `top` best genomes (and ancestors) instead of filling up to
            `max_nodes`.

    Returns:
        (the thinned graph, how many trials were folded).
    """
    if g.number_of_nodes() <= max_nodes and top is None:
        return g.copy(), 0
    ranked = sorted((d["rank"], n) for n, d in g.nodes(data=True) if d.get("rank") is not None)
    must = {n for n in g if g.in_degree(n) == 0}
    best = best_node(g)
    if best in g:
        must |= {best} | nx.ancestors(g, best)

    def closure(k: int) -> set:
        keep = set(must)
        for _, n in ranked[:k]:
            keep |= {n} | nx.ancestors(g, n)
        return keep

    def size(keep: set) -> int:
        return len(keep) + len({_anchor(g, n, keep) for n in g if n not in keep})

    if top is not None:
        keep = closure(top)
    else:
        keep, k = closure(1), 1
        while k < len(ranked):
            bigger = closure(k + 1)
            if size(bigger) > max_nodes:
                break
            keep, k = bigger, k + 1
    out = g.subgraph(keep).copy()
    folded = 0
    for n in g:
        if n in keep:
            continue
        folded += 1
        anchor = _anchor(g, n, keep)
        sid = f"+{anchor}"
        if sid not in out:
            out.add_node(sid, summary=True, count=0, failed=0, score=None, rank=None, first_parent=anchor,
                         generation=g.nodes[anchor]["generation"] + 1, operator="", status="folded",
                         description="", duplicate=False, evaluations=0, value=None, proposer="")
            out.add_edge(anchor, sid, second=False)
        s = out.nodes[sid]
        s["count"] += 1
        s["failed"] += int(g.nodes[n]["failed"])
        rank = g.nodes[n].get("rank")
        if rank is not None and (s["rank"] is None or rank < s["rank"]):
            s["score"], s["rank"] = g.nodes[n]["score"], rank
    return out, folded


def _anchor(g: nx.DiGraph, n: Node, keep: set) -> Node:
    """The nearest first-parent ancestor of `n` that is kept."""
    while n not in keep:
        n = g.nodes[n]["first_parent"]
    return n


@dataclass
class TreeView:
    """A lineage graph ready to draw."""

    graph: nx.DiGraph
    positions: dict[Node, tuple[float, float]]   # x = generation, y = row (0 at the top, negative downwards)
    path: list[int]                              # seed -> best, first parents
    total: int                                   # trials in the full graph
    folded: int                                  # trials folded into "+n" nodes
    engine: str                                  # "tree" (our layered layout) or "dot" (graphviz)


def tree_view(trials: Iterable[TrialRecord], *, max_nodes: int = 70, engine: str = "auto",
              direction: str = MINIMIZE, metric: str = "val_bpb") -> TreeView:
    """Build, thin and lay out the lineage of a search.

    Args:
        trials: the trials of one search.
        max_nodes: thin the graph to about this many nodes (see `thin`).
        engine: "tree" for our layered layout by generation, "dot" for graphviz (must be
            installed), "auto" for dot when the `dot` program is on PATH, else tree.
        direction, metric: the search's metric.
    """
    full = lineage_graph(trials, direction=direction, metric=metric)
    path = [n for n in full.graph["best_path"] if n in full]
    g, folded = thin(full, max_nodes=max_nodes)
    use_dot = engine == "dot" or (engine == "auto" and shutil.which("dot") is not None)
    positions = _dot_layout(g) if use_dot else None
    if positions is None:
        use_dot = False
        positions = _tree_layout(g, set(path))
    return TreeView(graph=g, positions=positions, path=path, total=full.number_of_nodes(), folded=folded,
                    engine="dot" if use_dot else "tree")


def _tree_layout(g: nx.DiGraph, on_path: set) -> dict[Node, tuple[float, float]]:
    """Layered layout: x is the generation, rows come from the first-parent tree.

    Leaves take consecutive rows and a parent sits on the row of its first child, so
    each line of descent is a horizontal run. The child continuing the path to the best
    comes first, so that path is the straight top line; better branches come before
    worse ones and folded "+n" nodes last."""
    kids: dict[Node, list[Node]] = {n: [] for n in g}
    roots = []
    for n, d in g.nodes(data=True):
        (kids[d["first_parent"]] if d.get("first_parent") in kids else roots).append(n)
    best_below: dict[Node, float] = {}
    for n in reversed(list(nx.topological_sort(g))):  # children before parents
        own = g.nodes[n].get("rank")
        below = [best_below[c] for c in kids[n]] + ([own] if own is not None else [])
        best_below[n] = min(below, default=math.inf)

    def order(n: Node) -> tuple:
        return (n not in on_path, bool(g.nodes[n].get("summary")), best_below[n], str(n))

    rows: dict[Node, float] = {}
    next_row = 0
    stack: list[tuple[Node, bool]] = [(r, False) for r in sorted(roots, key=order, reverse=True)]
    while stack:  # iterative post-order: a 500-generation line must not hit the recursion limit
        n, expanded = stack.pop()
        if expanded:
            rows[n] = rows[sorted(kids[n], key=order)[0]] if kids[n] else 0.0
            continue
        if not kids[n]:
            rows[n] = float(next_row)
            next_row += 1
            continue
        if n not in on_path and len(kids[n]) == 1 and g.nodes[kids[n][0]].get("summary"):
            # A kept trial whose children were all folded: the "+n" goes on the row below,
            # so the trial's label and the fold's label do not share a row.
            rows[n], rows[kids[n][0]] = float(next_row), float(next_row + 1)
            next_row += 2
            continue
        stack.append((n, True))
        stack.extend((c, False) for c in sorted(kids[n], key=order, reverse=True))
    return {n: (float(g.nodes[n]["generation"]), -rows[n]) for n in g}


def _dot_layout(g: nx.DiGraph) -> dict[Node, tuple[float, float]] | None:
    """Positions from graphviz `dot` (left to right), or None when it is missing or fails."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    ids = {n: f"n{i}" for i, n in enumerate(g)}
    lines = ["digraph lineage {", "rankdir=LR; nodesep=0.08; ranksep=0.6;", "node [shape=point, width=0.12];"]
    lines += [f"{ids[n]};" for n in g]
    lines += [f"{ids[a]} -> {ids[b]}{' [constraint=false]' if d.get('second') else ''};" for a, b, d in g.edges(data=True)]
    lines.append("}")
    try:
        proc = subprocess.run([exe, "-Tplain"], input="\n".join(lines), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    back = {v: k for k, v in ids.items()}
    positions = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "node" and parts[1] in back:
            positions[back[parts[1]]] = (float(parts[2]), float(parts[3]))
    return positions if len(positions) == g.number_of_nodes() else None


# -- colours ------------------------------------------------------------------------------------

def score_norm(g: nx.DiGraph):
    """The colour scale of the score: from the best genome to a cap on the worse side of the seed.

    The cap (the seed's score plus twice the search's total gain, or the median genome
    when that is worse, but no worse than the 90th percentile) keeps one diverged genome
    from washing every other node into one colour. Worked out in rank terms (lower is
    better), so a maximised metric gets the same scale mirrored.

    Args:
        g: a (possibly thinned) lineage graph.
    """
    from matplotlib.colors import Normalize

    s = sign(g.graph.get("direction", MINIMIZE))
    ranks = sorted(d["rank"] for d in g.nodes.values() if d.get("rank") is not None)
    if not ranks:
        return Normalize(0, 1)
    best = ranks[0]
    roots = [d["rank"] for n, d in g.nodes(data=True) if g.in_degree(n) == 0 and d.get("rank") is not None]
    seed = roots[0] if roots else ranks[len(ranks) // 2]
    q90 = ranks[int(0.9 * (len(ranks) - 1))]
    median = ranks[len(ranks) // 2]
    # Wide enough for half the genomes, even when the search barely moved from the seed.
    top = max(min(max(seed + 2 * max(seed - best, 1e-3), median), max(q90, seed)), best + 1e-3)
    return Normalize(min(s * best, s * top), max(s * best, s * top))


def colour_map(g: nx.DiGraph):
    """The colour map: the best genomes bright yellow-green, the worst dark blue, in either direction."""
    from matplotlib import colormaps
    return colormaps["viridis_r" if g.graph.get("direction", MINIMIZE) == MINIMIZE else "viridis"]


def node_colour(d: dict, norm, cmap) -> str:
    """Hex fill of a node: the colour of its genome score, grey without one.

    Args:
        d: the node's attributes.
        norm: a Normalize from `score_norm`.
        cmap: a matplotlib colormap.
    """
    from matplotlib.colors import to_hex

    if d.get("score") is None or d.get("summary"):
        return "#bdbdbd"
    return to_hex(cmap(min(1.0, max(0.0, norm(d["score"])))))


# -- the figure --------------------------------------------------------------------------------

def plot_lineage(trials: Iterable[TrialRecord], path: str | Path | None = None, *, title: str = "",
                 max_nodes: int = 70, engine: str = "auto", view: TreeView | None = None,
                 direction: str = MINIMIZE, metric: str = "val_bpb"):
    """Draw the lineage tree: nodes coloured by score, failures grey, the path to the best in red.

    Args:
        trials: the trials of one search.
        path: where to save a PNG; None returns the figure without saving.
        title: the figure's title (default: a generic one with the counts).
        max_nodes: thin larger searches to about this many nodes.
        engine: layout engine, see `tree_view`.
        view: a ready TreeView (then `max_nodes`, `engine`, `direction` and `metric` are not used).
        direction, metric: the search's metric.

    Returns:
        The matplotlib Figure.
    """
    from matplotlib.cm import ScalarMappable

    from analysis import _style

    view = view or tree_view(trials, max_nodes=max_nodes, engine=engine, direction=direction, metric=metric)
    g = view.graph
    frame = _Frame.of(view)
    fig, ax = _style.new_figure(frame.width, frame.height)
    ax.set_title(_heading(view, title), loc="left", fontsize=11)
    if not g:
        ax.text(0.5, 0.5, "no finished trials yet", transform=ax.transAxes, ha="center", va="center")
        ax.set_axis_off()
        return _style.finish(fig, path)
    cmap, norm = colour_map(g), score_norm(g)
    _draw_edges(ax, view)
    kinds = _draw_nodes(ax, view, norm, cmap)
    _label_nodes(ax, view, frame)
    _set_axes(ax, view)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=1.0 if frame.height < 6 else 0.6,
                       pad=0.01, extend="max" if g.graph.get("direction", MINIMIZE) == MINIMIZE else "min",
                       location="right")
    bar.set_label(f"{g.graph.get('metric', 'val_bpb')} (genome mean; "
                  f"{'lower' if g.graph.get('direction', MINIMIZE) == MINIMIZE else 'higher'} is better)")
    handles = _legend(view, kinds)
    fig.legend(handles=handles, loc="outside lower left", ncols=min(4, len(handles)), frameon=False, fontsize=8.5)
    return _style.finish(fig, path)


@dataclass(frozen=True)
class _Frame:
    """The figure's size in inches, from the spread of the layout."""

    width: float
    height: float
    generations: float
    rows: float

    @classmethod
    def of(cls, view: TreeView) -> "_Frame":
        pos = view.positions
        gens = max((x for x, _ in pos.values()), default=0) - min((x for x, _ in pos.values()), default=0)
        rows = max((-y for _, y in pos.values()), default=0) - min((-y for _, y in pos.values()), default=0)
        if view.engine == "dot":  # dot's coordinates are in points
            gens, rows = gens / 60, rows / 14
        return cls(width=min(16.0, max(9.0, 0.45 * gens + 6)), height=min(16.0, max(4.5, 0.17 * rows + 2.4)),
                   generations=gens, rows=rows)


def _heading(view: TreeView, title: str) -> str:
    g = view.graph
    best = view.path[-1] if view.path else None
    shown = sum(1 for n in g if not isinstance(n, str))
    sub = f"{view.total} trials" + (f"; {shown} shown, {view.folded} in folded branches (+n)" if view.folded else "")
    if best is not None:
        sub += f"; best #{best}, {g.graph.get('metric', 'val_bpb')} {g.nodes[best]['score']:.4f}"
    return f"{title or 'lineage of the search'}\n{sub}"


def _draw_edges(ax, view: TreeView) -> None:
    """First-parent edges as elbows (the path to the best in red), second parents as dashed arcs."""
    from analysis import _style

    g, pos = view.graph, view.positions
    on_path = set(zip(view.path, view.path[1:]))
    lw = 1.0 if g.number_of_nodes() < 150 else 0.7
    for a, b, d in g.edges(data=True):
        (xa, ya), (xb, yb) = pos[a], pos[b]
        if d.get("second"):
            ax.annotate("", xy=(xb, yb), xytext=(xa, ya), zorder=1,
                        arrowprops=dict(arrowstyle="-", linestyle=(0, (3, 2)), color="#8e44ad", linewidth=0.9,
                                        connectionstyle="arc3,rad=0.25", shrinkA=3, shrinkB=3))
            continue
        xs, ys = _edge(view.engine, xa, ya, xb, yb)
        red = (a, b) in on_path
        ax.plot(xs, ys, color=_style.BEST_LINE if red else "#9e9e9e", linewidth=2.6 if red else lw,
                zorder=3 if red else 1, solid_capstyle="round")


def _draw_nodes(ax, view: TreeView, norm, cmap) -> dict[str, list]:
    """Scored nodes coloured by score, then the special kinds in their own markers; returns the kinds drawn."""
    g, pos = view.graph, view.positions
    size = 70 if g.number_of_nodes() <= 60 else (40 if g.number_of_nodes() <= 150 else 22)
    nodes = g.nodes(data=True)
    scored = [n for n, d in nodes if d.get("score") is not None and not d.get("summary")]
    ax.scatter([pos[n][0] for n in scored], [pos[n][1] for n in scored], s=size,
               c=[node_colour(g.nodes[n], norm, cmap) for n in scored],
               edgecolors=["#c0392b" if n in view.path else "#333333" for n in scored],
               linewidths=[1.8 if n in view.path else 0.5 for n in scored], zorder=4)
    kinds = {
        "crossed": [n for n in scored if g.nodes[n]["operator"] == "crossover"],
        "dupes": [n for n, d in nodes if d.get("duplicate") and d.get("score") is None],
        "failed": [n for n, d in nodes if d.get("failed") and not d.get("summary")],
        "pruned": [n for n, d in nodes if d.get("status") == TrialStatus.PRUNED],
        "folds": [n for n, d in nodes if d.get("summary")],
    }
    styles = {"crossed": dict(s=size * 0.18, marker="D", color="#8e44ad", zorder=5),
              "dupes": dict(s=size * 0.7, facecolors="white", edgecolors="#9e9e9e", linewidths=0.9, zorder=4),
              "failed": dict(s=size * 0.7, marker="X", color="#b0b0b0", edgecolors="#757575", linewidths=0.4, zorder=4),
              "pruned": dict(s=size * 0.6, marker="v", color="#cfcfcf", edgecolors="#9e9e9e", linewidths=0.4, zorder=4),
              "folds": dict(s=size * 0.6, marker="s", color="#e0e0e0", edgecolors="#9e9e9e", linewidths=0.6, zorder=4)}
    for kind, members in kinds.items():
        ax.scatter([pos[n][0] for n in members], [pos[n][1] for n in members], **styles[kind])
    return kinds


def _label_nodes(ax, view: TreeView, frame: _Frame) -> None:
    """Trial numbers beside the nodes, the best's description in bold, fold counts beside folds."""
    from analysis import _style

    g, pos = view.graph, view.positions
    best = view.path[-1] if view.path else None
    fontsize = 8 if frame.rows < 40 else 7
    slant = view.engine == "tree" and frame.generations > 0 and (frame.width - 3) / frame.generations < 0.42
    above = dict(textcoords="offset points", ha="left" if slant else "center", va="bottom",
                 rotation=45 if slant else 0, rotation_mode="anchor", zorder=6)
    label_all = g.number_of_nodes() <= 45
    for n, d in g.nodes(data=True):
        x, y = pos[n]
        if d.get("summary"):
            extra = f", {d['failed']} failed" if d["failed"] else ""
            best_s = f", best {d['score']:.3f}" if d.get("score") is not None else ""
            ax.annotate(f"+{d['count']}{extra}{best_s}", (x, y), xytext=(6, 0), textcoords="offset points",
                        va="center", fontsize=fontsize - 0.5, color="#616161", zorder=6)
        elif n == best:
            # Above the node: its first child continues its row to the right.
            ax.annotate(f"#{n} best: {shorten(d['description'], 48)}  ({d['score']:.4f})", (x, y), xytext=(-6, 5),
                        textcoords="offset points", ha="left", va="bottom", fontsize=fontsize + 0.5, fontweight="bold",
                        color=_style.BEST_LINE, zorder=7,
                        bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="none", alpha=0.85))
        elif n in view.path:  # the path is the top row: room above (slanted when generations are close)
            ax.annotate(f"#{n}", (x, y), xytext=(0, 5), fontsize=fontsize, color=_style.BEST_LINE, **above)
        elif label_all or d.get("score") is not None:
            # To the right, unless a child continues this row: then above, like the path's labels.
            if any(pos[c][1] == y and not g.nodes[c].get("summary") for c in g.successors(n)):
                ax.annotate(f"#{n}", (x, y), xytext=(0, 4), fontsize=fontsize - 0.5, color="#424242", **above)
            else:
                ax.annotate(f"#{n}", (x, y), xytext=(5, 0), textcoords="offset points", ha="left", va="center",
                            fontsize=fontsize - 0.5, color="#424242", zorder=6)


def _set_axes(ax, view: TreeView) -> None:
    """Limits with room for the last generation's labels; generations as the x axis of the tree layout."""
    pos = view.positions
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    xpad = max(0.6, 0.04 * (max(xs) - min(xs)))
    # Room on the right for the labels of the last generation (a fixed share of the width).
    ax.set_xlim(min(xs) - xpad, max(xs) + xpad + 0.15 * (max(xs) - min(xs) + 2 * xpad))
    ypad = max(0.8, 0.03 * (max(ys) - min(ys)))
    ax.set_ylim(min(ys) - ypad, max(ys) + ypad)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    if view.engine == "tree":
        from matplotlib.ticker import MaxNLocator
        ax.set_xlabel("generation (longest chain of parents back to the seed)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.set_xticks([])
        ax.set_xlabel("generations run left to right (graphviz layout)")


def _legend(view: TreeView, kinds: dict[str, list]) -> list:
    """Legend entries for what the figure actually shows."""
    from matplotlib.lines import Line2D

    from analysis import _style

    handles = [Line2D([], [], color=_style.BEST_LINE, linewidth=2.6, label="path from the seed to the best")]
    if any(d.get("second") for _, _, d in view.graph.edges(data=True)):
        handles.append(Line2D([], [], color="#8e44ad", linestyle=(0, (3, 2)), label="second parent of a crossover"))
    entries = {
        "crossed": dict(marker="D", color="#8e44ad", markersize=4, label="crossover child"),
        "failed": dict(marker="X", color="#b0b0b0", markeredgecolor="#757575", markersize=8, label=f"failed (no {view.graph.graph.get('metric', 'val_bpb')})"),
        "dupes": dict(marker="o", markerfacecolor="white", markeredgecolor="#9e9e9e", markersize=7,
                      label="duplicate of a known genome"),
        "pruned": dict(marker="v", color="#cfcfcf", markersize=7, label="pruned"),
        "folds": dict(marker="s", color="#e0e0e0", markeredgecolor="#9e9e9e", markersize=7,
                      label="+n: folded branch (trials, failures, best)"),
    }
    for kind, style in entries.items():
        if kinds[kind]:
            handles.append(Line2D([], [], linestyle="", **style))
    return handles


def _edge(engine: str, xa: float, ya: float, xb: float, yb: float, *, bend: float = 0.5) -> tuple[list[float], list[float]]:
    """The polyline of a first-parent edge: an elbow `bend` after the parent in the layered layout, straight for dot."""
    if engine != "tree" or ya == yb:
        return [xa, xb], [ya, yb]
    bend = xa + bend
    return [xa, bend, bend, xb], [ya, ya, yb, yb]



# -- the interactive view ------------------------------------------------------------------------

def lineage_svg(view: TreeView, *, link: Callable[[Node], str] = lambda n: f"#trial-{n}") -> str:
    """The lineage as an inline SVG for the HTML report: hover a node for its trial, click to jump.

    Pure SVG with native tooltips (<title>) and links; the page's own script adds zoom and
    pan. Nothing is fetched.

    Args:
        view: a TreeView from `tree_view`.
        link: the href of a trial node (default: the report's table row anchor).
    """

    g, pos = view.graph, view.positions
    if not g:
        return '<p class="muted">no finished trials yet</p>'
    sx, sy = (70.0, 20.0) if view.engine == "tree" else (1.0, 1.0)
    xs = [p[0] * sx for p in pos.values()]
    ys = [-p[1] * sy for p in pos.values()]
    x0, y0 = min(xs) - 30, min(ys) - 20
    w, h = max(xs) - x0 + 260, max(ys) - y0 + 30
    cmap, norm = colour_map(g), score_norm(g)

    def xy(n):
        return pos[n][0] * sx - x0, -pos[n][1] * sy - y0

    on_path = set(zip(view.path, view.path[1:]))
    parts = [f'<svg class="lineage" viewBox="0 0 {w:.0f} {h:.0f}" '
             f'width="100%" height="{min(h, 720):.0f}" preserveAspectRatio="xMinYMin meet">', '<g class="viewport">']
    for a, b, d in g.edges(data=True):
        (xa, ya), (xb, yb) = xy(a), xy(b)
        if d.get("second"):
            mx, my = (xa + xb) / 2, (ya + yb) / 2 - 0.25 * abs(xb - xa) - 10
            parts.append(f'<path d="M{xa:.1f},{ya:.1f} Q{mx:.1f},{my:.1f} {xb:.1f},{yb:.1f}" class="edge second"/>')
            continue
        ex, ey = _edge(view.engine, xa, ya, xb, yb, bend=0.5 * sx)
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(ex, ey))
        parts.append(f'<polyline points="{points}" class="edge{" path" if (a, b) in on_path else ""}"/>')
    best = view.path[-1] if view.path else None
    for n, d in g.nodes(data=True):
        x, y = xy(n)
        if d.get("summary"):
            tip = f"{d['count']} more trials under #{str(n)[1:]} ({d['failed']} failed)" + (
                f", best {g.graph.get('metric', 'val_bpb')} {d['score']:.4f}" if d.get("score") is not None else "")
            parts.append(f'<g class="fold"><title>{html.escape(tip)}</title><rect x="{x - 5:.1f}" y="{y - 5:.1f}" '
                         f'width="10" height="10"/><text x="{x + 9:.1f}" y="{y + 4:.1f}">+{d["count"]}</text></g>')
            continue
        value = f"{d['score']:.4f}" + (f" (mean of {d['evaluations']})" if d["evaluations"] > 1 else "") \
            if d.get("score") is not None else d["status"]
        tip = f"#{n} {d['operator']}: {d['description'] or '-'}\n{g.graph.get('metric', 'val_bpb')} {value}\nproposer {d['proposer'] or '-'}"
        cls = "node" + (" failed" if d.get("failed") else "") + (" onpath" if n in view.path else "") + \
            (" dup" if d.get("duplicate") and d.get("score") is None else "")
        fill = node_colour(d, norm, cmap) if not d.get("failed") else "#c8c8c8"
        r = 7 if n == best else 5
        parts.append(f'<a href="{html.escape(link(n))}"><g class="{cls}"><title>{html.escape(tip)}</title>'
                     f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}"/>')
        if n in view.path or g.number_of_nodes() <= 80:
            parts.append(f'<text x="{x:.1f}" y="{y - 8:.1f}" text-anchor="middle">#{n}</text>')
        if n == best:
            parts.append(f'<text class="bestlabel" x="{x + 11:.1f}" y="{y + 4:.1f}">best: '
                         f'{html.escape(shorten(d["description"], 60))}</text>')
        parts.append("</g></a>")
    parts.append("</g></svg>")
    return "\n".join(parts)
