"""Readers of training/data.py on small fixtures written in each public schema, plus the real benchmarks."""

import gzip
import json
import struct

import pytest

from training.data import (
    build_splits,
    clean_sequences,
    k_core_filter,
    load_prepared,
    load_summary,
    read_amazon2023,
    read_amazon_raw,
    read_lcrec,
    read_recbole,
    read_s3rec,
    read_source,
    save_prepared,
    split_brand_and_categories,
    split_category_paths,
)


def assert_accounted(summary):
    """No interaction lost silently: read = kept + counted drops."""
    assert summary["interactions_read"] == summary["interactions"] + sum(summary["dropped"].values())


def sequences_by_user(prepared):
    """`{user: full sequence}` rebuilt from the test split (history + target)."""
    test = prepared.sequences["test"]
    return {u: h + [t] for u, h, t in zip(test["user_id"], test["item_ids"], test["target"])}


# ----------------------------------------------------------------------------------------------------------
# Shared pipeline
# ----------------------------------------------------------------------------------------------------------


def test_build_splits_leave_one_out_with_timestamps():
    splits = build_splits({"u1": ["a", "b", "c", "d"], "u2": ["x", "y", "z"]}, {"u1": [1, 2, 3, 4], "u2": [5, 6, 7]})
    assert splits["train"][0] == {"user_id": "u1", "item_ids": ["a", "b"], "timestamps": [1, 2]}
    assert splits["validation"][0] == {"user_id": "u1", "item_ids": ["a", "b"], "target": "c", "timestamps": [1, 2]}
    assert splits["test"][1] == {"user_id": "u2", "item_ids": ["x", "y"], "target": "z", "timestamps": [5, 6]}


def test_build_splits_rejects_short_and_empty():
    with pytest.raises(ValueError, match="user u1 has 2 item"):
        build_splits({"u1": ["a", "b"]})
    with pytest.raises(ValueError, match="no user sequences left"):
        build_splits({})


def test_k_core_filter_is_iterative():
    # item "z" appears once; removing it leaves u3 with one item, which then leaves "c" with one user.
    sequences = {"u1": ["a", "b"], "u2": ["a", "b"], "u3": ["c", "z"], "u4": ["c", "a"]}
    kept, _, removed = k_core_filter(sequences, None, 2)
    assert kept == {"u1": ["a", "b"], "u2": ["a", "b"]}
    assert removed == {"interactions": 4, "users": 2, "items": 2}


def test_clean_sequences_counts_every_drop():
    sequences = {"u1": ["a", "b", "a", "ghost", "c"], "u2": ["a", "b"]}
    kept, _, drops, _ = clean_sequences(sequences, None, known_items={"a", "b", "c"})
    assert kept == {"u1": ["a", "b", "c"]}
    assert drops == {"duplicate_interactions": 1, "missing_item_interactions": 1, "k_core_interactions": 0,
                     "short_user_interactions": 2}
    with pytest.raises(ValueError, match="user u1 has item 'ghost' missing from the item table"):
        clean_sequences(sequences, None, known_items={"a", "b", "c"}, on_missing_item="error")


def test_split_brand_and_categories():
    paths = [["OPI", "Makeup", "Nails"], ["Makeup", "Face"], ["Unknown", "Skin Care", "Face"], ["Skin Care", "Eyes"],
             ["Scissors", "Hair Care", "Styling Tools", "Scissors"], ["Hair Care", "Shampoos"],
             ["Makeup", "Makeup", "Lips"], []]
    assert split_brand_and_categories(paths) == [
        ("OPI", ["Makeup", "Nails"]), ("", ["Makeup", "Face"]), ("", ["Skin Care", "Face"]),
        ("", ["Skin Care", "Eyes"]), ("Scissors", ["Hair Care", "Styling Tools", "Scissors"]),
        ("", ["Hair Care", "Shampoos"]), ("Makeup", ["Makeup", "Lips"]), ("", []),
    ]


