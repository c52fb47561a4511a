"""MultiTaskLoraLinear against peft's own LoRA layer (the oracle): delta weights, outputs merged and unmerged,
gradients for a mixed batch of several tasks, export to / import from peft's adapter format.

Tiny random BERT and RoBERTa configurations are built here (no downloads); float64 so the tolerances are tight.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from llm.multilora import (  # noqa: E402
    MultiTaskHead,
    MultiTaskLoraLinear,
    export_task_adapter,
    inject_multitask_lora,
    multitask_modules,
    set_mode,
    task_ids,
)
from multilora_support import TOL, build_pair, mixed_batch, tiny_model  # noqa: E402

torch.set_num_threads(1)



# ---------------------------------------------------------------------------------------------------------------
# single layer: init, delta weights, outputs, modes (hypothesis over sizes: cheap)


def test_init_is_peft_init_per_task():
    torch.manual_seed(3)
    layer = MultiTaskLoraLinear(nn.Linear(11, 5), n_tasks=4, r=3, alpha=6)
    torch.manual_seed(3)
    nn.Linear(11, 5)  # consumes the generator as the layer's base did
    expected = torch.empty(4, 3, 11)
    for t in range(4):
        nn.init.kaiming_uniform_(expected[t], a=math.sqrt(5))
    assert torch.equal(layer.lora_A.detach(), expected)
    assert torch.count_nonzero(layer.lora_B) == 0
    # kaiming-uniform with a = sqrt(5) on an (r, d_in) weight is U(-1/sqrt(d_in), 1/sqrt(d_in)), as peft's A
    bound = 1 / math.sqrt(11)
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.5 * bound
    peft_layer = _peft_linear(nn.Linear(11, 5), T=1, r=3, alpha=6)
    assert peft_layer.lora_A["t0"].weight.abs().max() <= bound
    assert layer.scaling == peft_layer.scaling["t0"] == 2.0


def _peft_linear(linear, *, T, r, alpha, dropout=0.0):
    holder = nn.Module()
    holder.lin = linear
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=["lin"])
    for t in range(T):
        holder = peft.inject_adapter_in_model(cfg, holder, adapter_name=f"t{t}")
    holder.lin.base_layer.requires_grad_(True)  # peft freezes the base; Meta-LoRA trains it
    return holder.lin


@settings(max_examples=25, deadline=None)
@given(d_in=st.integers(1, 9), d_out=st.integers(1, 9), T=st.integers(1, 4), r=st.integers(1, 5),
       alpha=st.sampled_from([1, 8, 16, 3.5]), n=st.integers(1, 6), length=st.integers(1, 3),
       mode=st.sampled_from(["gather", "grouped"]), seed=st.integers(0, 2**16))
def test_layer_matches_peft(d_in, d_out, T, r, alpha, n, length, mode, seed):
    torch.manual_seed(seed)
    lin = nn.Linear(d_in, d_out).double()
    ours = MultiTaskLoraLinear(copy.deepcopy(lin), n_tasks=T, r=r, alpha=alpha, mode=mode)
    with torch.no_grad():
        ours.lora_A.normal_()
        ours.lora_B.normal_()
    theirs = _peft_linear(copy.deepcopy(lin), T=T, r=r, alpha=alpha)
    with torch.no_grad():
        for t in range(T):
            theirs.lora_A[f"t{t}"].weight.copy_(ours.lora_A[t])
            theirs.lora_B[f"t{t}"].weight.copy_(ours.lora_B[t])
    for t in range(T):
        torch.testing.assert_close(ours.get_delta_weight(t), theirs.get_delta_weight(f"t{t}"), **TOL)
    x = torch.randn(n, length, d_in, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, T, (n,))
    with task_ids(ours, ids):
        y = ours(x)
    c = torch.randn_like(y)
    (y * c).sum().backward()
    x_ours, x.grad = x.grad, None
    expected = torch.empty_like(y)
    for t in range(T):
        rows = ids == t
        if rows.any():
            theirs.set_adapter(f"t{t}")
            yt = theirs(x[rows])
            expected[rows] = yt.detach()
            (yt * c[rows]).sum().backward()
    torch.testing.assert_close(y, expected, **TOL)
    torch.testing.assert_close(x_ours, x.grad, **TOL)
    torch.testing.assert_close(ours.base_layer.weight.grad, theirs.base_layer.weight.grad, **TOL)
    for t in range(T):
        present = bool((ids == t).any())
        ga, gb = theirs.lora_A[f"t{t}"].weight.grad, theirs.lora_B[f"t{t}"].weight.grad
        if present:
            torch.testing.assert_close(ours.lora_A.grad[t], ga, **TOL)
            torch.testing.assert_close(ours.lora_B.grad[t], gb, **TOL)
        else:  # an absent task's adapter gets exactly zero gradient
            assert torch.count_nonzero(ours.lora_A.grad[t]) == 0 and torch.count_nonzero(ours.lora_B.grad[t]) == 0


def test_dropout_is_identity_in_eval_and_only_on_the_lora_branch():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    layer = MultiTaskLoraLinear(lin, n_tasks=2, r=2, alpha=4, dropout=0.5)
    x = torch.randn(5, 3, 6)
    ids = torch.tensor([0, 1, 1, 0, 1])
    with task_ids(layer, ids):
        layer.train()
        assert torch.equal(layer(x), lin(x))  # B = 0: dropout must not touch the base path
        with torch.no_grad():
            layer.lora_B.normal_()
        no_drop = MultiTaskLoraLinear(copy.deepcopy(lin), n_tasks=2, r=2, alpha=4, dropout=0.0)
        no_drop.load_state_dict(layer.state_dict())
        no_drop._task_ids = ids
        y_train = layer(x)
        assert not torch.allclose(y_train, no_drop(x))  # dropout is active in training ...
        layer.eval()
        assert torch.equal(layer(x), no_drop(x))  # ... and the identity in eval mode
    # peft applies the same dropout module to the same place: its eval output equals ours
    theirs = _peft_linear(copy.deepcopy(lin), T=2, r=2, alpha=4, dropout=0.5)
    theirs.eval()
    with torch.no_grad():
        for t in range(2):
            theirs.lora_A[f"t{t}"].weight.copy_(layer.lora_A[t])
            theirs.lora_B[f"t{t}"].weight.copy_(layer.lora_B[t])
        theirs.set_adapter("t1")
        with task_ids(layer, ids):
            torch.testing.assert_close(theirs(x[ids == 1]), layer(x)[ids == 1])


# ---------------------------------------------------------------------------------------------------------------
# whole models: BERT (with per-task heads) and RoBERTa, mixed batch of three tasks


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_mixed_batch_outputs_and_gradients_match_peft_task_by_task(arch):
    T = 3
    base, ours, names, pm = build_pair(arch, T=T)
    assert len(names) == (2 * 6 + 1 if arch == "bert" else 2 * 6)  # RoBERTa's pooler is unused by its head
    ours.train()
    pm.train()
    x, mask = mixed_batch(1)
    ids = torch.tensor([2, 0, 1, 0, 2, 1, 1])
    with task_ids(ours, ids):
        logits = ours(input_ids=x, attention_mask=mask).logits
    c = torch.randn(logits.shape, generator=torch.Generator().manual_seed(5), dtype=logits.dtype)
    (logits * c).sum().backward()
    expected = torch.empty_like(logits)
    for t in range(T):
        rows = ids == t
        pm.base_model.set_adapter(f"t{t}")
        for n, p in pm.named_parameters():  # set_adapter re-freezes; the base is trained jointly in Meta-LoRA
            if "lora_" not in n and "modules_to_save" not in n and "original_module" not in n:
                p.requires_grad_(True)
        out = pm(input_ids=x[rows], attention_mask=mask[rows]).logits
        expected[rows] = out.detach()
        (out * c[rows]).sum().backward()
    torch.testing.assert_close(logits, expected, **TOL)
    theirs = dict(pm.base_model.model.named_parameters())
    checked = 0
    for name, p in ours.named_parameters():
        if ".lora_" in name or name.startswith("classifier.") and arch == "bert":
            continue
        q = theirs[name]
        if p.grad is None:  # e.g. RoBERTa's unused pooler
            assert q.grad is None
            continue
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=f"base gradient of {name}")
        checked += 1
    assert checked > 20
    for name, m in multitask_modules(ours):
        pmod = pm.base_model.model.get_submodule(name)
        for t in range(T):
            if isinstance(m, MultiTaskLoraLinear):
                torch.testing.assert_close(m.lora_A.grad[t], pmod.lora_A[f"t{t}"].weight.grad, **TOL)
                torch.testing.assert_close(m.lora_B.grad[t], pmod.lora_B[f"t{t}"].weight.grad, **TOL)
                torch.testing.assert_close(m.get_delta_weight(t), pmod.get_delta_weight(f"t{t}"), **TOL)
            else:
                torch.testing.assert_close(m.weight.grad[t], pmod.modules_to_save[f"t{t}"].weight.grad, **TOL)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_merged_outputs_match_peft_merged(arch):
    T = 3
    _, ours, names, pm = build_pair(arch, T=T, seed=4)
    ours.eval()
    pm.eval()
    x, mask = mixed_batch(2)
    ids = torch.tensor([1, 1, 0, 2, 0, 1, 2])
    with torch.no_grad(), task_ids(ours, ids):
        unmerged = ours(input_ids=x, attention_mask=mask).logits
    for t in range(T):
        rows = ids == t
        pm.base_model.set_adapter(f"t{t}")
        pm.merge_adapter()
        with torch.no_grad():
            theirs = pm(input_ids=x[rows], attention_mask=mask[rows]).logits
        pm.unmerge_adapter()
        torch.testing.assert_close(unmerged[rows], theirs, **TOL)
        lora_layers = [m for _, m in multitask_modules(ours) if isinstance(m, MultiTaskLoraLinear)]
        for m in lora_layers:
            m.merge(t)
        with torch.no_grad(), task_ids(ours, ids[rows]):
            merged = ours(input_ids=x[rows], attention_mask=mask[rows]).logits
        with torch.no_grad(), task_ids(ours, ids), pytest.raises(RuntimeError, match=f"task {t} is merged"):
            ours(input_ids=x, attention_mask=mask)  # a merged model refuses other tasks' examples
        for m in lora_layers:
            m.unmerge()
        torch.testing.assert_close(merged, theirs, **TOL)
    with torch.no_grad(), task_ids(ours, ids):  # unmerge restored the base exactly enough
        torch.testing.assert_close(ours(input_ids=x, attention_mask=mask).logits, unmerged, **TOL)



# ---------------------------------------------------------------------------------------------------------------
# modes, heads, errors


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_grouped_mode_equals_gather_mode(arch):
    _, ours, _, _ = build_pair(arch, T=4, seed=2)
    x, mask = mixed_batch(4)
    ids = torch.tensor([3, 3, 0, 2, 0, 3, 2])
    outs, grads = [], []
    for mode in ("gather", "grouped"):
        set_mode(ours, mode)
        ours.zero_grad()
        with task_ids(ours, ids):
            y = ours(input_ids=x, attention_mask=mask).logits
        y.sum().backward()
        outs.append(y.detach())
        grads.append(torch.cat([p.grad.flatten() for n, p in ours.named_parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[0], outs[1], **TOL)
    torch.testing.assert_close(grads[0], grads[1], **TOL)


def test_head_from_linear_gathers_per_example():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).double()
    head = MultiTaskHead.from_linear(lin, 4)
    x = torch.randn(6, 5, dtype=torch.float64)
    ids = torch.tensor([0, 3, 1, 3, 2, 0])
    with task_ids(head, ids):
        torch.testing.assert_close(head(x), lin(x), **TOL)  # all heads start as copies
        with torch.no_grad():
            head.weight.normal_()
            head.bias.normal_()
        y = head(x)
    for b in range(6):
        torch.testing.assert_close(y[b], head.task_linear(int(ids[b]))(x[b]), **TOL)


def test_bad_input_is_refused_with_clear_errors():
    model = tiny_model("bert")
    for kwargs, pattern in [
        (dict(n_tasks=0, r=4), "n_tasks must be an integer >= 1, got 0"),
        (dict(n_tasks=2, r=0), "rank r must be an integer >= 1, got 0"),
        (dict(n_tasks=2, r=-3), "got -3"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            inject_multitask_lora(model, alpha=8, dropout=0.1, target_modules="all-linear", **kwargs)
    with pytest.raises(ValueError, match="dropout must be in"):
        inject_multitask_lora(model, n_tasks=2, r=2, alpha=8, dropout=1.0, target_modules="all-linear")
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        inject_multitask_lora(model, n_tasks=2, r=2, alpha=8, dropout=0.0, target_modules=["no_such_layer"])
    assert not multitask_modules(model)  # nothing was changed by the refused calls
    inject_multitask_lora(model, n_tasks=2, r=2, alpha=8, dropout=0.0, target_modules=["query", "value"])
    x, mask = mixed_batch(0, n=3)
    with pytest.raises(RuntimeError, match="no task index set"):
        model(input_ids=x)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        with task_ids(model, torch.tensor([0, 2, 1])):
            pass
    with pytest.raises(ValueError, match="1-D integer tensor"):
        with task_ids(model, torch.tensor([0.0, 1.0, 1.0])):
            pass
    with pytest.raises(ValueError, match="3 entries but the input's leading"):
        with task_ids(model, torch.tensor([0, 1, 1])):
            model(input_ids=x[:2])
    with pytest.raises(ValueError, match="task index must be an integer in"):
        export_task_adapter(model, 2, "/nonexistent/never")
    with pytest.raises(ValueError, match="already holds"):
        inject_multitask_lora(model, n_tasks=2, r=2, alpha=8, dropout=0.0, target_modules=["key"])


@pytest.mark.parametrize("mode", ["gather", "grouped"])
def test_bf16_autocast_runs_and_stays_close(mode):
    """The GPU path (bf16 autocast) tried on the CPU: same dtype flow, outputs within bf16 rounding."""
    torch.manual_seed(0)
    lin = nn.Linear(32, 24)
    layer = MultiTaskLoraLinear(lin, n_tasks=3, r=4, alpha=8, mode=mode)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 7, 32)
    ids = torch.tensor([2, 0, 1, 1, 0])
    with task_ids(layer, ids):
        ref = layer(x)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            y = layer(x)
            y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    scale = float(ref.abs().max())  # bf16 keeps 8 bits: errors are relative to the largest output
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=1e-2 * scale)
    assert layer.lora_A.grad.dtype == torch.float32 and torch.isfinite(layer.lora_A.grad).all()


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_lora_dropout_keeps_one_minus_p_and_rescales(p):
    """The LoRA-branch dropout has nn.Dropout's law: keep with probability 1 - p, kept values scaled by 1/(1-p)."""
    from llm.multilora.layers import _lora_dropout

    def dropout(x, training):
        masked, factor = _lora_dropout(x, nn.Dropout(p), training)
        return masked * factor

    n = 200_000
    x = torch.ones(n)
    y = dropout(x, True)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    frac = kept.double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(frac - (1 - p)) < 5 * sigma
    assert torch.equal(dropout(x, False), x)
    g = torch.ones(n, requires_grad=True)
    dropout(g, True).sum().backward()
    values = torch.unique(g.grad)
    assert len(values) == 2 and values[0] == 0 and abs(values[1].item() - 1 / (1 - p)) < 1e-6
