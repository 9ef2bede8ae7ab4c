"""Q-Bert4Rec model on tiny configs (after transformers' BertModelTester): shapes, loss and gradients, padding
invariance, determinism, save/load (and the state-dict keys of older checkpoints), initialisation, full-catalogue
scoring, recommend() and bad input."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from configuration_qbert4rec import QBert4RecConfig
from modeling_qbert4rec import (
    QBert4RecForMaskedItemModeling,
    QBert4RecMaskedItemOutput,
    QBert4RecModel,
    QBert4RecRecommendationOutput,
    catalogue_scores,
    seen_item_columns,
)
from tokenization_semantic_id import SemanticIdTokenizer, code_token_ids, mask_index, padding_index


class QBert4RecModelTester:
    """Tiny sizes and inputs: batch 3, seq 7, 3 codebooks of 8 codes, hidden 32, 2 layers, 4 heads."""

    batch_size = 3
    seq_length = 7
    history_lengths = (7, 4, 1)  # left-padded rows: full, half, one item
    num_codebooks = 3
    codebook_size = 8
    num_items = 20
    hidden_size = 32
    num_hidden_layers = 2
    num_attention_heads = 4
    intermediate_size = 37

    def get_config(self, **overrides) -> QBert4RecConfig:
        values = dict(
            num_codebooks=self.num_codebooks,
            codebook_size=self.codebook_size,
            num_items=self.num_items,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.seq_length + 1,  # the history plus the appended [MASK]
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            initializer_range=0.2,  # large enough that different histories get clearly different scores
        )
        return QBert4RecConfig(**{**values, **overrides})

    def get_tokenizer(self, seed: int = 0, num_items: int | None = None) -> SemanticIdTokenizer:
        """Unique code tuples: distinct numbers below 8**3 written in base 8."""
        num_items = num_items or self.num_items
        numbers = torch.randperm(self.codebook_size**self.num_codebooks, generator=torch.Generator().manual_seed(seed))
        codes = torch.stack([numbers[:num_items] // self.codebook_size**(2 - level) % self.codebook_size
                             for level in range(self.num_codebooks)], dim=1)
        item_ids = [f"B00ITEM{i:03d}" for i in range(num_items)]
        return SemanticIdTokenizer.from_codes(item_ids, codes, self.codebook_size, max_len=self.seq_length)

    def get_model(self, tok: SemanticIdTokenizer, **overrides) -> QBert4RecForMaskedItemModeling:
        torch.manual_seed(0)
        model = QBert4RecForMaskedItemModeling(self.get_config(**overrides))
        model.set_item_codes(tok.item_codes)
        return model

    def histories(self, tok: SemanticIdTokenizer, seed: int = 0) -> list:
        generator = torch.Generator().manual_seed(seed)
        return [[tok.item_ids[i] for i in torch.randint(0, self.num_items, (length,), generator=generator)]
                for length in self.history_lengths]

    def prepare_inputs(self, tok: SemanticIdTokenizer, seed: int = 0) -> dict:
        """Tokenizer output: `item_indices` and `attention_mask` `(3, 7)`."""
        return dict(tok(self.histories(tok, seed), return_tensors="pt"))

    def prepare_masked_inputs(self, tok: SemanticIdTokenizer, seed: int = 0) -> dict:
        """Masked item modelling inputs: the newest item of each row and position 2 of the full row masked; `labels`
        `(3, 7)` hold the masked item indices, -100 elsewhere."""
        inputs = self.prepare_inputs(tok, seed)
        masked = torch.zeros(self.batch_size, self.seq_length, dtype=torch.bool)
        masked[:, -1] = True
        masked[0, 2] = True
        labels = inputs["item_indices"].masked_fill(~masked, -100)
        inputs["item_indices"] = inputs["item_indices"].masked_fill(masked, mask_index(self.num_items))
        return {**inputs, "labels": labels}


tester = QBert4RecModelTester()


@pytest.fixture
def tok():
    return tester.get_tokenizer()


@pytest.fixture
def model(tok):
    return tester.get_model(tok).eval()


# Shapes.
@pytest.mark.parametrize("use_item_embedding", [False, True])
def test_encoder_output_shape(tok, model, use_item_embedding):
    encoder = QBert4RecModel(tester.get_config(use_item_embedding=use_item_embedding)).eval()
    inputs = tester.prepare_inputs(tok)
    tokens = model.code_tokens(inputs["item_indices"])  # (3, 7, 3): the bare encoder takes code token ids
    out = encoder(tokens, inputs["attention_mask"], inputs["item_indices"])
    assert out.last_hidden_state.shape == (3, 7, 32)


def test_code_tokens_are_the_catalogues_token_ids(tok, model):
    item_indices = torch.tensor([[padding_index(20), 0, 19], [3, mask_index(20), 7]])
    tokens = model.code_tokens(item_indices)
    assert tokens.shape == (2, 3, 3)
    assert (tokens[0, 0] == tok.pad_token_id).all() and (tokens[1, 1] == tok.mask_token_id).all()
    expected = code_token_ids(tok.item_codes, tester.codebook_size)  # (20, 3)
    for row, column in [(0, 1), (0, 2), (1, 0), (1, 2)]:
        assert torch.equal(tokens[row, column], expected[item_indices[row, column]])
    assert tok.convert_ids_to_tokens(tokens[1, 0].tolist()) == tok.tokenize(tok.item_ids[3])


def test_masked_item_modeling_output_shapes(tok, model):
    inputs = tester.prepare_masked_inputs(tok)
    out = model(**{k: v for k, v in inputs.items() if k != "labels"})
    assert isinstance(out, QBert4RecMaskedItemOutput) and out.loss is None
    assert out.logits.shape == (3, 7, 3, 8)
    assert out.last_hidden_state.shape == (3, 7, 32)
    out = model(**inputs)
    assert out.loss.shape == ()
    assert out.logits.shape == (4, 3, 8)  # 4 labelled positions only (sparse prediction)
    assert out.last_hidden_state is None  # no shape that changes with the labels


def test_attention_mask_defaults_to_the_non_padding_positions(tok, model):
    inputs = tester.prepare_masked_inputs(tok)
    assert (inputs["attention_mask"] == 0).any()
    without = {k: v for k, v in inputs.items() if k != "attention_mask"}
    torch.testing.assert_close(model(**without).loss, model(**inputs).loss)
    plain = tester.prepare_inputs(tok)
    torch.testing.assert_close(model.score_items(plain["item_indices"]), model.score_items(**plain))


def test_scoring_and_recommend_shapes(tok, model):
    inputs = tester.prepare_inputs(tok)
    assert model.score_items(**inputs).shape == (3, 20)
    out = model.recommend(**inputs, top_k=5)
    assert isinstance(out, QBert4RecRecommendationOutput)
    assert out.item_indices.shape == out.scores.shape == (3, 5)
    assert out.item_indices.dtype == torch.long


# Loss and gradients.
@pytest.mark.parametrize("loss_type", ["codes", "items", "codes+items"])
def test_loss_matches_its_definition(tok, loss_type):
    """codes: mean cross-entropy over levels and masked positions; items: cross-entropy over the catalogue of the
    item logits (sum of the item's code logits); codes+items: their sum."""
    model = tester.get_model(tok, loss_type=loss_type).eval()
    inputs = tester.prepare_masked_inputs(tok)
    out = model(**inputs)
    full_logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits  # (3, 7, 3, 8)
    labelled = inputs["labels"] != -100
    targets = inputs["labels"][labelled]  # (4,) item indices
    logits, codes = full_logits[labelled], tok.item_codes[targets]  # (4, 3, 8), (4, 3)
    codes_loss = F.cross_entropy(logits.reshape(-1, 8), codes.reshape(-1))
    item_logits = torch.stack([sum(logits[:, level, tok.item_codes[i, level]] for level in range(3))
                               for i in range(tester.num_items)], dim=1)  # (4, 20)
    items_loss = F.cross_entropy(item_logits, targets)
    expected = {"codes": codes_loss, "items": items_loss, "codes+items": codes_loss + items_loss}[loss_type]
    torch.testing.assert_close(out.loss, expected)
    assert (out.logits is None) == (loss_type == "items")  # the catalogue loss alone computes no code logits


@pytest.mark.parametrize("score_item_embedding", [False, True])
def test_blocked_catalogue_loss_equals_the_one_pass_loss_and_gradients(tok, monkeypatch, score_item_embedding):
    """Above ITEM_LOSS_BLOCK masked positions the catalogue loss runs in checkpointed blocks: same value, same grads."""
    import modeling_qbert4rec

    model = tester.get_model(tok, loss_type="items", use_item_embedding=True, score_item_embedding=score_item_embedding)
    inputs = tester.prepare_masked_inputs(tok)  # 4 labelled positions
    results = []
    for block in (1024, 3, 1):  # one pass; blocks of 3 + 1; blocks of 1
        monkeypatch.setattr(modeling_qbert4rec, "ITEM_LOSS_BLOCK", block)
        model.zero_grad()
        loss = model.eval()(**inputs).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0])
        assert grads.keys() == results[0][1].keys()
        for name in grads:
            torch.testing.assert_close(grads[name], results[0][1][name], msg=name)


