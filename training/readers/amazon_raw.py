"""Raw Amazon 2014 / 2018 reviews: `reviews_<Cat>_5.json[.gz]` (2014) or `<Cat>_5.json[.gz]` (2018) +
`meta_<Cat>.json[.gz]`, k-core filtered and ordered by review time."""

import os
import re
from pathlib import Path

from training.readers.common import (
    PreparedData,
    clean_brand,
    clean_text,
    find_amazon_file,
    find_one,
    finish_reviews,
    iter_json_lines,
)


def amazon_raw_paths(input_path: Path, name: str | None, metadata: str | None) -> tuple[Path, Path, str]:
    """Locate the reviews and metadata files from a folder + category name, or a reviews file."""
    input_path = Path(input_path)
    if input_path.is_file():
        reviews = input_path
        match = re.match(r"(?:reviews_)?(.+?)(?:_5)?\.json(?:\.gz)?$", reviews.name)
        name = name or (match.group(1) if match else reviews.stem)
        directory = reviews.parent
    elif input_path.is_dir():
        if name is None:
            reviews = find_one(input_path, "*_5.json*", "Amazon 5-core reviews file (*_5.json[.gz])")
            name = re.sub(r"^reviews_|_5\.json(\.gz)?$", "", reviews.name)
        else:
            reviews = find_amazon_file(
                input_path,
                [f"reviews_{name}_5.json.gz", f"reviews_{name}_5.json", f"{name}_5.json.gz", f"{name}_5.json",
                 f"reviews_{name}.json.gz", f"reviews_{name}.json", f"{name}.json.gz", f"{name}.json"],
                f"reviews file for {name}",
            )
        directory = input_path
    else:
        raise ValueError(f"input not found: {input_path}")
    meta = Path(metadata) if metadata else find_amazon_file(
        directory, [f"meta_{name}.json.gz", f"meta_{name}.json"], f"metadata file for {name}"
    )
    return reviews, meta, name


def amazon_raw_item(record: dict) -> dict:
    """A 2014 or 2018 metadata record -> an item row (2014: `imUrl`, list of category paths; 2018: `category`,
    `imageURLHighRes` / `imageURL` lists, `description` as a list)."""
    categories = []
    raw_categories = record.get("categories") or record.get("category") or []
    if raw_categories and isinstance(raw_categories[0], list):  # 2014: several paths; first path, then new names
        paths = raw_categories
    else:
        paths = [raw_categories]
    for path in paths:
        for name in path:
            name = clean_text(name)
            if name and name not in categories:
                categories.append(name)
    image = record.get("imUrl") or ""
    for key in ("imageURLHighRes", "imageURL", "image"):
        if not image and isinstance(record.get(key), list) and record[key]:
            image = record[key][0]
    return {
        "item_id": str(record["asin"]),
        "title": clean_text(record.get("title")),
        "text": clean_text(record.get("description")),
        "brand": clean_brand(record.get("brand")),
        "categories": categories,
        "image": str(image),
    }


def read_amazon_raw(
    input_path: str | os.PathLike,
    name: str | None = None,
    metadata: str | None = None,
    version: str = "2014",
    k_core: int = 5,
    on_missing_item: str = "drop",
    drop_duplicates: bool = True,
) -> PreparedData:
    """Read raw Amazon 2014 / 2018 review + metadata files, k-core filter and order by `unixReviewTime`.

    Args:
        input_path: a folder holding `reviews_<Cat>_5.json[.gz]` (2014) or `<Cat>_5.json[.gz]` (2018) and
            `meta_<Cat>.json[.gz]`, or the reviews file itself.
        name: the category (`Beauty`, `Industrial_and_Scientific`); found from the file name when `None`.
        metadata: the metadata file, when not beside the reviews.
        version: "2014" (metadata lines are Python literals, read with `ast.literal_eval`) or "2018" (JSON).
        k_core: minimum interactions per user and item (iterative).

    Item ids are ASINs; timestamps are `unixReviewTime` seconds, ties kept in file order. Only items left
    after filtering are in the items table, in order of first appearance.
    """
    if version not in ("2014", "2018"):
        raise ValueError(f"version must be '2014' or '2018', got {version!r}")
    reviews_path, meta_path, name = amazon_raw_paths(Path(input_path), name, metadata)
    python_literals = version == "2014"
    return finish_reviews(
        f"amazon{version}",
        name,
        iter_json_lines(reviews_path, allow_python_literals=python_literals, desc=f"read {reviews_path.name}"),
        str(reviews_path),
        iter_json_lines(meta_path, allow_python_literals=python_literals, desc=f"read {meta_path.name}"),
        str(meta_path),
        fields=("reviewerID", "asin", "unixReviewTime"),
        make_item=amazon_raw_item,
        timestamp_unit="s",
        k_core=k_core, on_missing_item=on_missing_item, drop_duplicates=drop_duplicates,
    )
