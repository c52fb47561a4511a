"""Data-parallel retraining: the smoke retraining launched as two CPU processes (torchrun, gloo backend).

``accelerate launch --cpu --num_processes 2`` starts one process here (accelerate's multi-CPU mode wants an MPI
launcher), so the two processes come from ``torchrun --nproc_per_node 2``, which ``accelerate.Accelerator`` reads
the same way. A probe script wraps the real entry point (``python -m llm retrain``) and records, per process and
epoch, the sample indices each training batch held and every checkpoint write; the test then checks that the two
processes together see every retraining sample exactly once per epoch, and that each epoch's checkpoint is
written once (by the main process).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

import pytest

pytest.importorskip("accelerate")
torch = pytest.importorskip("torch")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))

PROBE = r'''
import json, os, sys
sys.path.insert(0, {root!r})
import llm.checkpoint, llm.tokens, llm.train
from llm.__main__ import main

rank = int(os.environ.get("RANK", "0"))
log = {{"rank": rank, "world": int(os.environ.get("WORLD_SIZE", "1")), "batches": {{}}, "saves": []}}
state = {{"epoch": None}}
real_epoch, real_collate, real_save = llm.train.train_epoch, llm.tokens.Split.batch, llm.checkpoint.save_checkpoint

def train_epoch(*a, **kw):
    state["epoch"] = kw["epoch"]
    try:
        return real_epoch(*a, **kw)
    finally:
        state["epoch"] = None

def collate(self, idx, *a, **kw):
    if state["epoch"] is not None:
        log["batches"].setdefault(str(state["epoch"]), []).append([int(i) for i in idx])
    return real_collate(self, idx, *a, **kw)

def save(out_dir, epoch, **kw):
    log["saves"].append(epoch)
    return real_save(out_dir, epoch, **kw)

llm.train.train_epoch = train_epoch
llm.tokens.Split.batch = collate
llm.train.ckpt_mod.save_checkpoint = save
code = main(sys.argv[1:])
with open(os.path.join({logdir!r}, f"rank{{rank}}.json"), "w") as fh:
    json.dump(log, fh)
sys.exit(code)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["meta-lora", "sr"])
def test_two_cpu_processes_see_every_example_once_and_write_once(tmp_path, method):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    from llm.config import preset
    from llm.data import load_tasks

    cfg = preset("smoke")
    n_samples = sum(len(t.train) for t in load_tasks(cfg).retrain)
    logdir = tmp_path / "logs"
    logdir.mkdir()
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(root=ROOT, logdir=str(logdir)))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", METALORA_CACHE=str(tmp_path / "cache"))
    args = ["retrain", "--preset", "smoke", "--method", method, "--out", str(out), "--device", "cpu",
            "--no-progress", "--threads", "1"]
    if method == "meta-lora":
        args += ["--rank", "4", "--schedule", "batched"]
    cmd = ["torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(probe), *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    logs = [json.loads((logdir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [lg["world"] for lg in logs] == [2, 2]
    for epoch in range(cfg.retrain_epochs):
        seen = [i for lg in logs for batch in lg["batches"][str(epoch)] for i in batch]
        assert sorted(seen) == list(range(n_samples)), f"epoch {epoch}: samples seen {sorted(seen)}"
        assert all(lg["batches"][str(epoch)] for lg in logs)  # both processes did work
    assert logs[0]["saves"] == list(range(1, cfg.retrain_epochs + 1))  # the main process writes each epoch once
    assert logs[1]["saves"] == []
    latest, best = (out / "LATEST").read_text().strip(), (out / "BEST").read_text().strip()
    assert (out / latest / "model.safetensors").is_file() and (out / best / "model.safetensors").is_file()
    assert sorted(d for d in os.listdir(out) if d.startswith("epoch")) == sorted({latest, best})