@pytest.mark.parametrize("trained", ["all", "states"])
def test_catalogue_cross_entropy_matches_autograd(monkeypatch, trained):
    """The fused loss's value and gradients are those of `F.cross_entropy` over the full logits, across blocks."""
    import modeling_qbert4rec

    monkeypatch.setattr(modeling_qbert4rec, "ITEM_LOSS_BLOCK", 3)  # 7 rows: blocks of 3, 3, 1
    g = torch.Generator().manual_seed(0)
    states, embeddings, bias = torch.randn(7, 5, generator=g), torch.randn(11, 5, generator=g), torch.randn(11, generator=g)
    targets = torch.tensor([0, 3, 3, 10, 7, 1, 0])
    results = []
    for fused in (False, True):
        leaves = [t.clone().requires_grad_(trained == "all" or i == 0) for i, t in enumerate((states, embeddings, bias))]
        if fused:
            loss = modeling_qbert4rec.CatalogueCrossEntropy.apply(leaves[0], targets, leaves[1], leaves[2])
        else:
            loss = F.cross_entropy(F.linear(leaves[0], leaves[1], leaves[2]), targets, reduction="sum")
        (2.5 * loss).backward()  # a scaled upstream gradient reaches every input
        results.append((loss.detach(), [t.grad for t in leaves]))
    (reference, reference_grads), (loss, grads) = results
    torch.testing.assert_close(loss, reference)
    for grad, expected in zip(grads, reference_grads, strict=True):
        assert (grad is None) == (expected is None)
        if expected is not None:
            torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("loss_type", ["codes", "items", "codes+items"])
