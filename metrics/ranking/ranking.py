"""`ranking`: full-ranking next-item metrics (Recall@k = HR@k, NDCG@k, MRR) as a Hugging Face `evaluate` metric.

Load it from a local folder (no network needed):

    import evaluate
    ranking = evaluate.load("path/to/qbert4rec/metrics/ranking")                  # predictions = score rows
    ranking.compute(predictions=[[0.1, 0.7, 0.2]], references=[2], ks=[1, 2])
    ranked = evaluate.load("path/to/qbert4rec/metrics/ranking", "ranked_lists")   # predictions = top-k item lists
    ranked.compute(predictions=[[1, 2, 0]], references=[2], ks=[1, 2])

Same definitions as `training/evaluate.py` (this file stands alone so it can be pushed to the Hub as a metric):
the rank of the target is the number of items scoring strictly higher plus the number of other items scoring the
same (ties counted pessimistically); Recall@k = [rank < k]; NDCG@k = 1 / log2(rank + 2) if rank < k else 0;
MRR = 1 / (rank + 1). With ranked lists, the rank is the target's position in the list (first occurrence); a
target absent from the list scores 0 on every metric, so MRR is truncated at the list length.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Full-ranking next-item recommendation metrics: Recall@k (= HR@k), NDCG@k and MRR, averaged over
users, with one relevant item (the target) per user ranked against the whole catalogue (no sampled negatives)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: config "scores" (default): one row of scores per user, a float per item (all rows the same
        length N, higher = better). Config "ranked_lists": one list of item indices per user, best first.
    references: the target item index of each user (in [0, N) for score rows).
    ks: the cutoffs (default [5, 10, 20]).
    exclude: config "scores" only, optional: per user, a list of item indices removed from the candidates
        (e.g. the history); the target itself is never removed.
Returns:
    recall@k, ndcg@k for each k, mrr (means over users) and num_users.
Examples:
    >>> ranking = evaluate.load("metrics/ranking")
    >>> ranking.compute(predictions=[[0.1, 0.7, 0.2]], references=[2], ks=[1, 2])
    {'recall@1': 0.0, 'ndcg@1': 0.0, 'recall@2': 1.0, 'ndcg@2': 0.6309297535714575, 'mrr': 0.5, 'num_users': 1}
"""

_CITATION = """@inproceedings{krichene2020sampled,
  title={On Sampled Metrics for Item Recommendation},
  author={Krichene, Walid and Rendle, Steffen},
  booktitle={KDD},
  year={2020}
}"""

_FEATURES = {
    "scores": datasets.Features(
        {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
    ),
    "ranked_lists": datasets.Features(
        {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
    ),
}


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray, exclude=None) -> np.ndarray:
    """0-based rank of each target `(U,)` from scores `(U, N)`, ties counted pessimistically."""
    if np.isnan(scores).any():
        rows = np.flatnonzero(np.isnan(scores).any(axis=1))[:5].tolist()
        raise ValueError(f"predictions contain NaN scores in rows {rows}")
    num_users, num_items = scores.shape
    out_of_range = (targets < 0) | (targets >= num_items)
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range)[0])
        raise ValueError(f"reference {targets[row]} of user {row} is out of range [0, num_items={num_items})")
    target_scores = scores[np.arange(num_users), targets][:, None]
    candidate = np.ones_like(scores, dtype=bool)
    if exclude is not None:
        if len(exclude) != num_users:
            raise ValueError(f"exclude has {len(exclude)} rows for {num_users} users")
        for user, items in enumerate(exclude):
            candidate[user, np.asarray(items, dtype=np.int64)] = False
        candidate[np.arange(num_users), targets] = True
    higher = ((scores > target_scores) & candidate).sum(axis=1)
    tied = ((scores == target_scores) & candidate).sum(axis=1)
    return higher + tied - 1


def ranks_from_lists(ranked_lists, targets: np.ndarray) -> np.ndarray:
    """0-based position of each target in its ranked list; `inf` when absent."""
    ranks = np.full(len(targets), np.inf)
    for user, (items, target) in enumerate(zip(ranked_lists, targets)):
        hits = np.flatnonzero(np.asarray(items, dtype=np.int64) == target)
        if len(hits):
            ranks[user] = hits[0]
    return ranks


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Ranking(evaluate.Metric):
    """Full-ranking Recall@k, NDCG@k and MRR."""

    def _info(self):
        config = self.config_name if self.config_name != "default" else "scores"
        if config not in _FEATURES:
            raise ValueError(f"unknown ranking config '{self.config_name}'; choose one of {sorted(_FEATURES)}")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES[config],
        )

    def _compute(self, predictions, references, ks=(5, 10, 20), exclude=None):
        if len(references) == 0:
            raise ValueError("no predictions to rank (empty input)")
        if any(int(k) < 1 for k in ks):
            raise ValueError(f"every cutoff k must be >= 1, got {list(ks)}")
        targets = np.asarray(references, dtype=np.int64)
        if self.config_name == "ranked_lists":
            if exclude is not None:
                raise ValueError("exclude applies to score rows only; drop excluded items from the ranked lists")
            ranks = ranks_from_lists(predictions, targets)
        else:
            lengths = {len(row) for row in predictions}
            if len(lengths) != 1:
                raise ValueError(f"every score row must cover the same items, got row lengths {sorted(lengths)[:5]}")
            ranks = ranks_from_scores(np.asarray(predictions, dtype=np.float64), targets, exclude).astype(np.float64)
        results = {}
        with np.errstate(divide="ignore"):
            discount = 1.0 / np.log2(ranks + 2.0)
        for k in ks:
            hit = ranks < k
            results[f"recall@{k}"] = float(hit.mean())
            results[f"ndcg@{k}"] = float(np.where(hit, discount, 0.0).mean())
        results["mrr"] = float((1.0 / (ranks + 1.0)).mean())
        results["num_users"] = len(targets)
        return results
