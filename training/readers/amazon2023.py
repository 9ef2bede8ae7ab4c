"""Amazon Reviews 2023: `<Cat>.jsonl[.gz]` + `meta_<Cat>.jsonl[.gz]`, or a Hub dataset laid out like
`McAuley-Lab/Amazon-Reviews-2023`, k-core filtered and ordered by review time."""

import os
import re
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from training.readers.common import (
    PreparedData,
    clean_brand,
    clean_text,
    find_amazon_file,
    finish_reviews,
    iter_json_lines,
)


HUB_REVIEW_FILE = "raw/review_categories/{name}.jsonl"
HUB_META_FILE = "raw/meta_categories/meta_{name}.jsonl"


def iter_hub_records(dataset_id: str, file_pattern: str, name: str, desc: str):
    """Yield `(row_number, record)` from a JSONL file of a Hub dataset through `datasets.load_dataset`.

    The repository's loading script is not used (`datasets>=4` runs no scripts): the JSONL files it points
    at are read directly, e.g. `hf://datasets/McAuley-Lab/Amazon-Reviews-2023/raw/review_categories/All_Beauty.jsonl`.
    Needs network access (or the Hub cache); not exercised by the tests.
    """
    url = f"hf://datasets/{dataset_id}/{file_pattern.format(name=name)}"
    dataset = datasets.load_dataset("json", data_files=url, split="train")
    for row_number, record in enumerate(tqdm(dataset, desc=desc, unit=" rows", leave=False), start=1):
        yield row_number, record


def amazon2023_image(images) -> str:
    """First image URL: `images` is a list of `{large, hi_res, thumb}` dicts (JSONL) or a dict of lists (Hub)."""
    if isinstance(images, dict):
        images = [dict(zip(images, values)) for values in zip(*images.values())]
    for image in images or []:
        if isinstance(image, dict):
            for key in ("large", "hi_res", "thumb"):
                if image.get(key):
                    return str(image[key])
    return ""


def amazon2023_item(record: dict) -> dict:
    """A 2023 metadata record -> an item row (`store` is the brand; `text` = description, else features)."""
    return {
        "item_id": str(record["parent_asin"]),
        "title": clean_text(record.get("title")),
        "text": clean_text(record.get("description")) or clean_text(record.get("features")),
        "brand": clean_brand(record.get("store")),
        "categories": [clean_text(c) for c in record.get("categories") or [] if clean_text(c)],
        "image": amazon2023_image(record.get("images")),
    }


def amazon2023_sources(input_path: str, name: str | None, metadata: str | None):
    """Record iterators for reviews and metadata: local JSONL files, or a Hub dataset id + category name."""
    path = Path(input_path)
    if path.exists():
        if path.is_file():
            reviews = path
            name = name or re.sub(r"\.jsonl(\.gz)?$", "", path.name)
        else:
            if name is None:
                candidates = [p for p in sorted(path.glob("*.jsonl*")) if not p.name.startswith("meta_")]
                if len(candidates) != 1:
                    names = [c.name for c in candidates]
                    raise ValueError(f"{path}: expected one reviews file <Cat>.jsonl[.gz], found {names}; pass --name")
                reviews = candidates[0]
                name = re.sub(r"\.jsonl(\.gz)?$", "", reviews.name)
            else:
                reviews = find_amazon_file(path, [f"{name}.jsonl", f"{name}.jsonl.gz"], f"reviews file for {name}")
        meta = Path(metadata) if metadata else find_amazon_file(
            reviews.parent, [f"meta_{name}.jsonl", f"meta_{name}.jsonl.gz"], f"metadata file for {name}"
        )
        return (
            iter_json_lines(reviews, desc=f"read {reviews.name}"),
            iter_json_lines(meta, desc=f"read {meta.name}"),
            name,
            str(reviews),
            str(meta),
        )
    if name is None:
        raise ValueError(
            f"{input_path} is not a local path; for a Hub dataset id pass --name <Category> (e.g. All_Beauty)"
        )
    return (
        iter_hub_records(input_path, HUB_REVIEW_FILE, name, f"read reviews {name}"),
        iter_hub_records(input_path, HUB_META_FILE, name, f"read metadata {name}"),
        name,
        f"hf://datasets/{input_path}/{HUB_REVIEW_FILE.format(name=name)}",
        f"hf://datasets/{input_path}/{HUB_META_FILE.format(name=name)}",
    )


def read_amazon2023(
    input_path: str | os.PathLike,
    name: str | None = None,
    metadata: str | None = None,
    k_core: int = 5,
    on_missing_item: str = "drop",
    drop_duplicates: bool = True,
) -> PreparedData:
    """Read Amazon Reviews 2023: reviews (`user_id`, `parent_asin`, `timestamp` ms, ...) + item metadata.

    Args:
        input_path: a folder with `<Cat>.jsonl[.gz]` and `meta_<Cat>.jsonl[.gz]`, the reviews file, or a Hub
            dataset id laid out like `McAuley-Lab/Amazon-Reviews-2023` (`raw/review_categories/<Cat>.jsonl`,
            `raw/meta_categories/meta_<Cat>.jsonl`).
        name: the category (`All_Beauty`); needed for a Hub id.
        k_core: minimum interactions per user and item (iterative).

    Item ids are `parent_asin` (variants of one product are one item, so a user's second variant is a
    counted duplicate); timestamps are milliseconds, ties kept in file order.
    """
    review_records, meta_records, name, reviews_label, meta_label = amazon2023_sources(str(input_path), name, metadata)
    return finish_reviews(
        "amazon2023",
        name,
        review_records,
        reviews_label,
        meta_records,
        meta_label,
        fields=("user_id", "parent_asin", "timestamp"),
        make_item=amazon2023_item,
        timestamp_unit="ms",
        k_core=k_core, on_missing_item=on_missing_item, drop_duplicates=drop_duplicates,
    )
