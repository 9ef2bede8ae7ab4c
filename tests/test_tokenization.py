"""The catalogue (padding and mask indices, code token ids, left padding) and SemanticIdTokenizer: round trips,
save/load identity, truncation, padding, rendering, empty histories and bad input."""

import json
import logging

import pytest
import torch
from transformers import AutoTokenizer

from tokenization_semantic_id import (
    NUM_SPECIAL_TOKENS,
    SPECIAL_TOKENS,
    SemanticIdTokenizer,
    code_token_ids,
    left_pad,
    mask_index,
    padding_index,
)

NUM_CODEBOOKS, CODEBOOK_SIZE, NUM_ITEMS = 3, 8, 20


def tiny_codes(num_items=NUM_ITEMS, seed=0) -> torch.Tensor:
    """`(num_items, 3)` unique code tuples: two random levels plus a disambiguation level (TIGER's scheme)."""
    generator = torch.Generator().manual_seed(seed)
    semantic = torch.randint(0, CODEBOOK_SIZE, (num_items, NUM_CODEBOOKS - 1), generator=generator)
    disambiguation = torch.zeros(num_items, 1, dtype=torch.long)
    seen = {}
    for i, row in enumerate(map(tuple, semantic.tolist())):
        disambiguation[i, 0] = seen.get(row, 0)
        seen[row] = seen.get(row, 0) + 1
    return torch.cat([semantic, disambiguation], dim=1)


def tiny_item_ids(num_items=NUM_ITEMS) -> list:
    return [f"B00ITEM{i:03d}" for i in range(num_items)]


@pytest.fixture
def tok():
    return SemanticIdTokenizer.from_codes(tiny_item_ids(), tiny_codes(), CODEBOOK_SIZE, max_len=5)


def _write_table(path, **overrides):
    table = {
        "num_codebooks": NUM_CODEBOOKS,
        "codebook_size": CODEBOOK_SIZE,
        "item_ids": tiny_item_ids(4),
        "codes": [[0, 0, 0], [0, 0, 1], [1, 2, 0], [7, 7, 7]],
    }
    table.update(overrides)
    path.write_text(json.dumps(table))


# The catalogue's facts.
def test_padding_and_mask_indices_follow_the_items():
    assert (padding_index(20), mask_index(20)) == (20, 21)
    assert (padding_index(1), mask_index(1)) == (1, 2)


def test_code_token_ids_give_each_level_its_own_span():
    codes = torch.tensor([[0, 0, 0], [7, 7, 7], [1, 2, 3]])
    assert code_token_ids(codes, CODEBOOK_SIZE).tolist() == [[4, 12, 20], [11, 19, 27], [5, 14, 23]]
    assert code_token_ids(codes[None], CODEBOOK_SIZE).shape == (1, 3, 3)  # any leading shape
    every_code = torch.arange(CODEBOOK_SIZE)[:, None].expand(-1, NUM_CODEBOOKS)
    assert sorted(code_token_ids(every_code, CODEBOOK_SIZE).flatten().tolist()) == list(
        range(NUM_SPECIAL_TOKENS, NUM_SPECIAL_TOKENS + NUM_CODEBOOKS * CODEBOOK_SIZE)
    )


def test_left_pad_keeps_the_newest_items_right_aligned():
    indices, valid = left_pad([[1, 2, 3, 4], [5], []], keep=3, pad=9)
    assert indices.tolist() == [[2, 3, 4], [9, 9, 5], [9, 9, 9]]
    assert valid.tolist() == [[True] * 3, [False, False, True], [False] * 3]
    assert indices.dtype == torch.long and valid.dtype == torch.bool
    indices, valid = left_pad([[1, 2], [5]], keep=3, pad=9, extra_slots=1)
    assert indices.tolist() == [[1, 2, 9], [9, 5, 9]] and valid[:, -1].tolist() == [False, False]
    indices, valid = left_pad([[1, 2], []], keep=0, pad=9, extra_slots=1)
    assert indices.tolist() == [[9], [9]] and not valid.any()
    with pytest.raises(ValueError, match=r"sequence 1: item indices must be ints, got \['a'\]"):
        left_pad([[1], ["a"]], keep=3, pad=9)


