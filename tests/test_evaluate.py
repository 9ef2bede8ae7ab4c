"""Full-ranking metrics, evaluate_model, the most-popular baseline, the `evaluate` metric module, and on real data:
evaluation ranks items exactly as `model.recommend` does."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from training.evaluate import (
    MostPopular,
    aggregate,
    batch_ranks,
    eval_loader,
    eval_users,
    evaluate_model,
    history_exclusion,
    metrics_from_ranks,
    rank_metrics,
    save_metrics,
    target_ranks,
)
from training.masking import HistoryCollator

METRIC_DIR = Path(__file__).resolve().parents[1] / "metrics" / "ranking"


# -- rank_metrics on hand-computed cases -------------------------------------------------------------------------------


def test_target_ranked_first_scores_one_everywhere():
    metrics = rank_metrics(torch.tensor([[0.9, 0.1, 0.3]]), torch.tensor([0]), ks=(1, 2))
    assert {name: value.item() for name, value in metrics.items()} == {
        "recall@1": 1.0, "ndcg@1": 1.0, "recall@2": 1.0, "ndcg@2": 1.0, "mrr": 1.0,
    }


def test_target_at_rank_three():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])  # target item 3 has 3 items above it
    metrics = rank_metrics(scores, torch.tensor([3]), ks=(3, 5))
    assert metrics["recall@3"].item() == 0.0 and metrics["ndcg@3"].item() == 0.0
    assert metrics["recall@5"].item() == 1.0
    assert metrics["ndcg@5"].item() == pytest.approx(1 / math.log2(5))
    assert metrics["mrr"].item() == pytest.approx(1 / 4)


def test_ties_are_counted_pessimistically():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 0.0]])
    assert target_ranks(scores, torch.tensor([0, 1])).tolist() == [3, 2]  # all tied -> last; one tie -> below it
    metrics = rank_metrics(torch.zeros(1, 100), torch.tensor([50]), ks=(10,))
    assert metrics["recall@10"].item() == 0.0  # a constant model never hits


def test_exclude_removes_candidates_but_never_the_target():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    exclude = torch.tensor([[True, False, True, False]])
    assert target_ranks(scores, torch.tensor([2]), exclude).tolist() == [1]  # item 0 removed, item 1 still above
    assert target_ranks(scores, torch.tensor([2])).tolist() == [2]
    assert target_ranks(scores, torch.tensor([0]), exclude).tolist() == [0]  # the target stays a candidate


def test_ranks_match_a_sort_based_reference():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(150, 300, generator=g)  # more rows than one block of target_ranks (64)
    targets = torch.randint(0, 300, (150,), generator=g)
    reference = (scores.argsort(dim=1, descending=True) == targets[:, None]).float().argmax(dim=1)
    assert torch.equal(target_ranks(scores, targets), reference)
    exclude = torch.rand(150, 300, generator=g) < 0.3
    kept = scores.masked_fill(exclude & (torch.arange(300) != targets[:, None]), -torch.inf)
    excluded_reference = (kept.argsort(dim=1, descending=True) == targets[:, None]).float().argmax(dim=1)
    assert torch.equal(target_ranks(scores, targets, exclude), excluded_reference)
    original = scores.clone()
    assert torch.equal(target_ranks(scores, targets), reference) and torch.equal(scores, original)  # left as is
    assert torch.equal(target_ranks(scores.clone(), targets, overwrite=True), reference)
    assert torch.equal(target_ranks(scores.clone(), targets, exclude, overwrite=True), excluded_reference)
    metrics = rank_metrics(scores, targets)
    assert torch.allclose(metrics["ndcg@10"], torch.where(reference < 10, 1 / torch.log2(reference + 2.0), 0).double())


def test_aggregate_means():
    means = aggregate(rank_metrics(torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]), torch.tensor([0, 2]), ks=(1,)))
    assert means == {"recall@1": 0.5, "ndcg@1": 0.5, "mrr": pytest.approx((1 + 1 / 3) / 2)}


def test_history_exclusion_ignores_padding_and_mask():
    item_indices = torch.tensor([[5, 5, 1, 3], [5, 6, 0, 2]])  # 5 = padding, 6 = masked for 5 items
    assert history_exclusion(item_indices, 5).tolist() == [
        [False, True, False, True, False],
        [True, False, True, False, False],
    ]


def test_rank_metrics_bad_input():
    with pytest.raises(ValueError, match="empty batch"):
        rank_metrics(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target 5 of row 1 is out of range \[0, num_items=5\)"):
        rank_metrics(torch.zeros(2, 5), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="target -1 of row 0 is out of range"):
        rank_metrics(torch.zeros(2, 5), torch.tensor([-1, 0]))
    nan_scores = torch.zeros(3, 5)
    nan_scores[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"scores contain NaN in 1 row\(s\), first rows \[2\]"):
        rank_metrics(nan_scores, torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="scores must be a float"):
        rank_metrics(torch.zeros(2, 5, dtype=torch.long), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"targets must be an integer \(2,\) tensor"):
        rank_metrics(torch.zeros(2, 5), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="exclude must be a bool tensor shaped like scores"):
        rank_metrics(torch.zeros(2, 5), torch.tensor([0, 1]), exclude=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="every cutoff k must be >= 1"):
        rank_metrics(torch.zeros(2, 5), torch.tensor([0, 1]), ks=(0, 10))
    with pytest.raises(ValueError, match="no users to aggregate"):
        aggregate({"mrr": torch.zeros(0)})


def test_infinite_scores_are_not_nan():
    scores = torch.tensor([[float("inf"), 0.0, float("-inf")]])  # the row sum is NaN, no entry is
    assert target_ranks(scores, torch.tensor([1])).tolist() == [1]
    # an excluded item tied with a target at -inf is still not counted
    scores = torch.tensor([[float("-inf"), float("-inf"), 1.0]])
    assert target_ranks(scores, torch.tensor([0]), torch.tensor([[False, True, False]])).tolist() == [1]


# -- evaluate_model with the most-popular baseline ---------------------------------------------------------------------

NUM_ITEMS = 6
ITEM_CODES = torch.stack([torch.arange(NUM_ITEMS) // 4, torch.arange(NUM_ITEMS) % 4], dim=1)


def tiny_loader(examples, batch_size=2):
    collator = HistoryCollator(num_items=NUM_ITEMS, max_len=4)
    return DataLoader(examples, batch_size=batch_size, collate_fn=collator)


def test_most_popular_counts_and_scores():
    model = MostPopular.from_sequences([[0, 1, 1], [1, 2], [5]], NUM_ITEMS)
    assert model.counts.tolist() == [1, 3, 1, 0, 0, 1]
    item_indices = torch.zeros(4, 2, dtype=torch.long)
    states = model.history_states(item_indices, torch.ones_like(item_indices))
    assert states.shape == (4, 0)
    scores = model.item_scores(states, item_indices)
    assert scores.shape == (4, NUM_ITEMS) and (scores == model.counts).all()
    with pytest.raises(ValueError, match=r"item index 6 is out of range \[0, num_items=6\)"):
        MostPopular.from_sequences([[1, 6]], NUM_ITEMS)
    with pytest.raises(ValueError, match="num_items must be >= 1"):
        MostPopular(0)


def test_evaluate_model_most_popular_hand_computed(tmp_path):
    model = MostPopular.from_sequences([[1, 1, 1, 2, 2, 0]], NUM_ITEMS)  # ranking: 1, 2, 0, then 3/4/5 tied
    examples = [
        {"item_indices": [3], "target": 1},  # rank 0
        {"item_indices": [1, 4], "target": 2},  # rank 1; 0 when the history (item 1) is excluded
        {"item_indices": [], "target": 5},  # rank 5 (tied with 3 and 4: pessimistic)
    ]
    metrics = evaluate_model(model, tiny_loader(examples), ks=(1, 2))
    assert metrics["num_users"] == 3 and metrics["num_items"] == NUM_ITEMS and metrics["exclude_history"] is False
    assert metrics["recall@1"] == pytest.approx(1 / 3) and metrics["recall@2"] == pytest.approx(2 / 3)
    assert metrics["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 6) / 3)
    excluded = evaluate_model(model, tiny_loader(examples), exclude_history=True, ks=(1, 2))
    assert excluded["recall@1"] == pytest.approx(2 / 3) and excluded["exclude_history"] is True

    written = save_metrics(metrics, tmp_path / "run", split="test", checkpoint="final")
    assert written == tmp_path / "run" / "metrics.json"
    assert json.loads(written.read_text()) == {**metrics, "split": "test", "checkpoint": "final"}
    assert save_metrics(metrics, tmp_path / "valid.json").name == "valid.json"
    with pytest.raises(ValueError, match="metric 'mrr' is nan"):
        save_metrics({"mrr": float("nan")}, tmp_path / "bad.json")


@pytest.fixture
def accelerator():
    """A single-process Accelerator; its shared state is reset afterwards (as accelerate's own AccelerateTestCase
    does) so that other tests can build one with other settings."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    yield Accelerator()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_evaluate_model_through_an_accelerator_gathers_every_user(accelerator):
    model = MostPopular.from_sequences([[0, 1, 1, 2]], NUM_ITEMS)
    examples = [{"item_indices": [i % NUM_ITEMS], "target": i % 3} for i in range(5)]  # last batch is short
    loader = accelerator.prepare(tiny_loader(examples))
    with_accelerator = evaluate_model(model, loader, accelerator=accelerator)
    without = evaluate_model(model, tiny_loader(examples))
    assert with_accelerator == without and with_accelerator["num_users"] == 5


