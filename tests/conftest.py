"""Shared fixtures: the real benchmark data folder (tests that need it skip when it is absent)."""

from pathlib import Path

import pytest
import torch

from training.config import DATA_DIR_ENV, default_data_dir

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
# configs/smoke.yaml on the first 300 users, one epoch per trained stage: the flags go to the stages that take them.
SLICE = ["--max_users", "300", "--num_epochs", "1"]

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


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, beauty_dir):
    """The whole pipeline, configs/smoke.yaml on 300 real Beauty users: OUTPUT_DIR with final/, metrics.json, data/,
    features/, inject/, semantic_ids/. Read-only for tests: copy final/ before changing it."""
    from training import pipeline

    out = tmp_path_factory.mktemp("smoke")
    pipeline.main(["--config", SMOKE, "--output_dir", str(out), *SLICE])
    return out
