"""The `prepare_data.py` command: flags, YAML section, default input, saved folder that reloads."""

import json
import re
import subprocess
import sys

import pytest

from training.config import DATA_DIR_ENV, REPO_ROOT
from training.data import load_prepared, load_summary
from training.prepare_data import main


def write_tiny_s3rec(folder):
    """A three-user S3-Rec folder (`Tiny.txt`, `items.tsv`) in the amazon-beauty layout."""
    folder.mkdir(parents=True)
    (folder / "Tiny.txt").write_text("1 1 2 3 4\n2 2 3 1\n3 4 3 2 1\n4 1 2\n")
    (folder / "items.tsv").write_text(
        "item_id\tasin\ttitle\tbrand_and_categories\n"
        "1\tA1\tNail &amp; Polish\tOPI | Makeup | Nails\n2\tA2\tCream\tSkin Care | Face\n"
        "3\tA3\t\tMakeup | Lips\n4\tA4\tShampoo\tAcme | Hair Care\n"
    )
    return folder


def test_cli_writes_a_folder_that_reloads(tmp_path, capsys):
    source = write_tiny_s3rec(tmp_path / "tiny")
    output = main(["--source", "s3rec", "--input", str(source), "--output_dir", str(tmp_path / "out")])
    assert output == tmp_path / "out"
    sequences, items = load_prepared(output)
    assert sequences["test"]["target"] == ["A4", "A1", "A1"]
    assert items["title"] == ["Nail & Polish", "Cream", "", "Shampoo"]
    summary = load_summary(output)
    assert (summary["users"], summary["items"], summary["interactions"]) == (3, 4, 11)
    assert summary["dropped"]["short_user_interactions"] == 2
    printed = capsys.readouterr().out
    assert re.search(r"^users\s+3$", printed, re.M) and re.search(r"^dropped short user interactions\s+2$", printed, re.M)
    assert "items without title" in printed and f"saved to {output}" in printed


def test_cli_yaml_section_and_default_input(tmp_path, monkeypatch):
    write_tiny_s3rec(tmp_path / "shared" / "amazon-beauty")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "shared"))
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  source: s3rec\n  output_dir: {tmp_path / 'from_yaml'}\n")
    output = main(["--config", str(config)])
    assert output == tmp_path / "from_yaml" and load_summary(output)["name"] == "Tiny"
    config.write_text("data:\n  sorce: s3rec\n")
    with pytest.raises(ValueError, match="unknown key\\(s\\) in section 'data': sorce"):
        main(["--config", str(config)])


def test_cli_errors(tmp_path):
    with pytest.raises(ValueError, match="--input is required for --source amazon2014"):
        main(["--source", "amazon2014", "--output_dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        main(["--source", "csv"])


def test_cli_help_runs_as_a_script():
    result = subprocess.run([sys.executable, "training/prepare_data.py", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "--source {s3rec,recbole,lcrec,amazon2014,amazon2018,amazon2023}" in result.stdout
    assert "--k_core" in result.stdout and "--output_dir" in result.stdout


def test_cli_real_office(office_dir, tmp_path):
    output = main(["--source", "lcrec", "--input", str(office_dir), "--output_dir", str(tmp_path / "office")])
    summary = json.loads((output / "summary.json").read_text())
    assert (summary["users"], summary["items"], summary["interactions"]) == (4905, 2420, 53258)
    sequences, items = load_prepared(output)
    assert len(sequences["train"]) == 4905 and len(items) == 2420
