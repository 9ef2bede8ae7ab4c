"""Prepared user sequences (item ids) -> item-index datasets the collators batch."""

from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk
from torch.utils.data import DataLoader

from training.evaluate import gc_paused


def load_sequences(dataset_dir) -> DatasetDict:
    """The `sequences` DatasetDict (`train`, `validation`, `test`) of a prepared dataset folder, read into memory.

    In memory (a few MB), so the datasets derived from it stay in memory too: mapped from the files on disk, every run
    whose tokenizer hashes differently left another set of cache files in the folder (1.5 GB after a day of runs)."""
    path = Path(dataset_dir) / "sequences"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: run training/prepare_data.py --output_dir {dataset_dir} first")
    try:
        sequences = load_from_disk(str(path), keep_in_memory=True)
    except IndexError:  # datasets cannot read back a split saved with zero rows
        raise ValueError(f"{path}: a split is empty (no rows could be read)") from None
    return check_sequences(sequences, path)


def check_sequences(sequences: DatasetDict, source="sequences") -> DatasetDict:
    """Refuse a DatasetDict that lacks a split or has an empty one."""
    for split in ("train", "validation", "test"):
        if split not in sequences:
            raise ValueError(f"{source} lacks the '{split}' split")
        if len(sequences[split]) == 0:
            raise ValueError(f"{source}: the '{split}' split is empty")
    return sequences


def encode_split(split: Dataset, tokenizer) -> Dataset:
    """Add `item_indices` (list[int]) and, where the split has targets, `target` (int) from item ids."""

    def encode(batch):
        out = {"item_indices": [tokenizer.encode_items(items) for items in batch["item_ids"]]}
        if "target" in batch:
            out["target"] = tokenizer.encode_items(batch["target"])
        return out

    return split.map(encode, batched=True, desc="item ids -> indices")


def next_item_examples(train: Dataset, min_history: int = 1) -> Dataset:
    """Every (prefix, next item) pair of the training sequences: `item_indices` = prefix, `target` = next item.

    This is the fine-tuning task (tail masking of the last item) applied to every cut point of each sequence.
    """

    def expand(batch):
        histories, targets = [], []
        for items in batch["item_indices"]:
            for t in range(min_history, len(items)):
                histories.append(items[:t])
                targets.append(items[t])
        return {"item_indices": histories, "target": targets}

    return train.map(expand, batched=True, remove_columns=train.column_names, desc="next-item examples")


def eval_users(split: Dataset) -> list[dict]:
    """The users of an encoded split as `{"item_indices", "target"}` dicts, sorted by history length.

    One bulk read from Arrow (row-by-row reads took 0.5 s of the 1.2 s that evaluating all Beauty users took).
    Batches of similar history lengths pad less; metrics are per-user means, so the order changes nothing."""
    with gc_paused():  # a list and a dict per user
        users = split.select_columns(["item_indices", "target"]).to_list()
    users.sort(key=lambda user: len(user["item_indices"]))
    return users


def eval_loader(split: Dataset, collator, loop_args, accelerator=None, max_users=None) -> DataLoader:
    """A DataLoader over an encoded validation/test split (optionally its first `max_users` users)."""
    max_users = max_users if max_users is not None else loop_args.max_eval_users
    if max_users:
        split = split.select(range(min(max_users, len(split))))
    loader = DataLoader(eval_users(split), batch_size=loop_args.eval_batch_size, shuffle=False, collate_fn=collator)
    return accelerator.prepare_data_loader(loader) if accelerator is not None else loader
