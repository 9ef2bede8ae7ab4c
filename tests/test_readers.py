"""The registry of readers (training/readers/__init__.py): every registered format, and `read_source`'s options."""

import pytest

from test_readers_amazon2023 import write_amazon2023
from test_readers_amazon_raw import write_amazon2014, write_amazon2018
from test_readers_common import assert_accounted, sequences_by_user
from test_readers_lcrec import write_lcrec
from test_readers_recbole import write_recbole
from test_readers_s3rec import write_s3rec
from training.readers import READERS, read_source

TINY_INPUTS = {  # source -> (writer of a tiny input in its format, options); one per registered reader
    "s3rec": (write_s3rec, {}),
    "recbole": (write_recbole, {}),
    "lcrec": (write_lcrec, {}),
    "amazon2014": (write_amazon2014, {"k_core": 2}),
    "amazon2018": (write_amazon2018, {"k_core": 2}),
    "amazon2023": (write_amazon2023, {"k_core": 2}),
}


def test_every_registered_reader_has_a_tiny_input_here():
    assert list(TINY_INPUTS) == list(READERS)
    assert all(reader.description for reader in READERS.values())


@pytest.mark.parametrize("source", list(READERS))
def test_every_reader_gives_the_canonical_form(source, tmp_path):
    write, options = TINY_INPUTS[source]
    prepared = read_source(source, write(tmp_path / source), **options)
    assert_accounted(prepared.summary)
    assert prepared.summary["source"] == source
    users = prepared.sequences["test"]["user_id"]
    assert [prepared.sequences[split]["user_id"] for split in ("train", "validation")] == [users, users]
    assert prepared.sequences["train"]["item_ids"] == prepared.sequences["validation"]["item_ids"]
    item_ids = prepared.items["item_id"]
    assert len(set(item_ids)) == len(item_ids) == prepared.summary["items"]
    assert all(len(seq) >= 3 and set(seq) <= set(item_ids) for seq in sequences_by_user(prepared).values())


def test_read_source_passes_each_reader_only_its_options(tmp_path):
    folder = write_s3rec(tmp_path / "tiny")
    plain = read_source("s3rec", folder)
    # k_core and metadata belong to the raw review readers; None leaves the reader's default.
    same = read_source("s3rec", folder, k_core=50, metadata="elsewhere.json", drop_duplicates=None)
    assert same.summary == plain.summary and same.summary["dropped"]["k_core_interactions"] == 0
    with pytest.raises(ValueError, match="unknown source 'csv'; choose one of s3rec, recbole, lcrec"):
        read_source("csv", folder)
    with pytest.raises(TypeError, match="no reader takes the option\\(s\\) k_cor"):
        read_source("s3rec", folder, k_cor=2)
