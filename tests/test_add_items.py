"""A living catalogue on a tiny checkpoint with a random item encoder: add_items / retire_items on the model and the
tokenizer, disambiguation of collisions, save and reload, bad input (each with its message), the item-ID embedding
options, and training/add_items.py."""

import json

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from configuration_qbert4rec import QBert4RecConfig
from modeling_qbert4rec import QBert4RecForMaskedItemModeling
from quantization_qbert4rec import ItemEncoder, item_encoder_settings, new_item_problems, prefix_mean_rows
from tokenization_semantic_id import SemanticIdTokenizer
from training import add_items as add_items_command

TEXT_DIM, IMAGE_DIM = 16, 6
WORDS = ["nail", "polish", "red", "lipstick", "mascara", "cream", "face", "eyes", "makeup", "brand", "category", "opi"]


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    """A tiny random BERT with a word-level vocabulary, saved as a local folder (what `text_encoder=` takes)."""
    folder = tmp_path_factory.mktemp("text_encoder")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", ",", ".", *WORDS]))
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS) + 8, hidden_size=TEXT_DIM, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(folder)
    return str(folder)


def settings(text_encoder, codebook_size=8, image=True, **quantizer):
    dims = {"text": TEXT_DIM, "structure": TEXT_DIM} | ({"image": IMAGE_DIM} if image else {})
    return item_encoder_settings(
        text_encoder=text_encoder, text_encoder_sha256=None, text_fields=["title", "brand", "categories"],
        max_length=32, max_categories=3, image="precomputed" if image else None, modality_dims=dims,
        injector={"dim": 16, "num_layers": 2, "num_heads": 2, "ffn_dim": 32, "pool_temperature": 0.1,
                  "id_in_memory": True, "use_gate": True, "gate_threshold": 0.25},
        quantizer={"method": "rqvae", "input_norm": "standard", "num_codebooks": 2, "codebook_size": codebook_size,
                   "code_dim": 8, "hidden_sizes": [12], **quantizer},
    )


