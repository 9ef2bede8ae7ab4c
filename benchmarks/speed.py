"""Benchmark: training and inference speed, and memory, of Q-Bert4Rec and the ID baselines on Beauty.

    nohup python benchmarks/speed.py > outputs/bench/speed.log 2>&1 &
    python benchmarks/speed.py --train_batches 20 --models sasrec-ce      # a quick look

Per model (`qbert4rec`, `sasrec-ce`, `bert4rec-id`, sizes from the config's `pretrain` section), each measured in
its own child process so that peak memory is the model's own:
- training: sequences per second and seconds per epoch of each training phase (Q-Bert4Rec and BERT4Rec-ID:
  pretraining over the training sequences, then next-item fine-tuning over every prefix; SASRec-CE: next item at every
  position), with the config's batch sizes and learning rates; `--train_batches N` times N batches and extrapolates;
- evaluation: seconds to rank all items for every test user (full ranking, `training.evaluate.evaluate_model`),
  the median of `--eval_repeats` runs;
- latency: `model.recommend(top_k=10)` on one history (batch 1), p50 / p95 over `--latency_calls` calls after
  `--warmup_calls`, model alone and with the tokenizer, with `--latency_threads` torch threads (default 1);
  batched throughput (histories per second) with the training threads;
- peak RSS of the child (`VmHWM` of /proc/self/status, restarted before each phase: loading, each training phase,
  inference; `resource.getrusage` is reported too, see `measure_model`)
  and parameter counts.
The models are trained only for the timed batches (one epoch per phase by default): latency and throughput do not
depend on the weights. Q-Bert4Rec uses the pipeline's semantic IDs when `--semantic_ids_dir` (or
`outputs/beauty/semantic_ids`) exists, else random unique codes of the configured shape (timings are the same).
RecBole's SASRec (CE) and BERT4Rec run in the same run, on the same split, with `--recbole_python`: the interpreter of
a virtual environment with RecBole (`benchmarks/recbole_baselines.py` says how to make one; it cannot share ours).
Without it the report says so and quotes the RecBole figures measured earlier on these machines (docs/method.md §4).

Writes `RESULTS_DIR/speed.json` and `RESULTS_DIR/speed.md`.
"""

import dataclasses
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.memory import proc_status_mib, reset_peak_rss  # noqa: E402

MODELS = ("qbert4rec", "sasrec-ce", "bert4rec-id")
RECBOLE_MODELS = ("recbole-sasrec", "recbole-bert4rec")  # benchmarks/recbole_baselines.py, with --recbole_python
# ours -> the RecBole model it is compared with (its training phase, then RecBole's one phase)
RECBOLE_COUNTERPART = {"sasrec-ce": ("train", "recbole-sasrec"), "bert4rec-id": ("pretrain", "recbole-bert4rec")}
# RecBole 1.2.1 on Beauty, measured on these 2-core machines (docs/method.md §4); not measured by this script.
RECBOLE_REFERENCE = {
    "source": "docs/method.md §4 (RecBole 1.2.1, Beauty, same protocol, measured earlier on this machine type)",
    "sasrec_ce_seconds_per_epoch": 136.0,
    "eval_all_users_seconds": [5.0, 7.0],
    "sasrec_peak_rss_mib": 3.96 * 1024,
}
TARGETS = {"eval_all_users_seconds": 1.0, "latency_p50_ms": 3.0, "peak_rss_mib": 1024.0}


