"""The public API of ``theory``: ``theory.__all__`` names every submodule's public names, lazily, without torch."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

import pytest

import theory


@pytest.mark.parametrize("module", sorted(theory._MODULES))
def test_package_exports_equal_each_submodules_all(module):
    mod = importlib.import_module(f"theory.{module}")
    assert tuple(mod.__all__) == theory._MODULES[module], (
        f"theory/__init__.py lists {theory._MODULES[module]} for theory.{module}, whose __all__ is {mod.__all__}")
    for name in mod.__all__:
        assert not name.startswith("_"), f"theory.{module}.__all__ names the private helper {name}"
        assert getattr(theory, name) is getattr(mod, name), f"theory.{name} is not theory.{module}.{name}"


def test_every_public_submodule_is_listed():
    import pkgutil

    # the command line's modules and the shared file writing (atomic, strict JSON); their names are not re-exported
    cli = {"cli_contract", "figure1_cli", "atomic", "strict_json"}
    found = {m.name for m in pkgutil.iter_modules(theory.__path__) if not m.name.startswith("_")} - cli
    assert found == set(theory._MODULES), f"submodules not in theory._MODULES: {sorted(found - set(theory._MODULES))}"


def test_unknown_attribute_is_refused():
    with pytest.raises(AttributeError, match="no_such_name"):
        theory.no_such_name  # noqa: B018


def test_import_theory_imports_neither_torch_nor_numpy():
    code = "import sys, theory; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_package_docstring_example():
    result = doctest.testmod(theory, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
