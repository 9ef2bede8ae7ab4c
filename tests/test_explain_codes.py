"""The code-explaining command: purity definition, random baseline, prefix listing, JSON output, bad input."""

import json

import pytest
import torch
from datasets import Dataset

from tokenization_semantic_id import SemanticIdTokenizer
from training.explain_codes import (
    items_under_prefix,
    leaf_labels,
    main,
    parse_prefix,
    prefix_explanations,
    prefix_purity,
    purity_table,
    random_purity,
)


def test_pair_purity_by_hand():
    codes = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0]])
    labels = torch.tensor([0, 0, 1, 2, -1])
    # Prefix length 1: group 0 holds one same-leaf pair, group 1 one mixed pair, item 4 has no leaf -> 1/2.
    assert prefix_purity(codes, labels, 1) == 0.5
    # Prefix length 2: every group is a single item, so there are no pairs.
    assert prefix_purity(codes, labels, 2) is None


def test_aligned_codes_are_pure_and_random_codes_are_not():
    labels = torch.arange(8).repeat_interleave(10)  # 8 leaves x 10 items
    codes = torch.stack([labels, torch.arange(80)], dim=1)  # first level = the leaf
    assert prefix_purity(codes, labels, 1) == 1.0
    chance = (8 * 10 * 9 / 2) / (80 * 79 / 2)  # two random items share a leaf
    assert random_purity(codes, labels, 1, num_random=20, seed=0) == pytest.approx(chance, abs=0.05)
    table = purity_table(codes, labels, num_random=2)
    assert [row["prefix_len"] for row in table] == [1]
    assert table[0]["groups"] == 8 and table[0]["mean_group_size"] == 10.0


def test_random_purity_is_seeded():
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 4, (50, 2), generator=generator)
    labels = torch.randint(0, 3, (50,), generator=generator)
    assert random_purity(codes, labels, 1, 3, seed=7) == random_purity(codes, labels, 1, 3, seed=7)


def test_parse_prefix_and_items_under_it():
    assert parse_prefix("12, 200", num_codebooks=4, codebook_size=256) == [12, 200]
    assert parse_prefix("", 4, 256) == []
    codes = torch.tensor([[1, 2, 0], [1, 3, 0], [0, 2, 0]])
    assert items_under_prefix(codes, [1]).tolist() == [0, 1]
    assert items_under_prefix(codes, [1, 3]).tolist() == [1]
    assert items_under_prefix(codes, []).tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "text, message",
    [
        ("12,x", r"--prefix must be comma-separated integers such as '12,200', got '12,x'"),
        ("1,2,3,4,5", r"--prefix '1,2,3,4,5' has 5 codes but semantic IDs have 4 levels"),
        ("3,256", r"--prefix '3,256': code 256 at level 1 is outside \[0, 256\)"),
    ],
)
def test_bad_prefix(text, message):
    with pytest.raises(ValueError, match=message):
        parse_prefix(text, num_codebooks=4, codebook_size=256)


def write_catalogue(tmp_path, item_ids, codes, categories):
    tokenizer = SemanticIdTokenizer.from_codes(item_ids, torch.tensor(codes), codebook_size=4)
    tokenizer.save_pretrained(str(tmp_path / "sid"))
    titles = [f"Title of {i}" for i in item_ids]
    Dataset.from_dict({"item_id": item_ids, "title": titles, "categories": categories}).save_to_disk(
        str(tmp_path / "data" / "items")
    )
    return ["--tokenizer_dir", str(tmp_path / "sid"), "--dataset_dir", str(tmp_path / "data")]


CODES = [[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 2, 0], [2, 0, 0]]
CATEGORIES = [
    ["Makeup", "Nails"], ["Makeup", "Nails"], ["Makeup", "Lips"], ["Hair", "Shampoo"], ["Hair", "Shampoo"], []
]  # fmt: skip


def test_json_report(tmp_path, capsys):
    item_ids = [f"A{n}" for n in range(6)]
    flags = write_catalogue(tmp_path, item_ids, CODES, CATEGORIES)
    report = main([*flags, "--prefix", "0", "--json", "--max_items", "2"])
    assert json.loads(capsys.readouterr().out) == report
    assert report["items_with_leaf_category"] == 5 and report["leaf_categories"] == 3
    # Prefix length 1: group 0 = {Nails, Nails, Lips} -> 1 of 3 pairs; group 1 = {Shampoo, Shampoo} -> 1 of 1.
    assert report["purity"][0]["purity"] == pytest.approx(2 / 4)
    # Prefix length 2: groups {Nails, Nails}, {Lips}, {Shampoo}, {Shampoo} -> 1 of 1 pair.
    assert report["purity"][1]["purity"] == 1.0
    prefix = report["prefix"]
    assert prefix["codes"] == [0] and prefix["num_items"] == 3 and len(prefix["items"]) == 2
    assert prefix["leaf_category_counts"] == {"Nails": 2, "Lips": 1}
    assert prefix["items"][0] == {
        "item_id": "A0",
        "semantic_id": "<a_0><b_0><c_0>",
        "title": "Title of A0",
        "categories": ["Makeup", "Nails"],
    }


def test_text_report(tmp_path, capsys):
    item_ids = [f"A{n}" for n in range(6)]
    flags = write_catalogue(tmp_path, item_ids, CODES, CATEGORIES)
    main([*flags, "--prefix", "1,2"])
    text = capsys.readouterr().out
    assert "prefix [1, 2]: 1 items" in text
    assert "<a_1><b_2><c_0>  A4  Title of A4" in text
    assert "Hair > Shampoo" in text


def test_tokenizer_and_dataset_do_not_match(tmp_path):
    with pytest.raises(ValueError, match=r"1 item\(s\) of the tokenizer are not in the items dataset, e.g. 'B9'"):
        leaf_labels(["A0", "B9"], {"A0": {"title": "", "categories": ["x"]}})


def test_missing_tokenizer_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no semantic_ids.json in .*nowhere \(run training/quantize.py first\)"):
        main(["--tokenizer_dir", str(tmp_path / "nowhere"), "--dataset_dir", str(tmp_path)])


def test_prefix_explanations_count_items_and_their_top_leaf_categories():
    tok = SemanticIdTokenizer.from_codes(["A", "B", "C", "D"], [[1, 0, 0], [1, 0, 1], [1, 2, 0], [3, 0, 0]], 4)
    items = {"A": {"categories": ["Makeup", "Nails"]}, "B": {"categories": ["Makeup", "Nails"]},
             "C": {"categories": ["Skin Care"]}, "D": {"categories": []}}
    report = prefix_explanations(tok, items, top=1)
    assert report["num_codebooks"] == 3
    assert report["prefixes"] == {
        "1": {"num_items": 3, "leaf_categories": [["Nails", 2]]},
        "1,0": {"num_items": 2, "leaf_categories": [["Nails", 2]]},
        "1,2": {"num_items": 1, "leaf_categories": [["Skin Care", 1]]},
        "3": {"num_items": 1, "leaf_categories": []},
        "3,0": {"num_items": 1, "leaf_categories": []},
    }