@dataclass
class SpeedArgs:
    dataset_config: str = field(default=str(REPO_ROOT / "configs" / "beauty.yaml"), metadata={"help": "YAML with data, quantize, pretrain, finetune sections"})
    dataset_dir: str = field(default="", metadata={"help": "prepared dataset (default outputs/beauty/data, else prepared into OUTPUT_DIR/data)"})
    semantic_ids_dir: str = field(default="", metadata={"help": "Q-Bert4Rec tokenizer folder (default outputs/beauty/semantic_ids, else random codes)"})
    models: str = field(default=",".join(MODELS), metadata={
        "help": f"comma-separated, from {', '.join(MODELS + RECBOLE_MODELS)} (RecBole's are added with --recbole_python)"})
    recbole_python: str = field(default="", metadata={
        "help": "Python of a virtual environment with RecBole (benchmarks/recbole-requirements.txt): also run RecBole's "
                "SASRec and BERT4Rec in this run"})
    output_dir: str = field(default="outputs/bench/speed", metadata={"help": "scratch folder (prepared data, child results)"})
    results_dir: str = field(default="outputs/bench/results", metadata={"help": "where speed.json and speed.md go; benchmarks/results holds the committed ones"})
    train_batches: int = field(default=0, metadata={"help": "batches timed per training phase (0 = one full epoch)"})
    latency_calls: int = field(default=200, metadata={"help": "timed batch-1 recommend calls"})
    warmup_calls: int = field(default=20, metadata={"help": "untimed calls before timing"})
    throughput_batch_size: int = field(default=256, metadata={"help": "histories per batched recommend call"})
    eval_repeats: int = field(default=3, metadata={"help": "timed evaluations of all users (the median is reported)"})
    eval_batch_size: int = field(default=512, metadata={"help": "histories per batch of the full evaluation (as LoopArgs)"})
    threads: int = field(default=0, metadata={"help": "torch intra-op threads for training and evaluation (0: torch's default)"})
    latency_threads: int = field(
        default=1, metadata={"help": "torch threads while timing recommend (1: usual for serving; more threads only add "
                                     "synchronisation to batch-1 calls, badly so on a busy CPU; 0: as --threads)"}
    )
    max_users: int = field(default=0, metadata={"help": "use only the first N test users for evaluation (0: all)"})
    malloc_mmap_threshold: int = field(
        default=0, metadata={"help": "glibc's MALLOC_MMAP_THRESHOLD_ for the children, in bytes: larger allocations are "
                                     "mapped alone and return to the system when freed (lower is leaner but slower; "
                                     "0: the training loop's own 4 MiB, training.memory.cap_mmap_threshold)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of init and data order"})
    model: str = field(default="", metadata={"help": "internal: measure this one model in this process"})
    child_output: str = field(default="", metadata={"help": "internal: where the child writes its JSON"})


# ----------------------------------------------------------------------------------------------------------------------
# Inputs: dataset, tokenizers, models
# ----------------------------------------------------------------------------------------------------------------------


