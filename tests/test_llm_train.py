"""Retraining, fine-tuning, checkpoints and resume of ``llm.train`` on tiny random BERT / RoBERTa models."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

from llm import checkpoint as ck  # noqa: E402
from llm.config import LLMError, ModelError, NonFiniteLossError, preset  # noqa: E402
from llm.data import build_tasks, read_chitchat, tokenise  # noqa: E402
from llm.train import (_optimizer, build_finetune_model, build_retrain_model, finetune, forward_batch,  # noqa: E402
                       pair_loss, retrain)
from test_llm_support import chitchat_file, tiny_bert, tiny_roberta  # noqa: E402,F401

T = 3


def _has_multilora() -> bool:
    try:
        import llm.multilora  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def tasks(chitchat_file):
    cfg = preset("smoke").replace(n_retrain_tasks=T, n_test_tasks=2)
    return build_tasks(read_chitchat(chitchat_file), cfg)


def _cfg(model: str, **kw):
    base = dict(model=model, n_retrain_tasks=T, n_test_tasks=2, threads=1, max_length=20)
    base.update(kw)
    return preset("smoke").replace(**base)


def _params(model, pattern: str):
    return {n: p for n, p in model.named_parameters() if pattern in n}


def _task_batch(split, t, n=2, negatives=2, seed=0):
    idx = torch.nonzero(split.tasks == t).flatten()[:n]
    return split.collate(idx, negatives=negatives, generator=torch.Generator().manual_seed(seed))


def _is_zero(p) -> bool:
    return p.grad is None or bool(p.grad.eq(0).all())


def _nonzero(p) -> bool:
    return p.grad is not None and bool(p.grad.ne(0).any())


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_sequential_meta_lora_batch_of_task_t_changes_only_base_head_t_adapter_t(kind, request, tasks):
    model_dir = request.getfixturevalue(f"tiny_{kind}")
    cfg = _cfg(model_dir)
    torch.manual_seed(0)
    model = build_retrain_model(cfg, "meta-lora", 4, T, seed=0, schedule="sequential")
    from llm.models import load_tokenizer

    split = tokenise(tasks.retrain, load_tokenizer(model_dir), cfg.max_length, cache_dir=None)
    opt, sched = _optimizer(list(model.parameters()), 1e-2, cfg, 10)

    def step(t):
        opt.zero_grad(set_to_none=True)
        b = _task_batch(split, t)
        loss = pair_loss(forward_batch(model, b, single_task=True), b["pair_labels"])
        loss.backward()

    step(0)
    opt.step()  # task 0 now has AdamW momentum: a later step must still not move it
    step(1)
    if kind == "bert":
        base = model.hf.bert.encoder.layer[0].attention.self.query.base_layer.weight
    else:
        base = model.hf.roberta.encoder.layer[0].attention.self.query.base_layer.weight
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
        moved = not torch.equal(before[n], p.detach())
        other = any(f".task{t}." in n or n.startswith(f"heads.heads.{t}.") for t in (0, 2))
        if other:
            assert not moved, n
    assert not torch.equal(before[[n for n in before if "query.base_layer.weight" in n][0]],
                           base.detach())
    assert not torch.equal(before["heads.heads.1.weight" if kind == "bert" else "heads.heads.1.out_proj.weight"],
                           model.heads.heads[1].weight.detach() if kind == "bert"
                           else model.heads.heads[1].out_proj.weight.detach())


@pytest.mark.skipif(not _has_multilora(), reason="llm.multilora (batched schedule) not present")
def test_batched_meta_lora_gradients_are_per_task(tiny_bert, tasks):
    cfg = _cfg(tiny_bert)
    model = build_retrain_model(cfg, "meta-lora", 4, T, seed=0, schedule="batched")
    from llm.models import load_tokenizer

    split = tokenise(tasks.retrain, load_tokenizer(tiny_bert), cfg.max_length, cache_dir=None)
    with torch.no_grad():  # B = 0 at init would make every A gradient zero: give B a value first
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    b = _task_batch(split, 1)
    pair_loss(forward_batch(model, b, single_task=False), b["pair_labels"]).backward()
    for n, p in model.named_parameters():
        if "lora_A" in n or "lora_B" in n:  # stacked (T, ...): only slice 1 has a gradient
            assert p.grad[1].ne(0).any() and p.grad[0].eq(0).all() and p.grad[2].eq(0).all(), n
    assert all(_is_zero(p) for t in (0, 2) for p in model.heads.heads[t].parameters())
    assert all(_nonzero(p) for p in model.heads.heads[1].parameters())
    # a mixed batch reaches every task present
    model.zero_grad(set_to_none=True)
    idx = torch.tensor([int(torch.nonzero(split.tasks == t)[0]) for t in range(T)])
    b = split.collate(idx, negatives=2, generator=torch.Generator().manual_seed(0))
    pair_loss(forward_batch(model, b, single_task=False), b["pair_labels"]).backward()
    for n, p in model.named_parameters():
        if "lora_B" in n:
            assert all(p.grad[t].ne(0).any() for t in range(T)), n


def test_finetuning_leaves_the_retrained_encoder_unchanged(tiny_bert, tasks, tmp_path):
    cfg = _cfg(tiny_bert, retrain_epochs=1, finetune_epochs=2, lr_finetune=1e-2)
    r = retrain(cfg, tasks, method="sr", rank=None, seed=0, out_dir=str(tmp_path / "sr"), progress=False)
    model, tok = build_finetune_model(cfg, r.run_dir, rank=4, seed=0)
    before = {k: v.clone() for k, v in model.encoder_state().items()}
    lora_before = {n: p.detach().clone() for n, p in model.hf.named_parameters() if "lora_B" in n}
    head_before = model.heads.heads[0].weight.detach().clone()
    res = finetune(cfg, r.run_dir, tasks.test[0], rank=4, seed=0, model=model, tokenizer=tok, progress=False)
    after = model.encoder_state()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(v, dict(model.hf.named_parameters())[n]) for n, v in lora_before.items())
    assert not torch.equal(head_before, model.heads.heads[0].weight)
    assert len(res.accuracies) == 2 and all(0 <= a <= 1 for a in res.accuracies)
    assert res.best == max(res.accuracies) and res.accuracies[res.best_epoch - 1] == res.best
    # the saved encoder is what fine-tuning loaded
    from safetensors.torch import load_file

    saved = load_file(os.path.join(r.checkpoint, "model.safetensors"))
    assert all(torch.equal(saved[k], before[k]) for k in saved)


def _tensors(ckpt: str) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in ("model.safetensors", "train_state.safetensors", "heads.safetensors"):
        out.update({f"{f}:{k}": v for k, v in load_file(os.path.join(ckpt, f)).items()})
    return out


@pytest.mark.parametrize("method, schedule", [("meta-lora", "sequential"), ("sr", None)] +
                         ([("meta-lora", "batched")] if _has_multilora() else []))
def test_resume_after_a_kill_equals_an_uninterrupted_run(tiny_bert, tasks, tmp_path, method, schedule):
    cfg = _cfg(tiny_bert, retrain_epochs=3)
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
    assert resumed.losses == full.losses and len(full.losses) == 3
    a, b = _tensors(full.checkpoint), _tensors(resumed.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(os.listdir(tmp_path / "part")) == ["LATEST", "epoch-003"]
    if method == "meta-lora":
        assert os.path.isfile(os.path.join(full.checkpoint, "adapters", "task2", "adapter_config.json"))


def test_resume_with_other_options_is_refused(tiny_bert, tasks, tmp_path):
    cfg = _cfg(tiny_bert, retrain_epochs=2)
    retrain(cfg, tasks, method="sr", rank=None, seed=0, out_dir=str(tmp_path / "r"), progress=False, stop_after=1)
    with pytest.raises(LLMError, match="other options"):
        retrain(cfg, tasks, method="sr", rank=None, seed=1, out_dir=str(tmp_path / "r"), progress=False,
                resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_bert, tasks, tmp_path, monkeypatch):
    import llm.train as tr

    cfg = _cfg(tiny_bert, retrain_epochs=3)
    steps_per_epoch = -(-sum(len(t.train) for t in tasks.retrain) // cfg.batch_sr)
    calls = {"n": 0}
    real = tr.pair_loss

    def poisoned(logits, labels):
        calls["n"] += 1
        loss = real(logits, labels)
        return loss * float("nan") if calls["n"] > steps_per_epoch else loss

    monkeypatch.setattr(tr, "pair_loss", poisoned)
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
    import json

    a, b = json.loads(full.stdout), json.loads(resumed.stdout)
    assert a["losses"] == b["losses"] and len(a["losses"]) == 12
    ta, tb = _tensors(a["checkpoint"]), _tensors(b["checkpoint"])
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
