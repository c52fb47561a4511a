"""Run many instances at once: local worker processes by default, a Dask cluster when given its address.

Work items are JSON-ready ``spec`` dicts; :func:`run_spec` turns one into one result record (a pure function of the
spec: every random number comes from the spec's seed through ``numpy.random.SeedSequence``), so serial, process and
Dask runs give the same records. Each worker pins BLAS to one thread with ``threadpoolctl``: the products here are
tiny and oversubscribed OpenBLAS threads made them hundreds of times slower (DESIGN.md section 3).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Iterable, Iterator

from threadpoolctl import threadpool_limits

from theory.problem import Problem, ProblemError

__all__ = ["run_spec", "run_all"]


def run_spec(spec: dict) -> dict:
    """The record of one instance (``spec`` keys: ``index, d, k, T, seed, starts, scales, gd_runs``, optional
    ``problem`` (a :meth:`Problem.to_dict`, else drawn from the seed) and ``adversarial`` (options of
    :func:`landscape.adversarial.hill_climb`, or ``None``)); BLAS limited to one thread while it runs."""
    from . import adversarial, search

    with threadpool_limits(limits=1):
        i = int(spec["index"])
        if spec.get("adversarial"):
            rec = adversarial.hill_climb_record(spec)
        else:
            if spec.get("problem") is not None:
                problem = Problem.from_dict(spec["problem"])
            else:
                problem = Problem.random(spec["d"], spec["k"], spec["T"], seed=search.instance_seed(spec["seed"], i))
            rec = search.search_record(problem, starts=spec["starts"], seed=spec["seed"], instance=i,
                                       scales=spec["scales"], gd_runs=spec["gd_runs"])
    rec["config"] = {key: v for key, v in spec.items() if key not in ("index", "problem")}
    return rec


def _init_worker():
    threadpool_limits(limits=1)


def run_all(specs: Iterable[dict], *, workers: int | None = None, scheduler=None,
            connect_timeout: float = 10.0, fn=None) -> Iterator[dict]:
    """Yield the record of every spec as it finishes (completion order, not spec order).

    ``fn``: the function applied to each spec (default :func:`run_spec`; another module-level function such as
    :func:`landscape.census.run_chunk`, so that processes and Dask workers can import it).

    ``scheduler``: address of a Dask scheduler (``tcp://host:port``) or a ``dask.distributed.Client`` /
    ``LocalCluster`` object; ``workers``: local processes (``None``: ``os.cpu_count()``; ``0`` or ``1``: in this
    process, serially); ``connect_timeout``: seconds to wait for a scheduler given by address.
    """
    specs = list(specs)
    fn = run_spec if fn is None else fn
    if not specs:
        return
    if scheduler is not None:
        yield from _run_dask(specs, scheduler, connect_timeout, fn)
        return
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ProblemError(f"workers must be an integer >= 0, got {workers!r}")
    if workers in (0, 1):
        for s in specs:
            yield fn(s)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads (tqdm, dask)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
        futures = [pool.submit(fn, s) for s in specs]
        try:
            for fut in cf.as_completed(futures):
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()


def _run_dask(specs: list[dict], scheduler, connect_timeout: float, fn=run_spec) -> Iterator[dict]:
    from dask.distributed import Client, as_completed

    own = False
    if isinstance(scheduler, str):
        try:
            client = Client(scheduler, timeout=f"{connect_timeout}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ProblemError(f"cannot connect to the Dask scheduler at {scheduler!r}: {exc}") from exc
        own = True
    elif isinstance(scheduler, Client):
        client = scheduler
    else:  # a cluster object such as LocalCluster
        client = Client(scheduler)
        own = True
    try:
        futures = client.map(fn, specs, pure=False)
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        if own:
            client.close()
