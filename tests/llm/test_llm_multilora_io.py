"""``llm.multilora`` export to / import from peft's adapter format: peft loads what we export with the same outputs,
we import what peft saved, and refuse what we would compute differently.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from llm.multilora import MultiTaskLoraLinear, inject_multitask_head, inject_multitask_lora  # noqa: E402
from llm.multilora import multitask_modules, task_ids, unload_multitask_lora  # noqa: E402
from llm.multilora.peft_io import export_task_adapter, import_task_adapter  # noqa: E402
from multilora_support import TOL, build_pair, mixed_batch, randomise_adapters, tiny_model  # noqa: E402

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_export_loads_in_peft_with_same_outputs(arch, tmp_path):
    T = 3
    base, ours, names, _ = build_pair(arch, T=T, seed=7)
    with torch.no_grad():  # retraining changes the base too: export must go with the unloaded base
        for n, p in ours.named_parameters():
            if "lora_" not in n and n.endswith("base_layer.weight"):
                p.add_(0.01)
    ours.eval()
    x, mask = mixed_batch(3)
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
    base, ours, names, pm = build_pair("bert", T=T, seed=11)
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
    base = tiny_model(arch, 3)
    ours = copy.deepcopy(base)
    inject_multitask_lora(ours, n_tasks=T, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    inject_multitask_head(ours, n_tasks=T, module_name=head)
    randomise_adapters(ours, 5)
    ours.eval()
    x, mask = mixed_batch(4)
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
    base = tiny_model("bert", 1)
    path = _peft_saved(tmp_path, base, **lora_kw)
    ours = copy.deepcopy(base)
    inject_multitask_lora(ours, n_tasks=2, r=4, alpha=8, dropout=0.0, target_modules=["query", "value"])
    with pytest.raises(ValueError, match=field):
        import_task_adapter(ours, 0, path)


def test_import_of_a_plain_peft_adapter_matches_peft(tmp_path):
    base = tiny_model("bert", 2)
    path = _peft_saved(tmp_path, base, alpha_pattern={"query": 8})  # a pattern equal to the global alpha: same
    ours = copy.deepcopy(base)
    inject_multitask_lora(ours, n_tasks=2, r=4, alpha=8, dropout=0.0, target_modules=["query", "value"])
    import_task_adapter(ours, 1, path)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(path)).eval()
    x, mask = mixed_batch(2)
    with torch.no_grad(), task_ids(ours.eval(), torch.ones(x.shape[0], dtype=torch.long)):
        torch.testing.assert_close(ours(input_ids=x, attention_mask=mask).logits,
                                   loaded(input_ids=x, attention_mask=mask).logits, **TOL)
