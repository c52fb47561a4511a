"""``python -m llm planted``: Theorems 3.1 and 3.3 (Corollaries 1 and 3) inside the pretrained MiniLM, planted truth.

For every chosen linear layer (``--layers``, a regex over module names; default the top block's attention output
projection ``encoder.layer.5.attention.output.dense``, 384 x 384, LayerNorm, FFN and LayerNorm above) with
pretrained weight ``W0``, a shared shift ``S`` and rank-k perturbations ``Delta_t = B_t C_t^T`` are drawn
(:func:`llm.planted_model.plant`): task t's teacher has ``W0 + S + Delta_t`` there, ``A* = W0 + S``. Inputs are
real chitchat turns (:mod:`llm.planted_data`), targets the teacher's final hidden states ``(B, L, 384)`` (mean
squared error over real tokens and features). Students start at ``W0`` and train what :mod:`llm.planted_train`
states; all else is frozen and shared with the teachers. Each seed and setting (T, k) records retraining curves,
the spectra of ``W_SR - A*`` and ``W_Meta - A*`` (data metric) against the linear prediction ``mean_t Delta_t``,
and held-out losses of rank-r LoRA fine-tuning of the new task (r = k, 2k, 3k, (T+1)k) on SR's, Meta-LoRA's and
the pretrained base ("none"); :mod:`llm.planted_report` makes CSVs, PNGs, ``summary.json`` and verdicts of them.

Seeds are the unit of replication: seed s redraws the planted truth, the split of the turn pool into tasks, the
LoRA initialisations and the batch order; a seed's settings share its draws where they can (nested tasks).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from .config import LLMError
from .planted_config import DEFAULT_LAYERS, PRESETS, PlantedConfig, finetune_ranks, planted_preset

__all__ = ["PlantedConfig", "PRESETS", "planted_preset", "finetune_ranks", "run_planted", "DEFAULT_LAYERS"]

def _seed_int(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------- one (seed, T, k)

class _Context:
    """What every run of one invocation shares: config, model, chosen layers, pool, predict function."""

    def __init__(self, cfg: PlantedConfig, model, names, pool):
        from .planted_model import forward_top, layer_output

        self.cfg, self.model, self.names, self.pool = cfg, model, names, pool
        if cfg.target == "layer":
            self.predict = lambda m, c: layer_output(m, c, names[0])
        else:
            self.predict = forward_top

    @torch.no_grad()
    def outputs(self, weights: dict, cache) -> torch.Tensor:
        from .planted_model import set_weights

        with set_weights(self.model, weights):
            return self.predict(self.model, cache)


def _plant_all(ctx: _Context, seed: int, T: int, k: int) -> dict:
    from .planted_model import base_linear, plant

    c = ctx.cfg
    return {n: plant(base_linear(ctx.model, n).weight, n_tasks=T + 1, k=k, shift_scale=c.shift_scale,
                     delta_scale=c.delta_scale, shift_rank=c.shift_rank,
                     generator=torch.Generator().manual_seed(_seed_int(seed, k, i, 1)))
            for i, n in enumerate(ctx.names)}


def _second_moments(ctx: _Context, planted: dict, cache) -> dict:
    """Sigma of each chosen layer's inputs over ``cache`` in the A* network (direct at the resume point)."""
    from .planted_model import layer_position, set_weights
    from .planted_train import input_second_moment

    at_cache = [n for n in ctx.names if layer_position(n) == (cache.block, cache.stage)]
    out = {}
    if at_cache:
        x = cache.tensors[0][cache.token_mask].double()
        sigma = x.T @ x / x.shape[0]
        out.update({n: sigma for n in at_cache})
    rest = tuple(n for n in ctx.names if n not in out)
    if rest:
        with set_weights(ctx.model, {n: p.A_star for n, p in planted.items()}):
            out.update(input_second_moment(ctx.model, rest, cache, ctx.predict))
    return out


