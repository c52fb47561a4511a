"""Speed of one ``llm planted`` training step from the cached activations against the full encoder.

Both compute the same loss on the same turns (checked: equal to 1e-5): the chosen layer's weight trained, every
other weight frozen, mean squared error of the final hidden states over the real tokens, backward, one Adam step.

* ``full``: the whole encoder from the token ids, every step (what a training loop without the cache runs).
* ``cached``: :func:`llm.planted_model.forward_top` from the activations at the chosen layers' resume point,
  computed once; with the default layer (``encoder.layer.5.attention.output.dense``) the top is position-wise, so
  the cache is flattened to the real tokens (no padding).

Reported: seconds per step (best of ``--repeat``, each repeat long enough to last about a second), the ratio
``full / cached``, thread counts (pinned), versions and the load average, printed and written as JSON.

Example::

    flock /work/cpu.lock python benchmarks/planted_cache.py --turns 64 --threads 2 --json results/planted/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import best_time, environment, pinned_threads, write_json  # noqa: E402


def _steps(turns: int, layers: str):
    import torch

    from llm.models import load_tokenizer
    from llm.planted import DEFAULT_LAYERS
    from llm.planted_data import build_pool
    from llm.planted_model import base_linear, chosen_layers, forward_top, load_encoder, masked_mse

    model = load_encoder("minilm")
    names = chosen_layers(model, layers or DEFAULT_LAYERS)
    tok = load_tokenizer("minilm")
    pool = build_pool(model, tok, names, size=turns, min_tokens=8, max_tokens=16, data_seed=0)
    enc = tok(list(pool.texts), padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        target_full = model(**enc).last_hidden_state + 0.01
    mask = enc["attention_mask"].bool()
    target_cached = target_full[mask].unsqueeze(1) if pool.flat else target_full
    lin = base_linear(model, names[0])
    lin.weight.requires_grad_(True)
    opt = torch.optim.Adam([lin.weight], lr=0.0)  # lr 0: every timed step does the same work on the same weights

    def full():
        opt.zero_grad(set_to_none=True)
        loss = masked_mse(model(**enc).last_hidden_state, target_full, mask)
        loss.backward()
        opt.step()
        return float(loss)

    def cached():
        opt.zero_grad(set_to_none=True)
        loss = masked_mse(forward_top(model, pool.cache), target_cached, pool.cache.token_mask)
        loss.backward()
        opt.step()
        return float(loss)

    a, b = full(), cached()
    if abs(a - b) > 1e-5 * max(abs(a), 1e-12):
        raise SystemExit(f"the two steps compute different losses: {a} and {b}")
    return full, cached, {"layers": list(names), "turns": turns, "real_tokens": int(mask.sum()), "loss": a}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--turns", type=int, default=64, help="turns per step (default 64)")
    p.add_argument("--layers", default=None, help="chosen layers (default: llm planted's)")
    p.add_argument("--threads", type=int, default=2, help="torch / BLAS threads (default 2)")
    p.add_argument("--repeat", type=int, default=5, help="timed repeats (best is kept)")
    p.add_argument("--json", default=None, help="also write the result to this file")
    args = p.parse_args(argv)
    with pinned_threads(args.threads) as threads:
        full, cached, info = _steps(args.turns, args.layers)
        t_full = best_time(full, repeat=args.repeat, min_total=1.0)
        t_cached = best_time(cached, repeat=args.repeat, min_total=1.0)
    out = {"benchmark": "planted_cache", **info, "seconds_per_step": {"full": t_full, "cached": t_cached},
           "ratio_full_over_cached": t_full / t_cached, "threads": threads, "environment": environment(),
           "load_average": list(os.getloadavg())}
    print(json.dumps(out, indent=1))
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
