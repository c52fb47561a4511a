"""Scorers, retraining, fine-tuning, checkpoints and resume of ``llm.train`` on tiny random BERT / RoBERTa models."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from llm import checkpoint as ck  # noqa: E402
from llm.config import LLMError, ModelError, NonFiniteLossError, preset  # noqa: E402
from llm.data import build_tasks, read_chitchat  # noqa: E402
from llm.models import Scorer, load_hf_model, load_tokenizer  # noqa: E402
from llm.prefix import SplitCache, split_encoder  # noqa: E402
from llm.tokens import tokenise  # noqa: E402
from llm.finetune import build_finetune_model, finetune  # noqa: E402
from llm.loop import evaluate, make_accelerator, make_optimizer, select_epoch  # noqa: E402
from llm.train import build_retrain_model, retrain  # noqa: E402
from test_llm_support import chitchat_file, tiny_bert, tiny_roberta  # noqa: E402,F401

T = 3


@pytest.fixture(scope="module")
def tasks(chitchat_file):
    cfg = preset("smoke").replace(n_retrain_tasks=T, n_test_tasks=2)
    return build_tasks(read_chitchat(chitchat_file), cfg)


def _cfg(model: str, **kw):
    base = dict(model=model, n_retrain_tasks=T, n_test_tasks=2, threads=1, max_length=20, candidate_length=8,
                freeze_layers=0)
    base.update(kw)
    return preset("smoke").replace(**base)


def _params(model, pattern: str):
    return {n: p for n, p in model.named_parameters() if pattern in n}


def _split(cfg, tasks, model, which="train"):
    return SplitCache(cfg, load_tokenizer(cfg.model)).get(tasks.retrain, which, model.lower)


def _task_batch(split, t, n=2, negatives=2, seed=0):
    idx = torch.nonzero(split.tasks == t).flatten()[:n]
    return split.batch(idx, negatives=negatives, generator=torch.Generator().manual_seed(seed))


def _step(model, split, b, task):
    feats = model(split.store.inputs(b["seqs"]), b["seq_tasks"], task)
    return model.loss(feats, b)


def _nonzero(p) -> bool:
    return p.grad is not None and bool(p.grad.ne(0).any())


def _is_zero(p) -> bool:
    return p.grad is None or bool(p.grad.eq(0).all())


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_sequential_meta_lora_batch_of_task_t_changes_only_base_head_t_adapter_t(kind, request, tasks):
    cfg = _cfg(request.getfixturevalue(f"tiny_{kind}"), scorer="cross", warmup_fraction=0.0)  # lr > 0 at step 1
    model = build_retrain_model(cfg, "meta-lora", 4, T, seed=0, schedule="sequential")
    split = _split(cfg, tasks, model)
    opt, _ = make_optimizer([p for p in model.parameters() if p.requires_grad], 1e-2, cfg, 10)

    def step(t):
        opt.zero_grad(set_to_none=True)
        _step(model, split, _task_batch(split, t), t).backward()

    step(0)
    opt.step()  # task 0 now has AdamW momentum: a later step must still not move it
    step(1)
    base = model.hf.base_model.encoder.layer[0].attention.self.query.base_layer.weight
    assert _nonzero(base)
    for t in range(T):
        head = list(model.heads.heads[t].parameters())
        lora_b = list(_params(model, f"lora_B.task{t}.").values())
        assert len(lora_b) == 2 * 6  # 2 layers x 6 linear layers
        if t == 1:
            assert any(_nonzero(p) for p in head) and all(_nonzero(p) for p in lora_b)
        else:
            assert all(p.grad is None for p in head)
            assert all(p.grad is None for p in _params(model, f".task{t}.").values())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        other = any(f".task{t}." in n or n.startswith(f"heads.heads.{t}.") for t in (0, 2))
        if other:
            assert torch.equal(before[n], p.detach()), n
    assert not torch.equal(before[[n for n in before if "query.base_layer.weight" in n][0]], base.detach())


def test_batched_meta_lora_gradients_are_per_task(tiny_bert, tasks):
    cfg = _cfg(tiny_bert, scorer="cross")
    model = build_retrain_model(cfg, "meta-lora", 4, T, seed=0, schedule="batched")
    split = _split(cfg, tasks, model)
    with torch.no_grad():  # B = 0 at init would make every A gradient zero: give B a value first
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    _step(model, split, _task_batch(split, 1), None).backward()
    for n, p in model.named_parameters():
        if "lora_A" in n or "lora_B" in n:  # stacked (T, ...): only slice 1 has a gradient
            assert p.grad[1].ne(0).any() and p.grad[0].eq(0).all() and p.grad[2].eq(0).all(), n
    assert all(_is_zero(p) for t in (0, 2) for p in model.heads.heads[t].parameters())
    assert all(_nonzero(p) for p in model.heads.heads[1].parameters())
    model.zero_grad(set_to_none=True)  # a mixed batch reaches every task present
    idx = torch.tensor([int(torch.nonzero(split.tasks == t)[0]) for t in range(T)])
    _step(model, split, split.batch(idx, negatives=2, generator=torch.Generator().manual_seed(0)), None).backward()
    for n, p in model.named_parameters():
        if "lora_B" in n:
            assert all(p.grad[t].ne(0).any() for t in range(T)), n


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_upper_part_on_cached_lower_outputs_equals_the_full_model(kind, request):
    """Same padding: the split encoder reproduces the full model exactly (hidden states and pooler)."""
    from llm.prefix import encode_lower
    from llm.tokens import SequenceStore

    hf = load_hf_model(request.getfixturevalue(f"tiny_{kind}")).eval()
    ids = [torch.randint(1000, 2000, (n,)) for n in (7, 12, 5, 9)]
    offsets = torch.tensor([0] + torch.cumsum(torch.tensor([len(x) for x in ids]), 0).tolist())
    store = SequenceStore(torch.cat(ids), None, offsets, 0)
    lower, upper = split_encoder(hf.base_model, 1)
    hidden = encode_lower(lower, store, batch=4)  # one batch: the padding of the full run
    with torch.no_grad():
        full = hf.base_model(**store.inputs(torch.arange(4)))
        part = upper(**hidden.inputs(torch.arange(4)))
    m = store.inputs(torch.arange(4))["attention_mask"].bool()
    assert torch.equal(full.last_hidden_state[m], part.last_hidden_state[m])
    if full.pooler_output is not None:
        assert torch.equal(full.pooler_output, part.pooler_output)
    n = sum(p.numel() for p in hf.base_model.parameters())
    assert n == sum(p.numel() for p in lower.parameters()) + sum(p.numel() for p in upper.parameters())
    with pytest.raises(ModelError, match="freeze_layers must lie in"):
        split_encoder(hf.base_model, 2)


def test_bi_scores_are_cosines_of_mean_pooled_embeddings_over_temperature(tasks):
    """The packaged MiniLM as a bi-encoder: the scorer's scores equal a direct computation with transformers."""
    from transformers import AutoModel

    from llm.models import resolve_model

    cfg = preset("smoke").replace(freeze_layers=2, max_length=32, candidate_length=16)
    model = build_finetune_model(cfg, "minilm", rank=None, seed=0)
    tok = load_tokenizer("minilm")
    split = SplitCache(cfg, tok).get(tasks.test[:1], "heldout", model.lower)
    b = split.batch(torch.arange(len(split)))
    with torch.no_grad():
        feats = model.encode(split.store.inputs(b["seqs"]), b["seq_tasks"], 0)
        scores = model.sample_scores(feats, b)
    ref_model = AutoModel.from_pretrained(resolve_model("minilm")).eval()

    def embed(texts, side, n):
        tok.truncation_side = side
        e = tok(texts, padding=True, truncation=True, max_length=n, return_tensors="pt")
        with torch.no_grad():
            h = ref_model(**e).last_hidden_state
        m = e["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    for i, s in enumerate(tasks.test[0].heldout):
        direct = embed(list(s.candidates), "right", 18) @ embed([s.context], "left", 32)[0] / 0.05
        assert torch.allclose(scores[i], direct, atol=2e-4), (scores[i] - direct).abs().max()
    tok.truncation_side = "right"


def test_in_batch_loss_is_softmax_over_every_same_task_candidate(tiny_bert, tasks):
    cfg = _cfg(tiny_bert, scorer="bi", freeze_layers=1)
    model = build_retrain_model(cfg, "sr", None, T, seed=0)
    split = _split(cfg, tasks, model)
    idx = torch.tensor([int(i) for t in (0, 1) for i in torch.nonzero(split.tasks == t).flatten()[:2]])
    b = split.batch(idx, negatives=2, generator=torch.Generator().manual_seed(0))
    feats = model(split.store.inputs(b["seqs"]), b["seq_tasks"], None)
    loss = model.loss(feats, b, in_batch=True)
    ref = 0.0
    for r in range(len(idx)):
        same = [j for j in range(len(b["seqs"])) if b["is_candidate"][j] and b["seq_tasks"][j] == b["tasks"][r]]
        logits = torch.stack([feats[b["ctx"][r]] @ feats[j] for j in same]) / cfg.temperature
        target = same.index(int(b["cand"][r, b["labels"][r]]))
        ref = ref + torch.logsumexp(logits, 0) - logits[target]
        assert len(same) >= 3 + 2  # its own 3 candidates and the other same-task sample's
    assert torch.allclose(loss, ref / len(idx), atol=1e-5)


@pytest.mark.parametrize("scorer", ["bi", "cross"])
def test_evaluate_equals_scoring_each_sample_alone(tiny_bert, tasks, scorer):
    cfg = _cfg(tiny_bert, scorer=scorer, freeze_layers=1, eval_batch=3)
    model = build_retrain_model(cfg, "meta-lora", 4, T, seed=0, schedule="sequential").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    split = _split(cfg, tasks, model, "validation")
    got = evaluate(model, split, accelerator=make_accelerator("cpu"), batch=cfg.eval_batch)
    for i in range(len(split)):
        b = split.batch(torch.tensor([i]))
        with torch.no_grad():
            scores = model.sample_scores(model.encode(split.store.inputs(b["seqs"]), b["seq_tasks"],
                                                      int(split.tasks[i])), b)
        assert int(got[i]) == int(scores.argmax() == split.labels[i])


def test_select_epoch():
    assert select_epoch("validation", [0.2, 0.5, 0.5], [0.9, 0.1, 0.1], 3) == 2  # ties: the earlier epoch
    assert select_epoch("heldout", [0.2, 0.5, 0.5], [0.9, 0.1, 0.1], 3) == 1
    assert select_epoch("last", [0.2, 0.5], [0.9, 0.1], 2) == 2
    assert select_epoch("last", [0.2, 0.5], [], 2) == 2
    assert select_epoch("validation", [], [0.3, 0.4], 2) == 2
    assert select_epoch("validation", [float("nan")] * 3, [], 3) == 3


def test_frozen_layers_never_change_and_finetuning_leaves_the_retrained_encoder_unchanged(tiny_bert, tasks,
                                                                                          tmp_path):
    cfg = _cfg(tiny_bert, scorer="bi", freeze_layers=1, retrain_epochs=2, finetune_epochs=2, lr_finetune=1e-2,
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


def _tensors(ckpt: str) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in ("model.safetensors", "train_state.safetensors", "heads.safetensors"):
        if os.path.isfile(os.path.join(ckpt, f)):
            out.update({f"{f}:{k}": v for k, v in load_file(os.path.join(ckpt, f)).items()})
    return out


@pytest.mark.parametrize("method, schedule, scorer", [("meta-lora", "sequential", "cross"), ("sr", None, "bi"),
                                                      ("meta-lora", "batched", "bi")])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tiny_bert, tasks, tmp_path, method, schedule, scorer):
    cfg = _cfg(tiny_bert, retrain_epochs=3, scorer=scorer, freeze_layers=1 if scorer == "bi" else 0)
    rank = 4 if method == "meta-lora" else None
    full = retrain(cfg, tasks, method=method, rank=rank, seed=3, out_dir=str(tmp_path / "full"),
                   schedule=schedule, progress=False)
    torch.manual_seed(123)  # the resumed run must not depend on the RNG state it starts with
    part = retrain(cfg, tasks, method=method, rank=rank, seed=3, out_dir=str(tmp_path / "part"),
                   schedule=schedule, progress=False, stop_after=1)
    assert len(part.losses) == 1 and part.checkpoint.endswith("epoch-001")
    torch.manual_seed(456)
    resumed = retrain(cfg, tasks, method=method, rank=rank, seed=3, out_dir=str(tmp_path / "part"),
                      schedule=schedule, progress=False, resume=True)
    assert resumed.losses == full.losses and resumed.val_accuracies == full.val_accuracies and len(full.losses) == 3
    a, b = _tensors(ck.latest_checkpoint(full.run_dir)), _tensors(ck.latest_checkpoint(resumed.run_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kept = sorted(os.listdir(tmp_path / "part"))
    assert kept[:2] == ["BEST", "LATEST"] and "epoch-003" in kept and len(kept) <= 4
    assert resumed.checkpoint.endswith(f"epoch-{resumed.best_epoch:03d}")
    if method == "meta-lora":
        assert os.path.isfile(os.path.join(full.checkpoint, "adapters", "task2", "adapter_config.json"))
    ck.remove_checkpoints(str(tmp_path / "part"))
    assert os.listdir(tmp_path / "part") == []


def test_resume_with_other_options_is_refused(tiny_bert, tasks, tmp_path):
    cfg = _cfg(tiny_bert, retrain_epochs=2)
    retrain(cfg, tasks, method="sr", rank=None, seed=0, out_dir=str(tmp_path / "r"), progress=False, stop_after=1)
    with pytest.raises(LLMError, match="other options"):
        retrain(cfg, tasks, method="sr", rank=None, seed=1, out_dir=str(tmp_path / "r"), progress=False,
                resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_bert, tasks, tmp_path, monkeypatch):
    cfg = _cfg(tiny_bert, retrain_epochs=3)
    steps_per_epoch = sum(-(-len(t.train) // cfg.batch_sr) for t in tasks.retrain)  # batches hold one task
    calls = {"n": 0}
    real = Scorer.loss

    def poisoned(self, feats, batch, **kw):
        calls["n"] += 1
        loss = real(self, feats, batch, **kw)
        return loss * float("nan") if calls["n"] > steps_per_epoch else loss

    monkeypatch.setattr(Scorer, "loss", poisoned)
    out = str(tmp_path / "nan")
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* at epoch 2, step 1"):
        retrain(cfg, tasks, method="sr", rank=None, seed=0, out_dir=out, progress=False)
    last = ck.latest_checkpoint(out)
    assert last.endswith("epoch-001") and ck.read_state(last)["epoch"] == 1
    assert [f for f in os.listdir(out) if f.startswith(".tmp")] == []


def test_bad_model_and_rank_are_refused(tiny_bert, tmp_path):
    cfg = _cfg(str(tmp_path / "no_such_model"))
    with pytest.raises(ModelError, match="does not exist"):
        build_retrain_model(cfg, "sr", None, 2, seed=0)
    with pytest.raises(LLMError, match="rank must be a positive integer"):
        build_retrain_model(_cfg(tiny_bert), "meta-lora", 0, 2, seed=0)
    with pytest.raises(ModelError, match="rank must be a positive integer, got -1"):
        build_finetune_model(_cfg(tiny_bert), tiny_bert, rank=-1, seed=0)
    with pytest.raises(LLMError, match="method must be one of"):
        build_retrain_model(_cfg(tiny_bert), "full", None, 2, seed=0)
    with pytest.raises(ModelError, match="freeze_layers must lie in"):
        build_retrain_model(_cfg(tiny_bert, freeze_layers=2), "sr", None, 2, seed=0)


def test_resume_after_a_real_sigkill_equals_an_uninterrupted_run(tiny_bert, chitchat_file, tmp_path):
    """Kill ``python -m llm retrain`` with SIGKILL once an epoch is saved, resume it, compare with a full run."""
    import signal
    import subprocess
    import sys
    import time

    root = os.path.join(os.path.dirname(__file__), os.pardir)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(root))

    def cmd(out, *extra):
        return [sys.executable, "-m", "llm", "retrain", "--preset", "smoke", "--model", tiny_bert, "--data",
                chitchat_file, "--method", "meta-lora", "--rank", "4", "--schedule", "sequential", "--retrain-epochs",
                "12", "--threads", "1", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                *extra]

    full = subprocess.run(cmd(tmp_path / "full"), env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while ck.latest_checkpoint(str(run)) is None and proc.poll() is None and time.time() < deadline:
        try:  # block on the child (not a blind sleep) until it writes its first checkpoint or exits
            proc.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = ck.read_state(ck.latest_checkpoint(str(run)))["epoch"]
    if killed_at == 12:
        pytest.skip("the run finished before it could be killed (machine too fast for this test)")
    resumed = subprocess.run(cmd(run, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, b = json.loads(full.stdout), json.loads(resumed.stdout)
    assert a["losses"] == b["losses"] and len(a["losses"]) == 12 and a["val_accuracies"] == b["val_accuracies"]
    ta, tb = _tensors(ck.latest_checkpoint(a["run_dir"])), _tensors(ck.latest_checkpoint(b["run_dir"]))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


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

    cfg = _cfg(tiny_bert, scorer=scorer, freeze_layers=1, lora_dropout=0.0)
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
    cfg = _cfg(model, freeze_layers=1, train_negatives=19, finetune_epochs=2)
    test = list(tasks.test)
    runs = []
    for limit in (1, 10_000):
        monkeypatch.setattr(llm.loop, "PIECE_SAMPLES", limit)
        runs.append(llm.finetune.finetune_tasks(cfg, model, test, rank=4, seed=3, progress=False))
    for a, b in zip(*runs):
        assert len(a.losses) == 2 and all(abs(x - y) <= 1e-5 * max(1.0, abs(y)) for x, y in zip(a.losses, b.losses))
        assert a.val_accuracies == b.val_accuracies and a.correct == b.correct