# Items -> inputs -> items.
def test_round_trip_items_to_inputs_to_items(tok):
    histories = [tok.item_ids[:4], tok.item_ids[10:12], [tok.item_ids[19]]]
    batch = tok(histories, return_tensors="pt")
    assert set(batch) == {"item_indices", "attention_mask"}
    assert batch["attention_mask"].shape == batch["item_indices"].shape == (3, 4)
    for row, history in enumerate(histories):
        real = batch["attention_mask"][row].bool()
        assert tok.decode_items(batch["item_indices"][row][real]) == history
    assert tok.encode_items(histories[0]) == [0, 1, 2, 3]
    assert tok.decode_items([[0, 1], [19]]) == [tok.item_ids[:2], [tok.item_ids[19]]]
    assert tok.decode_items(batch["item_indices"][0].numpy()) == histories[0]
    assert tok.decode_items(batch["item_indices"][0, -1]) == histories[0][-1]


def test_one_history_as_a_flat_list_is_a_batch_of_one(tok):
    assert tok(tok.item_ids[:2])["item_indices"] == [[0, 1]]


def test_return_lists_match_return_tensors(tok):
    histories = [tok.item_ids[:3], [tok.item_ids[5]]]
    as_lists, as_tensors = tok(histories), tok(histories, return_tensors="pt")
    assert set(as_lists) == set(as_tensors) == {"item_indices", "attention_mask"}
    for key in as_lists:
        assert as_lists[key] == as_tensors[key].tolist()


def test_left_padding_puts_the_newest_item_last(tok):
    batch = tok([tok.item_ids[:3], [tok.item_ids[7]]], return_tensors="pt")
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["item_indices"][1].tolist() == [NUM_ITEMS, NUM_ITEMS, 7]
    assert tok.padding_index == padding_index(NUM_ITEMS) == NUM_ITEMS


def test_truncation_keeps_the_newest_items(tok):
    history = tok.item_ids[:9]
    assert tok.decode_items(tok([history])["item_indices"])[0] == history[-5:]  # tokenizer max_len = 5
    assert tok.decode_items(tok([history], max_len=2)["item_indices"])[0] == history[-2:]


# Histories with no known item.
def test_empty_history_is_padding_and_logs_a_warning(tok, caplog):
    with caplog.at_level(logging.WARNING, logger="tokenization_semantic_id"):
        batch = tok([[], tok.item_ids[:2]], return_tensors="pt")
    assert batch["attention_mask"].tolist() == [[0, 0], [1, 1]]
    assert batch["item_indices"][0].tolist() == [NUM_ITEMS, NUM_ITEMS]
    assert ("1 of 2 histories (first: 0) hold no known item: they are scored from the [MASK] position alone"
            in caplog.text)
    assert "empty_histories='error'" in caplog.text


def test_all_empty_histories_are_one_padding_position(tok, caplog):
    with caplog.at_level(logging.WARNING, logger="tokenization_semantic_id"):
        batch = tok([[], []], return_tensors="pt")
    assert batch["item_indices"].tolist() == [[NUM_ITEMS], [NUM_ITEMS]]
    assert batch["attention_mask"].tolist() == [[0], [0]]
    assert "2 of 2 histories" in caplog.text


def test_history_whose_items_were_all_skipped_logs_a_warning(tok, caplog):
    histories = [tok.item_ids[:2], ["NOT-AN-ASIN", "ALSO-UNKNOWN"]]
    with caplog.at_level(logging.WARNING, logger="tokenization_semantic_id"):
        batch = tok(histories, return_tensors="pt", unknown_items="skip")
    assert batch["attention_mask"].tolist() == [[1, 1], [0, 0]]
    assert "1 of 2 histories (first: 1) hold no known item" in caplog.text


def test_histories_with_items_log_nothing(tok, caplog):
    with caplog.at_level(logging.WARNING, logger="tokenization_semantic_id"):
        tok([tok.item_ids[:2], ["NOT-AN-ASIN", tok.item_ids[3]]], unknown_items="skip")
    assert caplog.text == ""


@pytest.mark.parametrize("histories", [[[], ["B00ITEM001"]], [["B00ITEM001"], ["NOT-AN-ASIN"]]],
                         ids=["empty", "all-skipped"])
def test_empty_history_raises_when_asked(tok, histories):
    with pytest.raises(ValueError, match=r"1 of 2 histories \(first: [01]\) hold no known item: they are scored "
                                         r"from the \[MASK\] position alone, which ranks items close to popularity"):
        tok(histories, unknown_items="skip", empty_histories="error")
    with pytest.raises(ValueError, match=r"empty_histories must be one of \('allow', 'error'\), got 'warn'"):
        tok(histories, unknown_items="skip", empty_histories="warn")


