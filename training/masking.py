"""Masking strategies for multi-mask pretraining, and the data collators that turn item sequences into model inputs.

Q-Bert4Rec pretrains on a mix of masking strategies chosen per sequence (DESIGN.md §1, stage 3):
random **cloze** (BERT4Rec), one contiguous **span**, the **tail** (the last items) and **multi-region** (several
disjoint spans). Each strategy is a pure function of a bool `valid` `(B, T)` (or the sequence lengths) and a
`torch.Generator`, returning a bool `masked` `(B, T)`. Every strategy guarantees:

- padding is never masked;
- every non-empty sequence gets at least one masked item;
- a sequence of length > 1 never has all its items masked (except `tail_mask` with `k >= length`, which masks the
  whole sequence on purpose);
- the same generator state gives the same masks.

Sequences are LEFT-padded (the newest item is the last position), as in docs/interfaces.md §5.

The collators map item indices to semantic-ID token ids (`num_special_tokens + level * codebook_size + code`):
- `MultiMaskCollator`: pretraining; `labels` hold the original token ids at masked positions, -100 elsewhere.
- `NextItemCollator`: fine-tuning; history + one `[MASK]` position at the end whose label is the target's codes.
- `HistoryCollator`: evaluation; the history alone (the model appends `[MASK]` itself) and the `targets`.

Randomness in `MultiMaskCollator` comes from a generator re-seeded for every batch from
`(seed, process_index, epoch, batch_index)`, so a resumed run that restores `state_dict()` (or calls
`set_epoch(epoch, batch_index)`) reproduces the masks of an uninterrupted run.
"""

from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch
from torch.utils.data import get_worker_info

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


MASKING_STRATEGIES = {
    "cloze": cloze_mask,
    "span": span_mask,
    "tail": tail_mask,
    "multi_region": multi_region_mask,
}


def check_strategy_probs(strategy_probs: dict, tolerance: float = 1e-6) -> dict:
    """Validate a `{strategy name: probability}` mix: known names, probabilities >= 0 summing to 1."""
    if not strategy_probs:
        raise ValueError("strategy probabilities are empty: give at least one of " + ", ".join(MASKING_STRATEGIES))
    for name, prob in strategy_probs.items():
        if name not in MASKING_STRATEGIES:
            raise ValueError(f"unknown masking strategy '{name}'; known: {', '.join(MASKING_STRATEGIES)}")
        if not prob >= 0:
            raise ValueError(f"probability of masking strategy '{name}' must be >= 0, got {prob}")
    total = sum(strategy_probs.values())
    if abs(total - 1.0) > tolerance:
        raise ValueError(f"masking strategy probabilities must sum to 1, got {total:.6g} ({strategy_probs})")
    return strategy_probs


