"""Dataset readers: every public recommendation format -> one canonical form (docs/interfaces.md §1).

The canonical form is a `datasets.DatasetDict` of user sequences split by leave-one-out (`train`,
`validation`, `test`) and an items `datasets.Dataset` (`item_id`, `title`, `text`, `brand`, `categories`,
`image`). Readers, in the order the formats are described in DESIGN.md §3:

- `read_s3rec`: S3-Rec sequence file + `items.tsv` + `*_item2attributes.json` (amazon-beauty);
- `read_recbole`: RecBole atomic benchmark files + `.text` (amazon-scientific-mm);
- `read_lcrec`: LC-Rec / LETTER JSON (amazon-office);
- `read_amazon_raw`: raw Amazon 2014 / 2018 review and metadata files, k-core filtered, time ordered;
- `read_amazon2023`: Amazon Reviews 2023 JSONL (local files or a Hub dataset id), k-core filtered, time ordered.

Every reader goes through `clean_sequences` (counted drops), `build_splits` and `build_items` and returns a
`PreparedData`. No interaction is lost silently: `summary["interactions_read"] == summary["interactions"] +
sum(summary["dropped"].values())`. Drops, in the order they are applied:

- `duplicate_interactions`: a (user, item) pair seen again later in the user's sequence; the first is kept.
  On by default for raw reviews (a second review of one product is an artifact), off for the published
  benchmark files (S3-Rec, RecBole, LC-Rec), whose protocol keeps repeated items (Scientific has 144):
  the summary reports `repeated_interactions` either way;
- `missing_item_interactions`: items absent from the item table (`on_missing_item="error"` raises instead);
- `k_core_interactions`: interactions of users / items removed by iterative k-core filtering (raw Amazon only);
- `short_user_interactions`: interactions of users left with fewer than 3 items (leave-one-out needs 3).

Text fields keep no HTML entities (`html.unescape`). A missing title is kept as "" and counted
(`items_without_title`). Malformed input raises a `ValueError` naming the file and line.
"""

import ast
import csv
import dataclasses
import gzip
import html
import json
import os
import re
from collections import Counter
from pathlib import Path

import datasets
from tqdm.auto import tqdm

MIN_SEQUENCE_LENGTH = 3  # leave-one-out: at least one training item, one validation and one test target
SPLITS = ("train", "validation", "test")
ITEM_COLUMNS = ("item_id", "title", "text", "brand", "categories", "image")
DROP_KEYS = (
    "duplicate_interactions",
    "missing_item_interactions",
    "k_core_interactions",
    "short_user_interactions",
)
UNKNOWN_BRANDS = {"", "unknown", "n/a", "na", "none", "generic"}

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


@dataclasses.dataclass
class PreparedData:
    """A reader's output: leave-one-out `sequences`, the `items` table and a JSON-able `summary`."""

    sequences: datasets.DatasetDict
    items: datasets.Dataset
    summary: dict


# ----------------------------------------------------------------------------------------------------------
# Small parsing helpers
# ----------------------------------------------------------------------------------------------------------


def clean_text(value) -> str:
    """A string field: `None` -> "", HTML entities unescaped, whitespace collapsed; lists are joined by spaces."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean_text(v) for v in value)
    return " ".join(html.unescape(str(value)).split())


def clean_brand(value) -> str:
    """A brand: `clean_text`, and placeholder brands ("Unknown", "N/A", "Generic") become ""."""
    brand = clean_text(value)
    return "" if brand.lower() in UNKNOWN_BRANDS else brand


def open_text(path: Path):
    """Open a text file, transparently gunzipping `*.gz`."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a non-empty file, else a `ValueError` saying which input is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file ({what})")
    return path