# Table and vocabulary.
def test_render_format(tok):
    a, b, c = tiny_codes()[3].tolist()
    assert tok.render(tok.item_ids[3]) == f"<a_{a}><b_{b}><c_{c}>"


def test_specials_never_collide_with_code_tokens(tok):
    vocab = tok.get_vocab()
    special_ids = {vocab[token] for token in SPECIAL_TOKENS}
    assert special_ids == set(range(len(SPECIAL_TOKENS)))
    assert {tok.pad_token_id, tok.mask_token_id, tok.unk_token_id, tok.sep_token_id} == special_ids
    item_token_ids = code_token_ids(tok.item_codes, CODEBOOK_SIZE)  # (num_items, 3)
    assert special_ids.isdisjoint(item_token_ids.flatten().tolist())
    assert len(set(vocab.values())) == len(vocab) == tok.vocab_size == 4 + NUM_CODEBOOKS * CODEBOOK_SIZE
    # Each level owns its own span of ids: level l's codes lie in [4 + l * 8, 4 + (l + 1) * 8).
    for level in range(NUM_CODEBOOKS):
        ids = item_token_ids[:, level]
        assert ((ids >= 4 + level * CODEBOOK_SIZE) & (ids < 4 + (level + 1) * CODEBOOK_SIZE)).all()
    a, b, c = tiny_codes()[3].tolist()
    assert tok.convert_ids_to_tokens(item_token_ids[3].tolist()) == [f"<a_{a}>", f"<b_{b}>", f"<c_{c}>"]
    # The vocabulary and `code_token_ids` agree: tokenizing an item id gives its code tokens' ids.
    assert tok.convert_tokens_to_ids(tok.tokenize(tok.item_ids[3])) == item_token_ids[3].tolist()


def test_table_is_injective(tok):
    assert len({tuple(row) for row in tok.item_codes.tolist()}) == tok.num_items == NUM_ITEMS


# Save / load.
def test_save_load_identity(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "semantic_ids.json").is_file()
    histories = [tok.item_ids[2:9], [tok.item_ids[0]]]
    for reloaded in (
        SemanticIdTokenizer.from_pretrained(tmp_path),
        AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True),
    ):
        assert reloaded.item_ids == tok.item_ids
        assert torch.equal(reloaded.item_codes, tok.item_codes)
        assert reloaded.table_fingerprint == tok.table_fingerprint
        assert reloaded.max_len == 5 and reloaded.unknown_items == "error"
        assert reloaded.get_vocab() == tok.get_vocab()
        expected, got = tok(histories, return_tensors="pt"), reloaded(histories, return_tensors="pt")
        assert got.keys() == expected.keys()
        for key in expected:
            assert torch.equal(got[key], expected[key])


def test_auto_tokenizer_uses_the_checkpoint_code(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["auto_map"]["AutoTokenizer"][0] == "tokenization_semantic_id.SemanticIdTokenizer"
    assert (tmp_path / "tokenization_semantic_id.py").is_file()
    reloaded = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(reloaded).__module__.startswith("transformers_modules")


def test_fingerprint_changes_with_the_table(tok):
    renamed = SemanticIdTokenizer.from_codes(tok.item_ids[:-1] + ["OTHER"], tiny_codes(), CODEBOOK_SIZE)
    recoded = SemanticIdTokenizer.from_codes(tok.item_ids, tiny_codes(seed=1), CODEBOOK_SIZE)
    assert len({tok.table_fingerprint, renamed.table_fingerprint, recoded.table_fingerprint}) == 3


# Unknown items.
def test_unknown_item_raises_key_error_naming_it(tok):
    with pytest.raises(KeyError, match=r"unknown item id 'NOT-AN-ASIN'.*unknown_items='skip'"):
        tok([[tok.item_ids[0], "NOT-AN-ASIN"]])
    with pytest.raises(KeyError, match="NOT-AN-ASIN"):
        tok.render("NOT-AN-ASIN")


def test_unknown_item_skipped_when_asked(tok, tmp_path):
    history = [tok.item_ids[0], "NOT-AN-ASIN", tok.item_ids[1]]
    assert tok.decode_items(tok([history], unknown_items="skip")["item_indices"]) == [tok.item_ids[:2]]
    assert tok.encode_items(history, unknown_items="skip") == [0, 1]
    tok.save_pretrained(tmp_path)
    lenient = SemanticIdTokenizer.from_pretrained(tmp_path, unknown_items="skip")
    assert lenient([history])["item_indices"] == [[0, 1]]


def test_bad_unknown_items_policy_is_refused(tok, tmp_path):
    with pytest.raises(ValueError, match=r"unknown_items must be one of \('error', 'skip'\), got 'ignore'"):
        tok([tok.item_ids[:2]], unknown_items="ignore")
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"unknown_items must be one of \('error', 'skip'\), got 'drop'"):
        SemanticIdTokenizer.from_pretrained(tmp_path, unknown_items="drop")


