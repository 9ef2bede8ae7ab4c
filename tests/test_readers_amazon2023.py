"""The Amazon Reviews 2023 reader (training/readers/amazon2023.py) on tiny JSONL files."""

import json

import pytest

from test_readers_amazon_raw import AMAZON_REVIEWS, write_gzip_lines
from test_readers_common import assert_accounted, sequences_by_user
from training.readers.amazon2023 import read_amazon2023


def write_amazon2023(folder):
    folder.mkdir(parents=True, exist_ok=True)
    reviews = []
    for user, parent, time in AMAZON_REVIEWS:
        asin = parent.upper() + ("2" if (user, time) == ("u1", 30) else "1")  # u1's second b is another variant
        reviews.append(json.dumps({"rating": 5.0, "title": "t", "text": "x", "images": [], "asin": asin,
                                   "parent_asin": parent, "user_id": user, "timestamp": time * 1000,
                                   "helpful_vote": 0, "verified_purchase": True}))
    (folder / "Tiny.jsonl").write_text("\n".join(reviews) + "\n")
    meta = [{"main_category": "All Beauty", "title": f"Item {p} &amp; co", "average_rating": 4.5, "rating_number": 3,
             "features": ["feature one"], "description": [] if p == "b" else ["Nice", "item."], "price": None,
             "images": [{"thumb": "http://t.jpg", "large": f"http://{p}-large.jpg", "variant": "MAIN",
                         "hi_res": None}] if p != "c" else [],
             "videos": [], "store": "Acme" if p == "a" else None, "categories": ["Beauty", "Skin"] if p == "a" else [],
             "details": {}, "parent_asin": p, "bought_together": None} for p in "abcde"]
    write_gzip_lines(folder / "meta_Tiny.jsonl.gz", [json.dumps(m) for m in meta])
    return folder


def test_amazon2023_reader(tmp_path):
    prepared = read_amazon2023(write_amazon2023(tmp_path / "raw"), k_core=2)
    assert prepared.summary["name"] == "Tiny"
    assert sequences_by_user(prepared) == {"u1": ["a", "b", "c"], "u2": ["a", "b", "c"], "u3": ["c", "a", "b"]}
    assert prepared.sequences["test"]["timestamps"][0] == [10000, 20000]
    assert prepared.items[0] == {"item_id": "a", "title": "Item a & co", "text": "Nice item.", "brand": "Acme",
                                 "categories": ["Beauty", "Skin"], "image": "http://a-large.jpg"}
    assert prepared.items[1]["text"] == "feature one"  # no description: features instead
    assert prepared.items[2]["image"] == "" and prepared.summary["items_without_image"] == 1
    assert prepared.summary["dropped"]["duplicate_interactions"] == 1
    assert prepared.summary["timestamp_unit"] == "ms"
    assert_accounted(prepared.summary)


def test_amazon2023_bad_input(tmp_path):
    folder = write_amazon2023(tmp_path / "raw")
    with open(folder / "Tiny.jsonl", "a") as f:
        f.write('{"user_id": "u9", "parent_asin": "a", "timestamp": 1\n')
    with pytest.raises(ValueError, match=r"Tiny.jsonl, line 14: not valid JSON"):
        read_amazon2023(folder)
    (folder / "Tiny.jsonl").write_text(json.dumps({"user_id": "u9", "asin": "A1", "timestamp": 1}) + "\n")
    with pytest.raises(ValueError, match=r"Tiny.jsonl, line 1: review lacks parent_asin"):
        read_amazon2023(folder)
    (folder / "Tiny.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"Tiny.jsonl: empty file"):
        read_amazon2023(folder)
    with pytest.raises(ValueError, match=r"pass --name <Category>"):
        read_amazon2023("McAuley-Lab/Amazon-Reviews-2023")