def build(text_encoder, use_item_embedding=True, **config):
    """20 items with unique 3-level IDs (2 semantic levels of 8 codes + disambiguation), random weights."""
    numbers = torch.randperm(8**3, generator=torch.Generator().manual_seed(0))[:20]
    codes = torch.stack([numbers // 64, numbers // 8 % 8, numbers % 8], dim=1)
    tok = SemanticIdTokenizer.from_codes([f"B00ITEM{i:03d}" for i in range(20)], codes, 8, max_len=7)
    config = QBert4RecConfig(
        num_codebooks=3, codebook_size=8, num_items=20, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=8, initializer_range=0.3, use_item_embedding=use_item_embedding,
        score_item_embedding=use_item_embedding, item_encoder=settings(text_encoder), **config,
    )
    torch.manual_seed(0)
    model = QBert4RecForMaskedItemModeling(config).eval()
    model.set_item_codes(tok.item_codes, tok.table_fingerprint)
    model.item_encoder.content_vectors = torch.nn.functional.normalize(torch.randn(20, 16), dim=-1)
    return tok, model


NEW = [
    {"item_id": "NEW1", "title": "OPI nail polish, red", "brand": "OPI", "categories": ["Makeup", "Nails"]},
    {"item_id": "NEW2", "title": "face cream", "categories": ["Skin Care"]},
    {"item_id": "NEW3", "text_vector": [0.1] * TEXT_DIM, "image_vector": [0.5] * IMAGE_DIM},
]


def test_new_items_are_candidates_at_once_and_survive_save_and_load(text_encoder, tmp_path):
    tok, model = build(text_encoder)
    codes = model.add_items(tok, NEW, progress=False)
    assert len(codes) == 3 and all(len(c) == 3 for c in codes)
    assert tok.item_ids[-3:] == ["NEW1", "NEW2", "NEW3"] and model.config.num_items == tok.num_items == 23
    assert torch.equal(model.item_codes, tok.item_codes) and len(set(map(tuple, tok.item_codes.tolist()))) == 23
    model.check_tokenizer(tok)  # still paired: same codes, same fingerprint
    histories = [tok.item_ids[:3], ["NEW1"], ["NEW2", "B00ITEM004"]]
    everything = model.recommend(**tok(histories, return_tensors="pt"), top_k=23)
    assert all({"NEW1", "NEW2", "NEW3"} <= set(row) for row in tok.decode_items(everything.item_indices))
    expected = model.recommend(**tok(histories, return_tensors="pt"), top_k=5)

    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tok2 = SemanticIdTokenizer.from_pretrained(tmp_path)
    model2 = QBert4RecForMaskedItemModeling.from_pretrained(tmp_path).eval()
    model2.check_tokenizer(tok2)
    again = model2.recommend(**tok2(histories, return_tensors="pt"), top_k=5)
    assert torch.equal(again.item_indices, expected.item_indices)
    torch.testing.assert_close(again.scores, expected.scores)


def test_the_item_encoder_gives_the_same_codes_to_the_same_content(text_encoder):
    tok, model = build(text_encoder)
    first = model.add_items(tok, [NEW[0]], progress=False)[0]
    twin = {**NEW[0], "item_id": "NEW1-TWIN"}
    second = model.add_items(tok, [twin], progress=False)[0]
    assert first[:-1] == second[:-1] and second[-1] != first[-1]  # a collision: next free disambiguation code


def test_collisions_take_the_next_free_disambiguation_code_until_none_is_left(text_encoder):
    tok, model = build(text_encoder)
    with torch.no_grad():
        model.item_encoder.quantizer.codebooks.zero_()  # every item now gets semantic codes (0, 0)
    taken = {c[-1] for c in tok.item_codes.tolist() if c[:2] == [0, 0]}
    free = [c for c in range(8) if c not in taken]
    items = [{"item_id": f"TWIN{i}", "title": "red nail polish"} for i in range(len(free))]
    codes = model.add_items(tok, items, progress=False)
    assert [c[-1] for c in codes] == free and all(c[:2] == [0, 0] for c in codes)
    before = (tok.num_items, model.config.num_items, tok.table_fingerprint)
    with pytest.raises(ValueError, match=r"all 8 disambiguation codes of the semantic ID prefix \[0, 0\] are taken"):
        model.add_items(tok, [{"item_id": "ONE-TOO-MANY", "title": "red nail polish"}], progress=False)
    assert (tok.num_items, model.config.num_items, tok.table_fingerprint) == before  # nothing changed


def test_retired_items_are_never_recommended_but_histories_may_hold_them(text_encoder, tmp_path):
    tok, model = build(text_encoder)
    histories = [tok.item_ids[:3], ["B00ITEM007"]]
    top = tok.decode_items(model.recommend(**tok(histories, return_tensors="pt"), top_k=3).item_indices)
    gone = sorted({top[0][0], top[1][0]})
    model.retire_items(tok, gone)
    assert tok.retired_items == gone
    recs = tok.decode_items(model.recommend(**tok(histories, return_tensors="pt"), top_k=18).item_indices)
    assert not set(gone) & {item for row in recs for item in row}
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 18\]"):
        model.recommend(**tok(histories, return_tensors="pt"), top_k=19)
    model.check_tokenizer(tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tok2 = SemanticIdTokenizer.from_pretrained(tmp_path)
    model2 = QBert4RecForMaskedItemModeling.from_pretrained(tmp_path).eval()
    assert tok2.retired_items == gone and model2.config.retired_items == model.config.retired_items
    model2.check_tokenizer(tok2)
    assert tok2.decode_items(model2.recommend(**tok2(histories, return_tensors="pt"), top_k=18).item_indices) == recs


def test_a_tokenizer_that_missed_an_addition_is_refused(text_encoder):
    tok, model = build(text_encoder)
    stale = SemanticIdTokenizer.from_codes(tok.item_ids, tok.item_codes, 8, max_len=7)
    model.add_items(tok, [NEW[1]], progress=False)
    with pytest.raises(ValueError, match="different item tables"):
        model.check_tokenizer(stale)
    with pytest.raises(ValueError, match="different item tables"):
        model.retire_items(stale, ["B00ITEM001"])


@pytest.mark.parametrize(
    "items, message",
    [
        ([{"item_id": "NEW9"}], r"item 0 \('NEW9'\): no usable content: give one of title, brand, categories"),
        ([{"item_id": "NEW9", "title": "  ", "categories": []}], "no usable content"),
        ([{"item_id": "B00ITEM003", "title": "red"}], r"'B00ITEM003'\): the id is already in the catalogue"),
        ([{"item_id": "NEW9", "title": "red"}, {"item_id": "NEW9", "title": "eyes"}],
         r"item 1 \('NEW9'\): the id appears more than once in this call"),
        ([{"item_id": "NEW9", "text_vector": [0.1, 0.2]}], r"text_vector must hold 16 numbers, got shape \(2,\)"),
        ([{"item_id": "NEW9", "image_vector": [float("nan")] * IMAGE_DIM}], "image_vector holds NaN or inf"),
        ([{"item_id": "NEW9", "title": "red", "description": "long"}],
         r"field\(s\) 'description' were not used to train this checkpoint; it reads item_id, title, brand"),
        ([{"item_id": 17, "title": "red"}], r"'item_id' must be a non-empty string, got 17"),
        (["NEW9"], "expected a dict with an 'item_id'"),
    ],
)
def test_bad_new_items_are_refused_with_a_message_and_nothing_changes(text_encoder, items, message):
    tok, model = build(text_encoder)
    before = (tok.item_ids, model.item_codes.clone(), model.config.num_items, tok.table_fingerprint)
    with pytest.raises(ValueError, match=message):
        model.add_items(tok, items, progress=False)
    assert (tok.item_ids, model.config.num_items, tok.table_fingerprint) == (before[0], before[2], before[3])
    assert torch.equal(model.item_codes, before[1])


def test_a_checkpoint_without_an_item_encoder_says_what_is_missing(text_encoder):
    tok, model = build(text_encoder)
    model.config.item_encoder, model.item_encoder = None, None
    with pytest.raises(ValueError, match="has no item encoder.*training/item_encoder.py --model_dir"):
        model.add_items(tok, NEW)


def test_images_from_a_checkpoint_without_the_image_modality_are_refused(text_encoder):
    problems = new_item_problems([{"item_id": "X", "title": "red", "image_vector": [1.0] * IMAGE_DIM}],
                                 settings(text_encoder, image=False), set())
    assert problems == [(0, "item 0 ('X'): field(s) 'image_vector' were not used to train this checkpoint; it reads "
                            "item_id, title, brand, categories, text_vector")]


@pytest.mark.parametrize(
    "retire, error, message",
    [
        (["B00ITEM001", "NOT-AN-ITEM"], KeyError, "cannot retire unknown item id\\(s\\) 'NOT-AN-ITEM'"),
        ([f"B00ITEM{i:03d}" for i in range(20)], ValueError, "would retire every item in the catalogue"),
    ],
)
def test_bad_retirements_are_refused_and_nothing_changes(text_encoder, retire, error, message):
    tok, model = build(text_encoder)
    with pytest.raises(error, match=message):
        model.retire_items(tok, retire)
    assert tok.retired_items == [] and model.config.retired_items == []


def test_new_item_embeddings_content_twin_prefix_mean_zero_and_unknown(text_encoder):
    codes = torch.tensor([[0, 0], [0, 1], [0, 1], [3, 2]])
    table = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    rows = prefix_mean_rows(codes, torch.tensor([[0, 1], [0, 5], [3, 3], [7, 7]]), table)
    expected = torch.tensor([3.0, 7 / 3, 8.0, 15 / 4])  # full prefix, first level, first level, everything
    torch.testing.assert_close(rows.flatten(), expected)

    tok, model = build(text_encoder)
    model.add_items(tok, [NEW[0]], progress=False)  # content_twin, the default: scored exactly as its twin
    vectors = model.item_encoder.content_vectors
    twin = int((vectors[-1:] @ vectors[:20].T).argmax())
    table, _ = model._item_table()
    assert twin < 20 and torch.allclose(table[20], table[twin], atol=1e-6)
    assert torch.allclose(model._input_table()[20], model._input_table()[twin], atol=1e-6)
    assert model.item_encoder.content_vectors.shape == (21, 16)

    tok, model = build(text_encoder, item_embedding_dropout=0.3)
    model.qbert4rec.embeddings.unknown_item_embedding.data.fill_(0.5)
    for init, expected in (("zero", 0.0), ("unknown", 0.5)):
        model.add_items(tok, [{"item_id": f"NEW-{init}", "title": "red"}], item_embeddings=init, progress=False)
        index = tok.item_ids.index(f"NEW-{init}")
        assert torch.all(model.qbert4rec.embeddings.item_embeddings.weight[index] == expected)
    embeddings = model.qbert4rec.embeddings.item_embeddings
    assert embeddings.padding_idx == tok.padding_index and torch.all(embeddings.weight[tok.padding_index] == 0)
    tok, model = build(text_encoder)
    with pytest.raises(ValueError, match="needs a model trained with item_embedding_dropout"):
        model.add_items(tok, NEW, item_embeddings="unknown")


def test_item_embedding_dropout_replaces_about_that_share_in_training_only(text_encoder):
    _, model = build(text_encoder, item_embedding_dropout=0.5)
    embeddings = model.qbert4rec.embeddings
    embeddings.unknown_item_embedding.data.fill_(7.0)
    indices = torch.arange(20).repeat(50)
    rows = embeddings.item_embeddings(indices)
    embeddings.train()
    dropped = (embeddings.drop_item_embeddings(rows, indices, 20) == 7.0).all(-1).float().mean()
    assert 0.4 < dropped < 0.6
    padding = torch.full((10,), 20)
    assert torch.equal(embeddings.drop_item_embeddings(embeddings.item_embeddings(padding), padding, 20),
                       embeddings.item_embeddings(padding))  # padding is never replaced
    embeddings.eval()
    assert torch.equal(embeddings.drop_item_embeddings(rows, indices, 20), rows)
    with pytest.raises(ValueError, match="item_embedding_dropout needs use_item_embedding"):
        QBert4RecConfig(item_embedding_dropout=0.2)


def test_the_item_encoder_is_plain_torch_and_fuses_content_alone(text_encoder):
    encoder = ItemEncoder(settings(text_encoder)).eval()
    features = {"text": torch.randn(4, 1, TEXT_DIM), "structure": torch.randn(4, 3, TEXT_DIM),
                "image": torch.randn(4, 1, IMAGE_DIM)}
    masks = {m: torch.ones(f.shape[:2], dtype=torch.bool) for m, f in features.items()}
    fused, codes = encoder(features, masks)
    assert fused.shape == (4, 16) and codes.shape == (4, 2)
    torch.testing.assert_close(fused.norm(dim=-1), torch.ones(4))
    masks["image"][0] = False  # a masked vector never changes the output, whatever it holds
    features["image"][0] = float("nan")
    assert torch.isfinite(encoder(features, masks)[0]).all()


def test_add_items_command_adds_rejects_with_reasons_and_retires(text_encoder, tmp_path, capsys):
    tok, model = build(text_encoder)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    tok.save_pretrained(checkpoint)
    lines = [json.dumps(item) for item in NEW] + ['{"item_id": "NEW1", "title": "red"}', "not json",
                                                   '{"item_id": "BAD", "colour": "red"}']
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "retire.txt").write_text("B00ITEM002\n\nB00ITEM005\n")
    report = add_items_command.main(["--checkpoint", str(checkpoint), "--items", str(tmp_path / "items.jsonl"),
                                     "--retire", str(tmp_path / "retire.txt"), "--output_dir", str(tmp_path / "out")])
    assert [entry["item_id"] for entry in report["added"]] == ["NEW1", "NEW2", "NEW3"]
    assert report["retired"] == ["B00ITEM002", "B00ITEM005"] and report["items_after"] == 23
    reasons = "\n".join(report["rejected"])
    assert "line 5: not JSON" in reasons and "item 3 ('NEW1'): the id appears more than once" in reasons
    assert "'colour' were not used to train this checkpoint" in reasons
    assert "3 added" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "add_items_report.json").read_text())
    assert saved["added"] == report["added"]
    tok2 = SemanticIdTokenizer.from_pretrained(tmp_path / "out")
    QBert4RecForMaskedItemModeling.from_pretrained(tmp_path / "out").check_tokenizer(tok2)
    assert tok2.retired_items == ["B00ITEM002", "B00ITEM005"]
    with pytest.raises(SystemExit, match="must differ from --checkpoint"):
        add_items_command.main(["--checkpoint", str(checkpoint), "--items", str(tmp_path / "items.jsonl"),
                                "--output_dir", str(checkpoint)])
