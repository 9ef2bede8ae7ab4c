"""The raw Amazon 2014 / 2018 reader (training/readers/amazon_raw.py) on tiny review and metadata files."""

import gzip
import json

import pytest

from test_readers_common import assert_accounted, sequences_by_user
from training.readers.amazon_raw import read_amazon_raw


def write_gzip_lines(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def review_2014(user, asin, time):
    return json.dumps({"reviewerID": user, "asin": asin, "reviewerName": "n", "helpful": [0, 0], "reviewText": "ok",
                       "overall": 5.0, "summary": "s", "unixReviewTime": time, "reviewTime": "01 1, 2014"})


AMAZON_REVIEWS = [  # (user, item, time): u1..u3 rate a, b, c; u1 rates b twice; d, e and u4 fall to 2-core
    ("u1", "b", 20), ("u1", "a", 10), ("u1", "c", 20), ("u1", "b", 30),
    ("u2", "a", 5), ("u2", "b", 6), ("u2", "c", 7),
    ("u3", "c", 1), ("u3", "a", 2), ("u3", "b", 3), ("u3", "d", 4),
    ("u4", "a", 1), ("u4", "e", 2),
]


def write_amazon2014(folder, meta_lines=None):
    folder.mkdir(parents=True, exist_ok=True)
    write_gzip_lines(folder / "reviews_Tiny_5.json.gz", [review_2014(*r) for r in AMAZON_REVIEWS])
    meta = meta_lines or [
        "{'asin': 'a', 'title': 'Lip &amp; Cheek', 'price': 9.5, 'imUrl': 'http://img/a.jpg', "
        "'related': {'also_bought': ['b']}, 'salesRank': {'Beauty': 10}, "
        "'categories': [['Beauty', 'Makeup', 'Lips'], ['Beauty', 'Gift Sets']], 'brand': 'Acme', 'description': 'Red.'}",
        "{'asin': 'b', 'categories': [['Beauty', 'Skin Care']], 'imUrl': 'http://img/b.jpg'}",
        "{'asin': 'c', 'title': \"O'Neil Cream\", 'categories': [['Beauty']], 'brand': 'Unknown'}",
        "{'asin': 'd', 'title': 'Only rated once', 'categories': [['Beauty']]}",
        "{'asin': 'z', 'title': 'Never rated', 'categories': [['Beauty']]}",
    ]
    write_gzip_lines(folder / "meta_Tiny.json.gz", meta)
    return folder


def test_amazon2014_reader(tmp_path):
    prepared = read_amazon_raw(write_amazon2014(tmp_path / "raw"), k_core=2)
    assert prepared.summary["name"] == "Tiny"
    # u1: a(10), b(20), c(20) in file order for the tie, later b(30) is a counted duplicate
    assert sequences_by_user(prepared) == {"u1": ["a", "b", "c"], "u2": ["a", "b", "c"], "u3": ["c", "a", "b"]}
    assert prepared.sequences["test"]["timestamps"][0] == [10, 20]
    assert prepared.sequences["train"]["timestamps"][2] == [1]
    assert prepared.items["item_id"] == ["a", "b", "c"]
    assert prepared.items[0] == {"item_id": "a", "title": "Lip & Cheek", "text": "Red.", "brand": "Acme",
                                 "categories": ["Beauty", "Makeup", "Lips", "Gift Sets"], "image": "http://img/a.jpg"}
    assert prepared.items[1]["title"] == "" and prepared.items[2]["title"] == "O'Neil Cream"
    assert prepared.items[2]["brand"] == ""
    summary = prepared.summary
    # "e" has no metadata (missing); then k-core removes u4 (left with one review) and "d" (one review)
    assert summary["dropped"] == {"duplicate_interactions": 1, "missing_item_interactions": 1,
                                  "k_core_interactions": 2, "short_user_interactions": 0}
    assert summary["dropped_users"]["k_core"] == 1 and summary["dropped_items_k_core"] == 1
    assert summary["items_without_title"] == 1 and summary["timestamp_unit"] == "s"
    assert_accounted(summary)


def test_amazon2014_items_missing_from_metadata_are_counted(tmp_path):
    meta = ["{'asin': 'a', 'title': 'A'}", "{'asin': 'b', 'title': 'B'}", "{'asin': 'c', 'title': 'C'}"]
    prepared = read_amazon_raw(write_amazon2014(tmp_path / "raw", meta_lines=meta), name="Tiny", k_core=2)
    assert prepared.summary["dropped"] == {"duplicate_interactions": 1, "missing_item_interactions": 2,
                                           "k_core_interactions": 1, "short_user_interactions": 0}
    assert sorted(sequences_by_user(prepared)) == ["u1", "u2", "u3"]
    assert_accounted(prepared.summary)
    with pytest.raises(ValueError, match="user u3 has item 'd' missing from the item table"):
        read_amazon_raw(tmp_path / "raw", k_core=2, on_missing_item="error")


def test_amazon_raw_bad_input(tmp_path):
    bad_meta = write_amazon2014(tmp_path / "a", meta_lines=["{'asin': 'a', 'title': 'A'}", "{'asin': 'b', 'title': "])
    with pytest.raises(ValueError, match=r"meta_Tiny.json.gz, line 2: neither JSON nor a Python literal"):
        read_amazon_raw(bad_meta)
    code = write_amazon2014(tmp_path / "b", meta_lines=["{'asin': 'a', 'title': __import__('os').getcwd()}"])
    with pytest.raises(ValueError, match=r"meta_Tiny.json.gz, line 1: neither JSON nor a Python literal"):
        read_amazon_raw(code)
    folder = write_amazon2014(tmp_path / "c")
    write_gzip_lines(folder / "reviews_Tiny_5.json.gz", [json.dumps({"reviewerID": "u1", "asin": "a"})])
    with pytest.raises(ValueError, match=r"reviews_Tiny_5.json.gz, line 1: review lacks unixReviewTime"):
        read_amazon_raw(folder)
    write_gzip_lines(folder / "reviews_Tiny_5.json.gz", ["", "  "])
    with pytest.raises(ValueError, match=r"reviews_Tiny_5.json.gz: no records"):
        read_amazon_raw(folder)
    with pytest.raises(ValueError, match=r"no metadata file for Other"):
        write_gzip_lines(tmp_path / "c" / "reviews_Other_5.json.gz", [review_2014("u1", "a", 1)])
        read_amazon_raw(tmp_path / "c", name="Other")


def write_amazon2018(folder):
    folder.mkdir(parents=True, exist_ok=True)
    reviews = [json.dumps({"overall": 5.0, "verified": True, "reviewTime": "01 1, 2018", "reviewerID": u, "asin": i,
                           "style": {"Size:": " 1"}, "reviewerName": "n", "reviewText": "t", "summary": "s",
                           "unixReviewTime": t}) for u, i, t in AMAZON_REVIEWS]
    (folder / "Tiny_5.json").write_text("\n".join(reviews) + "\n")
    meta = [json.dumps({"category": ["Industrial & Scientific", "Lab"], "description": ["Strong", "glue."],
                        "title": "Glue &amp; Tape", "brand": "Gorilla", "feature": ["f"], "also_buy": [],
                        "imageURL": ["http://img/small.jpg"], "imageURLHighRes": ["http://img/large.jpg"],
                        "main_cat": "Industrial & Scientific", "asin": asin, "details": {}, "price": "$1"})
            for asin in "abcde"]
    write_gzip_lines(folder / "meta_Tiny.json.gz", meta)
    return folder


def test_amazon2018_reader(tmp_path):
    folder = write_amazon2018(tmp_path / "raw")
    prepared = read_amazon_raw(folder / "Tiny_5.json", version="2018", k_core=2)
    assert sequences_by_user(prepared) == {"u1": ["a", "b", "c"], "u2": ["a", "b", "c"], "u3": ["c", "a", "b"]}
    assert prepared.items[0] == {"item_id": "a", "title": "Glue & Tape", "text": "Strong glue.", "brand": "Gorilla",
                                 "categories": ["Industrial & Scientific", "Lab"], "image": "http://img/large.jpg"}
    assert_accounted(prepared.summary)
    with gzip.open(folder / "meta_Tiny.json.gz", "at") as f:
        f.write("{'asin': 'x'}\n")
    with pytest.raises(ValueError, match=r"meta_Tiny.json.gz, line 6: not valid JSON"):
        read_amazon_raw(folder, version="2018")
