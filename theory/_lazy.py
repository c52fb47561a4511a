"""Public names imported from their submodules on first use (PEP 562), for a package's ``__init__`` (private).

Standard library only, so that importing the package stays cheap (no NumPy, no torch).
"""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for the package named ``package``, whose public name ``n`` lives in the submodule
    ``exports[n]``; a name is imported on first access and then cached in the package's namespace.

    Raises
    ------
    AttributeError
        (from the returned ``__getattr__``) for a name not in ``exports``.
    """
    namespace = vars(sys.modules[package])

    def __getattr__(name: str):
        try:
            submodule = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        namespace[name] = value = getattr(importlib.import_module(f".{submodule}", package), name)
        return value

    def __dir__():
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
