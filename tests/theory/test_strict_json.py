"""theory.strict_json: every value becomes strict JSON, non-finite floats become null, finite values are kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings

from strategies import json_like, nonfinite_as_null, strict_loads
from theory.strict_json import dumps, json_ready


@settings(max_examples=200, deadline=None)
@given(json_like)
def test_dumps_is_strict_and_maps_only_non_finite_floats_to_null(obj):
    text = dumps(obj)
    assert strict_loads(text) == nonfinite_as_null(obj)  # finite floats come back bit for bit (== on floats is exact)
    assert json_ready(obj) == nonfinite_as_null(obj)
    assert json_ready(json_ready(obj)) == json_ready(obj)  # a second pass changes nothing
    assert dumps(json.loads(text), indent=1) == json.dumps(json.loads(text), indent=1)


def test_numpy_values_and_keys():
    out = json_ready({"a": np.array([[1.5, np.nan], [-np.inf, 2.0]]), "i": np.int64(3), "f": np.float32(0.5),
                      "b": np.bool_(True), 1: "one", 2.5: "x", None: "n"})
    assert out == {"a": [[1.5, None], [None, 2.0]], "i": 3, "f": 0.5, "b": True, "1": "one", "2.5": "x", "null": "n"}
    assert type(out["i"]) is int and type(out["b"]) is bool and type(out["f"]) is float
    assert json_ready({False: 0}) == {"false": 0}
    assert dumps([np.float64("inf"), -0.0, 1e308]) == "[null, -0.0, 1e+308]"


def test_refuses_what_json_cannot_hold():
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        dumps({"x": object()})
    with pytest.raises(TypeError, match="keys must be str, int, float, bool or None, not tuple"):
        dumps({(1, 2): 0})
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        dumps({float("nan"): 0})
