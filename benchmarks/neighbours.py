"""Benchmark: how much next-item signal each item representation of stages 1-2 holds, read by the simplest
recommender over it: rank every item by cosine similarity to the user's newest history item.

    python benchmarks/neighbours.py --pipeline_dir outputs/beauty
    python benchmarks/neighbours.py --pipeline_dir outputs/scientific-mm

Representations: each modality's features (the mean of its vectors), stage 1's fused vectors, and each item's sum of
its stage-2 codebook vectors (the quantised vector that `pretrain.py --code_embedding_init codebooks` starts stage
3's code embeddings from). Same protocol as `training/evaluate.py`: the split's targets ranked against every item,
history items kept as candidates (so the newest item itself takes first place unless it is the target). No
training: a probe of what stages 1-2 keep, and a floor every trained model should be above. Writes
`RESULTS_DIR/neighbours-<name>.json` and `.md` (name: the pipeline folder's).
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.baselines import machine_info, machine_line, write_report  # noqa: E402
from tokenization_semantic_id import SemanticIdTokenizer  # noqa: E402
from training.config import parse_args  # noqa: E402
from training.evaluate import aggregate, metrics_from_ranks, target_ranks  # noqa: E402
from training.inject import MODALITIES, read_modality_features  # noqa: E402
from training.prepared import load_item_ids, load_sequences  # noqa: E402
from training.quantize import load_codebooks, load_embeddings  # noqa: E402
from training.quantizers import codebook_sum  # noqa: E402

SHOWN = {"recall@10": "R@10", "recall@20": "R@20", "ndcg@10": "N@10", "ndcg@20": "N@20", "mrr": "MRR"}


@dataclass
class NeighbourArgs:
    pipeline_dir: str = field(default="", metadata={"help": "a training/pipeline.py folder (data/, features/, inject/, semantic_ids/)"})
    split: str = field(default="test", metadata={"help": "validation or test"})
    results_dir: str = field(default="outputs/bench/results", metadata={"help": "where the report goes; benchmarks/results holds the committed ones"})
    batch_size: int = field(default=1024, metadata={"help": "users scored at a time"})


def item_representations(pipeline_dir: Path, item_ids: list[str]) -> dict[str, torch.Tensor]:
    """`{name: (num_items, dim)}` L2-normalised, for every representation the pipeline folder holds."""
    found = {}
    for modality in MODALITIES:
        path = pipeline_dir / "features" / f"{modality}.safetensors"
        if path.is_file():
            features, mask = read_modality_features(path, item_ids)
            weights = mask.unsqueeze(-1).float()
            found[f"{modality} features"] = (features * weights).sum(1) / weights.sum(1).clamp_min(1)
    if (pipeline_dir / "inject" / "fused.safetensors").is_file():
        found["stage 1 fused vectors"] = load_embeddings(pipeline_dir / "inject" / "fused.safetensors", item_ids)
    if (pipeline_dir / "semantic_ids" / "quantizer.safetensors").is_file():
        codebooks = load_codebooks(pipeline_dir / "semantic_ids")
        tokenizer = SemanticIdTokenizer.from_pretrained(pipeline_dir / "semantic_ids")
        if tokenizer.item_ids != item_ids:
            raise ValueError(f"{pipeline_dir / 'semantic_ids'}: its items are not the dataset's, in the same order")
        found["stage 2 codebook sums"] = codebook_sum(codebooks, tokenizer.item_codes[:, : len(codebooks)])
    if not found:
        raise FileNotFoundError(f"{pipeline_dir}: no features/, inject/ or semantic_ids/ to read")
    return {name: F.normalize(vectors.float(), dim=-1) for name, vectors in found.items()}


def newest_item_metrics(vectors: torch.Tensor, newest: torch.Tensor, targets: torch.Tensor, batch_size: int) -> dict:
    """Metrics of ranking all items by cosine similarity to `newest` `(U,)`; `vectors` `(N, D)` unit rows."""
    ranks = [target_ranks(vectors[newest[start : start + batch_size]] @ vectors.T, targets[start : start + batch_size],
                          overwrite=True) for start in range(0, len(newest), batch_size)]
    return aggregate(metrics_from_ranks(torch.cat(ranks)))


def main(argv=None) -> dict:
    (args,) = parse_args(argv, NeighbourArgs, description=__doc__)
    if not args.pipeline_dir:
        raise ValueError("--pipeline_dir is required (a training/pipeline.py output folder)")
    if args.split not in ("validation", "test"):
        raise ValueError(f"--split must be validation or test, got {args.split!r}")
    pipeline_dir = Path(args.pipeline_dir)
    item_ids = load_item_ids(pipeline_dir / "data")
    index = {item: i for i, item in enumerate(item_ids)}
    split = load_sequences(pipeline_dir / "data")[args.split]
    newest = torch.tensor([index[items[-1]] for items in split["item_ids"]])
    targets = torch.tensor([index[item] for item in split["target"]])
    rows = {name: newest_item_metrics(vectors, newest, targets, args.batch_size)
            for name, vectors in item_representations(pipeline_dir, item_ids).items()}
    name = pipeline_dir.resolve().name
    report = {"pipeline_dir": str(pipeline_dir), "split": args.split, "num_users": len(targets), "num_items": len(item_ids),
              "rows": rows, "machine": machine_info()}
    lines = [f"# Nearest neighbours of the newest history item, {name}", "",
             f"{args.split} split, {len(targets)} users, all {len(item_ids)} items ranked by cosine similarity to each "
             "user's newest history item (history items kept). "
             f"Command: `python benchmarks/neighbours.py --pipeline_dir {args.pipeline_dir} --split {args.split}`.", "",
             "| representation | " + " | ".join(SHOWN.values()) + " |",
             "|---" * (len(SHOWN) + 1) + "|"]
    lines += [f"| {row} | " + " | ".join(f"{metrics[m]:.4f}" for m in SHOWN) + " |" for row, metrics in rows.items()]
    lines += ["", machine_line(report["machine"]), ""]
    json_path, md_path = write_report(args.results_dir, f"neighbours-{name}", report, "\n".join(lines))
    print("\n".join(lines))
    print(f"[neighbours] {json_path}, {md_path}")
    return report


if __name__ == "__main__":
    main()