def test_last_position_labels_give_the_full_encoders_loss_and_gradients(tok, monkeypatch, loss_type):
    """Fine-tuning labels the appended [MASK] alone: the last layer computes that position only, with the loss and
    gradients of the whole encoder's last row."""
    inputs = tester.prepare_inputs(tok)
    labels = torch.full_like(inputs["item_indices"], -100)
    labels[:, -1] = inputs["item_indices"][:, -1]  # the newest item of each row is the target
    inputs["item_indices"] = inputs["item_indices"].clone()
    inputs["item_indices"][:, -1] = mask_index(tester.num_items)

    def loss_and_gradients(model):
        out = model(**inputs, labels=labels)
        out.loss.backward()
        return out, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    model = tester.get_model(tok, use_item_embedding=True, loss_type=loss_type).eval()
    encoder_forward, shortcuts = model.qbert4rec.encoder.forward, []

    def spy(hidden, mask, last_position_only=False):
        shortcuts.append(last_position_only)
        return encoder_forward(hidden, mask, last_position_only)

    monkeypatch.setattr(model.qbert4rec.encoder, "forward", spy)
    out, gradients = loss_and_gradients(model)
    assert shortcuts == [True]  # the shortcut was taken: the comparison below is not between two full encoders
    reference = tester.get_model(tok, use_item_embedding=True, loss_type=loss_type).eval()
    full_encoder = reference.qbert4rec.encoder.forward  # every position through every layer, then the last row
    monkeypatch.setattr(reference.qbert4rec.encoder, "forward",
                        lambda hidden, mask, last_position_only=False: full_encoder(hidden, mask)[:, -1:])
    expected, expected_gradients = loss_and_gradients(reference)
    torch.testing.assert_close(out.loss, expected.loss)
    assert gradients.keys() == expected_gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, expected_gradients[name], msg=name)


def test_loss_without_labelled_positions_is_zero_not_nan(tok, model):
    inputs = tester.prepare_masked_inputs(tok)
    inputs["labels"] = torch.full_like(inputs["labels"], -100)
    loss = model.train()(**inputs).loss
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph: a training step on such a batch does not crash


@pytest.mark.parametrize("use_item_embedding", [False, True])
def test_finite_loss_and_gradients_reach_every_parameter(tok, use_item_embedding):
    model = tester.get_model(tok, use_item_embedding=use_item_embedding).train()
    loss = model(**tester.prepare_masked_inputs(tok)).loss
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    names = [name for name, _ in model.named_parameters()]
    assert any("item_embeddings" in name for name in names) == use_item_embedding
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} gets an all-zero gradient"


# Padding.
@pytest.mark.parametrize("use_item_embedding", [False, True])
def test_more_left_padding_gives_the_same_scores(tok, use_item_embedding):
    model = tester.get_model(tok, use_item_embedding=use_item_embedding).eval()
    histories = tester.histories(tok)
    batched = model.score_items(**tok(histories, return_tensors="pt"))  # rows 1 and 2 are left-padded to 7
    for row, history in enumerate(histories):
        alone = model.score_items(**tok([history], return_tensors="pt"))  # no padding at all
        torch.testing.assert_close(batched[row : row + 1], alone, rtol=1e-5, atol=1e-5)
    # The check can fail: a different history scores differently.
    assert not torch.allclose(batched[1], batched[2], atol=1e-3)


@pytest.mark.parametrize("use_item_embedding", [False, True])
def test_padding_positions_content_changes_nothing(tok, use_item_embedding):
    model = tester.get_model(tok, use_item_embedding=use_item_embedding).eval()
    inputs = tester.prepare_inputs(tok)
    padding = inputs["attention_mask"] == 0
    # Fill every padding position with a real item (codes and index consistent), keep the attention mask.
    noise = torch.randint(0, tester.num_items, padding.shape, generator=torch.Generator().manual_seed(1))
    noisy = dict(inputs)
    noisy["item_indices"] = torch.where(padding, noise, inputs["item_indices"])
    assert not torch.equal(noisy["item_indices"], inputs["item_indices"])
    torch.testing.assert_close(model.score_items(**noisy), model.score_items(**inputs))
    real = ~padding
    torch.testing.assert_close(model(**noisy).logits[real], model(**inputs).logits[real])


def test_history_longer_than_the_model_keeps_its_newest_items(tok, model):
    history = tok.item_ids[:8]  # 8 items + [MASK] > max_position_embeddings = 8
    long = model.score_items(**tok([history], return_tensors="pt", max_len=8))
    newest = model.score_items(**tok([history[1:]], return_tensors="pt"))
    torch.testing.assert_close(long, newest)


