"""QBert4RecConfig: JSON round trip, defaults, and a clear ValueError for every impossible value."""

import json

import pytest
from transformers import AutoConfig

from configuration_qbert4rec import QBert4RecConfig

TINY = dict(
    num_codebooks=3,
    codebook_size=8,
    num_items=20,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=8,
    use_item_embedding=True,
)


def _comparable(config: QBert4RecConfig) -> dict:
    """`to_dict()` without `_name_or_path`, the one key that legitimately changes on save/load."""
    values = config.to_dict()
    values.pop("_name_or_path", None)
    return values


def test_no_arg_init_gives_valid_defaults():
    config = QBert4RecConfig()
    assert config.model_type == "qbert4rec"
    assert config.vocab_size == config.num_special_tokens + config.num_codebooks * config.codebook_size
    assert config.hidden_size % config.num_attention_heads == 0
    specials = {config.pad_token_id, config.mask_token_id, config.unk_token_id, config.sep_token_id}
    assert len(specials) == 4 and max(specials) < config.num_special_tokens


def test_json_string_round_trip():
    config = QBert4RecConfig(**TINY)
    reloaded = QBert4RecConfig.from_dict(json.loads(config.to_json_string()))
    assert _comparable(reloaded) == _comparable(config)


def test_save_pretrained_round_trip(tmp_path):
    config = QBert4RecConfig(**TINY, hidden_act="relu", hidden_dropout_prob=0.0, loss_type="items", is_causal=True)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "qbert4rec" and saved["vocab_size"] == 4 + 3 * 8
    assert saved["loss_type"] == "items" and saved["is_causal"] is True
    reloaded = QBert4RecConfig.from_pretrained(tmp_path)
    assert _comparable(reloaded) == _comparable(config)


def test_auto_config_round_trip_with_remote_code(tmp_path):
    config = QBert4RecConfig(**TINY)
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_qbert4rec.QBert4RecConfig"
    }
    assert (tmp_path / "configuration_qbert4rec.py").is_file()
    reloaded = AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(reloaded).__name__ == "QBert4RecConfig"
    assert _comparable(reloaded) == _comparable(config)


def test_vocab_size_is_derived_not_trusted():
    config = QBert4RecConfig(**TINY, vocab_size=3)  # a stale value from an edited config.json is ignored
    assert config.vocab_size == 4 + 3 * 8


@pytest.mark.parametrize(
    "name", ["num_codebooks", "codebook_size", "num_items", "num_special_tokens", "hidden_size",
             "num_hidden_layers", "num_attention_heads", "intermediate_size"],
)
@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_non_positive_or_non_integer_size_is_refused(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got {value!r}"):
        QBert4RecConfig(**{**TINY, name: value})


def test_max_position_embeddings_below_two_is_refused():
    with pytest.raises(ValueError, match=r"max_position_embeddings must be at least 2 .*got 1"):
        QBert4RecConfig(**{**TINY, "max_position_embeddings": 1})


def test_hidden_size_not_multiple_of_heads_is_refused():
    with pytest.raises(ValueError, match=r"hidden_size \(30\) must be a multiple of num_attention_heads \(4\)"):
        QBert4RecConfig(**{**TINY, "hidden_size": 30})


@pytest.mark.parametrize("name", ["hidden_dropout_prob", "attention_probs_dropout_prob"])
@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_dropout_outside_unit_interval_is_refused(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be in \[0, 1\), got {value}"):
        QBert4RecConfig(**{**TINY, name: value})


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match=r"hidden_act must be 'gelu' or 'relu', got 'swish'"):
        QBert4RecConfig(**{**TINY, "hidden_act": "swish"})


@pytest.mark.parametrize("name", ["pad_token_id", "mask_token_id", "unk_token_id", "sep_token_id"])
@pytest.mark.parametrize("value", [-1, 4])
def test_special_token_id_outside_special_range_is_refused(name, value):
    with pytest.raises(ValueError, match=rf"{name} \({value}\) must be in \[0, num_special_tokens=4\)"):
        QBert4RecConfig(**{**TINY, name: value})


def test_colliding_special_token_ids_are_refused():
    with pytest.raises(ValueError, match=r"special token ids must be distinct, got .*'mask_token_id': 0"):
        QBert4RecConfig(**{**TINY, "mask_token_id": 0})


def test_unknown_loss_type_is_refused():
    with pytest.raises(ValueError, match=r"loss_type must be 'codes', 'items' or 'codes\+items', got 'mse'"):
        QBert4RecConfig(**{**TINY, "loss_type": "mse"})


def test_score_item_embedding_needs_item_embeddings():
    with pytest.raises(ValueError, match=r"score_item_embedding=True needs use_item_embedding=True"):
        QBert4RecConfig(**{**TINY, "use_item_embedding": False, "score_item_embedding": True})
    assert QBert4RecConfig(**TINY, score_item_embedding=True).score_item_embedding


@pytest.mark.parametrize("loss_type", ["items", "codes+items"])
def test_seen_item_bias_needs_the_catalogue_loss(loss_type):
    with pytest.raises(ValueError, match=r"seen_item_bias=True is trained by the catalogue loss: use loss_type 'items' "
                                         r"or 'codes\+items'"):
        QBert4RecConfig(**TINY, seen_item_bias=True, loss_type="codes")
    assert QBert4RecConfig(**TINY, seen_item_bias=True, loss_type=loss_type).seen_item_bias
