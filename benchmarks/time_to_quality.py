"""Benchmark: time to quality. Train each model under a fixed budget of training seconds on this machine, then
evaluate it on the test split (full ranking over all items, history items kept).

    python benchmarks/time_to_quality.py --budget_seconds 240 --pipeline_dir outputs/beauty

Issue 6's target on Beauty: test NDCG@10 .0376 (RecBole's SASRec-CE after 38 minutes here) in under 4 minutes.
- `sasrec-ce`: the whole budget goes to its training;
- `qbert4rec`: `--pretrain_share` of the budget to multi-mask pretraining, the rest to fine-tuning.
Each stage stops after the first epoch that ends past its share (`--max_train_seconds`; epochs are not cut), so the
seconds actually used are reported beside the budget. Validation is not counted, nor are stages 1-2 (features,
injection, quantisation), which run once per catalogue (their times are in the pipeline's `timings.json`).
`--*_epochs` size the learning-rate schedules (linear decay over that many epochs) to the budget; the defaults are
`configs/beauty.yaml`'s Q-Bert4Rec schedules (10 + 5 epochs).
Writes `RESULTS_DIR/time_to_quality.json` and `.md`.
"""

import json
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.baselines import CANDIDATES, machine_info, machine_line, train_id_model, write_report  # noqa: E402
from training import finetune, pipeline, pretrain  # noqa: E402
from training.config import parse_args  # noqa: E402

MODELS = ("sasrec-ce", "qbert4rec")


@dataclass
class TimeToQualityArgs:
    dataset_config: str = field(default="configs/beauty.yaml", metadata={"help": "YAML of the models (stage-3 sections)"})
    pipeline_dir: str = field(default="outputs/beauty", metadata={"help": "pipeline folder with data and semantic_ids (made if absent)"})
    models: str = field(default="sasrec-ce,qbert4rec", metadata={"help": f"comma-separated, of {', '.join(MODELS)}"})
    budget_seconds: float = field(default=240.0, metadata={"help": "training seconds per model"})
    pretrain_share: float = field(default=0.33, metadata={"help": "share of qbert4rec's budget spent pretraining"})
    sasrec_epochs: int = field(default=12, metadata={"help": "epochs sasrec-ce's learning-rate schedule spans"})
    pretrain_epochs: int = field(default=10, metadata={"help": "epochs qbert4rec's pretraining schedule spans"})
    finetune_epochs: int = field(default=5, metadata={"help": "epochs qbert4rec's fine-tuning schedule spans"})
    target_ndcg10: float = field(default=0.0376, metadata={"help": "test NDCG@10 to reach"})
    seed: int = field(default=0, metadata={"help": "seed of every run"})
    output_dir: str = field(default="outputs/bench/time_to_quality", metadata={"help": "where the runs go"})
    results_dir: str = field(default="outputs/bench/results", metadata={"help": "where JSON and MD go; benchmarks/results holds the committed ones"})


def trained_seconds(stage_dir: Path) -> tuple[float, int]:
    """Training seconds (validation excluded) and epochs a stage ran, from its `training_history.json`."""
    record = json.loads((Path(stage_dir) / "training_history.json").read_text())
    return record["train_seconds_at_evaluation"][-1], len(record["history"])


