"""`pipeline("sequential-recommendation", ...)`: the custom task every checkpoint ships, by folder and by cached repo
id in a process that cannot import the repository, on the real smoke checkpoint; and its refusals."""

import json
import os
import subprocess
import sys

import pytest
import torch
from test_remote_code import FLAT_MODULES, isolated_site_packages, populate_hub_cache
from transformers import AutoModel, AutoTokenizer, pipeline

REPO_ID = "qbert4rec-test/smoke"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

CHILD = r"""
import importlib.util, json, sys
site_packages, source, histories = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.extend(json.loads(site_packages))
hidden = [name for name in %r if importlib.util.find_spec(name) is not None]
assert not hidden, f"the repository is importable: {hidden}"
from transformers import pipeline
recommend = pipeline("sequential-recommendation", model=source, trust_remote_code=True)
print(json.dumps({"module": type(recommend).__module__, "one": recommend(histories[0], top_k=5),
                  "many": recommend(histories, top_k=5, batch_size=2)}))
""" % (FLAT_MODULES,)


def run_child(source: str, histories: list, tmp_path, **env) -> dict:
    child_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
                 "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                 "OMP_NUM_THREADS": "1", **env}
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CHILD, json.dumps(isolated_site_packages()), source, json.dumps(histories)],
        cwd=tmp_path, env=child_env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def smoke_expected(smoke_run):
    """Three real histories of the smoke checkpoint's test users and what `model.recommend` gives them."""
    from training.prepared import load_sequences

    final = smoke_run / "final"
    tok = AutoTokenizer.from_pretrained(final, trust_remote_code=True)
    model = AutoModel.from_pretrained(final, trust_remote_code=True).eval()
    histories = [list(ids) for ids in load_sequences(smoke_run / "data")["test"]["item_ids"][:3]]
    with torch.no_grad():
        out = model.recommend(**tok(histories, return_tensors="pt"), top_k=5)
    rows = [[{"item_id": i, "score": s, "title": tok.item_titles[tok.item_ids.index(i)]} for i, s in zip(ids, scores)]
            for ids, scores in zip(tok.decode_items(out.item_indices), out.scores.tolist())]
    return histories, rows


def assert_same_rows(got: list, expected: list):
    assert [[r["item_id"] for r in rows] for rows in got] == [[r["item_id"] for r in rows] for rows in expected]
    assert [[r["title"] for r in rows] for rows in got] == [[r["title"] for r in rows] for rows in expected]
    torch.testing.assert_close(torch.tensor([[r["score"] for r in rows] for rows in got]),
                               torch.tensor([[r["score"] for r in rows] for rows in expected]))


def test_pipeline_by_folder_in_a_process_without_the_repository(smoke_run, smoke_expected, tmp_path):
    histories, expected = smoke_expected
    assert any(row["title"] for rows in expected for row in rows)  # the real table carries titles
    result = run_child(str(smoke_run / "final"), histories, tmp_path)
    assert result["module"].startswith("transformers_modules.") and result["module"].endswith("pipeline_qbert4rec")
    assert_same_rows([result["one"]], expected[:1])
    assert_same_rows(result["many"], expected)


def test_pipeline_by_repo_id_from_the_offline_cache(smoke_run, smoke_expected, tmp_path):
    histories, expected = smoke_expected
    populate_hub_cache(tmp_path / "hub", smoke_run / "final", REPO_ID, COMMIT)
    result = run_child(REPO_ID, histories, tmp_path, HF_HUB_CACHE=str(tmp_path / "hub"))
    assert_same_rows(result["many"], expected)


@pytest.fixture(scope="module")
def recommend(smoke_run):
    return pipeline("sequential-recommendation", model=str(smoke_run / "final"), trust_remote_code=True)


@pytest.mark.parametrize("histories, error, message", [
    ([], ValueError, "the history is empty: give at least one item id"),
    ([["B004756YJA"], []], ValueError, "history 1 is empty"),
    ([1, 2], TypeError, "the history: item ids are strings, got 1 \\(int\\); write '1'"),
    ("B004756YJA", TypeError, "must be a list of item-id strings, got str"),
])
def test_pipeline_refuses_what_is_no_history(recommend, histories, error, message):
    with pytest.raises(error, match=message):
        recommend(histories)


def test_pipeline_unknown_item_names_it(recommend):
    with pytest.raises(KeyError, match="NOT-AN-ITEM"):
        recommend(["NOT-AN-ITEM"])
