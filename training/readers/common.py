"""What every reader shares: parsing helpers, category structure, and the pipeline to the canonical form.

The canonical form (docs/interfaces.md §1, written by `training/prepared.py`) is a `datasets.DatasetDict` of user
sequences split by leave-one-out (`train`, `validation`, `test`) and an items `datasets.Dataset` (`item_id`,
`title`, `text`, `brand`, `categories`, `image`). Every reader ends in `finish`: `clean_sequences` (counted drops),
`build_splits`, `build_items` and `summarize`, and returns a `PreparedData`. No interaction is lost silently:
`summary["interactions_read"] == summary["interactions"] + sum(summary["dropped"].values())`. Drops, in the order
they are applied:

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
import dataclasses
import gzip
import html
import json
from collections import Counter
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from training.prepared import ITEM_FEATURES, SEQUENCE_FEATURES, SPLITS

MIN_SEQUENCE_LENGTH = 3  # leave-one-out: at least one training item, one validation and one test target
DROP_KEYS = (
    "duplicate_interactions",
    "missing_item_interactions",
    "k_core_interactions",
    "short_user_interactions",
)
UNKNOWN_BRANDS = {"", "unknown", "n/a", "na", "none", "generic"}


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
# Category paths whose separators were lost (RecBole, LC-Rec)
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
# Review files (raw Amazon 2014 / 2018 / 2023): time-ordered sequences, file look-up
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


def finish_reviews(
    source: str,
    name: str,
    reviews,
    reviews_label: str,
    metadata,
    metadata_label: str,
    fields: tuple[str, str, str],
    make_item,
    timestamp_unit: str,
    k_core: int,
    on_missing_item: str,
    drop_duplicates: bool,
) -> PreparedData:
    """Shared tail of the review readers: reviews + item metadata -> time-ordered sequences -> `finish`.

    Args:
        reviews, metadata: `(line_number, record)` pairs of the review and metadata files.
        reviews_label, metadata_label: the files' names, for errors and the summary.
        fields: the review fields `(user, item, timestamp)`; metadata records name their item by the same field.
        make_item: metadata record -> item row (`build_items` columns).

    Only reviewed items are kept from the metadata (the first record of each); after cleaning, only items left
    in some sequence are in the items table, in order of first appearance.
    """
    user_key, item_key, time_key = fields
    events = []
    for line_number, record in reviews:
        missing = [key for key in fields if key not in record]
        if missing:
            raise ValueError(f"{reviews_label}, line {line_number}: review lacks {', '.join(missing)}")
        events.append((str(record[user_key]), str(record[item_key]), int(record[time_key])))
    if not events:
        raise ValueError(f"{reviews_label}: no reviews")
    reviewed = {item for _, item, _ in events}
    item_records = {}
    for line_number, record in metadata:
        if item_key not in record:
            raise ValueError(f"{metadata_label}, line {line_number}: metadata record lacks {item_key!r}")
        item_id = str(record[item_key])
        if item_id in reviewed and item_id not in item_records:
            item_records[item_id] = make_item(record)

    sequences, timestamps = group_by_user(events)
    return finish(
        source,
        name,
        sequences,
        timestamps,
        list(item_records.values()),
        len(events),
        on_missing_item=on_missing_item,
        k_core=k_core,
        drop_duplicates=drop_duplicates,
        keep_unused_items=False,
        timestamp_unit=timestamp_unit,
        k_core_setting=k_core,
        input=reviews_label,
        metadata=metadata_label,
    )


def find_amazon_file(directory: Path, candidates: list[str], what: str) -> Path:
    """The first of `candidates` (file names) present in `directory`."""
    for candidate in candidates:
        if (directory / candidate).is_file():
            return directory / candidate
    raise ValueError(f"no {what} in {directory}: looked for {', '.join(candidates)}")


# ----------------------------------------------------------------------------------------------------------
# A slice of a prepared dataset
# ----------------------------------------------------------------------------------------------------------


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
