"""The certificates the toolkit offers, by method name (standard library only: the command line reads it at start-up).

A certificate is a function ``f(problem, U0, **options) -> landscape.certificate.Certificate`` in a module of its own
(built from :mod:`landscape.certify_common`); adding one is that module, its tests and one line in
:data:`CERTIFICATES` (docs/landscape.md, "Adding a certificate").
"""

from __future__ import annotations

import importlib

__all__ = ["CERTIFICATES", "certifier"]

#: method -> ``"module:function"``, in the order the command line lists them; imported when used
CERTIFICATES = {
    "krawczyk": "landscape.certify_interval:certify_interval",
    "epsnet": "landscape.certify_epsnet:certify_epsnet",
}


def certifier(method: str):
    """The certificate function registered as ``method`` in :data:`CERTIFICATES`, imported on first use.

    Returns
    -------
    callable
        ``f(problem, U0, **options) -> Certificate``.

    Raises
    ------
    KeyError
        ``method`` is not a key of :data:`CERTIFICATES` (the message lists the keys).

    >>> certifier("krawczyk").__name__
    'certify_interval'
    """
    if method not in CERTIFICATES:
        raise KeyError(f"method must be one of {tuple(CERTIFICATES)}, got {method!r}")
    module, name = CERTIFICATES[method].split(":")
    return getattr(importlib.import_module(module), name)
