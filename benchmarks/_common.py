"""Shared helpers of the benchmark scripts: thread pinning, timing, environment record."""

from __future__ import annotations

import json
import platform
import sys
import timeit
from contextlib import contextmanager


@contextmanager
def pinned_threads(n: int = 1):
    """Pin BLAS (threadpoolctl) and torch to ``n`` threads; yields a dict describing the pinning."""
    from threadpoolctl import threadpool_info, threadpool_limits

    info = {"blas_threads": n}
    try:
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(n)
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        torch, old = None, None
    with threadpool_limits(limits=n):
        info["threadpools"] = [{"api": p["internal_api"], "threads": p["num_threads"]} for p in threadpool_info()]
        try:
            yield info
        finally:
            if torch is not None:
                torch.set_num_threads(old)


def best_time(fn, *, repeat: int = 5, min_total: float = 0.2) -> float:
    """Best-of-``repeat`` seconds per call, each repeat looping long enough to last ``min_total / repeat``."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * min_total / max(0.2, 1e-9)))
    return min(timer.repeat(repeat=repeat, number=number)) / number


def environment() -> dict:
    import numpy
    import scipy

    env = {"python": sys.version.split()[0], "machine": platform.machine(), "processor": platform.processor(),
           "numpy": numpy.__version__, "scipy": scipy.__version__}
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        pass
    return env


def write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (:func:`theory.atomic.atomic_write_text`)."""
    from theory.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")
