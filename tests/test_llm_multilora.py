"""MultiTaskLoraLinear against peft's own LoRA layer (the oracle): delta weights, outputs merged and unmerged,
gradients for a mixed batch of several tasks, export to / import from peft's adapter format.

Tiny random BERT and RoBERTa configurations are built here (no downloads); float64 so the tolerances are tight.
"""

from __future__ import annotations

import copy
import json
import math
import os

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
    import_task_adapter,
    inject_multitask_head,
    inject_multitask_lora,
    multitask_modules,
    set_mode,
    task_ids,
    unload_multitask_lora,
)

torch.set_num_threads(1)
TOL = dict(rtol=1e-9, atol=1e-11)


def _tiny(arch: str, seed: int = 0):
    kw = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    torch.manual_seed(seed)
    if arch == "bert":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(max_position_embeddings=32, **kw))
    else:
        model = transformers.RobertaForSequenceClassification(
            transformers.RobertaConfig(max_position_embeddings=40, pad_token_id=1, **kw))
    return model.double()


def _randomise(model, seed: int, scale: float = 0.3):
    """Give every adapter and head slice random values (B starts at zero, which would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in multitask_modules(model):
            for p in m.parameters(recurse=False):
                p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _peft_twin(base, ours, names, *, T, r, alpha, heads: bool):
    """A peft model with adapters t0..t{T-1} holding exactly our adapters' (and heads') values; base trainable."""
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(names),
                          modules_to_save=["classifier"] if heads else None)
    pm = peft.get_peft_model(copy.deepcopy(base), cfg, adapter_name="t0")
    for t in range(1, T):
        pm.add_adapter(f"t{t}", cfg)
    with torch.no_grad():
        for name, m in multitask_modules(ours):
            pmod = pm.base_model.model.get_submodule(name)
            for t in range(T):
                if isinstance(m, MultiTaskLoraLinear):
                    pmod.lora_A[f"t{t}"].weight.copy_(m.lora_A[t])
                    pmod.lora_B[f"t{t}"].weight.copy_(m.lora_B[t])
                else:
                    pmod.modules_to_save[f"t{t}"].weight.copy_(m.weight[t])
                    pmod.modules_to_save[f"t{t}"].bias.copy_(m.bias[t])
    for n, p in pm.named_parameters():
        if "lora_" not in n and "modules_to_save" not in n and "original_module" not in n:
            p.requires_grad_(True)
    return pm


def _build(arch, *, T=3, r=4, alpha=8, heads=None, seed=0):
    heads = (arch == "bert") if heads is None else heads
    base = _tiny(arch, seed)
    ours = copy.deepcopy(base)
    names = inject_multitask_lora(ours, n_tasks=T, r=r, alpha=alpha, dropout=0.0, target_modules="all-linear")
    if heads:
        inject_multitask_head(ours, n_tasks=T, module_name="classifier")
    _randomise(ours, seed + 1)
    return base, ours, names, _peft_twin(base, ours, names, T=T, r=r, alpha=alpha, heads=heads)


def _batch(seed, n=7, length=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[1, 6:] = 0  # some padding, so the attention mask matters
    return ids, mask


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
    base, ours, names, pm = _build(arch, T=T)
    assert len(names) == (2 * 6 + 1 if arch == "bert" else 2 * 6)  # RoBERTa's pooler is unused by its head
    ours.train()
    pm.train()
    x, mask = _batch(1)
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
    _, ours, names, pm = _build(arch, T=T, seed=4)
    ours.eval()
    pm.eval()
    x, mask = _batch(2)
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
# export / import in peft's format


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_export_loads_in_peft_with_same_outputs(arch, tmp_path):
    T = 3
    base, ours, names, _ = _build(arch, T=T, seed=7)
    with torch.no_grad():  # retraining changes the base too: export must go with the unloaded base
        for n, p in ours.named_parameters():
            if "lora_" not in n and n.endswith("base_layer.weight"):
                p.add_(0.01)
    ours.eval()
    x, mask = _batch(3)
    ids = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    with torch.no_grad(), task_ids(ours, ids):
        logits = ours(input_ids=x, attention_mask=mask).logits
    for t in range(T):
        out = export_task_adapter(ours, t, tmp_path / f"task{t}", base_model_name_or_path="tiny")
        with open(os.path.join(out, "adapter_config.json"), encoding="utf-8") as fh:
            cfg = json.load(fh)
        assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and sorted(cfg["target_modules"]) == names
        assert cfg["base_model_name_or_path"] == "tiny"
        assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    plain = unload_multitask_lora(copy.deepcopy(ours))
    assert not multitask_modules(plain)
    for t in range(T):
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(plain), str(tmp_path / f"task{t}"))
        loaded.eval()
        rows = ids == t
        with torch.no_grad():
            theirs = loaded(input_ids=x[rows], attention_mask=mask[rows]).logits
        torch.testing.assert_close(logits[rows], theirs, **TOL)


def test_import_round_trip_and_peft_saved_adapter(tmp_path):
    T = 3
    base, ours, names, pm = _build("bert", T=T, seed=11)
    export_task_adapter(ours, 1, tmp_path / "t1")
    other = copy.deepcopy(base)
    inject_multitask_lora(other, n_tasks=T, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    inject_multitask_head(other, n_tasks=T, module_name="classifier")
    import_task_adapter(other, 2, tmp_path / "t1")
    for (name, m), (_, o) in zip(multitask_modules(ours), multitask_modules(other)):
        for p, q in zip(m.parameters(recurse=False), o.parameters(recurse=False)):
            assert torch.equal(q[2], p[1]), name
            assert not torch.equal(q[0], p[1]) or torch.count_nonzero(p[1]) == 0
    # an adapter saved by peft itself (adapter "t0" of the twin) imports into task 0
    pm.save_pretrained(str(tmp_path / "peft_saved"), selected_adapters=["t0"])
    import_task_adapter(other, 0, tmp_path / "peft_saved" / "t0")  # peft saves a non-default adapter in a subfolder
    for (name, m), (_, o) in zip(multitask_modules(ours), multitask_modules(other)):
        if isinstance(m, MultiTaskLoraLinear):
            assert torch.equal(o.lora_A[0], m.lora_A[0]) and torch.equal(o.lora_B[0], m.lora_B[0]), name
    # wrong rank is refused, naming both values
    wrong = copy.deepcopy(base)
    inject_multitask_lora(wrong, n_tasks=T, r=2, alpha=8, dropout=0.0, target_modules="all-linear")
    with pytest.raises(ValueError, match="r=4.*r=2"):
        import_task_adapter(wrong, 0, tmp_path / "t1")
    with pytest.raises(ValueError, match="not found"):
        import_task_adapter(other, 0, tmp_path / "nothing")


@pytest.mark.parametrize("arch, head", [("bert", "classifier"), ("roberta", "classifier.out_proj")])
def test_seq_cls_export_loads_in_peft_and_reproduces_each_tasks_logits(arch, head, tmp_path):
    """peft's SEQ_CLS models save and expect the whole classification module (RoBERTa: dense + out_proj)."""
    T = 2
    base = _tiny(arch, 3)
    ours = copy.deepcopy(base)
    inject_multitask_lora(ours, n_tasks=T, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    inject_multitask_head(ours, n_tasks=T, module_name=head)
    _randomise(ours, 5)
    ours.eval()
    x, mask = _batch(4)
    for t in range(T):
        export_task_adapter(ours, t, tmp_path / f"t{t}", task_type="SEQ_CLS")
        with open(tmp_path / f"t{t}" / "adapter_config.json", encoding="utf-8") as fh:
            assert json.load(fh)["modules_to_save"] == ["classifier"]
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / f"t{t}")).eval()
        with torch.no_grad(), task_ids(ours, torch.full((x.shape[0],), t)):
            mine = ours(input_ids=x, attention_mask=mask).logits
            theirs = loaded(input_ids=x, attention_mask=mask).logits
        torch.testing.assert_close(mine, theirs, **TOL)
        # and the folder imports back into another task slot with the same outputs
        other = copy.deepcopy(base)
        inject_multitask_lora(other, n_tasks=T, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
        inject_multitask_head(other, n_tasks=T, module_name=head)
        import_task_adapter(other, 1 - t, tmp_path / f"t{t}")
        with torch.no_grad(), task_ids(other.eval(), torch.full((x.shape[0],), 1 - t)):
            torch.testing.assert_close(other(input_ids=x, attention_mask=mask).logits, mine, **TOL)


def _peft_saved(tmp_path, base, **lora_kw):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"], **lora_kw)
    pm = peft.get_peft_model(copy.deepcopy(base), cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    path = tmp_path / "saved"
    pm.save_pretrained(str(path))
    return path


@pytest.mark.parametrize("lora_kw, field", [
    (dict(alpha_pattern={"query": 32}), "alpha_pattern"),
    (dict(rank_pattern={"value": 2}), "rank_pattern"),
    (dict(use_rslora=True), "use_rslora"),
    (dict(use_dora=True), "use_dora"),
    (dict(bias="lora_only"), "bias"),
])
def test_import_refuses_peft_fields_it_would_compute_differently(lora_kw, field, tmp_path):
    base = _tiny("bert", 1)
    path = _peft_saved(tmp_path, base, **lora_kw)
    ours = copy.deepcopy(base)
    inject_multitask_lora(ours, n_tasks=2, r=4, alpha=8, dropout=0.0, target_modules=["query", "value"])
    with pytest.raises(ValueError, match=field):
        import_task_adapter(ours, 0, path)


def test_import_of_a_plain_peft_adapter_matches_peft(tmp_path):
    base = _tiny("bert", 2)
    path = _peft_saved(tmp_path, base, alpha_pattern={"query": 8})  # a pattern equal to the global alpha: same
    ours = copy.deepcopy(base)
    inject_multitask_lora(ours, n_tasks=2, r=4, alpha=8, dropout=0.0, target_modules=["query", "value"])
    import_task_adapter(ours, 1, path)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(path)).eval()
    x, mask = _batch(2)
    with torch.no_grad(), task_ids(ours.eval(), torch.ones(x.shape[0], dtype=torch.long)):
        torch.testing.assert_close(ours(input_ids=x, attention_mask=mask).logits,
                                   loaded(input_ids=x, attention_mask=mask).logits, **TOL)


# ---------------------------------------------------------------------------------------------------------------
# modes, heads, errors


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_grouped_mode_equals_gather_mode(arch):
    _, ours, _, _ = _build(arch, T=4, seed=2)
    x, mask = _batch(4)
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
    model = _tiny("bert")
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
    x, mask = _batch(0, n=3)
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
