"""Public names that load with their module on first use (PEP 562), for the packages whose import
every `evo` command pays (`evo`, `analysis`): `from evo import X` and `evo.X` work as before."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, modules: dict[str, tuple[str, ...]], namespace: dict
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `package`, whose names in `modules` (module -> names) load with
    their module when first asked for and are then bound in `namespace` (the package's globals)."""
    module_of = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str):
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_of[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