def test_evaluate_model_empty_dataloader():
    with pytest.raises(ValueError, match="yielded no batches"):
        evaluate_model(MostPopular(NUM_ITEMS), [])


def tiny_qbert4rec(**overrides):
    from configuration_qbert4rec import QBert4RecConfig
    from modeling_qbert4rec import QBert4RecForMaskedItemModeling

    torch.manual_seed(0)
    config = QBert4RecConfig(num_codebooks=2, codebook_size=4, num_items=NUM_ITEMS, hidden_size=16, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=20, max_position_embeddings=4,
                             initializer_range=0.5, **overrides)
    model = QBert4RecForMaskedItemModeling(config)
    model.set_item_codes(ITEM_CODES)
    return model.eval()


SCORING_FLAGS = {
    "plain": {},
    "score_item_embedding": {"use_item_embedding": True, "score_item_embedding": True},
    "seen_item_bias": {"seen_item_bias": True},
}


@pytest.mark.parametrize("flags", list(SCORING_FLAGS))
@pytest.mark.parametrize("exclude_history", [False, True])
def test_blockwise_ranks_equal_the_ranks_of_score_items(monkeypatch, flags, exclude_history):
    """`batch_ranks` ranks `item_scores` in blocks of rows; the ranks are those of `score_items` in one piece."""
    import training.evaluate

    model = tiny_qbert4rec(**SCORING_FLAGS[flags])
    if model.head.seen_item_bias is not None:
        with torch.no_grad():
            model.head.seen_item_bias.fill_(-1.0)  # not 0: leaving out the histories would change the ranks
    examples = [{"item_indices": [(3 * i) % NUM_ITEMS, (i + 1) % NUM_ITEMS][: 1 + i % 2], "target": (i * 5) % NUM_ITEMS}
                for i in range(11)]
    in_one_block = evaluate_model(model, tiny_loader(examples, batch_size=7), exclude_history=exclude_history)
    monkeypatch.setattr(training.evaluate, "RANK_BLOCK", 2)  # 7 histories per batch: blocks 2, 2, 2, 1
    batch = HistoryCollator(num_items=NUM_ITEMS, max_len=4)(examples[:7])
    ranks, num_items = batch_ranks(model, batch, exclude_history)
    exclude = history_exclusion(batch["item_indices"], NUM_ITEMS) if exclude_history else None
    scores = model.score_items(batch["item_indices"], batch["attention_mask"])
    assert num_items == NUM_ITEMS and torch.equal(ranks, target_ranks(scores, batch["targets"], exclude))
    assert len(set(ranks.tolist())) > 1  # the histories are ranked differently: the check above can fail
    blockwise = evaluate_model(model, tiny_loader(examples, batch_size=7), exclude_history=exclude_history)
    assert blockwise == in_one_block


