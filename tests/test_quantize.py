"""Stage 2, the command: unique semantic IDs, the files it writes, determinism, its YAML section and bad input."""

import json
import re

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from test_quantizers import DIM, NUM_CLUSTERS, clustered_vectors

from tokenization_semantic_id import SemanticIdTokenizer
from training.explain_codes import leaf_labels, load_items, purity_table
from training.quantize import QuantizeArgs, check_embeddings, load_codebooks, main
from training.quantizers import codebook_sum


def write_dataset(tmp_path, embeddings, item_ids=None, categories=None):
    """A prepared-dataset folder with only `items/`, and `fused.safetensors`; returns (data_dir, embeddings_path)."""
    num_items = len(item_ids) if item_ids is not None else embeddings.shape[0]
    item_ids = item_ids or [f"i{n}" for n in range(num_items)]
    categories = categories or [["Beauty", f"leaf{n % NUM_CLUSTERS}"] for n in range(num_items)]
    data_dir = tmp_path / "data"
    titles = [f"title {i}" for i in item_ids]
    Dataset.from_dict({"item_id": item_ids, "title": titles, "categories": categories}).save_to_disk(
        str(data_dir / "items")
    )
    path = tmp_path / "fused.safetensors"
    save_file({"embeddings": embeddings.contiguous()}, str(path))
    return data_dir, path


def run(tmp_path, embeddings, *flags, name="sid", **dataset_kwargs):
    data_dir, path = write_dataset(tmp_path, embeddings, **dataset_kwargs)
    out = tmp_path / name
    stats = main(["--dataset_dir", str(data_dir), "--embeddings", str(path), "--output_dir", str(out), *flags])
    return stats, out


TINY_RQVAE = ["--codebook_size", "8", "--num_codebooks", "2", "--hidden_sizes", "32", "--latent_dim", "8",
              "--warmup_epochs", "2", "--epochs", "3", "--batch_size", "16"]  # fmt: skip


# The command.
@pytest.mark.parametrize("method", ["rqvae", "rkmeans"])
def test_same_seed_same_codes(tmp_path, method):
    vectors, _ = clustered_vectors()
    flags = [*TINY_RQVAE, "--method", method, "--seed", "3"]
    run(tmp_path, vectors, *flags, name="a")
    run(tmp_path, vectors, *flags, name="b")
    codes_a = SemanticIdTokenizer.from_pretrained(str(tmp_path / "a")).item_codes
    codes_b = SemanticIdTokenizer.from_pretrained(str(tmp_path / "b")).item_codes
    assert torch.equal(codes_a, codes_b)


@pytest.mark.parametrize("method", ["rqvae", "rkmeans"])
def test_main_writes_unique_semantic_ids_and_stats(tmp_path, method):
    vectors, _ = clustered_vectors()
    stats, out = run(tmp_path, vectors, *TINY_RQVAE, "--method", method, "--max_len", "7")
    tokenizer = SemanticIdTokenizer.from_pretrained(str(out))
    assert tokenizer.item_ids == [f"i{n}" for n in range(48)]
    assert tokenizer.num_codebooks == 3 and tokenizer.codebook_size == 8 and tokenizer.max_len == 7
    assert len(torch.unique(tokenizer.item_codes, dim=0)) == 48
    assert re.fullmatch(r"<a_\d+><b_\d+><c_\d+>", tokenizer.render("i0"))
    on_disk = json.loads((out / "codebook_stats.json").read_text())
    assert on_disk["num_codebooks"] == 3 and on_disk["semantic_levels"] == 2
    assert [lv["disambiguation"] for lv in on_disk["levels"]] == [False, False, True]
    assert all(1 <= lv["codes_used"] <= 8 and lv["perplexity"] >= 1 for lv in on_disk["levels"])
    collisions = on_disk["collisions_before_disambiguation"]
    assert collisions["max_group_size"] == int(tokenizer.item_codes[:, 2].max()) + 1
    # Tight clusters: residual k-means reconstructs them almost exactly; 3 epochs of RQ-VAE only roughly.
    assert on_disk["reconstruction"]["relative_squared_error"] < (0.05 if method == "rkmeans" else 2.0)
    assert on_disk["time_seconds"]["total"] > 0
    assert (out / "code_usage.png").stat().st_size > 1000
    saved = load_file(str(out / "input_normalisation.safetensors"))
    assert saved["mean"].shape == saved["std"].shape == (DIM,)  # 'standard' input normalisation
    assert json.loads((out / "quantizer_config.json").read_text())["method"] == method
    assert stats["levels"] == on_disk["levels"]
    # The saved codebooks, without the disambiguation level: (2 levels, 8 codes, the quantised space).
    codebooks = load_codebooks(out)
    assert codebooks.shape == (2, 8, 8 if method == "rqvae" else DIM)
    if method == "rkmeans":  # the items' codes pick vectors that sum to their (normalised) inputs
        normalised = (vectors - saved["mean"]) / saved["std"]
        quantised = codebook_sum(codebooks, tokenizer.item_codes[:, :2])
        assert ((quantised - normalised).norm(dim=1) / normalised.norm(dim=1)).mean() < 0.25
    with pytest.raises(FileNotFoundError, match="not written by training/quantize.py"):
        load_codebooks(tmp_path)


