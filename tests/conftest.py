"""Shared fixtures: tiny generated data sets so every test runs in seconds on 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from pbrforge.datagen.generate import generate_dataset

    root = tmp_path_factory.mktemp("data") / "tiny"
    generate_dataset(root, count=14, size=32, seed=3, dirty_ratio=0.5, progress=False)
    return root
