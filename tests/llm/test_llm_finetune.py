"""LoRA fine-tuning of test tasks (``llm.finetune``) and its batches (``llm.loop``) on tiny random models."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from llm.finetune import build_finetune_model, finetune  # noqa: E402
from llm.loop import select_epoch  # noqa: E402
from llm.models import load_hf_model, load_tokenizer  # noqa: E402
from llm.prefix import SplitCache  # noqa: E402
from llm.train import retrain  # noqa: E402
from test_llm_support import (T, batch_loss, chitchat_file, has_gradient, no_gradient, params_named,  # noqa: E402,F401
                              small_cfg, tasks, tiny_bert)



def test_frozen_layers_never_change_and_finetuning_leaves_the_retrained_encoder_unchanged(tiny_bert, tasks,
                                                                                          tmp_path):
    cfg = small_cfg(tiny_bert, scorer="bi", freeze_layers=1, retrain_epochs=2, finetune_epochs=2, lr_finetune=1e-2,
               lr_sr=1e-2)
    pre = {k: v.clone() for k, v in load_hf_model(tiny_bert).state_dict().items()}
    r = retrain(cfg, tasks, method="sr", rank=None, seed=0, out_dir=str(tmp_path / "sr"), progress=False)
    from safetensors.torch import load_file

    saved = load_file(os.path.join(r.checkpoint, "model.safetensors"))
    lower = [k for k in saved if ".embeddings." in k or ".layer.0." in k]
    upper = [k for k in saved if ".layer.1." in k]
    assert lower and upper
    assert all(torch.equal(saved[k], pre[k]) for k in lower)  # frozen: bit for bit the pretrained weights
    assert any(not torch.equal(saved[k], pre[k]) for k in upper)
    assert len(r.val_accuracies) == 2 and r.best_epoch == select_epoch("validation", list(r.val_accuracies), [], 2)
    model = build_finetune_model(cfg, r.run_dir, rank=4, seed=0)
    before = {k: v.clone() for k, v in model.encoder_state().items()}
    assert all(torch.equal(saved[k], before[k]) for k in saved)
    res = finetune(cfg, r.run_dir, tasks.test[0], rank=4, seed=0, progress=False)
    assert res.heldout_accuracies == () and len(res.val_accuracies) == 3 and len(res.losses) == 2
    assert res.selected_epoch == select_epoch("validation", list(res.val_accuracies[1:]), [], 2)
    assert res.accuracy == sum(res.correct) / len(res.correct) and len(res.correct) == len(tasks.test[0].heldout)
    optimistic = finetune(cfg.replace(select="heldout"), r.run_dir, tasks.test[0], rank=4, seed=0, progress=False)
    assert len(optimistic.heldout_accuracies) == 3  # the paper's choice needs the scored items every epoch
    assert optimistic.accuracy == max(optimistic.heldout_accuracies[1:])
    # the scored items are evaluated with the adapters of the chosen epoch: equal to the per-epoch evaluation
    assert res.accuracy == optimistic.heldout_accuracies[res.selected_epoch]
    again = build_finetune_model(cfg, r.run_dir, rank=4, seed=0)
    assert all(torch.equal(before[k], v) for k, v in again.encoder_state().items())



def test_task_rounds_hold_every_task_at_every_step_and_each_sample_once_per_epoch():
    from llm.loop import TaskRounds

    tasks = torch.tensor([0] * 6 + [1] * 6 + [2] * 3)
    rounds = TaskRounds(tasks, 2, seed=4)
    for epoch in range(2):
        rounds.epoch = epoch
        steps = list(rounds)
        assert len(steps) == len(rounds) == 3
        for step in steps:
            assert sorted(set(int(tasks[i]) for i in step)) == [0, 1, 2]
        seen = [i for step in steps for i in step]
        assert sorted(i for i in seen if i < 12) == list(range(12))  # the full tasks: every sample once
        assert set(i for i in seen if i >= 12) == {12, 13, 14}  # the short task starts its order again


@pytest.mark.parametrize("scorer", ["bi", "cross"])
def test_joint_finetuning_gives_each_adapter_its_own_tasks_gradient(tiny_bert, tasks, scorer):
    """The summed per-task losses of a joint step give adapter t exactly the gradient of task t's loss alone."""
    from llm.loop import TaskRounds

    cfg = small_cfg(tiny_bert, scorer=scorer, freeze_layers=1, lora_dropout=0.0)
    test = list(tasks.retrain)
    model = build_finetune_model(cfg, tiny_bert, rank=4, seed=0, n_tasks=len(test)).eval()  # no dropout
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    split = SplitCache(cfg, load_tokenizer(tiny_bert)).get(test, "train", model.lower)
    idx = next(iter(TaskRounds(split.tasks, 2, seed=0)))
    b = split.batch(torch.tensor(idx), negatives=2, generator=torch.Generator().manual_seed(1))
    per = model.loss(model(split.store.inputs(b["seqs"]), b["seq_tasks"]), b, in_batch=True, reduction="none")
    joint = sum(per[b["tasks"] == t].mean() for t in range(len(test)))
    joint.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for t in range(len(test)):
        model.zero_grad(set_to_none=True)
        per = model.loss(model(split.store.inputs(b["seqs"]), b["seq_tasks"]), b, in_batch=True, reduction="none")
        per[b["tasks"] == t].mean().backward()
        for n, p in model.named_parameters():
            if "lora_" in n:
                assert torch.allclose(p.grad[t], got[n][t], atol=1e-6), n
            elif n.startswith(f"heads.heads.{t}."):
                assert torch.allclose(p.grad, got[n], atol=1e-6), n


