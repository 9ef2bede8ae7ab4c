"""Masking strategies (invariants for every strategy in the registry), the mix a config names, and the collators of
training/masking.py."""

import pytest
import torch
from torch.utils.data import DataLoader

from tokenization_semantic_id import mask_index, padding_index
from training.masking import (
    DEFAULT_MASKING,
    IGNORE_INDEX,
    MASKING_STRATEGIES,
    CausalCollator,
    HistoryCollator,
    MultiMaskCollator,
    NextItemCollator,
    check_masking,
    multi_region_mask,
    span_mask,
    strategy_options,
    tail_mask,
    valid_from_lengths,
)

SEQ_LEN = 12
# every length from 0 to SEQ_LEN, plus random ones: the empty and length-1 rows are always there
RANDOM_LENGTHS = torch.randint(0, SEQ_LEN + 1, (40,), generator=torch.Generator().manual_seed(7))
LENGTHS = torch.cat([torch.arange(SEQ_LEN + 1), RANDOM_LENGTHS])
RATIOS = {"cloze": 0.3, "span": 0.3, "tail": 0.3, "multi_region": 0.4}  # one entry per registered strategy


def run_strategy(name, lengths=LENGTHS, seed=0, **kwargs):
    valid = valid_from_lengths(lengths, SEQ_LEN)
    kwargs.setdefault("ratio", RATIOS[name])
    return valid, MASKING_STRATEGIES[name](valid, generator=torch.Generator().manual_seed(seed), **kwargs)


def runs_per_row(masked: torch.Tensor) -> torch.Tensor:
    """Number of maximal runs of True in each row `(B, T)` -> `(B,)`."""
    starts = masked & ~torch.nn.functional.pad(masked, (1, 0))[:, :-1]
    return starts.sum(dim=1)


# -- invariants, every strategy ----------------------------------------------------------------------------------------


def test_every_registered_strategy_is_tested_here():
    assert set(RATIOS) == set(MASKING_STRATEGIES)


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


@pytest.mark.parametrize("name", list(MASKING_STRATEGIES))
def test_defaults_give_the_invariants(name):
    """Each strategy with the options a config gets when it names only `prob` (`strategy_options`)."""
    valid = valid_from_lengths(LENGTHS, SEQ_LEN)
    masked = MASKING_STRATEGIES[name](valid, generator=torch.Generator().manual_seed(0), **strategy_options(name))
    assert not (masked & ~valid).any()
    assert (masked.sum(dim=1)[LENGTHS > 0] >= 1).all()


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


# -- the strategy mix a config names (check_masking) -------------------------------------------------------------------


def test_strategy_options_are_the_functions_keyword_defaults():
    assert strategy_options("cloze") == {"ratio": 0.2}
    assert strategy_options("tail") == {"ratio": 0.2, "k": None}
    assert strategy_options("multi_region") == {"ratio": 0.3, "num_regions": 3}
    with pytest.raises(ValueError, match="unknown masking strategy 'bert'; known: cloze, span, tail, multi_region"):
        strategy_options("bert")


def test_check_masking_fills_defaults_and_drops_unused_strategies():
    assert check_masking(DEFAULT_MASKING) == {
        "cloze": (0.4, {"ratio": 0.2}),
        "span": (0.2, {"ratio": 0.2}),
        "tail": (0.2, {"ratio": 0.2, "k": None}),
        "multi_region": (0.2, {"ratio": 0.3, "num_regions": 3}),
    }
    mix = check_masking({"cloze": {"prob": 0.75, "ratio": 0.5}, "span": {"prob": 0.0}, "tail": {"prob": 0.25, "k": 1}})
    assert mix == {"cloze": (0.75, {"ratio": 0.5}), "tail": (0.25, {"ratio": 0.2, "k": 1})}
    assert list(mix) == ["cloze", "tail"]  # the mapping's order


