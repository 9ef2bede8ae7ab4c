"""The whole Q-Bert4Rec pipeline, one command: data -> features -> stage 1 -> stage 2 -> pretrain -> fine-tune.

    python training/pipeline.py --config configs/beauty.yaml --output_dir outputs/beauty

Each stage runs its own script's `main` with the config file (its section) and the folders below; a stage whose
output is already there is skipped, and an interrupted pretraining or fine-tuning resumes from its last checkpoint.
At the end OUTPUT_DIR holds `final/` (model + tokenizer, loadable with `AutoModel.from_pretrained(...,
trust_remote_code=True)`), `metrics.json` (test metrics, full ranking) and `timings.json` (seconds per stage).

    OUTPUT_DIR/data/            prepared dataset (sequences/, items/, summary.json)
    OUTPUT_DIR/features/        <modality>.safetensors
    OUTPUT_DIR/inject/          fused.safetensors, train_log.json, depth histogram
    OUTPUT_DIR/semantic_ids/    SemanticIdTokenizer folder, codebook_stats.json, code_usage.png
    OUTPUT_DIR/pretrain/        checkpoints, logs, final/
    OUTPUT_DIR/finetune/        checkpoints, logs, final/, metrics.json
"""

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import extract_features, finetune, inject, prepare_data, pretrain, quantize
from training.config import config_file, load_yaml, parse_args

STAGES = ("data", "features", "inject", "quantize", "pretrain", "finetune")
# Config sections the benchmarks read and the pipeline does not: the ID baselines' own schedule (benchmarks/accuracy.py).
OTHER_SECTIONS = ("id_baselines",)


@dataclass
class PipelineArgs:
    output_dir: str = field(default="outputs/beauty", metadata={"help": "folder for every stage's outputs"})
    stop_after: str = field(default="finetune", metadata={"help": f"last stage to run: one of {', '.join(STAGES)}"})
    force: str = field(default="", metadata={"help": "comma-separated stages to rerun even if their output exists"})


def stage_plan(config_path: str, out: Path) -> list:
    """`(name, main, argv, done_marker)` per stage, wired folder to folder."""
    c = ["--config", config_path] if config_path else []
    data, features, injected, sids = out / "data", out / "features", out / "inject", out / "semantic_ids"
    pretrained, finetuned = out / "pretrain", out / "finetune"
    return [
        ("data", prepare_data.main, c + ["--output_dir", str(data)], data / "summary.json"),
        ("features", extract_features.main, c + ["--dataset_dir", str(data), "--output_dir", str(features)], features / "DONE"),
        ("inject", inject.main, c + ["--dataset_dir", str(data), "--features_dir", str(features), "--output_dir", str(injected)], injected / "fused.safetensors"),
        ("quantize", quantize.main, c + ["--dataset_dir", str(data), "--embeddings", str(injected / "fused.safetensors"), "--output_dir", str(sids)], sids / "semantic_ids.json"),
        ("pretrain", pretrain.main, c + ["--dataset_dir", str(data), "--semantic_ids_dir", str(sids), "--output_dir", str(pretrained), "--resume_from_checkpoint", "latest"], pretrained / "final" / "model.safetensors"),
        ("finetune", finetune.main, c + ["--dataset_dir", str(data), "--pretrained_dir", str(pretrained / "final"), "--output_dir", str(finetuned), "--resume_from_checkpoint", "latest"], finetuned / "metrics.json"),
    ]


def main(argv=None):
    (args,) = parse_args(argv, PipelineArgs, section="pipeline", description=__doc__)
    config_path = config_file(argv)
    if args.stop_after not in STAGES:
        raise ValueError(f"--stop_after must be one of {', '.join(STAGES)}, got {args.stop_after!r}")
    forced = {s for s in args.force.split(",") if s}
    if forced - set(STAGES):
        raise ValueError(f"--force names unknown stages: {', '.join(sorted(forced - set(STAGES)))}")
    if config_path:
        known = ("pipeline", *STAGES, *OTHER_SECTIONS)
        unknown = set(load_yaml(config_path)) - set(known)
        if unknown:
            raise ValueError(f"{config_path}: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for name, stage_main, stage_argv, marker in stage_plan(config_path, out):
        if marker.exists() and name not in forced:
            print(f"[pipeline] {name}: done already ({marker}), skipping")
        else:
            print(f"[pipeline] {name}: running")
            start = time.perf_counter()
            stage_main(stage_argv)
            if name == "features":
                marker.write_text("done\n")
            timings[name] = round(time.perf_counter() - start, 1)
            timings_path.write_text(json.dumps(timings, indent=2))
            print(f"[pipeline] {name}: {timings[name]:.1f} s")
        if name == args.stop_after:
            break
    if args.stop_after == "finetune":
        shutil.copytree(out / "finetune" / "final", out / "final", dirs_exist_ok=True)
        metrics = json.loads((out / "finetune" / "metrics.json").read_text())
        metrics["seconds_per_stage"] = timings
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"[pipeline] model: {out / 'final'}  metrics: {out / 'metrics.json'}")
        print(json.dumps({k: v for k, v in metrics.items() if k != "seconds_per_stage"}, indent=2))


if __name__ == "__main__":
    main()
