"""The docstring examples of theory and landscape run and print what they say."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import landscape
import theory

def _has_examples(name: str) -> bool:
    module = importlib.import_module(name)
    return bool(doctest.DocTestFinder().find(module)) and any(t.examples for t in doctest.DocTestFinder().find(module))


MODULES = sorted(
    name for name in (f"{pkg.__name__}.{m.name}" for pkg in (theory, landscape)
                      for m in pkgutil.iter_modules(pkg.__path__) if m.name != "__main__")
    if _has_examples(name))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
