"""The result of a certificate on a critical point of the reduced loss G (docs/convention.md).

A certificate is a proof by computation about the point ``x0 = vec(U0)`` of an instance (``n = T d k``
coordinates), made by :func:`landscape.certify_interval.certify_interval` (method ``"krawczyk"``) or
:func:`landscape.certify_epsnet.certify_epsnet` (method ``"epsnet"``). Three verdicts:

- ``"certified-minimum"``: a strict local minimum of G (modulo the O(k)^T orbit for k >= 2) is proven to lie within
  ``radius`` of ``x0``; ``minimum_kind`` says whether G is proven positive there (``"spurious"``), proven zero
  (``"global"``), or neither (``"unknown"``, with the reason).
- ``"certified-not-minimum"``: the critical point proven to lie within ``radius`` of ``x0`` has a direction of
  negative curvature, so it is not a local minimum (a saddle or a maximum).
- ``"inconclusive"``: nothing was proven; ``reason`` says which test failed. A NaN, or a bound straddling zero,
  always lands here, never in a pass.

``margins`` holds the numbers the verdict rests on (each a rigorous bound, a float rounded outward, or None), e.g.
``krawczyk_ratio`` (max_i |K_i - y_i| / r: below 1 proves the critical point), ``hessian_min_eig_lower`` (a lower
bound of the smallest eigenvalue of the Hessian over the box, on the gauge slice when k >= 2), ``loss_lower_on_box``,
``net_margin`` (min over the net of G - G(x0) - Lipschitz * eps, lower bound).

>>> c = Certificate(verdict="inconclusive", method="krawczyk", loss=(0.5, 0.5), radius=None, seconds=0.1,
...                 reason="demo", margins={"krawczyk_ratio": float("nan")})
>>> c.to_dict()["margins"]
{'krawczyk_ratio': None}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from theory.problem import ProblemError
from theory.strict_json import json_ready

__all__ = ["VERDICTS", "MINIMUM_KINDS", "Certificate", "CertificateError"]

VERDICTS = ("certified-minimum", "certified-not-minimum", "inconclusive")
MINIMUM_KINDS = ("spurious", "global", "unknown")


class CertificateError(ProblemError):
    """Bad input to a certificate (non-finite point, wrong shape, invalid option): names the value and the rule.

    A :class:`theory.problem.ProblemError` (hence a ``ValueError``): the one error root that the command lines of
    ``theory`` and ``landscape`` turn into exit status 2."""


@dataclass(frozen=True)
class Certificate:
    """One verdict with its margins.

    Attributes
    ----------
    verdict : one of :data:`VERDICTS`
    method : ``"krawczyk"`` or ``"epsnet"``
    loss : ``(lower, upper)`` enclosure of ``G(x0)`` recomputed from the stored instance (outward rounded)
    radius : the box half-width r (krawczyk, infinity-norm) or the sphere radius delta (epsnet); None if unset
    seconds : wall time of the certificate
    reason : readable text: what was proven, or which test failed
    margins : name -> rigorous bound (float) or None
    minimum_kind : for a certified minimum, one of :data:`MINIMUM_KINDS`; None otherwise
    gauge : how the O(k)^T symmetry was handled ("none (k = 1: finite orbit)" or the slice used)
    n : ``T d k``, the number of coordinates
    """

    verdict: str
    method: str
    loss: tuple | None
    radius: float | None
    seconds: float
    reason: str
    margins: dict = field(default_factory=dict)
    minimum_kind: str | None = None
    gauge: str = ""
    n: int | None = None

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise CertificateError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.minimum_kind is not None and self.minimum_kind not in MINIMUM_KINDS:
            raise CertificateError(f"minimum_kind must be one of {MINIMUM_KINDS} or None, got {self.minimum_kind!r}")
        if self.verdict != "certified-minimum" and self.minimum_kind is not None:
            raise CertificateError(f"minimum_kind is only for a certified minimum, got {self.minimum_kind!r} "
                                   f"with verdict {self.verdict!r}")
        object.__setattr__(self, "margins", dict(self.margins))

    @property
    def certified(self) -> bool:
        """True for either certified verdict."""
        return self.verdict != "inconclusive"

    @property
    def spurious(self) -> bool:
        """True only for a certified minimum with G proven positive (a certified spurious local minimum)."""
        return self.verdict == "certified-minimum" and self.minimum_kind == "spurious"

    def to_dict(self) -> dict:
        """JSON-ready dict (:func:`theory.strict_json.json_ready`): a non-finite number becomes None (``null``); in
        ``loss``, ``radius`` and ``margins`` that means the bound is not finite (nothing proven by it; the verdict is
        then ``inconclusive`` or rests on other margins), and ``radius`` is also None when unset."""
        return json_ready({
            "verdict": self.verdict, "method": self.method, "loss": self.loss, "radius": self.radius,
            "seconds": self.seconds, "reason": self.reason, "margins": self.margins,
            "minimum_kind": self.minimum_kind, "gauge": self.gauge, "n": self.n,
        })

