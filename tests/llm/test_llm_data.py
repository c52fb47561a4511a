"""Readers and task builder of ``llm.data``."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from llm.adapters import adapter_type
from llm.config import CandidateError, DataError, LLMError, preset
from llm.data import Task, read_chitchat, read_convai2
from llm.tasks import build_tasks
from test_llm_support import write_chitchat, write_convai2

SHARED_FILE = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, os.pardir, "shared", "data",
                           "convai2_valid_self_original_head.txt")

CFG = preset("smoke").replace(n_retrain_tasks=3, n_test_tasks=2, retrain_samples=6, test_train_samples=3,
                              validation_samples=2, heldout_samples=3, per_conversation=2)
CASES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, os.pardir, "shared", "cases")


# ------------------------------------------------------------------------------------------------------ ConvAI2

@pytest.mark.skipif(not os.path.isfile(SHARED_FILE), reason="../shared/data/convai2_valid_self_original_head.txt "
                                                             "is absent (the real ConvAI2 slice)")
def test_convai2_reader_on_the_real_slice():
    eps = read_convai2(SHARED_FILE)
    assert len(eps) == 2
    first = eps[0]
    # persona: the sorted tuple of the four persona lines, joined
    assert first.turns[1].speaker == " | ".join(sorted([
        "i read twenty books a year.", "i am a stunt double as my second job.", "i only eat kosher.",
        "i was raised in a single parent household."]))
    assert first.turns[0].speaker is None and first.turns[0].text == "hello what are doing today ?"
    reply = first.turns[1]
    assert reply.text == "i am good , i just got off work and tired , i have two jobs ."
    assert len(reply.candidates) == 20 and reply.candidates[-1] == reply.text
    labelled = sum(1 for e in eps for t in e.turns if t.candidates is not None)
    assert labelled == 3


@pytest.mark.parametrize("content, line, what", [
    ("1 your persona: a.\nx hello\treply\t\ta|reply\n", 2, "turn number"),
    ("1 your persona: a.\n3 hello\treply\t\ta|reply\n", 2, "expected"),
    ("1 your persona: a.\n2 hello only one field\n", 2, "partner<TAB>reply"),
    ("1 your persona: a.\n2 hello\treply\t\ta|b|c\n", 2, "not among"),
    ("1 hi\tthere\t\tx|there\n2 your persona: late.\n", 2, "persona line after"),
])
def test_convai2_malformed_lines_name_file_and_line(tmp_path, content, line, what):
    p = tmp_path / "bad.txt"
    p.write_text(content)
    with pytest.raises(DataError) as err:
        read_convai2(str(p))
    assert f"{p}:{line}:" in str(err.value) and what in str(err.value)


def test_convai2_smallest_episodes_speakers_candidates_and_ids(tmp_path):
    """Partner turns have no speaker and no candidates; a reply's speaker is the persona (its sorted lines joined by
    " | "), its candidates the line's; an episode's id is "<file name>:<first line>"."""
    p = tmp_path / "train.txt"
    p.write_text("1 your persona: i like tea.\n2 your persona: a cat is mine.\n3 hi\thello\t\thello|bye\n"
                 "1 your persona: x.\n2 yo\tbye\t\tbye|hello\n")
    eps = read_convai2(str(p))
    assert [e.id for e in eps] == ["train.txt:1", "train.txt:4"]
    assert [(t.speaker, t.text, t.candidates) for t in eps[0].turns] == [
        (None, "hi", None), ("a cat is mine. | i like tea.", "hello", ("hello", "bye"))]
    assert eps[1].turns[1].speaker == "x."


def test_convai2_unreadable_file(tmp_path):
    with pytest.raises(DataError, match="cannot read ConvAI2 file"):
        read_convai2(str(tmp_path / "missing.txt"))


def test_convai2_tasks_keep_the_files_candidates_and_group_by_persona(tmp_path):
    path = write_convai2(str(tmp_path / "v.txt"), n_personas=3, episodes_per=3, turns=3)
    eps = read_convai2(path)
    cfg = CFG.replace(n_retrain_tasks=2, n_test_tasks=1, retrain_samples=6, test_train_samples=3, heldout_samples=2,
                      validation_samples=1, per_conversation=3)
    ts = build_tasks(eps, cfg, path)
    assert len({t.name for t in ts.retrain + ts.test}) == 3
    positions = Counter()
    for task in ts.retrain + ts.test:
        persona_id = task.name.split(" likes")[0].split()[-1]
        for s in task.train + task.validation + task.heldout:
            true = s.candidates[s.label]
            assert true.startswith("reply ")
            e = int(true.split()[1].split("-")[0])
            assert e % 3 == int(persona_id)  # the reply belongs to an episode of this persona
            assert sorted(s.candidates) == sorted([true] + [c for c in s.candidates if c.startswith("cand ")])
            assert len(set(s.candidates)) == 20
            positions[s.label] += 1
    assert len(positions) > 3  # the file's "true reply last" order is shuffled away


def test_convai2_blank_and_repeated_candidates_never_reach_a_sample(tmp_path):
    """``||`` and ``| |`` (blank) and repeated candidates are dropped; the sample is topped up to 20 distinct."""
    lines = []
    for e in range(8):
        lines.append(f"1 your persona: persona {e % 2}.")
        for t in range(3):
            cands = [f"cand {e}-{t}-{k}" for k in range(12)] + ["", " ", f"cand {e}-{t}-0"] + [f"reply {e}-{t}"]
            lines.append(f"{t + 2} partner {e}-{t}\treply {e}-{t}\t\t" + "|".join(cands))
    p = tmp_path / "blank.txt"
    p.write_text("\n".join(lines) + "\n")
    eps = read_convai2(str(p))
    assert all("" not in t.candidates and len(set(t.candidates)) == len(t.candidates) == 13
               for e in eps for t in e.turns if t.candidates)
    ts = build_tasks(eps, CFG.replace(n_retrain_tasks=1, n_test_tasks=1, retrain_samples=3, test_train_samples=2,
                                      validation_samples=1, heldout_samples=1, per_conversation=3), str(p))
    for task in ts.retrain + ts.test:
        for s in task.train + task.validation + task.heldout:
            assert len(s.candidates) == 20 and len(set(s.candidates)) == 20 and all(c.strip() for c in s.candidates)
            assert sum(c.startswith("cand ") for c in s.candidates) == 12  # the file's 12 distinct, then topped up


@pytest.mark.skipif(not os.path.isfile(os.path.join(CASES, "blank_candidates.txt")),
                    reason="../shared/cases/blank_candidates.txt is absent")
def test_shared_case_blank_candidates():
    path = os.path.join(CASES, "blank_candidates.txt")
    eps = read_convai2(path)
    assert all("" not in t.candidates for e in eps for t in e.turns if t.candidates)
    n_personas = len({t.speaker for e in eps for t in e.turns if t.speaker})
    cfg = CFG.replace(n_retrain_tasks=1, n_test_tasks=max(1, min(2, n_personas - 1)), retrain_samples=2,
                      test_train_samples=1, validation_samples=1, heldout_samples=1, per_conversation=5)
    ts = build_tasks(eps, cfg, path)
    for task in ts.retrain + ts.test:
        for s in task.train + task.validation + task.heldout:
            assert len(set(s.candidates)) == 20 and all(c.strip() for c in s.candidates)


# ------------------------------------------------------------------------------------------------------- chitchat

def test_chitchat_reader_merges_messages_and_reports_bad_json(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"a": {"messages": [[{"text": "hi", "sender": "x"}, {"text": "there", "sender": "x"}],'
                 '[{"text": "yo", "sender": "y"}], [{"text": "again", "sender": "y"}]]}}')
    (conv,) = read_chitchat(str(p))
    assert [(t.speaker, t.text) for t in conv.turns] == [("x", "hi there"), ("y", "yo again")]
    p.write_text('{"a": {"messages": [\n[{"text": "hi"\n')
    with pytest.raises(DataError, match=rf"{p}:\d+: not valid chitchat JSON"):
        read_chitchat(str(p))
    p.write_text('{"a": {"messages": [[{"txt": "hi", "sender": "x"}]]}}')
    with pytest.raises(DataError, match="conversation 'a' is malformed"):
        read_chitchat(str(p))


@pytest.fixture(scope="module")
def chitchat(tmp_path_factory):
    path = write_chitchat(str(tmp_path_factory.mktemp("cc") / "c.json"), n_speakers=8, n_convs=80)
    return read_chitchat(path)


def _replies(convs):
    """Independent count: for each speaker, its turns that follow another speaker's turn."""
    count = Counter()
    for c in convs:
        for a, b in zip(c.turns, c.turns[1:]):
            if a.speaker != b.speaker:
                count[b.speaker] += 1
    return count


