"""Masking strategies for multi-mask pretraining, and the data collators that turn item sequences into model inputs.

Q-Bert4Rec pretrains on a mix of masking strategies chosen per sequence (docs/method.md §1, stage 3):
random **cloze** (BERT4Rec), one contiguous **span**, the **tail** (the last items) and **multi-region** (several
disjoint spans). Each strategy is a pure function of a bool `valid` `(B, T)` (or the sequence lengths) and a
`torch.Generator`, returning a bool `masked` `(B, T)`. Every strategy guarantees:

- padding is never masked;
- every non-empty sequence gets at least one masked item;
- a sequence of length > 1 never has all its items masked (except `tail_mask` with `k >= length`, which masks the
  whole sequence on purpose);
- the same generator state gives the same masks.

Sequences are LEFT-padded (the newest item is the last position), as in docs/interfaces.md §5.

Strategies are listed once, in the registry `MASKING_STRATEGIES`; a config's `masking:` mapping names the mix
(`{cloze: {prob: 0.4, ratio: 0.5}, ...}`, checked by `check_masking`).

The collators batch item indices (the catalogue's padding and `[MASK]` indices, `tokenization_semantic_id`):
- `MultiMaskCollator`: pretraining; `labels` hold the original item index at masked positions, -100 elsewhere.
- `NextItemCollator`: fine-tuning; history + one `[MASK]` position at the end whose label is the target.
- `HistoryCollator`: evaluation; the history alone (the model appends `[MASK]` itself) and the `targets`.
- `CausalCollator`: the SASRec baseline; every position predicts the next item.

Randomness in `MultiMaskCollator` comes from a generator re-seeded for every batch from
`(seed, process_index, epoch, batch_index)`, so a resumed run that restores `state_dict()` (or calls
`set_epoch(epoch, batch_index)`) reproduces the masks of an uninterrupted run.
"""

import inspect
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import get_worker_info

from tokenization_semantic_id import left_pad, mask_index, padding_index

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------------------------------
# Masking strategies: pure tensor functions
# ----------------------------------------------------------------------------------------------------------------------


def valid_from_lengths(lengths: torch.Tensor, seq_len: int | None = None) -> torch.Tensor:
    """Bool `(B, seq_len)` that is True on the last `lengths[b]` positions of row b (left padding)."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (batch,), got shape {tuple(lengths.shape)}")
    if (lengths < 0).any():
        raise ValueError(f"lengths must be >= 0, got {lengths.min().item()}")
    if seq_len is None:
        seq_len = int(lengths.max().item()) if len(lengths) else 0
    if len(lengths) and lengths.max().item() > seq_len:
        raise ValueError(f"a length ({lengths.max().item()}) exceeds seq_len ({seq_len})")
    positions = torch.arange(seq_len)
    return positions[None, :] >= (seq_len - lengths)[:, None]


def _as_valid(valid_or_lengths: torch.Tensor) -> torch.Tensor:
    """Accept a bool `(B, T)` left-padded validity mask or integer lengths `(B,)`; return the bool `(B, T)` mask."""
    x = torch.as_tensor(valid_or_lengths)
    if x.dim() == 1 and x.dtype != torch.bool:
        return valid_from_lengths(x)
    if x.dim() != 2 or x.dtype != torch.bool:
        raise ValueError(f"expected a bool (batch, seq_len) mask or (batch,) lengths, got {x.dtype} {tuple(x.shape)}")
    # left padding: once a row is valid it stays valid, so no True may be followed by a False
    not_left_padded = (x[:, :-1] & ~x[:, 1:]).any(dim=1)
    if not_left_padded.any():
        row = int(not_left_padded.nonzero()[0, 0])
        raise ValueError(f"valid mask row {row} is not left-padded (padding must come before the items)")
    return x


def _check_ratio(ratio: float) -> float:
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"mask ratio must be in (0, 1], got {ratio}")
    return float(ratio)


def _mask_counts(lengths: torch.Tensor, ratio: float) -> torch.Tensor:
    """Items to mask per row: round(ratio * length), at least 1, at most length - 1 when length > 1; 0 when empty."""
    counts = torch.floor(ratio * lengths.double() + 0.5).long()
    counts = torch.minimum(counts.clamp(min=1), (lengths - 1).clamp(min=1))
    return torch.where(lengths > 0, counts, torch.zeros_like(counts))


def _random_subset(sizes: torch.Tensor, counts: torch.Tensor, width: int, generator) -> torch.Tensor:
    """Bool `(B, width)`: row b is a uniformly random set of `counts[b]` indices among the first `sizes[b]`."""
    keys = torch.rand(len(sizes), width, generator=generator)
    keys = keys.masked_fill(torch.arange(width)[None, :] >= sizes[:, None], 2.0)  # out of range: sorts last
    ranks = keys.argsort(dim=1).argsort(dim=1)  # (B, width) rank of each key within its row
    return ranks < counts[:, None]


def cloze_mask(valid: torch.Tensor, ratio: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random cloze (BERT4Rec): a uniformly random set of round(ratio * length) items per sequence.

    Args:
        valid: bool `(B, T)` left-padded mask of real items, or integer lengths `(B,)`.
        ratio: fraction of items to mask, in (0, 1].
        generator: the random source.

    Returns:
        bool `(B, T)`, True at masked positions.
    """
    valid, ratio = _as_valid(valid), _check_ratio(ratio)
    lengths = valid.sum(dim=1)
    keys = torch.rand(valid.shape, generator=generator).masked_fill(~valid, 2.0)  # padding sorts last
    ranks = keys.argsort(dim=1).argsort(dim=1)
    return ranks < _mask_counts(lengths, ratio)[:, None]


