"""Critical points of the Meta-LoRA reduced loss G (docs/convention.md; the paper's Theorem 3.4 and Appendix D.2).

Search (:mod:`landscape.search`), classification up to the O(k)^T symmetry (:mod:`landscape.classify`), fan-out
over processes or a Dask cluster (:mod:`landscape.fanout`), JSON-lines results (:mod:`landscape.store`), an
adversarial search over ground truths (:mod:`landscape.adversarial`), summaries (:mod:`landscape.summary`), and the
certificates (:mod:`landscape.certify_interval`, :mod:`landscape.certify_epsnet`; by name through
:func:`landscape.certifier`). All the maths comes from :mod:`theory`.
"""

from theory._lazy import lazy_exports

#: public name -> the submodule defining it; imported on first use (PEP 562), so that ``python -m landscape`` starts
#: without NumPy and can answer a Ctrl-C during its start-up with one line (theory.cli_contract)
_EXPORTS = {
    "classify_point": "classify", "dedup": "classify", "orbit_invariants": "classify", "same_orbit": "classify",
    "CLASSES": "result", "STATUS_MESSAGES": "result", "SearchResult": "result",
    "SolverOptions": "search", "gradient_descent": "search", "search_instance": "search", "search_record": "search",
    "solve_critical": "search",
    "Certificate": "certificate", "CertificateError": "certificate", "VERDICTS": "certificate",
    "MINIMUM_KINDS": "certificate", "CERTIFICATES": "certify_registry", "certifier": "certify_registry",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
