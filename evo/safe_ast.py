"""`ast.parse` that several threads may call at once.

CPython 3.11 builds the Python objects of a parse tree with one recursion counter shared by the
whole interpreter (python/cpython#106905; later CPython releases fixed it): when a thread switch lands in
the middle of a parse (a finalizer or weakref callback run by the garbage collector is enough) and
another thread parses meanwhile, the counter is corrupted and `ast.parse` raises
``SystemError: AST constructor recursion depth mismatch``. The engine parses genomes in proposal
threads (hyperparameters, suspicious code) and trial threads at the same time, so every parse
it does goes through this one lock. `compile()` of source text builds no such objects and needs
none; `compile()` of an AST object would (the engine does not do that).
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse(source: str) -> ast.Module:
    """`ast.parse(source)`, one thread at a time (raises SyntaxError and ValueError as it does)."""
    with _LOCK:
        return ast.parse(source)