def test_split_category_paths_words_and_commas():
    words = ["Industrial & Scientific Tapes, Adhesives & Sealants Caulk", "Industrial & Scientific Lab Supplies Beakers",
             "Industrial & Scientific Lab Supplies Flasks"]
    assert split_category_paths([w.split() for w in words], " ") == [
        ["Industrial & Scientific", "Tapes, Adhesives & Sealants Caulk"],
        ["Industrial & Scientific", "Lab Supplies", "Beakers"],
        ["Industrial & Scientific", "Lab Supplies", "Flasks"],
    ]
    commas = ["Office & School Supplies, Tape, Adhesives & Fasteners, Tape",
              "Office & School Supplies, Labels, Indexes & Stamps", "Office Electronics, Telephones, Headsets"]
    assert split_category_paths([c.split(", ") for c in commas], ", ") == [
        ["Office & School Supplies", "Tape, Adhesives & Fasteners", "Tape"],
        ["Office & School Supplies", "Labels, Indexes & Stamps"],
        ["Office Electronics", "Telephones", "Headsets"],
    ]


# ----------------------------------------------------------------------------------------------------------
# 1. S3-Rec
# ----------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------
# 2. RecBole atomic files
# ----------------------------------------------------------------------------------------------------------

RECBOLE_ITEMS = ["B01", "B02", "B03", "B04", "B05"]
RECBOLE_TEXT = {
    "B01": "Glue, 8 oz. Bottle. Industrial & Scientific Tapes, Adhesives & Sealants Glue. Gorilla. ",
    "B02": "Lid, Gray. Industrial & Scientific Janitorial Lids. Rubbermaid. ",
    "B03": "Duct Tape &amp; More. Industrial & Scientific Tapes, Adhesives & Sealants Tape. S.O.L. Survive Outdoors. ",
    "B04": "Wine Yeast. . Red Star. ",
    "B05": "Goggles, Clear. . . ",
}


def write_recbole(folder, sequences=((0, 1, 2, 3), (1, 2, 4), (4, 3, 2, 1, 0)), matrix_rows=5, text=RECBOLE_TEXT):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Tiny.item2index").write_text("".join(f"{item}\t{i}\n" for i, item in enumerate(RECBOLE_ITEMS)))
    (folder / "Tiny.user2index").write_text("".join(f"U{u}\t{u}\n" for u in range(len(sequences))))
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    rows = {"train": [], "valid": [], "test": []}
    for user, seq in enumerate(sequences):
        rows["train"] += [(user, seq[:i], seq[i]) for i in reversed(range(1, len(seq) - 2))]
        rows["valid"].append((user, seq[:-2], seq[-2]))
        rows["test"].append((user, seq[:-1], seq[-1]))
    for split, split_rows in rows.items():
        lines = [f"{u}\t{' '.join(map(str, h))}\t{t}\n" for u, h, t in split_rows]
        (folder / f"Tiny.{split}.inter").write_text(header + "".join(lines))
    (folder / "Tiny.text").write_text("item_id:token\ttext:token_seq\n" + "".join(f"{k}\t{v}\n" for k, v in text.items()))
    for suffix in ("feat1CLS", "feat3CLS"):
        (folder / f"Tiny.{suffix}").write_bytes(struct.pack(f"<{matrix_rows * 4}f", *range(matrix_rows * 4)))
    return folder


def test_recbole_reader(tmp_path):
    prepared = read_recbole(write_recbole(tmp_path / "tiny"))
    assert prepared.items["item_id"] == RECBOLE_ITEMS
    assert sequences_by_user(prepared) == {"U0": ["B01", "B02", "B03", "B04"], "U1": ["B02", "B03", "B05"],
                                           "U2": ["B05", "B04", "B03", "B02", "B01"]}
    assert prepared.sequences["validation"]["target"] == ["B03", "B03", "B02"]
    assert prepared.items[0] == {"item_id": "B01", "title": "Glue, 8 oz. Bottle", "text": "", "brand": "Gorilla",
                                 "categories": ["Industrial & Scientific", "Tapes, Adhesives & Sealants", "Glue"],
                                 "image": ""}
    assert prepared.items[2]["title"] == "Duct Tape & More"
    assert prepared.items[2]["brand"] == "S.O.L. Survive Outdoors"
    assert prepared.items[3]["categories"] == [] and prepared.items[3]["brand"] == "Red Star"
    assert prepared.items[4]["title"] == "Goggles, Clear" and prepared.items[4]["brand"] == ""
    assert prepared.summary["feature_matrices"]["image"]["dim"] == 4
    assert prepared.summary["items_without_image"] == 5 and "precomputed" in prepared.summary["notes"][0]
    assert_accounted(prepared.summary)


