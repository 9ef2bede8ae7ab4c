"""Benchmark: fine-tuning on one process against two (torchrun, gloo on CPUs) with the same effective batch.

    python benchmarks/process_count.py --run_dir outputs/beauty --runs_dir outputs/process-count

From the pipeline folder `--run_dir` (its data/ and pretrain/final/), fine-tunes with `configs/beauty.yaml` twice:
one process with batch size B, and two processes with B / 2 each (the same effective batch, the same epochs), then
writes both runs' test metrics, seconds and process counts to `RESULTS_DIR/process_count.json` and `.md`. Two
processes on two cores use one torch thread each; the one-process run gets one thread too, so the comparison is of
the code path, not of a speed-up.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.baselines import machine_info, machine_line, write_report  # noqa: E402
from training.config import parse_args  # noqa: E402


@dataclass
class MultiprocessArgs:
    """Arguments of `benchmarks/process_count.py`."""

    run_dir: str = field(default="outputs/beauty", metadata={"help": "pipeline folder with data/ and pretrain/final/"})
    runs_dir: str = field(default="outputs/process-count", metadata={"help": "where the two fine-tuning runs go"})
    finetune_config: str = field(default="configs/beauty.yaml", metadata={"help": "config of the fine-tuning runs"})
    batch_size: int = field(default=256, metadata={"help": "effective batch: one process B, two processes B / 2"})
    results_dir: str = field(default="benchmarks/results/process-count", metadata={"help": "where the figures go"})


def finetune(args: MultiprocessArgs, processes: int) -> dict:
    """One fine-tuning run with `processes` processes; its test metrics, seconds and the launch command."""
    output_dir = Path(args.runs_dir) / f"processes-{processes}"
    flags = ["--config", args.finetune_config, "--dataset_dir", str(Path(args.run_dir) / "data"), "--pretrained_dir",
             str(Path(args.run_dir) / "pretrain" / "final"), "--output_dir", str(output_dir),
             "--batch_size", str(args.batch_size // processes), "--resume_from_checkpoint", "latest",
             "--report_to", "none"]
    if processes > 1:
        launch = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(processes)]
    else:
        launch = [sys.executable]
    started = time.perf_counter()
    subprocess.run([*launch, "training/finetune.py", *flags], cwd=REPO_ROOT, check=True,
                   env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    command = " ".join([Path(launch[0]).name, *launch[1:], "training/finetune.py", *flags])
    return {"command": command, "seconds": round(time.perf_counter() - started, 1),
            "test": json.loads((output_dir / "metrics.json").read_text())}


def markdown_report(report: dict) -> str:
    lines = ["# Fine-tuning on one process and on two (same effective batch)", "",
             "| processes | batch per process | test R@10 | test N@10 | MRR | users evaluated | seconds |",
             "|---|---|---|---|---|---|---|"]
    for processes, run in report["runs"].items():
        test = run["test"]
        lines.append(f"| {test['num_processes']} | {report['settings']['batch_size'] // int(processes)} | "
                     f"{test['recall@10']:.4f} | {test['ndcg@10']:.4f} | {test['mrr']:.4f} | {test['num_users']:,} | "
                     f"{run['seconds']} |")
    lines += ["", *(f"- `{run['command']}`" for run in report["runs"].values()), "", machine_line(report["machine"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    (args,) = parse_args(argv, MultiprocessArgs, section="process_count", description=__doc__)
    report = {"settings": asdict(args), "runs": {str(n): finetune(args, n) for n in (1, 2)}, "machine": machine_info()}
    write_report(args.results_dir, "process_count", report, markdown_report(report))
    print(markdown_report(report))
    return report


if __name__ == "__main__":
    main()