@pytest.mark.parametrize(
    "masking, message",
    [
        ({"bert": {"prob": 1.0}}, r"unknown masking strategy 'bert'; known: cloze, span, tail, multi_region"),
        ({"span": {"prob": 1.0, "rate": 0.2}}, r"masking strategy 'span' has no setting rate; it takes prob, ratio"),
        ({"tail": {"prob": 1.0, "num_regions": 2}},
         r"masking strategy 'tail' has no setting num_regions; it takes prob, ratio, k"),
        ({"cloze": {"prob": 0.5}, "span": {"prob": 0.4}}, r"masking strategy probabilities must sum to 1, got 0.9"),
        ({"cloze": {"prob": 0.6}, "span": {"prob": 0.6}}, r"probabilities must sum to 1, got 1.2"),
        ({"cloze": {"prob": 1.5}, "span": {"prob": -0.5}}, r"probability of masking strategy 'span' must be >= 0, got -0.5"),
        ({"cloze": {"ratio": 0.2}}, r"masking strategy 'cloze' needs a mapping with 'prob', got \{'ratio': 0.2\}"),
        ({"cloze": 1.0}, r"masking strategy 'cloze' needs a mapping with 'prob', got 1.0"),
        ({"span": {"prob": 1.0, "ratio": 2}}, r"mask ratio must be in \(0, 1\], got 2"),
        ({}, r"masking must map strategy names to settings"),
        ([("cloze", {"prob": 1.0})], r"masking must map strategy names to settings"),
    ],
)
def test_check_masking_refuses_a_bad_mix(masking, message):
    with pytest.raises(ValueError, match=message):
        check_masking(masking)
    with pytest.raises(ValueError, match=message):
        MultiMaskCollator(num_items=NUM_ITEMS, masking=masking)  # refused when built, before the first batch


@pytest.mark.parametrize("masking", [{"tail": {"prob": 1.0, "k": 0}}, {"multi_region": {"prob": 1.0, "num_regions": 0}}])
def test_check_masking_refuses_bad_strategy_options_up_front(masking):
    with pytest.raises(ValueError, match=r"must be >= 1, got 0"):
        check_masking(masking)


# -- collators ---------------------------------------------------------------------------------------------------------

NUM_ITEMS = 20
PAD, MASK = padding_index(NUM_ITEMS), mask_index(NUM_ITEMS)


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
    return MultiMaskCollator(**{"num_items": NUM_ITEMS, "max_len": 6, **kwargs})


def check_multi_mask_batch(batch, examples, max_len=6):
    """Left-padded newest `max_len` items; masked positions hold `[MASK]` and their item as label, -100 elsewhere."""
    width = max(min(len(e["item_indices"]), max_len) for e in examples)
    assert set(batch) == {"item_indices", "attention_mask", "labels"}
    assert batch["item_indices"].shape == batch["attention_mask"].shape == batch["labels"].shape == (len(examples), width)
    masked, padding = batch["item_indices"] == MASK, batch["item_indices"] == PAD
    assert torch.equal(batch["attention_mask"].bool(), ~padding)
    assert torch.equal(batch["labels"] == IGNORE_INDEX, ~masked)  # -100 exactly where unmasked
    for b, example in enumerate(examples):
        kept = example["item_indices"][-max_len:]
        assert padding[b].sum() == width - len(kept)
        row, labels = batch["item_indices"][b, width - len(kept):], batch["labels"][b, width - len(kept):]
        assert int((row == MASK).sum()) >= 1
        original = torch.where(row == MASK, labels, row)  # every position gives back its item, masked or not
        assert original.tolist() == kept


def test_multi_mask_collator_shapes_labels_and_padding():
    examples = make_examples()
    batch = multi_mask_collator()(examples)
    check_multi_mask_batch(batch, examples)
    for b, example in enumerate(examples):
        kept = min(len(example["item_indices"]), 6)
        assert int((batch["item_indices"][b] == MASK).sum()) <= max(kept - 1, 1)


@pytest.mark.parametrize("name", list(MASKING_STRATEGIES))
def test_multi_mask_collator_labels_every_strategy(name):
    """Through the collator, every strategy alone: padding never masked, >= 1 masked per row, labels -100 exactly
    where unmasked, and the same seed gives the same batch."""
    examples = make_examples(count=32)
    masking = {name: {"prob": 1.0, "ratio": RATIOS[name]}}
    batch = multi_mask_collator(masking=masking, seed=1)(examples)
    check_multi_mask_batch(batch, examples)
    again = multi_mask_collator(masking=masking, seed=1)(examples)
    assert all(torch.equal(batch[key], again[key]) for key in batch)


def test_multi_mask_collator_single_strategy_tail_k():
    collator = multi_mask_collator(masking={"tail": {"prob": 1.0, "k": 1}})
    batch = collator(make_examples())
    masked = batch["item_indices"] == MASK
    assert masked[:, -1].all() and not masked[:, :-1].any()


