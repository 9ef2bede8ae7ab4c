r"""Make a trained model folder a publishable checkpoint: the files that tell its run's story, a card made from them
alone, and (optionally) an upload to the Hugging Face Hub.

    python training/export.py --model_dir outputs/beauty/final          # the pipeline's final/ holds its run files
    python training/export.py --model_dir outputs/beauty/finetune/final --run_dir outputs/beauty   # stages run by hand
    python training/export.py --model_dir outputs/beauty/final --push_to_hub --repo_id ORG/qbert4rec-beauty --dry_run

Beside the model and tokenizer files, a checkpoint folder carries what its run recorded:

    run.json             the data (name, source, users, items, interactions), the command and config that trained
                         it, epochs, seconds per stage, library versions
    metrics.json         validation and test metrics under both candidate conventions, most-popular's beside them
    codebook_stats.json  stage 2's code usage per level (code_usage.png plots it)
    code_prefixes.json   what each code prefix stands for: its items' most frequent leaf categories
    README.md            the card: model_card.md with this checkpoint's section made from the files above only

The pipeline writes them into `final/` itself; `--run_dir` writes them from a run folder laid out as the pipeline's.
`--push_to_hub` uploads from a staging copy, so the local folder changes only after the upload succeeds; `--dry_run`
lists what would be uploaded and changes nothing. Pushing needs a token (`hf auth login`, `$HF_TOKEN` or `--token`).
"""

import json
import platform
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import REPO_ROOT, parse_args
from training.hub import HubError, check_repo_id, hub_errors


@dataclass
class ExportArgs:
    """Arguments of `training/export.py` (YAML section `export`)."""

    model_dir: str = field(default=None, metadata={"help": "save_pretrained folder (model + tokenizer)", "required": True})
    run_dir: str = field(default=None, metadata={"help": "the run's OUTPUT_DIR (data/, semantic_ids/, pretrain/, "
                                                         "finetune/), when MODEL_DIR lacks its run files"})
    repo_id: str = field(default=None, metadata={"help": "Hub repo id ORG/NAME: named in the card, pushed to with "
                                                         "--push_to_hub"})
    push_to_hub: bool = field(default=False, metadata={"help": "upload the checkpoint to the Hub repo"})
    dry_run: bool = field(default=False, metadata={"help": "with --push_to_hub: list what would be uploaded, change "
                                                           "nothing"})
    private: bool = field(default=False, metadata={"help": "create the Hub repo as private"})
    revision: str = field(default=None, metadata={"help": "branch to push to (created if missing; default main)"})
    token: str = field(default=None, metadata={"help": "Hub token (default: the logged-in one or $HF_TOKEN)"})


SECTION = "export"  # its YAML section
ARGUMENT_TYPES = (ExportArgs,)

CHECKPOINT_FILES = ("config.json", "model.safetensors", "semantic_ids.json", "tokenizer_config.json")
RUN_FILES = ("run.json", "metrics.json", "codebook_stats.json", "code_usage.png", "code_prefixes.json")
METRIC_COLUMNS = {"recall@5": "R@5", "recall@10": "R@10", "recall@20": "R@20", "ndcg@5": "N@5", "ndcg@10": "N@10",
                  "ndcg@20": "N@20", "mrr": "MRR"}
THIS_CHECKPOINT = "{this_checkpoint}"  # model_card.md's placeholder for the section made from the run files


# The run files.
def training_record(history_file: Path) -> dict | None:
    """Epochs evaluated, best epoch and its validation NDCG@10, and training seconds of a `training_history.json`."""
    if not history_file.is_file():
        return None
    history = json.loads(history_file.read_text())
    seconds = history.get("train_seconds_at_evaluation") or [None]
    return {"epochs_evaluated": len(history["history"]), "best_epoch": history["best_epoch"],
            "best_validation_ndcg@10": history["best"], "train_seconds": seconds[-1]}


