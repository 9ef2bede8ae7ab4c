"""The whole Q-Bert4Rec pipeline, one command: data -> features -> stage 1 -> stage 2 -> pretrain -> fine-tune.

    python training/pipeline.py --config configs/smoke.yaml --output_dir outputs/smoke      # a few minutes on a CPU
    python training/pipeline.py --config configs/beauty.yaml --output_dir outputs/beauty
    python training/pipeline.py --config configs/beauty.yaml --output_dir outputs/beauty-seed3 --seed 3

Each stage runs its own script's `main` with the config file (its section) and the folders below. Any other flag is
passed on to every stage that takes it (`--seed 3` reaches stage 2, pretraining and fine-tuning; `--num_epochs 3`
pretraining and fine-tuning); a flag no stage takes is refused. Every section of the config and every flag is
checked before the first stage runs, so a typo fails at once. A stage whose output is already there is skipped
(flags given here do not rerun it: `--force STAGE` reruns it from scratch, and every stage after it), and an
interrupted pretraining or fine-tuning resumes from its last checkpoint. At the end OUTPUT_DIR holds `final/`
(model + tokenizer, loadable with `AutoModel.from_pretrained(..., trust_remote_code=True)`, with the item encoder
that gives new items semantic IDs: `model.add_items`, and its run files and card: `training/export.py`),
`metrics.json` (test metrics, full ranking, with those of most-popular on the same users under `most_popular`) and
`timings.json` (seconds per stage):

    OUTPUT_DIR/data/            prepared dataset (sequences/, items/, summary.json)
    OUTPUT_DIR/features/        <modality>.safetensors
    OUTPUT_DIR/inject/          fused.safetensors, train_log.json, depth histogram
    OUTPUT_DIR/semantic_ids/    SemanticIdTokenizer folder, codebook_stats.json, code_usage.png
    OUTPUT_DIR/pretrain/        checkpoints, logs, final/
    OUTPUT_DIR/finetune/        checkpoints, logs, final/, metrics.json
"""

import difflib
import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import (
    extract_features,
    finetune,
    inject,
    prepare_data,
    pretrain,
    quantize,
)
from training.config import (
    argument_names,
    build_parser,
    config_file,
    declares,
    flag_name,
    load_yaml,
    parse_args,
    section_values,
)
from training.export import record_run, write_card
from training.item_encoder import attach_item_encoder

STAGE_MODULES = (prepare_data, extract_features, inject, quantize, pretrain, finetune)
STAGES = tuple(module.SECTION for module in STAGE_MODULES)  # data, features, inject, quantize, pretrain, finetune
# A section the benchmarks read: the ID baselines' own `pretrain` and `finetune` keys (benchmarks/accuracy.py).
ID_BASELINES = "id_baselines"


@dataclass
class PipelineArgs:
    """Pipeline (any other flag goes to the stages that take it)"""

    output_dir: str = field(default="outputs/beauty", metadata={"help": "folder for every stage's outputs"})
    stop_after: str = field(default="finetune", metadata={"help": f"last stage to run: one of {', '.join(STAGES)}"})
    force: str = field(default="", metadata={"help": "comma-separated stages to rerun from scratch even if their "
                                                     "output exists (every later stage reruns too)"})


SECTION = "pipeline"
ARGUMENT_TYPES = (PipelineArgs,)
SECTION_TYPES = {SECTION: ARGUMENT_TYPES, **{module.SECTION: module.ARGUMENT_TYPES for module in STAGE_MODULES}}
METRIC_COLUMNS = {"recall@5": "R@5", "recall@10": "R@10", "recall@20": "R@20", "ndcg@5": "N@5", "ndcg@10": "N@10",
                  "ndcg@20": "N@20", "mrr": "MRR"}


def split_flags(argv: list[str]) -> list[list[str]]:
    """`argv` as one list per flag, the flag then its values: `["--seed", "3", "--fp16"]` -> `[["--seed", "3"],
    ["--fp16"]]`."""
    chunks = []
    for word in argv:
        if word.startswith("--") or word == "-h" or not chunks:
            chunks.append([word])
        else:
            chunks[-1].append(word)
    return chunks


def is_pipeline_flag(flag: str) -> bool:
    """Whether the pipeline reads `flag` itself (`--config`, `--output_dir`, ...) rather than passing it on."""
    return flag in ("-h", "--help") or flag_name(flag) == "config" or declares(ARGUMENT_TYPES, flag)


def stage_plan(config_path: str | None, out: Path, overrides: list[list[str]] = ()) -> list:
    """`(name, main, argv, done_marker)` per stage, wired folder to folder; each stage also gets the `overrides`
    (flags from `split_flags`) it takes."""
    c = ["--config", config_path] if config_path else []
    data, features, injected, sids = out / "data", out / "features", out / "inject", out / "semantic_ids"
    pretrained, finetuned = out / "pretrain", out / "finetune"
    wiring = {
        "data": (["--output_dir", str(data)], data / "summary.json"),
        "features": (["--dataset_dir", str(data), "--output_dir", str(features)], features / "DONE"),
        "inject": (["--dataset_dir", str(data), "--features_dir", str(features), "--output_dir", str(injected)],
                   injected / "fused.safetensors"),
        "quantize": (["--dataset_dir", str(data), "--embeddings", str(injected / "fused.safetensors"),
                      "--output_dir", str(sids)], sids / "semantic_ids.json"),
        "pretrain": (["--dataset_dir", str(data), "--semantic_ids_dir", str(sids), "--output_dir", str(pretrained),
                      "--resume_from_checkpoint", "latest"], pretrained / "final" / "model.safetensors"),
        "finetune": (["--dataset_dir", str(data), "--pretrained_dir", str(pretrained / "final"),
                      "--output_dir", str(finetuned), "--resume_from_checkpoint", "latest"],
                     finetuned / "metrics.json"),
    }  # fmt: skip
    plan = []
    for module in STAGE_MODULES:
        flags, marker = wiring[module.SECTION]
        passed = [word for chunk in overrides if declares(module.ARGUMENT_TYPES, chunk[0]) for word in chunk]
        plan.append((module.SECTION, module.main, c + flags + passed, marker))
    return plan


