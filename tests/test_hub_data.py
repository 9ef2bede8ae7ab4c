"""Prepared datasets on the Hub: the files a push uploads, read back with `--source hub` from a local folder and, by
repo id, from a Hub cache under `HF_HUB_OFFLINE=1` (through the pipeline's data stage); an invalid repo id, an
offline push and broken Hub datasets, each with its message. No network: the push's upload is the one step not run."""

import os
import re
import shutil
import subprocess
import sys

import datasets
import pytest

from training.config import REPO_ROOT
from training.prepare_data import main, write_hub_files
from training.prepared import load_items, load_sequences, load_summary
from training.readers.common import PreparedData

REPO_ID = "qbert4rec-tests/beauty-50"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def prepared_dir(beauty_dir, tmp_path_factory):
    """The first 50 real Beauty users, prepared by the s3rec reader."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    return main(["--source", "s3rec", "--input", str(beauty_dir), "--max_users", "50", "--output_dir", str(out)])


@pytest.fixture(scope="module")
def hub_files(prepared_dir, tmp_path_factory):
    """The files `--push_to_hub` would upload for `prepared_dir`, in a local folder."""
    prepared = PreparedData(load_sequences(prepared_dir), load_items(prepared_dir), load_summary(prepared_dir))
    return write_hub_files(prepared, tmp_path_factory.mktemp("hub") / "repo", REPO_ID)


def assert_same_prepared(folder, original):
    """`folder` holds the prepared dataset of `original`: every split, the items and the summary, types included."""
    sequences, expected = load_sequences(folder), load_sequences(original)
    assert list(sequences) == list(expected)
    for split in expected:
        assert sequences[split].features == expected[split].features
        assert sequences[split].to_list() == expected[split].to_list()
    items, expected_items = load_items(folder), load_items(original)
    assert items.features == expected_items.features and items.to_list() == expected_items.to_list()
    assert load_summary(folder) == load_summary(original)


def hub_env(hf_home):
    """Environment of a subprocess that sees only the Hub cache in `hf_home`, offline."""
    return {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_not_a_real_token"}


def run_script(script, *flags, env):
    return subprocess.run([sys.executable, f"training/{script}", *flags], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_layout_is_what_load_dataset_reads(hub_files, prepared_dir):
    files = sorted(str(path.relative_to(hub_files)) for path in hub_files.rglob("*") if path.is_file())
    assert files == ["README.md", "items/train.parquet", "sequences/test.parquet", "sequences/train.parquet",
                     "sequences/validation.parquet", "summary.json"]
    assert datasets.get_dataset_config_names(str(hub_files)) == ["sequences", "items"]
    card = (hub_files / "README.md").read_text()
    assert f'load_dataset("{REPO_ID}", "sequences")' in card and "slice: the first 50 of 22,363 users" in card
    # The card's own example, on the folder: one schema per config, so train's `target` is all null on the Hub.
    train = datasets.load_dataset(str(hub_files), "sequences", split="train")
    assert train["target"] == [None] * 50 and train["item_ids"] == load_sequences(prepared_dir)["train"]["item_ids"]


def test_round_trip_through_a_local_folder(hub_files, prepared_dir, tmp_path, capsys):
    output = main(["--source", "hub", "--input", str(hub_files), "--output_dir", str(tmp_path / "back")])
    assert_same_prepared(output, prepared_dir)
    assert "dataset                            Beauty (s3rec)" in capsys.readouterr().out


def test_round_trip_by_repo_id_from_the_hub_cache(hub_files, prepared_dir, tmp_path):
    # The Hub cache as a download leaves it: $HF_HOME/hub/datasets--ORG--NAME/{refs/main, snapshots/<commit>/...}.
    repo_cache = tmp_path / "hf_home" / "hub" / ("datasets--" + REPO_ID.replace("/", "--"))
    shutil.copytree(hub_files, repo_cache / "snapshots" / COMMIT)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(COMMIT)
    # Trained from a Hub dataset id: the pipeline's data stage with `source: hub`, in a process that is offline.
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  source: hub\n  input: {REPO_ID}\n")
    result = run_script("pipeline.py", "--config", str(config), "--output_dir", str(tmp_path / "run"),
                        "--stop_after", "data", env=hub_env(tmp_path / "hf_home"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_prepared(tmp_path / "run" / "data", prepared_dir)
    assert sorted(p.name for p in (tmp_path / "hf_home").iterdir()) == ["hub"]  # no Arrow cache left behind
    # A repo id that the cache does not hold: one line, no traceback.
    result = run_script("prepare_data.py", "--source", "hub", "--input", "qbert4rec-tests/absent",
                        "--output_dir", str(tmp_path / "absent"), env=hub_env(tmp_path / "hf_home"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: reading the dataset qbert4rec-tests/absent failed: offline mode is on (HF_HUB_OFFLINE=1) and the Hub "
        f"cache ({tmp_path / 'hf_home' / 'hub'}) holds no snapshot of it"
    )
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("repo_id", ["not a repo id", "org/name/extra", "org//name"])
def test_invalid_repo_id_writes_nothing(repo_id, beauty_dir, tmp_path):
    with pytest.raises(ValueError, match=f"invalid Hub repo id '{repo_id}'"):
        main(["--source", "s3rec", "--input", str(beauty_dir), "--max_users", "5", "--output_dir",
              str(tmp_path / "out"), "--push_to_hub", repo_id])
    with pytest.raises(ValueError, match=f"no local folder {repo_id}, and invalid Hub repo id '{repo_id}'"):
        main(["--source", "hub", "--input", repo_id, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_push_offline_is_one_line_and_keeps_the_local_folder(beauty_dir, prepared_dir, tmp_path):
    out = tmp_path / "data"
    result = run_script("prepare_data.py", "--source", "s3rec", "--input", str(beauty_dir), "--max_users", "50",
                        "--output_dir", str(out), "--push_to_hub", "org/beauty", "--private", env=hub_env(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: pushing {out} to org/beauty failed: offline mode is on (HF_HUB_OFFLINE=1); unset it to upload"
    )
    assert f"saved to {out}" in result.stdout
    assert_same_prepared(out, prepared_dir)
    # The folder pushed again without reading the source: the same line, the folder untouched.
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    result = run_script("prepare_data.py", "--source", "prepared", "--input", str(out), "--push_to_hub",
                        "org/beauty", env=hub_env(tmp_path))
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(
        f"error: pushing {out} to org/beauty failed: offline mode is on")
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before


def drop_column(folder, config, column):
    """Rewrite every split file of `config` without `column` (a consistent but incomplete dataset)."""
    for path in sorted((folder / config).glob("*.parquet")):
        rows = datasets.Dataset.from_parquet(str(path), keep_in_memory=True).remove_columns(column)
        rows.to_parquet(str(path))


def drop_one_file_column(folder, config, split, column):
    """Rewrite only one split file of `config` without `column`."""
    path = folder / config / f"{split}.parquet"
    datasets.Dataset.from_parquet(str(path), keep_in_memory=True).remove_columns(column).to_parquet(str(path))


BROKEN = {  # what is done to a copy of the pushed files -> the message
    "items without title": (lambda folder: drop_column(folder, "items", "title"),
                            "split 'train' of config 'items' lacks the column\\(s\\) title \\(columns: item_id, text"),
    "sequences without target": (lambda folder: drop_column(folder, "sequences", "target"),
                                 "split 'validation' of config 'sequences' lacks the column\\(s\\) target"),
    "test file without target": (  # datasets fills the column with nulls, from the first file's schema
        lambda folder: drop_one_file_column(folder, "sequences", "test", "target"),
        "column 'target' of sequences/test is missing or null in 50 of 50 rows"),
    "train file without target": (  # the first file lacks a column that the others have
        lambda folder: drop_one_file_column(folder, "sequences", "train", "target"),
        "datasets cannot read config 'sequences': because column names don't match"),
    "no summary": (lambda folder: (folder / "summary.json").unlink(), "no summary.json beside the data"),
    "no card": (lambda folder: (folder / "README.md").unlink(),
                "not a prepared dataset in the Hub layout: no 'sequences' config \\(configs: default\\)"),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_hub_input_that_is_not_a_prepared_dataset(broken, hub_files, tmp_path):
    folder = tmp_path / "repo"
    shutil.copytree(hub_files, folder)
    damage, message = BROKEN[broken]
    damage(folder)
    with pytest.raises(ValueError, match=f"^{re.escape(str(folder))}: .*{message}"):
        main(["--source", "hub", "--input", str(folder), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_flags_that_do_not_fit_the_prepared_sources(prepared_dir, hub_files, tmp_path):
    with pytest.raises(ValueError, match="--max_users with --source prepared needs an --output_dir other than the in"):
        main(["--source", "prepared", "--input", str(prepared_dir), "--max_users", "5"])
    local = f"--revision v1 applies to a Hub dataset id, not to the local folder {hub_files}"
    with pytest.raises(ValueError, match=local):
        main(["--source", "hub", "--input", str(hub_files), "--revision", "v1", "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="--input is required for --source hub"):
        main(["--source", "hub", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    sliced = main(["--source", "prepared", "--input", str(prepared_dir), "--max_users", "5",
                   "--output_dir", str(tmp_path / "five")])
    assert load_sequences(sliced)["test"]["user_id"] == load_sequences(prepared_dir)["test"]["user_id"][:5]