def random_unique_codes(num_items: int, num_codebooks: int, codebook_size: int, seed: int = 0):
    """`(num_items, num_codebooks)` random codes whose last level disambiguates (every row unique), like stage 2's."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(codebook_size, (num_items, num_codebooks), generator=generator)
    seen = {}
    for i, row in enumerate(codes[:, :-1].tolist()):
        key = tuple(row)
        codes[i, -1] = seen.get(key, 0)
        seen[key] = seen.get(key, 0) + 1
    if codes[:, -1].max() >= codebook_size:
        raise ValueError(f"more than {codebook_size} items share a random code prefix: raise codebook_size")
    return codes


def qbert4rec_tokenizer(args: SpeedArgs, dataset_dir: str, max_len: int):
    """The pipeline's semantic IDs when present, else random unique codes with the config's shape; and a note."""
    from tokenization_semantic_id import SemanticIdTokenizer
    from training.config import load_yaml
    from training.prepared import load_item_ids

    sids = Path(args.semantic_ids_dir or "outputs/beauty/semantic_ids")
    item_ids = load_item_ids(dataset_dir)
    if (sids / "semantic_ids.json").is_file():
        tokenizer = SemanticIdTokenizer.from_pretrained(str(sids), max_len=max_len)
        if tokenizer.item_ids != item_ids:
            raise ValueError(f"{sids}: its items are not those of {dataset_dir} (another dataset or slice)")
        return tokenizer, f"pipeline semantic IDs from {sids}"
    section = load_yaml(args.dataset_config).get("quantize", {}) or {}
    levels, size = int(section.get("num_codebooks", 3)) + 1, int(section.get("codebook_size", 256))
    codes = random_unique_codes(len(item_ids), levels, size, seed=args.seed)
    tokenizer = SemanticIdTokenizer.from_codes(item_ids, codes, codebook_size=size, max_len=max_len)
    return tokenizer, f"random unique codes ({levels} levels x {size}; no semantic IDs at {sids}): same cost as learned ones"


def build(name: str, args: SpeedArgs, dataset_dir: str):
    """Model, tokenizer, training phases `[(phase, dataset, collator, LoopArgs)]` and a note, for one model name."""
    from benchmarks.baselines import build_id_model, id_collator, id_tokenizer, stage_arguments
    from training import finetune, pretrain
    from training.masking import MultiMaskCollator, NextItemCollator
    from training.prepared import load_item_ids, load_sequences
    from training.sequences import encode_split, next_item_examples

    config = ["--config", args.dataset_config]
    settings, pretrain_args, pretrain_loop = stage_arguments(pretrain, config)
    _, finetune_loop = stage_arguments(finetune, config)
    max_len = settings.max_position_embeddings
    if name == "qbert4rec":
        tokenizer, note = qbert4rec_tokenizer(args, dataset_dir, max_len - 1)
        model = pretrain.build_model(settings, tokenizer)
    else:
        tokenizer = id_tokenizer(load_item_ids(dataset_dir), max_len=max_len - 1)
        model, note = build_id_model(settings, tokenizer, causal=name == "sasrec-ce"), "item IDs (one code level)"
    sequences = load_sequences(dataset_dir)
    train = encode_split(sequences["train"], tokenizer).select_columns(["item_indices"])
    batching = {"num_items": tokenizer.num_items, "max_len": max_len}
    if name == "sasrec-ce":
        train = train.filter(lambda row: len(row["item_indices"]) >= 2)
        return model, tokenizer, [("train", train, id_collator(name, tokenizer, settings, pretrain_args, args.seed), pretrain_loop)], note
    if name == "qbert4rec":
        masking = MultiMaskCollator(**batching, masking=pretrain_args.masking, seed=args.seed)
    else:
        masking = id_collator(name, tokenizer, settings, pretrain_args, args.seed)
    finetune_set = next_item_examples(encode_split(sequences["train"], tokenizer).select_columns(["item_indices"]))
    phases = [("pretrain", train, masking, pretrain_loop), ("finetune", finetune_set, NextItemCollator(**batching), finetune_loop)]
    return model, tokenizer, phases, note


# ----------------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------------


def time_training(model, dataset, collator, loop_args, max_batches: int, seed: int, desc: str) -> dict:
    """Time `max_batches` optimisation steps (0: one epoch) with the loop's settings (AdamW, clipping, batches grouped
    by length, no evaluation)."""
    import torch
    from tqdm.auto import tqdm

    from training.loop import make_train_loader
    from training.memory import RELEASE_MEMORY_EVERY, release_freed_memory

    torch.manual_seed(seed)  # the data order of a plain shuffle (--group_by_length false)
    loader = make_train_loader(dataset, collator, dataclasses.replace(loop_args, seed=seed, num_workers=0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=loop_args.learning_rate, weight_decay=loop_args.weight_decay)
    limit = min(max_batches, len(loader)) if max_batches else len(loader)
    model.train()
    sequences, loss, start = 0, float("nan"), time.perf_counter()
    for step, batch in enumerate(tqdm(loader, total=limit, desc=desc)):
        if step == limit:
            break
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), loop_args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        sequences += batch["attention_mask"].shape[0]
        if (step + 1) % RELEASE_MEMORY_EVERY == 0:
            release_freed_memory()  # as training/loop.py does
    seconds = time.perf_counter() - start
    model.eval()
    return {
        "examples_per_epoch": len(dataset),
        "batch_size": loop_args.batch_size,
        "batches_timed": limit,
        "batches_per_epoch": len(loader),
        "seconds_timed": round(seconds, 3),
        "sequences_per_second": round(sequences / seconds, 1),
        "seconds_per_epoch": round(seconds * len(loader) / limit, 2),
        "extrapolated": limit < len(loader),
        "last_loss": round(float(loss.detach()) if torch.is_tensor(loss) else loss, 4),
    }


def time_evaluation(model, tokenizer, test, batch_size: int, repeats: int = 3) -> dict:
    """Seconds to rank all items for every user of `test` (full ranking, batched, collation included), as
    `training.evaluate.eval_loader` and `evaluate.py` batch them: users sorted by history length, so that batches
    (padded to their longest history) pad little. The timed part starts from the Arrow dataset: reading it, sorting,
    collation, scoring and metrics. `seconds` is the median of `repeats` timed runs (all of them in `runs`)."""
    from torch.utils.data import DataLoader

    from training.evaluate import eval_users, evaluate_model
    from training.memory import evaluation_allocator
    from training.masking import HistoryCollator

    collator = HistoryCollator(num_items=tokenizer.num_items, max_len=model.config.max_position_embeddings)
    warm_up = eval_users(test.select(range(min(batch_size, len(test)))))
    with evaluation_allocator():  # as the training loop's validation (and an uncapped evaluate.py) runs
        evaluate_model(model, DataLoader(warm_up, batch_size=batch_size, collate_fn=collator), desc="warm-up")
        runs = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            users = eval_users(test)
            metrics = evaluate_model(model, DataLoader(users, batch_size=batch_size, collate_fn=collator), desc="evaluate all users")
            runs.append(time.perf_counter() - start)
    seconds = percentile(runs, 50)
    return {"users": metrics["num_users"], "items": metrics["num_items"], "seconds": round(seconds, 3),
            "runs": [round(r, 3) for r in runs],
            "users_per_second": round(metrics["num_users"] / seconds, 1), "batch_size": batch_size,
            "test_ndcg@10_after_timed_training": round(metrics["ndcg@10"], 4)}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between order statistics."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def time_latency(model, tokenizer, histories: list[list[str]], calls: int, warmup: int) -> dict:
    """Batch-1 `recommend(top_k=10)` latency in ms: model alone (pre-tokenised) and tokenizer + model."""
    import torch

    if not histories:
        raise ValueError("no histories to time recommend on")
    encoded = [tokenizer([h], return_tensors="pt") for h in histories]
    model_ms, end_to_end_ms = [], []
    with torch.inference_mode():
        for i in range(warmup + calls):
            inputs = encoded[i % len(encoded)]
            start = time.perf_counter()
            model.recommend(**inputs, top_k=10)
            elapsed = (time.perf_counter() - start) * 1000
            if i >= warmup:
                model_ms.append(elapsed)
        for i in range(warmup + calls):
            start = time.perf_counter()
            model.recommend(**tokenizer([histories[i % len(histories)]], return_tensors="pt"), top_k=10)
            elapsed = (time.perf_counter() - start) * 1000
            if i >= warmup:
                end_to_end_ms.append(elapsed)
    summary = lambda ms: {"p50": round(percentile(ms, 50), 3), "p95": round(percentile(ms, 95), 3), "mean": round(sum(ms) / len(ms), 3)}  # noqa: E731
    return {"calls": calls, "warmup": warmup, "model_ms": summary(model_ms), "tokenizer_and_model_ms": summary(end_to_end_ms)}


def time_throughput(model, tokenizer, histories: list[list[str]], batch_size: int) -> dict:
    """Histories per second of batched `recommend(top_k=10)` over `histories` (tokenised beforehand)."""
    import torch

    batches = [tokenizer(histories[i : i + batch_size], return_tensors="pt") for i in range(0, len(histories), batch_size)]
    with torch.inference_mode():
        model.recommend(**batches[0], top_k=10)  # warm-up
        start = time.perf_counter()
        for inputs in batches:
            model.recommend(**inputs, top_k=10)
        seconds = time.perf_counter() - start
    return {"histories": len(histories), "batch_size": batch_size, "seconds": round(seconds, 3),
            "histories_per_second": round(len(histories) / seconds, 1)}


def measure_model(name: str, args: SpeedArgs, dataset_dir: str) -> dict:
    """Every measurement of one model, in this process."""
    import torch

    from training.memory import MMAP_THRESHOLD, cap_mmap_threshold
    from training.prepared import load_sequences
    from training.sequences import encode_split

    mmap_threshold_set = cap_mmap_threshold()  # as training/loop.py's train does
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rss_start = proc_status_mib("VmRSS")
    model, tokenizer, phases, note = build(name, args, dataset_dir)
    result = {
        "model": name,
        "tokens": note,
        "parameters": model.num_parameters(),
        "embedding_parameters": sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n),
        "config": {k: getattr(model.config, k) for k in ("num_codebooks", "codebook_size", "num_items", "hidden_size",
                                                           "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                                           "max_position_embeddings", "loss_type", "is_causal")},
        "training": {},
    }
    phase_peaks = {"load": proc_status_mib("VmHWM")}
    for phase, dataset, collator, loop_args in phases:
        reset_peak_rss()
        result["training"][phase] = time_training(model, dataset, collator, loop_args, args.train_batches, args.seed, f"{name} {phase}")
        phase_peaks[phase] = proc_status_mib("VmHWM")
    reset_peak_rss()
    test = load_sequences(dataset_dir)["test"]
    if args.max_users:
        test = test.select(range(min(args.max_users, len(test))))
    encoded = encode_split(test, tokenizer).select_columns(["item_indices", "target"])
    result["evaluation"] = time_evaluation(model, tokenizer, encoded, args.eval_batch_size, args.eval_repeats)
    histories = [list(h) for h in test["item_ids"]]
    result["throughput"] = time_throughput(model, tokenizer, histories, args.throughput_batch_size)
    result["torch_threads"] = threads = torch.get_num_threads()
    torch.set_num_threads(args.latency_threads or threads)
    try:
        result["latency"] = time_latency(model, tokenizer, histories[: max(1, args.latency_calls)], args.latency_calls, args.warmup_calls)
        result["latency"]["torch_threads"] = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    phase_peaks["inference"] = proc_status_mib("VmHWM")
    # VmHWM is this process image's own peak, restarted before each phase. getrusage's ru_maxrss is also reported, but
    # a child started by fork + exec inherits the parent's high-water mark in it (Linux keeps the larger across exec).
    result["memory"] = {
        "rss_before_model_mib": round(rss_start, 1),
        "peak_rss_mib": round(max(phase_peaks.values()), 1),
        "peak_rss_by_phase_mib": {phase: round(peak, 1) for phase, peak in phase_peaks.items()},
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
        # as this process ran: the environment's (glibc reads it at start), else the loop's cap_mmap_threshold
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD) if mmap_threshold_set else None),
    }
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Parent: one child per model, then the report
# ----------------------------------------------------------------------------------------------------------------------


def resolve_dataset(args: SpeedArgs) -> str:
    """`--dataset_dir`, else `outputs/beauty/data`, else the config's dataset prepared into OUTPUT_DIR/data."""
    for candidate in (args.dataset_dir, "outputs/beauty/data", str(Path(args.output_dir) / "data")):
        if candidate and (Path(candidate) / "sequences").is_dir():
            return str(Path(candidate).resolve())
    if args.dataset_dir:
        raise FileNotFoundError(f"--dataset_dir {args.dataset_dir}: no prepared dataset (sequences/) there")
    from training import prepare_data

    return str(prepare_data.main(["--config", args.dataset_config, "--output_dir", str(Path(args.output_dir).resolve() / "data")]))