# ----------------------------------------------------------------------------------------------------------------------
# Collators: item sequences -> model inputs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class SemanticIdBatcher:
    """Shared part of the collators: item indices -> left-padded `input_ids`, `attention_mask`, `item_indices`.

    Args:
        item_codes: long `(num_items, num_codebooks)`, each item's code per level (row = item index).
        codebook_size: codes per level.
        num_special_tokens: token ids below this are special (pad, mask, ...).
        pad_token_id: token id at every level of a padding position.
        mask_token_id: token id at every level of a masked position.
        max_len: positions per sequence the model sees (the newest items are kept).
    """

    item_codes: torch.Tensor
    codebook_size: int
    num_special_tokens: int = 4
    pad_token_id: int = 0
    mask_token_id: int = 1
    max_len: int = 50

    def __post_init__(self):
        codes = torch.as_tensor(self.item_codes)
        if codes.dim() != 2 or codes.is_floating_point() or codes.shape[0] == 0:
            raise ValueError(f"item_codes must be an integer (num_items, num_codebooks) table, got {codes.dtype} "
                             f"{tuple(codes.shape)}")
        codes = codes.long()
        out_of_range = (codes < 0) | (codes >= self.codebook_size)
        if out_of_range.any():
            item, level = (int(i) for i in out_of_range.nonzero()[0])
            raise ValueError(f"item_codes[{item}, {level}] = {codes[item, level].item()} is outside "
                             f"[0, codebook_size={self.codebook_size})")
        for name in ("pad_token_id", "mask_token_id"):
            if not 0 <= getattr(self, name) < self.num_special_tokens:
                raise ValueError(f"{name}={getattr(self, name)} must be a special token id in "
                                 f"[0, num_special_tokens={self.num_special_tokens})")
        if self.pad_token_id == self.mask_token_id:
            raise ValueError(f"pad_token_id and mask_token_id must differ, both are {self.pad_token_id}")
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        self.item_codes = codes
        self.num_items, self.num_codebooks = codes.shape
        # token table (num_items + 2, L): rows num_items (padding) and num_items + 1 (masked) hold the special tokens
        levels = torch.arange(self.num_codebooks)[None, :]
        item_tokens = self.num_special_tokens + levels * self.codebook_size + codes
        specials = torch.tensor([[self.pad_token_id], [self.mask_token_id]]).expand(2, self.num_codebooks)
        self.token_table = torch.cat([item_tokens, specials], dim=0)

    @property
    def padding_index(self) -> int:
        return self.num_items

    @property
    def masked_index(self) -> int:
        return self.num_items + 1

    def _item_lists(self, examples: list[dict]) -> list[list[int]]:
        if len(examples) == 0:
            raise ValueError("cannot collate an empty batch (no examples)")
        sequences = []
        for b, example in enumerate(examples):
            if "item_indices" not in example:
                raise ValueError(f"example {b} has no 'item_indices' key (keys: {sorted(example)})")
            sequences.append(list(example["item_indices"]))
        return sequences

    def _left_pad(
        self, sequences: list[list[int]], keep: int, extra_slots: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the newest `keep` items of each sequence and left-pad them, leaving `extra_slots` free columns at
        the end. Returns item indices `(B, T + extra_slots)` (padding = num_items) and bool `valid` for the items."""
        kept = [seq[max(len(seq) - keep, 0):] if keep > 0 else [] for seq in sequences]
        lengths = np.fromiter((len(seq) for seq in kept), dtype=np.int64, count=len(kept))  # (B,)
        width, total = int(lengths.max()), int(lengths.sum())
        flat = np.asarray(list(chain.from_iterable(kept)))  # (total,) all kept items, row after row
        if total and flat.dtype.kind not in "iu":
            bad = next(b for b, seq in enumerate(kept) if len(seq) and np.asarray(seq).dtype.kind not in "iu")
            raise ValueError(f"example {bad}: item_indices must be a list of ints, got {kept[bad][:5]}")
        out_of_range = np.flatnonzero((flat < 0) | (flat >= self.num_items)) if total else []
        if len(out_of_range):
            first = int(out_of_range[0])
            row = int(np.searchsorted(np.cumsum(lengths), first, side="right"))
            raise ValueError(f"example {row}: item index {flat[first]} is out of range [0, num_items={self.num_items})")
        # right-align each row: item j of the flat list, in row r, goes to flat position (r + 1) * T - (end_r - j)
        # where end_r is the flat offset where row r ends (done in numpy: many tiny torch ops are slow on CPU)
        rows = np.repeat(np.arange(len(kept)), lengths)
        positions = (rows + 1) * width - np.cumsum(lengths)[rows] + np.arange(total)
        padded = np.full(len(kept) * width, self.padding_index, dtype=np.int64)
        padded[positions] = flat
        indices = torch.from_numpy(padded.reshape(len(kept), width))
        valid = valid_from_lengths(torch.from_numpy(lengths), width)
        if extra_slots:
            indices = torch.nn.functional.pad(indices, (0, extra_slots), value=self.padding_index)
            valid = torch.nn.functional.pad(valid, (0, extra_slots))
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
class MultiMaskCollator(SemanticIdBatcher):
    """Pretraining collator: mixes masking strategies per sequence.

    Each example is a dict with `item_indices` (list[int], oldest first); other keys are ignored. The newest
    `max_len` items are kept and left-padded. Returns `input_ids` `(B, T, L)`, `attention_mask` `(B, T)`,
    `item_indices` `(B, T)` (masked = num_items + 1) and `labels` `(B, T, L)` (original token ids where masked,
    -100 elsewhere), with T the longest kept sequence in the batch.

    Args (besides `SemanticIdBatcher`'s):
        strategy_probs: `{strategy: probability}` over `MASKING_STRATEGIES`, summing to 1.
        strategy_ratios: `{strategy: fraction of items masked}`; missing strategies use `DEFAULT_RATIOS`.
        tail_k: when set, the tail strategy masks exactly the last `tail_k` items instead of a ratio.
        num_regions: most runs of the multi-region strategy.
        seed: base seed; the batch generator is seeded from (seed, process_index, epoch, batch_index).
        process_index: the data-parallel rank (`accelerator.process_index`), so ranks draw different masks.
    """

    DEFAULT_RATIOS = {"cloze": 0.2, "span": 0.2, "tail": 0.2, "multi_region": 0.3}

    strategy_probs: dict = field(default_factory=lambda: {"cloze": 0.4, "span": 0.2, "tail": 0.2, "multi_region": 0.2})
    strategy_ratios: dict = field(default_factory=dict)
    tail_k: int | None = None
    num_regions: int = 3
    seed: int = 0
    process_index: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_strategy_probs(self.strategy_probs)
        for name, ratio in self.strategy_ratios.items():
            if name not in MASKING_STRATEGIES:
                raise ValueError(f"unknown masking strategy '{name}' in strategy_ratios; known: "
                                 f"{', '.join(MASKING_STRATEGIES)}")
            _check_ratio(ratio)
        if self.tail_k is not None and self.tail_k < 1:
            raise ValueError(f"tail_k must be >= 1, got {self.tail_k}")
        if self.num_regions < 1:
            raise ValueError(f"num_regions must be >= 1, got {self.num_regions}")
        self.strategy_names = [name for name, prob in self.strategy_probs.items() if prob > 0]
        self.strategy_weights = torch.tensor([float(self.strategy_probs[name]) for name in self.strategy_names])
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
        for s, name in enumerate(self.strategy_names):
            rows = (choice == s).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            kwargs = {"ratio": self.strategy_ratios.get(name, self.DEFAULT_RATIOS[name]), "generator": generator}
            if name == "tail" and self.tail_k is not None:
                kwargs["k"] = self.tail_k
            if name == "multi_region":
                kwargs["num_regions"] = self.num_regions
            masked[rows] = MASKING_STRATEGIES[name](valid[rows], **kwargs)
        return masked

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences = self._item_lists(examples)
        for b, seq in enumerate(sequences):
            if len(seq) == 0:
                raise ValueError(f"example {b} has no items: pretraining needs at least one item per sequence")
        item_indices, valid = self._left_pad(sequences, keep=self.max_len)
        masked = self.mask(valid, self._next_generator())
        original_ids = self.token_table[item_indices]  # (B, T, L)
        masked_indices = item_indices.masked_fill(masked, self.masked_index)
        return {
            "input_ids": self.token_table[masked_indices],  # (B, T, L)
            "attention_mask": valid.long(),  # (B, T)
            "item_indices": masked_indices,  # (B, T)
            "labels": original_ids.masked_fill(~masked[..., None], IGNORE_INDEX),  # (B, T, L)
        }


@dataclass(eq=False)
class NextItemCollator(SemanticIdBatcher):
    """Fine-tuning collator (tail masking of the next item): history + one `[MASK]` position whose label is the
    target's codes.

    Each example is a dict with `item_indices` (history, oldest first, may be empty) and `target` (int item index).
    The newest `max_len - 1` history items are kept so that history + `[MASK]` fits `max_len` positions. Returns
    `input_ids` `(B, T, L)`, `attention_mask` `(B, T)`, `item_indices` `(B, T)` and `labels` `(B, T, L)` (-100
    everywhere except the last position), T = longest kept history + 1.
    """

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences = self._item_lists(examples)
        targets = self._targets(examples)
        item_indices, valid = self._left_pad(sequences, keep=self.max_len - 1, extra_slots=1)
        item_indices[:, -1] = self.masked_index
        valid[:, -1] = True
        labels = torch.full((*item_indices.shape, self.num_codebooks), IGNORE_INDEX, dtype=torch.long)
        labels[:, -1] = self.token_table[targets]
        return {
            "input_ids": self.token_table[item_indices],
            "attention_mask": valid.long(),
            "item_indices": item_indices,
            "labels": labels,
        }


@dataclass(eq=False)
class HistoryCollator(SemanticIdBatcher):
    """Evaluation collator: the history alone, unmasked (the model appends `[MASK]` itself), and the targets.

    Each example is a dict with `item_indices` (history, oldest first, may be empty) and `target` (int item index).
    The newest `max_len - 1` history items are kept (history + the model's `[MASK]` fit `max_len` positions).
    Returns `input_ids` `(B, T, L)`, `attention_mask` `(B, T)`, `item_indices` `(B, T)` and `targets` `(B,)`;
    T >= 1 (an all-padding row when every history in the batch is empty).
    """

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences = self._item_lists(examples)
        targets = self._targets(examples)
        item_indices, valid = self._left_pad(sequences, keep=self.max_len - 1)
        if item_indices.shape[1] == 0:
            item_indices, valid = self._left_pad(sequences, keep=0, extra_slots=1)
        return {
            "input_ids": self.token_table[item_indices],
            "attention_mask": valid.long(),
            "item_indices": item_indices,
            "targets": targets,
        }


@dataclass
class CausalCollator(SemanticIdBatcher):
    """Causal (SASRec-style) training collator: every position predicts the item after it.

    Each example is a dict with `item_indices` (list[int], oldest first, at least 2 items). The newest `max_len + 1`
    items are kept; the input is all but the last, and `labels` at position t hold the token ids of item t + 1.
    Returns `input_ids` `(B, T, L)`, `attention_mask` `(B, T)`, `item_indices` `(B, T)` and `labels` `(B, T, L)`
    (-100 at padding). Use with `QBert4RecConfig(is_causal=True)`.
    """

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences = self._item_lists(examples)
        for b, seq in enumerate(sequences):
            if len(seq) < 2:
                raise ValueError(f"example {b} has {len(seq)} item(s): causal training needs at least 2 per sequence")
        item_indices, valid = self._left_pad(sequences, keep=self.max_len + 1)
        inputs, targets, target_valid = item_indices[:, :-1], item_indices[:, 1:], valid[:, 1:] & valid[:, :-1]
        labels = self.token_table[targets].masked_fill(~target_valid[..., None], IGNORE_INDEX)  # (B, T, L)
        return {
            "input_ids": self.token_table[inputs],
            "attention_mask": valid[:, :-1].long(),
            "item_indices": inputs,
            "labels": labels,
        }
