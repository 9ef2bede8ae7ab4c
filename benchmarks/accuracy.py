"""Benchmark: accuracy of Q-Bert4Rec against in-box baselines, and its ablations, on one dataset.

    python benchmarks/accuracy.py --dataset beauty --seeds 0,1,2 --rows all
    python benchmarks/accuracy.py --dataset beauty --rows all --pipeline_dir outputs/beauty   # reuse stages 1-2
    python benchmarks/accuracy.py --dataset scientific-mm --rows main
    python benchmarks/accuracy.py --dataset beauty --quick --seeds 0 --rows all      # smoke-sized (configs/smoke.yaml)

Every row is trained with the dataset's config (`configs/<dataset>.yaml`, read at run time), selected on validation
NDCG@10 and evaluated on the test split with full ranking over all items, history items kept as candidates; the
kept model is also evaluated with each history's items removed from the candidates (RecBole's convention). The ID
baselines read the config's optional `id_baselines` section (`pretrain` and `finetune` keys, e.g. their own
schedule) in place of those keys of the two sections.

Main rows (each over `--seeds`, reported as mean and sample std):
- `most-popular`: item counts before the target;
- `bert4rec-id`: ID-only BERT4Rec (one code level = the item index, bidirectional, cloze-only, catalogue
  cross-entropy), then the same next-item fine-tuning as Q-Bert4Rec (`--bert4rec_finetune false`: without);
- `sasrec-ce`: ID-only causal Transformer, next item at every position, full-softmax cross-entropy;
- `qbert4rec`: the pipeline's semantic IDs (stages 1-2), multi-mask pretraining, fine-tuning.
Stages 1-2 run once per semantic-ID variant (their own seed from the config); seeds vary stage 3.

Ablation rows (first seed only), each one change to `qbert4rec`:
- `qbert4rec/no-stage1`: quantise the text features directly (mean over each item's text vectors);
- `qbert4rec/no-image`, `qbert4rec/no-structure`: stage 1 without that modality (n/a when the dataset lacks it);
- `qbert4rec/text-only`: stage 1 on text alone (n/a without images: there it is `no-structure`);
- `qbert4rec/no-gate`: stage 1 at fixed depth (`inject --use_gate false`);
- `qbert4rec/mask-<strategy>`: pretraining with one masking strategy alone, one row per strategy of
  `training.masking.MASKING_STRATEGIES` (the config's options for it, such as its ratio, kept);
- `qbert4rec/+item-embedding` (or `-item-embedding` when the config uses one): the item-ID embedding flipped.

Writes `RESULTS_DIR/<dataset>.json` (every run: all metrics, training seconds, validation NDCG@10 per epoch; the
command line and machine), `RESULTS_DIR/<dataset>.md` (the table) and two PNGs (validation N@10 per epoch per row;
test N@10 and R@10 per row). Restartable: a (row, seed) already in the JSON with the same settings (the config
settings that row reads, see `row_settings`, and the training flags) is skipped, a finished stage is not run again,
and an interrupted one resumes from its last checkpoint. `--quick` writes `<dataset>-quick.*` instead. A failed run
is recorded as the row's `error` and the others go on (`--fail_fast true` stops instead).
"""

import fcntl
import hashlib
import json
import math
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.baselines import CANDIDATES, machine_info, machine_line, most_popular, stage_done, train_id_model  # noqa: E402
from benchmarks.baselines import HISTORY_REMOVED, history_removed_test_metrics, masking_alone, stage_arguments  # noqa: E402
from benchmarks.baselines import ID_MODEL_FIXED, seconds_to_selected_epoch, validation_history, write_stage_record  # noqa: E402
from training import finetune, inject, pipeline, pretrain, quantize  # noqa: E402
from training.config import as_flags, load_yaml, parse_args  # noqa: E402
from training.loop import BEST  # noqa: E402
from training.masking import DEFAULT_MASKING, MASKING_STRATEGIES  # noqa: E402

DATASET_CONFIGS = {"beauty": "configs/beauty.yaml", "scientific-mm": "configs/scientific-mm.yaml"}
METRICS = ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr")
# Published Beauty anchors (docs/method.md §4), R@10 / N@10, history items kept as candidates.
BEAUTY_ANCHORS = {
    "SASRec (TIGER paper)": (0.0605, 0.0318),
    "TIGER": (0.0648, 0.0384),
    "tuned SASRec, CE loss (2025)": (0.0921, 0.0531),
    "BARGE (2026)": (0.0927, 0.0547),
}


