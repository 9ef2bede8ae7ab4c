"""Remote code for real: a saved checkpoint loads through AutoConfig / AutoTokenizer / AutoModel with
`trust_remote_code=True` in a separate Python process that cannot import this repository (neither from its folder
nor through the editable install), from a folder and by repo id from an offline Hugging Face cache; and the usage
block of `model_card.md` runs against such a checkpoint."""

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModel, AutoTokenizer

from configuration_qbert4rec import QBert4RecConfig
from modeling_qbert4rec import QBert4RecForMaskedItemModeling
from tokenization_semantic_id import SemanticIdTokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
FLAT_MODULES = ("configuration_qbert4rec", "modeling_qbert4rec", "pipeline_qbert4rec", "quantization_qbert4rec",
                "tokenization_semantic_id", "training")
REPO_ID = "qbert4rec-test/tiny"
COMMIT = hashlib.sha1(b"qbert4rec-test/tiny").hexdigest()  # any 40-hex commit hash
TOP_K = 5



# Runs in the child with `python -I -S`: no site processing (so no .pth file, hence no editable finder), no
# PYTHON* variables, no current or script folder on sys.path. It gets only the site-packages folders it is given.
CHILD = r"""
import importlib.util, json, sys
site_packages, source, histories = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.extend(json.loads(site_packages))
hidden = {name: importlib.util.find_spec(name) for name in %r}
assert all(spec is None for spec in hidden.values()), f"the repository is importable: {hidden}"
from transformers import AutoConfig, AutoModel, AutoTokenizer
config = AutoConfig.from_pretrained(source, trust_remote_code=True)
tok = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
model = AutoModel.from_pretrained(source, trust_remote_code=True)
model.check_tokenizer(tok)
out = model.recommend(**tok(histories, return_tensors="pt"), top_k=%d)
print(json.dumps({
    "hidden": {name: spec is None for name, spec in hidden.items()},
    "sys_path": sys.path,
    "classes": [type(x).__module__ + "." + type(x).__name__ for x in (config, tok, model)],
    "code_files": [sys.modules[type(x).__module__].__file__ for x in (config, tok, model)],
    "item_ids": tok.decode_items(out.item_indices),
    "scores": out.scores.tolist(),
}))
""" % (FLAT_MODULES, TOP_K)


