"""The pipeline every reader shares (training/readers/common.py): counted drops, leave-one-out splits, category paths.

`assert_accounted` and `sequences_by_user` are used by the test of every reader.
"""

import pytest

from training.readers.common import build_splits, clean_sequences, k_core_filter, split_category_paths


def assert_accounted(summary):
    """No interaction lost silently: read = kept + counted drops."""
    assert summary["interactions_read"] == summary["interactions"] + sum(summary["dropped"].values())


def sequences_by_user(prepared):
    """`{user: full sequence}` rebuilt from the test split (history + target)."""
    test = prepared.sequences["test"]
    return {u: h + [t] for u, h, t in zip(test["user_id"], test["item_ids"], test["target"])}


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
