"""The prepared dataset folder (docs/interfaces.md §1): its layout and schema, its one writer and its readers.

    DATA/sequences/    DatasetDict `train`, `validation`, `test` (`save_to_disk`), one row per user
    DATA/items/        Dataset, one row per item; row = item index
    DATA/summary.json  what `training/prepare_data.py` read, kept and dropped

Every stage and benchmark reads a prepared folder through this module.
"""

import json
import os
from pathlib import Path

import datasets

SPLITS = ("train", "validation", "test")
SEQUENCE_FEATURES = datasets.Features(
    {"user_id": datasets.Value("string"), "item_ids": datasets.Sequence(datasets.Value("string"))}
)
ITEM_FEATURES = datasets.Features(
    {
        "item_id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "text": datasets.Value("string"),
        "brand": datasets.Value("string"),
        "categories": datasets.Sequence(datasets.Value("string")),
        "image": datasets.Value("string"),
    }
)


def save_prepared(
    sequences: datasets.DatasetDict, items: datasets.Dataset, summary: dict, output_dir: str | os.PathLike
) -> Path:
    """Write `output_dir/{sequences,items}/` (`save_to_disk`) and `output_dir/summary.json`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    sequences.save_to_disk(str(output_dir / "sequences"))
    items.save_to_disk(str(output_dir / "items"))
    with open(output_dir / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    return output_dir


def load_sequences(dataset_dir: str | os.PathLike) -> datasets.DatasetDict:
    """The `sequences` DatasetDict (`train`, `validation`, `test`) of a prepared dataset folder, read into memory.

    In memory (a few MB), so the datasets derived from it stay in memory too: mapped from the files on disk, every run
    whose tokenizer hashes differently left another set of cache files in the folder (1.5 GB after a day of runs)."""
    path = Path(dataset_dir) / "sequences"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: run training/prepare_data.py --output_dir {dataset_dir} first")
    try:
        sequences = datasets.load_from_disk(str(path), keep_in_memory=True)
    except IndexError:  # datasets cannot read back a split saved with zero rows
        raise ValueError(f"{path}: a split is empty (no rows could be read)") from None
    return check_sequences(sequences, path)


def check_sequences(sequences: datasets.DatasetDict, source="sequences") -> datasets.DatasetDict:
    """Refuse a DatasetDict that lacks a split or has an empty one."""
    for split in SPLITS:
        if split not in sequences:
            raise ValueError(f"{source} lacks the '{split}' split")
        if len(sequences[split]) == 0:
            raise ValueError(f"{source}: the '{split}' split is empty")
    return sequences


def load_items(dataset_dir: str | os.PathLike) -> datasets.Dataset:
    """The items `Dataset` of a prepared dataset folder (row = item index), checked to have an `item_id` column."""
    path = Path(dataset_dir) / "items"
    if not path.is_dir():
        raise FileNotFoundError(f"no items dataset at {path} (run training/prepare_data.py first)")
    items = datasets.load_from_disk(str(path))
    if "item_id" not in items.column_names:
        raise ValueError(f"{path}: items dataset has no 'item_id' column (columns: {items.column_names})")
    return items


def load_item_ids(dataset_dir: str | os.PathLike) -> list[str]:
    """Item ids of a prepared dataset folder, in item-index order, checked unique."""
    item_ids = [str(i) for i in load_items(dataset_dir)["item_id"]]
    seen = {}
    for index, item_id in enumerate(item_ids):
        if item_id in seen:
            raise ValueError(
                f"{Path(dataset_dir) / 'items'}: item id {item_id!r} appears at rows {seen[item_id]} and {index}"
            )
        seen[item_id] = index
    return item_ids


def load_summary(dataset_dir: str | os.PathLike) -> dict:
    """`summary.json` of a prepared dataset folder."""
    path = Path(dataset_dir) / "summary.json"
    if not path.is_file():
        raise ValueError(f"{path} not found: not a prepared dataset folder")
    with open(path) as f:
        return json.load(f)
