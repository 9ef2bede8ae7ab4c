"""The S3-Rec reader (training/readers/s3rec.py) on a tiny folder in its schema, plus the real Beauty benchmark."""

import json

import pytest

from test_readers_common import assert_accounted, sequences_by_user
from training.readers.s3rec import read_s3rec, split_brand_and_categories


S3REC_ITEMS = [  # item_id, asin, title, brand_and_categories
    ("1", "A1", "OPI Nail Lacquer &amp; Top Coat", "OPI | Makeup | Nails"),
    ("2", "A2", "Face Cream", "Skin Care | Face"),
    ("3", "A3", "", "Unknown | Skin Care | Face"),
    ("4", "A4", "Lip Gloss", "Makeup | Lips"),
    ("5", "A5", "Shampoo", "Acme | Hair Care | Shampoos"),
]
S3REC_ATTRIBUTE_NAMES = {"1": "OPI", "2": "Makeup", "3": "Nails", "4": "Skin Care", "5": "Face", "6": "Unknown",
                         "7": "Lips", "8": "Acme", "9": "Hair Care", "10": "Shampoos"}
S3REC_ITEM_ATTRIBUTES = {"1": [1, 2, 3], "2": [4, 5], "3": [6, 4, 5], "4": [2, 7], "5": [8, 9, 10]}


def write_s3rec(folder, lines=("1 1 2 3 4", "2 2 3 5", "3 5 4 1 2 3"), items=S3REC_ITEMS, attributes=True):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Tiny.txt").write_text("\n".join(lines) + "\n")
    rows = ["item_id\tasin\ttitle\tbrand_and_categories"] + ["\t".join(row) for row in items]
    (folder / "items.tsv").write_text("\n".join(rows) + "\n")
    if attributes:
        (folder / "Tiny_item2attributes.json").write_text(json.dumps(S3REC_ITEM_ATTRIBUTES))
        (folder / "attribute_names.json").write_text(json.dumps({"s3rec_attr_id_to_name": S3REC_ATTRIBUTE_NAMES}))
    return folder


def test_s3rec_reader(tmp_path):
    prepared = read_s3rec(write_s3rec(tmp_path / "tiny"))
    assert sequences_by_user(prepared) == {"1": ["A1", "A2", "A3", "A4"], "2": ["A2", "A3", "A5"],
                                           "3": ["A5", "A4", "A1", "A2", "A3"]}
    assert prepared.sequences["validation"]["target"] == ["A3", "A3", "A2"]
    assert prepared.items["item_id"] == ["A1", "A2", "A3", "A4", "A5"]
    assert prepared.items[0] == {"item_id": "A1", "title": "OPI Nail Lacquer & Top Coat", "text": "", "brand": "OPI",
                                 "categories": ["Makeup", "Nails"], "image": ""}
    assert prepared.items["brand"] == ["OPI", "", "", "", "Acme"]
    assert prepared.items["categories"][2] == ["Skin Care", "Face"]
    assert prepared.summary["items_without_title"] == 1
    assert prepared.summary["attribute_source"] == "Tiny_item2attributes.json + attribute_names.json"
    assert_accounted(prepared.summary)


def test_s3rec_without_attribute_files_uses_items_tsv(tmp_path):
    prepared = read_s3rec(write_s3rec(tmp_path / "tiny", attributes=False))
    assert prepared.items["brand"] == ["OPI", "", "", "", "Acme"]
    assert prepared.summary["attribute_source"] == "items.tsv brand_and_categories"


def test_s3rec_missing_items_and_short_users_are_counted(tmp_path):
    folder = write_s3rec(tmp_path / "tiny", lines=("1 1 2 9 3", "2 2 3", "3 1 2 3"))
    prepared = read_s3rec(folder)
    assert sequences_by_user(prepared) == {"1": ["A1", "A2", "A3"], "3": ["A1", "A2", "A3"]}
    assert prepared.summary["dropped"]["missing_item_interactions"] == 1
    assert prepared.summary["dropped"]["short_user_interactions"] == 2
    assert prepared.summary["dropped_users"]["short"] == 1
    assert_accounted(prepared.summary)
    with pytest.raises(ValueError, match="user 1 has item 's3rec:9' missing from the item table"):
        read_s3rec(folder, on_missing_item="error")


