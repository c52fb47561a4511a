"""Generated bad input for ``python -m llm`` and its readers: one message and exit status 2 (or a documented
result), never a traceback, never a partial output file. A bounded slice runs by default; ``-m slow`` runs more."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from llm.__main__ import main  # noqa: E402
from llm.config import DataError, LLMError  # noqa: E402
from llm.data import read_chitchat, read_convai2  # noqa: E402

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_BAD_VALUES = {
    "--seeds": ["-1", "x", "1.5", ""],
    "--threads": ["-2", "two", ""],
    "--retrain-epochs": ["0", "-3", "1e3", "nan"],
    "--finetune-epochs": ["0", "-1", "inf"],
    "--n-test-tasks": ["0", "-5", "many"],
    "--freeze-layers": ["-1", "6", "100", "a"],
    "--finetune-ranks": ["0", "-8", "r8"],
    "--meta-ranks": ["0", "x"],
    "--scorer": ["tri", "", "BI"],
    "--select": ["best", "test", ""],
    "--preset": ["mini", "huge", ""],
    "--device": ["gpu", "cuda:x", "tpu"],
}


def _run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse refusals
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def _check_refusal(code: int, err: str, out_dir: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert 1 <= len(lines) <= 2  # argparse prints its usage line, then the one message
    assert "error" in lines[-1]
    assert not os.path.exists(out_dir) or not os.listdir(out_dir)


@st.composite
def _bad_argv(draw):
    """A table / retrain / finetune command line with at least one invalid option value."""
    command = draw(st.sampled_from(["table", "retrain", "finetune"]))
    bad = draw(st.lists(st.sampled_from(sorted(_BAD_VALUES)), min_size=1, max_size=3, unique=True))
    if command != "table":
        bad = [b for b in bad if b not in ("--seeds", "--finetune-ranks", "--meta-ranks")] or ["--threads"]
    argv = [command]
    for opt in bad:
        argv += [opt, draw(st.sampled_from(_BAD_VALUES[opt]))]
    if command == "retrain":
        argv += ["--method", draw(st.sampled_from(["sr", "meta-lora"]))]
    if command == "finetune":
        argv += ["--encoder", "minilm"]
    return argv


@FAST
@given(argv=_bad_argv())
def test_generated_bad_options_exit_2_with_one_message_before_any_work(argv, tmp_path):
    out = str(tmp_path / "out")
    code, _, err = _run([*argv, "--out", out if argv[0] != "finetune" else out + ".json"])
    _check_refusal(code, err, out)


@pytest.mark.slow
@SLOW
@given(argv=_bad_argv())
def test_generated_bad_options_exit_2_long(argv, tmp_path):
    out = str(tmp_path / "out")
    code, _, err = _run([*argv, "--out", out if argv[0] != "finetune" else out + ".json"])
    _check_refusal(code, err, out)


_LINE = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40),
    st.builds(lambda n, a, b, c: f"{n} {a}\t{b}\t\t{c}", st.integers(-1, 5), st.text(max_size=8),
              st.text(max_size=8), st.text(alphabet="ab| ", max_size=12)),
    st.builds(lambda n, p: f"{n} your persona: {p}", st.integers(0, 4), st.text(max_size=10)),
)


def _convai2_contract(tmp_path, lines: list[str]) -> None:
    p = tmp_path / "c.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        eps = read_convai2(str(p))
    except DataError as exc:
        assert str(exc).startswith(f"{p}:"), exc  # names the file (and the line)
        return
    for e in eps:
        for t in e.turns:
            if t.candidates is not None:
                assert all(c.strip() for c in t.candidates) and len(set(t.candidates)) == len(t.candidates)
                assert t.text in t.candidates


@FAST
@given(lines=st.lists(_LINE, min_size=1, max_size=6))
def test_convai2_reader_refuses_or_reads_clean_samples(lines, tmp_path):
    _convai2_contract(tmp_path, lines)


@pytest.mark.slow
@SLOW
@given(lines=st.lists(_LINE, min_size=1, max_size=12))
def test_convai2_reader_long(lines, tmp_path):
    _convai2_contract(tmp_path, lines)


_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6)),
                     lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)),
                     max_leaves=12)


@FAST
@given(doc=st.one_of(_JSON, st.dictionaries(st.text(max_size=4), st.fixed_dictionaries(
    {"messages": st.lists(st.lists(st.fixed_dictionaries({"text": _JSON, "sender": _JSON}), max_size=2),
                          max_size=3)}), max_size=3)), raw=st.booleans())
def test_chitchat_reader_refuses_or_reads(doc, raw, tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(doc)[:-1] if raw else json.dumps(doc), encoding="utf-8")  # raw: truncated JSON
    try:
        convs = read_chitchat(str(p))
    except DataError as exc:
        assert str(p) in str(exc)
        return
    assert all(t.text and isinstance(t.text, str) for c in convs for t in c.turns)


@FAST
@given(text=st.text(max_size=60))
def test_damaged_table_piece_is_recomputed_not_trusted(text, tmp_path):
    """A resume piece (``runs/.../task{j}.json``) that is not the JSON the table wrote is ignored, never read
    half: ``_read_json`` returns None for anything that does not parse."""
    from llm.table import _read_json

    p = tmp_path / "task0.json"
    p.write_text(text, encoding="utf-8")
    try:
        expected = json.loads(text)
    except ValueError:
        expected = None
    assert _read_json(str(p)) == expected


@FAST
@given(config=st.one_of(_JSON, st.fixed_dictionaries({"r": st.integers(-2, 9), "lora_alpha": st.one_of(
    st.integers(-1, 20), st.text(max_size=3)), "bias": st.sampled_from(["none", "all", 3])})),
    weights=st.sampled_from(["missing", "garbage", "empty"]))
def test_adapter_folder_import_refuses_with_a_value_error(config, weights, tmp_path):
    import torch
    import transformers

    from llm.multilora import import_task_adapter, inject_multitask_lora

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))
    inject_multitask_lora(model, n_tasks=2, r=4, alpha=8, dropout=0.0, target_modules=["query"])
    d = tmp_path / "adapter"
    d.mkdir(exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    w = d / "adapter_model.safetensors"
    if weights == "garbage":
        w.write_bytes(b"\x00\x01not safetensors")
    elif weights == "empty":
        from safetensors.torch import save_file

        save_file({}, str(w))
    elif w.exists():
        w.unlink()
    with pytest.raises((ValueError, LLMError)):
        import_task_adapter(model, 0, d)
