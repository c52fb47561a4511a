"""The Certificate result object: validation, JSON export, derived flags."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from landscape.certificate import MINIMUM_KINDS, VERDICTS, Certificate, CertificateError


def _cert(**kw):
    base = dict(verdict="inconclusive", method="krawczyk", loss=(0.0, 1.0), radius=1e-8, seconds=0.5,
                reason="test")
    base.update(kw)
    return Certificate(**base)


def test_unknown_verdict_is_refused_with_the_value():
    with pytest.raises(CertificateError, match="'certified'"):
        _cert(verdict="certified")


def test_minimum_kind_only_with_a_certified_minimum():
    with pytest.raises(CertificateError, match="only for a certified minimum"):
        _cert(verdict="certified-not-minimum", minimum_kind="spurious")
    with pytest.raises(CertificateError, match="minimum_kind must be one of"):
        _cert(verdict="certified-minimum", minimum_kind="local")


def test_flags():
    assert _cert(verdict="certified-minimum", minimum_kind="spurious").spurious
    assert not _cert(verdict="certified-minimum", minimum_kind="global").spurious
    assert not _cert().certified
    assert _cert(verdict="certified-not-minimum").certified


def test_frozen():
    c = _cert()
    with pytest.raises(Exception):
        c.verdict = "certified-minimum"


finite_or_not = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.none())


@settings(max_examples=50, deadline=None)
@given(verdict=st.sampled_from(VERDICTS), kind=st.sampled_from(MINIMUM_KINDS + (None,)),
       lo=finite_or_not, hi=finite_or_not, margin=finite_or_not, nested=st.lists(finite_or_not, max_size=3))
def test_to_dict_is_strict_json_and_keeps_finite_numbers(verdict, kind, lo, hi, margin, nested):
    if verdict != "certified-minimum":
        kind = None
    c = _cert(verdict=verdict, minimum_kind=kind, loss=(lo, hi), margins={"m": margin, "radii": nested})
    d = c.to_dict()
    text = json.dumps(d, allow_nan=False)  # raises on NaN / inf
    back = json.loads(text)
    assert back["verdict"] == verdict and back["minimum_kind"] == kind
    for got, want in ((back["loss"][0], lo), (back["loss"][1], hi), (back["margins"]["m"], margin)):
        if want is None or (isinstance(want, float) and not math.isfinite(want)):
            assert got is None
        else:
            assert got == want
    assert len(back["margins"]["radii"]) == len(nested)


def test_certificate_json_keeps_types_and_copies_its_margins():
    margins = {1: 2.5, "flags": (True, None, "x"), "inf": -math.inf, "n": 3}
    c = Certificate(verdict="certified-minimum", method="epsnet", loss=None, radius=math.nan, seconds=1.5,
                    reason="r", margins=margins, minimum_kind="global", gauge="g", n=6)
    margins["late"] = 1.0  # the certificate keeps its own copy
    assert "late" not in c.margins
    d = c.to_dict()
    assert d == {"verdict": "certified-minimum", "method": "epsnet", "loss": None, "radius": None, "seconds": 1.5,
                 "reason": "r", "margins": {"1": 2.5, "flags": [True, None, "x"], "inf": None, "n": 3},
                 "minimum_kind": "global", "gauge": "g", "n": 6}
    assert d["margins"]["n"] is not True and type(d["margins"]["n"]) is int and d["margins"]["flags"][0] is True
    assert c.certified and not c.spurious
    assert Certificate(verdict="inconclusive", method="krawczyk", loss=(0.0, 1.0), radius=0.5, seconds=2.0,
                       reason="r").to_dict()["radius"] == 0.5