def test_yaml_section_and_help(tmp_path, capsys):
    vectors, _ = clustered_vectors()
    config = tmp_path / "config.yaml"
    config.write_text("quantize:\n  method: rkmeans\n  codebook_size: 8\n  num_codebooks: 2\n")
    stats, _ = run(tmp_path, vectors, "--config", str(config))
    assert stats["method"] == "rkmeans" and stats["codebook_size"] == 8
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--codebook_size" in capsys.readouterr().out


# Bad input.
def test_nan_embeddings(tmp_path):
    vectors, _ = clustered_vectors()
    vectors[5, 3] = float("nan")
    with pytest.raises(ValueError, match=r"1 embedding row\(s\) hold NaN or inf, e.g. row 5 \('i5'\)"):
        run(tmp_path, vectors, *TINY_RQVAE)


def test_embedding_count_differs_from_items(tmp_path):
    vectors, _ = clustered_vectors()
    with pytest.raises(ValueError, match="40 embedding rows but the items dataset has 48 items"):
        run(tmp_path, vectors[:40], *TINY_RQVAE, item_ids=[f"i{n}" for n in range(48)])


def test_embeddings_wrong_rank():
    with pytest.raises(ValueError, match=r"embeddings must be 2-D \(num_items, dim\), got shape \(4, 2, 3\)"):
        check_embeddings(torch.zeros(4, 2, 3))


def test_embeddings_file_without_embeddings_tensor(tmp_path):
    data_dir, _ = write_dataset(tmp_path, torch.zeros(4, 2))
    path = tmp_path / "other.safetensors"
    save_file({"vectors": torch.zeros(4, 2)}, str(path))
    with pytest.raises(ValueError, match="no tensor named 'embeddings' \\(found: vectors\\)"):
        main(["--dataset_dir", str(data_dir), "--embeddings", str(path), "--output_dir", str(tmp_path / "o")])


def test_codebook_larger_than_catalogue(tmp_path):
    vectors, _ = clustered_vectors()
    with pytest.raises(ValueError, match=r"codebook_size=64 is larger than the number of items \(48\)"):
        run(tmp_path, vectors, "--codebook_size", "64", "--epochs", "1")


def test_disambiguation_group_too_big_from_the_command(tmp_path):
    identical = torch.ones(8, DIM)
    with pytest.raises(ValueError, match=r"8 items share the code tuple .* more than codebook_size=4"):
        run(tmp_path, identical, "--method", "rkmeans", "--codebook_size", "4", "--num_codebooks", "2")


def test_duplicate_item_ids(tmp_path):
    vectors, _ = clustered_vectors()
    ids = [f"i{n}" for n in range(47)] + ["i3"]
    with pytest.raises(ValueError, match="item id 'i3' appears at rows 3 and 47"):
        run(tmp_path, vectors, *TINY_RQVAE, item_ids=ids)


def test_bad_method():
    with pytest.raises(ValueError, match=r"method must be one of \('rkmeans', 'rqvae'\), got 'vq'"):
        QuantizeArgs(method="vq")


# Real data: CLIP text vectors of Amazon Scientific.
def scientific_items(scientific_dir):
    """Scientific's items in item-index order, with its category path (from `Scientific.text`) as the leaf."""
    order = sorted(
        (line.split("\t") for line in (scientific_dir / "Scientific.item2index").read_text().splitlines()),
        key=lambda row: int(row[1]),
    )
    text = dict(line.split("\t", 1) for line in (scientific_dir / "Scientific.text").read_text().splitlines()[1:])
    item_ids, titles, categories = [], [], []
    for asin, _ in order:
        match = re.search(r"\. (Industrial & Scientific[^.]*)\. ", text.get(asin, ""))
        item_ids.append(asin)
        titles.append(text.get(asin, "")[: match.start()] if match else text.get(asin, ""))
        categories.append([match.group(1)] if match else [])
    return item_ids, titles, categories


def test_real_scientific_clip_text_vectors(tmp_path, scientific_dir):
    item_ids, titles, categories = scientific_items(scientific_dir)
    matrix = np.fromfile(scientific_dir / "Scientific.feat1CLS", dtype="<f4").reshape(len(item_ids), 512)
    stats, out = run(
        tmp_path,
        torch.from_numpy(matrix.copy()),
        "--warmup_epochs", "5", "--epochs", "20", "--codebook_size", "64",
        item_ids=item_ids,
        categories=categories,
    )  # fmt: skip
    tokenizer = SemanticIdTokenizer.from_pretrained(str(out))
    assert tokenizer.item_ids == item_ids
    assert len(torch.unique(tokenizer.item_codes, dim=0)) == len(item_ids) == 1585
    # Warm-up, k-means init and dead-code restart keep the codebooks in use (without them: 4 of 64 codes).
    assert all(level["codes_used"] >= 40 for level in stats["levels"][:3]), stats["levels"]
    assert stats["collisions_before_disambiguation"]["collision_rate"] < 0.4
    labels = leaf_labels(item_ids, load_items(tmp_path / "data"))
    first = purity_table(tokenizer.item_codes, labels, num_random=3)[0]
    assert first["purity"] > 5 * first["random_purity"], first
