"""Every public definition of ``llm`` has a NumPy-style docstring, so that a gap cannot come back unnoticed.

Public: a module-level function or class, or a method or property of a public class, whose name does not start
with ``_``, in any module of ``llm/`` (``__main__`` included). Rules, read from the source with ``ast`` (nothing is
imported, so the check takes milliseconds):

* it has a docstring;
* a function or method (properties excepted: numpydoc documents them as attributes) that returns a value has a
  ``Returns`` (or, for a generator, ``Yields``) section;
* a function or method that raises an exception itself (``raise X``; a bare re-raise does not count) has a
  ``Raises`` section, and so does a class whose ``__init__`` / ``__post_init__`` raises.

What the sections say (shapes, units, formulas, what callees raise) is for review; this test keeps them present.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

LLM = pathlib.Path(__file__).resolve().parents[2] / "llm"
MODULES = sorted(p for p in LLM.rglob("*.py") if not (p.name.startswith("_") and not p.name.startswith("__")))
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
_SCOPES = (*_FUNCS, ast.ClassDef, ast.Lambda)


def _own_nodes(fn: ast.AST):
    """The nodes of ``fn``'s body, nested functions, lambdas and classes excluded (their returns are not its)."""
    todo = list(ast.iter_child_nodes(fn))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, _SCOPES):
            todo.extend(ast.iter_child_nodes(node))


def _returns_value(fn: ast.AST) -> bool:
    return any((isinstance(n, ast.Return) and n.value is not None
                and not (isinstance(n.value, ast.Constant) and n.value.value is None))
               or (isinstance(n, (ast.Yield, ast.YieldFrom)) and n.value is not None) for n in _own_nodes(fn))


def _raises(fn: ast.AST) -> bool:
    return any(isinstance(n, ast.Raise) and n.exc is not None for n in _own_nodes(fn))


def _section(doc: str, *names: str) -> bool:
    return any(re.search(rf"^\s*{name}\n\s*-{{3,}}\s*$", doc, re.M) for name in names)


def _is_property(fn: ast.AST) -> bool:
    return any((isinstance(d, ast.Name) and d.id in ("property", "cached_property"))
               or (isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter", "cached_property"))
               for d in fn.decorator_list)


def problems(source: str, where: str) -> list[str]:
    """``"<where>:<line> <qualified name>: <what is missing>"`` for every public definition of ``source``."""
    out: list[str] = []

    def visit(body, prefix: str) -> None:
        for node in body:
            if not isinstance(node, (*_FUNCS, ast.ClassDef)) or node.name.startswith("_"):
                continue
            name, doc = prefix + node.name, ast.get_docstring(node)
            missing = []
            if not doc:
                missing.append("no docstring")
            elif isinstance(node, ast.ClassDef):
                init = [n for n in node.body if isinstance(n, _FUNCS) and n.name in ("__init__", "__post_init__")]
                if any(_raises(n) for n in init) and not _section(doc, "Raises"):
                    missing.append("its constructor raises but the docstring has no Raises section")
            else:
                if not _is_property(node) and _returns_value(node) and not _section(doc, "Returns", "Yields"):
                    missing.append("returns a value but has no Returns section")
                if _raises(node) and not _section(doc, "Raises"):
                    missing.append("raises but has no Raises section")
            if missing:
                out.append(f"{where}:{node.lineno} {name}: {'; '.join(missing)}")
            if isinstance(node, ast.ClassDef):
                visit(node.body, name + ".")

    visit(ast.parse(source).body, "")
    return out


def _public_names(source: str) -> set[str]:
    names: set[str] = set()

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, (*_FUNCS, ast.ClassDef)) and not node.name.startswith("_"):
                names.add(prefix + node.name)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, prefix + node.name + ".")

    visit(ast.parse(source).body, "")
    return names


def test_the_walk_sees_the_public_api():
    """Guards against a walk that finds nothing (a wrong folder, a filter that drops everything)."""
    assert len(MODULES) >= 25 and LLM / "__main__.py" in MODULES and LLM / "multilora" / "layers.py" in MODULES
    seen = {f"{p.stem}.{n}" for p in MODULES for n in _public_names(p.read_text(encoding="utf-8"))}
    assert {"config.Config.batch_for", "models.Scorer.lora_parameters", "layers.MultiTaskLoraLinear.forward",
            "layers.MultiTaskHead.from_linear", "tokens.Split.with_store", "planted_model.Planted.A_star",
            "planted_config.PlantedConfig.n_values", "__main__.main"} <= seen
    assert len(seen) >= 200


def test_a_planted_gap_is_named():
    """The checker itself: every kind of gap is reported with its line and qualified name; private names, nested
    helpers, properties and bare re-raises are not held to the rules."""
    source = '''
def documented(x):
    """One line.

    Returns
    -------
    int
    """
    return x


def undocumented(x):
    return x


def _private(x):
    return x


class Thing:
    """A thing."""

    def __init__(self, x):
        if x < 0:
            raise ValueError(x)

    @property
    def size(self):
        """Its size (a property: no Returns section needed)."""
        return 1

    def method(self):
        """Returns nothing said."""
        def helper():
            return 2
        return helper()

    def check(self):
        """Only a bare re-raise and a nested raise.

        Yields
        ------
        None
        """
        try:
            yield
        except KeyError:
            raise

        def inner():
            raise ValueError
'''
    assert problems(source, "m.py") == [
        "m.py:12 undocumented: no docstring",
        "m.py:20 Thing: its constructor raises but the docstring has no Raises section",
        "m.py:32 Thing.method: returns a value but has no Returns section",
    ]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LLM.parent)))
def test_public_definitions_have_numpy_docstrings(path):
    found = problems(path.read_text(encoding="utf-8"), str(path.relative_to(LLM.parent)))
    assert not found, "public definitions without a complete NumPy-style docstring:\n" + "\n".join(found)
