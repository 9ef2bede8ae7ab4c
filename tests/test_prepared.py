"""The prepared dataset folder (training/prepared.py): written once, read back the same, refused when incomplete."""

import pytest
from datasets import DatasetDict

from training.prepared import (
    SPLITS,
    check_sequences,
    load_item_ids,
    load_items,
    load_sequences,
    load_summary,
    save_prepared,
)
from training.readers.common import build_items, build_splits


def write_prepared(folder):
    """A two-user prepared folder with timestamps; returns `(sequences, items, summary)` as saved."""
    sequences = build_splits({"u1": ["a", "b", "c", "d"], "u2": ["c", "b", "a"]}, {"u1": [1, 2, 3, 4], "u2": [5, 6, 7]})
    items = build_items([{"item_id": "a", "title": "A & co", "categories": ["Beauty"]}, {"item_id": "b"},
                         {"item_id": "c", "image": "http://c.jpg"}, {"item_id": "d"}])
    summary = {"name": "Tiny", "users": 2, "notes": ["a note"]}
    assert save_prepared(sequences, items, summary, folder) == folder
    return sequences, items, summary


def test_save_and_load_round_trip(tmp_path):
    sequences, items, summary = write_prepared(tmp_path / "out")
    loaded = load_sequences(tmp_path / "out")
    assert list(loaded) == list(SPLITS)
    for split in SPLITS:
        assert loaded[split].to_dict() == sequences[split].to_dict()
        assert loaded[split].features == sequences[split].features
    assert load_items(tmp_path / "out").to_dict() == items.to_dict()
    assert load_item_ids(tmp_path / "out") == ["a", "b", "c", "d"]
    assert load_summary(tmp_path / "out") == summary


def test_an_incomplete_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="sequences not found: run training/prepare_data.py"):
        load_sequences(tmp_path)
    with pytest.raises(FileNotFoundError, match="no items dataset at .*items \\(run training/prepare_data.py first\\)"):
        load_items(tmp_path)
    with pytest.raises(ValueError, match="summary.json not found: not a prepared dataset folder"):
        load_summary(tmp_path)


def test_empty_or_missing_splits_are_refused(tmp_path):
    sequences, _, _ = write_prepared(tmp_path / "out")
    with pytest.raises(ValueError, match="lacks the 'test' split"):
        check_sequences(DatasetDict(train=sequences["train"], validation=sequences["validation"]))
    empty = sequences["validation"].select([])
    with pytest.raises(ValueError, match="the 'validation' split is empty"):
        check_sequences(DatasetDict(train=sequences["train"], validation=empty, test=sequences["test"]))
    # datasets cannot even read back an empty split: still a clear error.
    DatasetDict(train=sequences["train"], validation=empty, test=sequences["test"]).save_to_disk(
        str(tmp_path / "empty" / "sequences")
    )
    with pytest.raises(ValueError, match="a split is empty"):
        load_sequences(tmp_path / "empty")


def test_item_ids_must_be_unique_and_present(tmp_path):
    items = build_items([{"item_id": "a"}, {"item_id": "b"}])
    items.add_item({**items[0]}).save_to_disk(str(tmp_path / "twice" / "items"))
    with pytest.raises(ValueError, match="item id 'a' appears at rows 0 and 2"):
        load_item_ids(tmp_path / "twice")
    items.remove_columns("item_id").save_to_disk(str(tmp_path / "no_ids" / "items"))
    with pytest.raises(ValueError, match="items dataset has no 'item_id' column"):
        load_items(tmp_path / "no_ids")
