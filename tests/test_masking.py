"""Masking strategies (invariants for every strategy) and the collators of training/masking.py."""

import pytest
import torch
from torch.utils.data import DataLoader

from training.masking import (
    IGNORE_INDEX,
    MASKING_STRATEGIES,
    HistoryCollator,
    MultiMaskCollator,
    NextItemCollator,
    check_strategy_probs,
    multi_region_mask,
    span_mask,
    tail_mask,
    valid_from_lengths,
)

SEQ_LEN = 12
# every length from 0 to SEQ_LEN, plus random ones: the empty and length-1 rows are always there
RANDOM_LENGTHS = torch.randint(0, SEQ_LEN + 1, (40,), generator=torch.Generator().manual_seed(7))
LENGTHS = torch.cat([torch.arange(SEQ_LEN + 1), RANDOM_LENGTHS])
RATIOS = {"cloze": 0.3, "span": 0.3, "tail": 0.3, "multi_region": 0.4}


def run_strategy(name, lengths=LENGTHS, seed=0, **kwargs):
    valid = valid_from_lengths(lengths, SEQ_LEN)
    kwargs.setdefault("ratio", RATIOS[name])
    return valid, MASKING_STRATEGIES[name](valid, generator=torch.Generator().manual_seed(seed), **kwargs)


def runs_per_row(masked: torch.Tensor) -> torch.Tensor:
    """Number of maximal runs of True in each row `(B, T)` -> `(B,)`."""
    starts = masked & ~torch.nn.functional.pad(masked, (1, 0))[:, :-1]
    return starts.sum(dim=1)


# -- invariants, every strategy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MASKING_STRATEGIES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_padding_is_never_masked(name, seed):
    valid, masked = run_strategy(name, seed=seed)
    assert masked.shape == valid.shape and masked.dtype == torch.bool
    assert not (masked & ~valid).any()