def test_ranked_batches_in_threads_keep_the_order_and_the_thread_count():
    from training.evaluate import ranked_batches

    model = tiny_qbert4rec()
    examples = [{"item_indices": [i % NUM_ITEMS, (2 * i) % NUM_ITEMS][: 1 + i % 2], "target": (i * 5) % NUM_ITEMS}
                for i in range(23)]
    one_by_one = [batch_ranks(model, batch)[0] for batch in tiny_loader(examples, batch_size=3)]
    threads = torch.get_num_threads()
    threaded = list(ranked_batches(model, tiny_loader(examples, batch_size=3), torch.device("cpu"), workers=3))
    assert torch.get_num_threads() == threads
    assert torch.cat([batch["targets"] for batch, _, _ in threaded]).tolist() == [e["target"] for e in examples]
    assert all(torch.equal(ranks, expected) for (_, ranks, _), expected in zip(threaded, one_by_one, strict=True))
    assert len({tuple(r.tolist()) for r in one_by_one}) > 1  # batches differ: a reordering would fail the check


def test_users_sorted_by_history_length_get_the_same_metrics():
    from datasets import Dataset

    model = tiny_qbert4rec()
    examples = [{"item_indices": [(7 * i + j) % NUM_ITEMS for j in range(i % 4)], "target": (i * 5) % NUM_ITEMS}
                for i in range(20)]
    users = eval_users(Dataset.from_list(examples))
    assert [len(u["item_indices"]) for u in users] == sorted(len(e["item_indices"]) for e in examples)
    as_stored = evaluate_model(model, tiny_loader(examples, batch_size=3))
    assert evaluate_model(model, tiny_loader(users, batch_size=3)) == pytest.approx(as_stored, abs=1e-12)


