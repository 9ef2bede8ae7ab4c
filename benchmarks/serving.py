"""Benchmark: serving a Beauty checkpoint, batch command, PyTorch and ONNX (onnxruntime), in one run.

    python benchmarks/serving.py                         # all 22,363 Beauty users, about a minute on 2 cores
    python benchmarks/serving.py --max_users 2000        # a quick look

On the checkpoint `--model` and the test-split histories of its prepared dataset `--dataset_dir` (each user's
history is the sequence that evaluation ranks the test item after, `training/evaluate.py`), it measures:
- (a) `training/recommend.py` end to end over a JSON-lines file of every user (in this process: Python start-up and
  imports not counted; model loading counted): users per second, and the streaming loop's own rate;
- (b) batch-1 latency, p50 / p95 over `--latency_users` histories after `--warmup_calls` untimed calls, of PyTorch
  `model.recommend` and of the ONNX export through `OnnxRecommender` (each with the tokenizer, top-10), and their
  throughput over all users in batches of `--batch_size`;
- (c) agreement: the share of users whose top-10 lists (item and order) are identical between the two, and the
  largest score difference over every item of every user;
- (d) the demo: `app.py` started on 127.0.0.1, and the p50 / p95 of `--demo_requests` top-10 requests through
  `gradio_client`, as its user waits for them.
Both runtimes get `--threads` intra-op threads (default 1). Writes `RESULTS_DIR/serving.json` and `serving.md`.
"""

import itertools
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.baselines import machine_info, machine_line, write_report  # noqa: E402
from modeling_qbert4rec import QBert4RecForMaskedItemModeling  # noqa: E402
from tokenization_semantic_id import SemanticIdTokenizer  # noqa: E402
from training import recommend  # noqa: E402
from training.config import parse_args  # noqa: E402
from training.export_onnx import (  # noqa: E402
    OnnxRecommender,
    compare_with_pytorch,
    empty_history_warnings_muted,
    export_onnx,
)
from training.prepared import load_sequences  # noqa: E402


@dataclass
class ServingArgs:
    """Arguments of `benchmarks/serving.py`."""

    model: str = field(default="outputs/beauty/final",
                       metadata={"help": "checkpoint folder (the main job's: configs/beauty.yaml on all of Beauty)"})
    dataset_dir: str = field(default="outputs/beauty/data",
                             metadata={"help": "its prepared dataset (the test split's histories are served)"})
    results_dir: str = field(default=str(REPO_ROOT / "benchmarks" / "results" / "serving"),
                             metadata={"help": "where serving.json and serving.md go"})
    work_dir: str = field(default="", metadata={"help": "scratch folder for the JSON-lines files and model.onnx "
                                                        "(default: a temporary folder, removed)"})
    max_users: int = field(default=0, metadata={"help": "serve the first N users only (0: all)"})
    threads: int = field(default=1, metadata={"help": "intra-op threads of torch and of onnxruntime"})
    top_k: int = field(default=10, metadata={"help": "items recommended per user"})
    batch_size: int = field(default=256, metadata={"help": "users per batch (recommend.py and throughput)"})
    latency_users: int = field(default=1000, metadata={"help": "histories timed one at a time, per runtime"})
    warmup_calls: int = field(default=50, metadata={"help": "untimed batch-1 calls before timing, per runtime"})
    demo_requests: int = field(default=200, metadata={"help": "recommendation requests timed through the demo app "
                                                              "(0: skip the demo)"})


def test_users(dataset_dir, max_users: int = 0) -> tuple[list[str], list[list[str]]]:
    """User ids and test-split histories (item ids, oldest first: what evaluation ranks the test item after)."""
    test = load_sequences(dataset_dir)["test"]
    if max_users:
        test = test.select(range(min(max_users, len(test))))
    return list(test["user_id"]), list(test["item_ids"])


def percentiles_ms(seconds: list[float]) -> dict:
    values = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p95_ms": round(float(np.percentile(values, 95)), 3),
            "mean_ms": round(float(values.mean()), 3), "calls": len(values)}