@pytest.mark.parametrize("name", list(MASKING_STRATEGIES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_nonempty_sequence_has_a_masked_item_and_never_all(name, seed):
    valid, masked = run_strategy(name, seed=seed)
    counts = masked.sum(dim=1)
    assert (counts[LENGTHS > 0] >= 1).all()
    assert (counts[LENGTHS == 0] == 0).all()
    assert (counts[LENGTHS > 1] < LENGTHS[LENGTHS > 1]).all()
    assert (counts[LENGTHS == 1] == 1).all()


@pytest.mark.parametrize("name", list(MASKING_STRATEGIES))
def test_masked_count_is_the_rounded_ratio(name):
    _, masked = run_strategy(name, ratio=0.5)
    expected = torch.floor(0.5 * LENGTHS.double() + 0.5).long().clamp(min=1)
    expected = torch.minimum(expected, (LENGTHS - 1).clamp(min=1)) * (LENGTHS > 0)
    assert torch.equal(masked.sum(dim=1), expected)


@pytest.mark.parametrize("name", list(MASKING_STRATEGIES))
def test_same_seed_same_masks(name):
    assert torch.equal(run_strategy(name, seed=3)[1], run_strategy(name, seed=3)[1])


@pytest.mark.parametrize("name", ["cloze", "span", "multi_region"])
def test_different_seeds_give_different_masks(name):
    assert not torch.equal(run_strategy(name, seed=3)[1], run_strategy(name, seed=4)[1])


@pytest.mark.parametrize("name", list(MASKING_STRATEGIES))
def test_lengths_and_valid_mask_inputs_agree(name):
    lengths = torch.tensor([0, 1, 4, SEQ_LEN])
    from_lengths = MASKING_STRATEGIES[name](lengths, ratio=0.3, generator=torch.Generator().manual_seed(5))
    valid = valid_from_lengths(lengths)
    from_valid = MASKING_STRATEGIES[name](valid, ratio=0.3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(from_lengths, from_valid)


@pytest.mark.parametrize("name", list(MASKING_STRATEGIES))
def test_right_padded_mask_is_rejected(name):
    right_padded = torch.tensor([[True, True, False]])
    with pytest.raises(ValueError, match="row 0 is not left-padded"):
        MASKING_STRATEGIES[name](right_padded, ratio=0.5)


@pytest.mark.parametrize("name", list(MASKING_STRATEGIES))
@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.1])
def test_bad_ratio_is_rejected(name, ratio):
    with pytest.raises(ValueError, match=r"mask ratio must be in \(0, 1\]"):
        MASKING_STRATEGIES[name](torch.tensor([3]), ratio=ratio)


def test_bad_valid_input_is_rejected():
    with pytest.raises(ValueError, match="expected a bool"):
        MASKING_STRATEGIES["cloze"](torch.zeros(2, 3), ratio=0.5)
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        valid_from_lengths(torch.tensor([2, -1]))
    with pytest.raises(ValueError, match="exceeds seq_len"):
        valid_from_lengths(torch.tensor([5]), seq_len=3)


# -- what each strategy does -------------------------------------------------------------------------------------------


def test_cloze_covers_every_position_over_many_draws():
    lengths = torch.full((2000,), 10)
    masked = MASKING_STRATEGIES["cloze"](lengths, ratio=0.2, generator=torch.Generator().manual_seed(0))
    frequency = masked.double().mean(dim=0)  # each position masked with probability 0.2
    assert torch.allclose(frequency, torch.full((10,), 0.2, dtype=torch.float64), atol=0.03)


def test_span_is_one_contiguous_run_at_every_possible_start():
    valid, masked = run_strategy("span", lengths=torch.full((500,), 8), ratio=0.25)  # 2 items, starts 0..6
    assert (runs_per_row(masked) == 1).all()
    first = masked.float().argmax(dim=1) - (SEQ_LEN - 8)
    assert set(first.tolist()) == set(range(7))


def test_tail_masks_the_newest_items():
    lengths = torch.tensor([0, 1, 3, 6])
    masked = tail_mask(lengths, ratio=0.5)
    assert masked.tolist() == [
        [False] * 6,
        [False] * 5 + [True],
        [False] * 4 + [True] * 2,  # round(0.5 * 3) = 2 (half rounds up), below the length
        [False] * 3 + [True] * 3,
    ]
    assert masked[:, -1].tolist() == [False, True, True, True]


def test_tail_with_k_masks_exactly_k_and_all_items_when_k_reaches_the_length():
    lengths = torch.tensor([0, 1, 2, 5])
    masked = tail_mask(lengths, k=2)
    assert masked.sum(dim=1).tolist() == [0, 1, 2, 2]  # the documented exception: k >= length masks everything
    assert masked[:, -2:].sum().item() == 5
    with pytest.raises(ValueError, match="tail_mask k must be >= 1"):
        tail_mask(lengths, k=0)


def test_multi_region_gives_separate_runs():
    lengths = torch.full((300,), SEQ_LEN)
    _, masked = run_strategy("multi_region", lengths=lengths, ratio=0.5, num_regions=3)  # 6 masked of 12
    runs = runs_per_row(masked)
    assert (runs == 3).all()  # min(3, 6, 12 - 6 + 1) = 3 runs, separated, so they never merge
    _, masked = run_strategy("multi_region", lengths=torch.tensor([2, 3, 4]), ratio=0.5, num_regions=5)
    assert masked.sum(dim=1).tolist() == [1, 2, 2]
    assert runs_per_row(masked).tolist() == [1, 2, 2]  # 1 masked -> 1 run; 2 of 3 -> the first and last items
    assert masked[1, -3:].tolist() == [True, False, True]
    with pytest.raises(ValueError, match="num_regions must be >= 1"):
        multi_region_mask(lengths, num_regions=0)


def test_multi_region_places_runs_everywhere():
    lengths = torch.full((2000,), 10)
    masked = multi_region_mask(lengths, ratio=0.3, generator=torch.Generator().manual_seed(1))
    assert (masked.double().mean(dim=0) > 0.15).all()  # every position gets masked sometimes


def test_span_ratio_one_still_leaves_an_item():
    masked = span_mask(torch.tensor([5]), ratio=1.0)
    assert masked.sum().item() == 4


# -- strategy mix validation -------------------------------------------------------------------------------------------


def test_strategy_probs_are_validated():
    with pytest.raises(ValueError, match="unknown masking strategy 'bert'"):
        check_strategy_probs({"bert": 1.0})
    with pytest.raises(ValueError, match="must sum to 1, got 0.9"):
        check_strategy_probs({"cloze": 0.5, "span": 0.4})
    with pytest.raises(ValueError, match="'span' must be >= 0"):
        check_strategy_probs({"cloze": 1.5, "span": -0.5})
    with pytest.raises(ValueError, match="strategy probabilities are empty"):
        check_strategy_probs({})
    assert check_strategy_probs({"cloze": 0.25, "span": 0.25, "tail": 0.25, "multi_region": 0.25})


# -- collators ---------------------------------------------------------------------------------------------------------

NUM_ITEMS, NUM_CODEBOOKS, CODEBOOK_SIZE = 20, 3, 8
ITEM_CODES = torch.randint(0, CODEBOOK_SIZE, (NUM_ITEMS, NUM_CODEBOOKS), generator=torch.Generator().manual_seed(0))


def token_ids(item: int) -> list[int]:
    return [4 + level * CODEBOOK_SIZE + int(ITEM_CODES[item, level]) for level in range(NUM_CODEBOOKS)]


def make_examples(count=16, seed=0, max_length=9):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_length + 1, (count,), generator=g).tolist()
    return [
        {
            "item_indices": torch.randint(0, NUM_ITEMS, (n,), generator=g).tolist(),
            "user_id": f"u{i}",  # other keys are ignored
            "target": i % NUM_ITEMS,
        }
        for i, n in enumerate(lengths)
    ]