def test_eval_loader_takes_the_first_users_and_batches_them_by_length():
    from datasets import Dataset

    examples = [{"item_indices": [i % NUM_ITEMS] * (3 - i % 3), "target": i % NUM_ITEMS} for i in range(10)]
    split = Dataset.from_list(examples)
    collator = HistoryCollator(num_items=NUM_ITEMS, max_len=4)
    loop_args = SimpleNamespace(max_eval_users=None, eval_batch_size=4)
    batches = list(eval_loader(split, collator, loop_args))
    assert [len(b["targets"]) for b in batches] == [4, 4, 2]
    assert [b["item_indices"].shape[1] for b in batches] == [2, 3, 3]  # sorted by history length: 1, 1, 1, 2 | 2, 2, 3...
    first = list(eval_loader(split, collator, loop_args, max_users=5))
    assert sorted(t for b in first for t in b["targets"].tolist()) == sorted(e["target"] for e in examples[:5])
    loop_args.max_eval_users = 3
    assert sum(len(b["targets"]) for b in eval_loader(split, collator, loop_args)) == 3


# -- the `evaluate` metric module --------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")


def test_metric_module_agrees_with_rank_metrics(offline):
    import evaluate

    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 20, (40, 50), generator=g).double()  # integer scores: many ties
    targets = torch.randint(0, 50, (40,), generator=g)
    history = [torch.randint(0, 50, (3,), generator=g).tolist() for _ in range(40)]
    exclude = torch.zeros(40, 50, dtype=torch.bool)
    for user, items in enumerate(history):
        exclude[user, items] = True

    ranking = evaluate.load(str(METRIC_DIR))
    for metric_kwargs, exclude_mask in [({}, None), ({"exclude": history}, exclude)]:
        result = ranking.compute(
            predictions=scores.tolist(), references=targets.tolist(), ks=[5, 10, 20], **metric_kwargs
        )
        expected = aggregate(rank_metrics(scores, targets, ks=(5, 10, 20), exclude=exclude_mask))
        assert result.pop("num_users") == 40
        assert result == pytest.approx(expected)

    # incremental add_batch gives the same result as one compute
    for start in range(0, 40, 16):
        ranking.add_batch(predictions=scores[start:start + 16].tolist(), references=targets[start:start + 16].tolist())
    assert ranking.compute()["ndcg@10"] == pytest.approx(aggregate(rank_metrics(scores, targets))["ndcg@10"])


def test_metric_module_ranked_lists(offline):
    import evaluate

    ranked = evaluate.load(str(METRIC_DIR), "ranked_lists")
    result = ranked.compute(predictions=[[4, 2, 7], [1, 0], [3, 9, 8, 6]], references=[4, 3, 6], ks=[1, 5])
    assert result == pytest.approx({
        "recall@1": 1 / 3, "ndcg@1": 1 / 3, "recall@5": 2 / 3, "ndcg@5": (1 + 1 / math.log2(5)) / 3,
        "mrr": (1 + 0 + 1 / 4) / 3, "num_users": 3,
    })


