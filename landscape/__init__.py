"""Critical points of the Meta-LoRA reduced loss G (DESIGN.md section 1; the paper's Theorem 3.4 and Appendix D.2).

Search (:mod:`landscape.search`), classification up to the O(k)^T symmetry (:mod:`landscape.classify`), fan-out
over processes or a Dask cluster (:mod:`landscape.fanout`), JSON-lines results (:mod:`landscape.store`), an
adversarial search over ground truths (:mod:`landscape.adversarial`), summaries (:mod:`landscape.summary`), and the
certificates (:mod:`landscape.certify_interval`, :mod:`landscape.certify_epsnet`). All the maths comes from
:mod:`theory`.
"""

import importlib

#: public name -> the submodule defining it; imported on first use (PEP 562), so that ``python -m landscape`` starts
#: without NumPy and can answer a Ctrl-C during its start-up with one line (theory.cli_contract)
_EXPORTS = {
    "classify_point": "classify", "dedup": "classify", "orbit_invariants": "classify", "same_orbit": "classify",
    "CLASSES": "result", "STATUS_MESSAGES": "result", "SearchResult": "result",
    "SolverOptions": "search", "gradient_descent": "search", "search_instance": "search", "search_record": "search",
    "solve_critical": "search",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_EXPORTS})