def test_multi_mask_collator_mixes_strategies_with_the_given_probabilities():
    # ratio 0.2: one masked item in a 6-item row
    collator = multi_mask_collator(masking={"cloze": {"prob": 0.5, "ratio": 0.2}, "tail": {"prob": 0.5, "ratio": 0.2}})
    batch = collator([{"item_indices": list(range(6))}] * 1000)
    masked = batch["item_indices"] == MASK
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
        multi_mask_collator(masking={"random": {"prob": 1.0}})
    with pytest.raises(ValueError, match="tail_mask k must be >= 1, got 0"):  # refused at the first batch
        multi_mask_collator(masking={"tail": {"prob": 1.0, "k": 0}})([{"item_indices": [1, 2]}])
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        multi_mask_collator(max_len=0)
    with pytest.raises(ValueError, match="num_items must be >= 1, got 0"):
        multi_mask_collator(num_items=0)
    collator = multi_mask_collator()
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
    with pytest.raises(ValueError, match="example 1 has no items"):
        collator([{"item_indices": [1]}, {"item_indices": []}])
    with pytest.raises(ValueError, match=r"example 1: item index 20 is out of range \[0, num_items=20\)"):
        collator([{"item_indices": [1]}, {"item_indices": [2, 20]}])
    with pytest.raises(ValueError, match=r"example 0: item index -1 is out of range"):
        collator([{"item_indices": [-1, 2]}])
    with pytest.raises(ValueError, match=r"sequence 1: item indices must be ints, got \['B0001', 'B0002'\]"):
        collator([{"item_indices": [1]}, {"item_indices": ["B0001", "B0002"]}])
    with pytest.raises(ValueError, match="example 0 has no 'item_indices' key"):
        collator([{"item_ids": ["a"]}])


def test_next_item_collator_masks_one_position_after_the_history():
    collator = NextItemCollator(num_items=NUM_ITEMS, max_len=4)
    examples = [{"item_indices": [1, 2, 3, 4, 5], "target": 6}, {"item_indices": [], "target": 7}]
    batch = collator(examples)
    assert set(batch) == {"item_indices", "attention_mask", "labels"}
    assert batch["item_indices"].tolist() == [[3, 4, 5, MASK], [PAD, PAD, PAD, MASK]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX] * 3 + [6], [IGNORE_INDEX] * 3 + [7]]
    with pytest.raises(ValueError, match=r"example 0: target item index 20 is out of range"):
        collator([{"item_indices": [1], "target": 20}])
    with pytest.raises(ValueError, match="example 0: 'target' must be an int item index, got 'B00'"):
        collator([{"item_indices": [1], "target": "B00"}])


def test_history_collator_returns_the_unmasked_history_and_targets():
    collator = HistoryCollator(num_items=NUM_ITEMS, max_len=4)
    batch = collator([{"item_indices": [1, 2, 3, 4, 5], "target": 6}, {"item_indices": [9], "target": torch.tensor(7)}])
    assert set(batch) == {"item_indices", "attention_mask", "targets"}
    assert batch["item_indices"].tolist() == [[3, 4, 5], [PAD, PAD, 9]]  # newest max_len - 1 items
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["targets"].tolist() == [6, 7]
    empty = collator([{"item_indices": [], "target": 0}])
    assert empty["item_indices"].tolist() == [[PAD]] and empty["attention_mask"].tolist() == [[0]]
    with pytest.raises(ValueError, match="example 0: 'target' must be an int item index, got None"):
        collator([{"item_indices": [1]}])


def test_causal_collator_labels_every_position_with_the_next_item():
    collator = CausalCollator(num_items=NUM_ITEMS, max_len=3)
    batch = collator([{"item_indices": [1, 2, 3, 4, 5]}, {"item_indices": [8, 9]}])
    assert set(batch) == {"item_indices", "attention_mask", "labels"}
    assert batch["item_indices"].tolist() == [[2, 3, 4], [PAD, PAD, 8]]  # the newest max_len + 1 items, minus the last
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["labels"].tolist() == [[3, 4, 5], [IGNORE_INDEX, IGNORE_INDEX, 9]]
    with pytest.raises(ValueError, match=r"example 0 has 1 item\(s\): causal training needs at least 2"):
        collator([{"item_indices": [1]}])
