"""Critical points of the Meta-LoRA reduced loss G (DESIGN.md section 1; the paper's Theorem 3.4 and Appendix D.2).

Search (:mod:`landscape.search`), classification up to the O(k)^T symmetry (:mod:`landscape.classify`), fan-out
over processes or a Dask cluster (:mod:`landscape.fanout`), JSON-lines results (:mod:`landscape.store`), an
adversarial search over ground truths (:mod:`landscape.adversarial`), summaries (:mod:`landscape.summary`), and the
certificates (:mod:`landscape.certify_interval`, :mod:`landscape.certify_epsnet`). All the maths comes from
:mod:`theory`.
"""

from .classify import classify_point, dedup, orbit_invariants, same_orbit
from .result import CLASSES, STATUS_MESSAGES, SearchResult
from .search import SolverOptions, gradient_descent, search_instance, search_record, solve_critical

__all__ = ["CLASSES", "STATUS_MESSAGES", "SearchResult", "SolverOptions", "classify_point", "dedup",
           "gradient_descent", "orbit_invariants", "same_orbit", "search_instance", "search_record",
           "solve_critical"]