def test_decode_of_an_index_outside_the_table_is_refused(tok):
    with pytest.raises(IndexError, match=r"item index 20 is outside this tokenizer's table \[0, 20\)"):
        tok.decode_items([[3, NUM_ITEMS]])


def test_int_item_id_is_refused_saying_ids_are_strings(tok):
    with pytest.raises(TypeError, match=r"item ids are strings \(the dataset's own ids, e.g. ASINs\), got int 3: "
                                        r"pass '3'"):
        tok([[tok.item_ids[0], 3]])
    with pytest.raises(TypeError, match=r"item ids are strings .*got int 7"):
        tok.encode_items([7], unknown_items="skip")  # skipping unknown ids does not hide the wrong type
    with pytest.raises(TypeError, match=r"item ids are strings .*got float 1.5$"):
        tok.render(1.5)


# Bad input to __call__.
def test_bare_string_is_refused(tok):
    with pytest.raises(TypeError, match="not a string"):
        tok("B00ITEM000")
    with pytest.raises(TypeError, match="each history must be a list of item ids, got str"):
        tok([["B00ITEM000"], "B00ITEM001"])


def test_empty_batch_bad_max_len_and_bad_return_tensors_are_refused(tok):
    with pytest.raises(ValueError, match="histories is empty"):
        tok([])
    with pytest.raises(ValueError, match=r"max_len must be a positive integer, got -1"):
        tok([tok.item_ids[:3]], max_len=-1)
    with pytest.raises(ValueError, match=r"return_tensors must be 'pt' or None, got 'np'"):
        tok([tok.item_ids[:3]], return_tensors="np")
    with pytest.raises(TypeError, match="unexpected arguments: padding"):
        tok([tok.item_ids[:3]], padding=True)


# Bad tables: refused when built and when loaded.
def test_from_codes_refuses_duplicate_tuples():
    with pytest.raises(ValueError, match=r"from_codes: items 'x' and 'y' share the semantic ID \[1, 2, 3\]"):
        SemanticIdTokenizer.from_codes(["x", "y"], [[1, 2, 3], [1, 2, 3]], CODEBOOK_SIZE)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"codes": [[0, 0, 0], [0, 0, 1], [0, 0, 1], [7, 7, 7]]},
         r"items 'B00ITEM001' and 'B00ITEM002' share the semantic ID \[0, 0, 1\].*disambiguation"),
        ({"item_ids": ["B00ITEM000", "B00ITEM001", "B00ITEM000", "B00ITEM003"]},
         r"item id 'B00ITEM000' appears more than once"),
        ({"codes": [[0, 0, 0], [0, 0, 1], [1, 8, 0], [7, 7, 7]]},
         r"item 'B00ITEM002' has a code outside \[0, 8\): \[1, 8, 0\]"),
        ({"codes": [[0, 0, 0], [0, 0, 1], [1, -1, 0], [7, 7, 7]]}, r"item 'B00ITEM002' has a code outside"),
        ({"codes": [[0, 0, 0], [0, 0], [1, 2, 0], [7, 7, 7]]}, r"item 'B00ITEM001' has 2 codes, expected 3"),
        ({"codes": [[0, 0, 0]]}, r"4 item ids but 1 code tuples"),
        ({"item_ids": [], "codes": []}, r"holds no items"),
        ({"item_ids": ["a", "", "c", "d"]}, r"item ids must be non-empty strings, got ''"),
        ({"num_codebooks": 27}, r"num_codebooks must be in \[1, 26\], got 27"),
        ({"codebook_size": 0}, r"codebook_size must be positive, got 0"),
    ],
)
def test_bad_table_is_refused_on_load(tmp_path, overrides, message):
    SemanticIdTokenizer.from_codes(tiny_item_ids(4), [[0, 0, 0], [0, 0, 1], [1, 2, 0], [7, 7, 7]],
                                   CODEBOOK_SIZE).save_pretrained(tmp_path)
    _write_table(tmp_path / "semantic_ids.json", **overrides)
    with pytest.raises(ValueError, match=message) as error:
        SemanticIdTokenizer.from_pretrained(tmp_path)
    assert "semantic_ids.json" in str(error.value)  # the message names the file


