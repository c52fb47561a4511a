"""Problem instances of the linear multi-task model (DESIGN.md section 1, the paper's Section 3).

A problem holds the shared ground truth ``A*`` of shape ``(d, d)``, the task factors ``U*`` of shape ``(T, d, k)``,
an optional held-out task factor ``U*_{T+1}`` of shape ``(d, k)`` and the noise level ``sigma``. Task matrices are
``W_t = A* + U*_t U*_t^T``.

>>> p = Problem.random(d=4, k=1, T=2, seed=0)
>>> p.W.shape, p.W_test.shape
((2, 4, 4), (4, 4))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ProblemError", "Problem", "MetaPoint", "require_remark_3_1", "require_finite", "first_nonfinite"]


class ProblemError(ValueError):
    """Bad input: one message naming the value and the rule it breaks."""


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ProblemError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise ProblemError(f"{name} must be a positive integer (> 0), got {value}")
    return int(value)


def first_nonfinite(arr: np.ndarray) -> str:
    """``"<value> at [i, j, ...]"`` for the first non-finite entry of ``arr`` (row-major), for error messages."""
    idx = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
    return f"{float(arr[idx])!r} at {list(idx)}"


def require_finite(name: str, value) -> np.ndarray:
    """``value`` as a float64 array; refuses NaN or inf entries, naming the first one (``ProblemError``).

    The guard in front of every linear-algebra routine (SVD, eigendecompositions, Cholesky), which would otherwise
    fail with ``LinAlgError`` or return garbage on such input.
    """
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ProblemError(f"{name} must have finite entries, found {np.count_nonzero(~np.isfinite(arr))} "
                           f"non-finite ({first_nonfinite(arr)})")
    return arr


def _finite_array(name: str, value, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64, copy=True)
    except (TypeError, ValueError, OverflowError):  # ragged lists, strings, objects, ints beyond float64
        raise ProblemError(f"{name} must be an array of numbers of shape {shape}, got {_describe(value)}") from None
    if arr.shape != shape:
        raise ProblemError(f"{name} must have shape {shape}, got {arr.shape}")
    arr = require_finite(name, arr).copy()
    arr.setflags(write=False)
    return arr


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _seed(value):
    """``None`` or an integer >= 0 (what ``numpy.random.default_rng`` accepts as a plain seed)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ProblemError(f"seed must be an integer >= 0 (or None), got {_describe(value)}")
    return int(value)


def _check_scale(name: str, W: np.ndarray) -> None:
    """Refuse task matrices that overflow float64, or whose squared norms do (then every loss is inf)."""
    if not np.all(np.isfinite(W)):
        raise ProblemError(f"the task matrices {name} = A* + U* U*^T are not finite in float64 "
                           f"({first_nonfinite(W)}): A* and U* are too large")
    with np.errstate(over="ignore"):
        energy = float(np.sum(W * W))
    if not np.isfinite(energy):
        raise ProblemError(f"the squared Frobenius norm of the task matrices {name} overflows float64 (largest "
                           f"|entry| {float(np.max(np.abs(W))):.3g}), so every loss would be inf: rescale A* and U*")


