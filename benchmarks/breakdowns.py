r"""Benchmark: NDCG@10 and Recall@10 of trained checkpoints by history length and by the target's popularity, on the
validation and test splits.

    python benchmarks/breakdowns.py --dataset_dir outputs/beauty/data \
        --checkpoints qbert4rec=RUN/qbert4rec/seed0/finetune-KEY/best,sasrec-ce=RUN/sasrec-ce/seed0/pretrain/best

Same protocol as training/evaluate.py (full ranking over all items, history items kept). Users are grouped by the
length of the history the model sees (the test history is the validation history plus the validation item), and
by how often their target item occurs in the training sequences. Shows where two models with the same overall
figure differ. Two probes of validation follow the splits: the same users without the oldest history item (is a
history that is exactly a training sequence easier?) and without the newest one (how much does the model lean on
the last transition?). Writes `RESULTS_DIR/breakdowns.json` and `.md`.
"""

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# inclusive ranges; None: no upper bound
LENGTH_BUCKETS = ((1, 4), (5, 6), (7, 9), (10, 19), (20, None))  # history items the model sees
POPULARITY_BUCKETS = ((0, 0), (1, 4), (5, 19), (20, 49), (50, None))  # occurrences of the target in training
GROUPINGS = {"history length": ("items", LENGTH_BUCKETS), "target's training count": ("times", POPULARITY_BUCKETS)}


@dataclass
class BreakdownArgs:
    dataset_dir: str = field(default="outputs/beauty/data", metadata={"help": "prepared dataset folder"})
    checkpoints: str = field(default="", metadata={"help": "comma-separated NAME=FOLDER of save_pretrained checkpoints"})
    results_dir: str = field(default="outputs/bench/results", metadata={"help": "where the report goes; benchmarks/results holds the committed ones"})
    batch_size: int = field(default=512, metadata={"help": "histories per scoring batch"})


def parse_checkpoints(text: str) -> dict[str, str]:
    """`"a=DIR1,b=DIR2"` -> `{"a": "DIR1", "b": "DIR2"}`."""
    pairs = [p for p in text.split(",") if p]
    if not pairs or any("=" not in p for p in pairs):
        raise ValueError(f"--checkpoints must be NAME=FOLDER[,NAME=FOLDER...], got {text!r}")
    return dict(p.split("=", 1) for p in pairs)


def bucket_name(low: int, high: int | None) -> str:
    return str(low) if high == low else f"{low}-{high}" if high is not None else f"{low}+"


def without_history_item(split, position: int):
    """The users of `split` with at least 2 history items, each history without its item at `position` (0: the
    oldest, -1: the newest); the targets stay."""
    if position not in (0, -1):
        raise ValueError(f"position must be 0 (oldest) or -1 (newest), got {position}")
    kept = split.filter(lambda row: len(row["item_ids"]) >= 2, desc="histories of >= 2 items")
    return kept.map(lambda row: {"item_ids": row["item_ids"][1:] if position == 0 else row["item_ids"][:-1]},
                    desc="history item dropped")


def ranks_lengths_targets(model, tokenizer, split, batch_size: int):
    """0-based target ranks `(U,)`, history lengths seen by the model `(U,)` and target item indices `(U,)` of every
    user of a split."""
    import torch
    from torch.utils.data import DataLoader

    from training.evaluate import eval_users, ranked_batches
    from training.masking import HistoryCollator
    from training.sequences import encode_split

    collator = HistoryCollator(num_items=tokenizer.num_items, max_len=model.config.max_position_embeddings)
    ranks, lengths, targets = [], [], []
    batches = DataLoader(eval_users(encode_split(split, tokenizer)), batch_size=batch_size, collate_fn=collator)
    for batch, user_ranks, _ in ranked_batches(model, batches, torch.device("cpu"), workers=torch.get_num_threads()):
        ranks.append(user_ranks)
        lengths.append(batch["attention_mask"].sum(1))
        targets.append(batch["targets"])
    return torch.cat(ranks), torch.cat(lengths), torch.cat(targets)


