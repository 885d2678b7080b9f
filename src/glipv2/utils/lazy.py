"""Lazy package exports (PEP 562): a package's public names imported on first use, so that
`import glipv2` and the command line's `--help` do not pay for torch until a name is asked for."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable
from typing import Any


def lazy_exports(
    package: str, origins: dict[str, str], namespace: dict[str, Any], public: Iterable[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `package`: `origins` maps a public name to the module
    (relative to `package`) that defines it; a name is imported once, then kept in `namespace`
    (the package's `globals()`) so later lookups never come back here. A subpackage or submodule
    not imported yet is reachable as an attribute too, as it was when the package imported it
    eagerly (`glipv2.processing.image_to_tensor`)."""

    def __getattr__(name: str) -> Any:
        module = origins.get(name)
        if module is None:
            if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
                return importlib.import_module(f".{name}", package)
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *public})

    return __getattr__, __dir__
