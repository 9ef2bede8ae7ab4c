"""Baselines of the benchmarks as configurations of the same code as Q-Bert4Rec (no second framework).

- **most-popular**: `training.evaluate.MostPopular`, fitted on every item before the target (the training
  sequences for validation; training sequences + validation item, i.e. the test histories, for test).
- **ID-only BERT4Rec** (`bert4rec-id`): a one-level "semantic ID" whose code is the item index
  (`id_tokenizer`), a bidirectional encoder, cloze-only `MultiMaskCollator`, catalogue cross-entropy
  (`loss_type="items"`), then (by default) the same next-item fine-tuning as Q-Bert4Rec (`training/finetune.py`).
- **SASRec-CE** (`sasrec-ce`): the same ID tokenizer, causal attention (`is_causal=True`), `CausalCollator` (every
  position predicts the next item), full-softmax cross-entropy over the catalogue.

Every model is selected on validation NDCG@10 (`training/loop.py`) and reported on the test split with full ranking,
history items kept as candidates. `machine_info` describes the machine for the result files.
"""

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from modeling_qbert4rec import QBert4RecForMaskedItemModeling  # noqa: E402
from tokenization_semantic_id import SemanticIdTokenizer  # noqa: E402
from training import finetune, pretrain  # noqa: E402
from training.config import is_required, parse_args  # noqa: E402
from training.evaluate import MostPopular, eval_loader, evaluate_model, save_metrics  # noqa: E402
from training.loop import BEST, LoopArgs, make_accelerator, train  # noqa: E402
from training.masking import CausalCollator, HistoryCollator, MultiMaskCollator  # noqa: E402
from training.prepared import load_item_ids, load_sequences  # noqa: E402
from training.sequences import encode_split  # noqa: E402

ID_MODELS = ("bert4rec-id", "sasrec-ce")
CANDIDATES = "all items (history items kept)"
HISTORY_REMOVED = "all items minus the history's"
STAGE_RECORD = "stage_record.json"


def machine_info() -> dict:
    """Platform, CPU count, threads and library versions, for the result files."""
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available(),
        # 1-, 5- and 15-minute load averages: above cpu_count, other jobs shared the cores during the run
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(machine: dict) -> str:
    """The markdown line naming the machine (from `machine_info`) a result was measured on, flagging a busy CPU."""
    busy = max(machine["load_average"]) > machine["cpu_count"]
    return (
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs ({machine['torch_threads']} torch threads), "
        f"torch {machine['torch']}, transformers {machine['transformers']}; load average {machine['load_average']}"
        + (" (above the CPU count: other jobs shared the cores, so seconds are upper bounds)." if busy else ".")
    )


def stage_arguments(stage, argv: list[str]) -> tuple:
    """The arguments `stage.main(argv)` would parse (`stage.ARGUMENT_TYPES` from the config's `stage.SECTION` and
    `argv`; `stage` a module such as `training.pretrain`), for a run that brings its own data: the folders the stage
    requires are empty unless `argv` gives them (the ID baselines have no semantic IDs)."""
    folders = [f"--{f.name}" for t in stage.ARGUMENT_TYPES for f in dataclasses.fields(t) if is_required(f)]
    return parse_args([word for flag in folders for word in (flag, "")] + list(argv), *stage.ARGUMENT_TYPES,
                      section=stage.SECTION)


def masking_alone(masking: dict, strategy: str) -> dict:
    """A masking mix of `strategy` alone (probability 1) with the options (ratio, ...) that the mix `masking` (a
    config's `masking:` mapping) gives it; the strategy's own defaults where the mix does not list it."""
    options = {name: value for name, value in masking.get(strategy, {}).items() if name != "prob"}
    return {strategy: {"prob": 1.0, **options}}


def id_tokenizer(item_ids: list[str], max_len: int = 50) -> SemanticIdTokenizer:
    """An ID-only tokenizer: one level whose code is the item index (`codebook_size = num_items`)."""
    if len(item_ids) == 0:
        raise ValueError("id_tokenizer needs at least one item id")
    return SemanticIdTokenizer.from_codes(item_ids, [[i] for i in range(len(item_ids))], codebook_size=len(item_ids), max_len=max_len)


# The model settings every ID baseline has, whatever the config says (`build_id_model`).
ID_MODEL_FIXED = {"use_item_embedding": False, "score_item_embedding": False, "loss_type": "items"}


def build_id_model(settings: pretrain.ModelSettings, tokenizer: SemanticIdTokenizer, causal: bool) -> QBert4RecForMaskedItemModeling:
    """The Q-Bert4Rec backbone over item IDs: bidirectional (BERT4Rec) or causal (SASRec), catalogue cross-entropy.

    The single code level already is an item-ID embedding, so no extra item embedding is added."""
    return pretrain.build_model(dataclasses.replace(settings, **ID_MODEL_FIXED), tokenizer, is_causal=causal)


