"""Problem validation: every refused case names the value and the rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import problems
from theory.finetune import finetune_optimum
from theory.cli_contract import require_int
from theory.problem import MetaPoint, Problem, ProblemError, require_remark_3_1
from theory.symmetry import boost_tangent, symmetry_tangent


@pytest.mark.parametrize("kwargs,match", [
    (dict(d=0, k=1, T=3), r"d must be a positive integer \(> 0\), got 0"),
    (dict(d=4, k=-1, T=3), r"k must be a positive integer \(> 0\), got -1"),
    (dict(d=4, k=1, T=0), r"T must be a positive integer \(> 0\), got 0"),
    (dict(d=4.5, k=1, T=3), r"d must be a positive integer \(> 0\), got 4.5"),
    (dict(d=4, k=True, T=3), r"k must be a positive integer \(> 0\), got True"),
])
def test_random_refuses_bad_sizes(kwargs, match):
    with pytest.raises(ProblemError, match=match):
        Problem.random(seed=0, **kwargs)


def test_arrays_refused_with_shape_and_finiteness():
    A, U = np.eye(3), np.ones((2, 3, 1))
    with pytest.raises(ProblemError, match=r"A_star must have shape \(3, 3\), got \(3, 4\)"):
        Problem(A_star=np.ones((3, 4)), U_star=U)
    with pytest.raises(ProblemError, match=r"U_star must have shape \(T, d, k\)"):
        Problem(A_star=A, U_star=np.ones((3, 1)))
    bad = A.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ProblemError, match="A_star must have finite entries, found 1 non-finite"):
        Problem(A_star=bad, U_star=U)
    with pytest.raises(ProblemError, match=r"U_test must have shape \(3, 1\)"):
        Problem(A_star=A, U_star=U, U_test=np.ones((3, 2)))
    with pytest.raises(ProblemError, match="sigma must be a finite number >= 0"):
        Problem(A_star=A, U_star=U, sigma=-1.0)
    with pytest.raises(ProblemError, match="no held-out task"):
        Problem(A_star=A, U_star=U).W_test


def test_remark_3_1_message_names_the_rule():
    require_remark_3_1(8, 2, 3)
    with pytest.raises(ProblemError, match=r"\(T\+1\)\*k = \(3\+1\)\*2 = 8 exceeds d = 7: Remark 3.1"):
        require_remark_3_1(7, 2, 3)


def test_problem_is_read_only():
    p = Problem.random(3, 1, 2, seed=0)
    with pytest.raises(ValueError):
        p.A_star[0, 0] = 1.0
    with pytest.raises(AttributeError):
        p.d = 4


@settings(max_examples=20, deadline=None)
@given(problems())
def test_json_round_trip_is_exact(p):
    q = Problem.from_dict(json.loads(json.dumps(p.to_dict())))
    assert np.array_equal(q.A_star, p.A_star) and np.array_equal(q.U_star, p.U_star)
    assert np.array_equal(q.U_test, p.U_test) and (q.d, q.k, q.T, q.seed) == (p.d, p.k, p.T, p.seed)


def test_from_dict_refuses_inconsistent_sizes():
    data = Problem.random(3, 1, 2, seed=0).to_dict()
    data["d"] = 4
    with pytest.raises(ProblemError, match="d=4 disagrees with the arrays, which give d=3"):
        Problem.from_dict(data)
    with pytest.raises(ProblemError, match="needs the key 'U_star'"):
        Problem.from_dict({"A_star": [[1.0]]})


def test_same_seed_same_instance():
    a, b = Problem.random(5, 2, 3, seed=11), Problem.random(5, 2, 3, seed=11)
    assert np.array_equal(a.W, b.W) and not np.array_equal(a.W, Problem.random(5, 2, 3, seed=12).W)


def test_flatten_order_is_row_major_A_then_tasks():
    A = np.arange(4.0).reshape(2, 2)
    U = 10 + np.arange(6.0).reshape(3, 2, 1)
    x = MetaPoint(A, U).flatten()
    assert list(x) == [0, 1, 2, 3, 10, 11, 12, 13, 14, 15]
    with pytest.raises(ProblemError, match=r"x must have shape \(10,\)"):
        MetaPoint.unflatten(x[:-1], 2, 1, 3)


def test_finetune_optimum_refuses_bad_rank_and_shapes():
    with pytest.raises(ProblemError, match="rank r must be an integer >= 0, got -1"):
        finetune_optimum(np.eye(2), np.eye(2), -1)
    with pytest.raises(ProblemError, match="same shape"):
        finetune_optimum(np.eye(2), np.eye(3), 1)


@settings(max_examples=60, deadline=None)
@given(value=st.integers(-10, 10), minimum=st.integers(-2, 3), numpy_int=st.booleans())
def test_require_int_accepts_exactly_the_integers_at_or_above_minimum(value, minimum, numpy_int):
    given_value = np.int64(value) if numpy_int else value
    if value >= minimum:
        out = require_int("x", given_value, minimum=minimum)
        assert out == value and type(out) is int
    else:
        rule = r"a positive integer \(> 0\)" if minimum == 1 else f"an integer >= {minimum}"
        with pytest.raises(ProblemError, match=f"^x must be {rule}, got {value}$"):
            require_int("x", given_value, minimum=minimum)


@pytest.mark.parametrize("value", [True, False, 2.0, "3", None, [1]])
def test_require_int_refuses_bools_floats_text_and_none(value):
    with pytest.raises(ProblemError, match=r"^n must be an integer >= 0, got "):
        require_int("n", value, minimum=0)
    assert require_int("n", None, minimum=0, allow_none=True) is None


def test_symmetry_refuses_with_the_error_root():
    with pytest.raises(ProblemError, match="T = 2 property, got T = 3"):
        boost_tangent(np.ones((3, 4, 1)))
    with pytest.raises(ProblemError, match="group must be"):
        symmetry_tangent(np.ones((2, 4, 1)), group="SO(k)")
    assert issubclass(ProblemError, ValueError)  # callers catching ValueError keep working
