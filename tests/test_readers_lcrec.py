"""The LC-Rec / LETTER reader (training/readers/lcrec.py) on tiny JSON files, plus the real Office benchmark."""

import json

import pytest

from test_readers_common import assert_accounted, sequences_by_user
from training.readers.lcrec import read_lcrec


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
