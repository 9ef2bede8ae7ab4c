"""Full-ranking evaluation: Recall@k (= HR@k), NDCG@k and MRR over the whole catalogue, and a most-popular baseline.

    python training/evaluate.py --model_dir outputs/beauty/final --dataset_dir outputs/beauty/data --split test

Protocol (docs/method.md §4): leave-one-out, each user's target is ranked against **all** items, no sampled negatives.
History items stay candidates unless `exclude_history=True` (the TIGER / S3-Rec convention keeps them); always
report which convention a number uses.

Rank of the target = number of candidate items scoring strictly higher than the target **plus** the number of
other candidates scoring exactly the same (ties are counted pessimistically). A model that scores every item the
same therefore ranks every target last, never first. Excluded items (`exclude`) are removed from the candidates,
except the target itself, which is always a candidate.

With rank r (0 = best): Recall@k = [r < k]; NDCG@k = 1 / log2(r + 2) if r < k else 0 (one relevant item, so the
ideal DCG is 1); MRR = 1 / (r + 1) over the full ranking (not truncated).
"""

import gc
import json
import math
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

if __package__ in (None, ""):  # `python training/evaluate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoModel, AutoTokenizer

from modeling_qbert4rec import history_exclusion
from training.config import parse_args
from training.masking import HistoryCollator
from training.prepared import load_sequences
from training.sequences import encode_split

DEFAULT_KS = (5, 10, 20)


def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None, overwrite: bool = False
) -> torch.Tensor:
    """0-based rank of each target among all items, ties counted pessimistically.

    Args:
        scores: float `(B, N)`, a score per user and item (higher = better).
        targets: long `(B,)`, the target item index of each user, in `[0, N)`.
        exclude: optional bool `(B, N)`, True for items removed from the candidates (the target never is).
        overwrite: `scores` may be overwritten (it is scratch), which saves writing the comparison elsewhere.

    Returns:
        long `(B,)` ranks.
    """
    if scores.dim() != 2 or not scores.is_floating_point():
        raise ValueError(f"scores must be a float (batch, num_items) tensor, got {scores.dtype} {tuple(scores.shape)}")
    batch, num_items = scores.shape
    if batch == 0:
        raise ValueError("cannot rank an empty batch (scores has 0 rows)")
    targets = torch.as_tensor(targets, device=scores.device)
    if targets.shape != (batch,) or targets.is_floating_point():
        raise ValueError(f"targets must be an integer ({batch},) tensor, got {targets.dtype} {tuple(targets.shape)}")
    out_of_range = (targets < 0) | (targets >= num_items)
    if out_of_range.any():
        row = int(out_of_range.nonzero()[0, 0])
        raise ValueError(f"target {targets[row].item()} of row {row} is out of range [0, num_items={num_items})")
    if torch.isnan(scores.sum()):  # one cheap reduction; +inf and -inf in a row also give NaN, so check rows
        nan_rows = torch.isnan(scores).any(dim=1)
        if nan_rows.any():
            rows = nan_rows.nonzero().squeeze(1)[:5].tolist()
            raise ValueError(f"scores contain NaN in {int(nan_rows.sum())} row(s), first rows {rows}")
    targets = targets.long()

    if exclude is not None:
        if exclude.shape != scores.shape or exclude.dtype != torch.bool:
            raise ValueError(f"exclude must be a bool tensor shaped like scores {tuple(scores.shape)}, got "
                             f"{exclude.dtype} {tuple(exclude.shape)}")
        candidate = ~exclude.to(scores.device)
        candidate[torch.arange(batch, device=scores.device), targets] = True
    # items scoring higher than the target, plus the other items tied with it (pessimistic), in one comparison:
    # rank = #{candidates j : score_j >= score_target} - 1 (the target itself)
    target_scores = scores.gather(1, targets[:, None])  # (B, 1)
    # Blocks of 64 rows keep the comparison in cache. Comparing in place (1.0 / 0.0) and summing floats is about 4x
    # faster than summing a bool comparison (2 threads, 64 x 12,101: 110 us against 450 us; a copy first adds 165 us);
    # float32 counts are exact below 2**24 items.
    count_dtype = torch.float32 if num_items < 2**24 else torch.float64
    counts = []
    for start in range(0, batch, 64):
        rows = slice(start, start + 64)
        block = scores[rows] if overwrite else scores[rows].clone()
        if exclude is not None:  # NaN is never >= the target: excluded items are not counted
            block.masked_fill_(~candidate[rows], math.nan)
        counts.append(block.ge_(target_scores[rows]).sum(dim=1, dtype=count_dtype))
    return torch.cat(counts).long() - 1


