"""Settings of the Figure 1 experiment (the paper's Section 4.1): the five panels, the defaults, and one validated
:class:`Settings` per point of a panel.

>>> [s.d for s in panel_settings("d")]
[5, 10, 20]
>>> panel_settings("k")[0].d  # the k panel runs at d = 12 (Remark 3.1 at k = 3)
12
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .cli_contract import require_int
from .problem import ProblemError, require_remark_3_1

__all__ = ["PANELS", "PANEL_FIXED", "DEFAULTS", "Settings", "panel_settings", "settings_dict"]

PANELS: dict[str, tuple[int, ...]] = {
    "d": (5, 10, 20), "T": (2, 3, 5), "N": (100, 1000, 10000), "n": (100, 1000, 10000), "k": (1, 2, 3),
}
#: settings a panel fixes differently from the defaults: k = 3 at T = 3 needs d >= (T+1) k = 12 (Remark 3.1), so
#: the k panel runs at d = 12 for all three values unless the user sets d
PANEL_FIXED: dict[str, dict[str, int]] = {"k": {"d": 12}}
#: the paper's defaults (Section 4.1)
DEFAULTS = {"d": 10, "T": 3, "N": 5000, "n": 100, "k": 1, "sigma": 0.1}


def _positive_float(name: str, value) -> float:
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ProblemError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _check_field(name: str, value):
    """One :class:`Settings` field checked by its own rule (Remark 3.1, which ties d, k and T, is checked on the
    whole setting); returns the value normalised (int or float)."""
    if name in ("d", "T", "N", "n", "k", "runs", "retrain_iters", "finetune_iters"):
        return require_int(name, value)
    if name == "init_scale":
        return _positive_float(name, value)
    if name in ("sigma", "retrain_gtol"):
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = float("nan")
        if not np.isfinite(v) or v < 0:
            raise ProblemError(f"{name} must be a finite number >= 0, got {value!r}")
        return v
    if name == "seed":
        require_int("seed", value, minimum=0)
    return value


@dataclass(frozen=True)
class Settings:
    """One experiment setting (one point of one panel).

    Attributes
    ----------
    d, T, N, n, k : sizes (dimension, retraining tasks, samples per retraining task, held-out samples, adapter rank)
    sigma : noise standard deviation (>= 0)
    runs : independent repetitions (fresh ground truth, data and starts per run)
    seed : base seed; run j uses the streams ``SeedSequence([seed, j, ...])``
    retrain_iters : most gradient-descent iterations of retraining (it stops earlier once every run's gradient
        norm is below ``retrain_gtol`` times its norm at the start; 0 turns that off)
    finetune_iters : gradient-descent iterations of fine-tuning (always all of them: the plotted curves)
    init_scale : standard deviation of the entries of the random starts of ``U``, ``B``, ``C``

    Raises
    ------
    ProblemError
        A size, ``runs`` or iteration count that is not a positive integer, ``sigma`` or ``retrain_gtol`` not a
        finite number >= 0, ``init_scale`` not a finite number > 0, a seed that is not an integer >= 0, or
        ``(T + 1) k > d`` (Remark 3.1).
    """

    d: int = DEFAULTS["d"]
    T: int = DEFAULTS["T"]
    N: int = DEFAULTS["N"]
    n: int = DEFAULTS["n"]
    k: int = DEFAULTS["k"]
    sigma: float = DEFAULTS["sigma"]
    runs: int = 5
    seed: int = 0
    retrain_iters: int = 100000
    finetune_iters: int = 5000
    retrain_gtol: float = 1e-10
    init_scale: float = 1e-2

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, _check_field(f.name, getattr(self, f.name)))
        require_remark_3_1(self.d, self.k, self.T)

    @property
    def rank(self) -> int:
        """Fine-tuning rank r: ``3k`` for ``T = 2`` (Corollary 2), else ``k`` (Corollary 3)."""
        return 3 * self.k if self.T == 2 else self.k


def panel_settings(panel: str, overrides: dict | None = None) -> list[Settings]:
    """The three settings of a panel: the defaults, then the panel's fixed settings (``PANEL_FIXED``), then
    ``overrides`` (any :class:`Settings` fields the user set), then the panel's parameter at each of its values.

    Returns
    -------
    list of Settings
        Three, in the order of ``PANELS[panel]``.

    Raises
    ------
    ProblemError
        An unknown panel or setting name, naming it; a bad setting (non-positive count, ``(T+1) k > d``), naming
        the panel and value; an override that breaks its own rule, naming the field, also where the panel replaces
        it (``--vary n --n 0``).
    """
    if panel not in PANELS:
        raise ProblemError(f"unknown panel {panel!r}; the panels are {', '.join(PANELS)}")
    overrides = dict(overrides or {})
    unknown = set(overrides) - {f.name for f in fields(Settings)}
    if unknown:
        raise ProblemError(f"unknown settings {sorted(unknown)}; the settings are {[f.name for f in fields(Settings)]}")
    for name, value in overrides.items():  # each given value obeys its rule, also where the panel replaces it
        _check_field(name, value)
    out = []
    for v in PANELS[panel]:
        try:
            out.append(Settings(**{**PANEL_FIXED.get(panel, {}), **overrides, panel: v}))
        except ProblemError as exc:
            raise ProblemError(f"panel {panel}, {panel} = {v}: {exc}") from None
    return out


def settings_dict(s: Settings) -> dict:
    """A JSON-ready record of a setting, with the fine-tuning rank.

    Returns
    -------
    dict
        Every :class:`Settings` field by name, and ``"rank"``.
    """
    out = {f.name: getattr(s, f.name) for f in fields(s)}
    out["rank"] = s.rank
    return out
