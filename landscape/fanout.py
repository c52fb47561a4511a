"""Run many instances at once: local worker processes by default, a Dask cluster when given its address.

Work items are JSON-ready ``spec`` dicts; :func:`run_spec` turns one into one result record (a pure function of the
spec: every random number comes from the spec's seed through ``numpy.random.SeedSequence``), so serial, process and
Dask runs give the same records. Each worker pins BLAS to one thread with ``threadpoolctl``: the products here are
tiny and oversubscribed OpenBLAS threads made them hundreds of times slower.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import signal
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

from theory.cli_contract import require_int
from theory.problem import Problem, ProblemError

__all__ = ["run_spec", "run_all", "WorkerLost"]


class WorkerLost(RuntimeError):
    """A local worker process ended abruptly (killed by a signal, out of memory) and the run stopped; every record
    finished before that was yielded, so running the same specs again (minus those) resumes the run."""


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
    # Ctrl-C in a terminal reaches the whole process group: the main process handles it (and stops the workers)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(limits=1)
    # tqdm's first bar (the eps-net makes a silent one) would create a multiprocessing RLock, a named semaphore that
    # the resource tracker reports as leaked when Ctrl-C terminates this worker; a thread lock is all it needs here
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


@contextmanager
def _sigint_blocked():
    """Block SIGINT in this thread while worker processes start: they inherit the blocked mask, so a Ctrl-C cannot
    kill one half-started (before :func:`_init_worker` runs) with a traceback; a SIGINT that arrives meanwhile stays
    pending here and is delivered when the block ends."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _stop(pool: cf.ProcessPoolExecutor) -> None:
    """Stop the pool now: cancel the specs not started and terminate the workers (their running specs are
    abandoned and recomputed on resume). ``ProcessPoolExecutor`` has no public way to end busy workers before
    Python 3.14 (``terminate_workers``), hence its ``_processes`` table; ``shutdown(wait=True)`` would wait for every
    running spec, which is what made Ctrl-C hang."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None  # a second Ctrl-C must not cut this short
    try:
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=5.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=5.0)
    finally:
        if main:
            signal.signal(signal.SIGINT, old if old is not None else signal.SIG_DFL)


def run_all(specs: Iterable[dict], *, workers: int | None = None, scheduler=None,
            connect_timeout: float = 10.0, fn=None) -> Iterator[dict]:
    """Yield the record of every spec as it finishes (completion order, not spec order).

    ``fn``: the function applied to each spec (default :func:`run_spec`; another module-level function such as
    :func:`landscape.census.run_chunk`, so that processes and Dask workers can import it).

    ``scheduler``: address of a Dask scheduler (``tcp://host:port``) or a ``dask.distributed.Client`` /
    ``LocalCluster`` object; ``workers``: local processes (``None``: ``os.cpu_count()``; ``0`` or ``1``: in this
    process, serially); ``connect_timeout``: seconds to wait for a scheduler given by address.

    Raises
    ------
    WorkerLost
        a local worker process died (after every record finished before was yielded).
    KeyboardInterrupt
        passed on after the local workers were terminated (they ignore SIGINT themselves).
    """
    specs = list(specs)
    fn = run_spec if fn is None else fn
    if not specs:
        return
    if scheduler is not None:
        yield from _run_dask(specs, scheduler, connect_timeout, fn)
        return
    require_int("workers", workers, minimum=0, allow_none=True)
    if workers in (0, 1):
        for s in specs:
            yield fn(s)
        return
    yield from _run_processes(specs, workers, fn)


def _run_processes(specs: list[dict], workers: int | None, fn=run_spec) -> Iterator[dict]:
    """Local worker processes; on any exception (Ctrl-C included) or when the caller stops iterating, the workers
    are terminated at once (:func:`_stop`). A dead worker breaks the pool: the records already finished are still
    yielded, then :class:`WorkerLost` is raised."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads (tqdm, dask)
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    try:
        with _sigint_blocked():
            futures = [pool.submit(fn, s) for s in specs]
        broken = None
        for fut in cf.as_completed(futures):
            if isinstance(fut.exception(), BrokenProcessPool):
                broken = fut.exception()
                continue
            yield fut.result()
        if broken is not None:
            raise WorkerLost("a worker process ended abruptly (killed by a signal, or out of memory)") from broken
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)


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
