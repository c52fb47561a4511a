"""Shared hypothesis strategies: valid sizes, instances and points of the linear Meta-LoRA model."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from theory.problem import Problem

seeds = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def sizes(draw, max_d: int = 6, max_k: int = 3, max_T: int = 4, min_T: int = 1, remark_3_1: bool = False):
    """``(d, k, T)`` with small values and ``k <= d`` (an adapter narrower than the layer); ``remark_3_1=True`` keeps
    ``(T + 1) k <= d``."""
    T = draw(st.integers(min_T, max_T))
    k = draw(st.integers(1, max_k))
    lo = (T + 1) * k if remark_3_1 else k
    d = draw(st.integers(max(lo, 1), max(max_d, lo)))
    return d, k, T


@st.composite
def problems(draw, **size_kwargs):
    """A random instance (i.i.d. N(0, 1) entries) of drawn sizes and seed."""
    d, k, T = draw(sizes(**size_kwargs))
    return Problem.random(d, k, T, seed=draw(seeds))


@st.composite
def problem_and_point(draw, scale: float = 1.0, **size_kwargs):
    """``(problem, A, U, rng)`` with a random point ``A`` (d, d), ``U`` (T, d, k) and a generator for directions."""
    p = draw(problems(**size_kwargs))
    rng = np.random.default_rng(draw(seeds))
    return p, scale * rng.standard_normal((p.d, p.d)), scale * rng.standard_normal((p.T, p.d, p.k)), rng


#: floats of every kind, NaN and both infinities included (what a writer of strict JSON must turn into null)
any_float = st.floats(allow_nan=True, allow_infinity=True)

#: JSON-like values whose floats may be NaN or infinite, with tuples beside lists (what records and summaries hold)
json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10 ** 20, 10 ** 20), any_float, st.text(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8)


def _no_constant(token: str):
    raise ValueError(f"{token} is not JSON (RFC 8259)")


def nonfinite_as_null(obj):
    """The oracle of a strict writer: ``obj`` after Python's own (non-strict) JSON round trip, with every NaN / inf
    float then replaced by None."""
    import json
    import math

    def walk(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(json.loads(json.dumps(obj, allow_nan=True)))


def strict_loads(text):
    """``json.loads`` that refuses the ``NaN`` / ``Infinity`` / ``-Infinity`` tokens, as strict parsers do."""
    import json

    return json.loads(text, parse_constant=_no_constant)
