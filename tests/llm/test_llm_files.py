"""Files and folders written whole (``llm.atomic``), and a run folder's pointers (``llm.checkpoint``)."""

from __future__ import annotations

import os
import pathlib

import pytest

from llm.atomic import atomic_dir, atomic_path, atomic_write_text
from llm.config import LLMError


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(str(target), "one\n")
    assert target.read_text() == "one\n"
    with pytest.raises(ValueError, match="stopped before the rename"):
        with atomic_path(str(target)) as tmp:
            with open(tmp, "w") as fh:
                fh.write("partial")
            raise ValueError("stopped before the rename")
    assert target.read_text() == "one\n" and sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(str(out)) as tmp:
        (pathlib.Path(tmp) / "old.txt").write_text("old")
    with pytest.raises(ValueError):
        with atomic_dir(str(out)) as tmp:
            (pathlib.Path(tmp) / "new.txt").write_text("new")
            raise ValueError("stopped")
    assert sorted(os.listdir(out)) == ["old.txt"] and sorted(os.listdir(tmp_path)) == ["out"]
    with atomic_dir(str(out)) as tmp:
        (pathlib.Path(tmp) / "new.txt").write_text("new")
    assert sorted(os.listdir(out)) == ["new.txt"] and sorted(os.listdir(tmp_path)) == ["out"]


def test_resolve_encoder_follows_best_then_latest_and_refuses_a_dangling_pointer(tmp_path):
    pytest.importorskip("torch")
    from llm.checkpoint import resolve_encoder

    assert resolve_encoder("minilm") == "minilm" and resolve_encoder(str(tmp_path)) == str(tmp_path)
    run = tmp_path / "run"
    for epoch in ("epoch-001", "epoch-002"):
        (run / epoch).mkdir(parents=True)
    (run / "LATEST").write_text("epoch-002\n")
    assert resolve_encoder(str(run)) == str(run / "epoch-002")
    (run / "BEST").write_text("epoch-001\n")
    assert resolve_encoder(str(run)) == str(run / "epoch-001")
    for pointer in ("BEST", "LATEST"):
        (run / pointer).write_text("epoch-009\n")
    with pytest.raises(LLMError, match="names a checkpoint that does not exist"):
        resolve_encoder(str(run))
