"""The shared pieces of the certificates (landscape.certify_common) and the branches of each verdict that random
instances do not reach (an overflowing gradient, a box whose Hessian is neither proven definite nor proven to have a
negative direction, a slice not proven transversal), each given inputs made here with a known answer."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest
from flint import arb, arb_mat
from hypothesis import given, settings
from hypothesis import strategies as st

from exact_reduced import exact_G
from landscape import _arb_reduced as ar
from landscape import certify_interval as ci
from landscape.certificate import CertificateError
from landscape.certify_common import (GLOBAL_RTOL, gauge, integer, minimum_kind, positive, signed_ustar,
                                      symmetry_group, tangent_arb, transversal, validate_point, zero_loss_upper)
from landscape.certify_registry import CERTIFICATES, certifier
from strategies import seeds
from theory.problem import Problem
from theory.symmetry import symmetry_tangent

# --- the minimum kind ----------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.floats(1e-300, 1e3), st.floats(0.0, 1e3), st.floats(0.0, 1e6), st.booleans())
def test_a_positive_lower_bound_is_spurious_whatever_else_holds(lower, upper, zero, inside):
    kind, why = minimum_kind(lower=lower, upper=upper, ustar_inside=inside, zero_upper=zero, region="R")
    assert kind == "spurious" and why == f"G >= {lower:.6g} > 0 on R, so the minimum is spurious (not global)"


@settings(max_examples=60, deadline=None)
@given(st.floats(-1e3, 0.0), st.floats(0.0, 1e3), st.floats(0.0, 1e6))
def test_u_star_inside_is_a_proven_global_minimum(lower, upper, zero):
    kind, why = minimum_kind(lower=lower, upper=upper, ustar_inside=True, zero_upper=zero, region="the box")
    assert kind == "global" and why.startswith("U* (column signs matched to x0) lies in the box and G(U*) = 0")
    assert why.endswith("(proven)")


@settings(max_examples=60, deadline=None)
@given(st.floats(-1e3, 0.0), st.floats(0.0, 1e6))
def test_round_off_threshold_is_exactly_1e_12_times_one_plus_G0(lower, zero):
    """``upper <= 1e-12 (1 + G(0))`` is "global" (up to the bound), one float above it "unknown"."""
    at = GLOBAL_RTOL * (1.0 + zero)
    kind, why = minimum_kind(lower=lower, upper=at, ustar_inside=False, zero_upper=zero, region="R")
    assert kind == "global" and f"0 <= G(x*) <= {at:.3g} (round-off level, <= 1e-12 (1 + G(0)))" in why
    above = np.nextafter(at, math.inf)
    kind, why = minimum_kind(lower=lower, upper=above, ustar_inside=False, zero_upper=zero, region="R")
    assert kind == "unknown" and why == (f"G(x*) lies in [{lower:.3g}, {above:.3g}], which neither excludes 0 nor "
                                         "is at round-off level, and U* is not proven inside")


# --- options and points --------------------------------------------------------------------------------------------


def test_positive_and_integer_options_name_value_and_rule():
    assert positive("r", None) is None and positive("r", 2) == 2.0 and positive("r", np.float32(0.5)) == 0.5
    for bad in (0.0, -1.0, math.inf, math.nan, "x", [1.0]):
        with pytest.raises(CertificateError, match=r"^r must be a positive finite number, got "):
            positive("r", bad)
    with pytest.raises(CertificateError, match=r"^r must be a positive finite number, got None$"):
        positive("r", None, allow_none=False)
    assert integer("n", np.int64(53), 53) == 53 and type(integer("n", np.int64(53), 53)) is int
    for bad, shown in ((52, "52"), (True, "True"), (53.0, "53.0"), ("53", "'53'"), (None, "None")):
        with pytest.raises(CertificateError, match=rf"^n must be an integer >= 53, got {re.escape(shown)}$"):
            integer("n", bad, 53)
    with pytest.raises(CertificateError, match=r"^m must be a positive integer \(> 0\), got 0$"):
        integer("m", 0, 1)


def test_validate_point_copies_flattens_and_counts_non_finite_entries():
    p = Problem.random(2, 1, 3, seed=0)
    U = p.U_star.copy()
    for given_ in (U, U.ravel(), U.astype(np.float32)):
        x0 = validate_point(p, given_)
        assert x0.shape == (6,) and x0.dtype == np.float64 and np.array_equal(x0, given_.ravel().astype(np.float64))
    x0 = validate_point(p, U)
    U[0, 0, 0] = 7.0
    assert x0[0] != 7.0  # a copy: the caller's array may change afterwards
    bad = p.U_star.copy()
    bad[0, 0, 0], bad[1, 1, 0] = np.nan, -np.inf
    with pytest.raises(CertificateError, match=r"^U0 must have finite entries, found 2 non-finite \(NaN or inf\)$"):
        validate_point(p, bad)
    with pytest.raises(CertificateError, match=r"shape \(T, d, k\) = \(3, 2, 1\) or \(6,\), got \(2, 3\)"):
        validate_point(p, np.zeros((2, 3)))
    with pytest.raises(CertificateError, match="problem must be a theory.problem.Problem, got dict"):
        validate_point({}, U)


# --- the gauge slice -----------------------------------------------------------------------------------------------


def test_symmetry_group_is_o_kk_only_at_two_tasks():
    assert [symmetry_group(T) for T in (1, 2, 3, 8)] == ["O(k)^T", "O(k,k)", "O(k)^T", "O(k)^T"]


@settings(max_examples=10, deadline=None)
@given(st.integers(2, 4), st.integers(2, 3), st.integers(2, 4), seeds)
def test_gauge_is_the_orthonormal_complement_of_the_orbit_tangent(d, k, T, seed):
    k = min(k, d)
    U = np.random.default_rng(seed).standard_normal((T, d, k))
    g = gauge(U)
    Z = symmetry_tangent(U, group=symmetry_group(T))
    n = T * d * k
    p = np.linalg.matrix_rank(Z)  # the orbit's dimension at U (below the group's when d is small)
    assert len(g.cols) == p and g.Q.shape == (n, n - p) and np.linalg.matrix_rank(Z[:, list(g.cols)]) == p
    assert np.allclose(g.Q.T @ g.Q, np.eye(n - p), atol=1e-12) and np.max(np.abs(g.Q.T @ Z)) < 1e-10
    note = "" if p == Z.shape[1] else f" (the orbit has dimension {p} < {Z.shape[1]}, the group's: some tangent"
    assert g.text.startswith(f"slice x = x0 + Q z, Q ({n} x {n - p}) the orthogonal complement of the {p}-dimensional "
                             f"{symmetry_group(T)} orbit tangent (theory.symmetry.symmetry_tangent){note}")


def test_gauge_without_orbit_and_with_a_rank_deficient_block():
    g = gauge(np.ones((3, 2, 1)))
    assert g.Q is None and g.cols == () and g.text == "none (k = 1, T != 2: the O(1)^T orbit is finite)"
    t2 = gauge(np.arange(1.0, 5.0).reshape(2, 2, 1))  # T = 2, k = 1: the 1-dimensional O(1, 1) orbit
    assert t2.Q.shape == (4, 3) and t2.cols == (0,) and "1-dimensional O(k,k) orbit" in t2.text
    U = np.random.default_rng(0).standard_normal((3, 3, 2))
    U[1] = 0.0  # U_2 = 0: its rotation direction vanishes, the orbit has dimension 2
    g = gauge(U)
    assert g.cols == (0, 2) and g.Q.shape == (18, 16)
    assert g.text.endswith("(the orbit has dimension 2 < 3, the group's: some tangent directions are dependent at U0, "
                           "e.g. a rank-deficient U_t)")
    tiny = U.copy()
    tiny[1] = 1e-11  # below 1e-10 max(1, |U|_max): counted as dependent too
    assert gauge(tiny).cols == (0, 2)


def test_tangent_columns_over_an_exact_box_are_the_float_ones():
    for T, k in ((3, 2), (2, 2), (2, 1)):
        U = np.random.default_rng(T + k).standard_normal((T, 3, k))
        Us = [arb_mat(Ut.tolist()) for Ut in U]
        got = np.array([[ar.mid(v) for v in col] for col in tangent_arb(Us, k)]).T
        want = symmetry_tangent(U, group=symmetry_group(T))
        assert got.shape == want.shape and np.array_equal(got, want)


def test_transversality_is_proven_on_a_tight_box_and_refused_on_a_wide_one():
    U = np.random.default_rng(1).standard_normal((3, 3, 2))
    g = gauge(U)
    Qa = arb_mat(g.Q.tolist())
    x0 = U.ravel()
    assert transversal(Qa, g.cols, ar.U_blocks(ar.balls(x0, 1e-9), 3, 3, 2), 2) is True
    # a box of half-width 10 holds points where U_t = 0: the orbit tangent vanishes, [Q, Z] can be singular
    assert transversal(Qa, g.cols, ar.U_blocks(ar.balls(x0, 10.0), 3, 3, 2), 2) is False
    # one tangent column too few: [Q, Z] is not square
    assert transversal(Qa, g.cols[:-1], ar.U_blocks(ar.balls(x0, 1e-9), 3, 3, 2), 2) is False


def test_signed_u_star_matches_each_tasks_sign_and_keeps_ties_positive():
    p = Problem.random(3, 1, 3, seed=4)
    x0 = p.U_star.copy()
    x0[1] *= -1.0
    x0[2] = 0.0  # a tie: the dot product is 0, U*_3 is kept as it is
    want = p.U_star.copy()
    want[1] *= -1.0
    assert np.array_equal(signed_ustar(p, x0.ravel()), want.ravel())


def test_zero_loss_upper_encloses_the_exact_G_at_zero_from_above():
    p = Problem.random(3, 2, 3, seed=2)
    with ar.working_precision(128):
        hi = zero_loss_upper(p, ar.task_matrices(p))
    exact = exact_G(p, np.zeros(p.n_reduced))
    assert Fraction(hi) >= exact and hi <= float(exact) * (1 + 1e-15)


def test_registry_lists_both_certificates_and_refuses_others():
    assert list(CERTIFICATES) == ["krawczyk", "epsnet"]
    assert certifier("epsnet").__name__ == "certify_epsnet" and certifier("krawczyk") is ci.certify_interval
    with pytest.raises(KeyError, match="method must be one of \\('krawczyk', 'epsnet'\\), got 'newton'"):
        certifier("newton")


# --- branches of the interval certificate ----------------------------------------------------------------------------


def test_interval_radii_from_the_newton_step_floor_growth_and_caps():
    x0 = np.array([3.0, -1.0])
    opts = ci._options(x0, None, None, 30.0, 8, 128)
    assert opts.max_radius == pytest.approx(4e-3) and ci._radii(0.0, x0, opts)[0] == 4e-15  # floor 1e-15 (1 + 3)
    radii = ci._radii(1e-9, x0, opts)
    assert radii == [4e-9 * 30.0 ** i for i in range(len(radii))] and len(radii) == 5  # 4e-9 30^5 > 4e-3
    assert len(ci._radii(0.0, x0, opts)) == 8  # 4e-15 30^8 < 4e-3: max_tries stops at eight
    assert len(ci._radii(0.0, x0, ci._options(x0, None, None, 30.0, 9, 128))) == 9
    assert ci._radii(2e-3, x0, opts) == [] and ci._radii(5.0, x0, ci._options(x0, 0.25, None, 30.0, 8, 128)) == [0.25]


def _start_and_box(J: arb_mat):
    """The instance d = k = 1, T = 3 (n = 3, no slice) at x0 = U*, and a box of half-width 1e-12 around it whose
    Hessian enclosure is replaced by the 3 x 3 ball matrix J."""
    p = Problem.random(1, 1, 3, seed=0)
    x0 = validate_point(p, p.U_star)
    with ar.working_precision(128):
        s = ci._start(p, x0)
        Us = ar.U_blocks(ar.balls(x0, 1e-12), 3, 1, 1)
        box = ci._Box(1e-12, Us, ar.residuals(Us, s.Ws), J)
    return s, box


def _diag(*entries) -> arb_mat:
    n = len(entries)
    M = arb_mat(n, n)
    for i, e in enumerate(entries):
        M[i, i] = e
    return M


def test_second_order_verdicts_from_planted_hessian_enclosures():
    s, box = _start_and_box(_diag(-1, 2, 3))
    margins = {}
    with ar.working_precision(128):
        verdict, reason, kind = ci._second_order(s, box, "x*", 0.5, margins)
    assert verdict == "certified-not-minimum" and kind is None and margins["negative_curvature_upper"] == -1.0
    assert reason == ("x* is not a local minimum: Krawczyk ratio 0.5 < 1 and a direction v with v^T H(X) v <= -1 < 0 "
                      "over the whole box (midpoint lambda_min -1)")
    assert margins["hessian_min_eig_mid"] == -1.0 and margins["hessian_min_eig_lower"] is None

    s, box = _start_and_box(_diag(arb(-1e-3, 1.0), 2, 3))  # midpoint negative, enclosure reaching +0.999
    margins = {}
    with ar.working_precision(128):
        verdict, reason, kind = ci._second_order(s, box, "x*", 0.5, margins)
    assert verdict == "inconclusive" and 0.999 <= margins["negative_curvature_upper"] <= 0.999 * (1 + 1e-7)
    assert reason.startswith("x* exists, but its Hessian is neither proven positive definite nor proven to have a "
                             "negative direction (midpoint lambda_min -0.001, v^T H v <= 0.999")

    s, box = _start_and_box(_diag(arb(1.0, 2.0), 2, 3))  # midpoint positive, enclosure reaching -1
    margins = {}
    with ar.working_precision(128):
        verdict, reason, kind = ci._second_order(s, box, "x*", 0.5, margins)
    assert verdict == "inconclusive" and margins["hessian_min_eig_lower"] is None
    assert margins["hessian_min_eig_mid"] == 1
    assert reason == "x* exists, but its interval Hessian is not proven positive definite (midpoint lambda_min 1)"

    s, box = _start_and_box(_diag(arb(math.inf), 2, 3))
    margins = {}
    with ar.working_precision(128):
        verdict, reason, kind = ci._second_order(s, box, "x*", 0.5, margins)
    assert (verdict, reason) == ("inconclusive", "the interval Hessian over the box is not finite (overflow)")

    s, box = _start_and_box(_diag(1, 2, 3))  # proven positive definite at U*: a global minimum
    margins = {}
    with ar.working_precision(128):
        verdict, reason, kind = ci._second_order(s, box, "x*", 0.5, margins)
    assert (verdict, kind) == ("certified-minimum", "global") and margins["hessian_min_eig_lower"] == pytest.approx(1)
    assert reason.startswith("x* is a strict local minimum: Krawczyk ratio 0.5 < 1, Hessian on the box >= 1 > 0; ")
    lo, hi = margins["loss_lower_on_box"], margins["loss_upper_on_box"]
    assert lo <= 0.0 <= hi  # G(U*) = 0 lies in the box


def test_interval_certificate_says_so_when_the_slice_is_not_proven_transversal(monkeypatch):
    p = Problem.random(8, 2, 3, seed=11)
    good = ci.certify_interval(p, p.U_star)
    assert good.verdict == "certified-minimum" and good.margins["transversal"] is True
    monkeypatch.setattr(ci, "transversal", lambda *a: False)
    c = ci.certify_interval(p, p.U_star)
    assert c.verdict == "inconclusive" and c.margins["transversal"] is False
    assert c.reason == ("could not prove the slice transversal to the orbit over the box ([Q, Z(X)] not proven "
                        "nonsingular)")
    assert c.radius == c.margins["radii_tried"][-1] == good.radius and "hessian_min_eig_mid" not in c.margins


def test_interval_certificate_at_an_overflowing_gradient():
    """|x0| ~ 1e103: the Hessian (~|x0|^2) is finite in float64, the gradient (~|x0|^3) is not."""
    p = Problem.random(2, 1, 3, seed=0)
    c = ci.certify_interval(p, 1e103 * np.random.default_rng(0).standard_normal(p.n_reduced))
    assert c.verdict == "inconclusive" and c.reason == ("the gradient at x0 overflows float64: nothing can be proven "
                                                         "here")
    assert c.radius is None and c.margins == {} and c.gauge.startswith("none")


def test_krawczyk_ratio_is_nan_when_the_test_overflows_float64():
    p = Problem.random(2, 1, 3, seed=0)
    x0 = validate_point(p, p.U_star + 1.0)
    with ar.working_precision(128):
        s = ci._start(p, x0)
        box, ratios = ci._krawczyk(s, np.full((6, 6), 1e308), [1e-3])
    assert box is None and len(ratios) == 1 and math.isnan(ratios[0])


def test_interval_failure_message_names_the_radii_tried():
    p = Problem.random(2, 1, 3, seed=1)
    x = p.U_star.ravel() + 0.3  # not critical: Newton step 0.29, and no box of up to 100 passes
    c = ci.certify_interval(p, x, max_radius=100.0, growth=2.0, max_tries=3)
    tried = c.margins["radii_tried"]
    assert c.verdict == "inconclusive" and len(tried) == 3 and tried == [tried[0] * 2.0 ** i for i in range(3)]
    assert tried[0] == 4.0 * c.margins["newton_step"] and c.radius == tried[2]
    assert (f"Krawczyk test failed: K(X) not strictly inside X at every radius tried (3 radii from {tried[0]:.3g} "
            f"to {tried[2]:.3g}, last ratio {c.margins['krawczyk_ratio']:.3g}); x0 is not close enough to a critical "
            "point for the boxes tried (gradient norm ") in c.reason and c.margins["krawczyk_ratio"] > 1


def test_cause_of_a_failed_krawczyk_test_states_the_condition_number_and_gradient_norm():
    import warnings

    singular = ci._cause(np.diag([2.0 ** 27, 0.5]), np.array([3.0, 4.0]))  # condition number 2^28 = 2.68e8 > 1e8
    assert singular == ("the Hessian at x0 is (nearly) singular (condition number 2.68e+08, smallest |eigenvalue| "
                        "0.5; gradient norm 5): x0 may be a degenerate critical point, which the Krawczyk test cannot "
                        "isolate (a singular Jacobian of the gradient)")
    at = ci._cause(np.diag([-2e8, 2.0]), np.array([0.3, 0.4]))  # |eigenvalues|: condition number exactly 1e8
    assert at == ("x0 is not close enough to a critical point for the boxes tried (gradient norm 0.5; Hessian "
                  "condition number 1e+08, not above the 1e+08 taken as singular)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a zero eigenvalue is an infinite condition number, not a division by zero
        zero = ci._cause(np.diag([0.0, 1.0]), np.array([0.0, 0.0]))
    assert "(condition number inf, smallest |eigenvalue| 0; gradient norm 0)" in zero
    huge = ci._cause(np.eye(2), np.array([3e300, 4e300]))  # the norm is taken scaled: no overflow
    assert huge == ("x0 is not close enough to a critical point for the boxes tried (gradient norm 5e+300; "
                    "Hessian condition number 1, not above the 1e+08 taken as singular)")
    sym = ci._cause(np.array([[1.0, 4.0], [0.0, 1.0]]), np.array([1.0, 0.0]))  # only the symmetric part counts
    assert sym.endswith("condition number 3, not above the 1e+08 taken as singular)")  # eigenvalues of [[1, 2], [2, 1]]: 3 and -1
    assert ci._cause(np.zeros((0, 0)), np.zeros(0)) == (
        "x0 is not close enough to a critical point for the boxes tried (gradient norm 0; Hessian condition number 1, "
        "not above the 1e+08 taken as singular)")


def test_second_order_at_an_exactly_zero_midpoint_eigenvalue():
    """Hessian enclosure diag(0, 2, 3), exact: nothing is proven either way (lambda_min 0 is neither > 0 nor a
    direction with v^T H v < 0)."""
    s, box = _start_and_box(_diag(0, 2, 3))
    margins = {}
    with ar.working_precision(128):
        verdict, reason, kind = ci._second_order(s, box, "x*", 0.5, margins)
    assert verdict == "inconclusive" and margins["negative_curvature_upper"] == 0.0
    assert reason == ("x* exists, but its Hessian is neither proven positive definite nor proven to have a negative "
                      "direction (midpoint lambda_min 0, v^T H v <= 0)")


def test_radius_exactly_at_max_radius_is_tried():
    x0 = np.array([3.0])
    opts = ci._options(x0, None, None, 30.0, 8, 128)  # max_radius = 1e-3 (1 + 3)
    assert ci._radii(1e-3, x0, opts) == [opts.max_radius]  # 4 x 1e-3 == 1e-3 x 4, exactly


def test_u_star_in_box_only_when_every_coordinate_is_within_r():
    p = Problem.random(2, 1, 3, seed=0)
    x0 = validate_point(p, p.U_star + 0.1)
    with ar.working_precision(128):
        s = ci._start(p, x0)
    assert not ci._ustar_in_box(s, 0.05) and ci._ustar_in_box(s, 0.2)
    flipped = validate_point(p, -p.U_star - 0.1)  # column signs matched before the distance is taken
    with ar.working_precision(128):
        assert ci._ustar_in_box(ci._start(p, flipped), 0.2)
    q = Problem.random(3, 2, 3, seed=0)
    with ar.working_precision(128):
        assert not ci._ustar_in_box(ci._start(q, validate_point(q, q.U_star)), 1.0)  # k = 2: a slice, never


def test_float_newton_reasons_name_the_overflow_without_warnings(monkeypatch):
    import warnings

    p = Problem.random(2, 1, 3, seed=0)
    x = 1e160 * np.random.default_rng(0).standard_normal(p.n_reduced)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from the float64 overflow reaches the caller
        c = ci.certify_interval(p, x)
    assert c.reason == (f"the float64 Hessian at x0 overflows (max |x0| entry {np.max(np.abs(x)):.3g}): no Newton "
                        "preconditioner, nothing can be proven here in float64")
    # a finite Hessian so small that the Newton step overflows (1e-300 I against a gradient of order 1e10), or is
    # inf - inf (a Hessian whose inverse has entries of both signs near 1e300): said so, without warnings
    overflow = 1e-300 * np.eye(6)
    mixed = np.linalg.inv(1e300 * np.array([[1.0, -1.0], [1.0, 1.0]]))
    for H, f0 in ((overflow, np.full(6, 1e10)), (mixed, np.array([1e10, 1e10]))):
        monkeypatch.setattr(ci, "reduced_hess", lambda x0, problem, H=H: H)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Cf, Jf, step, why = ci._float_newton(p, np.ones(H.shape[0]), None, f0)
        assert (Cf, Jf, step) == (None, None, None)
        assert why == ("the Newton step |C f(0)| overflows float64: the Hessian at x0 is (nearly) singular for the "
                       "size of its gradient")


def test_eight_radii_are_tried_by_default():
    """A degenerate critical point (every U_t = n, n orthogonal to U*'s columns: grad G = 0 and a zero Hessian
    eigenvalue): the Newton step is tiny, so the default radii 4 |C f(0)| 30^i all fit under max_radius, and the
    default max_tries = 8 stops them."""
    import scipy.linalg

    p = Problem.random(4, 1, 3, seed=0)
    n = scipy.linalg.null_space(p.U_star[:, :, 0])[:, 0]
    c = ci.certify_interval(p, np.stack([n[:, None]] * 3))
    radii = c.margins["radii_tried"]
    assert c.verdict == "inconclusive" and len(radii) == 8 and radii[-1] * 30 <= 1e-3 * (1 + np.max(np.abs(n)))
    assert f"(8 radii from {radii[0]:.3g} to {radii[-1]:.3g}, " in c.reason and "(nearly) singular" in c.reason