def training_counts(train_split, tokenizer):
    """How often each item occurs in the training sequences, `(num_items,)`."""
    import torch

    from training.sequences import encode_split

    items = [i for row in encode_split(train_split, tokenizer)["item_indices"] for i in row]
    return torch.bincount(torch.tensor(items, dtype=torch.long), minlength=tokenizer.num_items)


def breakdown(ranks, values, buckets=LENGTH_BUCKETS) -> dict:
    """`{"all": {...}, "1-4": {...}, ...}`: users, NDCG@10 and Recall@10 of all users and of the users whose value
    (history length, target count, ...) falls in each bucket."""
    from training.evaluate import metrics_from_ranks

    per_user = metrics_from_ranks(ranks, ks=(10,))
    groups = {"all": values.new_ones(values.shape).bool()}
    groups.update({bucket_name(lo, hi): (values >= lo) & (values <= (hi if hi is not None else values.max()))
                   for lo, hi in buckets})
    return {name: {"users": int(keep.sum()),
                   "ndcg@10": float(per_user["ndcg@10"][keep].mean()) if keep.any() else None,
                   "recall@10": float(per_user["recall@10"][keep].mean()) if keep.any() else None}
            for name, keep in groups.items()}


def markdown_table(report: dict) -> str:
    lines = ["# NDCG@10 by history length and by target popularity", "",
             "Full ranking over all items, history items kept. Cells: NDCG@10 (users).", ""]
    for grouping, (unit, buckets) in GROUPINGS.items():
        names = ["all"] + [bucket_name(lo, hi) for lo, hi in buckets]
        lines += [f"## By {grouping}", "",
                  "| model | split | " + " | ".join("all" if n == "all" else f"{n} {unit}" for n in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for model, splits in report["models"].items():
            for split, groupings in splits.items():
                groups = groupings[grouping]
                cells = [f"{groups[n]['ndcg@10']:.4f} ({groups[n]['users']:,})" if groups[n]["ndcg@10"] is not None
                         else "-" for n in names]
                lines.append(f"| {model} | {split} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    import shlex

    from benchmarks.baselines import write_report
    from modeling_qbert4rec import QBert4RecForMaskedItemModeling
    from tokenization_semantic_id import SemanticIdTokenizer
    from training.config import parse_args
    from training.prepared import load_sequences

    (args,) = parse_args(argv, BreakdownArgs, description=__doc__)
    checkpoints = parse_checkpoints(args.checkpoints)
    sequences = load_sequences(args.dataset_dir)
    splits = {"validation": sequences["validation"],
              "validation without the oldest item": without_history_item(sequences["validation"], 0),
              "validation without the newest item": without_history_item(sequences["validation"], -1),
              "test": sequences["test"]}
    report = {"command": "python benchmarks/breakdowns.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
              "settings": asdict(args), "buckets": {g: [bucket_name(lo, hi) for lo, hi in b] for g, (_, b) in GROUPINGS.items()},
              "models": {}}
    for name, folder in checkpoints.items():
        model = QBert4RecForMaskedItemModeling.from_pretrained(folder).eval()
        tokenizer = SemanticIdTokenizer.from_pretrained(folder)
        counts = training_counts(sequences["train"], tokenizer)
        report["models"][name] = {}
        for label, split in splits.items():
            ranks, lengths, targets = ranks_lengths_targets(model, tokenizer, split, args.batch_size)
            values = {"history length": lengths, "target's training count": counts[targets]}
            report["models"][name][label] = {grouping: breakdown(ranks, values[grouping], buckets)
                                             for grouping, (_, buckets) in GROUPINGS.items()}
    write_report(args.results_dir, "breakdowns", report, markdown_table(report))
    print(markdown_table(report))
    return report


if __name__ == "__main__":
    main()