def test_metric_module_bad_input(offline):
    import evaluate

    ranking = evaluate.load(str(METRIC_DIR))
    with pytest.raises(ValueError, match=r"predictions contain NaN scores in rows \[1\]"):
        ranking.compute(predictions=[[0.1, 0.2], [float("nan"), 0.2]], references=[0, 1])
    with pytest.raises(ValueError, match=r"reference 2 of user 0 is out of range \[0, num_items=2\)"):
        ranking.compute(predictions=[[0.1, 0.2]], references=[2])
    with pytest.raises(ValueError, match="every score row must cover the same items"):
        ranking.compute(predictions=[[0.1, 0.2], [0.3]], references=[0, 0])
    with pytest.raises(ValueError, match=r"no predictions to rank \(empty input\)"):
        ranking.compute(predictions=[], references=[])
    with pytest.raises(ValueError, match="every cutoff k must be >= 1"):
        ranking.compute(predictions=[[0.1, 0.2]], references=[0], ks=[0])
    with pytest.raises(ValueError, match="unknown ranking config 'topk'"):
        evaluate.load(str(METRIC_DIR), "topk")
    with pytest.raises(ValueError, match="exclude applies to score rows only"):
        evaluate.load(str(METRIC_DIR), "ranked_lists").compute(predictions=[[1]], references=[1], exclude=[[0]])


# -- real data: the most-popular anchor on Beauty ----------------------------------------------------------------------


def read_beauty_sequences(beauty_dir) -> list[list[int]]:
    """`Beauty.txt`: `user item item ...` with 1-based item ids -> item indices (id - 1), oldest first."""
    sequences = []
    with open(beauty_dir / "Beauty.txt") as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if len(fields) < 4:
                raise ValueError(f"Beauty.txt line {line_number}: a leave-one-out user needs >= 3 items")
            sequences.append([int(item) - 1 for item in fields[1:]])
    return sequences


def test_most_popular_on_beauty_matches_the_design_anchor(beauty_dir):
    """docs/method.md §4: most-popular R@10 .0114 / N@10 .0053 on the Beauty test split, history items kept.

    The anchor is reproduced with counts over everything before the test target (train + validation items);
    counting the training part alone (all but the last two items) gives R@10 .0106 / N@10 .0051."""
    sequences = read_beauty_sequences(beauty_dir)
    num_items = max(max(seq) for seq in sequences) + 1
    assert (len(sequences), num_items) == (22363, 12101)
    model = MostPopular.from_sequences([seq[:-1] for seq in sequences], num_items)
    collator = HistoryCollator(num_items=num_items, max_len=50)
    test = [{"item_indices": seq[:-1], "target": seq[-1]} for seq in sequences]
    metrics = evaluate_model(model, DataLoader(test, batch_size=2048, collate_fn=collator))
    assert metrics["num_users"] == 22363
    assert metrics["recall@10"] == pytest.approx(0.0114, abs=3e-4)
    assert metrics["ndcg@10"] == pytest.approx(0.0053, abs=3e-4)


# -- real data: evaluation ranks the Scientific catalogue as `recommend` does -----------------------------------------

SCIENTIFIC_MAX_LEN = 20  # max_position_embeddings: histories keep 19 items (some Scientific users have more)