def span_mask(valid: torch.Tensor, ratio: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """One contiguous run of round(ratio * length) items starting at a uniformly random position.

    Args / Returns: as `cloze_mask`.
    """
    valid, ratio = _as_valid(valid), _check_ratio(ratio)
    batch, seq_len = valid.shape
    lengths = valid.sum(dim=1)
    counts = _mask_counts(lengths, ratio)
    starts = (torch.rand(batch, generator=generator) * (lengths - counts + 1)).long()  # in [0, length - count]
    offsets = torch.arange(seq_len)[None, :] - (seq_len - lengths)[:, None]  # (B, T) position within the items
    return valid & (offsets >= starts[:, None]) & (offsets < (starts + counts)[:, None])


def tail_mask(
    valid: torch.Tensor,
    ratio: float = 0.2,
    generator: torch.Generator | None = None,
    k: int | None = None,
) -> torch.Tensor:
    """The newest items: the last `k` items when `k` is given, else the last round(ratio * length) items.

    With `k >= length` the whole sequence is masked (the one exception to "never all items"): `k=1` on a
    sequence of one item is the next-item task. `generator` is accepted for a uniform signature and not used.

    Args / Returns: as `cloze_mask`, plus `k`: number of newest items to mask (>= 1), overriding `ratio`.
    """
    valid = _as_valid(valid)
    seq_len = valid.shape[1]
    lengths = valid.sum(dim=1)
    if k is not None:
        if k < 1:
            raise ValueError(f"tail_mask k must be >= 1, got {k}")
        counts = lengths.clamp(max=k)
    else:
        counts = _mask_counts(lengths, _check_ratio(ratio))
    return valid & (torch.arange(seq_len)[None, :] >= (seq_len - counts)[:, None])


def multi_region_mask(
    valid: torch.Tensor,
    ratio: float = 0.3,
    generator: torch.Generator | None = None,
    num_regions: int = 3,
) -> torch.Tensor:
    """Several disjoint spans: round(ratio * length) masked items split into up to `num_regions` separate runs.

    A row gets `r = min(num_regions, count, length - count + 1)` runs, separated by at least one unmasked item
    (so they never merge). The masked items are split into r non-empty runs at random cut points, and the runs are
    placed in r distinct random gaps between the unmasked items. Vectorised over the batch.

    Args / Returns: as `cloze_mask`, plus `num_regions` (>= 1).
    """
    valid, ratio = _as_valid(valid), _check_ratio(ratio)
    if num_regions < 1:
        raise ValueError(f"num_regions must be >= 1, got {num_regions}")
    batch, seq_len = valid.shape
    lengths = valid.sum(dim=1)
    counts = _mask_counts(lengths, ratio)  # masked items per row
    runs = torch.minimum(counts, lengths - counts + 1).clamp(max=num_regions)  # 0 for empty rows

    # split the `counts` masked items into `runs` non-empty runs: runs - 1 distinct cuts among 1..count-1
    cuts = _random_subset((counts - 1).clamp(min=0), (runs - 1).clamp(min=0), seq_len, generator)  # cut j: before j+1
    run_of_item = torch.nn.functional.pad(cuts.long().cumsum(dim=1), (1, 0))[:, :seq_len]  # (B, T) run of masked item q

    # place the runs in `runs` distinct gaps among the length - count + 1 gaps around the unmasked items
    gaps = _random_subset(lengths - counts + 1, runs, seq_len + 1, generator)  # (B, T + 1)
    chosen_gaps = (~gaps).long().argsort(dim=1, stable=True)  # chosen gap indices first, ascending
    gap_of_item = chosen_gaps.gather(1, run_of_item)  # (B, T) unmasked items before masked item q

    # masked item q sits after gap_of_item[q] unmasked items and q masked ones
    item = torch.arange(seq_len)[None, :]
    columns = (seq_len - lengths)[:, None] + gap_of_item + item
    columns = torch.where(item < counts[:, None], columns, seq_len)  # unused items go to a spare column
    masked = torch.zeros(batch, seq_len + 1, dtype=torch.bool)
    masked.scatter_(1, columns, True)
    return masked[:, :seq_len]


# The registry: a strategy is a function `(valid, ratio, generator, **options) -> masked`; its keyword defaults are its
# defaults in a config. Adding one = a function above, a line here, and its case in tests/test_masking.py.
MASKING_STRATEGIES = {
    "cloze": cloze_mask,
    "span": span_mask,
    "tail": tail_mask,
    "multi_region": multi_region_mask,
}
# The mix when a config names none: the probability each sequence gets each strategy, with the strategies' defaults.
DEFAULT_MASKING = {"cloze": {"prob": 0.4}, "span": {"prob": 0.2}, "tail": {"prob": 0.2}, "multi_region": {"prob": 0.2}}


def strategy_options(name: str) -> dict:
    """The settings strategy `name` takes besides `prob`, with their defaults (its function's keyword arguments)."""
    if name not in MASKING_STRATEGIES:
        raise ValueError(f"unknown masking strategy '{name}'; known: {', '.join(MASKING_STRATEGIES)}")
    parameters = inspect.signature(MASKING_STRATEGIES[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.name not in ("valid", "generator")}


def check_masking(masking: dict, tolerance: float = 1e-6) -> dict:
    """Validate a mix `{strategy: {"prob": p, **options}}` (a config's `masking:` mapping): known strategies and
    options, probabilities >= 0 summing to 1. Returns `{strategy: (prob, options with defaults filled in)}` for the
    strategies with `prob > 0`, in the mapping's order."""
    if not isinstance(masking, dict) or not masking:
        raise ValueError(f"masking must map strategy names to settings, e.g. {DEFAULT_MASKING}; got {masking!r}")
    mix = {}
    for name, settings in masking.items():
        allowed = strategy_options(name)
        if not isinstance(settings, dict) or "prob" not in settings:
            raise ValueError(f"masking strategy '{name}' needs a mapping with 'prob', got {settings!r}")
        unknown = sorted(set(settings) - {"prob", *allowed})
        if unknown:
            raise ValueError(f"masking strategy '{name}' has no setting {', '.join(unknown)}; it takes prob, "
                             f"{', '.join(allowed)}")
        prob = settings["prob"]
        if not prob >= 0:
            raise ValueError(f"probability of masking strategy '{name}' must be >= 0, got {prob}")
        options = {**allowed, **{k: v for k, v in settings.items() if k != "prob"}}
        MASKING_STRATEGIES[name](torch.ones(1, 2, dtype=torch.bool), generator=torch.Generator(), **options)  # the
        # strategy refuses its own bad options (a ratio outside (0, 1], k < 1, ...) now, not at the first batch
        mix[name] = (float(prob), options)
    total = sum(prob for prob, _ in mix.values())
    if abs(total - 1.0) > tolerance:
        raise ValueError(f"masking strategy probabilities must sum to 1, got {total:.6g} ({masking})")
    return {name: entry for name, entry in mix.items() if entry[0] > 0}


# ----------------------------------------------------------------------------------------------------------------------
# Collators: item sequences -> model inputs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class ItemBatcher:
    """Shared part of the collators: lists of item indices -> left-padded `item_indices` and `attention_mask`.

    Args:
        num_items: items in the catalogue (`tokenizer.num_items`); padding and `[MASK]` positions get the
            catalogue's `padding_index` and `mask_index`.
        max_len: positions per sequence the model sees (the newest items are kept).
    """

    num_items: int
    max_len: int = 50

    def __post_init__(self):
        if self.num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {self.num_items}")
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        self.padding_index, self.masked_index = padding_index(self.num_items), mask_index(self.num_items)

    def _item_lists(self, examples: list[dict]) -> list[list[int]]:
        if len(examples) == 0:
            raise ValueError("cannot collate an empty batch (no examples)")
        sequences = []
        for b, example in enumerate(examples):
            if "item_indices" not in example:
                raise ValueError(f"example {b} has no 'item_indices' key (keys: {sorted(example)})")
            sequences.append(list(example["item_indices"]))
        return sequences

    def _left_pad(self, sequences: list[list[int]], keep: int, extra_slots: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """`left_pad` (the catalogue's) with a range check: item indices `(B, T + extra_slots)` and bool `valid`."""
        indices, valid = left_pad(sequences, keep, self.padding_index, extra_slots)
        out_of_range = valid & ((indices < 0) | (indices >= self.num_items))
        if out_of_range.any():
            row, column = (int(i) for i in out_of_range.nonzero()[0])
            raise ValueError(f"example {row}: item index {indices[row, column].item()} is out of range "
                             f"[0, num_items={self.num_items})")
        return indices, valid

    def _targets(self, examples: list[dict]) -> torch.Tensor:
        targets = []
        for b, example in enumerate(examples):
            target = example.get("target")
            if isinstance(target, torch.Tensor) and target.numel() == 1:
                target = target.item()
            if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
                raise ValueError(f"example {b}: 'target' must be an int item index, got {target!r}")
            if not 0 <= target < self.num_items:
                raise ValueError(f"example {b}: target item index {target} is out of range "
                                 f"[0, num_items={self.num_items})")
            targets.append(int(target))
        return torch.tensor(targets, dtype=torch.long)


@dataclass(eq=False)
class MultiMaskCollator(ItemBatcher):
    """Pretraining collator: mixes masking strategies per sequence.

    Each example is a dict with `item_indices` (list[int], oldest first); other keys are ignored. The newest
    `max_len` items are kept and left-padded. Returns `item_indices` `(B, T)` (masked = `mask_index`),
    `attention_mask` `(B, T)` and `labels` `(B, T)` (the original item index where masked, -100 elsewhere), with T
    the longest kept sequence in the batch.

    Args (besides `ItemBatcher`'s):
        masking: `{strategy: {"prob": p, **options}}` over `MASKING_STRATEGIES`, probabilities summing to 1
            (`check_masking`); options a strategy is not given take its function's defaults.
        seed: base seed; the batch generator is seeded from (seed, process_index, epoch, batch_index).
        process_index: the data-parallel rank (`accelerator.process_index`), so ranks draw different masks.
    """

    masking: dict = field(default_factory=lambda: dict(DEFAULT_MASKING))
    seed: int = 0
    process_index: int = 0

    def __post_init__(self):
        super().__post_init__()
        self.mix = check_masking(self.masking)  # {name: (prob, options)}, prob > 0
        self.strategy_weights = torch.tensor([prob for prob, _ in self.mix.values()])
        self.epoch = 0
        self.batch_index = 0  # next batch of this epoch (main process)
        self._worker_calls = 0  # batches made by this copy inside a DataLoader worker

    # -- reproducible randomness ---------------------------------------------------------------------------------

    def set_epoch(self, epoch: int, batch_index: int = 0) -> None:
        """Start epoch `epoch` at batch `batch_index` (> 0 when resuming mid-epoch after skipping batches)."""
        self.epoch, self.batch_index, self._worker_calls = int(epoch), int(batch_index), 0

    def state_dict(self) -> dict:
        """Where the mask stream stands; pass to `load_state_dict` (or `accelerator.register_for_checkpointing`)."""
        return {"seed": self.seed, "epoch": self.epoch, "batch_index": self.batch_index}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"], state["batch_index"])

    def _next_generator(self) -> torch.Generator:
        """A generator for the next batch, seeded from (seed, process_index, epoch, global batch index).

        In the main process the batch index counts calls. In a DataLoader worker (a copy of this collator made at
        the start of each epoch; use `persistent_workers=False`), worker w of W makes batches w, w + W, ... of a
        map-style dataset, so its k-th batch is `batch_index + k * W + w`."""
        worker = get_worker_info()
        if worker is None:
            index = self.batch_index
            self.batch_index += 1
        else:
            index = self.batch_index + self._worker_calls * worker.num_workers + worker.id
            self._worker_calls += 1
        entropy = [self.seed, self.process_index, self.epoch, index]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
        return torch.Generator().manual_seed(seed)

    # -- masking ---------------------------------------------------------------------------------------------------

    def mask(self, valid: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Pick a strategy per sequence and apply it. `valid` bool `(B, T)` -> masked bool `(B, T)`."""
        choice = torch.multinomial(self.strategy_weights, valid.shape[0], replacement=True, generator=generator)
        masked = torch.zeros_like(valid)
        for s, (name, (_, options)) in enumerate(self.mix.items()):
            rows = (choice == s).nonzero().squeeze(1)
            if len(rows):
                masked[rows] = MASKING_STRATEGIES[name](valid[rows], generator=generator, **options)
        return masked

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences = self._item_lists(examples)
        for b, seq in enumerate(sequences):
            if len(seq) == 0:
                raise ValueError(f"example {b} has no items: pretraining needs at least one item per sequence")
        item_indices, valid = self._left_pad(sequences, keep=self.max_len)
        masked = self.mask(valid, self._next_generator())
        return {
            "item_indices": item_indices.masked_fill(masked, self.masked_index),  # (B, T)
            "attention_mask": valid.long(),  # (B, T)
            "labels": item_indices.masked_fill(~masked, IGNORE_INDEX),  # (B, T)
        }


@dataclass(eq=False)
class NextItemCollator(ItemBatcher):
    """Fine-tuning collator (tail masking of the next item): history + one `[MASK]` position whose label is the
    target.

    Each example is a dict with `item_indices` (history, oldest first, may be empty) and `target` (int item index).
    The newest `max_len - 1` history items are kept so that history + `[MASK]` fits `max_len` positions. Returns
    `item_indices` `(B, T)`, `attention_mask` `(B, T)` and `labels` `(B, T)` (-100 everywhere except the last
    position), T = longest kept history + 1.
    """

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences = self._item_lists(examples)
        targets = self._targets(examples)
        item_indices, valid = self._left_pad(sequences, keep=self.max_len - 1, extra_slots=1)
        item_indices[:, -1] = self.masked_index
        valid[:, -1] = True
        labels = torch.full(item_indices.shape, IGNORE_INDEX, dtype=torch.long)
        labels[:, -1] = targets
        return {"item_indices": item_indices, "attention_mask": valid.long(), "labels": labels}


@dataclass(eq=False)
class HistoryCollator(ItemBatcher):
    """Evaluation collator: the history alone, unmasked (the model appends `[MASK]` itself), and the targets.

    Each example is a dict with `item_indices` (history, oldest first, may be empty) and `target` (int item index).
    The newest `max_len - 1` history items are kept (history + the model's `[MASK]` fit `max_len` positions).
    Returns `item_indices` `(B, T)`, `attention_mask` `(B, T)` and `targets` `(B,)`; T >= 1 (an all-padding row
    when every history in the batch is empty).
    """

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences = self._item_lists(examples)
        targets = self._targets(examples)
        item_indices, valid = self._left_pad(sequences, keep=self.max_len - 1)
        if item_indices.shape[1] == 0:
            item_indices, valid = self._left_pad(sequences, keep=0, extra_slots=1)
        return {"item_indices": item_indices, "attention_mask": valid.long(), "targets": targets}


@dataclass(eq=False)
class CausalCollator(ItemBatcher):
    """Causal (SASRec-style) training collator: every position predicts the item after it.

    Each example is a dict with `item_indices` (list[int], oldest first, at least 2 items). The newest `max_len + 1`
    items are kept; the input is all but the last, and `labels` at position t hold item t + 1. Returns
    `item_indices` `(B, T)`, `attention_mask` `(B, T)` and `labels` `(B, T)` (-100 at padding). Use with
    `QBert4RecConfig(is_causal=True)`.
    """

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences = self._item_lists(examples)
        for b, seq in enumerate(sequences):
            if len(seq) < 2:
                raise ValueError(f"example {b} has {len(seq)} item(s): causal training needs at least 2 per sequence")
        item_indices, valid = self._left_pad(sequences, keep=self.max_len + 1)
        inputs, targets, target_valid = item_indices[:, :-1], item_indices[:, 1:], valid[:, 1:] & valid[:, :-1]
        return {
            "item_indices": inputs,
            "attention_mask": valid[:, :-1].long(),
            "labels": targets.masked_fill(~target_valid, IGNORE_INDEX),
        }