def test_recbole_item_without_text_keeps_empty_title(tmp_path):
    text = {k: v for k, v in RECBOLE_TEXT.items() if k != "B02"}
    prepared = read_recbole(write_recbole(tmp_path / "tiny", text=text))
    assert prepared.items[1]["title"] == "" and prepared.summary["items_without_title"] == 1


def test_recbole_bad_input(tmp_path):
    folder = write_recbole(tmp_path / "a")
    valid = folder / "Tiny.valid.inter"
    valid.write_text(valid.read_text().replace("1\t1\t2\n", "1\t1\t4\n"))
    with pytest.raises(ValueError, match=r"Tiny.valid.inter: user index 1 row \[1\] -> 4 is inconsistent"):
        read_recbole(folder)

    folder = write_recbole(tmp_path / "b")
    train = folder / "Tiny.train.inter"
    train.write_text("\n".join(line for line in train.read_text().splitlines() if not line.startswith("2\t4 3\t")) + "\n")
    with pytest.raises(ValueError, match=r"Tiny.train.inter: user index 2 .* lacks training prefixes"):
        read_recbole(folder)

    folder = write_recbole(tmp_path / "c")
    (folder / "Tiny.test.inter").write_text((folder / "Tiny.test.inter").read_text() + "0\t1 two\t3\n")
    with pytest.raises(ValueError, match=r"Tiny.test.inter, line 5: expected 'user<TAB>item item"):
        read_recbole(folder)

    with pytest.raises(ValueError, match=r"Tiny.feat1CLS: 64 bytes is not a float32 matrix with 5 rows"):
        read_recbole(write_recbole(tmp_path / "d", matrix_rows=4))

    folder = write_recbole(tmp_path / "e")
    (folder / "Tiny.item2index").write_text("")
    with pytest.raises(ValueError, match=r"Tiny.item2index: empty file"):
        read_recbole(folder)


# ----------------------------------------------------------------------------------------------------------
# 2b. LC-Rec / LETTER JSON
# ----------------------------------------------------------------------------------------------------------

LCREC_ITEMS = {
    "0": {"title": "Cordless Phone", "description": "A phone.", "brand": "VTech",
          "categories": "Office Electronics, Telephones & Accessories, Cordless Telephones"},
    "1": {"title": "Tape &quot;Pro&quot;", "description": "", "brand": "",
          "categories": "Office & School Supplies, Tape, Adhesives & Fasteners, Tape"},
    "2": {"title": "", "description": "Blue pens.", "brand": "BIC",
          "categories": "Office & School Supplies, Writing & Correction Supplies, Pens"},
}


def write_lcrec(folder, inter_text=None, items=LCREC_ITEMS):
    folder.mkdir(parents=True, exist_ok=True)
    inter = {"0": [0, 1, 2], "1": [2, 1, 0, 1], "2": [1, 0, 7, 2]}
    (folder / "Tiny.inter.json").write_text(inter_text if inter_text is not None else json.dumps(inter, indent=1))
    (folder / "Tiny.item.json").write_text(json.dumps(items, indent=1))
    return folder


def test_lcrec_reader(tmp_path):
    prepared = read_lcrec(write_lcrec(tmp_path / "tiny"))
    assert prepared.items["item_id"] == ["0", "1", "2"]
    assert sequences_by_user(prepared) == {"0": ["0", "1", "2"], "1": ["2", "1", "0", "1"], "2": ["1", "0", "2"]}
    assert prepared.items[1]["title"] == 'Tape "Pro"'
    assert prepared.items[1]["categories"] == ["Office & School Supplies", "Tape, Adhesives & Fasteners", "Tape"]
    assert prepared.items[0]["text"] == "A phone."
    assert prepared.summary["items_without_title"] == 1 and prepared.summary["items_without_text"] == 0
    assert prepared.summary["dropped"]["missing_item_interactions"] == 1
    assert prepared.summary["repeated_interactions"] == 1  # user 1 buys item 1 twice: the benchmark keeps it
    assert_accounted(prepared.summary)
    deduplicated = read_lcrec(tmp_path / "tiny", drop_duplicates=True)
    assert deduplicated.summary["dropped"]["duplicate_interactions"] == 1
    assert_accounted(deduplicated.summary)


