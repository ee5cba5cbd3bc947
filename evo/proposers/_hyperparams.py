"""Read and rewrite the UPPERCASE hyperparameter block of a genome with `ast`.

A hyperparameter is a top-level assignment to an UPPERCASE name of a literal (number,
string, bool, short tuple of numbers, or arithmetic such as 2**19), or of a
per_profile(tiny=..., cpu=..., gpu=...) call, of which only the active profile's value
counts. Rewriting replaces just the value's characters, so a diff shows one line.
"""

from __future__ import annotations

import ast
import functools
import json
import operator
import random
import re
from dataclasses import dataclass
from typing import Any

from evo import safe_ast

_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.FloorDiv: operator.floordiv}
# Names the offline mutator leaves alone: they change measurement, not the model.
FROZEN_PREFIXES = ("EVAL_",)


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    value: Any
    text: str                 # the value's source text
    span: tuple[int, int]     # character offsets of the value in the source
    profile: str | None = None  # set for per_profile(...) values: whose keyword this is


def _literal(node: ast.AST) -> Any:
    """Evaluate a small literal expression (numbers, strings, tuples, + - * / ** //)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a, b = _literal(node.left), _literal(node.right)
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
            if isinstance(node.op, ast.Pow) and abs(b) > 64:
                raise ValueError("exponent too large")
            return _OPS[type(node.op)](a, b)
    if isinstance(node, ast.Tuple) and len(node.elts) <= 4:
        values = tuple(_literal(e) for e in node.elts)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return values
    raise ValueError("not a literal")


def hyperparameter_values(files: dict[str, str], profile: str | None = None) -> dict[str, Any]:
    """Name -> value of every hyperparameter of a genome's Python files (the first file to name one wins)."""
    values: dict[str, Any] = {}
    for path in sorted(files):
        if path.endswith(".py"):
            for name, p in find_hyperparameters(files[path], profile).items():
                values.setdefault(name, p.value)
    return values


def _offset(lines: list[str], starts: list[int], lineno: int, col: int) -> int:
    # ast columns count UTF-8 bytes; convert to a character offset. `starts[i]` is where line i+1 begins.
    line = lines[lineno - 1]
    return starts[lineno - 1] + len(line.encode("utf-8")[:col].decode("utf-8", errors="ignore"))


def find_hyperparameters(source: str, profile: str | None = None) -> dict[str, Hyperparameter]:
    """The genome's hyperparameters by name (empty if the source does not parse)."""
    return dict(_find(source, profile))


@functools.lru_cache(maxsize=512)
def _find(source: str, profile: str | None) -> dict[str, Hyperparameter]:
    # Cached: a mutation parses its parent several times (knobs, rewrite, validity), and a
    # whole train.py takes ~8 ms to parse; results are frozen, callers get their own dict.
    try:
        tree = safe_ast.parse(source)  # proposals are prepared in threads
    except SyntaxError:
        return {}
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    found: dict[str, Hyperparameter] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and _NAME.match(node.targets[0].id)):
            continue
        name, value_node, owner = node.targets[0].id, node.value, None
        if isinstance(value_node, ast.Call) and isinstance(value_node.func, ast.Name) and value_node.func.id == "per_profile":
            keyword = next((k for k in value_node.keywords if k.arg == profile), None)
            if keyword is None:
                continue
            value_node, owner = keyword.value, profile
        try:
            value = _literal(value_node)
        except (ValueError, ZeroDivisionError, OverflowError):
            continue
        start = _offset(lines, starts, value_node.lineno, value_node.col_offset)
        end = _offset(lines, starts, value_node.end_lineno, value_node.end_col_offset)
        found[name] = Hyperparameter(name, value, source[start:end], (start, end), owner)
    return found


def format_value(value: Any, old_text: str = "") -> str:
    """Source text for `value`, in the style of the text it replaces (2**k stays 2**k)."""
    if isinstance(value, str):
        return json.dumps(value) if old_text.lstrip().startswith('"') else repr(value)
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        if re.fullmatch(r"\s*2\s*\*\*\s*\d+\s*", old_text) and value > 0 and value & (value - 1) == 0:
            return f"2**{value.bit_length() - 1}"
        return str(value)
    if isinstance(value, float):
        text = f"{value:.4g}"
        return text if any(c in text for c in ".e") else text + ".0"
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    raise TypeError(f"cannot format {value!r}")


def rewrite(source: str, changes: dict[str, Any], profile: str | None = None) -> str:
    """`source` with the named hyperparameters set to new values; nothing else changes."""
    params = find_hyperparameters(source, profile)
    edits = sorted(((params[n].span, format_value(v, params[n].text)) for n, v in changes.items() if n in params), reverse=True)
    for (start, end), text in edits:
        source = source[:start] + text + source[end:]
    return source


# -- mutation of one value ------------------------------------------------------

_RATE_STEPS = (0.5, 0.7, 0.8, 1.25, 1.4, 2.0)


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def _towards_one(v: float, rng: random.Random) -> float:
    # Momenta and betas live near 1: scale the distance to 1.
    return _round(min(0.999, max(0.0, 1 - (1 - v) * rng.choice((0.5, 0.7, 1.4, 2.0)))))


def mutate_value(name: str, value: Any, rng: random.Random) -> Any | None:
    """A new value of the same kind, or None when the mutator has no move for it.

    Rates step multiplicatively, depths by one, powers of two double or halve, ratios in
    [0, 1] shift by 0.1-0.2, momenta move their distance to 1, bools flip, and S/L window
    patterns are redrawn."""
    upper = name.upper()
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        if "DEPTH" in upper or "LAYER" in upper:
            return max(1, value + rng.choice((-1, 1)))
        if value >= 8 and value & (value - 1) == 0:
            return value * 2 if rng.random() < 0.5 else value // 2
        if value <= 16:
            return max(1, value + rng.choice((-1, 1))) if value > 0 else 1
        return max(1, int(round(value * rng.choice((0.5, 0.75, 1.5, 2.0)))))
    if isinstance(value, float):
        if "MOMENTUM" in upper or "BETA" in upper:
            return _towards_one(value, rng)
        if "RATIO" in upper or "FRAC" in upper:
            moves = [_round(min(1.0, max(0.0, value + d))) for d in (-0.2, -0.1, 0.1, 0.2)]
            return rng.choice([m for m in moves if m != value])
        if value == 0.0:
            return rng.choice((0.01, 0.05, 0.1))
        return _round(value * rng.choice(_RATE_STEPS))
    if isinstance(value, tuple) and value and all(isinstance(v, float) for v in value):
        i = rng.randrange(len(value))
        new = _towards_one(value[i], rng) if 0 < value[i] < 1 else _round(value[i] * rng.choice(_RATE_STEPS))
        return value[:i] + (new,) + value[i + 1:]
    if isinstance(value, str) and value and set(value.upper()) <= set("SL"):
        for _ in range(10):
            pattern = "".join(rng.choice("SL") for _ in range(rng.randint(1, 4)))
            if pattern != value:
                return pattern
    return None