def metrics_from_ranks(ranks: torch.Tensor, ks=DEFAULT_KS) -> dict[str, torch.Tensor]:
    """Per-user `recall@k`, `ndcg@k` for each k and `mrr`, float `(B,)` each, from 0-based ranks `(B,)`."""
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every cutoff k must be >= 1, got {tuple(ks)}")
    ranks = ranks.double()
    discount = 1.0 / torch.log2(ranks + 2.0)
    metrics = {}
    for k in ks:
        hit = ranks < k
        metrics[f"recall@{k}"] = hit.double()
        metrics[f"ndcg@{k}"] = torch.where(hit, discount, torch.zeros_like(discount))
    metrics["mrr"] = 1.0 / (ranks + 1.0)
    return metrics


def rank_metrics(
    scores: torch.Tensor,
    targets: torch.Tensor,
    ks=DEFAULT_KS,
    exclude: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Full-ranking metrics per user: `recall@k` (= HR@k), `ndcg@k` for each k in `ks`, and `mrr`.

    Args:
        scores: float `(B, N)` scores of every item.
        targets: long `(B,)` target item indices.
        ks: the cutoffs.
        exclude: optional bool `(B, N)`, items removed from the candidates (never the target).

    Returns:
        `{name: float64 (B,)}`; `aggregate` turns it into means.
    """
    return metrics_from_ranks(target_ranks(scores, targets, exclude), ks)


def aggregate(per_user: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of each per-user metric `(U,)` -> `{name: float}`."""
    sizes = {len(values) for values in per_user.values()}
    if not per_user or sizes == {0}:
        raise ValueError("no users to aggregate (empty metrics)")
    if len(sizes) != 1:
        raise ValueError(f"per-user metrics have different lengths: {sorted(sizes)}")
    return {name: float(values.double().mean()) for name, values in per_user.items()}


def _module_device(model) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model with neither)."""
    if isinstance(model, nn.Module):
        for tensor in list(model.parameters()) + list(model.buffers()):
            return tensor.device
    return torch.device("cpu")


@contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector for the block. Evaluation makes tens of thousands of short-lived
    containers (a list per user, the batches); they set off full collections over the whole heap (torch and
    transformers hold millions of objects), 0.15 s each, every other evaluation of all Beauty users. Garbage made
    meanwhile is collected once the collector runs again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


RANK_BLOCK = 64  # histories whose catalogue logits are made and ranked together: 64 x 12,101 floats stay in cache


@torch.no_grad()
def batch_ranks(model, batch: dict, exclude_history: bool = False) -> tuple[torch.Tensor, int]:
    """0-based rank of each history's target among all items, and the number of items.

    `model` scores items in two steps, as `recommend` does: `history_states(item_indices, attention_mask) -> (B, H)`,
    then `item_scores(states, item_indices) -> (B, N)`. The scores of `RANK_BLOCK` histories at a time are ranked in
    place while still in cache, never written out as one `(B, N)` tensor (one thread, 512 Beauty histories: 18 ms
    against 33 ms for the whole scores and ranks). `batch` is a `HistoryCollator` batch.

    Returns:
        long `(B,)` ranks and N.
    """
    histories = batch["item_indices"]
    states = model.history_states(histories, batch["attention_mask"])
    ranks = []
    for start in range(0, len(histories), RANK_BLOCK):
        rows = slice(start, start + RANK_BLOCK)
        scores = model.item_scores(states[rows], histories[rows])  # (RANK_BLOCK, N), a new tensor: ranked in place
        num_items = scores.shape[1]
        exclude = history_exclusion(histories[rows], num_items) if exclude_history else None
        ranks.append(target_ranks(scores.float(), batch["targets"][rows], exclude, overwrite=True))
    return torch.cat(ranks), num_items


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


# Batches collated ahead of the ranking threads. Collating them early rather than one per finished batch saves a
# further 0.05 s of the 1 s: a collating main thread holds the GIL the ranking threads wait for between ops.
PREFETCH_BATCHES = 64


def ranked_batches(scorer, batches, device, exclude_history: bool = False, workers: int = 1):
    """`(batch, ranks, num_items)` for each batch of `batches`, in order (`batch_ranks`, batches moved to `device`).

    With `workers` > 1, that many Python threads rank batches at once at one torch thread each while this thread
    collates the next ones (the torch thread count is restored afterwards). On 2 CPU cores this evaluates all
    Beauty users in 0.97-1.03 s against 1.14-1.20 s for one batch at a time on both threads: the encoder's small
    matrices split badly across threads."""

    def rank(batch):
        batch = {name: tensor.to(device) for name, tensor in batch.items()}
        return batch, *batch_ranks(scorer, batch, exclude_history)

    if workers <= 1:
        yield from map(rank, batches)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            pending = deque()
            for batch in batches:
                pending.append(pool.submit(rank, batch))
                if len(pending) > PREFETCH_BATCHES:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def evaluate_model(
    model,
    dataloader,
    accelerator=None,
    exclude_history: bool = False,
    ks=DEFAULT_KS,
    desc: str = "evaluate",
) -> dict:
    """Rank every user's target against all items and average the metrics.

    Args:
        model: scores the next item after each (left-padded) history, as `batch_ranks` describes; the model appends
            the `[MASK]` position itself.
        dataloader: yields batches from `training.masking.HistoryCollator` (`item_indices`, `attention_mask`,
            `targets`).
        accelerator: an `accelerate.Accelerator`; when given, the dataloader should be prepared by it, the model is
            moved to its device (e.g. a checkpoint just loaded on the CPU), and the per-user metrics are gathered
            from every process with `gather_for_metrics` (no duplicates).
        exclude_history: remove the history items from the candidates (the target stays one).
        ks: the cutoffs for Recall@k and NDCG@k.

    Returns:
        `{"recall@5": ..., "ndcg@5": ..., ..., "mrr": ..., "num_users": U, "num_items": N,
        "exclude_history": bool}`.
    """
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    device = accelerator.device if accelerator is not None else _module_device(model)
    scorer = accelerator.unwrap_model(model) if accelerator is not None else model
    if accelerator is not None and isinstance(scorer, nn.Module):
        scorer.to(device)
    show_progress = accelerator is None or accelerator.is_local_main_process
    # gather_for_metrics trims the last batch by the dataloader's position, so several processes rank one batch at a
    # time; so do accelerators. One process has nothing to gather.
    distributed = accelerator is not None and accelerator.num_processes > 1
    workers = torch.get_num_threads() if device.type == "cpu" and not distributed else 1
    per_user_batches, num_items = [], None
    with gc_paused():
        batches = tqdm(dataloader, desc=desc, disable=not show_progress)
        for batch, ranks, num_items in ranked_batches(scorer, batches, device, exclude_history, workers):
            per_user = metrics_from_ranks(ranks, ks)
            if distributed:
                per_user = accelerator.gather_for_metrics(per_user)
            per_user_batches.append({name: values.cpu() for name, values in per_user.items()})
    if was_training and hasattr(model, "train"):
        model.train()
    if not per_user_batches:
        raise ValueError("the evaluation dataloader yielded no batches")
    per_user = {name: torch.cat([b[name] for b in per_user_batches]) for name in per_user_batches[0]}
    metrics = aggregate(per_user)
    metrics.update(num_users=len(per_user["mrr"]), num_items=num_items, exclude_history=bool(exclude_history))
    return metrics


def save_metrics(metrics: dict, path: str | os.PathLike, **extra) -> Path:
    """Write `metrics` plus `extra` fields (split, checkpoint, dataset sizes...) as JSON.

    `path` is a `.json` file, or a folder that gets `metrics.json`. Returns the file written."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**metrics, **extra}
    for name, value in record.items():
        if isinstance(value, torch.Tensor):
            record[name] = value.item() if value.numel() == 1 else value.tolist()
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric '{name}' is {value}: refusing to write a non-finite metric to {path}")
    with open(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


class MostPopular(nn.Module):
    """Most-popular baseline: every user gets the same scores, the item counts in the training sequences.

    Scores items in the model's two steps (`history_states`, `item_scores`), so `evaluate_model` runs on it unchanged.

    Args:
        num_items: catalogue size N.
    """

    def __init__(self, num_items: int):
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = num_items
        self.register_buffer("counts", torch.zeros(num_items))

    def fit(self, sequences) -> "MostPopular":
        """Count the items of `sequences` (iterable of lists of item indices). Returns self."""
        flat = [item for seq in sequences for item in seq]
        items = torch.as_tensor(flat, dtype=torch.long)
        bad = (items < 0) | (items >= self.num_items)
        if bad.any():
            raise ValueError(f"item index {items[bad][0].item()} is out of range [0, num_items={self.num_items})")
        self.counts = torch.bincount(items, minlength=self.num_items).float().to(self.counts.device)
        return self

    @classmethod
    def from_sequences(cls, sequences, num_items: int) -> "MostPopular":
        return cls(num_items).fit(sequences)

    def history_states(self, item_indices, attention_mask=None) -> torch.Tensor:
        """No state: `(B, 0)`, every history is scored alike."""
        return self.counts.new_zeros(item_indices.shape[0], 0)

    def item_scores(self, states, item_indices=None) -> torch.Tensor:
        """Float `(B, num_items)`: the training count of every item, the same for each of the B histories."""
        return self.counts.repeat(states.shape[0], 1)


# ----------------------------------------------------------------------------------------------------------------------
# A saved checkpoint on a prepared dataset
# ----------------------------------------------------------------------------------------------------------------------

# The two candidate conventions: whether the history's items stay candidates (TIGER / S3-Rec) or are removed (RecBole).
CONVENTIONS = {"history kept": False, "history removed": True}


def checkpoint_metrics(model, tokenizer, dataset_dir, splits=("validation", "test"), batch_size: int = 512) -> dict:
    """Full-ranking metrics of `model` and of most-popular (items counted over the same users' histories) on every
    user of each split, under both candidate conventions.

    Returns:
        `{split: {"Q-Bert4Rec" | "most-popular": {"history kept" | "history removed": evaluate_model's dict}}}`.
    """
    sequences = load_sequences(dataset_dir)
    collator = HistoryCollator(num_items=tokenizer.num_items, max_len=model.config.max_position_embeddings)
    report = {}
    for split_name in splits:
        split = encode_split(sequences[split_name], tokenizer)
        loader = DataLoader(eval_users(split), batch_size=batch_size, collate_fn=collator)
        popular = MostPopular.from_sequences(split["item_indices"], tokenizer.num_items)
        report[split_name] = {
            name: {
                convention: evaluate_model(scorer, loader, exclude_history=exclude, desc=f"{name} {split_name}")
                for convention, exclude in CONVENTIONS.items()
            }
            for name, scorer in (("Q-Bert4Rec", model), ("most-popular", popular))
        }
    return report


# ----------------------------------------------------------------------------------------------------------------------
# Command line: evaluate a saved checkpoint on a prepared dataset
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluateArgs:
    """Arguments of `evaluate.py` (YAML section `evaluate`)."""

    model_dir: str = field(default=None, metadata={"help": "save_pretrained folder (model + tokenizer) or Hub repo id", "required": True})
    dataset_dir: str = field(default=None, metadata={"help": "prepared dataset folder (prepare_data.py)", "required": True})
    split: str = field(default="test", metadata={"help": "validation (model selection) or test (reporting)"})
    output_file: str = field(default=None, metadata={"help": "metrics JSON (default: MODEL_DIR/metrics_<split>.json)"})
    exclude_history: bool = field(default=False, metadata={"help": "remove history items from the candidates"})
    batch_size: int = field(default=512, metadata={"help": "histories per batch"})


SECTION = "evaluate"  # its YAML section
ARGUMENT_TYPES = (EvaluateArgs,)


def main(argv=None) -> dict:
    """Evaluate a checkpoint with full ranking on a split; prints and saves the metrics."""
    (args,) = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    if args.split not in ("validation", "test"):
        raise ValueError(f"--split must be 'validation' or 'test', got {args.split!r}")
    model = AutoModel.from_pretrained(args.model_dir, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, trust_remote_code=True)
    model.check_tokenizer(tokenizer)
    split = encode_split(load_sequences(args.dataset_dir)[args.split], tokenizer)
    collator = HistoryCollator(num_items=tokenizer.num_items, max_len=model.config.max_position_embeddings)
    loader = DataLoader(eval_users(split), batch_size=args.batch_size, collate_fn=collator)  # sorted by length
    metrics = evaluate_model(model, loader, exclude_history=args.exclude_history, desc=f"evaluate {args.split}")
    output = args.output_file or str(Path(args.model_dir) / f"metrics_{args.split}.json")
    save_metrics(metrics, output, split=args.split, model_dir=args.model_dir, dataset_dir=args.dataset_dir)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