def multi_mask_collator(**kwargs):
    kwargs = {"item_codes": ITEM_CODES, "codebook_size": CODEBOOK_SIZE, "max_len": 6, **kwargs}
    return MultiMaskCollator(**kwargs)


def test_multi_mask_collator_shapes_labels_and_padding():
    examples = make_examples()
    batch = multi_mask_collator()(examples)
    width = max(min(len(e["item_indices"]), 6) for e in examples)
    assert set(batch) == {"input_ids", "attention_mask", "item_indices", "labels"}
    assert batch["input_ids"].shape == (16, width, NUM_CODEBOOKS) == batch["labels"].shape
    assert batch["attention_mask"].shape == (16, width) == batch["item_indices"].shape
    masked = batch["item_indices"] == NUM_ITEMS + 1
    padding = batch["item_indices"] == NUM_ITEMS
    assert torch.equal(batch["attention_mask"].bool(), ~padding)
    assert (batch["input_ids"][masked] == 1).all() and (batch["input_ids"][padding] == 0).all()
    assert ((batch["labels"] == IGNORE_INDEX).all(dim=-1) == ~masked).all()  # -100 exactly where unmasked
    for b, example in enumerate(examples):
        kept = example["item_indices"][-6:]
        row = batch["item_indices"][b, width - len(kept):]
        labels = batch["labels"][b, width - len(kept):]
        assert 1 <= int((row == NUM_ITEMS + 1).sum()) <= max(len(kept) - 1, 1)
        for t, item in enumerate(kept):  # the newest max_len items, left-padded, each level's token id
            if row[t] == NUM_ITEMS + 1:
                assert labels[t].tolist() == token_ids(item)
            else:
                assert row[t].item() == item
                assert batch["input_ids"][b, width - len(kept) + t].tolist() == token_ids(item)


def test_multi_mask_collator_single_strategy_tail_k():
    collator = multi_mask_collator(strategy_probs={"tail": 1.0}, tail_k=1)
    batch = collator(make_examples())
    masked = batch["item_indices"] == NUM_ITEMS + 1
    assert masked[:, -1].all() and not masked[:, :-1].any()


def test_multi_mask_collator_mixes_strategies_with_the_given_probabilities():
    ratios = {"cloze": 0.2, "tail": 0.2}  # one masked item in a 6-item row
    collator = multi_mask_collator(strategy_probs={"cloze": 0.5, "tail": 0.5}, strategy_ratios=ratios)
    batch = collator([{"item_indices": list(range(6))}] * 1000)
    masked = batch["item_indices"] == NUM_ITEMS + 1
    assert (masked.sum(dim=1) == 1).all()
    last_masked = masked[:, -1].double().mean().item()
    assert 0.53 < last_masked < 0.64  # tail always (1/2), cloze one time in six (1/2 * 1/6): 0.583


def test_multi_mask_collator_is_reproducible_and_resumable():
    examples = make_examples()
    first, second = multi_mask_collator(seed=3), multi_mask_collator(seed=3)
    batches = [first(examples) for _ in range(3)]
    assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(batches, [second(examples) for _ in range(3)]))
    assert not torch.equal(batches[0]["labels"], batches[1]["labels"])  # next batch, new masks

    # resume: a fresh collator restored from the state after batch 1 reproduces batch 2
    replay = multi_mask_collator(seed=3)
    replay(examples)
    state = replay.state_dict()
    resumed = multi_mask_collator(seed=99)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == {"seed": 3, "epoch": 0, "batch_index": 1}
    assert torch.equal(resumed(examples)["labels"], batches[1]["labels"])

    # set_epoch(epoch, batch_index) does the same, and a new epoch draws new masks
    resumed.set_epoch(0, batch_index=2)
    assert torch.equal(resumed(examples)["labels"], batches[2]["labels"])
    resumed.set_epoch(1)
    assert not torch.equal(resumed(examples)["labels"], batches[0]["labels"])
    assert not torch.equal(multi_mask_collator(seed=3, process_index=1)(examples)["labels"], batches[0]["labels"])


