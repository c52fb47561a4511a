"""Retraining (SR, Meta-LoRA per-task gradients), checkpoints and resume of ``llm.train`` on tiny random BERT /
RoBERTa models."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")

from llm import checkpoint as ck  # noqa: E402
from llm.config import LLMError, ModelError, NonFiniteLossError  # noqa: E402
from llm.finetune import build_finetune_model  # noqa: E402
from llm.loop import make_optimizer  # noqa: E402
from llm.models import Scorer  # noqa: E402
from llm.train import build_retrain_model, retrain  # noqa: E402
from self_signal import signal_after_first_call  # noqa: E402
from test_llm_support import (T, batch_loss, chitchat_file, has_gradient, no_gradient, params_named,  # noqa: E402,F401
                              retrain_split, small_cfg, task_batch, tasks, tiny_bert, tiny_roberta)



@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_sequential_meta_lora_batch_of_task_t_changes_only_base_head_t_adapter_t(kind, request, tasks):
    cfg = small_cfg(request.getfixturevalue(f"tiny_{kind}"), scorer="cross", warmup_fraction=0.0)  # lr > 0 at step 1
    model = build_retrain_model(cfg, "meta-lora", 4, T, seed=0, schedule="sequential")
    split = retrain_split(cfg, tasks, model)
    opt, _ = make_optimizer([p for p in model.parameters() if p.requires_grad], 1e-2, cfg, 10)

    def step(t):
        opt.zero_grad(set_to_none=True)
        batch_loss(model, split, task_batch(split, t), t).backward()

    step(0)
    opt.step()  # task 0 now has AdamW momentum: a later step must still not move it
    step(1)
    base = model.hf.base_model.encoder.layer[0].attention.self.query.base_layer.weight
    assert has_gradient(base)
    for t in range(T):
        head = list(model.heads.heads[t].parameters())
        lora_b = list(params_named(model, f"lora_B.task{t}.").values())
        assert len(lora_b) == 2 * 6  # 2 layers x 6 linear layers
        if t == 1:
            assert any(has_gradient(p) for p in head) and all(has_gradient(p) for p in lora_b)
        else:
            assert all(p.grad is None for p in head)
            assert all(p.grad is None for p in params_named(model, f".task{t}.").values())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        other = any(f".task{t}." in n or n.startswith(f"heads.heads.{t}.") for t in (0, 2))
        if other:
            assert torch.equal(before[n], p.detach()), n
    assert not torch.equal(before[[n for n in before if "query.base_layer.weight" in n][0]], base.detach())


def test_batched_meta_lora_gradients_are_per_task(tiny_bert, tasks):
    cfg = small_cfg(tiny_bert, scorer="cross")
    model = build_retrain_model(cfg, "meta-lora", 4, T, seed=0, schedule="batched")
    split = retrain_split(cfg, tasks, model)
    with torch.no_grad():  # B = 0 at init would make every A gradient zero: give B a value first
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    batch_loss(model, split, task_batch(split, 1), None).backward()
    for n, p in model.named_parameters():
        if "lora_A" in n or "lora_B" in n:  # stacked (T, ...): only slice 1 has a gradient
            assert p.grad[1].ne(0).any() and p.grad[0].eq(0).all() and p.grad[2].eq(0).all(), n
    assert all(no_gradient(p) for t in (0, 2) for p in model.heads.heads[t].parameters())
    assert all(has_gradient(p) for p in model.heads.heads[1].parameters())
    model.zero_grad(set_to_none=True)  # a mixed batch reaches every task present
    idx = torch.tensor([int(torch.nonzero(split.tasks == t)[0]) for t in range(T)])
    batch_loss(model, split, split.batch(idx, negatives=2, generator=torch.Generator().manual_seed(0)), None).backward()
    for n, p in model.named_parameters():
        if "lora_B" in n:
            assert all(p.grad[t].ne(0).any() for t in range(T)), n



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
    cfg = small_cfg(tiny_bert, retrain_epochs=3, scorer=scorer, freeze_layers=1 if scorer == "bi" else 0)
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
    cfg = small_cfg(tiny_bert, retrain_epochs=2)
    retrain(cfg, tasks, method="sr", rank=None, seed=0, out_dir=str(tmp_path / "r"), progress=False, stop_after=1)
    with pytest.raises(LLMError, match="other options"):
        retrain(cfg, tasks, method="sr", rank=None, seed=1, out_dir=str(tmp_path / "r"), progress=False,
                resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_bert, tasks, tmp_path, monkeypatch):
    cfg = small_cfg(tiny_bert, retrain_epochs=3)
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
    cfg = small_cfg(str(tmp_path / "no_such_model"))
    with pytest.raises(ModelError, match="does not exist"):
        build_retrain_model(cfg, "sr", None, 2, seed=0)
    with pytest.raises(LLMError, match="rank must be a positive integer"):
        build_retrain_model(small_cfg(tiny_bert), "meta-lora", 0, 2, seed=0)
    with pytest.raises(ModelError, match="rank must be a positive integer, got -1"):
        build_finetune_model(small_cfg(tiny_bert), tiny_bert, rank=-1, seed=0)
    with pytest.raises(LLMError, match="method must be one of"):
        build_retrain_model(small_cfg(tiny_bert), "full", None, 2, seed=0)
    with pytest.raises(ModelError, match="freeze_layers must lie in"):
        build_retrain_model(small_cfg(tiny_bert, freeze_layers=2), "sr", None, 2, seed=0)


def test_resume_after_a_real_sigkill_equals_an_uninterrupted_run(tiny_bert, chitchat_file, tmp_path):
    """``python -m llm retrain`` dies by SIGKILL right after its first epoch is saved (it signals itself there, so
    the point does not depend on the machine's load); resumed, it equals an uninterrupted run bit for bit."""
    import subprocess
    import sys

    root = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(root))

    def cmd(out, *extra, prefix=(sys.executable, "-m", "llm")):
        return [*prefix, "retrain", "--preset", "smoke", "--model", tiny_bert, "--data", chitchat_file, "--method",
                "meta-lora", "--rank", "4", "--schedule", "sequential", "--retrain-epochs", "12", "--threads", "1",
                "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), *extra]

    full = subprocess.run(cmd(tmp_path / "full"), env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    kills = signal_after_first_call("llm", "llm.checkpoint", "save_checkpoint", "SIGKILL")
    killed = subprocess.run(cmd(run, prefix=kills), env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr  # died by SIGKILL
    assert ck.read_state(ck.latest_checkpoint(str(run)))["epoch"] == 1
    resumed = subprocess.run(cmd(run, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, b = json.loads(full.stdout), json.loads(resumed.stdout)
    assert a["losses"] == b["losses"] and len(a["losses"]) == 12 and a["val_accuracies"] == b["val_accuracies"]
    ta, tb = _tensors(ck.latest_checkpoint(a["run_dir"])), _tensors(ck.latest_checkpoint(b["run_dir"]))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
