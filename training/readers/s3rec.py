"""S3-Rec folders: `<Name>.txt` + `items.tsv` + `<Name>_item2attributes.json` + `attribute_names.json` (Beauty)."""

import csv
import os
from pathlib import Path

from tqdm.auto import tqdm

from training.readers.common import (
    PreparedData,
    clean_brand,
    clean_text,
    find_one,
    finish,
    load_json_object,
    require_file,
)


def split_brand_and_categories(attribute_paths: list[list[str]]) -> list[tuple[str, list[str]]]:
    """Split S3-Rec attribute lists (`[brand?, root category, ..., leaf category]`) into brand and categories.

    The brand, when present, comes first. A root category is a name seen both first (items without a
    brand) and second (after a brand), and never deeper. The first name is the brand unless it is a root
    category not followed by another root ("Fragrance | Fragrance | Women's" has brand "Fragrance").
    Placeholder brands ("Unknown") become "".
    """
    positions: dict[str, set[int]] = {}
    for path in attribute_paths:
        for position, name in enumerate(path):
            positions.setdefault(name, set()).add(position)
    roots = {name for name, seen in positions.items() if seen == {0, 1}}

    result = []
    for path in attribute_paths:
        if not path:
            result.append(("", []))
            continue
        first_is_root = path[0] in roots
        second_is_root = len(path) > 1 and path[1] in roots
        if first_is_root and not second_is_root:
            result.append(("", list(path)))
        else:
            result.append((clean_brand(path[0]), list(path[1:])))
    return result


