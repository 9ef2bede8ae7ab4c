"""The RecBole reader (training/readers/recbole.py) on tiny atomic files, plus the real Scientific benchmark."""

import struct

import pytest

from test_readers_common import assert_accounted, sequences_by_user
from training.readers.recbole import read_recbole


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