def build_checkpoint(folder: Path) -> tuple[SemanticIdTokenizer, QBert4RecForMaskedItemModeling]:
    """A tiny checkpoint: 20 items with unique 3-level semantic IDs, hidden 32, 2 layers, random weights drawn wide
    enough (std 0.3) that different histories get different recommendations."""
    numbers = torch.randperm(8**3, generator=torch.Generator().manual_seed(0))[:20]
    codes = torch.stack([numbers // 64, numbers // 8 % 8, numbers % 8], dim=1)
    tok = SemanticIdTokenizer.from_codes([f"B00ITEM{i:03d}" for i in range(20)], codes, 8, max_len=7)
    config = QBert4RecConfig(
        num_codebooks=3, codebook_size=8, num_items=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=8, initializer_range=0.3, use_item_embedding=True,
    )
    torch.manual_seed(0)
    model = QBert4RecForMaskedItemModeling(config).eval()
    model.set_item_codes(tok.item_codes)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok, model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    tok, model = build_checkpoint(folder)
    histories = [tok.item_ids[:6], [tok.item_ids[12], tok.item_ids[3]], [tok.item_ids[19]]]
    out = model.recommend(**tok(histories, return_tensors="pt"), top_k=TOP_K)
    expected = {"item_ids": tok.decode_items(out.item_indices), "scores": out.scores.tolist()}
    return folder, histories, expected


def isolated_site_packages() -> list:
    """The site-packages folders that hold torch and transformers (their .pth files are not run in the child)."""
    return [p for p in sys.path if Path(p).name == "site-packages" and Path(p).is_dir()]


def run_clean_child(source: str, histories: list, cwd: Path, **env) -> dict:
    """Load `source` in a fresh interpreter that cannot see the repository; return what it printed."""
    child_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "HF_HOME": str(cwd / "hf_home"),  # its own modules cache for the remote code
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CHILD, json.dumps(isolated_site_packages()), source, json.dumps(histories)],
        cwd=cwd, env=child_env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"child failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_child_result(result: dict, expected: dict):
    # The child could not import the repository, and it says so for each flat module.
    assert result["hidden"] == {name: True for name in FLAT_MODULES}
    for entry in map(Path, result["sys_path"]):
        assert entry.resolve() != REPO_ROOT and not (entry / "modeling_qbert4rec.py").exists(), entry
    # It ran the checkpoint's copies of the code, not the repository's files.
    assert [name.split(".")[-1] for name in result["classes"]] == [
        "QBert4RecConfig", "SemanticIdTokenizer", "QBert4RecForMaskedItemModeling"
    ]
    assert all(name.startswith("transformers_modules.") for name in result["classes"])
    assert not any(Path(f).resolve().is_relative_to(REPO_ROOT) for f in result["code_files"])
    # Same recommendations as in-process.
    assert result["item_ids"] == expected["item_ids"]
    torch.testing.assert_close(torch.tensor(result["scores"]), torch.tensor(expected["scores"]), rtol=1e-5, atol=1e-5)


def test_the_parent_can_import_the_repository():
    """Without this, `find_spec(...) is None` in the child would prove nothing."""
    assert all(importlib.util.find_spec(name) is not None for name in FLAT_MODULES)


def test_checkpoint_holds_config_weights_code_and_tokenizer(checkpoint):
    folder, _, _ = checkpoint
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_qbert4rec.py", "modeling_qbert4rec.py",
            "quantization_qbert4rec.py", "tokenization_semantic_id.py", "tokenizer_config.json",
            "semantic_ids.json"} <= names
    assert json.loads((folder / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_qbert4rec.QBert4RecConfig",
        "AutoModel": "modeling_qbert4rec.QBert4RecForMaskedItemModeling",
    }
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["auto_map"]["AutoTokenizer"][0] == "tokenization_semantic_id.SemanticIdTokenizer"


def test_in_process_auto_classes_give_the_same_recommendations(checkpoint):
    folder, histories, expected = checkpoint
    AutoConfig.from_pretrained(folder, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    out = model.recommend(**tok(histories, return_tensors="pt"), top_k=TOP_K)
    assert tok.decode_items(out.item_indices) == expected["item_ids"]


def test_a_model_saved_alone_carries_the_catalogue_code(checkpoint, tmp_path):
    """`modeling_qbert4rec.py` asks `tokenization_semantic_id.py` for the catalogue's facts (padding and mask indices,
    code token ids), so `save_pretrained` of the model alone copies that file too, and the folder loads by itself."""
    folder, histories, expected = checkpoint
    QBert4RecForMaskedItemModeling.from_pretrained(folder).save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.glob("*.py")} == {
        "configuration_qbert4rec.py", "modeling_qbert4rec.py", "pipeline_qbert4rec.py", "quantization_qbert4rec.py",
        "tokenization_semantic_id.py",
    }
    model = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules.")
    tok = SemanticIdTokenizer.from_pretrained(folder)
    out = model.recommend(**tok(histories, return_tensors="pt"), top_k=TOP_K)
    assert tok.decode_items(out.item_indices) == expected["item_ids"]


def test_the_checkpoints_own_code_explains_user_errors(checkpoint):
    """The errors a user meets first, raised by the checkpoint's copies of the code."""
    folder, histories, _ = checkpoint
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(tok).__module__.startswith("transformers_modules.")
    with pytest.raises(TypeError, match=r"item_indices must be a tensor, got list: call the tokenizer with "
                                        r"return_tensors='pt'"):
        model.recommend(**tok(histories))
    with pytest.raises(TypeError, match=r"item ids are strings .*got int 3: pass '3'"):
        tok([[3]])
    with pytest.raises(ValueError, match=r"1 of 2 histories \(first: 1\) hold no known item"):
        tok([histories[0], ["NOT-AN-ASIN"]], unknown_items="skip", empty_histories="error")


def test_clean_process_loads_the_checkpoint_folder(checkpoint, tmp_path):
    folder, histories, expected = checkpoint
    local = tmp_path / "tiny-checkpoint"
    shutil.copytree(folder, local)  # only the saved checkpoint, next to nothing from the repository
    check_child_result(run_clean_child(str(local), histories, cwd=tmp_path), expected)


def populate_hub_cache(hub_cache: Path, folder: Path, repo_id: str, commit: str):
    """The real cache layout: models--org--name/{blobs/<sha256>, refs/main, snapshots/<commit>/<file> -> blob}."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        content = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))


def test_clean_process_loads_by_repo_id_from_the_offline_cache(checkpoint, tmp_path):
    folder, histories, expected = checkpoint
    hub_cache = tmp_path / "hub"
    populate_hub_cache(hub_cache, folder, REPO_ID, COMMIT)
    result = run_clean_child(REPO_ID, histories, cwd=tmp_path, HF_HUB_CACHE=str(hub_cache))
    check_child_result(result, expected)
    # The remote code came from the cached snapshot of that commit.
    assert all(f"{os.sep}tiny{os.sep}{COMMIT}{os.sep}" in f for f in result["code_files"]), result["code_files"]


def test_without_dash_S_the_editable_install_would_leak(tmp_path):
    """Control: the same isolated interpreter *with* site processing finds the flat modules through the editable
    install's .pth finder, so `-S` (not luck) is what hides the repository from the children above."""
    probe = "import importlib.util; print(importlib.util.find_spec('modeling_qbert4rec') is not None)"
    with_site = subprocess.run([sys.executable, "-I", "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    if with_site.stdout.strip() != "True":
        pytest.skip("the package is not installed editable here: nothing can leak through site-packages")
    without_site = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path.extend({isolated_site_packages()!r}); {probe}"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert without_site.stdout.strip() == "False", without_site.stderr


# model_card.md
MODEL_CARD = REPO_ROOT / "model_card.md"


def model_card_parts() -> tuple[dict, str, list]:
    """(front matter, body, python code blocks) of model_card.md."""
    text = MODEL_CARD.read_text()
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, flags=re.S)
    assert match, "model_card.md must start with YAML front matter between --- lines"
    front_matter, body = yaml.safe_load(match.group(1)), match.group(2)
    return front_matter, body, re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_model_card_front_matter_and_sections():
    front_matter, body, blocks = model_card_parts()
    assert front_matter["library_name"] == "transformers"
    assert front_matter["license"] == "apache-2.0"
    assert {"recommendation", "sequential-recommendation", "semantic-ids", "custom_code"} <= set(front_matter["tags"])
    headings = re.findall(r"^## (.+)$", body, flags=re.M)
    for section in ("Usage", "This checkpoint", "How the semantic IDs are built", "Pretraining masks", "Data",
                    "Evaluation protocol", "Limitations"):
        assert section in headings, f"model_card.md lacks a '## {section}' section"
    own = body.split("## This checkpoint")[1].split("\n## ")[0]
    assert "{this_checkpoint}" in own  # training/export.py writes the section made from the run files there
    assert len(blocks) == 2  # usage, then new and retired items (run on a real checkpoint by tests/test_pipeline.py)
    assert "model.add_items(tok, new)" in blocks[1] and "model.retire_items(tok, " in blocks[1]
    for call in ('AutoTokenizer.from_pretrained("{checkpoint}", trust_remote_code=True)',
                 'AutoModel.from_pretrained("{checkpoint}", trust_remote_code=True)',
                 'tok([{example_history}], return_tensors="pt")', "model.recommend(**batch, top_k=10)",
                 "tok.decode_items(out.item_indices)"):
        assert call in blocks[0]


def test_model_card_usage_block_runs_against_a_tiny_checkpoint(checkpoint, capsys):
    folder, _, _ = checkpoint
    block = model_card_parts()[2][0]
    tok = SemanticIdTokenizer.from_pretrained(folder)
    history = tok.item_ids[4:7]
    code = block.replace("{checkpoint}", str(folder)).replace("{example_history}", json.dumps(history))
    assert not re.search(r"\{[a-z_]+\}", code), "model_card.md's usage block has an unknown placeholder"
    namespace = {}
    exec(compile(code, str(MODEL_CARD), "exec"), namespace)
    recommended = namespace["recommended"]
    assert len(recommended) == 1 and len(recommended[0]) == 10
    assert set(recommended[0]) <= set(tok.item_ids)
    assert str(recommended) in capsys.readouterr().out
    # The card's code gives what the in-repo classes give.
    model = QBert4RecForMaskedItemModeling.from_pretrained(folder)
    expected = model.recommend(**tok([history], return_tensors="pt"), top_k=10).item_indices
    assert recommended == tok.decode_items(expected)