def id_collator(kind: str, tokenizer: SemanticIdTokenizer, settings: pretrain.ModelSettings,
                pretrain_args: pretrain.PretrainArgs, seed: int):
    """Training collator of an ID baseline: cloze-only masking with the config's cloze options (`bert4rec-id`) or next
    item at every position (`sasrec-ce`)."""
    batching = {"num_items": tokenizer.num_items, "max_len": settings.max_position_embeddings}
    if kind == "sasrec-ce":
        return CausalCollator(**batching)
    if kind == "bert4rec-id":
        return MultiMaskCollator(**batching, masking=masking_alone(pretrain_args.masking, "cloze"), seed=seed)
    raise ValueError(f"unknown ID baseline {kind!r}; known: {', '.join(ID_MODELS)}")


def stage_done(stage_dir: Path) -> dict | None:
    """The record a finished stage left in `stage_dir` (its seconds and metrics), or None when it did not finish."""
    path = Path(stage_dir) / STAGE_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def write_report(results_dir, stem: str, report: dict, markdown: str) -> tuple[Path, Path]:
    """Write a benchmark's `RESULTS_DIR/<stem>.json` and `<stem>.md`; returns their paths."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results_dir / f"{stem}.json", results_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def write_stage_record(stage_dir: Path, record: dict) -> dict:
    Path(stage_dir).mkdir(parents=True, exist_ok=True)
    (Path(stage_dir) / STAGE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def validation_history(stage_dir: Path) -> list[float]:
    """Validation NDCG@10 per evaluated epoch, from the `training_history.json` that `training/loop.py` writes."""
    path = Path(stage_dir) / "training_history.json"
    if not path.is_file():
        return []
    return [entry["score"] for entry in json.loads(path.read_text())["history"]]


def seconds_to_selected_epoch(stage_dirs: list) -> float | None:
    """Training seconds (validation excluded) until the epoch each stage kept, summed over the stages (pretraining
    then fine-tuning): the time to the reported quality. None for runs made before the loop recorded times."""
    total = 0.0
    for stage_dir in stage_dirs:
        record = json.loads((Path(stage_dir) / "training_history.json").read_text())
        seconds = record.get("train_seconds_at_evaluation")
        if not seconds:
            return None
        best = [entry["epoch"] for entry in record["history"]].index(record["best_epoch"])
        total += seconds[best]
    return round(total, 2)


def most_popular(dataset_dir: str) -> dict:
    """Validation and test metrics of the most-popular baseline (full ranking, history items kept)."""
    start = time.perf_counter()
    tokenizer = id_tokenizer(load_item_ids(dataset_dir), max_len=50)
    sequences = load_sequences(dataset_dir)
    collator = HistoryCollator(num_items=tokenizer.num_items, max_len=50)
    loop_args = LoopArgs()
    results = {}
    for split in ("validation", "test"):
        encoded = encode_split(sequences[split], tokenizer)
        # every item before the target: the histories of this split (train sequences; + validation item for test)
        model = MostPopular.from_sequences(encoded["item_indices"], tokenizer.num_items)
        loader = eval_loader(encoded, collator, loop_args, max_users=0)
        results[split] = evaluate_model(model, loader, desc=f"most-popular {split}")
    removed = evaluate_model(model, loader, exclude_history=True, desc="most-popular test, history removed")
    return {"test": results["test"], "test_history_removed": removed, "validation": results["validation"],
            "train_seconds": round(time.perf_counter() - start, 2)}


def history_removed_test_metrics(checkpoint_dir, dataset_dir) -> dict:
    """Test metrics of a saved model (`save_final` folder: model + tokenizer) with each user's history items removed
    from the candidates: RecBole's full-ranking convention, beside the protocol's (history items kept)."""
    model = QBert4RecForMaskedItemModeling.from_pretrained(checkpoint_dir)
    max_len = model.config.max_position_embeddings
    tokenizer = SemanticIdTokenizer.from_pretrained(checkpoint_dir, max_len=max_len - 1)
    test = encode_split(load_sequences(dataset_dir)["test"], tokenizer)
    collator = HistoryCollator(num_items=tokenizer.num_items, max_len=max_len)
    loader = eval_loader(test, collator, LoopArgs(), max_users=0)
    return evaluate_model(model, loader, exclude_history=True, desc="test, history removed")


def train_id_model(
    kind: str,
    dataset_dir: str,
    output_dir: str,
    seed: int,
    config_path: str | None = None,
    overrides: list[str] = (),
    finetune_after: bool | None = None,
    finetune_name: str = "finetune",
    finetune_overrides: list[str] = (),
) -> dict:
    """Train an ID baseline, select it on validation NDCG@10, evaluate it on test. Restartable stage by stage.

    Args:
        kind: `"bert4rec-id"` or `"sasrec-ce"`.
        dataset_dir: prepared dataset folder.
        output_dir: the run folder (gets `pretrain/` and, when fine-tuning, `<finetune_name>/`).
        seed: seed of init, data order, masks and dropout.
        config_path: YAML whose `pretrain` section (model sizes, optimisation) and `finetune` section apply.
        overrides: extra flags for the `pretrain` section (e.g. `["--num_epochs", "1"]`).
        finetune_after: fine-tune with `training/finetune.py` after training (default: True for `bert4rec-id`,
            False for `sasrec-ce`, which is trained on the next-item task already).
        finetune_name: the fine-tuning folder's name inside `output_dir`.
        finetune_overrides: extra flags for the `finetune` section.

    Returns:
        `{"test": metrics, "train_seconds": float, "stage_seconds": {...}, "validation_ndcg@10": {stage: [...]},
        "best_validation_ndcg@10": float, "fine_tuned": bool, "output_dir": str}`.
    """
    if kind not in ID_MODELS:
        raise ValueError(f"unknown ID baseline {kind!r}; known: {', '.join(ID_MODELS)}")
    finetune_after = (kind == "bert4rec-id") if finetune_after is None else finetune_after
    out = Path(output_dir)
    config = ["--config", str(config_path)] if config_path else []
    pretrain_dir, finetune_dir = out / "pretrain", out / finetune_name

    if stage_done(pretrain_dir) is None:
        argv = config + ["--output_dir", str(pretrain_dir), "--seed", str(seed), "--resume_from_checkpoint", "latest", *overrides]
        settings, pretrain_args, loop_args = stage_arguments(pretrain, argv)
        max_len = settings.max_position_embeddings
        accelerator = make_accelerator(loop_args, kind)
        tokenizer = id_tokenizer(load_item_ids(dataset_dir), max_len=max_len - 1)
        sequences = load_sequences(dataset_dir)
        train_set = encode_split(sequences["train"], tokenizer).select_columns(["item_indices"])
        if kind == "sasrec-ce":
            train_set = train_set.filter(lambda row: len(row["item_indices"]) >= 2, desc="sequences of >= 2 items")
        if loop_args.max_train_sequences:
            train_set = train_set.select(range(min(loop_args.max_train_sequences, len(train_set))))
        model = build_id_model(settings, tokenizer, causal=kind == "sasrec-ce")
        history = HistoryCollator(num_items=tokenizer.num_items, max_len=max_len)
        loader = eval_loader(encode_split(sequences["validation"], tokenizer), history, loop_args, accelerator)
        accelerator.print(f"{kind}: {len(train_set)} training sequences, {model.num_parameters():,} parameters")
        start = time.perf_counter()
        train(model, tokenizer, train_set, id_collator(kind, tokenizer, settings, pretrain_args, seed), loader, loop_args, accelerator)
        seconds = time.perf_counter() - start
        record = {"seconds": round(seconds, 2)}
        if not finetune_after:
            best = QBert4RecForMaskedItemModeling.from_pretrained(pretrain_dir / BEST)
            test = encode_split(sequences["test"], tokenizer)
            metrics = evaluate_model(best, eval_loader(test, history, loop_args, max_users=0), desc=f"{kind} test")
            save_metrics(metrics, pretrain_dir / "metrics.json", split="test", candidates=CANDIDATES, num_items=tokenizer.num_items)
            record["test"] = metrics
        write_stage_record(pretrain_dir, record)
        accelerator.end_training()

    if finetune_after and stage_done(finetune_dir) is None:
        argv = config + [
            "--pretrained_dir", str(pretrain_dir / BEST), "--dataset_dir", str(dataset_dir), "--output_dir", str(finetune_dir),
            "--seed", str(seed), "--resume_from_checkpoint", "latest", *finetune_overrides,
        ]
        start = time.perf_counter()
        metrics = finetune.main(argv)
        write_stage_record(finetune_dir, {"seconds": round(time.perf_counter() - start, 2), "test": metrics})

    stage_dirs = {"pretrain": pretrain_dir} | ({"finetune": finetune_dir} if finetune_after else {})
    stages = {name: stage_done(path) for name, path in stage_dirs.items()}
    histories = {name: validation_history(path) for name, path in stage_dirs.items()}
    last = list(stages)[-1]
    return {
        "test": stages[last]["test"],
        "train_seconds": round(sum(s["seconds"] for s in stages.values()), 2),
        "stage_seconds": {name: s["seconds"] for name, s in stages.items()},
        "validation_ndcg@10": histories,
        "best_validation_ndcg@10": max(histories[last]) if histories[last] else None,
        "seconds_to_selected_epoch": seconds_to_selected_epoch(list(stage_dirs.values())),
        "fine_tuned": finetune_after,
        "output_dir": str(out),
        "checkpoint": str(stage_dirs[last] / BEST),
    }
