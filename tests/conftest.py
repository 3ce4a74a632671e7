"""Shared fixtures: seeds, the small offline model, and per-test activation-store folders."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

# Hub access is never needed by the default test run; make hub look-ups fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def minilm():
    """MiniLM-L6 loaded once for the whole session (fetched into the cache on first use)."""
    from utils.models import load_model

    return load_model("minilm", device="cpu")