# Causal attention (the SASRec baseline).
def test_causal_attention_never_looks_at_later_positions(tok):
    model = tester.get_model(tok, is_causal=True).eval()
    inputs = tester.prepare_inputs(tok)
    changed = {key: value.clone() for key, value in inputs.items()}
    changed["item_indices"][:, -1] = (changed["item_indices"][:, -1] + 1) % tester.num_items  # another newest item
    before, after = model(**inputs).last_hidden_state, model(**changed).last_hidden_state
    torch.testing.assert_close(after[:, :-1], before[:, :-1])
    assert not torch.allclose(after[:, -1], before[:, -1])
    bidirectional = tester.get_model(tok).eval()  # the check can fail: bidirectional attention looks ahead
    assert not torch.allclose(bidirectional(**changed).last_hidden_state[0, :-1],
                              bidirectional(**inputs).last_hidden_state[0, :-1])


def test_causal_scores_come_from_the_newest_position_and_ignore_padding(tok):
    model = tester.get_model(tok, is_causal=True).eval()
    histories = tester.histories(tok)
    inputs = tok(histories, return_tensors="pt")
    logits = model(**inputs).logits[:, -1]  # (B, L, K) at the newest item, no [MASK]
    reference = sum(logits[:, level, tok.item_codes[:, level]] for level in range(3))  # (B, num_items)
    torch.testing.assert_close(model.score_items(**inputs), reference)
    for row, history in enumerate(histories):
        alone = model.score_items(**tok([history], return_tensors="pt"))
        torch.testing.assert_close(model.score_items(**inputs)[row : row + 1], alone, rtol=1e-5, atol=1e-5)


def test_causal_model_refuses_right_padded_histories(tok):
    model = tester.get_model(tok, is_causal=True).eval()
    flipped = {key: value.flip(1) for key, value in tester.prepare_inputs(tok).items()}
    with pytest.raises(ValueError, match=r"histories must be left-padded \(newest item last\)"):
        model.recommend(**flipped, top_k=3)


# Determinism and save/load.
def test_eval_is_deterministic_and_train_is_not(tok, model):
    inputs = tester.prepare_inputs(tok)
    assert torch.equal(model.score_items(**inputs), model.score_items(**inputs))
    model.train()
    assert not torch.equal(model.score_items(**inputs), model.score_items(**inputs))  # dropout is on


@pytest.mark.parametrize("use_item_embedding", [False, True])
def test_save_load_gives_identical_outputs(tok, tmp_path, use_item_embedding):
    model = tester.get_model(tok, use_item_embedding=use_item_embedding).eval()
    model.save_pretrained(tmp_path)
    inputs = tester.prepare_masked_inputs(tok)
    expected = model(**inputs)
    for reloaded in (
        QBert4RecForMaskedItemModeling.from_pretrained(tmp_path),
        AutoModel.from_pretrained(tmp_path, trust_remote_code=True),
    ):
        assert not reloaded.training
        assert torch.equal(reloaded.item_codes, tok.item_codes)  # the catalogue travels with the weights
        got = reloaded(**inputs)
        assert torch.equal(got.loss, expected.loss) and torch.equal(got.logits, expected.logits)
        plain = {k: v for k, v in inputs.items() if k != "labels"}
        assert torch.equal(reloaded.score_items(**plain), model.score_items(**plain))


def test_auto_model_returns_the_recommending_model(tok, tmp_path, model):
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(reloaded).__name__ == "QBert4RecForMaskedItemModeling"
    inputs = tester.prepare_inputs(tok)
    assert torch.equal(reloaded.recommend(**inputs, top_k=4).item_indices, model.recommend(**inputs, top_k=4).item_indices)


# The state dict of the tester's config with every optional part (use_item_embedding, seen_item_bias), as
# `modeling_qbert4rec.py` wrote it before inputs became item indices (commit d62b4d0, when the tokenizer also returned
# `input_ids`): checkpoints exported then must still load, so these keys and shapes may not move.
PREVIOUS_STATE_DICT_SHAPES = {
    "item_codes": (20, 3),
    "qbert4rec.embeddings.code_embeddings.weight": (28, 32),
    "qbert4rec.embeddings.position_embeddings.weight": (8, 32),
    "qbert4rec.embeddings.item_embeddings.weight": (22, 32),
    "qbert4rec.embeddings.LayerNorm.weight": (32,),
    "qbert4rec.embeddings.LayerNorm.bias": (32,),
    **{
        f"qbert4rec.encoder.layers.{layer}.{name}": shape
        for layer in range(2)
        for name, shape in {
            "attention_norm.weight": (32,), "attention_norm.bias": (32,),
            "attention.qkv.weight": (96, 32), "attention.qkv.bias": (96,),
            "attention.output.weight": (32, 32), "attention.output.bias": (32,),
            "ffn_norm.weight": (32,), "ffn_norm.bias": (32,),
            "ffn.0.weight": (37, 32), "ffn.0.bias": (37,), "ffn.2.weight": (32, 37), "ffn.2.bias": (32,),
        }.items()
    },
    "qbert4rec.encoder.final_norm.weight": (32,),
    "qbert4rec.encoder.final_norm.bias": (32,),
    "head.bias": (3, 8),
    "head.seen_item_bias": (),
    "head.dense.weight": (32, 32),
    "head.dense.bias": (32,),
    "head.LayerNorm.weight": (32,),
    "head.LayerNorm.bias": (32,),
}
OPTIONAL_KEYS = {"use_item_embedding": "qbert4rec.embeddings.item_embeddings.weight", "seen_item_bias": "head.seen_item_bias"}