@given(st.lists(st.integers(1, 9), min_size=1, max_size=8), st.integers(1, 12))
@settings(max_examples=60, deadline=None)
def test_task_pieces_cut_a_step_into_whole_tasks(sizes, limit):
    """Pieces concatenate to the step, never split a task, and stay within the limit unless one task exceeds it."""
    from llm.loop import task_pieces

    tasks = torch.tensor([t for t, n in enumerate(sizes) for _ in range(n)])
    idx = torch.arange(len(tasks))
    pieces = task_pieces(idx, tasks, limit)
    assert torch.equal(torch.cat(pieces), idx)
    owner = [{int(tasks[i]) for i in p} for p in pieces]
    assert all(not (a & b) for j, a in enumerate(owner) for b in owner[j + 1:])  # a task lies in one piece
    assert all(len(p) <= limit or len(o) == 1 for p, o in zip(pieces, owner))
    # greedy: a piece ends only where adding the next task would pass the limit
    for p, nxt in zip(pieces[:-1], owner[1:]):
        first_next = sizes[min(nxt)]
        assert len(p) + first_next > limit


def test_joint_finetuning_in_pieces_equals_one_pass(tiny_bert, tasks, monkeypatch, tmp_path):
    """Fine-tuning many tasks with each step cut into pieces of one task gives the same losses, adapters and scores
    as one forward pass per step (all negatives used and the encoder's dropout off, so no random draw depends on
    the cut)."""
    import shutil

    import llm.finetune
    import llm.loop

    model = str(tmp_path / "no_dropout")
    shutil.copytree(tiny_bert, model)
    with open(os.path.join(model, "config.json")) as fh:
        config = json.load(fh)
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with open(os.path.join(model, "config.json"), "w") as fh:
        json.dump(config, fh)
    cfg = small_cfg(model, freeze_layers=1, train_negatives=19, finetune_epochs=2)
    test = list(tasks.test)
    runs = []
    for limit in (1, 10_000):
        monkeypatch.setattr(llm.loop, "PIECE_SAMPLES", limit)
        runs.append(llm.finetune.finetune_tasks(cfg, model, test, rank=4, seed=3, progress=False))
    for a, b in zip(*runs):
        assert len(a.losses) == 2 and all(abs(x - y) <= 1e-5 * max(1.0, abs(y)) for x, y in zip(a.losses, b.losses))
        assert a.val_accuracies == b.val_accuracies and a.correct == b.correct
