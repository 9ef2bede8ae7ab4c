"""Benchmark: training time and peak RSS under glibc allocator settings, the measurement behind
`training.memory.cap_mmap_threshold` and `modeling_qbert4rec.ITEM_LOSS_BLOCK`.

    python benchmarks/allocator.py                      # Q-Bert4Rec and SASRec-CE, one epoch of every phase
    python benchmarks/allocator.py --repeats 2 --train_batches 40 --models qbert4rec

Each (setting, model, repeat) trains every phase of the model (Q-Bert4Rec: pretraining, then fine-tuning) for
`--train_batches` batches in its own child process (`benchmarks/speed.py`'s `build` and `time_training`), so each
peak RSS (`VmHWM`) is the setting's own:
- `glibc default`: glibc's growing mmap threshold (up to 32 MiB);
- `threshold 4 MiB`: what the training loop does (`cap_mmap_threshold`);
- `threshold 4 MiB, loss blocks of 256`: the same with 256-row blocks (a 12 MB buffer) in the catalogue loss.

Writes `RESULTS_DIR/allocator.json` and `RESULTS_DIR/allocator.md`.
"""

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# name -> (fix the mmap threshold at 4 MiB, rows per block of the catalogue loss)
SETTINGS = {
    "glibc default": (False, 64),
    "threshold 4 MiB": (True, 64),
    "threshold 4 MiB, loss blocks of 256": (True, 256),
}


@dataclass
class AllocatorArgs:
    models: str = field(default="qbert4rec,sasrec-ce", metadata={"help": "comma-separated, from benchmarks/speed.py's MODELS"})
    train_batches: int = field(default=0, metadata={"help": "training batches timed per phase and run (0 = one epoch)"})
    repeats: int = field(default=1, metadata={"help": "runs per setting and model"})
    dataset_config: str = field(default=str(REPO_ROOT / "configs" / "beauty.yaml"), metadata={"help": "as speed.py"})
    dataset_dir: str = field(default="", metadata={"help": "prepared dataset (as speed.py)"})
    semantic_ids_dir: str = field(default="", metadata={"help": "Q-Bert4Rec tokenizer folder (as speed.py)"})
    output_dir: str = field(default="outputs/bench/allocator", metadata={"help": "scratch folder (child results)"})
    results_dir: str = field(default="outputs/bench/results", metadata={"help": "where the report goes; benchmarks/results holds the committed ones"})
    setting: str = field(default="", metadata={"help": "internal: the setting of this child"})
    model: str = field(default="", metadata={"help": "internal: the model of this child"})
    child_output: str = field(default="", metadata={"help": "internal: where the child writes its JSON"})


def measure(args: AllocatorArgs) -> dict:
    """In this process: apply `args.setting`, then train each of `args.model`'s phases and read the peak RSS."""
    import modeling_qbert4rec
    from benchmarks import speed
    from benchmarks.memory import proc_status_mib
    from training.memory import cap_mmap_threshold

    capped, modeling_qbert4rec.ITEM_LOSS_BLOCK = SETTINGS[args.setting]
    if capped and not cap_mmap_threshold():
        raise RuntimeError("could not set glibc's mmap threshold (no glibc, or MALLOC_MMAP_THRESHOLD_ is set)")
    speed_args = speed.SpeedArgs(dataset_config=args.dataset_config, dataset_dir=args.dataset_dir,
                                 semantic_ids_dir=args.semantic_ids_dir, output_dir=args.output_dir)
    model, _, phases, _ = speed.build(args.model, speed_args, speed.resolve_dataset(speed_args))
    seconds = {}
    for phase, dataset, collator, loop_args in phases:
        timing = speed.time_training(model, dataset, collator, loop_args, args.train_batches, 0, f"{args.model} {phase}")
        seconds[phase] = timing["seconds_per_epoch"]
    return {"seconds_per_epoch": seconds, "peak_rss_mib": round(proc_status_mib("VmHWM"), 1)}


def markdown_report(report: dict) -> str:
    from benchmarks.baselines import machine_line

    models = report["models"]
    lines = ["# Allocator settings: training time and peak RSS", "",
             f"{report['train_batches'] or 'One epoch of'} training batches of each phase of each model per run, "
             f"{report['repeats']} run(s) per setting, each in its own process (ranges over the runs).", "",
             "| setting | " + " | ".join(f"{m}: s/epoch, peak RSS MiB" for m in models) + " |",
             "|---|" + "---|" * len(models)]
    for setting, runs in report["results"].items():
        cells = []
        for m in models:
            rss = [r["peak_rss_mib"] for r in runs[m]]
            seconds = [f"{phase} {min(r['seconds_per_epoch'][phase] for r in runs[m]):.1f}-"
                       f"{max(r['seconds_per_epoch'][phase] for r in runs[m]):.1f} s" for phase in runs[m][0]["seconds_per_epoch"]]
            cells.append(", ".join(seconds) + f"; {min(rss):,.0f}-{max(rss):,.0f}")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{report['command']}`", machine_line(report["machine"]), ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    from benchmarks.baselines import machine_info, write_report
    from benchmarks.speed import MODELS
    from training.config import parse_args

    (args,) = parse_args(argv, AllocatorArgs, section="allocator", description=__doc__)
    models = [m for m in args.models.split(",") if m]
    if not models or set(models) - set(MODELS):
        raise ValueError(f"--models must name some of {', '.join(MODELS)}, got {args.models!r}")
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        raise ValueError("unset MALLOC_MMAP_THRESHOLD_: it would override every setting this benchmark compares")
    if args.model:  # child
        Path(args.child_output).write_text(json.dumps(measure(args)) + "\n")
        return {}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {setting: {m: [] for m in models} for setting in SETTINGS}
    for repeat in range(args.repeats):
        for setting in SETTINGS:
            for model in models:
                child_json = out / f"child-{model}.json"
                child_json.unlink(missing_ok=True)
                command = [sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:]), "--setting", setting,
                           "--model", model, "--child_output", str(child_json)]
                subprocess.run(command, check=True)
                results[setting][model].append(json.loads(child_json.read_text()))
                print(f"[allocator] {setting} | {model} | run {repeat}: {results[setting][model][-1]}")
    report = {"command": "python benchmarks/allocator.py " + " ".join(argv or sys.argv[1:]), "machine": machine_info(),
              "settings": {name: {"mmap_threshold_4mib": c, "item_loss_block": b} for name, (c, b) in SETTINGS.items()},
              **{k: v for k, v in asdict(args).items() if k in ("train_batches", "repeats")},
              "models": models, "results": results}
    write_report(args.results_dir, "allocator", report, markdown_report(report))
    print(markdown_report(report))
    return report


if __name__ == "__main__":
    main()