@pytest.mark.parametrize("optional", [(), ("use_item_embedding",), ("use_item_embedding", "seen_item_bias")])
def test_saved_state_dict_keeps_the_previous_keys_and_shapes(tok, tmp_path, optional):
    """A checkpoint saved before the restructure (same keys: the `item_codes` buffer, code embeddings, ...) loads."""
    from safetensors.torch import load_file

    model = tester.get_model(tok, **{flag: True for flag in optional}).eval()
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    expected = {key: shape for key, shape in PREVIOUS_STATE_DICT_SHAPES.items()
                if key not in {OPTIONAL_KEYS[flag] for flag in OPTIONAL_KEYS.keys() - set(optional)}}
    assert {key: tuple(tensor.shape) for key, tensor in saved.items()} == expected
    loaded, info = QBert4RecForMaskedItemModeling.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert torch.equal(loaded.item_codes, tok.item_codes)


# Initialisation.
def test_init_with_tiny_range_gives_zero_weights_and_unit_norms(tok):
    """transformers' `_config_zero_init` check: every parameter goes through `_init_weights`."""
    model = tester.get_model(tok, initializer_range=1e-10, use_item_embedding=True)
    for name, parameter in model.named_parameters():
        mean = ((parameter.data.mean() * 1e9).round() / 1e9).item()
        expected = 1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0
        assert mean == expected, f"{name} is not initialised by _init_weights (mean {mean})"


def test_init_uses_initializer_range(tok):
    model = tester.get_model(tok, initializer_range=0.02, use_item_embedding=True)
    embeddings = model.qbert4rec.embeddings
    code_rows = embeddings.code_embeddings.weight[4:]
    assert 0.015 < code_rows.std().item() < 0.025
    assert (embeddings.code_embeddings.weight[0] == 0).all()  # [PAD] row
    assert (embeddings.item_embeddings.weight[tester.num_items] == 0).all()  # padding item row
    assert (model.head.bias == 0).all()


# Scoring the catalogue.
@pytest.mark.parametrize("is_causal", [False, True])
def test_last_position_only_equals_the_last_row_of_the_full_encoder(tok, is_causal):
    model = tester.get_model(tok, is_causal=is_causal).eval()
    inputs = tester.prepare_inputs(tok)  # left-padded rows of 7, 4 and 1 items
    encoder_inputs = (model.code_tokens(inputs["item_indices"]), inputs["attention_mask"], inputs["item_indices"])
    full = model.qbert4rec(*encoder_inputs).last_hidden_state  # (3, 7, 32)
    last = model.qbert4rec(*encoder_inputs, last_position_only=True).last_hidden_state  # (3, 1, 32)
    assert last.shape == (3, 1, tester.hidden_size)
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_score_items_equals_a_slow_reference(tok, model):
    inputs = tester.prepare_inputs(tok)
    batch = inputs["item_indices"].shape[0]
    # Reference: append [MASK], run the forward pass, then for each item sum its codes' logits.
    logits = model(
        item_indices=torch.cat([inputs["item_indices"], torch.full((batch, 1), mask_index(tester.num_items))], dim=1),
        attention_mask=torch.cat([inputs["attention_mask"], torch.ones(batch, 1, dtype=torch.long)], dim=1),
    ).logits[:, -1]  # (B, L, K)
    reference = torch.tensor(
        [[sum(logits[b, level, tok.item_codes[i, level]].item() for level in range(3)) for i in range(20)]
         for b in range(batch)]
    )
    torch.testing.assert_close(model.score_items(**inputs), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flags", [{}, {"use_item_embedding": True, "score_item_embedding": True},
                                   {"seen_item_bias": True}, {"is_causal": True}],
                         ids=["plain", "score_item_embedding", "seen_item_bias", "causal"])
def test_score_items_is_item_scores_of_history_states(tok, flags):
    """One scoring path: `score_items` (hence `recommend`) = `item_scores(history_states(...))`, which evaluation uses,
    and `item_scores` = `catalogue_scores` over the item table."""
    model = tester.get_model(tok, **flags).eval()
    if model.head.seen_item_bias is not None:
        with torch.no_grad():
            model.head.seen_item_bias.fill_(-1.5)  # not 0, so that leaving it out would show
    inputs = tester.prepare_inputs(tok)
    states = model.history_states(**inputs)
    assert states.shape == (3, tester.hidden_size)
    scores = model.item_scores(states, inputs["item_indices"])
    assert scores.shape == (3, tester.num_items)
    torch.testing.assert_close(model.score_items(**inputs), scores)
    seen = () if model.head.seen_item_bias is None else seen_item_columns(inputs["item_indices"], tester.num_items)
    if seen:
        seen = (seen[0], seen[1] * model.head.seen_item_bias)
    torch.testing.assert_close(catalogue_scores(states, *model._item_table(), *seen), scores)
    top = model.recommend(**inputs, top_k=tester.num_items)
    torch.testing.assert_close(top.scores, scores.gather(1, top.item_indices))


