"""The docstring examples of ``llm`` run and print what they say (no model is loaded in them)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

pytest.importorskip("torch")

import llm  # noqa: E402


def _examples(name: str) -> int:
    return sum(len(t.examples) for t in doctest.DocTestFinder().find(importlib.import_module(name)))


MODULES = sorted(m.name for m in pkgutil.walk_packages(llm.__path__, "llm.") if _examples(m.name))


def test_the_modules_with_examples_are_found():
    """Guards the parametrisation below against an empty list (a walk that finds nothing tests nothing)."""
    assert {"llm.adapters", "llm.bundle", "llm.checkpoint", "llm.config", "llm.data", "llm.loop", "llm.models",
            "llm.multilora.inject", "llm.multilora.layers", "llm.planted_config", "llm.planted_data",
            "llm.planted_train", "llm.prefix", "llm.report", "llm.stats", "llm.table", "llm.tokens"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
