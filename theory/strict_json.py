"""Strict JSON, the one convention of every JSON file and JSON printout of ``theory`` and ``landscape`` (standard
library only, like :mod:`theory.atomic`).

JSON as RFC 8259 defines it: no ``NaN`` / ``Infinity`` / ``-Infinity`` tokens (Python's ``json.dumps`` writes them
by default; JavaScript's ``JSON.parse`` and other strict parsers refuse them, and jq 1.6 reads ``Infinity`` as
1.797e308). A float that is not finite (NaN, +inf, -inf) is written as ``null``. Where ``null`` in a field could
mean more than one thing, the function that makes the field says which in its docstring (e.g. the adversarial score
in :mod:`landscape.adversarial`: ``null`` is +inf, a spurious minimum found).

>>> dumps({"loss": float("nan"), "score": float("inf"), "n": 3, "point": (1.0, -0.5), 2: True})
'{"loss": null, "score": null, "n": 3, "point": [1.0, -0.5], "2": true}'
"""

from __future__ import annotations

import json
import math

__all__ = ["json_ready", "dumps"]


def _key(k) -> str:
    """A dict key as ``json.dumps`` writes it (a string; ``1 -> "1"``, ``True -> "true"``, ``None -> "null"``)."""
    if isinstance(k, str):
        return k
    if k is None or isinstance(k, (bool, int, float)):
        return json.dumps(k, allow_nan=False)  # a NaN key has no strict spelling: ValueError, as json.dumps gives
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")


def json_ready(obj):
    """``obj`` with every non-finite float replaced by ``None``, as plain JSON types.

    Dicts keep their order (keys become strings as ``json.dumps`` writes them), lists and tuples become lists,
    anything with a ``tolist()`` method (NumPy arrays and scalars) is converted through it; ``None``, booleans,
    integers and strings are returned as they are, finite floats as ``float``.

    Raises
    ------
    TypeError
        An object that JSON cannot hold (as ``json.dumps`` raises).
    ValueError
        A NaN dict key (strict JSON has no spelling of it).
    """
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int)):  # bool is an int
        return obj
    if isinstance(obj, dict):
        return {_key(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return json_ready(tolist())
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps(obj, *, indent: int | None = None) -> str:
    """``obj`` as strict JSON text: :func:`json_ready`, then ``json.dumps(..., allow_nan=False)``.

    Raises
    ------
    TypeError
        An object that JSON cannot hold.
    """
    return json.dumps(json_ready(obj), indent=indent, allow_nan=False)