def _spectra(ctx: _Context, planted: dict, sigma: dict, weights: dict, T: int, k: int) -> list[dict]:
    from .planted_train import weighted_spectrum

    recs = []
    keep = 2 * (T + 1) * k + 4
    for n, p in planted.items():
        d_bar = torch.stack([p.delta(t).double() for t in range(T)]).mean(0)
        pred = weighted_spectrum(d_bar, sigma[n])
        tau = ctx.cfg.threshold * float(pred[T * k - 1])
        for method, diff in [("linear-prediction", d_bar),
                             *((m, w[n].double() - p.A_star.double()) for m, w in weights.items())]:
            sv = weighted_spectrum(diff, sigma[n])
            raw = weighted_spectrum(diff, None)
            proj = float(torch.sum((diff @ _root(sigma[n])) * (d_bar.double() @ _root(sigma[n]))))
            recs.append({"layer": n, "method": method, "threshold": tau, "numerical_rank": int((sv > tau).sum()),
                         "singular_values": sv[:keep].tolist(), "raw_singular_values": raw[:keep].tolist(),
                         "bias_coefficient": proj / float(pred.pow(2).sum())})
    return recs


def _root(sigma: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(sigma.double())
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def _run_setting(ctx: _Context, split, seed: int, T: int, k: int, log) -> dict:
    """Retrain (SR, Meta-LoRA), spectra, fine-tune every base at every rank and n, for one seed and setting."""
    from .planted_train import finetune, retrain

    cfg, pool = ctx.cfg, ctx.pool
    planted = _plant_all(ctx, seed, T, k)
    teach = [{n: p.teacher(t) for n, p in planted.items()} for t in range(T + 1)]
    rows = [pool.rows(split.retrain[t]) for t in range(T)]
    cache = pool.cache.take(torch.cat(rows))
    task_of_row = torch.cat([torch.full((len(r),), t, dtype=torch.long) for t, r in enumerate(rows)])
    targets = torch.cat([ctx.outputs(teach[t], pool.cache.take(r)) for t, r in enumerate(rows)])
    weights = {"none": {n: p.W0 for n, p in planted.items()}}
    curves = []
    for method in ("sr", "meta-lora"):
        t0 = time.perf_counter()
        res = retrain(ctx.model, ctx.names, cache, targets, task_of_row, method=method, k=k,
                      steps=cfg.retrain_steps, lr=cfg.retrain_lr, lr_adapter=cfg.retrain_lr_adapter,
                      seed=_seed_int(seed, T, k, 3), predict=ctx.predict, per_task=cfg.retrain_batch)
        weights[method] = res.weights
        curves.append({"method": method, "losses": list(res.losses)})
        log(f"seed {seed} T={T} k={k}: {method} retrained, last loss {res.losses[-1]:.3g} "
            f"({time.perf_counter() - t0:.0f} s)")
    eval_rows = torch.cat([torch.nonzero(task_of_row == t)[:cfg.eval_rows, 0] for t in range(T)])
    ev_cache, ev_targets = cache.take(eval_rows), targets[eval_rows]
    d_bar = {n: p.A_star + torch.stack([p.delta(t) for t in range(T)]).mean(0) for n, p in planted.items()}
    pooled = {name: _pooled_loss(ctx, W, ev_cache, ev_targets)
              for name, W in [("a-star", {n: p.A_star for n, p in planted.items()}),
                              ("linear-prediction", d_bar), ("none", weights["none"]),
                              ("sr", weights["sr"]), ("meta-lora", weights["meta-lora"])]}
    sigma = _second_moments(ctx, planted, cache)
    spectra = _spectra(ctx, planted, sigma, {m: weights[m] for m in ("sr", "meta-lora", "none")}, T, k)
    fits = _finetune_all(ctx, split, seed, T, k, teach[T], weights, finetune)
    return {"T": T, "k": k, "seed": seed, "retrain": curves, "pooled_loss": pooled, "spectra": spectra,
            "finetune": fits}


def _pooled_loss(ctx: _Context, weights: dict, cache, targets) -> float:
    from .planted_model import masked_mse

    return float(masked_mse(ctx.outputs(weights, cache), targets, cache.token_mask))


def _finetune_all(ctx: _Context, split, seed: int, T: int, k: int, teacher: dict, weights: dict, finetune):
    cfg, pool = ctx.cfg, ctx.pool
    test_cache = pool.cache.take(pool.rows(split.heldout))
    test = (test_cache, ctx.outputs(teacher, test_cache))
    sweep = tuple(cfg.n_sweep_setting) == (T, k)
    fits = []
    for n in (cfg.n_values if sweep else [cfg.finetune_turns]):
        tr_cache = pool.cache.take(pool.rows(split.new_train[:n]))
        train = (tr_cache, ctx.outputs(teacher, tr_cache))
        ranks = finetune_ranks(T, k) if n == cfg.finetune_turns else sorted({k, (T + 1) * k})
        for r in ranks:
            for method in ("none", "sr", "meta-lora"):
                cv = finetune(ctx.model, ctx.names, weights[method], r=r, train=train, test=test,
                              steps=cfg.finetune_steps, seed=_seed_int(seed, T, k, r, n, 4),
                              eval_every=cfg.eval_every, predict=ctx.predict)
                fits.append({"n": n, "rank": r, "method": method, "steps": list(cv.steps),
                             "test_loss": list(cv.test_loss), "train_loss": list(cv.train_loss)})
    return fits


# ------------------------------------------------------------------------------------------------------- the run

def run_planted(cfg: PlantedConfig, *, log=print, progress: bool = False) -> dict:
    """Run every seed and setting of ``cfg`` (module docstring); ``log`` gets a line per retraining and for the pool.

    ``layers``: each ``W0``'s shape, Frobenius and spectral norm; ``records``: one per (seed, setting), read by
    :func:`llm.planted_report.summarise`; ``progress``: a tqdm bar over the runs.

    Returns
    -------
    dict
        ``config``, ``layers``, ``pool``, ``records``, ``elapsed_s`` (s), ``threads``, ``load_average`` (start, end).

    Raises
    ------
    LLMError
        Before training: no offline model, no layer matched, ``(T+1) k > min(d_out, d_in)`` (Remark 3.1), too few turns.
    NonFiniteLossError
        When a retraining or fine-tuning loss is not finite.
    """
    from tqdm.auto import tqdm

    from .models import load_tokenizer
    from .planted_data import build_pool, split_pool
    from .planted_model import base_linear, chosen_layers, load_encoder

    start, load_start = time.perf_counter(), os.getloadavg()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = load_encoder(cfg.model)
    names = chosen_layers(model, cfg.layers)
    shapes = {n: tuple(base_linear(model, n).weight.shape) for n in names}
    worst = max((T + 1) * k for T, k in cfg.settings)
    for n, shape in shapes.items():
        if worst > min(shape):
            raise LLMError(f"(T+1) k = {worst} exceeds min(d_out, d_in) = {min(shape)} of layer {n}")
    if cfg.target == "layer" and len(names) != 1:
        raise LLMError(f"target 'layer' (the linear limit) needs exactly one chosen layer, --layers matches "
                       f"{len(names)}: {list(names)}")
    tokenizer = load_tokenizer(cfg.model)
    T_max, n_max = max(T for T, _ in cfg.settings), max(cfg.n_values)
    size = cfg.heldout_turns + n_max + T_max * cfg.retrain_turns
    why = (f"--heldout-turns {cfg.heldout_turns} + largest n {n_max} + largest T {T_max} x --retrain-turns "
           f"{cfg.retrain_turns}")
    pool = build_pool(model, tokenizer, names, size=size, min_tokens=cfg.min_tokens, max_tokens=cfg.max_tokens,
                      data_seed=cfg.data_seed, why=why)
    log(f"pool: {size} turns, {pool.cache.token_mask.sum()} real tokens, cached at block {pool.cache.block} stage "
        f"{pool.cache.stage} ({time.perf_counter() - start:.0f} s)")
    ctx = _Context(cfg, model, names, pool)
    records = []
    jobs = [(s, T, k) for s in cfg.seeds for T, k in cfg.settings]
    for seed, T, k in tqdm(jobs, disable=not progress, desc="planted"):
        split = split_pool(size, seed=seed, m=cfg.heldout_turns, n_max=n_max, N=cfg.retrain_turns, T_max=T_max)
        records.append(_run_setting(ctx, split, seed, T, k, log))
    w0 = {n: {"shape": list(shapes[n]), "frobenius": float(torch.linalg.norm(base_linear(model, n).weight)),
              "spectral": float(torch.linalg.matrix_norm(base_linear(model, n).weight, 2))} for n in names}
    return {"config": cfg.to_dict(), "layers": w0, "pool": {"turns": size, "rows": int(pool.cache.token_mask.sum()),
                                                            "flat": pool.flat},
            "records": records, "elapsed_s": time.perf_counter() - start, "threads": torch.get_num_threads(),
            "load_average": {"start": list(load_start), "end": list(os.getloadavg())}}