def test_chitchat_tasks_by_size_disjoint_and_capped(chitchat):
    ts = build_tasks(chitchat, CFG)
    count = _replies(chitchat)
    ranked = sorted(count, key=lambda s: (-count[s], s))
    assert [t.name for t in ts.retrain] == ranked[:3]
    assert [t.name for t in ts.test] == ranked[3:5]
    assert not {t.name for t in ts.retrain} & {t.name for t in ts.test}
    for t in ts.retrain:
        assert len(t.train) == CFG.retrain_samples and len(t.heldout) == 0
        assert len(t.validation) == CFG.validation_samples
    for t in ts.test:
        assert 1 <= len(t.train) <= CFG.test_train_samples and len(t.heldout) == CFG.heldout_samples
        assert len(t.validation) == CFG.validation_samples
    for t in ts.retrain + ts.test:
        convs = [{s.conversation for s in t.split(w)} for w in ("train", "validation", "heldout")]
        assert not convs[0] & convs[1] and not convs[0] & convs[2] and not convs[1] & convs[2]
        per_conv = Counter(s.conversation for s in t.train + t.validation + t.heldout)
        assert max(per_conv.values()) <= CFG.per_conversation


def test_chitchat_samples_are_true_continuations_with_foreign_negatives(chitchat):
    ts = build_tasks(chitchat, CFG)
    by_id = {c.id: c for c in chitchat}
    for task in ts.retrain + ts.test:
        for s in task.train + task.validation + task.heldout:
            assert len(s.candidates) == 20 and len(set(s.candidates)) == 20
            assert 0 <= s.label < 20
            conv = by_id[s.conversation]
            texts = [t.text for t in conv.turns]
            i = texts.index(s.candidates[s.label])
            assert conv.turns[i].speaker == task.name and conv.turns[i - 1].speaker != task.name
            assert s.context.endswith(texts[i - 1])
            for j, c in enumerate(s.candidates):
                if j != s.label:
                    assert c not in texts  # negatives come from other conversations