@dataclass
class AccuracyArgs:
    dataset: str = field(default="beauty", metadata={"help": f"one of {', '.join(DATASET_CONFIGS)}"})
    dataset_config: str = field(
        default="", metadata={"help": "YAML of the runs (default configs/<dataset>.yaml; configs/smoke.yaml with --quick)"}
    )
    quick: bool = field(default=False, metadata={"help": "smoke-sized runs (configs/smoke.yaml); results go to <dataset>-quick.*"})
    seeds: str = field(default="0,1,2", metadata={"help": "comma-separated seeds of the main rows (ablations use the first)"})
    rows: str = field(default="main", metadata={"help": "main, ablations or all"})
    only: str = field(default="", metadata={"help": "comma-separated row names to run (a subset of --rows)"})
    output_dir: str = field(default="outputs/bench", metadata={"help": "where runs, checkpoints and stage outputs go"})
    results_dir: str = field(default="outputs/bench/results", metadata={"help": "where JSON, MD, PNG go; benchmarks/results holds the committed ones"})
    bert4rec_finetune: bool = field(default=True, metadata={"help": "fine-tune the ID BERT4Rec like Q-Bert4Rec"})
    train_overrides: str = field(
        default="", metadata={"help": "extra flags for every pretrain/finetune run, e.g. '--num_epochs 1' (quoted)"}
    )
    pipeline_dir: str = field(
        default="", metadata={"help": "reuse this training/pipeline.py output folder (data ... semantic_ids) made with the same config"}
    )
    fail_fast: bool = field(default=False, metadata={"help": "stop at the first failed run (else record its error and go on)"})


@dataclass(frozen=True)
class Row:
    """One line of the table: a model kind plus the one change an ablation makes."""

    name: str
    group: str  # "main" or "ablation"
    kind: str  # "most-popular", "bert4rec-id", "sasrec-ce" or "qbert4rec"
    description: str
    semantic_ids: str = "main"  # semantic-ID variant (qbert4rec)
    pretrain_flags: tuple = ()


def plan_rows(which: str, item_embedding_in_config: bool, masking: dict) -> list[Row]:
    """The rows of `--rows main|ablations|all`, in table order, for a config with or without the item-ID embedding
    and with the masking mix `masking` (its `pretrain` section's)."""
    if which not in ("main", "ablations", "all"):
        raise ValueError(f"--rows must be main, ablations or all, got {which!r}")
    main_rows = [
        Row("most-popular", "main", "most-popular", "item counts before the target"),
        Row("bert4rec-id", "main", "bert4rec-id", "item IDs, bidirectional, cloze-only pretraining"),
        Row("sasrec-ce", "main", "sasrec-ce", "item IDs, causal, full-softmax cross-entropy"),
        Row("qbert4rec", "main", "qbert4rec", "semantic IDs, multi-mask pretraining, fine-tuning"),
    ]
    flip = not item_embedding_in_config
    ablations = [
        Row("qbert4rec/no-stage1", "ablation", "qbert4rec", "semantic IDs quantised from the text features", "no-stage1"),
        Row("qbert4rec/no-image", "ablation", "qbert4rec", "stage 1 without the image modality", "no-image"),
        Row("qbert4rec/no-structure", "ablation", "qbert4rec", "stage 1 without the structure modality", "no-structure"),
        Row("qbert4rec/text-only", "ablation", "qbert4rec", "stage 1 on the text modality alone", "text-only"),
        Row("qbert4rec/no-gate", "ablation", "qbert4rec", "stage 1 at fixed depth (no gate)", "no-gate"),
        *[
            Row(f"qbert4rec/mask-{s}", "ablation", "qbert4rec", f"pretraining with {s} masking alone",
                pretrain_flags=("--masking", json.dumps(masking_alone(masking, s))))
            for s in MASKING_STRATEGIES
        ],
        # Without the item-ID embedding, pretraining rises slowly at first: on Beauty patience 3 stopped it after 5
        # epochs (validation N@10 .005), so this row holds off early stopping for 20 epochs (a schedule of fewer
        # epochs, like Beauty's 10, runs to its end anyway).
        Row(f"qbert4rec/{'+' if flip else '-'}item-embedding", "ablation", "qbert4rec",
            f"{'with' if flip else 'without'} the item-ID embedding (inputs and catalogue scores)",
            pretrain_flags=("--use_item_embedding", str(flip).lower(), "--score_item_embedding", str(flip).lower())
            + (() if flip else ("--min_epochs", "20"))),
    ]
    return {"main": main_rows, "ablations": ablations, "all": main_rows + ablations}[which]


