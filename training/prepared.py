"""The prepared dataset folder (docs/interfaces.md §1): its layout and schema, its one writer and its readers.

    DATA/sequences/    DatasetDict `train`, `validation`, `test` (`save_to_disk`), one row per user
    DATA/items/        Dataset, one row per item; row = item index
    DATA/summary.json  what `training/prepare_data.py` read, kept and dropped

Every stage and benchmark reads a prepared folder through this module. A prepared dataset also lives in a Hub dataset
repo (`prepare_data.py --push_to_hub`, read back by `--source hub`), in the layout `write_hub_layout` writes:

    README.md                           card; its YAML `configs` declare the two configs below
    summary.json                        as in the local folder
    sequences/{train,validation,test}.parquet   config `sequences`
    items/train.parquet                 config `items`, split `train`; row = item index

so `load_dataset(REPO, "sequences")` and `load_dataset(REPO, "items", split="train")` work on the Hub as anywhere. A
config has one schema for all its splits, so `train` carries a `target` column of nulls there; `load_from_hub`
drops it again.
"""

import json
import os
import tempfile
from pathlib import Path

import datasets
import yaml

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


# ----------------------------------------------------------------------------------------------------------------------
# The Hub layout
# ----------------------------------------------------------------------------------------------------------------------

TARGET_FEATURES = datasets.Features({**SEQUENCE_FEATURES, "target": datasets.Value("string")})
HUB_CONFIGS = {  # config -> split -> the columns (and types) docs/interfaces.md §1 requires of it
    "sequences": {"train": SEQUENCE_FEATURES, "validation": TARGET_FEATURES, "test": TARGET_FEATURES},
    "items": {"train": ITEM_FEATURES},
}
SUMMARY_KEYS = ("source", "name", "users", "items", "interactions")


def hub_file(config: str, split: str) -> str:
    """The path of one split's parquet file inside the repo, e.g. `sequences/test.parquet`."""
    return f"{config}/{split}.parquet"


def hub_card(summary: dict, repo_id: str, summary_text: str) -> str:
    """README.md of a prepared dataset repo: YAML `configs` (what `load_dataset` reads), what the data is, how to
    load it, and the summary (`summary_text`, e.g. `prepare_data.format_summary(summary)`)."""
    configs = [
        {"config_name": config, "data_files": [{"split": split, "path": hub_file(config, split)} for split in splits]}
        for config, splits in HUB_CONFIGS.items()
    ]
    front = yaml.safe_dump({"configs": configs, "tags": ["recommendation", "sequential-recommendation"]},
                           sort_keys=False)
    return f"""---
{front}---
# {summary["name"]}, prepared for Q-Bert4Rec

{summary["users"]:,} users, {summary["items"]:,} items and {summary["interactions"]:,} interactions, read by
`training/prepare_data.py --source {summary["source"]}` and split leave-one-out (docs/interfaces.md §1):

- config `sequences`, one row per user: `train` (`user_id`, `item_ids`: the sequence without its last two items;
  `target` is null here), `validation` (same history, `target` = second-last item), `test` (history + validation
  item, `target` = last item);
- config `items`, split `train`: `item_id`, `title`, `text`, `brand`, `categories`, `image`; row = item index;
- `summary.json`: what was read, kept and dropped.

```python
from datasets import load_dataset

sequences = load_dataset("{repo_id}", "sequences")
items = load_dataset("{repo_id}", "items", split="train")
```

Train on it: `python training/prepare_data.py --source hub --input {repo_id} --output_dir DATA`, or a pipeline
config whose `data` section says `source: hub` and `input: {repo_id}`.

## Summary

```
{summary_text}
```
"""


