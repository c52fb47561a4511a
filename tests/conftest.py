"""Shared fixtures: every generator is seeded before each test; the ``gpu`` marker skips without CUDA."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Mutation runs (docs/mutation.md) pass --hypothesis-profile=mutation: the same examples on every run, and no deadline
# or health check that machine load could trip (a test failing for that reason would count a mutant as killed).
settings.register_profile("mutation", derandomize=True, database=None, deadline=None,
                          suppress_health_check=list(HealthCheck))

SHARED_DATA = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "shared", "data")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed Python's, NumPy's legacy and (when imported) torch's generators before each test."""
    random.seed(0)
    np.random.seed(0)
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if any(item.get_closest_marker("gpu") for item in items):
        try:
            import torch

            has_cuda = torch.cuda.is_available()
        except ImportError:
            has_cuda = False
        if not has_cuda:
            skip = pytest.mark.skip(reason="needs a CUDA device")
            for item in items:
                if item.get_closest_marker("gpu"):
                    item.add_marker(skip)