def recbole_comparison(results: dict) -> dict:
    """Our figures over RecBole's: measured in this run where its models ran, else over the reference figures."""
    ratios = {}
    in_run = {name: r for name, r in results.items() if name in RECBOLE_MODELS and "error" not in r}
    if in_run:
        note = f"RecBole measured in this run ({', '.join(in_run)}), same split and machine"
        for ours, (phase, theirs) in RECBOLE_COUNTERPART.items():
            if theirs in in_run and phase in results.get(ours, {}).get("training", {}):
                ratios[f"{ours}_seconds_per_epoch_over_{theirs}"] = round(
                    results[ours]["training"][phase]["seconds_per_epoch"] / in_run[theirs]["training"]["train"]["seconds_per_epoch"], 3)
        for name, result in results.items():
            if name in MODELS and "evaluation" in result:
                for theirs, r in in_run.items():
                    ratios[f"{name}_eval_seconds_over_{theirs}"] = round(result["evaluation"]["seconds"] / r["evaluation"]["seconds"], 3)
                    ratios[f"{name}_peak_rss_over_{theirs}"] = round(result["memory"]["peak_rss_mib"] / r["memory"]["peak_rss_mib"], 3)
        return {"note": note, "reference": RECBOLE_REFERENCE, "ratios": ratios}
    note = "RecBole not run (no --recbole_python): ratios below use the reference figures, not an in-run measurement"
    sasrec = results.get("sasrec-ce")
    if sasrec and "train" in sasrec.get("training", {}):
        ratios["sasrec_ce_seconds_per_epoch_ours_over_recbole"] = round(
            sasrec["training"]["train"]["seconds_per_epoch"] / RECBOLE_REFERENCE["sasrec_ce_seconds_per_epoch"], 3)
    for name, result in results.items():
        if "evaluation" in result:
            low, high = RECBOLE_REFERENCE["eval_all_users_seconds"]
            ratios[f"{name}_eval_seconds_ours_over_recbole"] = [round(result["evaluation"]["seconds"] / high, 3),
                                                                round(result["evaluation"]["seconds"] / low, 3)]
            ratios[f"{name}_peak_rss_ours_over_recbole_sasrec"] = round(result["memory"]["peak_rss_mib"] / RECBOLE_REFERENCE["sasrec_peak_rss_mib"], 3)
    return {"note": note, "reference": RECBOLE_REFERENCE, "ratios": ratios}