def test_catalogue_scores_add_the_seen_values_once_per_column():
    g = torch.Generator().manual_seed(0)
    states, embeddings, bias = torch.randn(2, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    columns, weights = seen_item_columns(torch.tensor([[1, 1, 3, 5], [6, 5, 5, 0]]), 5)  # 5, 6: padding, [MASK]
    scores = catalogue_scores(states, embeddings, bias, columns, weights * 2.0)
    expected = states @ embeddings.T + bias
    expected[0, [1, 3]] += 2.0
    expected[1, 0] += 2.0
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(catalogue_scores(states, embeddings, bias), states @ embeddings.T + bias)


@pytest.mark.parametrize("score_item_embedding", [False, True])
def test_cached_item_table_follows_every_weight_change(tok, score_item_embedding):
    """Inference reuses the item table; an optimiser step or a loaded state dict rebuilds it; training never caches."""
    flags = dict(use_item_embedding=score_item_embedding, score_item_embedding=score_item_embedding)
    model = tester.get_model(tok, **flags)
    inputs = tester.prepare_inputs(tok)
    with torch.no_grad():
        first = model._item_table()
        assert model._item_table() is first
    with torch.enable_grad():
        assert model._item_table() is not first  # with gradients the table is part of the graph: never cached
    masked = tester.prepare_masked_inputs(tok)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.train()
    model(**masked).loss.backward()
    optimizer.step()
    model.eval()
    with torch.inference_mode():
        after_step = model.score_items(**inputs)
    fresh = tester.get_model(tok, **flags).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(after_step, fresh.score_items(**inputs))
        before_load = model.score_items(**inputs)
        model.load_state_dict(tester.get_model(tok, **flags).state_dict())  # back to the initial weights
        torch.testing.assert_close(model._item_table()[0], first[0])
        assert not torch.allclose(model.score_items(**inputs), before_load)


@pytest.mark.parametrize("use_item_embedding", [False, True])
def test_inference_input_table_gives_the_encoder_the_same_embeddings(tok, use_item_embedding):
    """Without gradients, histories are looked up in the cached input table; the states are those of the code sums,
    and follow an in-place weight change."""
    model = tester.get_model(tok, use_item_embedding=use_item_embedding).eval()
    inputs = tester.prepare_inputs(tok)  # left-padded histories of different lengths
    assert (inputs["attention_mask"] == 0).any()
    with torch.enable_grad():
        summed = model.history_states(**inputs).detach()  # the per-position code sums
    with torch.no_grad():
        torch.testing.assert_close(model.history_states(**inputs), summed)
        assert model._input_table() is model._input_table()  # cached
        model.qbert4rec.embeddings.code_embeddings.weight.mul_(2.0)
        with torch.enable_grad():
            changed = model.history_states(**inputs).detach()
        assert not torch.allclose(changed, summed)
        torch.testing.assert_close(model.history_states(**inputs), changed)


def test_recommend_ranks_by_score_and_respects_top_k(tok, model):
    inputs = tester.prepare_inputs(tok)
    scores = model.score_items(**inputs)
    for top_k in (1, 7, 20):
        out = model.recommend(**inputs, top_k=top_k)
        assert out.item_indices.shape == (3, top_k)
        assert ((out.item_indices >= 0) & (out.item_indices < tester.num_items)).all()
        assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()  # best first
        torch.testing.assert_close(out.scores, scores.gather(1, out.item_indices))
        torch.testing.assert_close(out.scores[:, 0], scores.max(dim=1).values)
    every = model.recommend(**inputs, top_k=20).item_indices
    assert all(sorted(row) == list(range(20)) for row in every.tolist())  # never padding or [MASK]


def test_recommend_keeps_history_items_unless_excluded(tok, model):
    inputs = tester.prepare_inputs(tok)
    history_sets = [set(row[mask.bool()].tolist()) for row, mask in zip(inputs["item_indices"], inputs["attention_mask"])]
    top_k = tester.num_items - max(len(s) for s in history_sets)
    kept = model.recommend(**inputs, top_k=tester.num_items).item_indices
    assert all(s <= set(row) for s, row in zip(history_sets, kept.tolist()))  # the default keeps them as candidates
    out = model.recommend(**inputs, top_k=top_k, exclude_history=True)
    for history, row, scores in zip(history_sets, out.item_indices.tolist(), out.scores):
        assert history.isdisjoint(row)
        assert torch.isfinite(scores).all()


def test_exclude_history_refuses_a_top_k_it_cannot_fill(tok, model):
    batch = tok([tok.item_ids[:2], tok.item_ids[:7]], return_tensors="pt")  # 18 and 13 candidates left
    assert model.recommend(**batch, top_k=13, exclude_history=True).item_indices.shape == (2, 13)
    with pytest.raises(ValueError, match=r"top_k=14 exceeds the 13 items left in history 1 after exclude_history"):
        model.recommend(**batch, top_k=14, exclude_history=True)


def test_recommend_through_the_tokenizer_returns_item_ids(tok, model):
    batch = tok([[tok.item_ids[3], tok.item_ids[4]], [tok.item_ids[9]]], return_tensors="pt")
    out = model.recommend(**batch, top_k=10)
    decoded = tok.decode_items(out.item_indices)
    assert len(decoded) == 2 and all(len(row) == 10 and set(row) <= set(tok.item_ids) for row in decoded)


# Bad input.
def test_forgetting_return_tensors_is_refused_saying_so(tok, model):
    lists = tok(tester.histories(tok))  # no return_tensors="pt": nested lists
    message = r"item_indices must be a tensor, got list: call the tokenizer with return_tensors='pt'"
    with pytest.raises(TypeError, match=message):
        model.recommend(**lists)
    with pytest.raises(TypeError, match=message):
        model.score_items(**lists)
    with pytest.raises(TypeError, match=message):
        model(**lists)
    tensors = tok(tester.histories(tok), return_tensors="pt")
    with pytest.raises(TypeError, match=r"attention_mask must be a tensor, got list: call the tokenizer with"):
        model.recommend(tensors["item_indices"], lists["attention_mask"])


def test_wrong_input_shape_is_refused(tok, model):
    inputs = tester.prepare_inputs(tok)
    with pytest.raises(ValueError, match=r"item_indices must have shape \(batch, seq_len\), got \(3, 7, 1\)"):
        model(inputs["item_indices"][..., None], inputs["attention_mask"])
    with pytest.raises(ValueError, match=r"item_indices must have shape \(batch, seq_len\), got \(7,\)"):
        model.recommend(inputs["item_indices"][0])
    tokens = model.code_tokens(inputs["item_indices"])
    with pytest.raises(ValueError, match=r"input_ids must have shape \(batch, seq_len, num_codebooks=3\), got \(3, 7\)"):
        model.qbert4rec(tokens[..., 0], inputs["attention_mask"])
    with pytest.raises(ValueError, match=r"num_codebooks=3\), got \(3, 7, 2\)"):
        model.qbert4rec(tokens[..., :2], inputs["attention_mask"])


def test_too_long_sequence_is_refused(tok, model):
    item_indices = torch.arange(9)[None]  # (1, 9) > max_position_embeddings = 8
    for grad in (True, False):  # code token ids with gradients, the cached input table without
        with torch.set_grad_enabled(grad), pytest.raises(
            ValueError, match=r"sequence of 9 positions exceeds max_position_embeddings=8"
        ):
            model(item_indices, torch.ones(1, 9, dtype=torch.long))


def test_right_padded_history_is_refused(tok, model):
    inputs = tester.prepare_inputs(tok)
    flipped = {key: value.flip(1) for key, value in inputs.items()}  # padding now on the right
    with pytest.raises(ValueError, match=r"histories must be left-padded \(newest item last\)"):
        model.recommend(**flipped, top_k=3)


@pytest.mark.parametrize("top_k", [0, 21, -3])
def test_top_k_out_of_range_is_refused(tok, model, top_k):
    with pytest.raises(ValueError, match=rf"top_k must be in \[1, 20\] \(the catalogue.s 20 items, less 0 retired\), got {top_k}"):
        model.recommend(**tester.prepare_inputs(tok), top_k=top_k)


def test_labels_of_the_wrong_shape_are_refused(tok, model):
    inputs = tester.prepare_masked_inputs(tok)
    inputs["labels"] = inputs["labels"][..., None]
    with pytest.raises(ValueError, match=r"labels must have the shape of item_indices \(3, 7\), got \(3, 7, 1\)"):
        model(**inputs)


@pytest.mark.parametrize("label", [mask_index(20), padding_index(20), -1])
def test_labels_outside_the_catalogue_are_refused(tok, model, label):
    inputs = tester.prepare_masked_inputs(tok)
    inputs["labels"][0, -1] = label
    with pytest.raises(ValueError, match=r"labels must be item indices in \[0, 20\) or -100"):
        model(**inputs)


def test_bare_encoder_with_item_embeddings_needs_item_indices(tok, model):
    encoder = QBert4RecModel(tester.get_config(use_item_embedding=True)).eval()
    inputs = tester.prepare_inputs(tok)
    with pytest.raises(ValueError, match=r"use_item_embedding=True\): pass item_indices"):
        encoder(model.code_tokens(inputs["item_indices"]), inputs["attention_mask"])


def test_set_item_codes_refuses_a_wrong_table(tok, model):
    with pytest.raises(ValueError, match=r"item_codes must have shape \(20, 3\), got \(19, 3\)"):
        model.set_item_codes(tok.item_codes[:19])
    bad = tok.item_codes.clone()
    bad[0, 0] = 8
    with pytest.raises(ValueError, match=r"item codes must lie in \[0, codebook_size=8\)"):
        model.set_item_codes(bad)


def test_check_tokenizer_accepts_its_own_and_refuses_another_table(tok, model):
    model.check_tokenizer(tok)
    with pytest.raises(ValueError, match=r"different item tables \(tokenizer: 25 items x 3 codes of 8; model: 20 x 3 of 8\)"):
        model.check_tokenizer(tester.get_tokenizer(num_items=25))
    with pytest.raises(ValueError, match=r"different item tables.*same shapes but different codes.*same checkpoint"):
        model.check_tokenizer(tester.get_tokenizer(seed=1))


def test_score_items_refuses_item_indices_outside_the_catalogue(tok, model):
    bigger = tester.get_tokenizer(num_items=25)
    batch = bigger([[bigger.item_ids[24]]], return_tensors="pt")  # item index 24 is beyond the model's 20 items
    message = r"item_indices outside \[0, 21\]: the tokenizer was built for a different item table than this model"
    with pytest.raises(ValueError, match=message):
        model.score_items(**batch)
    with pytest.raises(ValueError, match=message):
        model.recommend(**batch, top_k=3)
    with pytest.raises(ValueError, match=r"item_indices outside \[0, 21\]"):
        model(torch.tensor([[-1, 3]]))


def test_empty_history_still_gets_recommendations(tok, model):
    batch = tok([[], [tok.item_ids[0]]], return_tensors="pt")  # logs a warning: see tests/test_tokenization.py
    out = model.recommend(**batch, top_k=3, exclude_history=True)
    assert torch.isfinite(out.scores).all() and out.item_indices.shape == (2, 3)
    assert 0 not in out.item_indices[1].tolist()


# The learned logit for history items (seen_item_bias).
def test_seen_item_bias_adds_one_logit_to_each_distinct_history_item(tok):
    inputs = tester.prepare_inputs(tok)
    inputs["item_indices"][0, :2] = inputs["item_indices"][0, 2]  # a repeated item still gets the logit once
    model = tester.get_model(tok, seen_item_bias=True).eval()
    unbiased = model.score_items(**inputs)
    with torch.no_grad():
        model.head.seen_item_bias.fill_(-3.0)
    seen = torch.zeros_like(unbiased, dtype=torch.bool)
    for row, (items, mask) in enumerate(zip(inputs["item_indices"], inputs["attention_mask"])):
        seen[row, items[mask.bool()]] = True
    torch.testing.assert_close(model.score_items(**inputs) - unbiased, -3.0 * seen.float())


@pytest.mark.parametrize("is_causal", [False, True])
def test_seen_item_bias_loss_and_gradient_match_a_reference(tok, monkeypatch, is_causal):
    """The fused loss with the seen-item logit equals `F.cross_entropy` over full logits biased at the items each
    labelled position has seen: the unmasked items of its row, or with `is_causal` those up to it."""
    import modeling_qbert4rec

    monkeypatch.setattr(modeling_qbert4rec, "ITEM_LOSS_BLOCK", 2)
    inputs = tester.prepare_inputs(tok) if is_causal else tester.prepare_masked_inputs(tok)
    labels = inputs.pop("labels", None)
    if is_causal:  # every real position predicts some item
        labels = torch.randint(0, tester.num_items, (3, 7), generator=torch.Generator().manual_seed(1))
        labels = labels.masked_fill(~inputs["attention_mask"].bool(), -100)
    model = tester.get_model(tok, seen_item_bias=True, loss_type="items", is_causal=is_causal,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with torch.no_grad():
        model.head.seen_item_bias.fill_(-0.5)
    fused_loss = model(**inputs, labels=labels).loss
    fused_loss.backward()
    fused = model.head.seen_item_bias.grad.clone()
    model.zero_grad()

    item_indices = inputs["item_indices"]
    hidden = model.qbert4rec(model.code_tokens(item_indices), inputs["attention_mask"], item_indices).last_hidden_state
    rows, positions = (labels != -100).nonzero(as_tuple=True)
    states = model.head.transform(hidden[rows, positions])
    item_embeddings, item_bias = model._item_table()
    logits = F.linear(states, item_embeddings, item_bias)
    seen = torch.zeros_like(logits)
    histories = []  # (M, T): what each labelled position has seen, padding after it
    for m, (row, position) in enumerate(zip(rows.tolist(), positions.tolist())):
        visible = item_indices[row, : position + 1] if is_causal else item_indices[row]
        seen[m, visible[visible < tester.num_items]] = 1.0
        histories.append(F.pad(visible, (0, 7 - len(visible)), value=padding_index(tester.num_items)))
    targets = labels[rows, positions]
    reference = F.cross_entropy(logits + seen * model.head.seen_item_bias, targets)
    reference.backward()
    assert seen.any() and 0 < seen.mean() < 1
    torch.testing.assert_close(fused_loss, reference)
    torch.testing.assert_close(fused, model.head.seen_item_bias.grad)
    # The loss scores items as recommend does: cross-entropy over `item_scores`.
    with torch.no_grad():
        scored = F.cross_entropy(model.item_scores(states, torch.stack(histories)), targets)
    torch.testing.assert_close(fused_loss.detach(), scored)


def test_seen_item_bias_starts_at_zero_on_a_model_saved_without_it(tok, model, tmp_path):
    """finetune.py's `--seen_item_bias` loads a pretrained model with the logit added: 0, so the scores do not move."""
    inputs = tester.prepare_inputs(tok)
    model.save_pretrained(tmp_path)
    loaded = QBert4RecForMaskedItemModeling.from_pretrained(tmp_path, seen_item_bias=True).eval()
    assert loaded.head.seen_item_bias.item() == 0.0
    torch.testing.assert_close(loaded.score_items(**inputs), model.score_items(**inputs))
    with torch.no_grad():
        loaded.head.seen_item_bias.fill_(-2.0)
    loaded.save_pretrained(tmp_path / "again")
    assert QBert4RecForMaskedItemModeling.from_pretrained(tmp_path / "again").head.seen_item_bias.item() == -2.0


def test_seen_item_bias_scores_need_the_histories(tok):
    model = tester.get_model(tok, seen_item_bias=True).eval()
    states = model.history_states(**tester.prepare_inputs(tok))
    with pytest.raises(ValueError, match=r"adds a learned logit to history items \(seen_item_bias=True\): pass item_indices"):
        model.item_scores(states)
