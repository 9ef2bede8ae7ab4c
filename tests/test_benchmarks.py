"""Benchmarks: the accuracy and speed scripts' code paths on a tiny real slice of Beauty, and their helpers."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is scripts, not an installed package

from benchmarks import accuracy, allocator, breakdowns, recbole_baselines, speed, time_to_quality  # noqa: E402
from benchmarks.baselines import build_id_model, id_collator, id_tokenizer, masking_alone, stage_arguments  # noqa: E402
from training import finetune, pretrain  # noqa: E402
from training.config import default_data_dir, parse_args  # noqa: E402
from training.masking import DEFAULT_MASKING, MASKING_STRATEGIES  # noqa: E402

TINY_CONFIG = {
    "data": {"source": "s3rec", "max_users": 30},
    "features": {"modalities": "text,structure", "text_fields": "title,brand,categories", "batch_size": 128},
    "inject": {"use_image": False, "num_epochs": 1, "dim": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 32},
    "quantize": {"method": "rkmeans", "num_codebooks": 2, "codebook_size": 64, "kmeans_iters": 3},
    "pretrain": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                 "max_position_embeddings": 10, "num_epochs": 2, "batch_size": 64, "report_to": "none"},
    "finetune": {"num_epochs": 1, "batch_size": 64, "report_to": "none"},
    "id_baselines": {"pretrain": {"num_epochs": 3}, "finetune": {"num_epochs": 2}},  # the ID baselines' own schedule
}


# ----------------------------------------------------------------------------------------------------------------------
# Helpers (no data)
# ----------------------------------------------------------------------------------------------------------------------


def test_plan_rows_main_and_ablations():
    main = accuracy.plan_rows("main", item_embedding_in_config=False, masking=DEFAULT_MASKING)
    assert [r.name for r in main] == ["most-popular", "bert4rec-id", "sasrec-ce", "qbert4rec"]
    masking = {"cloze": {"prob": 0.4, "ratio": 0.5}, "tail": {"prob": 0.6, "ratio": 0.3}}
    ablations = {r.name: r for r in accuracy.plan_rows("ablations", item_embedding_in_config=False, masking=masking)}
    assert ablations["qbert4rec/+item-embedding"].pretrain_flags == ("--use_item_embedding", "true", "--score_item_embedding", "true")
    # one row per registered strategy, alone, with the config's ratio for it (its own default where the config has none)
    assert [n for n in ablations if "/mask-" in n] == [f"qbert4rec/mask-{s}" for s in MASKING_STRATEGIES]
    tail = ablations["qbert4rec/mask-tail"].pretrain_flags
    assert tail[0] == "--masking" and json.loads(tail[1]) == {"tail": {"prob": 1.0, "ratio": 0.3}}
    span = ablations["qbert4rec/mask-span"].pretrain_flags
    _, parsed, _ = stage_arguments(pretrain, span)  # as training/pretrain.py reads the flag
    assert parsed.masking == {"span": {"prob": 1.0}}
    flipped = {r.name: r for r in accuracy.plan_rows("all", item_embedding_in_config=True, masking=masking)}
    assert "qbert4rec/-item-embedding" in flipped and len(flipped) == 4 + 6 + len(MASKING_STRATEGIES)
    assert not any("cross-domain" in name for name in flipped)
    assert flipped["qbert4rec/-item-embedding"].pretrain_flags == (  # without the embedding: 20 epochs at least
        "--use_item_embedding", "false", "--score_item_embedding", "false", "--min_epochs", "20")
    with pytest.raises(ValueError, match="--rows must be main, ablations or all"):
        accuracy.plan_rows("everything", False, DEFAULT_MASKING)


def test_summarise_mean_and_sample_std():
    def run(ndcg, seconds):
        return {"test": {m: ndcg for m in accuracy.METRICS}, "train_seconds": seconds}

    summary = accuracy.summarise({"0": run(0.1, 10), "1": run(0.3, 30), "2": {"error": "x"}})
    assert summary["n"] == 2
    assert summary["mean"]["ndcg@10"] == pytest.approx(0.2)
    assert summary["std"]["ndcg@10"] == pytest.approx(0.1414213, rel=1e-5)  # sample std (n - 1)
    assert summary["mean"]["train_seconds"] == pytest.approx(20)
    assert accuracy.summarise({"0": run(0.5, 1)})["std"]["mrr"] == 0.0
    assert "history_removed" not in summary  # runs made before it was measured
    removed = {"0": {**run(0.1, 10), "test_history_removed": {m: 0.2 for m in accuracy.METRICS}},
               "1": {**run(0.3, 30), "test_history_removed": {m: 0.4 for m in accuracy.METRICS}}}
    summary = accuracy.summarise(removed)["history_removed"]
    assert summary["n"] == 2 and summary["mean"]["ndcg@10"] == pytest.approx(0.3)
    assert summary["std"]["ndcg@10"] == pytest.approx(0.1414213, rel=1e-5)


def test_parse_seeds_rejects_bad_input():
    assert accuracy.parse_seeds("0, 1,2") == [0, 1, 2]
    with pytest.raises(ValueError, match="comma-separated integers"):
        accuracy.parse_seeds("0,one")
    with pytest.raises(ValueError, match="--seeds is empty"):
        accuracy.parse_seeds(",")


def test_write_text_embeddings_averages_real_vectors(tmp_path):
    features = torch.tensor([[[1.0, 3.0], [3.0, 5.0]], [[2.0, 2.0], [9.0, 9.0]], [[7.0, 7.0], [7.0, 7.0]]])  # (3, 2, 2)
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    save_file({"features": features, "mask": mask}, str(tmp_path / "text.safetensors"))
    out = accuracy.write_text_embeddings(tmp_path / "text.safetensors", tmp_path / "inj" / "fused.safetensors")
    from safetensors.torch import load_file

    written = load_file(str(out))
    torch.testing.assert_close(written["embeddings"], torch.tensor([[2.0, 4.0], [2.0, 2.0], [0.0, 0.0]]))
    assert written["depth"].tolist() == [0, 0, 0]
    save_file({"vectors": features}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="bad.safetensors: expected tensors 'features' and 'mask'"):
        accuracy.write_text_embeddings(tmp_path / "bad.safetensors", tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match="no text features"):
        accuracy.write_text_embeddings(tmp_path / "missing.safetensors", tmp_path / "x.safetensors")


def test_load_results_drops_records_of_other_settings(tmp_path):
    path = tmp_path / "beauty.json"
    record = {"test": {m: 0.1 for m in accuracy.METRICS}, "train_seconds": 1.0}
    seeds = {"0": {**record, "settings_sha256": "old"}, "1": {**record, "settings_sha256": "new"}}
    path.write_text(json.dumps({"rows": {"sasrec-ce": {"kind": "sasrec-ce", "seeds": seeds}}}))
    results = accuracy.load_results(path, {"sasrec-ce": "new"})
    assert list(results["rows"]["sasrec-ce"]["seeds"]) == ["1"]
    assert results["rows"]["sasrec-ce"]["summary"]["n"] == 1
    assert accuracy.load_results(tmp_path / "absent.json", {"sasrec-ce": "new"}) == {"rows": {}}


def test_each_row_is_keyed_by_the_settings_it_reads():
    args = accuracy.AccuracyArgs(dataset="beauty")
    masking = {"cloze": {"prob": 0.6, "ratio": 0.5}, "span": {"prob": 0.4, "ratio": 0.2}}
    config = {"data": {"source": "s3rec"}, "quantize": {"codebook_size": 256},
              "pretrain": {"hidden_size": 64, "loss_type": "codes+items", "masking": masking},
              "finetune": {"num_epochs": 12}}
    qbert = {"qbert4rec", "qbert4rec/mask-cloze", "qbert4rec/mask-span", "qbert4rec/-item-embedding"}
    names = ("most-popular", "bert4rec-id", "sasrec-ce", *sorted(qbert))

    def hashes(config):  # as accuracy.main plans the rows: from the config's masking mix
        rows = accuracy.plan_rows("all", True, config["pretrain"].get("masking", DEFAULT_MASKING))
        return {row.name: accuracy.settings_hash(config, row, args) for row in rows if row.name in names}

    def changed(section, key, value):
        before, after = hashes(config), hashes({**config, section: {**config[section], key: value}})
        return {n for n in names if before[n] != after[n]}

    assert changed("pretrain", "loss_type", "items") == qbert
    # a row of one strategy alone reads that strategy's options, not the mix's probabilities
    assert changed("pretrain", "masking", {**masking, "span": {"prob": 0.4, "ratio": 0.3}}) == qbert - {"qbert4rec/mask-cloze"}
    assert changed("pretrain", "masking", {"cloze": {"prob": 0.5, "ratio": 0.5}, "span": {"prob": 0.5, "ratio": 0.2}}) \
        == {"qbert4rec", "qbert4rec/-item-embedding"}
    # BERT4Rec-ID masks with cloze alone, at the config's cloze ratio
    assert changed("pretrain", "masking", {**masking, "cloze": {"prob": 0.6, "ratio": 0.2}}) \
        == {"bert4rec-id"} | qbert - {"qbert4rec/mask-span"}
    # the ID baselines have no codebooks: their code embeddings start at random
    assert changed("pretrain", "code_embedding_init", "codebooks") == qbert
    assert changed("quantize", "codebook_size", 128) == qbert
    assert changed("finetune", "num_epochs", 6) == {"bert4rec-id"} | qbert
    assert changed("pretrain", "hidden_size", 32) == {"bert4rec-id", "sasrec-ce"} | qbert
    assert changed("data", "source", "lcrec") == set(names)
    rows = {row.name: row for row in accuracy.plan_rows("all", item_embedding_in_config=True, masking=masking)}
    # the ID baselines' own schedule replaces the sections' keys for them only
    own = {**config, "id_baselines": {"pretrain": {"num_epochs": 40}, "finetune": {"num_epochs": 20}}}
    assert {n for n in names if accuracy.settings_hash(own, rows[n], args) != accuracy.settings_hash(config, rows[n], args)} \
        == {"bert4rec-id", "sasrec-ce"}
    same = {**config, "pretrain": {**config["pretrain"], "num_epochs": 40}, "finetune": {"num_epochs": 20},
            "id_baselines": {"pretrain": {"num_epochs": 40}}}
    assert accuracy.settings_hash(own, rows["sasrec-ce"], args) == accuracy.settings_hash(same, rows["sasrec-ce"], args)
    assert accuracy.settings_hash(own, rows["bert4rec-id"], args) == accuracy.settings_hash(same, rows["bert4rec-id"], args)
    with pytest.raises(ValueError, match="pretrain and finetune mappings only"):
        accuracy.id_baseline_sections({"id_baselines": {"inject": {"dim": 8}}})


def test_runs_written_by_another_process_are_merged_not_lost(tmp_path):
    path = tmp_path / "beauty.json"
    record = {"test": {m: 0.1 for m in accuracy.METRICS}, "train_seconds": 1.0, "settings_sha256": "new"}
    # on disk: another process finished sasrec-ce seed 1 and qbert4rec seed 0 (and an old-settings run)
    path.write_text(json.dumps({"rows": {
        "sasrec-ce": {"kind": "sasrec-ce", "seeds": {"1": record}},
        "qbert4rec": {"kind": "qbert4rec", "seeds": {"0": record, "9": {**record, "settings_sha256": "old"}}},
    }}))
    ours = {"settings_sha256": {"sasrec-ce": "new", "qbert4rec": "new"},
            "rows": {"sasrec-ce": {"kind": "sasrec-ce", "seeds": {"0": record}}}}
    accuracy.merge_runs_from_disk(ours, path)
    assert sorted(ours["rows"]["sasrec-ce"]["seeds"]) == ["0", "1"] and ours["rows"]["sasrec-ce"]["summary"]["n"] == 2
    assert list(ours["rows"]["qbert4rec"]["seeds"]) == ["0"] and ours["rows"]["qbert4rec"]["kind"] == "qbert4rec"


def test_id_baselines_are_one_level_item_id_models():
    tokenizer = id_tokenizer(["a", "b", "c", "d", "e"], max_len=4)
    assert tokenizer.num_codebooks == 1 and tokenizer.codebook_size == 5
    assert tokenizer.item_codes.squeeze(1).tolist() == [0, 1, 2, 3, 4]
    settings = pretrain.ModelSettings(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                      max_position_embeddings=5, use_item_embedding=True, loss_type="codes")
    sasrec = build_id_model(settings, tokenizer, causal=True)
    bert = build_id_model(settings, tokenizer, causal=False)
    for model, causal in ((sasrec, True), (bert, False)):  # the ID-model settings replace the semantic-ID model's
        assert (model.config.is_causal, model.config.loss_type, model.config.use_item_embedding) == (causal, "items", False)
        assert (model.config.hidden_size, model.config.max_position_embeddings) == (8, 5)
    inputs = tokenizer([["a", "b"], ["c"]], return_tensors="pt")
    assert sasrec.score_items(**inputs).shape == bert.score_items(**inputs).shape == (2, 5)
    with pytest.raises(ValueError, match="at least one item id"):
        id_tokenizer([])


def test_id_collators_mask_with_cloze_alone_or_predict_every_next_item():
    tokenizer = id_tokenizer([str(i) for i in range(10)], max_len=7)
    settings = pretrain.ModelSettings(max_position_embeddings=8)
    _, pretrain_args, _ = stage_arguments(pretrain, ["--masking", "{span: {prob: 0.5}, cloze: {prob: 0.5, ratio: 0.5}}"])
    bert = id_collator("bert4rec-id", tokenizer, settings, pretrain_args, seed=0)
    assert bert.mix == {"cloze": (1.0, {"ratio": 0.5})} and (bert.num_items, bert.max_len) == (10, 8)
    batch = bert([{"item_indices": list(range(8))}])
    assert (batch["labels"] != -100).sum() == 4  # half of the 8 items
    sasrec = id_collator("sasrec-ce", tokenizer, settings, pretrain_args, seed=0)
    assert sasrec([{"item_indices": [3, 4, 5]}])["labels"].tolist() == [[4, 5]]
    with pytest.raises(ValueError, match="unknown ID baseline"):
        id_collator("gru4rec", tokenizer, settings, pretrain_args, seed=0)


def test_masking_alone_keeps_the_options_the_mix_gives_the_strategy():
    mix = {"tail": {"prob": 0.2, "ratio": 0.3}, "multi_region": {"prob": 0.8, "ratio": 0.5, "num_regions": 2}}
    assert masking_alone(mix, "multi_region") == {"multi_region": {"prob": 1.0, "ratio": 0.5, "num_regions": 2}}
    assert masking_alone(mix, "cloze") == {"cloze": {"prob": 1.0}}
    assert mix["tail"] == {"prob": 0.2, "ratio": 0.3}  # not changed


def test_stage_arguments_parse_a_section_without_its_data_folders(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"pretrain": {"hidden_size": 16, "max_position_embeddings": 10, "num_epochs": 3},
                                      "finetune": {"num_epochs": 2}}))
    settings, pretrain_args, loop_args = stage_arguments(pretrain, ["--config", str(config), "--num_epochs", "4"])
    assert (settings.hidden_size, settings.max_position_embeddings, loop_args.num_epochs) == (16, 10, 4)
    assert pretrain_args.dataset_dir == pretrain_args.semantic_ids_dir == "" and pretrain_args.masking == DEFAULT_MASKING
    finetune_args, finetune_loop = stage_arguments(finetune, ["--config", str(config), "--dataset_dir", "data"])
    assert (finetune_args.dataset_dir, finetune_args.pretrained_dir, finetune_loop.num_epochs) == ("data", "", 2)
    config.write_text(yaml.safe_dump({"pretrain": {"hidden_sise": 16}}))
    with pytest.raises(ValueError, match="unknown key.*hidden_sise"):  # a typo is still refused
        stage_arguments(pretrain, ["--config", str(config)])


def test_random_unique_codes_and_percentile():
    codes = speed.random_unique_codes(500, 3, 16, seed=1)
    assert codes.shape == (500, 3) and len({tuple(r) for r in codes.tolist()}) == 500
    assert int(codes.max()) < 16
    with pytest.raises(ValueError, match="share a random code prefix"):
        speed.random_unique_codes(50, 2, 2)
    assert speed.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert speed.percentile([0.0, 10.0], 95) == pytest.approx(9.5)


def test_command_lines_reject_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--dataset must be one of beauty, scientific-mm"):
        accuracy.main(["--dataset", "toys"])
    with pytest.raises(FileNotFoundError, match="config file not found"):
        accuracy.main(["--dataset", "beauty", "--dataset_config", str(tmp_path / "none.yaml")])
    with pytest.raises(ValueError, match="--models must name some of"):
        speed.main(["--models", "gru4rec"])
    with pytest.raises(ValueError, match="RecBole's models need --recbole_python"):
        speed.main(["--models", "recbole-sasrec"])
    with pytest.raises(FileNotFoundError, match="no such interpreter"):
        speed.main(["--recbole_python", str(tmp_path / "python")])
    with pytest.raises(ValueError, match="unknown RecBole model"):
        recbole_baselines.recbole_settings("recbole-gru4rec", tmp_path, {}, seed=0)


def test_breakdown_groups_users_by_length_or_by_target_count():
    groups = breakdowns.breakdown(torch.tensor([0, 1, 20]), torch.tensor([1, 5, 25]))
    assert groups["all"] == {"users": 3, "ndcg@10": pytest.approx((1 + 1 / torch.log2(torch.tensor(3.0)).item()) / 3),
                             "recall@10": pytest.approx(2 / 3)}
    assert (groups["1-4"]["ndcg@10"], groups["5-6"]["recall@10"], groups["20+"]["ndcg@10"]) == (1.0, 1.0, 0.0)
    assert groups["7-9"] == {"users": 0, "ndcg@10": None, "recall@10": None}
    by_count = breakdowns.breakdown(torch.tensor([0, 1, 20]), torch.tensor([0, 0, 60]), breakdowns.POPULARITY_BUCKETS)
    assert (by_count["all"]["users"], by_count["0"]["users"], by_count["0"]["recall@10"], by_count["50+"]["ndcg@10"]) == (3, 2, 1.0, 0.0)
    assert by_count["1-4"]["users"] == 0
    assert breakdowns.parse_checkpoints("a=x,b=y=z") == {"a": "x", "b": "y=z"}
    with pytest.raises(ValueError, match="NAME=FOLDER"):
        breakdowns.parse_checkpoints("just/a/folder")


def test_recbole_comparison_uses_the_in_run_figures():
    ours = {"training": {"train": {"seconds_per_epoch": 10.0}}, "evaluation": {"seconds": 1.0},
            "memory": {"peak_rss_mib": 1000.0}}
    theirs = {"training": {"train": {"seconds_per_epoch": 100.0}}, "evaluation": {"seconds": 5.0},
              "memory": {"peak_rss_mib": 4000.0}}
    ratios = speed.recbole_comparison({"sasrec-ce": ours, "recbole-sasrec": theirs})
    assert ratios["note"].startswith("RecBole measured in this run")
    assert ratios["ratios"] == {"sasrec-ce_seconds_per_epoch_over_recbole-sasrec": 0.1,
                                "sasrec-ce_eval_seconds_over_recbole-sasrec": 0.2,
                                "sasrec-ce_peak_rss_over_recbole-sasrec": 0.25}
    fallback = speed.recbole_comparison({"sasrec-ce": ours})
    assert "reference figures" in fallback["note"]
    assert fallback["ratios"]["sasrec_ce_seconds_per_epoch_ours_over_recbole"] == round(10 / 136, 3)


# ----------------------------------------------------------------------------------------------------------------------
# End to end on a tiny real slice (30 Beauty users)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    """accuracy.py on 30 Beauty users: main rows over two seeds, four ablations (two not applicable)."""
    if not (default_data_dir() / "amazon-beauty").is_dir():
        pytest.skip(f"real data not found at {default_data_dir() / 'amazon-beauty'}")
    root = tmp_path_factory.mktemp("bench")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG))
    argv = ["--dataset", "beauty", "--dataset_config", str(config), "--seeds", "0,1", "--rows", "all",
            "--only", "most-popular,bert4rec-id,sasrec-ce,qbert4rec,qbert4rec/no-stage1,qbert4rec/mask-tail,qbert4rec/no-image,"
            "qbert4rec/text-only",
            "--output_dir", str(root / "out"), "--results_dir", str(root / "results"), "--fail_fast", "true"]
    results = accuracy.main(argv)
    return root, argv, results


def test_accuracy_writes_every_row_with_metrics(tiny_bench):
    root, _, results = tiny_bench
    rows = results["rows"]
    for name in ("most-popular", "bert4rec-id", "sasrec-ce", "qbert4rec"):
        assert sorted(rows[name]["seeds"]) == ["0", "1"], name
        assert rows[name]["summary"]["n"] == 2
        for run in rows[name]["seeds"].values():
            assert set(accuracy.METRICS) <= set(run["test"])
            assert run["test"]["num_users"] == 30
            assert 0.0 <= run["test"]["ndcg@10"] <= run["test"]["recall@10"] <= 1.0
            # fewer candidates ahead of each target: no metric can fall
            removed = run["test_history_removed"]
            assert removed["exclude_history"] and not run["test"]["exclude_history"]
            assert all(removed[m] >= run["test"][m] for m in accuracy.METRICS), name
        assert rows[name]["summary"]["history_removed"]["n"] == 2
    for name in ("qbert4rec/no-stage1", "qbert4rec/mask-tail"):
        assert list(rows[name]["seeds"]) == ["0"]  # ablations: first seed only
    assert "not applicable" in rows["qbert4rec/no-image"]["skipped"]
    assert "is qbert4rec/no-structure" in rows["qbert4rec/text-only"]["skipped"]  # Beauty has no images
    # neural rows record validation NDCG@10 per epoch: 2 pretraining epochs (+ 1 fine-tuning epoch)
    qbert = rows["qbert4rec"]["seeds"]["0"]["validation_ndcg@10"]
    assert (len(qbert["pretrain"]), len(qbert["finetune"])) == (2, 1)
    # the ID baselines train on their own schedule (`id_baselines`: 3 pretraining epochs, 2 fine-tuning)
    assert len(rows["sasrec-ce"]["seeds"]["0"]["validation_ndcg@10"]["pretrain"]) == 3
    bert4rec = rows["bert4rec-id"]["seeds"]["0"]["validation_ndcg@10"]
    assert (len(bert4rec["pretrain"]), len(bert4rec["finetune"])) == (3, 2)
    assert rows["bert4rec-id"]["seeds"]["0"]["fine_tuned"] is True
    assert rows["qbert4rec"]["seeds"]["0"]["train_seconds"] > 0
    for name in ("bert4rec-id", "sasrec-ce", "qbert4rec"):  # time to the kept epochs, less than all training
        run = rows[name]["seeds"]["0"]
        assert 0 < run["seconds_to_selected_epoch"] < run["train_seconds"], name
    assert "seconds_to_selected_epoch" not in rows["most-popular"]["summary"]["mean"]
    # the seeds change the trained models
    assert rows["sasrec-ce"]["seeds"]["0"]["validation_ndcg@10"] != rows["sasrec-ce"]["seeds"]["1"]["validation_ndcg@10"]

    saved = json.loads((root / "results" / "beauty.json").read_text())
    assert saved["machine"]["cpu_count"] >= 1 and "torch" in saved["machine"] and "platform" in saved["machine"]
    assert saved["command"].startswith("python benchmarks/accuracy.py --dataset beauty")
    table = (root / "results" / "beauty.md").read_text()
    assert "| qbert4rec/mask-tail |" in table and "not applicable" in table and "TIGER" in table
    assert "minus the history's" in table and "| sasrec-ce | 2 |" in table
    for png in ("beauty_validation.png", "beauty_test.png"):
        assert (root / "results" / png).read_bytes()[:4] == b"\x89PNG"


def test_accuracy_skips_rows_already_in_the_results(tiny_bench, capsys):
    root, argv, results = tiny_bench
    before = json.loads((root / "results" / "beauty.json").read_text())
    again = accuracy.main(argv)
    out = capsys.readouterr().out
    assert out.count("in the results already, skipping") == 4 * 2 + 2
    for name, row in before["rows"].items():
        for seed, run in row["seeds"].items():
            assert again["rows"][name]["seeds"][seed]["finished"] == run["finished"]


def test_accuracy_reuses_pretraining_when_only_the_finetune_section_changes(tiny_bench, tmp_path):
    root, argv, results = tiny_bench
    config = {**TINY_CONFIG, "finetune": {**TINY_CONFIG["finetune"], "learning_rate": 0.0005}}
    (tmp_path / "tuned.yaml").write_text(yaml.safe_dump(config))
    flags = dict(zip(argv[::2], argv[1::2])) | {"--dataset_config": str(tmp_path / "tuned.yaml"), "--seeds": "0",
                                                 "--only": "sasrec-ce,qbert4rec", "--results_dir": str(tmp_path)}
    tuned = accuracy.main([x for pair in flags.items() for x in pair])["rows"]
    for name in ("sasrec-ce", "qbert4rec"):
        before, after = results["rows"][name]["seeds"]["0"], tuned[name]["seeds"]["0"]
        assert after["output_dir"] == before["output_dir"], name  # same pretraining folder
        assert after["stage_seconds"]["pretrain"] == before["stage_seconds"]["pretrain"], name  # not trained again
    assert tuned["sasrec-ce"]["seeds"]["0"]["test"] == results["rows"]["sasrec-ce"]["seeds"]["0"]["test"]
    finetunes = sorted(p.name for p in Path(tuned["qbert4rec"]["seeds"]["0"]["output_dir"]).glob("finetune-*"))
    assert len(finetunes) == 2  # one fine-tuning folder per finetune section


def test_speed_measures_models_on_the_tiny_slice(tiny_bench):
    root, _, _ = tiny_bench
    data = next((root / "out").glob("beauty/stages-*/pipeline/data"))
    flags = ["--dataset_config", str(root / "tiny.yaml"), "--dataset_dir", str(data), "--semantic_ids_dir",
             str(data.parent / "semantic_ids"), "--train_batches", "1", "--latency_calls", "5", "--warmup_calls", "1",
             "--throughput_batch_size", "8", "--output_dir", str(root / "speed"), "--results_dir", str(root / "results")]
    # the command line runs each model in a child process; here one model, and the other two in this process
    report = speed.main(flags + ["--models", "qbert4rec", "--malloc_mmap_threshold", "1048576"])
    assert report["models"]["qbert4rec"]["memory"]["malloc_mmap_threshold"] == "1048576"  # the child's environment
    (args,) = parse_args(flags, speed.SpeedArgs)
    measured = {name: speed.measure_model(name, args, str(data)) for name in ("sasrec-ce", "bert4rec-id")}
    for name, r in {**report["models"], **measured}.items():
        assert r["parameters"] > 0 and r["memory"]["peak_rss_mib"] >= r["memory"]["rss_before_model_mib"] > 0, name
        assert r["evaluation"]["users"] == 30 and 0 <= r["evaluation"]["test_ndcg@10_after_timed_training"] <= 1
        assert len(r["evaluation"]["runs"]) == 3 and r["evaluation"]["seconds"] == sorted(r["evaluation"]["runs"])[1]
        assert r["throughput"]["histories"] == 30
        assert 0 < r["latency"]["model_ms"]["p50"] <= r["latency"]["model_ms"]["p95"]
        assert r["latency"]["torch_threads"] == 1
        assert all(p["batches_timed"] == 1 and p["sequences_per_second"] > 0 for p in r["training"].values())
    assert set(report["models"]["qbert4rec"]["training"]) == {"pretrain", "finetune"}
    assert set(measured["bert4rec-id"]["training"]) == {"pretrain", "finetune"}
    assert set(measured["sasrec-ce"]["training"]) == {"train"}
    assert report["models"]["qbert4rec"]["tokens"].startswith("pipeline semantic IDs")
    assert "RecBole" in report["recbole"]["note"]
    table = (root / "results" / "speed.md").read_text()
    assert "| qbert4rec |" in table and "RecBole" in table and "MALLOC_MMAP_THRESHOLD_=1048576" in table


def test_recbole_atomic_files_hold_out_our_validation_and_test_items(tiny_bench, tmp_path):
    root, _, _ = tiny_bench
    data = next((root / "out").glob("beauty/stages-*/pipeline/data"))
    path = recbole_baselines.write_atomic_files(str(data), tmp_path)
    lines = path.read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    by_user = {}
    for line in lines[1:]:
        user, item, position = line.split("\t")
        by_user.setdefault(user, []).append((float(position), item))
    from training.prepared import load_sequences

    sequences = load_sequences(data)
    assert len(by_user) == 30
    for split in ("validation", "test"):  # RecBole's leave-one-out (time order) holds out the same items as ours
        offset = 2 if split == "validation" else 1
        for row in sequences[split]:
            items = [item for _, item in sorted(by_user[row["user_id"]])]
            assert items[-offset] == row["target"] and items[: len(items) - offset] == row["item_ids"]


def test_allocator_benchmark_runs_each_setting_in_its_own_process(tiny_bench):
    root, _, _ = tiny_bench
    data = next((root / "out").glob("beauty/stages-*/pipeline/data"))
    flags = ["--dataset_config", str(root / "tiny.yaml"), "--dataset_dir", str(data), "--semantic_ids_dir",
             str(data.parent / "semantic_ids"), "--models", "qbert4rec", "--train_batches", "1",
             "--output_dir", str(root / "allocator"), "--results_dir", str(root / "results")]
    report = allocator.main(flags)
    assert list(report["results"]) == list(allocator.SETTINGS)
    for setting, runs in report["results"].items():
        (run,) = runs["qbert4rec"]
        assert set(run["seconds_per_epoch"]) == {"pretrain", "finetune"} and run["peak_rss_mib"] > 0, setting
    assert "| threshold 4 MiB | pretrain " in (root / "results" / "allocator.md").read_text()
    with pytest.raises(ValueError, match="--models must name some of"):
        allocator.main(flags + ["--models", "recbole-sasrec"])


@pytest.mark.skipif(not os.environ.get("QBERT4REC_RECBOLE_PYTHON"),
                    reason="set QBERT4REC_RECBOLE_PYTHON to the Python of a RecBole environment "
                           "(benchmarks/recbole-requirements.txt) to run RecBole in the speed benchmark")
def test_speed_runs_recbole_in_the_same_run(tiny_bench):
    root, _, _ = tiny_bench
    data = next((root / "out").glob("beauty/stages-*/pipeline/data"))
    recbole_python = os.path.relpath(os.environ["QBERT4REC_RECBOLE_PYTHON"])  # relative to where speed.py starts
    report = speed.main(["--dataset_config", str(root / "tiny.yaml"), "--dataset_dir", str(data), "--models", "sasrec-ce",
                         "--recbole_python", recbole_python, "--train_batches", "1",
                         "--latency_calls", "2", "--warmup_calls", "0", "--output_dir", str(root / "speed-recbole"),
                         "--results_dir", str(root / "results-recbole")])
    for name in speed.RECBOLE_MODELS:
        r = report["models"][name]
        assert r["evaluation"]["users"] == 30 and r["training"]["train"]["batches_timed"] == 1, name
        assert r["memory"]["peak_rss_mib"] > 0
    assert report["recbole"]["note"].startswith("RecBole measured in this run")
    assert "sasrec-ce_seconds_per_epoch_over_recbole-sasrec" in report["recbole"]["ratios"]
    assert "| recbole-bert4rec |" in (root / "results-recbole" / "speed.md").read_text()


def test_breakdowns_of_trained_checkpoints_match_their_test_metrics(tiny_bench, tmp_path):
    root, _, results = tiny_bench
    data = next((root / "out").glob("beauty/stages-*/pipeline/data"))
    qbert = results["rows"]["qbert4rec"]["seeds"]["0"]
    sasrec = results["rows"]["sasrec-ce"]["seeds"]["0"]
    checkpoints = {"qbert4rec": next(Path(qbert["output_dir"]).glob("finetune-*/best")),
                   "sasrec-ce": Path(sasrec["output_dir"]) / "pretrain" / "best"}
    report = breakdowns.main(["--dataset_dir", str(data), "--results_dir", str(tmp_path), "--checkpoints",
                              ",".join(f"{name}={path}" for name, path in checkpoints.items())])
    for name, run in (("qbert4rec", qbert), ("sasrec-ce", sasrec)):
        for grouping, buckets in report["buckets"].items():
            test = report["models"][name]["test"][grouping]
            assert test["all"]["ndcg@10"] == pytest.approx(run["test"]["ndcg@10"], abs=1e-6), name  # the same evaluation
            assert sum(test[b]["users"] for b in buckets) == test["all"]["users"] == 30
    validation, oldest, newest = (report["models"]["qbert4rec"][split]["history length"] for split in (
        "validation", "validation without the oldest item", "validation without the newest item"))
    assert oldest["all"]["users"] == newest["all"]["users"] == validation["all"]["users"]  # tiny histories have >= 2
    table = (tmp_path / "breakdowns.md").read_text()
    assert "## By target's training count" in table and "| qbert4rec | validation |" in table


def test_training_counts_count_each_items_occurrences_in_the_training_sequences():
    from datasets import Dataset

    tokenizer = id_tokenizer(["a", "b", "c"], max_len=5)
    train = Dataset.from_dict({"user_id": ["u", "v"], "item_ids": [["a", "b", "b"], ["b"]]})
    assert breakdowns.training_counts(train, tokenizer).tolist() == [1, 3, 0]


def test_without_history_item_drops_the_oldest_or_newest_and_keeps_the_target():
    from datasets import Dataset

    split = Dataset.from_dict({"user_id": ["a", "b"], "item_ids": [["x", "y", "z"], ["w"]], "target": ["t", "u"]})
    oldest = breakdowns.without_history_item(split, 0)
    newest = breakdowns.without_history_item(split, -1)
    assert oldest["item_ids"] == [["y", "z"]] and newest["item_ids"] == [["x", "y"]]  # "b" has one item only: left out
    assert oldest["target"] == newest["target"] == ["t"]
    with pytest.raises(ValueError, match="position must be 0"):
        breakdowns.without_history_item(split, 1)


def test_time_to_quality_trains_each_model_within_its_budget(tiny_bench):
    root, _, _ = tiny_bench
    pipeline_dir = next((root / "out").glob("beauty/stages-*/pipeline"))
    flags = ["--dataset_config", str(root / "tiny.yaml"), "--pipeline_dir", str(pipeline_dir), "--budget_seconds", "0.001",
             "--output_dir", str(root / "ttq"), "--results_dir", str(root / "results")]
    report = time_to_quality.main(flags)
    for name, r in report["models"].items():
        assert r["test"]["num_users"] == 30, name
        assert r["train_seconds"] >= 0.001  # at least the budget: stages stop only once it is spent
        assert r["reached_target"] == (r["test"]["ndcg@10"] >= 0.0376)
        # a budget smaller than one epoch: every stage stops after its first epoch
        assert all(stage["epochs"] == 1 for stage in r["stages"].values()), name
    assert set(report["models"]["qbert4rec"]["stages"]) == {"pretrain", "finetune"}
    assert "| sasrec-ce |" in (root / "results" / "time_to_quality.md").read_text()
    with pytest.raises(FileExistsError, match="cannot be resumed"):
        time_to_quality.main(flags)


@pytest.mark.slow
def test_accuracy_runs_the_other_ablations(tiny_bench):
    """Stage-1 variants (no structure, no gate), item-ID embedding, masking alone."""
    root, argv, _ = tiny_bench
    others = ["qbert4rec/no-structure", "qbert4rec/no-gate", "qbert4rec/+item-embedding", "qbert4rec/mask-cloze",
              "qbert4rec/mask-span", "qbert4rec/mask-multi_region"]
    results = accuracy.main(argv[: argv.index("--only") + 1] + [",".join(others)] + argv[argv.index("--only") + 2 :])
    for name in others:
        run = results["rows"][name]["seeds"]["0"]
        assert 0.0 <= run["test"]["ndcg@10"] <= 1.0 and run["test"]["num_users"] == 30, name
    ws = next((root / "out").glob("beauty/stages-*"))
    assert (ws / "variants" / "no-gate" / "semantic_ids" / "semantic_ids.json").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# Cold start (benchmarks/cold_start.py): its helpers on a tiny prepared dataset
# ----------------------------------------------------------------------------------------------------------------------


def test_cold_items_leave_every_split_and_no_original_test_target_is_trained_on(tmp_path):
    import datasets

    from benchmarks import cold_start
    from training.prepared import ITEM_FEATURES, SEQUENCE_FEATURES, load_item_ids, load_sequences, save_prepared

    full = {"u1": list("abcde"), "u2": list("cbx"), "u3": list("axb"), "u4": list("deab")}
    with_target = datasets.Features({**SEQUENCE_FEATURES, "target": datasets.Value("string")})
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"user_id": u, "item_ids": s[:-2]} for u, s in full.items()],
                                            features=SEQUENCE_FEATURES),
        "validation": datasets.Dataset.from_list(
            [{"user_id": u, "item_ids": s[:-2], "target": s[-2]} for u, s in full.items()], features=with_target),
        "test": datasets.Dataset.from_list(
            [{"user_id": u, "item_ids": s[:-1], "target": s[-1]} for u, s in full.items()], features=with_target),
    })
    items = datasets.Dataset.from_list([{"item_id": i, "title": i, "text": "", "brand": "", "categories": [], "image": ""}
                                        for i in "abcdex"], features=ITEM_FEATURES)
    save_prepared(splits, items, {"users": 4}, tmp_path / "source")
    assert cold_start.cold_item_ids(list("abcdex"), 0.3, seed=1) == cold_start.cold_item_ids(list("abcdex"), 0.3, 1)
    summary = cold_start.without_items(tmp_path / "source", {"x", "e"}, tmp_path / "cold")
    sequences = load_sequences(tmp_path / "cold")
    assert load_item_ids(tmp_path / "cold") == list("abcd") and summary["items"] == 4
    assert [row["user_id"] for row in sequences["test"]] == ["u1", "u4"]  # u2 and u3 keep 2 items: dropped
    assert sequences["test"][0] == {"user_id": "u1", "item_ids": list("abc"), "target": "d"}
    assert sequences["train"][1]["item_ids"] == ["d"] and sequences["validation"][1]["target"] == "a"
    for split in ("train", "validation", "test"):
        assert not {"x", "e"} & {i for row in sequences[split] for i in row["item_ids"] + [row.get("target", "")]}
    # u1's original test target (e) is cold; u4's (b) is the new test target: neither reaches the training split.
    assert "b" not in sequences["train"][1]["item_ids"] and "e" not in sequences["train"][0]["item_ids"]


def test_code_purity_and_content_knn():
    from benchmarks import cold_start

    codes = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [1, 2]])
    labels = torch.tensor([5, 5, 6, 7, 5, 6])
    cold = torch.tensor([False, False, False, False, True, True])
    purity = cold_start.code_purity(codes, labels, cold)
    assert purity["cold"] == pytest.approx((1.0 + 0.5) / 2)  # item 4 (code 0): both warm 0s are 5; item 5: one of two
    assert purity["warm"] == pytest.approx((1.0 + 1.0 + 0.0 + 0.0) / 4)  # each warm item against the other warm one
    knn = cold_start.ContentKNN(torch.eye(3))
    states = knn.history_states(torch.tensor([[0, 3], [1, 1]]))  # index 3 = padding
    assert torch.equal(knn.item_scores(states).argmax(1), torch.tensor([0, 1]))
