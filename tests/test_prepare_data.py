"""The `prepare_data.py` command: flags, YAML section, default input, saved folder that reloads, sources listed."""

import json
import re
import subprocess
import sys

import pytest

from training.config import DATA_DIR_ENV, REPO_ROOT
from training.prepare_data import PREPARED_SOURCES, main
from training.prepared import load_items, load_sequences, load_summary
from training.readers import READERS


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
    assert load_sequences(output)["test"]["target"] == ["A4", "A1", "A1"]
    assert load_items(output)["title"] == ["Nail & Polish", "Cream", "", "Shampoo"]
    summary = load_summary(output)
    assert (summary["users"], summary["items"], summary["interactions"]) == (3, 4, 11)
    assert summary["dropped"]["short_user_interactions"] == 2
    printed = capsys.readouterr().out
    assert re.search(r"^users\s+3$", printed, re.M) and re.search(r"^dropped short user interactions\s+2$", printed, re.M)
    assert "items without title" in printed and f"saved to {output}" in printed


def test_cli_drops_and_counts_unnamed_attributes(tmp_path, capsys):
    source = write_tiny_s3rec(tmp_path / "tiny")  # attribute 99 of item 3 has no name
    (source / "Tiny_item2attributes.json").write_text('{"1": [1, 2, 3], "2": [4, 5], "3": [2, 6, 99], "4": [7, 8]}')
    names = ["OPI", "Makeup", "Nails", "Skin Care", "Face", "Lips", "Acme", "Hair Care"]
    (source / "attribute_names.json").write_text(json.dumps({str(i): name for i, name in enumerate(names, start=1)}))
    output = main(["--source", "s3rec", "--input", str(source), "--output_dir", str(tmp_path / "out")])
    assert load_summary(output)["unnamed_attributes"] == {"ids": 1, "items": 1}
    assert load_items(output)["categories"][2] == ["Makeup", "Lips"]  # item 3 kept, with its named attributes
    assert re.search(r"^unnamed attributes dropped\s+1 id\(s\) on 1 item\(s\)$", capsys.readouterr().out, re.M)
    with pytest.raises(ValueError, match=r"no name for attribute id\(s\) \[99\] \(item 3 in Tiny_item2attributes"):
        main(["--source", "s3rec", "--input", str(source), "--on_unnamed_attribute", "error",
              "--output_dir", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


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
    assert "--source {s3rec,recbole,lcrec,amazon2014,amazon2018,amazon2023,hub,prepared}" in result.stdout
    assert "--k_core" in result.stdout and "--output_dir" in result.stdout


def test_help_lists_the_registered_sources(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--source {" + ",".join([*READERS, *PREPARED_SOURCES]) + "}" in help_text
    for name, reader in READERS.items():
        assert f"{name}: {reader.description}" in help_text


def test_cli_real_office(office_dir, tmp_path):
    output = main(["--source", "lcrec", "--input", str(office_dir), "--output_dir", str(tmp_path / "office")])
    summary = json.loads((output / "summary.json").read_text())
    assert (summary["users"], summary["items"], summary["interactions"]) == (4905, 2420, 53258)
    assert len(load_sequences(output)["train"]) == 4905 and len(load_items(output)) == 2420
