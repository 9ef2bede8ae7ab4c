"""RecBole's SASRec (full-softmax cross-entropy) and BERT4Rec on our prepared split, timed as `speed.py` times ours.

RecBole 1.2.1 needs numpy < 2 (it aliases `np.float`), which today's pyarrow and datasets refuse, so it lives in its own
virtual environment, with torch and nothing of ours:

    python -m venv .venv-recbole && .venv-recbole/bin/pip install -r benchmarks/recbole-requirements.txt
    python benchmarks/speed.py --recbole_python .venv-recbole/bin/python

`speed.py` (our environment) writes the user sequences as RecBole atomic files and the RecBole settings, then runs
this file under that interpreter, one child per model; the child imports only RecBole, torch and the
standard-library helpers of `benchmarks/memory.py`.
- Data: every user's whole sequence (`user_id`, `item_id`, `timestamp` = position). RecBole's leave-one-out split
  (`LS`, time order) then holds out the same validation and test items as ours, and `mode: full` ranks all items.
- Model: sizes, training batch size, learning rate and maximum length from the config's `pretrain` section, as ours;
  evaluation at RecBole's default batch size.
- RecBole trains sequential models on every prefix of every training sequence, so one RecBole epoch is not one of
  ours: the seconds per epoch are compared as they are, and the sequences per second are RecBole's own examples.
"""

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.memory import proc_status_mib, reset_peak_rss  # noqa: E402  (standard library only)

MODELS = {"recbole-sasrec": "SASRec", "recbole-bert4rec": "BERT4Rec"}
DATASET_NAME = "qbert4rec_split"


# ----------------------------------------------------------------------------------------------------------------------
# Parent side (our environment): atomic files and settings
# ----------------------------------------------------------------------------------------------------------------------


def write_atomic_files(dataset_dir: str, folder: Path) -> Path:
    """`FOLDER/<DATASET_NAME>/<DATASET_NAME>.inter`: every user's full sequence (test history + test target), in order."""
    from training.prepared import load_sequences

    test = load_sequences(dataset_dir)["test"]
    path = Path(folder) / DATASET_NAME / f"{DATASET_NAME}.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, history, target in zip(test["user_id"], test["item_ids"], test["target"]):
            for position, item in enumerate([*history, target]):
                f.write(f"{user}\t{item}\t{position}\n")
    return path


def recbole_settings(name: str, atomic_folder: Path, ours: dict, seed: int) -> dict:
    """RecBole's `config_dict` for model `name` (a key of `MODELS`), sized like our models: `ours` holds `max_len`,
    `hidden_size`, `intermediate_size`, `num_hidden_layers`, `num_attention_heads`, `batch_size` and `learning_rate`
    (the resolved `pretrain` settings). Evaluation runs at RecBole's own batch size (4,096 users)."""
    if name not in MODELS:
        raise ValueError(f"unknown RecBole model {name!r}: expected one of {', '.join(MODELS)}")
    return {
        "model": MODELS[name],
        "dataset": DATASET_NAME,
        "data_path": str(Path(atomic_folder).resolve()),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[0,inf)",  # the data is already 5-core: no further filtering
        "item_inter_num_interval": "[0,inf)",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Recall", "NDCG", "MRR"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "MAX_ITEM_LIST_LENGTH": ours["max_len"],
        "hidden_size": ours["hidden_size"],
        "inner_size": ours["intermediate_size"],
        "n_layers": ours["num_hidden_layers"],
        "n_heads": ours["num_attention_heads"],
        "train_batch_size": ours["batch_size"],
        "learning_rate": ours["learning_rate"],
        "epochs": 1,
        "seed": seed,
        "reproducibility": True,
        "use_gpu": False,
        "device": "cpu",
        "worker": 0,
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "checkpoint_dir": "saved",
    }


# ----------------------------------------------------------------------------------------------------------------------
# Child side (RecBole's environment): train the timed batches, rank all users, read the memory
# ----------------------------------------------------------------------------------------------------------------------


class FirstBatches:
    """The first `limit` batches of a RecBole training loader (what `Trainer._train_epoch` reads of it)."""

    def __init__(self, loader, limit: int):
        self.loader, self.limit, self.shuffle = loader, limit, loader.shuffle

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.limit)

    def __len__(self):
        return self.limit


def measure(name: str, settings: dict, train_batches: int, threads: int) -> dict:
    """Seconds per training epoch (`train_batches` timed, 0 = all), seconds to rank all items for every test user and
    peak RSS by phase of one RecBole model, in this process. RecBole writes logs under the working directory."""
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    rss_start = proc_status_mib("VmRSS")
    config = Config(model=settings["model"], config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    if threads:
        torch.set_num_threads(threads)
    train_data, _, test_data = data_preparation(config, create_dataset(config))
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    phase_peaks = {"load": proc_status_mib("VmHWM")}

    reset_peak_rss()
    batches = min(train_batches, len(train_data)) if train_batches else len(train_data)
    start = time.perf_counter()
    loss = trainer._train_epoch(FirstBatches(train_data, batches), epoch_idx=0)
    seconds = time.perf_counter() - start
    phase_peaks["train"] = proc_status_mib("VmHWM")

    reset_peak_rss()
    start = time.perf_counter()
    metrics = trainer.evaluate(test_data, load_best_model=False)
    eval_seconds = time.perf_counter() - start
    phase_peaks["inference"] = proc_status_mib("VmHWM")
    batch_size = settings["train_batch_size"]
    return {
        "model": name,
        "recbole_model": settings["model"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "training": {"train": {
            "examples_per_epoch": len(train_data.dataset),
            "batch_size": batch_size,
            "batches_timed": batches,
            "batches_per_epoch": len(train_data),
            "seconds_timed": round(seconds, 3),
            "sequences_per_second": round(min(batches * batch_size, len(train_data.dataset)) / seconds, 1),
            "seconds_per_epoch": round(seconds * len(train_data) / batches, 2),
            "extrapolated": batches < len(train_data),
            "mean_loss": round(float(loss) / batches, 4),
        }},
        "evaluation": {
            "users": test_data._dataset.user_num - 1,  # RecBole's id 0 is padding
            "items": test_data._dataset.item_num - 1,
            "seconds": round(eval_seconds, 3),
            "batch_size": config["eval_batch_size"],
            "test_ndcg@10_after_timed_training": round(float(metrics["ndcg@10"]), 4),
        },
        "memory": {
            "rss_before_model_mib": round(rss_start, 1),
            "peak_rss_mib": round(max(phase_peaks.values()), 1),
            "peak_rss_by_phase_mib": {phase: round(peak, 1) for phase, peak in phase_peaks.items()},
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        },
    }


def main(argv=None) -> dict:
    """Child entry point: `recbole_baselines.py SETTINGS_JSON OUTPUT_JSON`, run in the folder RecBole may write to.

    SETTINGS_JSON holds `name`, `settings` (from `recbole_settings`), `train_batches` and `threads`."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="benchmarks/speed.py --recbole_python runs it, one child per model.",
    )
    parser.add_argument("settings_json", help="the job: name, settings, train_batches and threads")
    parser.add_argument("output_json", help="where the measurements go")
    args = parser.parse_args(argv)
    job = json.loads(Path(args.settings_json).read_text())
    result = measure(job["name"], job["settings"], job["train_batches"], job["threads"])
    Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