def time_batch_one(recommend_one, histories, warmup_calls: int) -> dict:
    """Latency of `recommend_one([history])` for each history after the first `warmup_calls`, which are untimed."""
    for history in histories[:warmup_calls]:
        recommend_one([history])
    seconds = []
    for history in histories[warmup_calls:]:
        started = time.perf_counter()
        recommend_one([history])
        seconds.append(time.perf_counter() - started)
    return percentiles_ms(seconds)


def time_batches(recommend_batch, histories, batch_size: int) -> tuple[dict, np.ndarray]:
    """Users per second of `recommend_batch(histories) -> (B, k) item indices` over all `histories`; the indices."""
    recommend_batch(histories[:batch_size])  # warm-up
    started, rows = time.perf_counter(), []
    for start in range(0, len(histories), batch_size):
        rows.append(recommend_batch(histories[start : start + batch_size]))
    seconds = time.perf_counter() - started
    return {"users": len(histories), "seconds": round(seconds, 3),
            "users_per_second": round(len(histories) / seconds, 1)}, np.concatenate(rows)


def swapped_score_gap(model, tokenizer, histories, pytorch_rows, onnx_rows) -> float | None:
    """For users whose top-k differ: the largest PyTorch score difference between the items the two runtimes put at
    the same rank (near zero when they only break near-ties differently); None when no user differs."""
    if not histories:
        return None
    with torch.no_grad():
        scores = model.score_items(**tokenizer(histories, return_tensors="pt")).numpy()  # (D, num_items)
    gaps = np.take_along_axis(scores, pytorch_rows, 1) - np.take_along_axis(scores, onnx_rows, 1)
    return float(np.abs(gaps).max())


DEMO_WARMUP = 5  # untimed demo requests