def test_multi_mask_collator_masks_do_not_depend_on_dataloader_workers():
    examples = make_examples(count=64)

    def all_labels(num_workers):
        collator = multi_mask_collator(seed=5)
        loader = DataLoader(examples, batch_size=8, collate_fn=collator, num_workers=num_workers)
        return torch.cat([batch["labels"].flatten() for batch in loader])  # same widths per batch either way

    assert torch.equal(all_labels(0), all_labels(2))


def test_multi_mask_collator_bad_input():
    with pytest.raises(ValueError, match="unknown masking strategy 'random'"):
        multi_mask_collator(strategy_probs={"random": 1.0})
    with pytest.raises(ValueError, match="must sum to 1, got 1.2"):
        multi_mask_collator(strategy_probs={"cloze": 0.6, "span": 0.6})
    with pytest.raises(ValueError, match="unknown masking strategy 'spam' in strategy_ratios"):
        multi_mask_collator(strategy_ratios={"spam": 0.2})
    with pytest.raises(ValueError, match=r"mask ratio must be in \(0, 1\], got 2"):
        multi_mask_collator(strategy_ratios={"span": 2})
    with pytest.raises(ValueError, match="tail_k must be >= 1"):
        multi_mask_collator(tail_k=0)
    with pytest.raises(ValueError, match=r"item_codes\[0, 0\] = 8 is outside \[0, codebook_size=8\)"):
        multi_mask_collator(item_codes=torch.full((2, 3), 8))
    with pytest.raises(ValueError, match="pad_token_id and mask_token_id must differ"):
        multi_mask_collator(pad_token_id=1, mask_token_id=1)
    with pytest.raises(ValueError, match="mask_token_id=5 must be a special token id"):
        multi_mask_collator(mask_token_id=5)
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        multi_mask_collator(max_len=0)
    collator = multi_mask_collator()
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
    with pytest.raises(ValueError, match="example 1 has no items"):
        collator([{"item_indices": [1]}, {"item_indices": []}])
    with pytest.raises(ValueError, match=r"example 1: item index 20 is out of range \[0, num_items=20\)"):
        collator([{"item_indices": [1]}, {"item_indices": [2, 20]}])
    with pytest.raises(ValueError, match=r"example 0: item index -1 is out of range"):
        collator([{"item_indices": [-1, 2]}])
    with pytest.raises(ValueError, match="example 1: item_indices must be a list of ints"):
        collator([{"item_indices": [1]}, {"item_indices": ["B0001", "B0002"]}])
    with pytest.raises(ValueError, match="example 0 has no 'item_indices' key"):
        collator([{"item_ids": ["a"]}])


def test_next_item_collator_masks_one_position_after_the_history():
    collator = NextItemCollator(item_codes=ITEM_CODES, codebook_size=CODEBOOK_SIZE, max_len=4)
    examples = [{"item_indices": [1, 2, 3, 4, 5], "target": 6}, {"item_indices": [], "target": 7}]
    batch = collator(examples)
    pad, masked = NUM_ITEMS, NUM_ITEMS + 1
    assert batch["item_indices"].tolist() == [[3, 4, 5, masked], [pad, pad, pad, masked]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 0, 1]]
    assert batch["input_ids"][:, -1].tolist() == [[1] * 3, [1] * 3]
    assert batch["input_ids"][0, 0].tolist() == token_ids(3)
    assert batch["labels"][:, -1].tolist() == [token_ids(6), token_ids(7)]
    assert (batch["labels"][:, :-1] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match=r"example 0: target item index 20 is out of range"):
        collator([{"item_indices": [1], "target": 20}])
    with pytest.raises(ValueError, match="example 0: 'target' must be an int item index, got 'B00'"):
        collator([{"item_indices": [1], "target": "B00"}])


def test_history_collator_returns_the_unmasked_history_and_targets():
    collator = HistoryCollator(item_codes=ITEM_CODES, codebook_size=CODEBOOK_SIZE, max_len=4)
    batch = collator([{"item_indices": [1, 2, 3, 4, 5], "target": 6}, {"item_indices": [9], "target": torch.tensor(7)}])
    assert set(batch) == {"input_ids", "attention_mask", "item_indices", "targets"}
    assert batch["item_indices"].tolist() == [[3, 4, 5], [NUM_ITEMS, NUM_ITEMS, 9]]  # newest max_len - 1 items
    assert batch["targets"].tolist() == [6, 7]
    assert batch["input_ids"][1, -1].tolist() == token_ids(9) and (batch["input_ids"][1, 0] == 0).all()
    empty = collator([{"item_indices": [], "target": 0}])
    assert empty["item_indices"].tolist() == [[NUM_ITEMS]] and empty["attention_mask"].tolist() == [[0]]
    with pytest.raises(ValueError, match="example 0: 'target' must be an int item index, got None"):
        collator([{"item_indices": [1]}])