def test_chitchat_builder_is_deterministic_and_seeded(chitchat):
    a, b = build_tasks(chitchat, CFG), build_tasks(chitchat, CFG)
    assert a == b
    c = build_tasks(chitchat, CFG.replace(data_seed=1))
    assert [t.name for t in c.retrain] == [t.name for t in a.retrain]  # the choice of tasks is by size only
    assert [s.candidates for s in c.retrain[0].train] != [s.candidates for s in a.retrain[0].train]


@pytest.mark.parametrize("make, message", [
    (lambda: Task("a", (), ()).split("test"), "split must be one of ('train', 'validation', 'heldout'), got 'test'"),
    (lambda: preset("gpu"), "unknown preset 'gpu'; choose one of ['cpu', 'paper', 'smoke']"),
    (lambda: preset("smoke", batch_sr=0), "batch_sr must be a positive integer, got 0"),
    (lambda: preset("smoke", epochs=3), "'epochs'"),
    (lambda: adapter_type("parallel"), "schedule must be one of ('batched', 'sequential'), got 'parallel'"),
])
def test_a_bad_name_or_value_is_refused_with_its_rule(make, message):
    with pytest.raises(LLMError) as err:
        make()
    assert message in str(err.value)


def test_too_few_candidates_and_too_few_speakers_are_refused(tmp_path):
    few = read_chitchat(write_chitchat(str(tmp_path / "few.json"), n_speakers=3, n_convs=3))
    with pytest.raises(CandidateError, match="20 are needed"):
        build_tasks(few, CFG.replace(n_retrain_tasks=1, n_test_tasks=1, heldout_samples=1))
    with pytest.raises(LLMError, match="speakers with replies"):
        build_tasks(few, CFG.replace(n_retrain_tasks=3, n_test_tasks=2))


def test_task_pool_negatives_come_from_conversations_without_the_speaker(chitchat):
    cfg = CFG.replace(negative_pool=19 + 6)
    ts = build_tasks(chitchat, cfg)
    for task in ts.retrain + ts.test:
        own = {c.id for c in chitchat if any(t.speaker == task.name for t in c.turns)}
        foreign = {t.text for c in chitchat if c.id not in own for t in c.turns}
        by_split = [{c for s in task.split(w) for j, c in enumerate(s.candidates) if j != s.label}
                    for w in ("train", "validation", "heldout")]
        for negs in by_split:
            assert negs <= foreign and len(negs) <= cfg.negative_pool  # one pool per task and split
        # disjoint pools: training never sees the negatives of the items it is judged on
        assert not by_split[0] & by_split[1] and not by_split[0] & by_split[2] and not by_split[1] & by_split[2]
        for s in task.train + task.validation + task.heldout:
            assert len(set(s.candidates)) == 20


def test_real_chitchat_cpu_preset_sizes():
    """The cpu preset's design: every test task has its full complement of scored items (>= 400 in all)."""
    cfg = preset("cpu")
    from llm.data import load_tasks

    ts = load_tasks(cfg)
    assert len(ts.retrain) == cfg.n_retrain_tasks and len(ts.test) == cfg.n_test_tasks >= 20
    assert all(len(t.train) == cfg.retrain_samples and len(t.validation) == cfg.validation_samples
               for t in ts.retrain)
    assert all(len(t.heldout) == cfg.heldout_samples >= 20 and len(t.validation) == cfg.validation_samples
               and len(t.train) == cfg.test_train_samples for t in ts.test)
    assert sum(len(t.heldout) for t in ts.test) >= 400


