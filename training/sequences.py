"""Prepared user sequences (item ids) -> item-index datasets the collators batch."""

from datasets import Dataset


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