def check_overrides(overrides: list[list[str]]) -> str | None:
    """Why the `overrides` cannot be passed on (a flag no stage takes, or one the pipeline sets), or None."""
    wired = {flag_name(word) for _, _, argv, _ in stage_plan(None, Path(".")) for word in argv if word.startswith("--")}
    for flag, *_ in overrides:
        if flag_name(flag) in wired:
            return f"{flag}: the pipeline sets it for each stage (from --output_dir)"
        if not any(declares(module.ARGUMENT_TYPES, flag) for module in STAGE_MODULES):
            known = sorted({n for module in STAGE_MODULES for n in argument_names(*module.ARGUMENT_TYPES)} - wired)
            guess = "".join(f" (did you mean --{m}?)" for m in difflib.get_close_matches(flag_name(flag), known, n=1))
            return f"{flag}: no stage takes it{guess}. The stages take --{' --'.join(known)}"
    return None


def check_config(config: dict, source: str) -> None:
    """Refuse a section that no stage reads; the keys of `id_baselines` are checked against the stage they replace.

    (Each stage's own section is checked when `main` parses every stage's flags before the first one runs.)"""
    known = [*SECTION_TYPES, ID_BASELINES]
    unknown = [section for section in config if section not in known]
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {', '.join(unknown)}; known: {', '.join(known)}")
    own = config.get(ID_BASELINES) or {}
    if not isinstance(own, dict) or set(own) - {"pretrain", "finetune"}:
        raise ValueError(f"{source}: section {ID_BASELINES} may hold pretrain and finetune mappings only, got {own!r}")
    for section in own:
        section_values(own, section, SECTION_TYPES[section], source=f"{source}, section {ID_BASELINES}")


def clear_output(folder: Path) -> None:
    """Remove a forced stage's earlier output, so that it reruns from scratch (not from its old checkpoints); a
    symlinked folder is unlinked and its target kept."""
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)


def metrics_table(rows: dict[str, dict]) -> str:
    """One line of test metrics per model, under a header of short names (R@10 = Recall@10, N@10 = NDCG@10)."""
    lines = [f"{'':<14}" + "".join(f"{short:>8}" for short in METRIC_COLUMNS.values())]
    lines += [f"{name:<14}" + "".join(f"{m[key]:>8.4f}" for key in METRIC_COLUMNS) for name, m in rows.items()]
    return "\n".join(lines)


def main(argv=None) -> dict | None:
    """Run the stages up to `--stop_after`; returns the contents of OUTPUT_DIR/metrics.json after fine-tuning."""
    chunks = split_flags(sys.argv[1:] if argv is None else list(argv))
    own = [word for chunk in chunks if is_pipeline_flag(chunk[0]) for word in chunk]
    overrides = [chunk for chunk in chunks if not is_pipeline_flag(chunk[0])]
    (args,) = parse_args(own, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    config_path = config_file(own)
    if args.stop_after not in STAGES:
        raise ValueError(f"--stop_after must be one of {', '.join(STAGES)}, got {args.stop_after!r}")
    forced = {s for s in args.force.split(",") if s}
    if forced - set(STAGES):
        raise ValueError(f"--force names unknown stages: {', '.join(sorted(forced - set(STAGES)))}")
    if forced:  # a rerun stage's output feeds every later stage: they rerun too
        forced = set(STAGES[min(STAGES.index(stage) for stage in forced):])
    if config_path:
        check_config(load_yaml(config_path), config_path)
    out = Path(args.output_dir)
    problem = check_overrides(overrides)
    if problem:
        build_parser(ARGUMENT_TYPES, SECTION, __doc__).error(problem)
    plan = stage_plan(config_path, out, overrides)
    parsed = {name: parse_args(stage_argv, *SECTION_TYPES[name], section=name) for name, _, stage_argv, _ in plan}

    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for name, stage_main, stage_argv, marker in plan:
        if marker.exists() and name not in forced:
            print(f"[pipeline] {name}: done already ({marker}), skipping")
        else:
            if name in forced:
                clear_output(Path(stage_argv[stage_argv.index("--output_dir") + 1]))
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
    if args.stop_after != "finetune":
        return None
    final = out / "final"
    shutil.copytree(out / "finetune" / "final", final, dirs_exist_ok=True)
    attach_item_encoder(final, out / "data", out / "features", out / "inject", out / "semantic_ids")
    command = shlex.join(["python", "training/pipeline.py", *(sys.argv[1:] if argv is None else argv)])
    record_run(out, final, final, command, load_yaml(config_path) if config_path else None)
    write_card(final, str(final))
    metrics = json.loads((out / "finetune" / "metrics.json").read_text())
    convention = "history removed" if parsed["finetune"][0].exclude_history else "history kept"
    metrics["most_popular"] = json.loads((final / "metrics.json").read_text())["test"]["most-popular"][convention]
    metrics["seconds_per_stage"] = timings
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"[pipeline] model: {out / 'final'}  metrics: {out / 'metrics.json'}")
    print(f"[pipeline] test: {metrics['num_users']:,} users, candidates: {metrics['candidates']}, "
          f"{metrics['num_items']:,} items")
    print(metrics_table({"Q-Bert4Rec": metrics, "most-popular": metrics["most_popular"]}))
    return metrics


if __name__ == "__main__":
    main()
