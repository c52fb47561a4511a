"""Every ``python -m <package> <command> --flag`` written in README.md and docs/*.md names a command and options
that the command's parser has (so the docs and ``--help`` agree)."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python -m (theory|landscape|llm)\s+([a-z][a-z0-9-]*)((?:\\\n|[^`|\n])*)")
FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][A-Za-z0-9-]*)")


def _commands_in(text: str, name: str) -> list:
    """``(name:line, package, command, [flags])`` for each command written in ``text`` (a line ending in a
    backslash continues the command; a ``#`` comment ends it)."""
    found = []
    for m in COMMAND.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        found.append((f"{name}:{line}", m.group(1), m.group(2), FLAG.findall(m.group(3).split("#")[0])))
    return found


def _documented():
    return [c for path in DOCS for c in _commands_in(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]


def _subcommands(package: str) -> dict[str, set[str]]:
    parser = importlib.import_module(f"{package}.__main__").build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}


DOCUMENTED = _documented()


def test_the_docs_name_commands_of_every_package():
    assert {pkg for _, pkg, _, _ in DOCUMENTED} == {"theory", "landscape", "llm"} and len(DOCUMENTED) > 30


def _wrong(package: str, documented) -> list[str]:
    commands = _subcommands(package)
    wrong = []
    for where, pkg, command, flags in documented:
        if pkg != package:
            continue
        if command not in commands:
            wrong.append(f"{where}: `python -m {pkg} {command}`: no such command (commands: {sorted(commands)})")
            continue
        wrong += [f"{where}: `python -m {pkg} {command}` has no option {flag}" for flag in flags
                  if flag not in commands[command]]
    return wrong


@pytest.mark.parametrize("package", ["theory", "landscape", "llm"])
def test_documented_commands_and_flags_exist(package):
    wrong = _wrong(package, DOCUMENTED)
    assert not wrong, "\n".join(wrong)


def test_a_wrong_flag_or_command_in_the_docs_is_named():
    text = ("run `python -m theory verify --d 4 --T 3 --kk 2` then\n"
            "python -m theory verfy --d 4\n"
            "python -m landscape search --d 3 \\\n    --instances 2 --bogus 1   # --ignored in a comment\n")
    found = _commands_in(text, "x.md")
    assert [(w, c, f) for w, _, c, f in found] == [("x.md:1", "verify", ["--d", "--T", "--kk"]),
                                                 ("x.md:2", "verfy", ["--d"]),
                                                 ("x.md:3", "search", ["--d", "--instances", "--bogus"])]
    assert _wrong("theory", found) == ["x.md:1: `python -m theory verify` has no option --kk",
                                       "x.md:2: `python -m theory verfy`: no such command (commands: ['figure1', "
                                       "'verify'])"]
    assert _wrong("landscape", found) == ["x.md:3: `python -m landscape search` has no option --bogus"]