def record_run(run_dir: Path, model_dir: Path, out_dir: Path, command: str | None = None,
               config: dict | None = None) -> None:
    """Write the run files of the model in `model_dir` into `out_dir`, from the pipeline folder `run_dir`: evaluates
    the model on the validation and test splits (both candidate conventions, most-popular beside it)."""
    import torch
    import transformers

    from modeling_qbert4rec import QBert4RecForMaskedItemModeling
    from tokenization_semantic_id import SemanticIdTokenizer
    from training.evaluate import checkpoint_metrics
    from training.explain_codes import load_items, prefix_explanations

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    needed = [run_dir / "data" / "summary.json", run_dir / "semantic_ids" / "codebook_stats.json"]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a finished run folder: {', '.join(missing)} missing")
    model = QBert4RecForMaskedItemModeling.from_pretrained(model_dir).eval()
    tokenizer = SemanticIdTokenizer.from_pretrained(model_dir)
    model.check_tokenizer(tokenizer)
    summary = json.loads((run_dir / "data" / "summary.json").read_text())
    timings = run_dir / "timings.json"
    run = {
        "data": {key: summary[key] for key in ("name", "source", "users", "items", "interactions", "notes")
                 if key in summary},
        "command": command,
        "config": config,
        "training": {stage: training_record(run_dir / stage / "training_history.json")
                     for stage in ("pretrain", "finetune")},
        "seconds_per_stage": json.loads(timings.read_text()) if timings.is_file() else None,
        "num_parameters": model.num_parameters(),
        "item_encoder_parameters": sum(p.numel() for p in model.item_encoder.parameters()) if model.item_encoder else 0,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    with torch.no_grad():
        metrics = checkpoint_metrics(model, tokenizer, run_dir / "data")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for name in ("codebook_stats.json", "code_usage.png"):
        shutil.copy(run_dir / "semantic_ids" / name, out_dir / name)
    prefixes = prefix_explanations(tokenizer, load_items(run_dir / "data"))
    (out_dir / "code_prefixes.json").write_text(json.dumps(prefixes) + "\n")


def record_catalogue_change(source: Path, dest: Path, change: dict) -> None:
    """Carry the run files of checkpoint `source` into `dest`, the checkpoint `training/add_items.py` grew or shrank
    from it, with `change` (command, items before and after, added, retired) appended to run.json's
    `catalogue_changes`, and render `dest`'s card. Nothing happens when `source` has no run files."""
    if not all((Path(source) / name).is_file() for name in RUN_FILES):
        return
    for name in RUN_FILES:
        shutil.copy(Path(source) / name, Path(dest) / name)
    run = json.loads((Path(dest) / "run.json").read_text())
    run["catalogue_changes"] = run.get("catalogue_changes", []) + [change]
    (Path(dest) / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    write_card(Path(dest), str(dest))


# The card.
def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def data_section(run: dict) -> str:
    data = run["data"]
    rows = [["dataset", f"{data['name']} (read from `{data['source']}` files)"], ["users", f"{data['users']:,}"],
            ["items", f"{data['items']:,}"], ["interactions", f"{data['interactions']:,}"]]
    rows += [["note", note] for note in data.get("notes", [])]
    return table(["", ""], rows)


def configuration_section(config: dict, run: dict) -> str:
    rows = [
        ["semantic ID", f"{config['num_codebooks']} codes per item (the last one disambiguates), "
                        f"{config['codebook_size']:,} codes per level"],
        ["Transformer", f"{config['num_hidden_layers']} layer(s), hidden size {config['hidden_size']}, "
                        f"{config['num_attention_heads']} head(s), {config['max_position_embeddings']} positions"],
        ["item-ID embedding", "yes" if config.get("use_item_embedding") else "no"],
        ["loss", f"`{config.get('loss_type')}`"],
        ["parameters", f"{run['num_parameters']:,}" + (
            f" ({run['item_encoder_parameters']:,} of them the item encoder, which gives new items their semantic IDs)"
            if run.get("item_encoder_parameters") else "")],
    ]
    for stage, record in run["training"].items():
        if record:
            rows.append([stage, f"{record['epochs_evaluated']} epoch(s) evaluated, best epoch {record['best_epoch']} "
                                f"(validation N@10 {record['best_validation_ndcg@10']:.4f})"])
    return table(["", ""], rows)


def metrics_section(metrics: dict) -> str:
    rows, sizes = [], []
    for split, models in metrics.items():
        for model, conventions in models.items():
            for convention, values in conventions.items():
                rows.append([split, model, convention] + [f"{values[key]:.4f}" for key in METRIC_COLUMNS])
        sample = next(iter(models["Q-Bert4Rec"].values()))
        sizes.append(f"{split}: {sample['num_users']:,} users")
    return (f"Full ranking over all {sample['num_items']:,} items ({'; '.join(sizes)}); every metric is averaged "
            "over users. The epoch was chosen on validation N@10 with history items kept.\n\n"
            + table(["split", "model", "candidates", *METRIC_COLUMNS.values()], rows))


def codebook_section(stats: dict) -> str:
    rows = [[level["level"], "disambiguation" if level["disambiguation"] else "semantic",
             f"{level['codes_used']:,} of {stats['codebook_size']:,}", f"{level['perplexity']:.1f}",
             f"{level['largest_code_share']:.4f}", f"{level['distinct_prefixes']:,}"] for level in stats["levels"]]
    collisions = stats["collisions_before_disambiguation"]
    return (table(["level", "kind", "codes used", "perplexity", "largest code share", "distinct prefixes"], rows)
            + f"\n\nBefore the disambiguation level, {collisions['colliding_items']:,} of {stats['num_items']:,} items "
            f"shared their codes with another item (largest group {collisions['max_group_size']}). "
            "`code_prefixes.json` lists what each code prefix stands for.\n\n![code usage per level](code_usage.png)")


def training_section(run: dict) -> str:
    parts = []
    if run.get("command"):
        parts.append(f"Trained with:\n\n```bash\n{run['command']}\n```")
    if run.get("config"):
        parts.append(f"Its config file:\n\n```yaml\n{yaml.safe_dump(run['config'], sort_keys=False).rstrip()}\n```")
    if run.get("seconds_per_stage"):
        seconds = run["seconds_per_stage"]
        rows = [[stage, f"{value:.1f}"] for stage, value in seconds.items()]
        parts.append("Seconds per stage, measured by the run (CPU or GPU as it ran):\n\n"
                     + table(["stage", "seconds"], rows))
    versions = ", ".join(f"{name} {version}" for name, version in run["versions"].items())
    parts.append(f"Software: {versions}.")
    return "\n\n".join(parts)


def catalogue_section(changes: list[dict]) -> str:
    rows = [[f"{change['items_before']:,}", f"{change['added']:,}", f"{change['retired']:,}",
             f"{change['items_after']:,}", f"`{change['command']}`"] for change in changes]
    return ("The results above were measured on the catalogue the model was trained with; since then items were "
            "added from their content alone or retired, without retraining:\n\n"
            + table(["items before", "added", "retired", "items after", "command"], rows))


def this_checkpoint(folder: Path) -> str:
    """The card's section made from the folder's run files only: every number in it is in one of them."""
    read = lambda name: json.loads((folder / name).read_text())  # noqa: E731
    run, config = read("run.json"), read("config.json")
    return "\n\n".join([
        "### Data", data_section(run),
        "### Configuration", configuration_section(config, run),
        "### Results", metrics_section(read("metrics.json")),
        "### Semantic IDs", codebook_section(read("codebook_stats.json")),
        "### Training", training_section(run),
        *(["### Catalogue changes since training", catalogue_section(run["catalogue_changes"])]
          if run.get("catalogue_changes") else []),
    ])


def write_card(folder: Path, checkpoint: str) -> Path:
    """Render model_card.md from `folder`'s run files into `folder`/README.md."""
    path = folder / "README.md"
    path.write_text(render_card((REPO_ROOT / "model_card.md").read_text(), folder, checkpoint))
    return path


def render_card(template: str, folder: Path, checkpoint: str) -> str:
    """model_card.md with its placeholders filled from `folder` (its run files) for the repo id or path
    `checkpoint`."""
    run = json.loads((folder / "run.json").read_text())
    item_ids = json.loads((folder / "semantic_ids.json").read_text())["item_ids"]
    card = re.sub(r"<!--\nTemplate of .*?-->\n\n", "", template, flags=re.S)
    if THIS_CHECKPOINT not in card:
        raise ValueError(f"model_card.md lacks the placeholder {THIS_CHECKPOINT} of the checkpoint's own section")
    card = card.replace("{checkpoint}", checkpoint).replace("{dataset}", run["data"]["name"])
    card = card.replace("{example_history}", json.dumps(item_ids[:3]))
    return card.replace(THIS_CHECKPOINT, this_checkpoint(folder))


# Export.
def check_checkpoint(folder: Path, run_dir: str | None) -> None:
    """Refuse a folder that is not a trained checkpoint, or lacks its run files without a `run_dir` to make them."""
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (a save_pretrained folder of a trained model): "
                                f"{', '.join(missing)} missing")
    missing = [name for name in RUN_FILES if not (folder / name).is_file()]
    if missing and not run_dir:
        raise FileNotFoundError(f"{folder} lacks its run files {', '.join(missing)}: pass --run_dir with the run's "
                                "OUTPUT_DIR (the pipeline writes them into final/ itself)")


def staged_checkpoint(args: ExportArgs, staging: Path) -> Path:
    """A copy of the checkpoint in `staging` with its run files and card; returns the copy."""
    folder = Path(args.model_dir)
    copy = staging / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".cache", "__pycache__"))
    if args.run_dir:
        record_run(Path(args.run_dir), folder, copy)
    write_card(copy, args.repo_id or str(folder))
    return copy


