"""Shared fixtures: the real benchmark data folder (tests that need it skip when it is absent)."""

import pytest
import torch

from training.config import DATA_DIR_ENV, default_data_dir

# Tiny models run fastest on one thread, and the suite must not fight itself for the 2 cores of CI.
torch.set_num_threads(1)


def _dataset_dir(name: str):
    path = default_data_dir() / name
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set ${DATA_DIR_ENV} to the folder holding {name}/)")
    return path


@pytest.fixture(scope="session")
def beauty_dir():
    """`../shared/data/amazon-beauty` (S3-Rec format)."""
    return _dataset_dir("amazon-beauty")


@pytest.fixture(scope="session")
def scientific_dir():
    """`../shared/data/amazon-scientific-mm` (RecBole atomic files + CLIP feature matrices)."""
    return _dataset_dir("amazon-scientific-mm")


@pytest.fixture(scope="session")
def office_dir():
    """`../shared/data/amazon-office` (LC-Rec / LETTER JSON)."""
    return _dataset_dir("amazon-office")