@pytest.fixture(scope="module")
def scientific(scientific_dir):
    """Scientific through its registered reader: the tokenizer of its real catalogue (codes `[i % 64, i // 64]`,
    unique, built at once, `max_len` as a checkpoint's), every 8th test user (item ids and item indices) and their
    target item ids."""
    from tokenization_semantic_id import SemanticIdTokenizer
    from training.readers import read_source
    from training.sequences import encode_split

    data = read_source("recbole", scientific_dir)
    item_ids = data.items["item_id"]
    codes = [[i % 64, i // 64] for i in range(len(item_ids))]
    tok = SemanticIdTokenizer.from_codes(item_ids, codes, 64, max_len=SCIENTIFIC_MAX_LEN - 1)
    test = data.sequences["test"].select(range(0, data.sequences["test"].num_rows, 8))
    users = encode_split(test, tok)
    assert (tok.num_items, len(users)) == (1585, 366)
    return tok, users, list(test["target"])


def scientific_model(tok, **flags):
    from configuration_qbert4rec import QBert4RecConfig
    from modeling_qbert4rec import QBert4RecForMaskedItemModeling

    torch.manual_seed(0)
    config = QBert4RecConfig(num_codebooks=2, codebook_size=64, num_items=tok.num_items, hidden_size=32,
                             num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                             max_position_embeddings=SCIENTIFIC_MAX_LEN, initializer_range=0.2, **flags)
    model = QBert4RecForMaskedItemModeling(config).eval()
    model.set_item_codes(tok.item_codes, tok.table_fingerprint)
    if model.head.seen_item_bias is not None:
        with torch.no_grad():
            model.head.seen_item_bias.fill_(-1.0)  # not 0: leaving out the histories would change the ranks
    model.check_tokenizer(tok)
    return model


@pytest.mark.parametrize("flags", list(SCORING_FLAGS))
@pytest.mark.parametrize("exclude_history", [False, True])
def test_evaluation_ranks_items_as_recommend_does_on_scientific(scientific, flags, exclude_history):
    """For real test users, the target's rank in evaluation (`batch_ranks`, `evaluate_model`) is its position in
    `model.recommend` over the whole catalogue (the product: item ids through the tokenizer), ties aside."""
    tok, users, target_ids = scientific
    model = scientific_model(tok, **SCORING_FLAGS[flags])
    collator = HistoryCollator(num_items=tok.num_items, max_len=SCIENTIFIC_MAX_LEN)
    batch = collator(users.to_list())
    targets = batch["targets"]
    ranks, num_items = batch_ranks(model, batch, exclude_history)
    assert num_items == tok.num_items

    inputs = tok(list(users["item_ids"]), return_tensors="pt")
    assert tok.decode_items(targets) == target_ids
    # One scoring path: score_items = item_scores(history_states(...)), from the tokenizer's or the collator's batch.
    scores = model.score_items(**inputs)
    torch.testing.assert_close(scores, model.item_scores(model.history_states(**inputs), inputs["item_indices"]))
    torch.testing.assert_close(scores, model.score_items(batch["item_indices"], batch["attention_mask"]))

    in_history = history_exclusion(inputs["item_indices"], num_items)  # (U, N)
    top_k = num_items - int(in_history.sum(dim=1).max()) if exclude_history else num_items
    out = model.recommend(**inputs, top_k=top_k, exclude_history=exclude_history)
    found = out.item_indices == targets[:, None]  # (U, top_k)
    positions = found.float().argmax(dim=1)
    target_scores = scores.gather(1, targets[:, None])
    ties = (out.scores == target_scores).sum(dim=1) - found.any(dim=1).long()  # other items tied with the target
    # With exclude_history, evaluation keeps a target the user saw before; recommend never shows it.
    comparable = ~in_history.gather(1, targets[:, None]).squeeze(1) if exclude_history else torch.ones_like(found[:, 0])
    listed = found.any(dim=1)
    untied = comparable & listed & (ties == 0)
    assert untied.float().mean() > 0.9  # 98-100% of these users: the comparison below covers nearly all of them
    assert torch.equal(positions[untied], ranks[untied])
    assert (ranks[comparable & ~listed] >= top_k).all()  # beyond the list in evaluation too
    assert len(set(ranks.tolist())) > 50  # the users are ranked differently: the checks above can fail

    if not exclude_history:
        assert (ties == 0).all() and listed.all()
        # evaluate_model's metrics over the same users are those of the recommended lists.
        loader = eval_loader(users, collator, SimpleNamespace(max_eval_users=None, eval_batch_size=100))
        metrics = evaluate_model(model, loader)
        expected = aggregate(metrics_from_ranks(positions))
        assert metrics.pop("num_users") == len(users) and metrics.pop("num_items") == num_items
        assert metrics.pop("exclude_history") is False
        assert metrics == pytest.approx(expected, abs=1e-12)
        assert metrics["recall@20"] > 0  # some targets are in the top 20: the comparison is not of zeros