def find_one(directory: Path, pattern: str, what: str) -> Path:
    """The single file in `directory` matching `pattern` (a clear error for none or several)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"input folder not found: {directory}")
    matches = sorted(directory.glob(pattern))
    if not matches:
        raise ValueError(f"no {what} ({pattern}) in {directory}")
    if len(matches) > 1:
        names = ", ".join(m.name for m in matches)
        raise ValueError(f"several {what} files in {directory} ({names}): pass --name to choose one")
    return matches[0]


def iter_json_lines(path: Path, allow_python_literals: bool = False, desc: str | None = None):
    """Yield `(line_number, record)` for each non-blank line of a JSON-lines file (gzip or plain).

    With `allow_python_literals`, a line that is not JSON is parsed with `ast.literal_eval` (the 2014 Amazon
    metadata is written as Python dict literals); nothing is ever `eval`-ed.
    """
    path = require_file(path, desc or "JSON-lines file")
    found_any = False
    with open_text(path) as f:
        for line_number, line in enumerate(tqdm(f, desc=desc or path.name, unit=" lines", leave=False), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as json_error:
                if not allow_python_literals:
                    raise ValueError(f"{path}, line {line_number}: not valid JSON ({json_error})") from None
                try:
                    record = ast.literal_eval(line.strip())
                except (ValueError, SyntaxError, MemoryError, RecursionError) as literal_error:
                    raise ValueError(
                        f"{path}, line {line_number}: neither JSON nor a Python literal ({literal_error})"
                    ) from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {line_number}: expected an object, got {type(record).__name__}")
            found_any = True
            yield line_number, record
    if not found_any:
        raise ValueError(f"{path}: no records (the file holds only blank lines)")


def load_json_object(path: Path, what: str) -> dict:
    """A JSON file holding one object; duplicate keys and syntax errors are errors naming file and line."""
    path = require_file(path, what)

    def no_duplicate_keys(pairs):
        keys = [k for k, _ in pairs]
        duplicates = sorted(k for k, n in Counter(keys).items() if n > 1)
        if duplicates:
            raise ValueError(f"{path}: duplicate key(s) {duplicates[:5]} ({what})")
        return dict(pairs)

    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f, object_pairs_hook=no_duplicate_keys)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object ({what}), got {type(data).__name__}")
    if not data:
        raise ValueError(f"{path}: empty JSON object ({what})")
    return data


# ----------------------------------------------------------------------------------------------------------
# Category and brand structure
# ----------------------------------------------------------------------------------------------------------

_END = None  # trie key marking the end of a path
_CONNECTORS = {"&", "and", "-", "of", "for", "to", "with", "the", "or", "in"}


def split_category_paths(token_paths: list[list[str]], joiner: str) -> list[list[str]]:
    """Recover category names from paths whose separators were lost, using the shared category tree.

    Some sources flatten a path into one string ("Industrial & Scientific Tapes, Adhesives & Sealants Caulk",
    words joined by spaces; "Office & School Supplies, Labels, Indexes & Stamps", names joined by ", " where
    names may hold commas). Tokens are put in a trie over all items. Word tokens (`joiner=" "`): a name ends
    where the tree branches or a path ends, unless the token is a connector ("&", "and", a trailing comma)
    or a child starts in lower case; a chain with a single child stays one name (a known limitation).
    Comma tokens (`joiner=", "`): each token is a name, except that "A" followed only by "B & C" is the
    Amazon list name "A, B & C". Consistent across items, so items of one category share its name.

    Args:
        token_paths: one token list per item.
        joiner: the string that glues tokens of one name back together (" " or ", ").

    Returns:
        One list of category names per item, general to specific.
    """
    trie: dict = {}
    for path in token_paths:
        node = trie
        for token in path:
            node = node.setdefault(token, {})
        node[_END] = {}

    def is_boundary(token: str, node: dict) -> bool:
        children = [child for child in node if child is not _END]
        single_child = len(children) == 1 and _END not in node
        if joiner.strip() == ",":  # names are whole tokens, except lists like "Tape, Adhesives & Fasteners"
            return not (single_child and "&" in children[0] and "&" not in token)
        if single_child:
            return False
        if token.lower() in _CONNECTORS or token.endswith(","):
            return False
        return all(child[:1].isupper() or child[:1].isdigit() for child in children)

    result = []
    for path in token_paths:
        names, current, node = [], [], trie
        for token in path:
            node = node[token]
            current.append(token)
            if is_boundary(token, node):
                names.append(joiner.join(current))
                current = []
        if current:
            names.append(joiner.join(current))
        result.append(names)
    return result


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


# ----------------------------------------------------------------------------------------------------------
# Shared pipeline: clean sequences, split, items table, summary
# ----------------------------------------------------------------------------------------------------------


def empty_drops() -> dict:
    """Every drop counter at zero (the summary always lists all of them)."""
    return {key: 0 for key in DROP_KEYS}


def k_core_filter(sequences: dict, timestamps: dict | None, k: int) -> tuple[dict, dict | None, dict]:
    """Iteratively remove users and items with fewer than `k` interactions until none is left.

    Returns:
        The filtered `sequences` and `timestamps` and counts `{"interactions", "users", "items"}` removed.
    """
    removed = {"interactions": 0, "users": 0, "items": 0}
    if k <= 1:
        return sequences, timestamps, removed
    all_items = {item for seq in sequences.values() for item in seq}
    while True:
        item_counts = Counter(item for seq in sequences.values() for item in seq)
        rare_items = {item for item, n in item_counts.items() if n < k}
        short_users = {user for user, seq in sequences.items() if len(seq) - sum(i in rare_items for i in seq) < k}
        if not rare_items and not short_users:
            break
        new_sequences, new_timestamps = {}, {} if timestamps is not None else None
        for user, seq in sequences.items():
            if user in short_users:
                removed["interactions"] += len(seq)
                continue
            keep = [i for i, item in enumerate(seq) if item not in rare_items]
            removed["interactions"] += len(seq) - len(keep)
            new_sequences[user] = [seq[i] for i in keep]
            if timestamps is not None:
                new_timestamps[user] = [timestamps[user][i] for i in keep]
        removed["users"] += len(short_users)
        sequences, timestamps = new_sequences, new_timestamps
    kept_items = {item for seq in sequences.values() for item in seq}
    removed["items"] = len(all_items - kept_items)
    return sequences, timestamps, removed


def clean_sequences(
    sequences: dict,
    timestamps: dict | None = None,
    known_items: set | None = None,
    on_missing_item: str = "drop",
    k_core: int = 0,
    drop_duplicates: bool = True,
    source_name: str = "sequences",
) -> tuple[dict, dict | None, dict, dict]:
    """Apply the counted drops of the module docstring, in order.

    Args:
        sequences: `{user_id: [item_id, ...]}` in time order.
        timestamps: `{user_id: [int, ...]}` aligned with `sequences`, or `None`.
        known_items: the item table's ids; `None` skips the check.
        on_missing_item: "drop" (counted) or "error" for items absent from the item table.
        k_core: minimum interactions per user and per item (0 or 1: no filtering).
        drop_duplicates: drop repeated (user, item) pairs, keeping the first.

    Returns:
        `(sequences, timestamps, drops, k_core_removed)` with `drops` keyed by `DROP_KEYS`.
    """
    if on_missing_item not in ("drop", "error"):
        raise ValueError(f"on_missing_item must be 'drop' or 'error', got {on_missing_item!r}")
    drops = empty_drops()

    def keep_where(user, mask):
        sequences[user] = [item for item, keep in zip(sequences[user], mask) if keep]
        if timestamps is not None:
            timestamps[user] = [t for t, keep in zip(timestamps[user], mask) if keep]

    sequences = {user: list(seq) for user, seq in sequences.items()}
    timestamps = {user: list(ts) for user, ts in timestamps.items()} if timestamps is not None else None
    for user in tqdm(list(sequences), desc="clean sequences", unit=" users", leave=False):
        seq = sequences[user]
        if drop_duplicates:
            seen = set()
            mask = [not (item in seen or seen.add(item)) for item in seq]
            drops["duplicate_interactions"] += mask.count(False)
            keep_where(user, mask)
            seq = sequences[user]
        if known_items is not None:
            mask = [item in known_items for item in seq]
            if on_missing_item == "error" and not all(mask):
                missing = seq[mask.index(False)]
                raise ValueError(f"{source_name}: user {user} has item {missing!r} missing from the item table")
            drops["missing_item_interactions"] += mask.count(False)
            keep_where(user, mask)

    sequences, timestamps, k_core_removed = k_core_filter(sequences, timestamps, k_core)
    drops["k_core_interactions"] = k_core_removed["interactions"]

    short_users = [user for user, seq in sequences.items() if len(seq) < MIN_SEQUENCE_LENGTH]
    for user in short_users:
        drops["short_user_interactions"] += len(sequences.pop(user))
        if timestamps is not None:
            timestamps.pop(user)
    k_core_removed["short_users"] = len(short_users)
    return sequences, timestamps, drops, k_core_removed


def build_splits(user_sequences: dict, timestamps: dict | None = None) -> datasets.DatasetDict:
    """Leave-one-out splits: last item -> test target, second last -> validation target, the rest -> train.

    Args:
        user_sequences: `{user_id: [item_id, ...]}` in time order, every sequence at least 3 items long.
        timestamps: optional `{user_id: [int, ...]}` aligned with the sequences.

    Returns:
        `DatasetDict` with `train` (`user_id`, `item_ids`), `validation` and `test` (`user_id`, `item_ids`,
        `target`), plus `timestamps` aligned with `item_ids` when given. One row per user in every split.
    """
    if not user_sequences:
        raise ValueError("no user sequences left to split (every user was dropped or the input is empty)")
    columns = {split: {"user_id": [], "item_ids": []} for split in SPLITS}
    for split in ("validation", "test"):
        columns[split]["target"] = []
    if timestamps is not None:
        for split in SPLITS:
            columns[split]["timestamps"] = []
    for user, seq in tqdm(user_sequences.items(), desc="leave-one-out splits", unit=" users", leave=False):
        if len(seq) < MIN_SEQUENCE_LENGTH:
            raise ValueError(f"user {user} has {len(seq)} item(s): leave-one-out needs at least {MIN_SEQUENCE_LENGTH}")
        if timestamps is not None and len(timestamps[user]) != len(seq):
            raise ValueError(f"user {user}: {len(timestamps[user])} timestamps for {len(seq)} items")
        histories = {"train": seq[:-2], "validation": seq[:-2], "test": seq[:-1]}
        for split in SPLITS:
            columns[split]["user_id"].append(str(user))
            columns[split]["item_ids"].append([str(item) for item in histories[split]])
            if timestamps is not None:
                columns[split]["timestamps"].append([int(t) for t in timestamps[user][: len(histories[split])]])
        columns["validation"]["target"].append(str(seq[-2]))
        columns["test"]["target"].append(str(seq[-1]))

    def features(split):
        spec = dict(SEQUENCE_FEATURES)
        if split != "train":
            spec["target"] = datasets.Value("string")
        if timestamps is not None:
            spec["timestamps"] = datasets.Sequence(datasets.Value("int64"))
        return datasets.Features(spec)

    return datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(columns[split], features=features(split)) for split in SPLITS}
    )


def build_items(records: list[dict]) -> datasets.Dataset:
    """The items table, in the given order (row = item index). Missing fields become ""/[]."""
    ids = [str(r["item_id"]) for r in records]
    duplicates = [item for item, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise ValueError(f"duplicate item id(s) in the item table: {duplicates[:5]}")
    columns = {
        "item_id": ids,
        "title": [r.get("title") or "" for r in records],
        "text": [r.get("text") or "" for r in records],
        "brand": [r.get("brand") or "" for r in records],
        "categories": [list(r.get("categories") or []) for r in records],
        "image": [r.get("image") or "" for r in records],
    }
    return datasets.Dataset.from_dict(columns, features=ITEM_FEATURES)


def summarize(
    source: str,
    name: str,
    sequences: dict,
    items: datasets.Dataset,
    interactions_read: int,
    users_read: int,
    drops: dict,
    k_core_removed: dict | None = None,
    **extra,
) -> dict:
    """The `summary.json` content; checks that no interaction was lost uncounted."""
    interactions = sum(len(seq) for seq in sequences.values())
    accounted = interactions + sum(drops.values())
    if accounted != interactions_read:
        raise RuntimeError(
            f"{name}: {interactions_read} interactions read but {interactions} kept + {sum(drops.values())} "
            f"counted drops = {accounted}; a step lost interactions silently"
        )
    in_sequences = {item for seq in sequences.values() for item in seq}
    summary = {
        "source": source,
        "name": name,
        "users": len(sequences),
        "items": len(items),
        "items_in_sequences": len(in_sequences),
        "interactions": interactions,
        "average_length": round(interactions / max(len(sequences), 1), 4),
        "items_without_title": sum(1 for t in items["title"] if not t),
        "items_without_text": sum(1 for t, x in zip(items["title"], items["text"]) if not t and not x),
        "items_without_description": sum(1 for x in items["text"] if not x),
        "items_without_image": sum(1 for x in items["image"] if not x),
        "items_without_brand": sum(1 for x in items["brand"] if not x),
        "items_without_categories": sum(1 for x in items["categories"] if not x),
        "repeated_interactions": sum(len(seq) - len(set(seq)) for seq in sequences.values()),
        "users_read": users_read,
        "interactions_read": interactions_read,
        "dropped": dict(drops),
        "dropped_users": {
            "k_core": (k_core_removed or {}).get("users", 0),
            "short": (k_core_removed or {}).get("short_users", 0),
        },
        "dropped_items_k_core": (k_core_removed or {}).get("items", 0),
    }
    summary.update(extra)
    return summary


def finish(
    source: str,
    name: str,
    sequences: dict,
    timestamps: dict | None,
    item_records: list[dict],
    interactions_read: int,
    on_missing_item: str = "drop",
    k_core: int = 0,
    drop_duplicates: bool = True,
    keep_unused_items: bool = True,
    **extra,
) -> PreparedData:
    """Shared tail of every reader: `clean_sequences` -> `build_splits` + `build_items` -> `summarize`.

    `keep_unused_items=False` (raw Amazon) keeps only items left in some sequence, in order of first
    appearance; `True` keeps the source's item table and order (so precomputed matrices stay aligned).
    """
    users_read = len(sequences)
    known = {str(r["item_id"]) for r in item_records}
    sequences, timestamps, drops, k_core_removed = clean_sequences(
        sequences, timestamps, known, on_missing_item, k_core, drop_duplicates, source_name=name
    )
    if not keep_unused_items:
        order = {}
        for seq in sequences.values():
            for item in seq:
                order.setdefault(item, len(order))
        by_id = {str(r["item_id"]): r for r in item_records}
        item_records = [by_id[item] for item in order]
    items = build_items(item_records)
    splits = build_splits(sequences, timestamps)
    summary = summarize(source, name, sequences, items, interactions_read, users_read, drops, k_core_removed, **extra)
    return PreparedData(splits, items, summary)


# ----------------------------------------------------------------------------------------------------------
# 1. S3-Rec: <Name>.txt + items.tsv + <Name>_item2attributes.json + attribute_names.json
# ----------------------------------------------------------------------------------------------------------


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


def read_s3rec_attributes(attributes_path: Path, names_path: Path) -> dict[str, list[str]]:
    """`{s3rec_item_id: [attribute name, ...]}` from `*_item2attributes.json` and `attribute_names.json`."""
    item_attributes = load_json_object(attributes_path, "S3-Rec item2attributes")
    names = load_json_object(names_path, "attribute names")
    names = names.get("s3rec_attr_id_to_name", names)
    result = {}
    for item, attribute_ids in item_attributes.items():
        missing = [a for a in attribute_ids if str(a) not in names]
        if missing:
            raise ValueError(
                f"{names_path}: no name for attribute id(s) {missing[:5]} (item {item} in {attributes_path.name})"
            )
        result[str(item)] = [names[str(a)].strip() for a in attribute_ids if names[str(a)].strip()]
    return result


def read_s3rec(
    data_dir: str | os.PathLike,
    name: str | None = None,
    on_missing_item: str = "drop",
    drop_duplicates: bool = False,
) -> PreparedData:
    """Read an S3-Rec folder (`<Name>.txt`, `items.tsv`, `<Name>_item2attributes.json`, `attribute_names.json`).

    Item ids become the ASINs of `items.tsv`; the items table keeps the `items.tsv` order. Brand and categories
    come from the attribute files (or the `brand_and_categories` column, `Brand | cat | cat`, when they are
    absent), split by `split_brand_and_categories`; titles are HTML-unescaped. The sequence file has no
    timestamps, so the splits have none.
    """
    data_dir = Path(data_dir)
    sequences_path = data_dir / f"{name}.txt" if name else find_one(data_dir, "*.txt", "S3-Rec sequence file")
    name = name or sequences_path.stem
    raw_sequences, interactions_read = read_s3rec_sequences(sequences_path)
    table = read_s3rec_item_table(data_dir / "items.tsv")

    attributes_path, names_path = data_dir / f"{name}_item2attributes.json", data_dir / "attribute_names.json"
    if attributes_path.is_file() and names_path.is_file():
        attributes = read_s3rec_attributes(attributes_path, names_path)
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
        input=str(data_dir),
    )


# ----------------------------------------------------------------------------------------------------------
# 2. RecBole atomic files: <Name>.{train,valid,test}.inter + .item2index + .user2index + .text
# ----------------------------------------------------------------------------------------------------------


def read_index_file(path: Path, what: str) -> list[str]:
    """`token<TAB>index` lines with indices 0..n-1 -> tokens in index order."""
    path = require_file(path, what)
    by_index = {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2 or not fields[1].strip().isdigit():
                raise ValueError(f"{path}, line {line_number}: expected 'token<TAB>index', got {line.strip()[:80]!r}")
            index = int(fields[1])
            if index in by_index:
                raise ValueError(f"{path}, line {line_number}: index {index} used twice")
            by_index[index] = fields[0]
    if not by_index:
        raise ValueError(f"{path}: empty file ({what})")
    if set(by_index) != set(range(len(by_index))):
        raise ValueError(f"{path}: indices must be 0..{len(by_index) - 1} without gaps")
    return [by_index[i] for i in range(len(by_index))]


def read_recbole_inter(path: Path, num_users: int, num_items: int) -> list[tuple[int, list[int], int]]:
    """A benchmark `.inter` file -> `[(user_index, history_indices, target_index), ...]` in file order."""
    path = require_file(path, "RecBole .inter file")
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        expected = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
        if header != expected:
            raise ValueError(f"{path}, line 1: header must be {'<TAB>'.join(expected)}, got {'<TAB>'.join(header)}")
        for line_number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            tokens = fields[0:1] + (fields[1].split() if len(fields) == 3 else []) + fields[2:3]
            if len(fields) != 3 or not all(t.isdigit() for t in tokens):
                raise ValueError(f"{path}, line {line_number}: expected 'user<TAB>item item ...<TAB>item' indices")
            user, history, target = int(fields[0]), [int(t) for t in fields[1].split()], int(fields[2])
            if user >= num_users or max(history + [target]) >= num_items:
                raise ValueError(f"{path}, line {line_number}: user or item index out of range of the index files")
            rows.append((user, history, target))
    if not rows:
        raise ValueError(f"{path}: no interaction rows after the header")
    return rows


def reconstruct_recbole_sequences(test_rows, valid_rows, train_rows, paths) -> dict[int, list[int]]:
    """Full sequences from the test rows (history + target), checked against the valid and train rows.

    RecBole's benchmark files hold, per user, one test row (`seq[:-1] -> seq[-1]`), one valid row
    (`seq[:-2] -> seq[-2]`) and one train row per training prefix (`seq[:i] -> seq[i]`, 1 <= i <= len - 3),
    in any order. Histories must be complete (files written with `MAX_ITEM_LIST_LENGTH` at least the longest
    sequence); any other row is an inconsistency and raises a `ValueError`.
    """
    test_path, valid_path, train_path = paths
    sequences = {}
    for user, history, target in test_rows:
        if user in sequences:
            raise ValueError(f"{test_path}: user index {user} has more than one test row")
        if len(history) < MIN_SEQUENCE_LENGTH - 1:
            raise ValueError(f"{test_path}: user index {user} has a test history of {len(history)} item(s), need 2")
        sequences[user] = history + [target]

    def check(path, user, history, target, seen):
        full = sequences.get(user)
        if full is None:
            raise ValueError(f"{path}: user index {user} has no row in {test_path.name}")
        end = len(history)
        if end in seen or end >= len(full) or full[: end + 1] != history + [target]:
            raise ValueError(
                f"{path}: user index {user} row {history} -> {target} is inconsistent with (or repeats a prefix "
                f"of) the sequence {full} reconstructed from {test_path.name}"
            )
        seen.add(end)

    valid_ends = {}
    for user, history, target in valid_rows:
        seen = valid_ends.setdefault(user, set())
        if seen or len(history) != len(sequences.get(user, [])) - 2:
            raise ValueError(f"{valid_path}: user index {user} row {history} -> {target} is not the one validation row "
                             f"expected from {test_path.name}")
        check(valid_path, user, history, target, seen)
    missing = set(sequences) - set(valid_ends)
    if missing:
        raise ValueError(
            f"{valid_path}: {len(missing)} user(s) of {test_path.name} have no valid row, e.g. {min(missing)}"
        )

    train_ends = {}
    for user, history, target in train_rows:
        seen = train_ends.setdefault(user, set())
        if len(history) > len(sequences.get(user, [])) - 3:
            raise ValueError(f"{train_path}: user index {user} row {history} -> {target} reaches into the validation "
                             f"or test part of the sequence reconstructed from {test_path.name}")
        check(train_path, user, history, target, seen)
    incomplete = [u for u, seq in sequences.items() if train_ends.get(u, set()) != set(range(1, len(seq) - 2))]
    if incomplete:
        raise ValueError(
            f"{train_path}: user index {incomplete[0]} (and {len(incomplete) - 1} more) lacks training prefixes "
            f"of the sequence reconstructed from {test_path.name}"
        )
    return sequences


def split_recbole_text(text: str, category_root: str | None) -> tuple[str, str, str]:
    """`"title. categories. brand. "` -> `(title, categories, brand)`.

    Titles and brands may hold ". " themselves, so the categories field is located as the right-most field
    that is empty or starts with the dataset's category root (its most common first word); the title is what
    precedes it and the brand what follows.
    """
    body = text.strip()
    if body.endswith("."):
        body = body[:-1]
    fields = body.split(". ")
    if len(fields) < 3:
        return clean_text(body), "", ""
    position = None
    for k in range(len(fields) - 2, 0, -1):
        if fields[k].strip() == "" or (category_root and fields[k].startswith(category_root + " ")):
            position = k
            break
    if position is None:
        position = len(fields) - 2
    return (
        clean_text(". ".join(fields[:position])),
        clean_text(fields[position]),
        clean_brand(". ".join(fields[position + 1 :])),
    )


def read_recbole_text(path: Path) -> dict[str, str]:
    """`.text` file (`item_id:token<TAB>text:token_seq` header) -> `{item_id: text}`."""
    path = require_file(path, "RecBole .text file")
    texts = {}
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if len(header) != 2 or not header[0].startswith("item_id"):
            raise ValueError(f"{path}, line 1: header must be 'item_id:token<TAB>text:token_seq', got {header}")
        for line_number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}, line {line_number}: {len(fields)} tab-separated fields, expected 2")
            if fields[0] in texts:
                raise ValueError(f"{path}, line {line_number}: item {fields[0]} already has a text")
            texts[fields[0]] = fields[1]
    return texts


def read_recbole(
    data_dir: str | os.PathLike,
    name: str | None = None,
    drop_duplicates: bool = False,
    text_matrix_suffix: str = "feat1CLS",
    image_matrix_suffix: str = "feat3CLS",
) -> PreparedData:
    """Read RecBole benchmark files (`<Name>.{train,valid,test}.inter`, `.item2index`, `.user2index`, `.text`).

    Ids are the tokens of the index files (ASINs, reviewer ids); the items table follows `.item2index`, so
    precomputed matrices (`<Name>.feat1CLS` text, `<Name>.feat3CLS` image: float32, one row per item index)
    stay aligned; their paths and widths go in the summary under `feature_matrices`. `image` is "" (the
    images come only as those vectors). Validation and test targets equal the RecBole files'.
    """
    data_dir = Path(data_dir)
    if name is None:
        name = find_one(data_dir, "*.item2index", "RecBole .item2index").name[: -len(".item2index")]
    item_tokens = read_index_file(data_dir / f"{name}.item2index", "RecBole .item2index")
    user_tokens = read_index_file(data_dir / f"{name}.user2index", "RecBole .user2index")
    paths = tuple(data_dir / f"{name}.{split}.inter" for split in ("test", "valid", "train"))
    rows = [read_recbole_inter(p, len(user_tokens), len(item_tokens)) for p in paths]
    index_sequences = reconstruct_recbole_sequences(*rows, paths)

    text_path = data_dir / f"{name}.text"
    texts = read_recbole_text(text_path) if text_path.exists() else {}
    category_fields = [t.strip().rstrip(".").split(". ") for t in texts.values()]
    first_words = Counter(f[-2].split()[0] for f in category_fields if len(f) >= 3 and f[-2].split())
    category_root = first_words.most_common(1)[0][0] if first_words else None
    parsed = {item: split_recbole_text(text, category_root) for item, text in texts.items()}
    category_paths = split_category_paths([parsed.get(i, ("", "", ""))[1].split() for i in item_tokens], " ")
    item_records = [
        {"item_id": item, "title": parsed.get(item, ("", "", ""))[0], "brand": parsed.get(item, ("", "", ""))[2],
         "categories": categories}
        for item, categories in zip(item_tokens, category_paths)
    ]

    feature_matrices = {}
    for modality, suffix in (("text", text_matrix_suffix), ("image", image_matrix_suffix)):
        matrix_path = data_dir / f"{name}.{suffix}"
        if matrix_path.is_file():
            size = matrix_path.stat().st_size
            if size == 0 or size % (4 * len(item_tokens)):
                raise ValueError(
                    f"{matrix_path}: {size} bytes is not a float32 matrix with {len(item_tokens)} rows "
                    "(one per item index)"
                )
            feature_matrices[modality] = {"path": str(matrix_path.resolve()), "dim": size // (4 * len(item_tokens))}

    sequences = {user_tokens[u]: [item_tokens[i] for i in seq] for u, seq in index_sequences.items()}
    return finish(
        "recbole",
        name,
        sequences,
        None,
        item_records,
        sum(len(seq) for seq in sequences.values()),
        on_missing_item="error",
        drop_duplicates=drop_duplicates,
        feature_matrices=feature_matrices,
        texts_for_unknown_items=len(set(texts) - set(item_tokens)),
        category_root=category_root,
        notes=["images are precomputed vectors (feature_matrices.image), so the image column is empty"]
        if "image" in feature_matrices
        else [],
        input=str(data_dir),
    )


# ----------------------------------------------------------------------------------------------------------
# 2b. LC-Rec / LETTER JSON: <Name>.inter.json + <Name>.item.json
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# 3. Raw Amazon 2014 / 2018: reviews_<Cat>_5.json(.gz) (or <Cat>_5.json.gz) + meta_<Cat>.json(.gz)
# ----------------------------------------------------------------------------------------------------------


def group_by_user(events: list[tuple[str, str, int]]) -> tuple[dict, dict]:
    """`[(user, item, timestamp), ...]` in file order -> time-ordered `sequences`, `timestamps`.

    Sorting is stable, so interactions with equal timestamps keep their file order. Users keep the order of
    their first appearance.
    """
    per_user: dict[str, list[tuple[int, str]]] = {}
    for user, item, timestamp in events:
        per_user.setdefault(user, []).append((timestamp, item))
    sequences, timestamps = {}, {}
    for user, rows in per_user.items():
        rows.sort(key=lambda row: row[0])
        sequences[user] = [item for _, item in rows]
        timestamps[user] = [t for t, _ in rows]
    return sequences, timestamps


def find_amazon_file(directory: Path, candidates: list[str], what: str) -> Path:
    """The first of `candidates` (file names) present in `directory`."""
    for candidate in candidates:
        if (directory / candidate).is_file():
            return directory / candidate
    raise ValueError(f"no {what} in {directory}: looked for {', '.join(candidates)}")


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
    events = []
    for line_number, record in iter_json_lines(reviews_path, allow_python_literals=version == "2014",
                                               desc=f"read {reviews_path.name}"):
        missing = [key for key in ("reviewerID", "asin", "unixReviewTime") if key not in record]
        if missing:
            raise ValueError(f"{reviews_path}, line {line_number}: review lacks {', '.join(missing)}")
        events.append((str(record["reviewerID"]), str(record["asin"]), int(record["unixReviewTime"])))
    reviewed = {item for _, item, _ in events}

    item_records = {}
    for line_number, record in iter_json_lines(meta_path, allow_python_literals=version == "2014",
                                               desc=f"read {meta_path.name}"):
        if "asin" not in record:
            raise ValueError(f"{meta_path}, line {line_number}: metadata record lacks 'asin'")
        if str(record["asin"]) in reviewed and str(record["asin"]) not in item_records:
            item_records[str(record["asin"])] = amazon_raw_item(record)

    sequences, timestamps = group_by_user(events)
    return finish(
        f"amazon{version}",
        name,
        sequences,
        timestamps,
        list(item_records.values()),
        len(events),
        on_missing_item=on_missing_item,
        k_core=k_core,
        drop_duplicates=drop_duplicates,
        keep_unused_items=False,
        timestamp_unit="s",
        k_core_setting=k_core,
        input=str(reviews_path),
        metadata=str(meta_path),
    )


# ----------------------------------------------------------------------------------------------------------
# 4. Amazon Reviews 2023: <Cat>.jsonl(.gz) + meta_<Cat>.jsonl(.gz), or McAuley-Lab/Amazon-Reviews-2023
# ----------------------------------------------------------------------------------------------------------


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
    events = []
    for line_number, record in review_records:
        missing = [key for key in ("user_id", "parent_asin", "timestamp") if key not in record]
        if missing:
            raise ValueError(f"{reviews_label}, line {line_number}: review lacks {', '.join(missing)}")
        events.append((str(record["user_id"]), str(record["parent_asin"]), int(record["timestamp"])))
    if not events:
        raise ValueError(f"{reviews_label}: no reviews")
    reviewed = {item for _, item, _ in events}
    item_records = {}
    for line_number, record in meta_records:
        if "parent_asin" not in record:
            raise ValueError(f"{meta_label}, line {line_number}: metadata record lacks 'parent_asin'")
        item_id = str(record["parent_asin"])
        if item_id in reviewed and item_id not in item_records:
            item_records[item_id] = amazon2023_item(record)

    sequences, timestamps = group_by_user(events)
    return finish(
        "amazon2023",
        name,
        sequences,
        timestamps,
        list(item_records.values()),
        len(events),
        on_missing_item=on_missing_item,
        k_core=k_core,
        drop_duplicates=drop_duplicates,
        keep_unused_items=False,
        timestamp_unit="ms",
        k_core_setting=k_core,
        input=reviews_label,
        metadata=meta_label,
    )


# ----------------------------------------------------------------------------------------------------------
# Dispatch, save and load
# ----------------------------------------------------------------------------------------------------------

SOURCES = ("s3rec", "recbole", "lcrec", "amazon2014", "amazon2018", "amazon2023")
DEFAULT_INPUTS = {"s3rec": "amazon-beauty", "recbole": "amazon-scientific-mm", "lcrec": "amazon-office"}


def read_source(
    source: str,
    input_path: str | os.PathLike,
    name: str | None = None,
    metadata: str | None = None,
    k_core: int = 5,
    on_missing_item: str = "drop",
    drop_duplicates: bool | None = None,
) -> PreparedData:
    """Run the reader for `source` (one of `SOURCES`); `k_core` and `metadata` apply to the raw Amazon ones.

    `drop_duplicates=None` takes the reader's default (off for benchmark files, on for raw reviews).
    """
    common = {"name": name}
    if drop_duplicates is not None:
        common["drop_duplicates"] = drop_duplicates
    if source == "s3rec":
        return read_s3rec(input_path, on_missing_item=on_missing_item, **common)
    if source == "recbole":
        return read_recbole(input_path, **common)
    if source == "lcrec":
        return read_lcrec(input_path, on_missing_item=on_missing_item, **common)
    raw = {"metadata": metadata, "k_core": k_core, "on_missing_item": on_missing_item, **common}
    if source in ("amazon2014", "amazon2018"):
        return read_amazon_raw(input_path, version=source[-4:], **raw)
    if source == "amazon2023":
        return read_amazon2023(input_path, **raw)
    raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")


def take_users(prepared: PreparedData, max_users: int) -> PreparedData:
    """The first `max_users` users and only the items they touch (a small slice for smoke runs and demos).

    Refused for sources whose precomputed feature matrices are aligned with the full item table."""
    if max_users < 1:
        raise ValueError(f"max_users must be positive, got {max_users}")
    if prepared.summary.get("feature_matrices"):
        raise ValueError("max_users cannot slice a dataset whose feature matrices are aligned with the full item table")
    num_users = len(prepared.sequences["test"])
    if max_users >= num_users:
        return prepared
    sequences = datasets.DatasetDict({s: prepared.sequences[s].select(range(max_users)) for s in SPLITS})
    test = sequences["test"]
    user_sequences = {u: [*row, target] for u, row, target in zip(test["user_id"], test["item_ids"], test["target"])}
    used = {item for seq in user_sequences.values() for item in seq}
    items = prepared.items.filter(lambda row: row["item_id"] in used, desc="items of the kept users")
    interactions = sum(len(seq) for seq in user_sequences.values())
    summary = summarize(
        prepared.summary["source"],
        prepared.summary["name"],
        user_sequences,
        items,
        interactions_read=interactions,
        users_read=max_users,
        drops=empty_drops(),
        notes=[*prepared.summary.get("notes", []), f"slice: the first {max_users:,} of {num_users:,} users and their items"],
    )
    return PreparedData(sequences, items, summary)


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


def load_prepared(data_dir: str | os.PathLike) -> tuple[datasets.DatasetDict, datasets.Dataset]:
    """Read a prepared folder back: `(sequences DatasetDict, items Dataset)`, checking splits and columns."""
    data_dir = Path(data_dir)
    for part in ("sequences", "items"):
        if not (data_dir / part).is_dir():
            raise ValueError(f"{data_dir} is not a prepared dataset: {part}/ is missing (run training/prepare_data.py)")
    sequences = datasets.load_from_disk(str(data_dir / "sequences"))
    items = datasets.load_from_disk(str(data_dir / "items"))
    if not isinstance(sequences, datasets.DatasetDict) or set(SPLITS) - set(sequences):
        raise ValueError(f"{data_dir / 'sequences'}: expected a DatasetDict with splits {', '.join(SPLITS)}")
    missing = set(ITEM_COLUMNS) - set(items.column_names)
    if missing:
        raise ValueError(f"{data_dir / 'items'}: missing column(s) {', '.join(sorted(missing))}")
    return sequences, items


def load_summary(data_dir: str | os.PathLike) -> dict:
    """`summary.json` of a prepared folder."""
    path = Path(data_dir) / "summary.json"
    if not path.is_file():
        raise ValueError(f"{path} not found: not a prepared dataset folder")
    with open(path) as f:
        return json.load(f)
