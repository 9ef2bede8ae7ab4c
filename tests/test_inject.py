"""Tests for stage 1, `training/inject.py`: tiny models and datasets built here, plus a real-data Scientific check."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file, save_file

from quantization_qbert4rec import CrossModalInjector, pool_by_query
from training.inject import (
    adjacent_pairs,
    check_item_coverage,
    embed_items,
    info_nce,
    load_injector,
    load_modalities,
    main,
    multi_view_info_nce,
    read_modality_features,
)

NUM_ITEMS = 10
DIMS = {"text": 8, "image": 6, "structure": 5}
VECTORS = {"text": 1, "image": 1, "structure": 3}
TINY_FLAGS = ["--dim", "16", "--num_layers", "2", "--num_heads", "2", "--ffn_dim", "32", "--batch_size", "8",
              "--behaviour_batch_size", "8", "--dropout", "0.1"]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors run far faster on one thread on a busy shared CPU; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(**kwargs) -> CrossModalInjector:
    torch.manual_seed(0)
    options = dict(dim=16, num_layers=3, num_heads=2, ffn_dim=32, dropout=0.0)
    options.update(kwargs)
    return CrossModalInjector(NUM_ITEMS, DIMS, **options)


def tiny_features(seed: int = 0):
    """Every item has text; items 0-3 lack an image; structure has 3 vectors of which the last is masked for all."""
    generator = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(NUM_ITEMS, VECTORS[m], DIMS[m], generator=generator) for m in DIMS}
    masks = {m: torch.ones(NUM_ITEMS, VECTORS[m], dtype=torch.bool) for m in DIMS}
    masks["image"][:4] = False
    masks["structure"][:, 2] = False
    return features, masks


def set_gate_bias(model: CrossModalInjector, bias: float) -> None:
    with torch.no_grad():
        for gate in model.gates:
            gate.mlp[-1].weight.zero_()
            gate.mlp[-1].bias.fill_(bias)


# ----------------------------------------------------------------------------------------------------------------
# Model


def test_forward_shapes():
    model = tiny_model().eval()
    features, masks = tiny_features()
    output = model(torch.arange(NUM_ITEMS), features, masks)
    assert output.fused.shape == (NUM_ITEMS, 16)
    assert output.views.shape == (NUM_ITEMS, 4, 16)
    assert output.view_mask.shape == (NUM_ITEMS, 4)
    assert output.gates.shape == (NUM_ITEMS, 3)
    assert output.depth.shape == (NUM_ITEMS,) and output.depth.dtype == torch.long
    assert output.view_mask[:4, 2].eq(False).all() and output.view_mask[4:].all()
    assert output.views[:4, 2].eq(0).all()


def test_pool_by_query_is_softmax_of_cosine_over_real_vectors():
    query = torch.randn(2, 4)
    vectors = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    pooled = pool_by_query(query, vectors, mask, tau=0.5)
    cos = F.cosine_similarity(query[0].unsqueeze(0), vectors[0, :2], dim=-1)
    expected = torch.softmax(cos / 0.5, dim=0) @ vectors[0, :2]
    torch.testing.assert_close(pooled[0], expected)
    assert pooled[1].eq(0).all()


def test_negative_gate_bias_stops_every_item_after_one_layer():
    model = tiny_model().eval()
    set_gate_bias(model, -30.0)
    output = model(torch.arange(NUM_ITEMS), *tiny_features())
    assert output.depth.eq(1).all()
    assert output.gates[:, 0].lt(model.gate_threshold).all()


def test_positive_gate_bias_uses_full_depth():
    model = tiny_model().eval()
    set_gate_bias(model, 30.0)
    output = model(torch.arange(NUM_ITEMS), *tiny_features())
    assert output.depth.eq(3).all()


def test_training_mode_uses_every_layer_whatever_the_gate():
    model = tiny_model().train()
    set_gate_bias(model, -30.0)
    assert model(torch.arange(NUM_ITEMS), *tiny_features()).depth.eq(3).all()


def test_without_gate_depth_is_fixed():
    model = tiny_model(use_gate=False).eval()
    output = model(torch.arange(NUM_ITEMS), *tiny_features())
    assert model.gates is None
    assert output.depth.eq(3).all() and output.gates.eq(1).all()


def test_early_stopped_items_equal_a_truncated_model():
    """An item whose first gate is below the threshold gets exactly the output of the first layer alone."""
    model = tiny_model().eval()
    features, masks = tiny_features()
    with torch.no_grad():  # spread the first gate over items so that some stop and some go on
        model.gates[0].mlp[-1].weight.normal_(0, 5.0)
    first_gates = model(torch.arange(NUM_ITEMS), features, masks).gates[:, 0]
    model.gate_threshold = first_gates.median().item()
    output = model(torch.arange(NUM_ITEMS), features, masks)
    stopped = first_gates < model.gate_threshold
    assert stopped.any() and (~stopped).any()
    assert output.depth[stopped].eq(1).all() and output.depth[~stopped].ge(2).all()

    truncated = copy.deepcopy(model)
    truncated.blocks, truncated.gates = truncated.blocks[:1], truncated.gates[:1]
    one_layer = truncated(torch.arange(NUM_ITEMS), features, masks)
    torch.testing.assert_close(output.fused[stopped], one_layer.fused[stopped], rtol=0, atol=0)


def test_masked_modality_rows_can_hold_garbage():
    """Items that lack the image (and masked structure vectors) give the same output whatever those rows hold."""
    model = tiny_model().eval()
    features, masks = tiny_features()
    reference = model(torch.arange(NUM_ITEMS), features, masks)

    garbage = {m: f.clone() for m, f in features.items()}
    garbage["image"][:4] = torch.tensor([float("nan"), 1e30, -7.0, float("inf"), 3.0, 0.0])
    garbage["structure"][:, 2] = float("nan")
    output = model(torch.arange(NUM_ITEMS), garbage, masks)
    assert torch.equal(output.fused, reference.fused)
    assert torch.equal(output.depth, reference.depth)

    without_image = model(torch.arange(NUM_ITEMS), {m: f for m, f in features.items() if m != "image"}, masks)
    assert torch.equal(without_image.fused[:4], reference.fused[:4])
    assert not torch.allclose(without_image.fused[4:], reference.fused[4:])


def test_item_with_no_modality_relies_on_its_id_vector():
    model = tiny_model(id_in_memory=False).eval()
    features, masks = tiny_features()
    for mask in masks.values():
        mask[0] = False
    output = model(torch.arange(NUM_ITEMS), features, masks)
    assert torch.isfinite(output.fused).all()
    assert output.view_mask[0].tolist() == [True, False, False, False]


def test_forward_rejects_wrong_feature_dim():
    model = tiny_model()
    features, masks = tiny_features()
    features["text"] = torch.randn(NUM_ITEMS, 1, 9)
    with pytest.raises(ValueError, match=r"text features \(10, 1, 9\).*input dim 8"):
        model(torch.arange(NUM_ITEMS), features, masks)


def test_bad_model_sizes():
    with pytest.raises(ValueError, match="must be divisible by num_heads"):
        CrossModalInjector(4, {"text": 3}, dim=10, num_heads=3)
    with pytest.raises(ValueError, match="modality_dims must name some of"):
        CrossModalInjector(4, {"audio": 3})


# ----------------------------------------------------------------------------------------------------------------
# Losses


def test_info_nce_is_low_for_matching_pairs_and_ignores_duplicate_negatives():
    vectors = torch.eye(4) * 5
    assert info_nce(vectors, vectors, 0.1) < 1e-3
    assert info_nce(vectors, vectors.flip(0), 0.1) > 5
    # rows 0 and 1 are the same positive item: without the ids the duplicate counts as a negative
    positives = torch.stack([vectors[0], vectors[0], vectors[2], vectors[3]])
    ids = torch.tensor([7, 7, 2, 3])
    assert info_nce(positives, positives, 0.1, ids, ids) < 1e-3 < info_nce(positives, positives, 0.1)


def test_multi_view_loss_skips_missing_views():
    model = tiny_model()
    features, masks = tiny_features()
    masks["image"][:] = False
    masks["image"][0] = True  # one item with an image: no pair to contrast, the view is skipped
    masks["text"][5:] = False  # the text view is contrasted over items 0-4 only
    output = model(torch.arange(NUM_ITEMS), features, masks)
    expected = (
        info_nce(output.fused, output.views[:, 0], 0.1)
        + info_nce(output.fused[:5], output.views[:5, 1], 0.1)
        + info_nce(output.fused, output.views[:, 3], 0.1)
    ) / 3
    torch.testing.assert_close(multi_view_info_nce(output, 0.1), expected)


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def test_adjacent_pairs_come_from_train_sequences_only(tmp_path):
    data_dir, _ = write_tiny_dataset(tmp_path)
    from training.inject import load_items_and_train_sequences

    item_ids, train_sequences = load_items_and_train_sequences(data_dir)
    pairs = adjacent_pairs(train_sequences, item_ids)
    assert pairs.shape[1] == 2 and (pairs[:, 0] != pairs[:, 1]).all()
    seen = {tuple(p) for p in pairs.tolist()}
    # each user's validation / test target follows the train history; those transitions must not appear
    index = {item_id: k for k, item_id in enumerate(item_ids)}
    for user in range(16):
        history, validation = TINY_SEQUENCES[user][:-2], TINY_SEQUENCES[user][-2]
        assert (index[history[-1]], index[validation]) not in seen


def test_adjacent_pairs_reject_unknown_items():
    with pytest.raises(ValueError, match=r"train sequence 1: item 'zz' is not in the items dataset"):
        adjacent_pairs([["a", "b"], ["a", "zz"]], ["a", "b"])


def write_feature_file(path, features, mask):
    save_file({"features": features, "mask": mask}, str(path))


def test_read_features_rejects_nan(tmp_path):
    features = torch.randn(3, 1, 4)
    features[2, 0, 1] = float("nan")
    write_feature_file(tmp_path / "text.safetensors", features, torch.ones(3, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"text.safetensors: NaN or inf in the features of 1 item\(s\), e.g. 'c'"):
        read_modality_features(tmp_path / "text.safetensors", ["a", "b", "c"])


def test_read_features_ignores_nan_in_masked_vectors(tmp_path):
    features = torch.randn(3, 2, 4)
    features[2, 1] = float("nan")
    mask = torch.tensor([[True, True], [True, False], [True, False]])
    write_feature_file(tmp_path / "structure.safetensors", features, mask)
    read_features, read_mask = read_modality_features(tmp_path / "structure.safetensors", ["a", "b", "c"])
    assert read_features.shape == (3, 2, 4) and torch.equal(read_mask, mask)


def test_read_features_rejects_wrong_item_count(tmp_path):
    write_feature_file(tmp_path / "text.safetensors", torch.randn(4, 1, 4), torch.ones(4, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="4 feature rows but the items dataset has 3 items"):
        read_modality_features(tmp_path / "text.safetensors", ["a", "b", "c"])


def test_read_features_rejects_bad_shapes(tmp_path):
    write_feature_file(tmp_path / "a.safetensors", torch.randn(3, 4), torch.ones(3, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"'features' must be \(num_items, num_vectors, dim\), got shape \(3, 4\)"):
        read_modality_features(tmp_path / "a.safetensors", ["a", "b", "c"])
    write_feature_file(tmp_path / "b.safetensors", torch.randn(3, 2, 4), torch.ones(3, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"'mask' must be bool of shape \(3, 2\), got torch.bool \(3, 1\)"):
        read_modality_features(tmp_path / "b.safetensors", ["a", "b", "c"])
    save_file({"features": torch.randn(3, 1, 4)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(ValueError, match="missing tensor 'mask'"):
        read_modality_features(tmp_path / "c.safetensors", ["a", "b", "c"])


def test_no_feature_file_at_all(tmp_path):
    with pytest.raises(ValueError, match="none of text.safetensors, image.safetensors found"):
        load_modalities(tmp_path, ["text", "image"], ["a"])


def test_item_with_no_modality_is_an_error_unless_allowed():
    masks = {"text": torch.tensor([[True], [False], [True]]), "image": torch.tensor([[False], [False], [True]])}
    modalities = {m: (torch.zeros(3, 1, 2), mask) for m, mask in masks.items()}
    with pytest.raises(ValueError, match=r"1 item\(s\) have no text/image features at all, e.g. 'b'.*--allow_id_only"):
        check_item_coverage(modalities, ["a", "b", "c"], allow_id_only=False)
    assert check_item_coverage(modalities, ["a", "b", "c"], allow_id_only=True).tolist() == [True, False, True]


# ----------------------------------------------------------------------------------------------------------------
# Training end to end on a tiny learnable problem: 4 clusters of items, users buy inside one cluster

TINY_ITEMS = [f"item{i}" for i in range(24)]
TINY_SEQUENCES = [[TINY_ITEMS[(user % 4) + 4 * k] for k in range(user % 2, user % 2 + 5)] for user in range(16)]


def write_prepared(data_dir, item_ids: list[str], full_sequences: list[list[str]]):
    """A prepared dataset folder (docs/interfaces.md §1), leave-one-out splits of `full_sequences`."""
    empty = [""] * len(item_ids)
    Dataset.from_dict(
        {"item_id": item_ids, "title": item_ids, "text": empty, "brand": empty, "categories": [[] for _ in item_ids],
         "image": empty}  # fmt: skip
    ).save_to_disk(str(data_dir / "items"))
    users = [str(u) for u in range(len(full_sequences))]
    DatasetDict(
        {
            "train": Dataset.from_dict({"user_id": users, "item_ids": [s[:-2] for s in full_sequences]}),
            "validation": Dataset.from_dict(
                {"user_id": users, "item_ids": [s[:-2] for s in full_sequences],
                 "target": [s[-2] for s in full_sequences]}  # fmt: skip
            ),
            "test": Dataset.from_dict(
                {"user_id": users, "item_ids": [s[:-1] for s in full_sequences],
                 "target": [s[-1] for s in full_sequences]}  # fmt: skip
            ),
        }
    ).save_to_disk(str(data_dir / "sequences"))


def write_tiny_dataset(tmp_path, text_rows=None, image=True):
    """Items in 4 clusters (item i in cluster i % 4); text and image features are the cluster centre + noise."""
    data_dir, feature_dir = tmp_path / "data", tmp_path / "features"
    write_prepared(data_dir, TINY_ITEMS, TINY_SEQUENCES)
    feature_dir.mkdir()
    generator = torch.Generator().manual_seed(0)
    clusters = torch.tensor([i % 4 for i in range(len(TINY_ITEMS))])
    for modality, dim in (("text", 12), ("image", 10)) if image else (("text", 12),):
        centres = torch.randn(4, dim, generator=generator) * 3
        features = (centres[clusters] + torch.randn(len(TINY_ITEMS), dim, generator=generator)).unsqueeze(1)
        mask = torch.ones(len(TINY_ITEMS), 1, dtype=torch.bool)
        if modality == "text" and text_rows is not None:
            mask[:] = False
            mask[text_rows] = True
        write_feature_file(feature_dir / f"{modality}.safetensors", features, mask)
    return data_dir, feature_dir


def run_main(data_dir, feature_dir, output_dir, *flags):
    return main(["--dataset_dir", str(data_dir), "--features_dir", str(feature_dir), "--output_dir", str(output_dir),
                 *TINY_FLAGS, *flags])  # fmt: skip


def test_main_writes_outputs_and_loss_decreases(tmp_path):
    data_dir, feature_dir = write_tiny_dataset(tmp_path)
    output_dir = tmp_path / "out"
    result = run_main(data_dir, feature_dir, output_dir, "--num_epochs", "12", "--learning_rate", "5e-3")

    fused = load_file(str(output_dir / "fused.safetensors"))
    assert fused["embeddings"].shape == (24, 16) and fused["embeddings"].dtype == torch.float32
    assert fused["depth"].shape == (24,) and fused["depth"].dtype == torch.int64
    torch.testing.assert_close(fused["embeddings"].norm(dim=-1), torch.ones(24))
    log = json.loads((output_dir / "train_log.json").read_text())
    assert [row["epoch"] for row in log] == list(range(1, 13))
    assert log[-1]["loss"] < log[0]["loss"] - 0.5
    histogram = json.loads((output_dir / "depth_histogram.json").read_text())
    assert set(histogram) == {"1", "2"} and sum(histogram.values()) == 24
    assert (output_dir / "depth_histogram.png").stat().st_size > 0
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["epoch_11", "epoch_12"]
    assert (output_dir / "checkpoints" / "epoch_12" / "model.safetensors").is_file()

    # the saved injector reproduces the embeddings; new items (no trained ID) are embedded from content alone
    modalities = load_modalities(feature_dir, ["text", "image"], TINY_ITEMS)
    reloaded, depth = embed_items(load_injector(output_dir), modalities)
    torch.testing.assert_close(reloaded, fused["embeddings"])  # bitwise on one device; main may have run on a GPU
    assert torch.equal(depth, fused["depth"])
    cold, _ = embed_items(load_injector(output_dir), modalities, new_items=True)
    assert cold.shape == (24, 16) and torch.isfinite(cold).all() and not torch.allclose(cold, reloaded)

    # the learnable structure: items of the same cluster end up closer than items of other clusters
    embeddings = result["embeddings"]
    similarity = embeddings @ embeddings.T
    same = torch.tensor([[i % 4 == j % 4 and i != j for j in range(24)] for i in range(24)])
    different = torch.tensor([[i % 4 != j % 4 for j in range(24)] for i in range(24)])
    assert similarity[same].mean() > similarity[different].mean() + 0.3


def test_same_seed_same_embeddings_and_resume_matches(tmp_path):
    data_dir, feature_dir = write_tiny_dataset(tmp_path)
    first = run_main(data_dir, feature_dir, tmp_path / "a", "--num_epochs", "2")
    second = run_main(data_dir, feature_dir, tmp_path / "b", "--num_epochs", "2")
    assert torch.equal(first["embeddings"], second["embeddings"])
    other_seed = run_main(data_dir, feature_dir, tmp_path / "c", "--num_epochs", "2", "--seed", "7")
    assert not torch.allclose(first["embeddings"], other_seed["embeddings"])

    # a run that stopped after epoch 1, resumed from its checkpoint: the same result as the uninterrupted run
    checkpoint = tmp_path / "a" / "checkpoints" / "epoch_1"
    resumed = run_main(data_dir, feature_dir, tmp_path / "a", "--num_epochs", "2", "--resume_from_checkpoint",
                       str(checkpoint))  # fmt: skip
    assert [row["epoch"] for row in resumed["log"]] == [1, 2]
    assert resumed["log"][0] == first["log"][0]
    torch.testing.assert_close(resumed["embeddings"], first["embeddings"], rtol=0, atol=0)


def test_resume_with_other_features_is_refused(tmp_path):
    data_dir, feature_dir = write_tiny_dataset(tmp_path)
    run_main(data_dir, feature_dir, tmp_path / "out", "--num_epochs", "1")
    with pytest.raises(ValueError, match=r"cannot resume, modality_dims was \{'text': 12, 'image': 10\} and is now"):
        run_main(data_dir, feature_dir, tmp_path / "out", "--num_epochs", "2", "--resume_from_checkpoint", "latest",
                 "--no_use_image")  # fmt: skip


def test_main_item_without_modality(tmp_path):
    data_dir, feature_dir = write_tiny_dataset(tmp_path, text_rows=list(range(1, 24)), image=False)
    with pytest.raises(ValueError, match=r"1 item\(s\) have no text features at all, e.g. 'item0'"):
        run_main(data_dir, feature_dir, tmp_path / "out", "--num_epochs", "1")
    result = run_main(data_dir, feature_dir, tmp_path / "out", "--num_epochs", "1", "--allow_id_only")
    assert torch.isfinite(result["embeddings"]).all()


def test_main_modality_switches_and_fixed_depth(tmp_path):
    data_dir, feature_dir = write_tiny_dataset(tmp_path)
    result = run_main(data_dir, feature_dir, tmp_path / "out", "--num_epochs", "1", "--no_use_text", "--no_use_gate")
    assert json.loads((tmp_path / "out" / "inject_args.json").read_text())["modality_dims"] == {"image": 10}
    assert result["depth"].eq(2).all()
    with pytest.raises(ValueError, match="all off: nothing to inject"):
        run_main(data_dir, feature_dir, tmp_path / "out2", "--no_use_text", "--no_use_image", "--no_use_structure")


def test_main_restores_torch_threads(tmp_path):
    data_dir, feature_dir = write_tiny_dataset(tmp_path)
    torch.set_num_threads(2)
    run_main(data_dir, feature_dir, tmp_path / "out", "--num_epochs", "1", "--num_threads", "1")
    assert torch.get_num_threads() == 2


def test_config_file_section(tmp_path):
    data_dir, feature_dir = write_tiny_dataset(tmp_path)
    config = tmp_path / "inject.yaml"
    config.write_text("inject:\n  num_epochs: 1\n  gate_init_bias: -30.0\n")
    run_main(data_dir, feature_dir, tmp_path / "out", "--config", str(config))
    assert json.loads((tmp_path / "out" / "depth_histogram.json").read_text()) == {"1": 24, "2": 0}
    config.write_text("inject:\n  num_epoch: 1\n")
    with pytest.raises(ValueError, match="unknown key\\(s\\) in section 'inject': num_epoch"):
        run_main(data_dir, feature_dir, tmp_path / "out", "--config", str(config))


# ----------------------------------------------------------------------------------------------------------------
# Real data: Scientific CLIP text + image vectors, adjacency from the RecBole train file


def read_scientific(scientific_dir):
    """Item ASINs in index order and each user's full sequence (the test row's history + target), as ASINs."""
    index = {}
    for line in (scientific_dir / "Scientific.item2index").read_text().splitlines():
        asin, position = line.split("\t")
        index[int(position)] = asin
    item_ids = [index[i] for i in range(len(index))]
    sequences = []
    for line in (scientific_dir / "Scientific.test.inter").read_text().splitlines()[1:]:
        _, history, target = line.split("\t")
        sequences.append([item_ids[int(i)] for i in history.split()] + [item_ids[int(target)]])
    return item_ids, sequences


def test_scientific_adjacent_items_end_up_closer(scientific_dir, tmp_path):
    item_ids, sequences = read_scientific(scientific_dir)
    data_dir, feature_dir = tmp_path / "data", tmp_path / "features"
    write_prepared(data_dir, item_ids, sequences)
    feature_dir.mkdir()
    for modality, suffix in (("text", "feat1CLS"), ("image", "feat3CLS")):
        matrix = np.fromfile(scientific_dir / f"Scientific.{suffix}", dtype="<f4").reshape(len(item_ids), 1, 512)
        write_feature_file(feature_dir / f"{modality}.safetensors", torch.from_numpy(matrix.copy()),
                           torch.ones(len(item_ids), 1, dtype=torch.bool))  # fmt: skip

    result = main(["--dataset_dir", str(data_dir), "--features_dir", str(feature_dir), "--output_dir",
                   str(tmp_path / "out"), "--num_epochs", "8"])  # fmt: skip
    embeddings = result["embeddings"]
    train_pairs = adjacent_pairs([s[:-2] for s in sequences], item_ids)
    index = {item_id: k for k, item_id in enumerate(item_ids)}
    # validation transitions (last train item -> validation target) were never trained on
    valid_pairs = torch.tensor([(index[s[-3]], index[s[-2]]) for s in sequences if len(s) >= 3 and s[-3] != s[-2]])
    random_pairs = torch.randint(0, len(item_ids), (5000, 2), generator=torch.Generator().manual_seed(0))

    def mean_cosine(pairs):
        return (embeddings[pairs[:, 0]] * embeddings[pairs[:, 1]]).sum(-1).mean().item()

    assert mean_cosine(train_pairs) > mean_cosine(random_pairs) + 0.2
    assert mean_cosine(valid_pairs) > mean_cosine(random_pairs) + 0.1  # content and behaviour generalise
    assert math.isfinite(result["log"][-1]["loss"]) and result["log"][-1]["loss"] < result["log"][0]["loss"]