def run_model(name: str, args: TimeToQualityArgs, data: Path, semantic_ids: Path, out: Path) -> dict:
    """Train `name` within the budget and return its test metrics and the seconds and epochs it used."""
    config = ["--config", args.dataset_config]
    common = ["--seed", str(args.seed), "--patience", "1000", "--report_to", "none"]
    if name == "sasrec-ce":
        overrides = [*common, "--max_train_seconds", str(args.budget_seconds), "--num_epochs", str(args.sasrec_epochs)]
        test = train_id_model(name, str(data), str(out), args.seed, config_path=args.dataset_config, overrides=overrides)["test"]
        stages = {"pretrain": trained_seconds(out / "pretrain")}
    else:
        pretrain_budget = args.budget_seconds * args.pretrain_share
        pretrain.main(config + ["--dataset_dir", str(data), "--semantic_ids_dir", str(semantic_ids), "--output_dir",
                                str(out / "pretrain"), *common, "--max_train_seconds", str(pretrain_budget),
                                "--num_epochs", str(args.pretrain_epochs)])
        pretrain_seconds, _ = trained_seconds(out / "pretrain")
        finetune_budget = max(args.budget_seconds - pretrain_seconds, 1e-9)  # spent already: one epoch (0 = no limit)
        test = finetune.main(config + ["--dataset_dir", str(data), "--pretrained_dir", str(out / "pretrain" / "final"),
                                       "--output_dir", str(out / "finetune"), *common, "--max_train_seconds",
                                       str(finetune_budget),
                                       "--num_epochs", str(args.finetune_epochs)])
        stages = {stage: trained_seconds(out / stage) for stage in ("pretrain", "finetune")}
    seconds = sum(s for s, _ in stages.values())
    return {
        "test": test,
        "train_seconds": round(seconds, 3),
        "stages": {stage: {"train_seconds": s, "epochs": e} for stage, (s, e) in stages.items()},
        "reached_target": test["ndcg@10"] >= args.target_ndcg10,
    }


def markdown_report(report: dict) -> str:
    args = report["settings"]
    lines = [
        "# Time to quality",
        "",
        f"Budget: {args['budget_seconds']:.0f} s of training per model (epochs are not cut: the last one may end past "
        f"it); target: test NDCG@10 {args['target_ndcg10']}. Test split, full ranking, candidates: {CANDIDATES}.",
        "",
        "| model | epochs (per stage) | training s | R@10 | N@10 | MRR | target reached |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["models"].items():
        epochs = ", ".join(f"{stage} {s['epochs']}" for stage, s in r["stages"].items())
        lines.append(f"| {name} | {epochs} | {r['train_seconds']:.0f} | {r['test']['recall@10']:.4f} | "
                     f"{r['test']['ndcg@10']:.4f} | {r['test']['mrr']:.4f} | {'yes' if r['reached_target'] else 'no'} |")
    lines += [
        "",
        f"Command: `{report['command']}`",
        machine_line(report["machine"]),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    (args,) = parse_args(argv, TimeToQualityArgs, section="time_to_quality", description=__doc__)
    models = [m for m in args.models.split(",") if m]
    if not models or set(models) - set(MODELS):
        raise ValueError(f"--models must name some of {', '.join(MODELS)}, got {args.models!r}")
    if args.budget_seconds <= 0 or not 0 < args.pretrain_share < 1:
        raise ValueError(f"--budget_seconds must be > 0 and --pretrain_share in (0, 1), got {args.budget_seconds}, {args.pretrain_share}")
    pipeline_dir = Path(args.pipeline_dir)
    pipeline.main(["--config", args.dataset_config, "--output_dir", str(pipeline_dir), "--stop_after", "quantize"])
    results = {}
    for name in models:
        out = Path(args.output_dir) / f"{name}-budget{args.budget_seconds:g}-seed{args.seed}"
        if out.exists():
            raise FileExistsError(f"{out} exists: remove it (a time budget cannot be resumed fairly)")
        results[name] = run_model(name, args, pipeline_dir / "data", pipeline_dir / "semantic_ids", out)
        print(f"[time_to_quality] {name}: {results[name]['train_seconds']:.0f} s, test N@10 {results[name]['test']['ndcg@10']:.4f}")
    report = {
        "command": "python benchmarks/time_to_quality.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "machine": machine_info(),
        "settings": asdict(args),
        "models": results,
    }
    _, md_path = write_report(args.results_dir, "time_to_quality", report, markdown_report(report))
    print(f"[time_to_quality] results: {md_path}")
    return report


if __name__ == "__main__":
    main()
