"""The ball-arithmetic helpers of the certificates (landscape._arb_reduced) on inputs with known answers: exact
rationals, integer matrices, random positive definite matrices against LAPACK, NaN balls."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from flint import arb, arb_mat, ctx
from hypothesis import given, settings
from hypothesis import strategies as st

from landscape import _arb_reduced as ar
from strategies import seeds


def test_arb_bounds_and_midpoints():
    x = arb(1) / 3
    assert Fraction(ar.lower(x)) <= Fraction(1, 3) <= Fraction(ar.upper(x))
    assert ar.lower(x) < ar.upper(x) and ar.mid(x) == pytest.approx(1 / 3, rel=1e-15, abs=0)
    assert ar.upper(arb(0.25)) == ar.lower(arb(0.25)) == 0.25
    nan = arb("nan")
    assert ar.upper(nan) == math.inf and ar.lower(nan) == -math.inf and math.isnan(ar.mid(nan))
    assert math.isnan(ar.mid(arb(1.0, math.inf)))  # a finite midpoint of an unbounded ball is no estimate
    assert ar.mid_matrix(arb_mat([[1, 2], [3, 4]])).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    b = ar.balls(np.array([1.0, 2.0]), np.array([0.0, 0.5]))
    assert b[0].rad() == 0 and ar.lower(b[1]) <= 1.5 and ar.upper(b[1]) >= 2.5
    assert ar.balls(np.zeros(3), 1e-3)[2].rad() >= 1e-3


def test_working_precision_is_restored_even_after_an_error():
    old = ctx.prec
    with pytest.raises(RuntimeError):
        with ar.working_precision(200):
            assert ctx.prec == 200
            raise RuntimeError
    assert ctx.prec == old


def test_gershgorin_and_norm_bounds_on_integer_matrices():
    A = arb_mat([[4, 1, -1], [2, 5, 0], [0, -3, 6]])
    assert ar.gershgorin_lower(A) == 2.0  # min(4 - 2, 5 - 2, 6 - 3)
    assert ar.inf_norm_upper(A) == 9.0  # max(6, 7, 9)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 5), seeds)
def test_lambda_min_lower_brackets_the_smallest_eigenvalue(m, seed):
    # m = 3, seed = 10207705: the proven bound lies 2e-16 above NumPy's value, below the true one (50 digits)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, m))
    S = X @ X.T + 0.5 * np.eye(m)
    lam = np.linalg.eigvalsh(S)
    bound, lam_mid, V = ar.lambda_min_lower(arb_mat(S.tolist()))
    slack = 4 * m * np.finfo(float).eps * lam[-1]  # LAPACK's eigvalsh is itself off by up to about m eps ||S||
    assert 0 < bound <= lam[0] + slack and bound >= lam[0] * (1 - 1e-8) and np.allclose(lam_mid, lam)
    indefinite = S - (lam[0] + 1.0) * np.eye(m)
    b2, lam2, V2 = ar.lambda_min_lower(arb_mat(indefinite.tolist()))
    assert b2 == -math.inf and lam2[0] == pytest.approx(-1.0, abs=1e-9) and V2 is not None


def test_lambda_min_lower_of_a_nan_matrix():
    b, lam, V = ar.lambda_min_lower(arb_mat([[arb("nan"), 0], [0, 1]]))
    assert b == -math.inf and V is None and np.all(np.isnan(lam))
