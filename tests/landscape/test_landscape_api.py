"""What ``landscape`` says is public: every name of ``landscape.__all__`` resolves to its submodule's object, and
``import landscape`` loads no NumPy (so the command line can answer Ctrl-C during its start-up)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import landscape


@pytest.mark.parametrize("name", landscape.__all__)
def test_every_public_name_is_its_submodules(name):
    module = importlib.import_module(f"landscape.{landscape._EXPORTS[name]}")
    assert getattr(landscape, name) is getattr(module, name)
    assert name in getattr(module, "__all__", [name]), f"landscape.{landscape._EXPORTS[name]}.__all__ lacks {name}"


def test_unknown_name_is_refused_and_import_is_light():
    with pytest.raises(AttributeError, match="module 'landscape' has no attribute 'nope'"):
        landscape.nope  # noqa: B018
    code = "import sys, landscape; print('numpy' in sys.modules, 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == ["False",
                                                                                                          "False"]
