"""Benchmark: cold start on a real dataset. A seeded share of items is cold: every interaction with them is removed
from the data stages 1-3 train on; the trained checkpoint then adds them from their content alone
(`model.add_items`) and ranks all items, warm and cold, for the original test users.
"""

import json
import random
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import datasets  # noqa: E402

from training.prepared import SEQUENCE_FEATURES, load_items, load_sequences, load_summary, save_prepared  # noqa: E402


def cold_item_ids(item_ids: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded `fraction` of `item_ids` (at least one), in item-index order."""
    count = max(1, round(fraction * len(item_ids)))
    chosen = set(random.Random(seed).sample(item_ids, count))
    return [item_id for item_id in item_ids if item_id in chosen]


def without_items(dataset_dir: Path, cold: set[str], output_dir: Path) -> dict:
    """Write a prepared dataset without the `cold` items: they leave the items table and every user's sequence, which
    is then split again leave-one-out (train = all but the last two, validation target = the second last, test
    target = the last); users left with fewer than 3 items are dropped. The original test target of a user is never
    in the new training data: it was either cold (removed) or is the new test target."""
    sequences = load_sequences(dataset_dir)
    test = sequences["test"]
    rows = {"train": [], "validation": [], "test": []}
    for user_id, history, target in zip(test["user_id"], test["item_ids"], test["target"]):
        full = [item_id for item_id in [*history, target] if item_id not in cold]
        if len(full) < 3:
            continue
        rows["train"].append({"user_id": user_id, "item_ids": full[:-2]})
        rows["validation"].append({"user_id": user_id, "item_ids": full[:-2], "target": full[-2]})
        rows["test"].append({"user_id": user_id, "item_ids": full[:-1], "target": full[-1]})
    target_features = datasets.Features({**SEQUENCE_FEATURES, "target": datasets.Value("string")})
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(rows["train"], features=SEQUENCE_FEATURES),
        "validation": datasets.Dataset.from_list(rows["validation"], features=target_features),
        "test": datasets.Dataset.from_list(rows["test"], features=target_features),
    })
    items = load_items(dataset_dir)
    warm_rows = [row for row, item_id in enumerate(items["item_id"]) if item_id not in cold]
    summary = {
        **load_summary(dataset_dir),
        "users": len(rows["test"]),
        "items": len(warm_rows),
        "interactions": sum(len(r["item_ids"]) + 1 for r in rows["test"]),
        "cold_start": {"source": str(dataset_dir), "cold_items": len(cold),
                       "users_dropped": len(test) - len(rows["test"])},
    }
    save_prepared(splits, items.select(warm_rows), summary, output_dir)
    return summary