# ----------------------------------------------------------------------------------------------------------------------
# Stages 1-2: the semantic IDs of each variant
# ----------------------------------------------------------------------------------------------------------------------


class Workspace:
    """Folders of one dataset, and the stage outputs shared by rows (built on first use).

        ROOT/stages-<key>/pipeline/{data,features,inject,semantic_ids}   the main pipeline up to quantize
        ROOT/stages-<key>/variants/<variant>/{inject,semantic_ids}       ablated stages 1-2
        ROOT/runs-<key>/<row>/seed<k>/pretrain                           stage 3a of each run
        ROOT/runs-<key>/<row>/seed<k>/finetune-<key>                     stage 3b of each run

    `stages-<key>` hashes the config sections stages 1-2 read (data, features, inject, quantize), `runs-<key>` every
    setting but the `finetune` section, and `finetune-<key>` that section (for the ID baselines, with their
    `id_baselines` keys applied): tuning stage 3 reuses stages 1-2, and
    tuning the fine-tuning reuses the pretrained models. `pipeline_dir` replaces the main pipeline folder (e.g. the
    `outputs/beauty` of an earlier `training/pipeline.py` run with the same config).
    """

    INJECT_FLAGS = {
        "no-image": ["--use_image", "false"],
        "no-structure": ["--use_structure", "false"],
        "text-only": ["--use_image", "false", "--use_structure", "false"],
        "no-gate": ["--use_gate", "false"],
    }
    STAGE_1_2_SECTIONS = ("data", "features", "inject", "quantize")

    def __init__(self, root: Path, config_path: str, flags: list, pipeline_dir: str | None = None):
        self.config_path = config_path
        self.config = load_yaml(config_path)
        stage_3a = {k: v for k, v in self.config.items() if k != "finetune"}
        self.stages_root = Path(root) / f"stages-{_key({k: self.config.get(k) for k in self.STAGE_1_2_SECTIONS})}"
        self.runs_root = Path(root) / f"runs-{_key([stage_3a, flags])}"
        self.finetune_name = f"finetune-{_key(self.config.get('finetune'))}"
        self.pipeline_dir = Path(pipeline_dir) if pipeline_dir else self.stages_root / "pipeline"
        self.data_dir = self.pipeline_dir / "data"
        self.features_dir = self.pipeline_dir / "features"
        self._pipeline_checked = False

    @property
    def config_flags(self) -> list[str]:
        return ["--config", self.config_path]

    def run_dir(self, row: Row, seed: int) -> Path:
        return self.runs_root / row.name.replace("/", "__") / f"seed{seed}"

    def semantic_id_seconds(self) -> dict:
        """Seconds of each pipeline stage up to quantize (from the pipeline's `timings.json`)."""
        path = self.pipeline_dir / "timings.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def main_semantic_ids(self) -> Path:
        """Data, features and semantic IDs of the main pipeline (skipped stage by stage when present)."""
        if not self._pipeline_checked:
            pipeline.main(self.config_flags + ["--output_dir", str(self.pipeline_dir), "--stop_after", "quantize"])
            self._pipeline_checked = True
        return self.pipeline_dir / "semantic_ids"

    def not_applicable(self, variant: str) -> str | None:
        """Why a semantic-ID variant cannot run on this dataset, or None."""
        modality = {"no-image": "image", "no-structure": "structure"}.get(variant)
        if modality and not (self.features_dir / f"{modality}.safetensors").is_file():
            return f"not applicable: the {modality} modality is not among this dataset's features"
        if variant == "text-only" and not (self.features_dir / "image.safetensors").is_file():
            return "not applicable: without images, stage 1 on text alone is qbert4rec/no-structure"
        if variant == "no-stage1" and not (self.features_dir / "text.safetensors").is_file():
            return "not applicable: no text features to quantise"
        return None

    def semantic_ids(self, variant: str) -> tuple[Path, dict]:
        """The tokenizer folder of a semantic-ID variant and the seconds its stages 1-2 took."""
        main_dir = self.main_semantic_ids()
        if variant == "main":
            timings = self.semantic_id_seconds()
            return main_dir, {k: timings[k] for k in ("inject", "quantize") if k in timings}
        if variant not in ("no-stage1", *self.INJECT_FLAGS):
            raise ValueError(f"unknown semantic-ID variant {variant!r}")
        out = self.stages_root / "variants" / variant
        injected, sids = out / "inject", out / "semantic_ids"
        record = stage_done(out)
        if record is None:
            seconds = {}
            start = time.perf_counter()
            if variant == "no-stage1":
                write_text_embeddings(self.features_dir / "text.safetensors", injected / "fused.safetensors")
            else:
                inject.main(self.config_flags + ["--dataset_dir", str(self.data_dir), "--features_dir", str(self.features_dir),
                                                 "--output_dir", str(injected), *self.INJECT_FLAGS[variant]])
            seconds["inject"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            quantize.main(self.config_flags + ["--dataset_dir", str(self.data_dir), "--embeddings", str(injected / "fused.safetensors"),
                                               "--output_dir", str(sids)])
            seconds["quantize"] = round(time.perf_counter() - start, 2)
            record = write_stage_record(out, {"seconds": seconds})
        return sids, record["seconds"]


def _key(settings) -> str:
    """Short sha256 of JSON-able settings, naming the folder of the outputs they make."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def write_text_embeddings(text_features: Path, output: Path) -> Path:
    """Stage 1 removed: each item's text vectors averaged over its real vectors (zero when it has none), written as a
    stage 1 output (`embeddings` `(num_items, dim)`, `depth` zeros) for `training/quantize.py`."""
    import torch
    from safetensors.torch import load_file, save_file

    if not Path(text_features).is_file():
        raise FileNotFoundError(f"no text features at {text_features}")
    tensors = load_file(str(text_features))
    if "features" not in tensors or "mask" not in tensors:
        raise ValueError(f"{text_features}: expected tensors 'features' and 'mask', found {', '.join(sorted(tensors))}")
    features, mask = tensors["features"].float(), tensors["mask"].bool()  # (N, V, D), (N, V)
    counts = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (N, 1)
    embeddings = (features * mask[..., None]).sum(dim=1) / counts  # (N, D)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": embeddings.contiguous(), "depth": torch.zeros(len(embeddings), dtype=torch.long)}, str(output))
    return output


# ----------------------------------------------------------------------------------------------------------------------
# One run of one row
# ----------------------------------------------------------------------------------------------------------------------


def run_qbert4rec(row: Row, seed: int, ws: Workspace, args: AccuracyArgs) -> dict:
    """Stage 3 of Q-Bert4Rec (pretrain + fine-tune) on a semantic-ID variant; stages skipped when done."""
    sids, sid_seconds = ws.semantic_ids(row.semantic_ids)
    out = ws.run_dir(row, seed)
    common = ["--seed", str(seed), "--resume_from_checkpoint", "latest", *shlex.split(args.train_overrides)]
    if stage_done(out / "pretrain") is None:
        start = time.perf_counter()
        pretrain.main(ws.config_flags + ["--dataset_dir", str(ws.data_dir), "--semantic_ids_dir", str(sids),
                                         "--output_dir", str(out / "pretrain"), *common, *row.pretrain_flags])
        write_stage_record(out / "pretrain", {"seconds": round(time.perf_counter() - start, 2)})
    finetune_dir = out / ws.finetune_name
    if stage_done(finetune_dir) is None:
        start = time.perf_counter()
        metrics = finetune.main(ws.config_flags + ["--pretrained_dir", str(out / "pretrain" / "final"), "--dataset_dir",
                                                   str(ws.data_dir), "--output_dir", str(finetune_dir), *common])
        write_stage_record(finetune_dir, {"seconds": round(time.perf_counter() - start, 2), "test": metrics})
    stage_dirs = {"pretrain": out / "pretrain", "finetune": finetune_dir}
    stages = {name: stage_done(path) for name, path in stage_dirs.items()}
    histories = {name: validation_history(path) for name, path in stage_dirs.items()}
    return {
        "test": stages["finetune"]["test"],
        "train_seconds": round(sum(s["seconds"] for s in stages.values()), 2),
        "stage_seconds": {name: s["seconds"] for name, s in stages.items()},
        "semantic_id_seconds": sid_seconds,
        "validation_ndcg@10": histories,
        "best_validation_ndcg@10": max(histories["finetune"]) if histories["finetune"] else None,
        "seconds_to_selected_epoch": seconds_to_selected_epoch(list(stage_dirs.values())),
        "output_dir": str(out),
        "checkpoint": str(finetune_dir / BEST),
    }


def run_row(row: Row, seed: int, ws: Workspace, args: AccuracyArgs) -> dict:
    """Train (where needed) and evaluate one row with one seed; returns its JSON record."""
    if row.kind == "most-popular":
        ws.main_semantic_ids()  # prepares the data
        return most_popular(str(ws.data_dir))
    if row.kind in ("bert4rec-id", "sasrec-ce"):
        ws.main_semantic_ids()
        own = ws.config.get("id_baselines") or {}  # checked by id_baseline_sections when the settings were hashed
        run = train_id_model(
            row.kind, str(ws.data_dir), str(ws.run_dir(row, seed)), seed, config_path=ws.config_path,
            overrides=as_flags(own.get("pretrain")) + shlex.split(args.train_overrides),
            finetune_overrides=as_flags(own.get("finetune")) + shlex.split(args.train_overrides),
            finetune_after=args.bert4rec_finetune if row.kind == "bert4rec-id" else False,
            finetune_name=f"finetune-{_key(id_baseline_sections(ws.config)['finetune'])}",
        )
    else:
        run = run_qbert4rec(row, seed, ws, args)
    # The same kept model under RecBole's convention too (a history item is never the target on these datasets).
    run["test_history_removed"] = history_removed_test_metrics(run["checkpoint"], ws.data_dir)
    return run


# ----------------------------------------------------------------------------------------------------------------------
# Results: JSON, markdown, plots
# ----------------------------------------------------------------------------------------------------------------------


def _mean_and_std(values: list) -> tuple[float, float]:
    """Mean and sample std (n - 1; 0 for one value)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def summarise(seed_records: dict) -> dict:
    """Mean and sample std of each test metric and the training seconds over seeds; `history_removed` holds those of
    the test metrics with history items removed from the candidates, when every seed has them."""
    records = [r for r in seed_records.values() if "test" in r]
    if not records:
        return {}
    out = {"n": len(records), "mean": {}, "std": {}}
    for name in (*METRICS, "train_seconds", "seconds_to_selected_epoch"):
        values = [r["test"][name] if name in METRICS else r.get(name) for r in records]
        if None in values:  # most-popular trains nothing; older runs lack the time to the selected epoch
            continue
        out["mean"][name], out["std"][name] = _mean_and_std(values)
    if all("test_history_removed" in r for r in records):  # runs made before it was measured lack it
        removed = {name: _mean_and_std([r["test_history_removed"][name] for r in records]) for name in METRICS}
        out["history_removed"] = {"n": len(records), "mean": {k: v[0] for k, v in removed.items()},
                                  "std": {k: v[1] for k, v in removed.items()}}
    return out


def load_results(path: Path, settings_sha256: dict) -> dict:
    """The results JSON, without records made with other settings (those rows run again).

    `settings_sha256` maps a row name to the sha its runs must have been made with (`settings_hash`)."""
    if not path.is_file():
        return {"rows": {}}
    results = json.loads(path.read_text())
    for name, row in results.get("rows", {}).items():
        wanted = settings_sha256.get(name)
        stale = [s for s, r in row.get("seeds", {}).items() if r.get("settings_sha256") != wanted]
        for seed in stale:
            print(f"[accuracy] {name} seed {seed}: made with other settings, will run again")
            del row["seeds"][seed]
        row["summary"] = summarise(row.get("seeds", {}))
    return results


def write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)  # atomic: a killed run never leaves half a file