def test_bad_table_is_refused_through_auto_tokenizer(tmp_path):
    SemanticIdTokenizer.from_codes(tiny_item_ids(4), [[0, 0, 0], [0, 0, 1], [1, 2, 0], [7, 7, 7]],
                                   CODEBOOK_SIZE).save_pretrained(tmp_path)
    _write_table(tmp_path / "semantic_ids.json", codes=[[0, 0, 0], [0, 0, 0], [1, 2, 0], [7, 7, 7]])
    with pytest.raises(ValueError, match=r"share the semantic ID \[0, 0, 0\]"):
        AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)


def test_table_missing_a_key_or_not_json_is_refused(tmp_path):
    SemanticIdTokenizer.from_codes(tiny_item_ids(4), [[0, 0, 0], [0, 0, 1], [1, 2, 0], [7, 7, 7]],
                                   CODEBOOK_SIZE).save_pretrained(tmp_path)
    table = tmp_path / "semantic_ids.json"
    table.write_text(json.dumps({"num_codebooks": 3, "codebook_size": 8, "item_ids": ["a"]}))
    with pytest.raises(ValueError, match=r"semantic_ids.json: semantic-ID table lacks 'codes'"):
        SemanticIdTokenizer.from_pretrained(tmp_path)
    table.write_text('{"num_codebooks": 3, "codebook_size": ')  # truncated file
    with pytest.raises(ValueError, match=r"semantic_ids.json: not a valid semantic-ID table"):
        SemanticIdTokenizer.from_pretrained(tmp_path)


def test_missing_table_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"SemanticIdTokenizer needs its item table semantic_ids.json, and "
                                         r"'.*absent.json' has none"):
        SemanticIdTokenizer(vocab_file=str(tmp_path / "absent.json"))


@pytest.mark.parametrize("load", ["auto", "class"])
def test_folder_without_semantic_ids_json_is_refused_naming_the_folder(tmp_path, load):
    SemanticIdTokenizer.from_codes(tiny_item_ids(4), [[0, 0, 0], [0, 0, 1], [1, 2, 0], [7, 7, 7]],
                                   CODEBOOK_SIZE).save_pretrained(tmp_path)
    (tmp_path / "semantic_ids.json").unlink()  # tokenizer_config.json and the code are still there
    with pytest.raises(ValueError) as error:
        if load == "auto":
            AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)
        else:
            SemanticIdTokenizer.from_pretrained(tmp_path)
    message = str(error.value)
    assert f"SemanticIdTokenizer needs its item table semantic_ids.json, and '{tmp_path}' has none" in message
    assert "made by save_pretrained" in message and "None" not in message


@pytest.mark.xfail(strict=True, reason="a folder with no tokenizer files (config.json alone, e.g. a model saved "
                                        "without its tokenizer) gets transformers' generic 'Couldn't instantiate the "
                                        "backend tokenizer' error: config.json's auto_map names no AutoTokenizer")
def test_model_folder_without_tokenizer_files_is_refused_naming_semantic_ids_json(tmp_path):
    from configuration_qbert4rec import QBert4RecConfig

    QBert4RecConfig(num_codebooks=NUM_CODEBOOKS, codebook_size=CODEBOOK_SIZE, num_items=4).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"SemanticIdTokenizer needs its item table semantic_ids.json"):
        AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)


def test_titles_travel_with_the_table_and_with_added_items(tmp_path):
    tok = SemanticIdTokenizer.from_codes(["A", "B"], [[0, 0], [1, 0]], 4, titles=["Red lipstick", None])
    assert tok.item_titles == ["Red lipstick", ""]
    tok.add_items(["C", "D"], [[0], [2]], titles=["Blue nail polish", None])
    tok.save_pretrained(tmp_path)
    again = SemanticIdTokenizer.from_pretrained(tmp_path)
    assert again.item_titles == ["Red lipstick", "", "Blue nail polish", ""]
    assert again.table_fingerprint == tok.table_fingerprint  # titles are for people: they do not pair the model
    untitled = SemanticIdTokenizer.from_codes(["A"], [[0, 0]], 4)
    assert untitled.item_titles == [""]
    untitled.save_pretrained(tmp_path / "untitled")
    assert "titles" not in json.loads((tmp_path / "untitled" / "semantic_ids.json").read_text())


def test_a_title_list_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="'titles' must hold one string per item \\(2\\), got 1 entries"):
        SemanticIdTokenizer.from_codes(["A", "B"], [[0, 0], [1, 0]], 4, titles=["only one"])
