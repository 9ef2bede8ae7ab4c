r"""Make a trained folder a publishable checkpoint: README from model_card.md, metrics, codebook statistics, Hub push.

    python training/export.py --model_dir outputs/beauty/final --dataset amazon-beauty-2014-5core \
        --metrics outputs/beauty/metrics.json --codebook_stats outputs/beauty/semantic_ids/codebook_stats.json
    python training/export.py --model_dir outputs/beauty/final --repo_id ORG/qbert4rec-beauty --push_to_hub

The folder already holds `config.json` (with `auto_map`), `model.safetensors`, the tokenizer files and the three
remote-code files (`save_pretrained` copies them). Pushing uses `HfApi.upload_folder` and needs a token
(`huggingface-cli login` or `$HF_TOKEN`); it is off by default.
"""

import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import REPO_ROOT, parse_args

METRIC_COLUMNS = ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr")


@dataclass
class ExportArgs:
    """Arguments of `training/export.py` (YAML section `export`)."""

    model_dir: str = field(default=None, metadata={"help": "save_pretrained folder (model + tokenizer)", "required": True})
    dataset: str = field(default="amazon-beauty-2014-5core", metadata={"help": "training data name for the card"})
    metrics: str = field(default=None, metadata={"help": "metrics.json of the test split (default: none)"})
    codebook_stats: str = field(default=None, metadata={"help": "codebook_stats.json from quantize.py"})
    repo_id: str = field(default=None, metadata={"help": "Hub repo id used in the card (and for --push_to_hub)"})
    push_to_hub: bool = field(default=False, metadata={"help": "upload the folder to the Hub repo"})
    private: bool = field(default=False, metadata={"help": "create the Hub repo as private"})


SECTION = "export"  # its YAML section
ARGUMENT_TYPES = (ExportArgs,)


CHECKPOINT_RESULTS = "<!-- CHECKPOINT RESULTS: training/export.py writes this checkpoint's own test metrics here -->"


def results_table(metrics: dict | None) -> str:
    """This checkpoint's measured test metrics, or a note that none were attached."""
    if not metrics:
        return "No evaluation results were attached to this checkpoint.\n"
    header = "| model | " + " | ".join(c.replace("recall", "R").replace("ndcg", "N").upper() for c in METRIC_COLUMNS) + " |"
    row = "| Q-Bert4Rec (this checkpoint) | " + " | ".join(f"{metrics[c]:.4f}" for c in METRIC_COLUMNS) + " |"
    candidates = "history items removed" if metrics.get("exclude_history") else "history items kept as candidates"
    return (
        f"Test split, full ranking over all {metrics.get('num_items', '?'):,} items, {candidates}, "
        f"{metrics.get('num_users', '?'):,} users.\n\n{header}\n|---|" + "---|" * len(METRIC_COLUMNS) + f"\n{row}\n"
    )


def render_card(template: str, checkpoint: str, dataset: str, example_history: list, metrics: dict | None) -> str:
    """Fill model_card.md's placeholders and put this checkpoint's metrics beside the repository's benchmarks."""
    card = re.sub(r"<!--\nTemplate of .*?-->\n\n", "", template, flags=re.S)
    card = card.replace("{checkpoint}", checkpoint).replace("{dataset}", dataset)
    card = card.replace("{example_history}", json.dumps(example_history))
    if CHECKPOINT_RESULTS not in card:
        raise ValueError(f"model_card.md lacks the marker {CHECKPOINT_RESULTS!r} in its results section")
    return card.replace(CHECKPOINT_RESULTS, "### This checkpoint\n\n" + results_table(metrics).rstrip("\n"))


def export(args: ExportArgs) -> Path:
    """Write README.md (and copies of the metrics / codebook statistics) into the model folder; push if asked."""
    folder = Path(args.model_dir)
    if not (folder / "config.json").is_file() or not (folder / "semantic_ids.json").is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (needs config.json and semantic_ids.json)")
    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    if args.metrics:
        shutil.copy(args.metrics, folder / "metrics.json")
    if args.codebook_stats:
        shutil.copy(args.codebook_stats, folder / "codebook_stats.json")
    item_ids = json.loads((folder / "semantic_ids.json").read_text())["item_ids"]
    template = (REPO_ROOT / "model_card.md").read_text()
    card = render_card(template, args.repo_id or str(folder), args.dataset, item_ids[:3], metrics)
    (folder / "README.md").write_text(card)
    if args.push_to_hub:
        if not args.repo_id:
            raise ValueError("--push_to_hub needs --repo_id")
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=args.repo_id, commit_message="Upload Q-Bert4Rec checkpoint")
        print(f"pushed {folder} to https://huggingface.co/{args.repo_id}")
    return folder / "README.md"


def main(argv=None):
    (args,) = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    path = export(args)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