def markdown_report(report: dict) -> str:
    from benchmarks.baselines import machine_line

    lines = [
        "# Speed and memory on Beauty",
        "",
        f"Dataset: {report['dataset']['users']:,} test users, {report['dataset']['items']:,} items. Models trained only "
        f"for the timed batches ({report['training_note']}); latency and throughput do not depend on the weights.",
        "",
        "| model | params | training phase: seq/s, s/epoch | eval all users (s): median (range) | "
        f"recommend p50 / p95 ms (batch 1, {report['settings']['latency_threads'] or 'default'} thread(s)) | "
        "+ tokenizer p50 ms | batched hist/s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["models"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:100]} |" + " |" * 6)
            continue
        phases = "; ".join(f"{p}: {t['sequences_per_second']:,.0f}, {t['seconds_per_epoch']:.1f}{'*' if t['extrapolated'] else ''}"
                           for p, t in r["training"].items())
        if name in RECBOLE_MODELS:
            lines.append(f"| {name} | {r['parameters']:,} | {phases} | {r['evaluation']['seconds']:.2f} (RecBole's loader) "
                         f"| | | | {r['memory']['peak_rss_mib']:,.0f} |")
            continue
        lat = r["latency"]
        lines.append(
            f"| {name} | {r['parameters']:,} | {phases} | {r['evaluation']['seconds']:.2f} "
            f"({min(r['evaluation']['runs']):.2f}-{max(r['evaluation']['runs']):.2f}) | {lat['model_ms']['p50']:.2f} / "
            f"{lat['model_ms']['p95']:.2f} | {lat['tokenizer_and_model_ms']['p50']:.2f} | "
            f"{r['throughput']['histories_per_second']:,.0f} | {r['memory']['peak_rss_mib']:,.0f} |"
        )
    lines += [
        "",
        "`*`: seconds per epoch extrapolated from the timed batches. Peak RSS is each model's own child process "
        "(Python, torch and the dataset included). Evaluation batches users sorted by history length (each batch is "
        "padded to its longest history), as `training/evaluate.py`'s `eval_loader` does in training and `evaluate.py`, "
        "under `training.memory.evaluation_allocator`. "
        + (f"glibc `MALLOC_MMAP_THRESHOLD_={report['settings']['malloc_mmap_threshold']}` in the children."
           if report["settings"]["malloc_mmap_threshold"]
           else "glibc's mmap threshold fixed at 4 MiB by the training loop (`training.memory.cap_mmap_threshold`)."),
        "",
        f"Targets (issue 6): all users evaluated in under {TARGETS['eval_all_users_seconds']} s, batch-1 p50 under "
        f"{TARGETS['latency_p50_ms']} ms, peak RSS under {TARGETS['peak_rss_mib']:.0f} MiB.",
    ]
    for name, r in report["models"].items():
        if "error" not in r and name in MODELS:
            checks = {
                "eval": r["evaluation"]["seconds"] < TARGETS["eval_all_users_seconds"],
                "p50": r["latency"]["model_ms"]["p50"] < TARGETS["latency_p50_ms"],
                "RSS": r["memory"]["peak_rss_mib"] < TARGETS["peak_rss_mib"],
            }
            lines.append(f"- {name}: " + ", ".join(f"{k} {'met' if ok else 'missed'}" for k, ok in checks.items()))
    rb = report["recbole"]
    in_run = rb["note"].startswith("RecBole measured")
    lines += ["", f"RecBole: {rb['note']}" + ("." if in_run else f" ({rb['reference']['source']})."), ""]
    lines += [f"- {k}: {v}" for k, v in rb["ratios"].items()]
    lines += [
        "",
        f"Q-Bert4Rec codes: {report['models'].get('qbert4rec', {}).get('tokens', 'n/a')}.",
        f"Command: `{report['command']}`",
        machine_line(report["machine"]),
        "",
    ]
    return "\n".join(lines)