def upload(copy: Path, args: ExportArgs) -> str:
    """Upload the staged `copy` to `args.repo_id`; returns the commit URL."""
    from huggingface_hub import HfApi

    with hub_errors(f"pushing {args.model_dir} to {args.repo_id}"):
        api = HfApi(token=args.token)
        api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        if args.revision:
            api.create_branch(args.repo_id, branch=args.revision, exist_ok=True)
        commit = api.upload_folder(folder_path=str(copy), repo_id=args.repo_id, revision=args.revision,
                                   commit_message="Upload Q-Bert4Rec checkpoint")
    return commit.commit_url


def export(args: ExportArgs) -> Path:
    """Write the run files (with `--run_dir`) and README.md into the model folder, or push them; returns the card's
    path (in the model folder, or in the staging copy for `--dry_run`, which is then removed)."""
    folder = Path(args.model_dir)
    if (args.push_to_hub or args.dry_run) and not args.repo_id:
        raise ValueError("--push_to_hub and --dry_run need --repo_id ORG/NAME")
    if args.repo_id:
        check_repo_id(args.repo_id)
    check_checkpoint(folder, args.run_dir)
    with tempfile.TemporaryDirectory(prefix="qbert4rec-export-") as staging:
        copy = staged_checkpoint(args, Path(staging))
        if args.dry_run:
            files = sorted(path for path in copy.rglob("*") if path.is_file())
            where = args.repo_id + (f" (branch {args.revision})" if args.revision else "")
            print(f"dry run: would upload {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB, "
                  f"to {where}; nothing was changed")
            for path in files:
                print(f"  {path.relative_to(copy)}  {path.stat().st_size:,} bytes")
            return folder / "README.md"
        if args.push_to_hub:
            print(f"pushed to {upload(copy, args)}")
        for name in ("README.md", *RUN_FILES):  # the upload succeeded (or none was asked): keep the new files
            shutil.copy(copy / name, folder / name)
    return folder / "README.md"


def main(argv=None) -> Path:
    (args,) = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    try:
        path = export(args)
    except (HubError, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    if not args.dry_run:
        print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