def demo_latency(model_dir: str, histories: list[list[str]], requests: int, work: Path) -> dict:
    """Start app.py on 127.0.0.1 and time what its user waits for: a `/recommend` request through `gradio_client`
    (HTTP, queue, model, table) after `/clear` and `/add` of each history's newest two items; plus the start-up."""
    import socket
    import subprocess
    import urllib.request

    from gradio_client import Client

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "GRADIO_TEMP_DIR": str(work / "gradio"), "NO_PROXY": "127.0.0.1,localhost"}
    url, log = f"http://127.0.0.1:{port}/", open(work / "app.log", "w")
    started = time.perf_counter()
    app = subprocess.Popen([sys.executable, str(REPO_ROOT / "app.py"), "--checkpoint", model_dir, "--host",
                            "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            if app.poll() is not None or time.perf_counter() - started > 300:
                raise RuntimeError(f"the demo did not start: see {work / 'app.log'}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        startup = time.perf_counter() - started
        user, seconds = Client(url, verbose=False), []
        for history in itertools.islice(itertools.cycle(histories), requests + DEMO_WARMUP):
            user.predict(api_name="/clear")
            for item_id in history[-2:]:
                user.predict(item_id, api_name="/add")
            begun = time.perf_counter()
            user.predict(api_name="/recommend")
            seconds.append(time.perf_counter() - begun)
    finally:
        app.terminate()
        app.wait(timeout=30)
        log.close()
    return {"startup_seconds": round(startup, 2), "recommend_request": percentiles_ms(seconds[DEMO_WARMUP:])}


def measure(args: ServingArgs, work: Path) -> dict:
    user_ids, histories = test_users(args.dataset_dir, args.max_users)
    users_file = work / "users.jsonl"
    with open(users_file, "w", encoding="utf-8") as f:
        for user_id, history in zip(user_ids, histories):
            f.write(json.dumps({"user_id": user_id, "history": history}) + "\n")
    report = {"users": len(histories)}

    # (a) The batch command, end to end.
    started = time.perf_counter()
    summary = recommend.main(["--model", args.model, "--input", str(users_file), "--output", str(work / "recs.jsonl"),
                              "--top_k", str(args.top_k), "--batch_size", str(args.batch_size), "--device", "cpu"])
    total = time.perf_counter() - started
    report["recommend_py"] = {"seconds_with_model_loading": round(total, 2),
                              "users_per_second": round(summary["users_written"] / total, 1),
                              "streaming_users_per_second": summary["users_per_second"],
                              "users_written": summary["users_written"], "lines_malformed": summary["lines_malformed"],
                              "unknown_items_skipped": summary["unknown_items_skipped"],
                              "empty_histories": summary["empty_histories"]}
    print(f"[serving] (a) recommend.py: {json.dumps(report['recommend_py'])}", flush=True)

    # The two runtimes.
    tokenizer = SemanticIdTokenizer.from_pretrained(args.model)
    model = QBert4RecForMaskedItemModeling.from_pretrained(args.model, dtype=torch.float32).eval()
    started = time.perf_counter()
    onnx_path = export_onnx(model, tokenizer, work / "model.onnx")
    report["onnx_export"] = {"seconds": round(time.perf_counter() - started, 2),
                             "megabytes": round(onnx_path.stat().st_size / 2**20, 2)}
    onnx = OnnxRecommender(onnx_path, tokenizer, threads=args.threads)

    @torch.inference_mode()
    def pytorch_top_k(batch_histories):
        return model.recommend(**tokenizer(batch_histories, return_tensors="pt"), top_k=args.top_k).item_indices.numpy()

    def onnx_top_k(batch_histories):
        return onnx.recommend(batch_histories, top_k=args.top_k).item_indices

    # (b) Batch-1 latency on the same histories (a fixed random sample of users), then all-users throughput.
    sample = np.random.default_rng(0).permutation(len(histories))[: args.latency_users + args.warmup_calls]
    timed = [histories[i] for i in sample]
    report["latency_batch_1"] = {"pytorch": time_batch_one(pytorch_top_k, timed, args.warmup_calls),
                                 "onnxruntime": time_batch_one(onnx_top_k, timed, args.warmup_calls)}
    print(f"[serving] (b) batch-1 latency: {json.dumps(report['latency_batch_1'])}", flush=True)
    pytorch_throughput, pytorch_rows = time_batches(pytorch_top_k, histories, args.batch_size)
    onnx_throughput, onnx_rows = time_batches(onnx_top_k, histories, args.batch_size)
    report["throughput"] = {"batch_size": args.batch_size, "pytorch": pytorch_throughput,
                            "onnxruntime": onnx_throughput}
    print(f"[serving] (b) throughput: {json.dumps(report['throughput'])}", flush=True)

    # (c) Agreement: the served top-k lists, then every score.
    same = (pytorch_rows == onnx_rows).all(axis=1)
    scores = compare_with_pytorch(onnx, model, histories, top_k=args.top_k, batch_size=args.batch_size)
    report["agreement"] = {"top_k": args.top_k, "same_top_k_served": round(float(same.mean()), 6),
                           "users_differing": int((~same).sum()), "max_abs_score_diff": scores["max_abs_diff"],
                           "same_top_k_from_scores": round(scores["same_top_k"], 6),
                           "differing_max_pytorch_score_gap": swapped_score_gap(
                               model, tokenizer, [histories[i] for i in np.flatnonzero(~same)],
                               pytorch_rows[~same], onnx_rows[~same])}
    print(f"[serving] (c) agreement: {json.dumps(report['agreement'])}", flush=True)

    # (d) The demo, as its user meets it.
    if args.demo_requests:
        report["demo"] = demo_latency(args.model, [histories[i] for i in sample], args.demo_requests, work)
        print(f"[serving] (d) demo: {json.dumps(report['demo'])}", flush=True)
    return report


def tie_note(agreement: dict) -> str:
    gap = agreement.get("differing_max_pytorch_score_gap")
    return "" if gap is None else (f": the items they swap differ by at most {gap:.1e} in PyTorch's own scores, "
                                   "near-ties broken the other way")


def markdown_report(report: dict) -> str:
    r, latency, throughput = report["results"], report["results"]["latency_batch_1"], report["results"]["throughput"]
    a, m = r["recommend_py"], report["machine"]
    agreement = r["agreement"]
    lines = [
        "# Serving: batch command, PyTorch and ONNX",
        "",
        f"Checkpoint `{report['settings']['model']}`, {r['users']:,} users (test-split histories of "
        f"`{report['settings']['dataset_dir']}`), top-{agreement['top_k']}, {report['settings']['threads']} intra-op "
        f"thread(s) for torch and onnxruntime. Command: `{report['command']}`.",
        "",
        "| measure | PyTorch | ONNX (onnxruntime) |",
        "|---|---:|---:|",
        f"| batch-1 latency p50 (ms, with the tokenizer) | {latency['pytorch']['p50_ms']} | "
        f"{latency['onnxruntime']['p50_ms']} |",
        f"| batch-1 latency p95 (ms) | {latency['pytorch']['p95_ms']} | {latency['onnxruntime']['p95_ms']} |",
        f"| all users, batches of {throughput['batch_size']} (users/s) | "
        f"{throughput['pytorch']['users_per_second']:,} | {throughput['onnxruntime']['users_per_second']:,} |",
        "",
        f"`training/recommend.py` over a JSON-lines file of the {a['users_written']:,} users: "
        f"**{a['users_per_second']:,} users/s** end to end in-process ({a['seconds_with_model_loading']} s with model "
        f"loading; the streaming loop alone {a['streaming_users_per_second']:,} users/s).",
        "",
        f"Agreement: {agreement['same_top_k_served']:.2%} of users get the identical top-{agreement['top_k']} "
        f"(items and order) from both ({agreement['users_differing']} differ{tie_note(agreement)}); largest score "
        "difference over every "
        f"item of every user {agreement['max_abs_score_diff']:.2e}. The ONNX file: {r['onnx_export']['megabytes']} MB, "
        f"exported in {r['onnx_export']['seconds']} s.",
        "",
        *([f"Demo (`app.py`, driven through `gradio_client` on 127.0.0.1): a top-10 request takes "
           f"{r['demo']['recommend_request']['p50_ms']} ms p50 / {r['demo']['recommend_request']['p95_ms']} ms p95 "
           f"over {r['demo']['recommend_request']['calls']} requests (HTTP, queue, model and table); the app starts "
           f"in {r['demo']['startup_seconds']} s.", ""] if "demo" in r else []),
        f"Versions: torch {m['torch']}, onnxruntime {report['versions']['onnxruntime']}, onnx "
        f"{report['versions']['onnx']}, transformers {m['transformers']}.",
        machine_line(m) + f" Load average at the end: {report['load_average_end']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    import onnx
    import onnxruntime

    (args,) = parse_args(argv, ServingArgs, section="serving", description=__doc__)
    for name in ("model", "dataset_dir"):
        if not Path(getattr(args, name)).is_dir():
            raise SystemExit(f"error: --{name} {getattr(args, name)}: no such folder")
    torch.set_num_threads(args.threads)
    machine = machine_info()
    raw_argv = sys.argv[1:] if argv is None else list(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work_dir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        with empty_history_warnings_muted(SemanticIdTokenizer):
            results = measure(args, work)
    report = {
        "command": "python benchmarks/serving.py " + " ".join(shlex.quote(a) for a in raw_argv),
        "machine": machine,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
        "threads": {"torch": torch.get_num_threads(), "onnxruntime_intra_op": args.threads},
        "settings": asdict(args),
        "results": results,
    }
    json_path, md_path = write_report(args.results_dir, "serving", report, markdown_report(report))
    print(markdown_report(report))
    print(f"[serving] results: {json_path}, {md_path}")
    return report


if __name__ == "__main__":
    main()
