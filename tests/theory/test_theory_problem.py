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


def _with_nan(shape, at):
    a = np.ones(shape)
    a[at] = np.nan
    return a


def test_each_refusal_of_a_non_finite_array_names_the_argument_and_the_first_bad_entry():
    import re

    from theory.checks import numerical_rank, theorem_3_2_rank
    from theory.reduced import schur_complement
    from theory.symmetry import inertia, quotient_basis

    p = Problem.random(3, 1, 3, seed=0)
    cases = [(lambda: numerical_rank(_with_nan((2, 3), (1, 2))), "M", 6, "nan at [1, 2]"),
             (lambda: theorem_3_2_rank(p, _with_nan((3, 3), (0, 1)), p.U_star), "A", 9, "nan at [0, 1]"),
             (lambda: schur_complement(_with_nan((4, 4), (3, 0)), 2), "H", 16, "nan at [3, 0]"),
             (lambda: inertia(_with_nan((2, 2), (1, 1))), "the Hessian H", 4, "nan at [1, 1]"),
             (lambda: quotient_basis(_with_nan((3, 3, 2), (2, 0, 1))), "U", 18, "nan at [2, 0, 1]"),
             (lambda: finetune_optimum(_with_nan((3, 3), (2, 2)), np.eye(3), 1), "the base A", 9, "nan at [2, 2]"),
             (lambda: finetune_optimum(np.eye(3), _with_nan((3, 3), (0, 0)), 1), "the task matrix W", 9,
              "nan at [0, 0]")]
    for call, name, size, first in cases:
        with pytest.raises(ProblemError) as err:
            call()
        assert str(err.value) == f"{name} must have finite entries, found 1 non-finite ({first})", size
        assert re.fullmatch(r".* \(nan at \[[0-9, ]+\]\)", str(err.value))


def test_a_long_refused_value_is_shown_cut_at_60_characters():
    at = "x" * 58  # its repr is 60 characters: shown whole
    with pytest.raises(ProblemError) as err:
        Problem(A_star=at, U_star=np.ones((3, 4, 1)))
    assert str(err.value).endswith(f"got {at!r}")
    longer = "x" * 59  # 61 characters: the first 57 and "..."
    with pytest.raises(ProblemError) as err:
        Problem(A_star=longer, U_star=np.ones((3, 4, 1)))
    assert str(err.value).endswith(f"got {repr(longer)[:57]}...") and len(repr(longer)[:57]) == 57


def test_the_d1_family_refuses_a_parameter_whose_point_overflows_without_warnings():
    import warnings

    from theory.minima import d1_family_point

    p = Problem.random(3, 1, 2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ProblemError) as err:
            d1_family_point(p, 1000.0)
    assert str(err.value) == ("s = 1000 overflows float64 (cosh(s) = inf): the family point is not representable")


def test_problem_keeps_its_seed_and_refuses_bad_seeds_sigmas_and_overflowing_tasks_by_name():
    import warnings

    U = np.ones((3, 2, 1))
    assert Problem(A_star=np.eye(2), U_star=U, seed=5).seed == 5 and Problem(A_star=np.eye(2), U_star=U).seed is None
    with pytest.raises(ProblemError, match=r"^seed must be an integer >= 0 \(or None\), got -4$"):
        Problem(A_star=np.eye(2), U_star=U, seed=-4)
    for bad, shown in (("x", "'x'"), (None, "None"), (-1.0, "-1.0"), (float("inf"), "inf")):
        with pytest.raises(ProblemError) as err:
            Problem(A_star=np.eye(2), U_star=U, sigma=bad)
        assert str(err.value) == f"sigma must be a finite number >= 0, got {shown}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # overflow is refused by name, not warned about
        with pytest.raises(ProblemError) as err:
            Problem(A_star=np.full((2, 2), 1e308), U_star=np.full((3, 2, 1), 1e200))
        assert str(err.value) == ("the task matrices W_t = A* + U* U*^T are not finite in float64 (inf at "
                                  "[0, 0, 0]): A* and U* are too large")
        with pytest.raises(ProblemError) as err:
            Problem(A_star=np.full((2, 2), 1e160), U_star=np.ones((3, 2, 1)))
        assert str(err.value) == ("the squared Frobenius norm of the task matrices W_t overflows float64 (largest "
                                  "|entry| 1e+160), so every loss would be inf: rescale A* and U*")


def test_the_new_task_matrix_is_checked_as_a_star_plus_u_test_u_test_transposed():
    """``W_(T+1) = A* + U_test U_test^T``: with A* = 5e153 I, a training U* of ones keeps |W_t|_F^2 ~ 1.5e308 finite,
    while U_test = (1e77, 0) makes the entry 1.5e154, whose square overflows (a difference ``A* - U_test U_test^T``
    would be -5e153); the refusal names W_(T+1), and a seed given as a NumPy integer is kept as a Python int."""
    import warnings

    A = 5e153 * np.eye(2)
    U = np.ones((3, 2, 1))
    p = Problem(A_star=A, U_star=U, U_test=np.ones((2, 1)), seed=np.int64(5))
    assert type(p.seed) is int and p.seed == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ProblemError) as err:
            Problem(A_star=A, U_star=U, U_test=np.array([[1e77], [0.0]]))
    assert str(err.value) == ("the squared Frobenius norm of the task matrices W_(T+1) overflows float64 (largest "
                              "|entry| 1.5e+154), so every loss would be inf: rescale A* and U*")


def test_a_u_star_that_is_not_numbers_is_refused_by_name():
    with pytest.raises(ProblemError) as err:
        Problem(A_star=np.eye(2), U_star=[["a"]])
    assert str(err.value) == "U_star must be an array of numbers of shape (T, d, k), got [['a']]"


def test_the_d1_family_refuses_a_point_whose_a_overflows_while_u_does_not():
    """At s = 357.5, cosh(s) ~ 1e155: U_1 (entries ~ 1e155) is finite, A = A* + U*_1 U*_1^T - U_1 U_1^T is not."""
    from theory.minima import d1_family_point

    p = Problem.random(3, 1, 2, seed=0)
    with pytest.raises(ProblemError) as err:
        d1_family_point(p, 357.5)
    assert str(err.value) == (f"s = 357.5 overflows float64 (cosh(s) = {np.cosh(357.5):.3g}): the family point is "
                              "not representable")