def test_s3rec_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"Tiny.txt, line 2: expected integer ids .* got 'x7'"):
        read_s3rec(write_s3rec(tmp_path / "a", lines=("1 1 2 3", "2 x7 3")))
    with pytest.raises(ValueError, match=r"Tiny.txt, line 2: user 1 appears on an earlier line"):
        read_s3rec(write_s3rec(tmp_path / "b", lines=("1 1 2 3", "1 2 3 4")))
    empty = write_s3rec(tmp_path / "c")
    (empty / "Tiny.txt").write_text("")
    with pytest.raises(ValueError, match=r"Tiny.txt: empty file"):
        read_s3rec(empty)
    bad_table = write_s3rec(tmp_path / "d", items=S3REC_ITEMS[:2] + [("3", "A3")] + S3REC_ITEMS[3:])
    with pytest.raises(ValueError, match=r"items.tsv, line 4: 2 tab-separated fields, expected 4"):
        read_s3rec(bad_table)
    disagree = write_s3rec(tmp_path / "e", items=[("1", "A1", "t", "Acme | Makeup | Nails")] + S3REC_ITEMS[1:])
    with pytest.raises(ValueError, match=r"item 1 brand_and_categories .* disagrees"):
        read_s3rec(disagree)
    with pytest.raises(ValueError, match=r"no S3-Rec sequence file \(\*.txt\)"):
        read_s3rec(tmp_path / "e" / "..")


def write_s3rec_with_unnamed_attributes(folder):
    """`write_s3rec` whose `attribute_names.json` lacks ids 2 ("Makeup", items 1 and 4) and 10 ("Shampoos", item 5)."""
    items = [(item_id, asin, title, "") for item_id, asin, title, _ in S3REC_ITEMS]  # no second copy of the attributes
    write_s3rec(folder, items=items)
    names = {k: v for k, v in S3REC_ATTRIBUTE_NAMES.items() if k not in ("2", "10")}
    (folder / "attribute_names.json").write_text(json.dumps({"s3rec_attr_id_to_name": names}))
    return folder


def test_s3rec_unnamed_attributes_are_dropped_and_counted(tmp_path):
    prepared = read_s3rec(write_s3rec_with_unnamed_attributes(tmp_path / "tiny"))
    complete = read_s3rec(write_s3rec(tmp_path / "complete"))
    assert prepared.items["item_id"] == ["A1", "A2", "A3", "A4", "A5"]  # every item kept
    assert sequences_by_user(prepared) == sequences_by_user(complete)
    assert prepared.items[0]["brand"] == "OPI" and prepared.items[0]["categories"] == ["Nails"]
    assert prepared.items[4]["brand"] == "Acme" and prepared.items[4]["categories"] == ["Hair Care"]
    assert not any("Makeup" in [brand, *categories] for brand, categories in zip(prepared.items["brand"],
                                                                                prepared.items["categories"]))
    assert prepared.summary["unnamed_attributes"] == {"ids": 2, "items": 3}
    assert complete.summary["unnamed_attributes"] == {"ids": 0, "items": 0}
    assert_accounted(prepared.summary)
    with pytest.raises(ValueError, match=r"attribute_names.json: no name for attribute id\(s\) \[2\] \(item 1 in "):
        read_s3rec(tmp_path / "tiny", on_unnamed_attribute="error")
    with pytest.raises(ValueError, match="on_unnamed_attribute must be 'drop' or 'error', got 'keep'"):
        read_s3rec(tmp_path / "tiny", on_unnamed_attribute="keep")

def test_split_brand_and_categories():
    paths = [["OPI", "Makeup", "Nails"], ["Makeup", "Face"], ["Unknown", "Skin Care", "Face"], ["Skin Care", "Eyes"],
             ["Scissors", "Hair Care", "Styling Tools", "Scissors"], ["Hair Care", "Shampoos"],
             ["Makeup", "Makeup", "Lips"], []]
    assert split_brand_and_categories(paths) == [
        ("OPI", ["Makeup", "Nails"]), ("", ["Makeup", "Face"]), ("", ["Skin Care", "Face"]),
        ("", ["Skin Care", "Eyes"]), ("Scissors", ["Hair Care", "Styling Tools", "Scissors"]),
        ("", ["Hair Care", "Shampoos"]), ("Makeup", ["Makeup", "Lips"]), ("", []),
    ]


def test_real_beauty(beauty_dir):
    prepared = read_s3rec(beauty_dir)
    summary = prepared.summary
    assert (summary["users"], summary["items"], summary["interactions"]) == (22363, 12101, 198502)
    assert sum(summary["dropped"].values()) == 0 and summary["items_without_title"] == 7
    assert summary["unnamed_attributes"] == {"ids": 0, "items": 0}
    lines = [line.split() for line in (beauty_dir / "Beauty.txt").read_text().splitlines()]
    asin = {}
    for line in (beauty_dir / "items.tsv").read_text().splitlines()[1:]:
        fields = line.split("\t")
        asin[fields[0]] = fields[1]
    test = prepared.sequences["test"]
    assert test["user_id"] == [line[0] for line in lines]
    assert test["target"] == [asin[line[-1]] for line in lines]
    assert prepared.items["item_id"] == list(asin.values())
    assert not any("&amp;" in title for title in prepared.items["title"])
    assert prepared.items[0]["brand"] == "OPI" and prepared.items[0]["categories"] == ["Makeup", "Nails", "Nail Polish"]
