"""LC-Rec / LETTER JSON: `<Name>.inter.json` + `<Name>.item.json` (Office)."""

import os
from pathlib import Path

from training.readers.common import (
    PreparedData,
    clean_brand,
    clean_text,
    find_one,
    finish,
    load_json_object,
    split_category_paths,
)


def read_lcrec(
    data_dir: str | os.PathLike,
    name: str | None = None,
    on_missing_item: str = "drop",
    drop_duplicates: bool = False,
) -> PreparedData:
    """Read LC-Rec / LETTER JSON: `{"user": [item_index, ...]}` and `{"item_index": {title, description, brand,
    categories}}`. Item ids are the item index strings (the items table is sorted by index); `text` is the
    description; `categories` (a ", "-joined path) is split by `split_category_paths`.
    """
    data_dir = Path(data_dir)
    if name is None:
        name = find_one(data_dir, "*.inter.json", "LC-Rec .inter.json").name[: -len(".inter.json")]
    inter_path, item_path = data_dir / f"{name}.inter.json", data_dir / f"{name}.item.json"
    raw_sequences = load_json_object(inter_path, "LC-Rec interactions")
    raw_items = load_json_object(item_path, "LC-Rec item table")

    sequences = {}
    for user, seq in raw_sequences.items():
        if not isinstance(seq, list):
            raise ValueError(f"{inter_path}: user {user} maps to {type(seq).__name__}, expected a list of item indices")
        sequences[str(user)] = [str(item) for item in seq]

    def sort_key(item_id):
        return (0, int(item_id), "") if item_id.isdigit() else (1, 0, item_id)

    item_ids = sorted(raw_items, key=sort_key)
    for item_id in item_ids:
        if not isinstance(raw_items[item_id], dict):
            kind = type(raw_items[item_id]).__name__
            raise ValueError(f"{item_path}: item {item_id} maps to {kind}, expected an object")
    category_paths = split_category_paths(
        [[p.strip() for p in clean_text(raw_items[i].get("categories")).split(", ") if p.strip()] for i in item_ids],
        ", ",
    )
    item_records = [
        {
            "item_id": item_id,
            "title": clean_text(raw_items[item_id].get("title")),
            "text": clean_text(raw_items[item_id].get("description")),
            "brand": clean_brand(raw_items[item_id].get("brand")),
            "categories": categories,
        }
        for item_id, categories in zip(item_ids, category_paths)
    ]
    return finish(
        "lcrec",
        name,
        sequences,
        None,
        item_records,
        sum(len(seq) for seq in sequences.values()),
        on_missing_item=on_missing_item,
        drop_duplicates=drop_duplicates,
        input=str(data_dir),
    )