def recbole_child(name: str, args: SpeedArgs, dataset_dir: str, out: Path, child_json: Path) -> list[str]:
    """The command measuring RecBole model `name` under `--recbole_python`, after writing its data and settings."""
    from benchmarks import recbole_baselines
    from benchmarks.baselines import stage_arguments
    from training import pretrain

    atomic = out / "recbole_atomic"
    recbole_baselines.write_atomic_files(dataset_dir, atomic)  # under a second: always from this run's dataset
    settings, _, loop_args = stage_arguments(pretrain, ["--config", args.dataset_config])
    ours = {**{k: getattr(settings, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")},
            "max_len": settings.max_position_embeddings, "batch_size": loop_args.batch_size,
            "learning_rate": loop_args.learning_rate}
    job = {"name": name, "train_batches": args.train_batches, "threads": args.threads,
           "settings": recbole_baselines.recbole_settings(name, atomic, ours, args.seed)}
    (out / name).mkdir(parents=True, exist_ok=True)
    job_json = out / name / "job.json"
    job_json.write_text(json.dumps(job, indent=2) + "\n")
    # absolute (the child runs in its own folder), but not resolved: a venv's python is a symlink to the base one
    return [os.path.abspath(args.recbole_python), recbole_baselines.__file__, str(job_json.resolve()), str(child_json.resolve())]


def main(argv=None) -> dict:
    from benchmarks.baselines import machine_info, write_report
    from training.config import parse_args

    (args,) = parse_args(argv, SpeedArgs, section="speed", description=__doc__)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS + RECBOLE_MODELS))
    if unknown or not models:
        raise ValueError(f"--models must name some of {', '.join(MODELS + RECBOLE_MODELS)}, got {args.models!r}")
    if args.recbole_python:
        if not Path(args.recbole_python).is_file():
            raise FileNotFoundError(f"--recbole_python {args.recbole_python}: no such interpreter")
        models += [m for m in RECBOLE_MODELS if m not in models]
    elif any(m in RECBOLE_MODELS for m in models):
        raise ValueError("RecBole's models need --recbole_python (the Python of a virtual environment with RecBole)")
    if args.latency_calls < 1 or args.warmup_calls < 0:
        raise ValueError(f"--latency_calls must be >= 1 and --warmup_calls >= 0, got {args.latency_calls}, {args.warmup_calls}")
    dataset_dir = resolve_dataset(args)
    if args.model:  # child: one model, one JSON
        result = measure_model(args.model, args, dataset_dir)
        Path(args.child_output).write_text(json.dumps(result, indent=2) + "\n")
        return result

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw_argv = sys.argv[1:] if argv is None else list(argv)
    results = {}
    for name in models:
        child_json = out / f"{name}.json"
        command = [sys.executable, str(Path(__file__).resolve()), *raw_argv, "--dataset_dir", dataset_dir,
                   "--model", name, "--child_output", str(child_json)]
        if name in RECBOLE_MODELS:
            command = recbole_child(name, args, dataset_dir, out, child_json)
        print(f"[speed] {name}: {' '.join(shlex.quote(c) for c in command)}", flush=True)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(args.malloc_mmap_threshold)} if args.malloc_mmap_threshold else None
        # ours: same working directory, so relative paths mean the same; RecBole writes its logs where it runs
        completed = subprocess.run(command, env=env, cwd=out / name if name in RECBOLE_MODELS else None)
        if completed.returncode != 0 or not child_json.is_file():
            results[name] = {"error": f"child process exited with {completed.returncode} (see the log above)"}
            continue
        results[name] = json.loads(child_json.read_text())
        print(f"[speed] {name}: {json.dumps({k: results[name].get(k) for k in ('evaluation', 'latency', 'memory')})}", flush=True)

    from training.prepared import load_sequences

    test = load_sequences(dataset_dir)["test"]
    report = {
        "command": "python benchmarks/speed.py " + " ".join(shlex.quote(a) for a in raw_argv),
        "machine": machine_info(),
        "settings": asdict(args),
        "dataset": {"dir": dataset_dir, "users": len(test) if not args.max_users else min(args.max_users, len(test)),
                    "items": next((r["evaluation"]["items"] for r in results.values() if "evaluation" in r), 0)},
        "training_note": "one full epoch per phase" if not args.train_batches else f"{args.train_batches} batches per phase",
        "models": results,
        "recbole": recbole_comparison(results),
    }
    json_path, md_path = write_report(args.results_dir, "speed", report, markdown_report(report))
    print(f"[speed] results: {json_path}, {md_path}")
    return report


if __name__ == "__main__":
    main()