def _cell(summary: dict, name: str, digits: int = 4) -> str:
    mean, std = summary["mean"][name], summary["std"][name]
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if summary["n"] > 1 else f"{mean:.{digits}f}"


def markdown_table(results: dict) -> str:
    """The results as a markdown page: protocol, table, anchors, command and machine."""
    dataset, machine = results["dataset"], results["machine"]
    lines = [
        f"# Accuracy on {dataset}",
        "",
        f"Test split, leave-one-out, full ranking over all {results.get('num_items', '?')} items, candidates: {CANDIDATES}; "
        "each model selected on validation NDCG@10. Main rows: mean ± sample std over the seeds listed; ablations: one seed. "
        "`train s`: seconds of stage-3 training (pretrain + fine-tune, validation and early-stopping epochs "
        "included), not counting stages 1-2; `to selected`: training seconds (validation excluded) until the epochs "
        "whose weights were kept, i.e. the time to the quality shown.",
        "",
        "| row | what | seeds | R@5 | R@10 | R@20 | N@5 | N@10 | N@20 | MRR | train s | to selected |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["rows"].items():
        summary = row.get("summary") or {}
        if row.get("skipped"):
            lines.append(f"| {name} | {row['description']} | - | {row['skipped']} |" + " |" * 8)
            continue
        if not summary:
            error = row.get("error", "not run yet").splitlines()[0][:80]
            lines.append(f"| {name} | {row['description']} | - | {error} |" + " |" * 8)
            continue
        seeds = ",".join(sorted(row["seeds"], key=int))
        cells = [_cell(summary, m) for m in METRICS] + [
            _cell(summary, name, 0) if name in summary["mean"] else "-" for name in ("train_seconds", "seconds_to_selected_epoch")
        ]
        lines.append(f"| {name} | {row['description']} | {seeds} | " + " | ".join(cells) + " |")
    removed = {name: row["summary"]["history_removed"] for name, row in results["rows"].items()
               if "history_removed" in (row.get("summary") or {})}
    if removed:
        lines += ["", f"The same models, candidates: {HISTORY_REMOVED} (RecBole's full-ranking convention):", "",
                  "| row | seeds | R@5 | R@10 | R@20 | N@5 | N@10 | N@20 | MRR |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {summary['n']} | " + " | ".join(_cell(summary, m) for m in METRICS) + " |"
                  for name, summary in removed.items()]
    if dataset == "beauty":
        lines += ["", "Published Beauty anchors (R@10 / N@10, same protocol, not measured here): "
                  + "; ".join(f"{k} {r:.4f} / {n:.4f}" for k, (r, n) in BEAUTY_ANCHORS.items()) + "."]
    lines += [
        "",
        f"Config: `{results['config_file']}` (settings sha256 of `qbert4rec`: {results['settings_sha256']['qbert4rec'][:12]}).",
        f"Command: `{results['command']}`",
        machine_line(machine),
        "",
        f"![validation]({dataset_stem(results)}_validation.png) ![test]({dataset_stem(results)}_test.png)",
        "",
    ]
    return "\n".join(lines)


def dataset_stem(results: dict) -> str:
    return results["dataset"] + ("-quick" if results.get("quick") else "")


def plot_results(results: dict, results_dir: Path) -> list[Path]:
    """Validation N@10 per epoch of each row (first seed; pretraining then fine-tuning epochs) and a bar chart of
    test N@10 and R@10 (mean, std as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    stem = dataset_stem(results)
    rows = {name: row for name, row in results["rows"].items() if row.get("summary")}
    paths = []

    present = {row["group"] for row in rows.values()}
    groups = [group for group in ("main", "ablation") if group in present] or ["main"]  # a panel per group shown
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.5), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, group in zip(axes, groups):
        for name, row in rows.items():
            if row["group"] != group:
                continue
            first = row["seeds"][sorted(row["seeds"], key=int)[0]]
            histories = first.get("validation_ndcg@10", {})
            scores = [s for stage in ("pretrain", "finetune") for s in histories.get(stage, [])]
            if not scores:
                continue
            (line,) = ax.plot(range(1, len(scores) + 1), scores, marker=".", label=name)
            if histories.get("pretrain") and histories.get("finetune"):  # where fine-tuning starts
                ax.axvline(len(histories["pretrain"]) + 0.5, color=line.get_color(), linestyle=":", linewidth=0.8)
        ax.set_title(f"{stem}: {group} rows (dotted: fine-tuning starts)")
        ax.set_xlabel("epoch (pretraining, then fine-tuning)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("validation NDCG@10")
    fig.tight_layout()
    paths.append(results_dir / f"{stem}_validation.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    names = list(rows)
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(names) + 2), 4.5))
    width = 0.4
    for offset, metric in ((-width / 2, "ndcg@10"), (width / 2, "recall@10")):
        means = [rows[n]["summary"]["mean"][metric] for n in names]
        stds = [rows[n]["summary"]["std"][metric] for n in names]
        ax.bar([i + offset for i in range(len(names))], means, width, yerr=stds, capsize=3, label=f"test {metric}")
    if results["dataset"] == "beauty":
        ax.axhline(BEAUTY_ANCHORS["TIGER"][1], color="grey", linestyle="--", linewidth=0.8, label="TIGER N@10")
        ax.axhline(BEAUTY_ANCHORS["BARGE (2026)"][1], color="black", linestyle="--", linewidth=0.8, label="BARGE N@10")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_title(f"{stem}: test, full ranking, history items kept")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(results_dir / f"{stem}_test.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def merge_runs_from_disk(results: dict, path: Path) -> None:
    """Add to `results` the runs another process (same settings) wrote to `path` since this one read it."""
    if not path.is_file():
        return
    for name, row in json.loads(path.read_text()).get("rows", {}).items():
        wanted = results["settings_sha256"].get(name)
        theirs = {s: r for s, r in row.get("seeds", {}).items() if r.get("settings_sha256") == wanted}
        mine = results["rows"].get(name)
        if mine is None and theirs:
            mine = results["rows"][name] = {k: v for k, v in row.items() if k not in ("seeds", "summary", "error")}
            mine["seeds"] = {}
        for seed, run in theirs.items():
            mine["seeds"].setdefault(seed, run)
        if mine is not None:
            mine["summary"] = summarise(mine["seeds"])


def write_reports(results: dict, results_dir: Path) -> None:
    """`<stem>.json`, `<stem>.md` and the two PNGs, rows in table order (main rows, then the ablations).

    Several processes may run rows of the same dataset at once (`--only`): under a file lock, each merges the
    runs the others wrote before writing."""
    stem = dataset_stem(results)
    results_dir.mkdir(parents=True, exist_ok=True)
    with open(results_dir / f"{stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merge_runs_from_disk(results, results_dir / f"{stem}.json")
        order = [r.name for r in plan_rows("all", False, DEFAULT_MASKING) + plan_rows("ablations", True, DEFAULT_MASKING)]
        results["rows"] = dict(sorted(results["rows"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
        write_json(results, results_dir / f"{stem}.json")
        (results_dir / f"{stem}.md").write_text(markdown_table(results))
        plot_results(results, results_dir)


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


# Pretraining settings the ID baselines do not read: `build_id_model` fixes the semantic-ID model's keys, their
# embeddings start at random (they have no codebooks), and `id_collator` masks with cloze alone (`bert4rec-id`: of the
# mix, it reads the cloze options alone) or not at all (`sasrec-ce`).
ID_MODEL_IGNORED = (*ID_MODEL_FIXED, "code_embedding_init", "code_embedding_init_std", "masking")


def id_baseline_sections(config: dict) -> dict:
    """The `pretrain` and `finetune` sections as the ID baselines read them: the config's optional `id_baselines`
    section holds their own values of some keys (their schedule), which replace those of the two sections."""
    own = config.get("id_baselines") or {}
    if not isinstance(own, dict) or set(own) - {"pretrain", "finetune"}:
        raise ValueError(f"the config's id_baselines section may hold pretrain and finetune mappings only, got {own!r}")
    return {section: {**(config.get(section) or {}), **(own.get(section) or {})} for section in ("pretrain", "finetune")}


def row_settings(config: dict, row: Row) -> dict:
    """The config settings the runs of `row` read: tuning Q-Bert4Rec leaves the baselines' results valid.

    `most-popular` reads the data; the ID baselines the data and their training (not stages 1-2, not the keys above;
    `sasrec-ce` is not fine-tuned; `id_baselines` applied); the Q-Bert4Rec rows the whole config but `id_baselines` and
    the pretraining keys their flags set, and those flags."""
    pretrain_settings = config.get("pretrain") or {}
    if row.kind == "most-popular":
        return {"data": config.get("data")}
    if row.kind in ("bert4rec-id", "sasrec-ce"):
        sections = id_baseline_sections(config)
        read = {k: v for k, v in sections["pretrain"].items() if k not in ID_MODEL_IGNORED}
        if row.kind == "sasrec-ce":
            return {"data": config.get("data"), "pretrain": read}
        cloze = masking_alone(sections["pretrain"].get("masking", {}), "cloze")
        return {"data": config.get("data"), "pretrain": {**read, "masking": cloze}, "finetune": sections["finetune"]}
    flagged = {flag[2:] for flag in row.pretrain_flags if flag.startswith("--")}
    return {**{k: v for k, v in config.items() if k != "id_baselines"},
            "pretrain": {k: v for k, v in pretrain_settings.items() if k not in flagged},
            "pretrain_flags": list(row.pretrain_flags)}


def settings_hash(config: dict, row: Row, args: AccuracyArgs) -> str:
    """sha256 of what makes a result of `row`: the config settings it reads and the flags that change training."""
    return hashlib.sha256(json.dumps([row_settings(config, row), training_flags(args)], sort_keys=True).encode()).hexdigest()


def training_flags(args: AccuracyArgs) -> list:
    """The command-line settings that change what a run trains."""
    return [args.dataset, args.quick, args.bert4rec_finetune, args.train_overrides, args.pipeline_dir]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ValueError("--seeds is empty: give at least one seed")
    return seeds


def main(argv=None) -> dict:
    (args,) = parse_args(argv, AccuracyArgs, section="accuracy", description=__doc__)
    if args.dataset not in DATASET_CONFIGS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASET_CONFIGS)}, got {args.dataset!r}")
    config_path = args.dataset_config or str(REPO_ROOT / ("configs/smoke.yaml" if args.quick else DATASET_CONFIGS[args.dataset]))
    if not Path(config_path).is_file():
        raise FileNotFoundError(f"config file not found: {config_path} (pass --dataset_config)")
    seeds = parse_seeds(args.seeds)
    settings, pretrain_args, _ = stage_arguments(pretrain, ["--config", config_path])
    rows = plan_rows(args.rows, settings.use_item_embedding, pretrain_args.masking)
    if args.only:
        wanted = [n for n in args.only.split(",") if n]
        unknown = sorted(set(wanted) - {r.name for r in rows})
        if unknown:
            raise ValueError(f"--only names rows not in --rows {args.rows}: {', '.join(unknown)}; "
                             f"known: {', '.join(r.name for r in rows)}")
        rows = [r for r in rows if r.name in wanted]

    config = load_yaml(config_path)
    hashes = {row.name: settings_hash(config, row, args)
              for row in plan_rows("all", settings.use_item_embedding, pretrain_args.masking)}
    stem = args.dataset + ("-quick" if args.quick else "")
    results_dir = Path(args.results_dir)
    results = load_results(results_dir / f"{stem}.json", hashes)
    ws = Workspace(Path(args.output_dir) / stem, config_path, training_flags(args), args.pipeline_dir or None)
    command = "python benchmarks/accuracy.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    results.update(dataset=args.dataset, quick=args.quick, config_file=config_path, settings_sha256=hashes, command=command,
                   pipeline_dir=str(ws.pipeline_dir))

    failures = []
    for row in rows:
        record = results["rows"].setdefault(row.name, {"seeds": {}})
        record.update(group=row.group, kind=row.kind, description=row.description)
        record.pop("error", None)
        reason = None
        if row.kind == "qbert4rec" and row.semantic_ids != "main":
            ws.main_semantic_ids()  # the features decide which variants apply
            reason = ws.not_applicable(row.semantic_ids)
        if reason:
            record["skipped"] = reason
            print(f"[accuracy] {row.name}: {reason}")
            continue
        record.pop("skipped", None)
        for seed in seeds if row.group == "main" else seeds[:1]:
            if str(seed) in record["seeds"]:
                print(f"[accuracy] {row.name} seed {seed}: in the results already, skipping")
                continue
            print(f"[accuracy] {row.name} seed {seed}: running")
            try:
                run = run_row(row, seed, ws, args)
            except Exception as error:  # noqa: BLE001 - one broken row must not lose the others' results
                if args.fail_fast:
                    raise
                record["error"] = f"{type(error).__name__}: {error}"
                failures.append((row.name, seed, traceback.format_exc()))
                print(f"[accuracy] {row.name} seed {seed} FAILED: {record['error']}")
                break
            run.update(seed=seed, settings_sha256=hashes[row.name], finished=time.strftime("%Y-%m-%d %H:%M:%S"))
            record["seeds"][str(seed)] = run
            record["summary"] = summarise(record["seeds"])
            results["num_items"] = run["test"].get("num_items", results.get("num_items"))
            results["machine"] = machine_info()
            write_reports(results, results_dir)
            print(f"[accuracy] {row.name} seed {seed}: test N@10 {run['test']['ndcg@10']:.4f} R@10 "
                  f"{run['test']['recall@10']:.4f} ({run['train_seconds']:.0f} s)")
    results["machine"] = results.get("machine") or machine_info()
    write_reports(results, results_dir)
    for name, seed, trace in failures:
        print(f"[accuracy] FAILED {name} seed {seed}:\n{trace}")
    print(f"[accuracy] results: {results_dir / (stem + '.json')}, {results_dir / (stem + '.md')}")
    return results


if __name__ == "__main__":
    main()