def test_lcrec_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"Tiny.inter.json, line 3: not valid JSON"):
        read_lcrec(write_lcrec(tmp_path / "a", inter_text='{\n "0": [0, 1, 2],\n "1": [2 1]\n}'))
    with pytest.raises(ValueError, match=r"Tiny.inter.json: duplicate key\(s\) \['0'\]"):
        read_lcrec(write_lcrec(tmp_path / "b", inter_text='{"0": [0, 1, 2], "0": [1, 2, 0]}'))
    with pytest.raises(ValueError, match=r"Tiny.inter.json: empty file"):
        read_lcrec(write_lcrec(tmp_path / "c", inter_text=""))
    with pytest.raises(ValueError, match=r"user 2 has item '7' missing from the item table"):
        read_lcrec(write_lcrec(tmp_path / "d"), on_missing_item="error")


# ----------------------------------------------------------------------------------------------------------
# 3. Raw Amazon 2014 / 2018
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# 4. Amazon Reviews 2023
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# Save and load
# ----------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    prepared = read_source("amazon2014", write_amazon2014(tmp_path / "raw"), k_core=2)
    save_prepared(prepared.sequences, prepared.items, prepared.summary, tmp_path / "out")
    sequences, items = load_prepared(tmp_path / "out")
    for split in ("train", "validation", "test"):
        assert sequences[split].to_dict() == prepared.sequences[split].to_dict()
    assert items.to_dict() == prepared.items.to_dict()
    assert load_summary(tmp_path / "out") == prepared.summary
    with pytest.raises(ValueError, match=r"is not a prepared dataset: sequences/ is missing"):
        load_prepared(tmp_path / "raw")


# ----------------------------------------------------------------------------------------------------------
# Real benchmarks (skip when ../shared/data is absent)
# ----------------------------------------------------------------------------------------------------------


def test_real_beauty(beauty_dir):
    prepared = read_s3rec(beauty_dir)
    summary = prepared.summary
    assert (summary["users"], summary["items"], summary["interactions"]) == (22363, 12101, 198502)
    assert sum(summary["dropped"].values()) == 0 and summary["items_without_title"] == 7
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


def test_real_scientific(scientific_dir):
    prepared = read_recbole(scientific_dir)
    summary = prepared.summary
    assert (summary["users"], summary["items"], summary["interactions"]) == (2928, 1585, 19712)
    items = [line.split("\t")[0] for line in (scientific_dir / "Scientific.item2index").read_text().splitlines()]
    users = [line.split("\t")[0] for line in (scientific_dir / "Scientific.user2index").read_text().splitlines()]
    assert prepared.items["item_id"] == items
    for split, file_split in (("validation", "valid"), ("test", "test")):
        rows = [line.split("\t") for line in (scientific_dir / f"Scientific.{file_split}.inter").read_text().splitlines()[1:]]
        expected = {users[int(u)]: items[int(t)] for u, _, t in rows}
        produced = dict(zip(prepared.sequences[split]["user_id"], prepared.sequences[split]["target"]))
        assert produced == expected
    assert summary["feature_matrices"]["text"]["dim"] == 512 and summary["feature_matrices"]["image"]["dim"] == 512
    assert all(prepared.items["title"]) and prepared.items["categories"][0][0] == "Industrial & Scientific"


def test_real_office(office_dir):
    prepared = read_lcrec(office_dir)
    summary = prepared.summary
    assert (summary["users"], summary["items"], summary["interactions"]) == (4905, 2420, 53258)
    assert prepared.items["item_id"] == [str(i) for i in range(2420)]
    assert summary["items_without_title"] == 3
    raw = json.loads((office_dir / "Office.inter.json").read_text())
    assert dict(zip(prepared.sequences["test"]["user_id"], prepared.sequences["test"]["target"])) == {
        user: str(seq[-1]) for user, seq in raw.items()
    }