def read_s3rec_sequences(path: Path) -> tuple[dict, int]:
    """`user item item ...` lines (integer ids, time order) -> `({user: [item, ...]}, interactions)`."""
    path = require_file(path, "S3-Rec sequence file")
    sequences = {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(tqdm(f, desc=f"read {path.name}", unit=" users", leave=False), start=1):
            tokens = line.split()
            if not tokens:
                continue
            bad = next((t for t in tokens if not t.isdigit()), None)
            if bad is not None:
                raise ValueError(f"{path}, line {line_number}: expected integer ids 'user item item ...', got {bad!r}")
            user, items = tokens[0], tokens[1:]
            if user in sequences:
                raise ValueError(f"{path}, line {line_number}: user {user} appears on an earlier line too")
            sequences[user] = items
    if not sequences:
        raise ValueError(f"{path}: no user sequences (only blank lines)")
    return sequences, sum(len(s) for s in sequences.values())


def read_s3rec_item_table(path: Path) -> list[dict]:
    """`items.tsv` (`item_id`, `asin`, `title`, optional `brand_and_categories`) -> rows in file order."""
    path = require_file(path, "S3-Rec item table items.tsv")
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        required = ["item_id", "asin", "title"]
        if header is None or header[: len(required)] != required:
            raise ValueError(f"{path}, line 1: header must start with {'<TAB>'.join(required)}, got {header}")
        for line_number, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise ValueError(
                    f"{path}, line {line_number}: {len(fields)} tab-separated fields, expected {len(header)}"
                )
            rows.append(dict(zip(header, fields)))
    if not rows:
        raise ValueError(f"{path}: the item table has a header but no items")
    return rows


def read_s3rec_attributes(
    attributes_path: Path, names_path: Path, on_unnamed_attribute: str = "drop"
) -> tuple[dict[str, list[str]], dict]:
    """`{s3rec_item_id: [attribute name, ...]}` from `*_item2attributes.json` and `attribute_names.json`.

    Attribute ids that `attribute_names.json` does not name are dropped from their items (the items stay) and
    counted; `on_unnamed_attribute="error"` refuses them instead.

    Returns:
        The attribute names per item and the count `{"ids": distinct unnamed ids, "items": items that had one}`.
    """
    if on_unnamed_attribute not in ("drop", "error"):
        raise ValueError(f"on_unnamed_attribute must be 'drop' or 'error', got {on_unnamed_attribute!r}")
    item_attributes = load_json_object(attributes_path, "S3-Rec item2attributes")
    names = load_json_object(names_path, "attribute names")
    names = names.get("s3rec_attr_id_to_name", names)
    result, unnamed_ids, items_with_unnamed = {}, set(), 0
    for item, attribute_ids in item_attributes.items():
        missing = [a for a in attribute_ids if str(a) not in names]
        if missing and on_unnamed_attribute == "error":
            raise ValueError(
                f"{names_path}: no name for attribute id(s) {missing[:5]} (item {item} in {attributes_path.name}); "
                "on_unnamed_attribute='drop' keeps the item without them"
            )
        unnamed_ids.update(str(a) for a in missing)
        items_with_unnamed += bool(missing)
        named = [names[str(a)].strip() for a in attribute_ids if str(a) in names]
        result[str(item)] = [n for n in named if n]
    return result, {"ids": len(unnamed_ids), "items": items_with_unnamed}


def read_s3rec(
    data_dir: str | os.PathLike,
    name: str | None = None,
    on_missing_item: str = "drop",
    drop_duplicates: bool = False,
    on_unnamed_attribute: str = "drop",
) -> PreparedData:
    """Read an S3-Rec folder (`<Name>.txt`, `items.tsv`, `<Name>_item2attributes.json`, `attribute_names.json`).

    Item ids become the ASINs of `items.tsv`; the items table keeps the `items.tsv` order. Brand and categories
    come from the attribute files (or the `brand_and_categories` column, `Brand | cat | cat`, when they are
    absent), split by `split_brand_and_categories`; titles are HTML-unescaped. Attribute ids without a name are
    dropped and counted in `summary["unnamed_attributes"]` (`on_unnamed_attribute="error"` refuses them). The
    sequence file has no timestamps, so the splits have none.
    """
    data_dir = Path(data_dir)
    sequences_path = data_dir / f"{name}.txt" if name else find_one(data_dir, "*.txt", "S3-Rec sequence file")
    name = name or sequences_path.stem
    raw_sequences, interactions_read = read_s3rec_sequences(sequences_path)
    table = read_s3rec_item_table(data_dir / "items.tsv")

    attributes_path, names_path = data_dir / f"{name}_item2attributes.json", data_dir / "attribute_names.json"
    unnamed = {"ids": 0, "items": 0}
    if attributes_path.is_file() and names_path.is_file():
        attributes, unnamed = read_s3rec_attributes(attributes_path, names_path, on_unnamed_attribute)
        attribute_source = f"{attributes_path.name} + {names_path.name}"
    elif "brand_and_categories" in table[0]:
        attributes = {
            row["item_id"]: [p.strip() for p in row["brand_and_categories"].split("|") if p.strip()] for row in table
        }
        attribute_source = "items.tsv brand_and_categories"
    else:
        attributes, attribute_source = {}, "none"
    if "brand_and_categories" in table[0] and attribute_source != "items.tsv brand_and_categories":
        for row in table:
            listed = [p.strip() for p in row["brand_and_categories"].split("|") if p.strip()]
            if listed and listed != attributes.get(row["item_id"], []):
                raise ValueError(
                    f"{data_dir / 'items.tsv'}: item {row['item_id']} brand_and_categories {listed} disagrees "
                    f"with {attributes_path.name} {attributes.get(row['item_id'], [])}"
                )

    s3rec_to_asin = {row["item_id"]: row["asin"] for row in table}
    if len(s3rec_to_asin) != len(table):
        raise ValueError(f"{data_dir / 'items.tsv'}: duplicate item_id rows")
    split = split_brand_and_categories([attributes.get(row["item_id"], []) for row in table])
    item_records = [
        {
            "item_id": row["asin"],
            "title": clean_text(row["title"]),
            "brand": brand,
            "categories": [clean_text(c) for c in categories],
        }
        for row, (brand, categories) in zip(table, split)
    ]
    # Sequence ids missing from items.tsv keep their raw S3-Rec id, so `clean_sequences` counts or rejects them.
    sequences = {user: [s3rec_to_asin.get(i, f"s3rec:{i}") for i in seq] for user, seq in raw_sequences.items()}
    return finish(
        "s3rec",
        name,
        sequences,
        None,
        item_records,
        interactions_read,
        on_missing_item=on_missing_item,
        drop_duplicates=drop_duplicates,
        attribute_source=attribute_source,
        unnamed_attributes=unnamed,
        input=str(data_dir),
    )