@dataclass(frozen=True, eq=False)
class Problem:
    """A validated, read-only instance ``(A*, U*, U*_{T+1}, sigma)``.

    Attributes
    ----------
    A_star : (d, d) array
    U_star : (T, d, k) array
    U_test : (d, k) array or None, the held-out task T+1
    sigma : float >= 0, the noise standard deviation of the finite-sample model
    seed : int >= 0 or None, the seed it was drawn from (for the record)

    Raises
    ------
    ProblemError
        wrong shapes, non-numeric or non-finite entries, ``sigma`` not a finite number >= 0, a seed that is not an
        integer >= 0, or task matrices ``W_t`` (or ``W_{T+1}``) that are not finite in float64 or whose squared
        Frobenius norm overflows (every loss would then be inf).
    """

    A_star: np.ndarray
    U_star: np.ndarray
    U_test: np.ndarray | None = None
    sigma: float = 0.0
    seed: int | None = None
    d: int = field(init=False)
    k: int = field(init=False)
    T: int = field(init=False)

    def __post_init__(self):
        try:
            U = np.asarray(self.U_star, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):  # ragged lists, strings, objects
            raise ProblemError(f"U_star must be an array of numbers of shape (T, d, k), got "
                               f"{_describe(self.U_star)}") from None
        if U.ndim != 3:
            raise ProblemError(f"U_star must have shape (T, d, k), got an array with {U.ndim} dimensions {U.shape}")
        T, d, k = U.shape
        for name, size in (("T", T), ("d", d), ("k", k)):
            if size <= 0:
                raise ProblemError(f"{name} must be a positive integer (> 0), got {size} from U_star.shape={U.shape}")
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "T", T)
        object.__setattr__(self, "A_star", _finite_array("A_star", self.A_star, (d, d)))
        object.__setattr__(self, "U_star", _finite_array("U_star", U, (T, d, k)))
        if self.U_test is not None:
            object.__setattr__(self, "U_test", _finite_array("U_test", self.U_test, (d, k)))
        try:
            sigma = float(self.sigma)
        except (TypeError, ValueError):
            sigma = float("nan")
        if not np.isfinite(sigma) or sigma < 0:
            raise ProblemError(f"sigma must be a finite number >= 0, got {_describe(self.sigma)}")
        object.__setattr__(self, "sigma", sigma)
        object.__setattr__(self, "seed", _seed(self.seed))
        with np.errstate(over="ignore", invalid="ignore"):
            W = self.A_star[None] + self.U_star @ self.U_star.transpose(0, 2, 1)
            W_test = None if self.U_test is None else self.A_star + self.U_test @ self.U_test.T
        _check_scale("W_t", W)
        if W_test is not None:
            _check_scale("W_(T+1)", W_test)
        W.setflags(write=False)
        object.__setattr__(self, "_W", W)

    @classmethod
    def random(cls, d: int, k: int, T: int, seed: int, *, sigma: float = 0.0, with_test: bool = True) -> "Problem":
        """Draw ``A*``, ``U*`` and ``U*_{T+1}`` with i.i.d. N(0, 1) entries (the paper's Section 4.1)."""
        d, k, T = _positive_int("d", d), _positive_int("k", k), _positive_int("T", T)
        rng = np.random.default_rng(_seed(seed))
        A_star = rng.standard_normal((d, d))
        U_star = rng.standard_normal((T, d, k))
        U_test = rng.standard_normal((d, k)) if with_test else None
        return cls(A_star=A_star, U_star=U_star, U_test=U_test, sigma=sigma, seed=seed)

    @property
    def W(self) -> np.ndarray:
        """Task matrices ``W_t = A* + U*_t U*_t^T``, shape ``(T, d, d)``."""
        return self._W

    @property
    def W_test(self) -> np.ndarray:
        """Held-out task matrix ``W_{T+1} = A* + U*_{T+1} U*_{T+1}^T``, shape ``(d, d)``."""
        if self.U_test is None:
            raise ProblemError("this problem has no held-out task U_test (build it with with_test=True)")
        return self.A_star + self.U_test @ self.U_test.T

    @property
    def n_reduced(self) -> int:
        """Dimension ``T d k`` of the reduced variable ``x = [vec(U_1); ...; vec(U_T)]``."""
        return self.T * self.d * self.k

    @property
    def n_full(self) -> int:
        """Dimension ``d^2 + T d k`` of ``x = [vec(A); vec(U_1); ...; vec(U_T)]``."""
        return self.d * self.d + self.n_reduced

    def to_dict(self) -> dict:
        """A JSON-ready description that :meth:`from_dict` restores exactly (float64 round-trips through repr)."""
        return {
            "d": self.d, "k": self.k, "T": self.T, "sigma": self.sigma, "seed": self.seed,
            "A_star": self.A_star.tolist(), "U_star": self.U_star.tolist(),
            "U_test": None if self.U_test is None else self.U_test.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Problem":
        """Rebuild from :meth:`to_dict` output, refusing missing keys or inconsistent sizes."""
        if not isinstance(data, dict):
            raise ProblemError(f"a problem must be a JSON object, got {type(data).__name__}")
        for key in ("A_star", "U_star"):
            if key not in data:
                raise ProblemError(f"a problem needs the key {key!r}; found keys {sorted(data)}")
        p = cls(A_star=data["A_star"], U_star=data["U_star"], U_test=data.get("U_test"),
                sigma=data.get("sigma", 0.0), seed=data.get("seed"))
        for name in ("d", "k", "T"):
            if name in data and data[name] != getattr(p, name):
                raise ProblemError(f"{name}={data[name]!r} disagrees with the arrays, which give {name}={getattr(p, name)}")
        return p


def require_remark_3_1(d: int, k: int, T: int) -> None:
    """Refuse sizes that break ``(T + 1) k <= d`` (the paper's Remark 3.1: the ``(T+1) k`` columns of the ``U*_t``
    must be able to be linearly independent), and non-positive sizes."""
    d, k, T = _positive_int("d", d), _positive_int("k", k), _positive_int("T", T)
    if (T + 1) * k > d:
        raise ProblemError(
            f"(T+1)*k = ({T}+1)*{k} = {(T + 1) * k} exceeds d = {d}: Remark 3.1 needs (T+1) k <= d so that the "
            "columns of U*_1..U*_{T+1} can be linearly independent")


@dataclass(frozen=True, eq=False)
class MetaPoint:
    """A point ``(A, U)`` of the Meta-LoRA loss: ``A`` of shape ``(d, d)``, ``U`` of shape ``(T, d, k)``.

    ``flatten`` gives ``x = [vec(A); vec(U_1); ...; vec(U_T)]`` in NumPy's row-major order (DESIGN.md).

    >>> pt = MetaPoint(np.eye(2), np.ones((3, 2, 1)))
    >>> MetaPoint.unflatten(pt.flatten(), d=2, k=1, T=3).U.shape
    (3, 2, 1)
    """

    A: np.ndarray
    U: np.ndarray

    def flatten(self) -> np.ndarray:
        return np.concatenate([np.ravel(self.A), np.ravel(self.U)])

    @classmethod
    def unflatten(cls, x: np.ndarray, d: int, k: int, T: int) -> "MetaPoint":
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (d * d + T * d * k,):
            raise ProblemError(f"x must have shape ({d * d + T * d * k},) for d={d}, k={k}, T={T}, got {x.shape}")
        return cls(x[: d * d].reshape(d, d), x[d * d:].reshape(T, d, k))