def write_hub_layout(
    sequences: datasets.DatasetDict,
    items: datasets.Dataset,
    summary: dict,
    folder: str | os.PathLike,
    repo_id: str,
    summary_text: str,
) -> Path:
    """Write the files of a prepared dataset repo into `folder` (the layout in this module's docstring); a push
    uploads exactly this folder. `repo_id` is named in the card's loading example, `summary_text` is its summary."""
    folder = Path(folder)
    check_sequences(sequences)
    validation = sequences["validation"]
    for split in SPLITS:
        rows = sequences[split]
        if "target" not in rows.column_names:  # train: one schema per config
            rows = rows.add_column("target", [None] * len(rows), feature=datasets.Value("string"))
        rows = rows.select_columns(validation.column_names).cast(validation.features)
        (folder / "sequences").mkdir(parents=True, exist_ok=True)
        rows.to_parquet(str(folder / hub_file("sequences", split)))
    (folder / "items").mkdir(parents=True, exist_ok=True)
    items.to_parquet(str(folder / hub_file("items", "train")))
    with open(folder / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    (folder / "README.md").write_text(hub_card(summary, repo_id, summary_text))
    return folder


def hub_folder(path: str, revision: str | None = None, token: str | None = None) -> Path:
    """The local folder of a prepared dataset: `path` itself if it is a folder, else the snapshot of the Hub dataset
    repo `path`, downloaded or, offline, found in the Hub cache (`$HF_HOME/hub/datasets--ORG--NAME/`)."""
    local = Path(path)
    if local.is_dir():
        if revision:
            raise ValueError(f"--revision {revision} applies to a Hub dataset id, not to the local folder {path}")
        return local
    if local.exists():
        raise ValueError(f"{path} is a file: expected a folder in the Hub layout or a Hub dataset id ORG/NAME")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from training.hub import HubError, check_repo_id, hub_errors

    try:
        check_repo_id(path)
    except ValueError as error:
        raise ValueError(f"no local folder {path}, and {error}") from None
    with hub_errors(f"reading the dataset {path}"):
        try:
            return Path(snapshot_download(path, repo_type="dataset", revision=revision, token=token))
        except LocalEntryNotFoundError:
            why = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
            raise HubError(f"reading the dataset {path} failed: {why} and the Hub cache "
                           f"({constants.HF_HUB_CACHE}) holds no snapshot of it") from None


def load_hub_config(folder: Path, config: str, where: str) -> datasets.DatasetDict:
    """One config of a prepared dataset folder in the Hub layout, read by `datasets.load_dataset` into memory and
    checked to have every split and column docs/interfaces.md §1 requires, without nulls (columns of another type are
    cast)."""
    available = datasets.get_dataset_config_names(str(folder))
    if config not in available:
        raise ValueError(f"{where}: not a prepared dataset in the Hub layout: no '{config}' config (configs: "
                         f"{', '.join(available)}); write one with prepare_data.py --push_to_hub")
    with tempfile.TemporaryDirectory(prefix="qbert4rec-hub-") as cache:  # in memory: leave no Arrow cache behind
        try:
            loaded = datasets.load_dataset(str(folder), config, cache_dir=cache, keep_in_memory=True)
        except datasets.exceptions.DatasetGenerationError as error:  # e.g. splits whose columns differ
            cause = str(error.__cause__ or error).strip().splitlines()[-1]
            raise ValueError(f"{where}: datasets cannot read config '{config}': {cause}") from None
    for split, required in HUB_CONFIGS[config].items():
        if split not in loaded:
            raise ValueError(f"{where}: config '{config}' lacks the '{split}' split (splits: {', '.join(loaded)})")
        rows = loaded[split]
        missing = [name for name in required if name not in rows.column_names]
        if missing:
            raise ValueError(f"{where}: split '{split}' of config '{config}' lacks the column(s) {', '.join(missing)} "
                             f"(columns: {', '.join(rows.column_names)})")
        for name, feature in required.items():
            nulls = rows.data.column(name).null_count  # datasets fills a column that one file lacks with nulls
            if nulls:
                raise ValueError(f"{where}: column '{name}' of {config}/{split} is missing or null in {nulls:,} of "
                                 f"{len(rows):,} rows")
            if rows.features[name] != feature:
                try:
                    rows = rows.cast_column(name, feature)
                except (TypeError, ValueError) as error:
                    raise ValueError(f"{where}: column '{name}' of {config}/{split} is {rows.features[name]}, "
                                     f"expected {feature} ({error})") from None
        loaded[split] = rows
    return loaded


def load_from_hub(
    path: str, revision: str | None = None, token: str | None = None
) -> tuple[datasets.DatasetDict, datasets.Dataset, dict]:
    """A prepared dataset pushed by `prepare_data.py --push_to_hub`: `(sequences, items, summary)`, checked.

    Args:
        path: a Hub dataset id `ORG/NAME` (downloaded, or found in the Hub cache when offline), or a local folder in
            the layout of `write_hub_layout`; both are read through `datasets.load_dataset`.
        revision: a branch, tag or commit of the Hub repo.
        token: Hub token for a private repo (default: the logged-in one).
    """
    folder = hub_folder(path, revision, token)
    sequences = check_sequences(load_hub_config(folder, "sequences", path), path)
    if "target" in sequences["train"].column_names:  # the nulls that give the config one schema
        sequences["train"] = sequences["train"].remove_columns("target")
    items = load_hub_config(folder, "items", path)["train"]
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise ValueError(f"{path}: no summary.json beside the data (push it with prepare_data.py --push_to_hub)")
    with open(summary_path) as f:
        summary = json.load(f)
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise ValueError(f"{path}: summary.json lacks {', '.join(missing)}")
    found = {"users": len(sequences["test"]), "items": len(items)}
    for key, count in found.items():
        if summary[key] != count:
            raise ValueError(f"{path}: summary.json says {summary[key]:,} {key} but the data has {count:,}")
    return sequences, items, summary
