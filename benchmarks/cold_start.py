"""Benchmark: cold start on a real dataset. A seeded share of items is cold: every interaction with them is removed
from the data stages 1-3 train on; the trained checkpoint then adds them from their content alone
(`model.add_items`) and ranks all items, warm and cold, for the original test users.

    python benchmarks/cold_start.py --source_dir outputs/beauty --warm_checkpoint outputs/beauty/final \
        --runs_dir outputs/cold-start --seed 0          # one cold set: its data, two pipeline runs, every row
    python benchmarks/cold_start.py --source_dir outputs/beauty --runs_dir outputs/cold-start --report   # the table

`--source_dir` is a pipeline folder trained on every item (its `data/` is the dataset, its `features/text.safetensors`
gives the content kNN its text vectors). Per seed, `RUNS/seed<k>/` holds the cold dataset and a pipeline run with
`--pipeline_config` (`base/`) and one with `--item_embedding_dropout` (`id-dropout/`, sharing stages 1-2 with `base/`); both
are restartable (finished stages are skipped). Every row ranks the original test split's targets among all items
(history items kept as candidates), reported on all users and on the users whose target is cold:
- `most-popular`: counts in the cold training data (a cold item counts 0);
- `content-knn`: cosine between the mean text vector of the history and each item's text vector;
- `sasrec-ce` (`--sasrec`): the in-box ID model trained on the cold data; it has no row for a cold item, which it
  ranks last;
- `qbert4rec/warm`: the `--warm_checkpoint`, trained with every item (the upper bound);
- `qbert4rec/<run>+<init>`: a cold run's checkpoint after `add_items(..., item_embeddings=<init>)`.
Also per seed: how cold items' first-level codes agree with warm items' leaf categories (`code_purity`) and what
adding them cost. Results: `RESULTS_DIR/seed<k>.json`, `RESULTS_DIR/cold_start.{json,md}`.
"""

import json
import os
import random
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.baselines import machine_info  # noqa: E402
from configuration_qbert4rec import QBert4RecConfig  # noqa: E402
from modeling_qbert4rec import QBert4RecForMaskedItemModeling  # noqa: E402
from quantization_qbert4rec import VECTOR_KEYS, accepted_fields  # noqa: E402
from tokenization_semantic_id import SemanticIdTokenizer  # noqa: E402
from training.config import parse_args  # noqa: E402
from training.evaluate import DEFAULT_KS, MostPopular, aggregate, batch_ranks, metrics_from_ranks  # noqa: E402
from training.explain_codes import leaf_labels  # noqa: E402
from training.extract_features import read_feature_matrix  # noqa: E402
from training.explain_codes import load_items as load_item_labels  # noqa: E402
from training.masking import HistoryCollator  # noqa: E402
from training.prepared import SEQUENCE_FEATURES, load_items, load_sequences, load_summary, save_prepared  # noqa: E402
from training.sequences import encode_split  # noqa: E402


@dataclass
class ColdStartArgs:
    """Arguments of `benchmarks/cold_start.py`."""

    source_dir: str = field(default=None, metadata={"help": "pipeline folder trained on every item (data/, features/)", "required": True})
    runs_dir: str = field(default=None, metadata={"help": "where each seed's cold dataset and runs go", "required": True})
    warm_checkpoint: str = field(default="", metadata={"help": "checkpoint trained with every item (default SOURCE/final)"})
    pipeline_config: str = field(default="configs/beauty.yaml", metadata={"help": "config of the cold runs' pipeline"})
    seed: int = field(default=0, metadata={"help": "seed of the cold set (the runs keep the config's seeds)"})
    fraction: float = field(default=0.05, metadata={"help": "share of items made cold"})
    item_embedding_dropout: float = field(default=0.2, metadata={"help": "of the id-dropout run (0: no such run)"})
    sasrec: bool = field(default=False, metadata={"help": "also train and rank the SASRec-CE baseline"})
    report: bool = field(default=False, metadata={"help": "only merge RESULTS_DIR/seed*.json into the table"})
    results_dir: str = field(default="benchmarks/results/cold-start", metadata={"help": "where the figures go"})
    batch_size: int = field(default=256, metadata={"help": "histories per evaluation batch"})


def cold_item_ids(item_ids: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded `fraction` of `item_ids` (at least one), in item-index order."""
    count = max(1, round(fraction * len(item_ids)))
    chosen = set(random.Random(seed).sample(item_ids, count))
    return [item_id for item_id in item_ids if item_id in chosen]


def without_items(dataset_dir: Path, cold: set[str], output_dir: Path) -> dict:
    """Write a prepared dataset without the `cold` items: they leave the items table and every user's sequence, which
    is then split again leave-one-out (train = all but the last two, validation target = the second last, test
    target = the last); users left with fewer than 3 items are dropped. The original test target of a user is never
    in the new training data: it was either cold (removed) or is the new test target."""
    sequences = load_sequences(dataset_dir)
    test = sequences["test"]
    rows = {"train": [], "validation": [], "test": []}
    for user_id, history, target in zip(test["user_id"], test["item_ids"], test["target"]):
        full = [item_id for item_id in [*history, target] if item_id not in cold]
        if len(full) < 3:
            continue
        rows["train"].append({"user_id": user_id, "item_ids": full[:-2]})
        rows["validation"].append({"user_id": user_id, "item_ids": full[:-2], "target": full[-2]})
        rows["test"].append({"user_id": user_id, "item_ids": full[:-1], "target": full[-1]})
    target_features = datasets.Features({**SEQUENCE_FEATURES, "target": datasets.Value("string")})
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(rows["train"], features=SEQUENCE_FEATURES),
        "validation": datasets.Dataset.from_list(rows["validation"], features=target_features),
        "test": datasets.Dataset.from_list(rows["test"], features=target_features),
    })
    items = load_items(dataset_dir)
    warm_rows = [row for row, item_id in enumerate(items["item_id"]) if item_id not in cold]
    source_summary = load_summary(dataset_dir)
    matrices = {}  # precomputed feature matrices (one row per item): their warm rows, as .npy beside the data
    for modality, matrix in source_summary.get("feature_matrices", {}).items():
        warm_matrix = read_feature_matrix(matrix["path"], len(items), matrix["dim"])[warm_rows]
        output_dir.mkdir(parents=True, exist_ok=True)
        np.save(output_dir / f"{modality}_matrix.npy", warm_matrix)
        matrices[modality] = {**matrix, "path": str((output_dir / f"{modality}_matrix.npy").resolve())}
    summary = {
        **source_summary,
        **({"feature_matrices": matrices} if matrices else {}),
        "users": len(rows["test"]),
        "items": len(warm_rows),
        "interactions": sum(len(r["item_ids"]) + 1 for r in rows["test"]),
        "cold_start": {"source": str(dataset_dir), "cold_items": len(cold),
                       "users_dropped": len(test) - len(rows["test"])},
    }
    save_prepared(splits, items.select(warm_rows), summary, output_dir)
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Scorers (the two steps of the model's scoring: `history_states`, then `item_scores`)


class ContentKNN(nn.Module):
    """Content kNN: cosine between the mean text vector of a history and each item's text vector `(N, D)`."""

    def __init__(self, vectors: torch.Tensor):
        super().__init__()
        self.vectors = F.normalize(vectors, dim=-1)

    def history_states(self, item_indices, attention_mask=None):
        known = (item_indices < len(self.vectors)).unsqueeze(-1)
        rows = self.vectors[item_indices.clamp(max=len(self.vectors) - 1)] * known  # (B, T, D)
        return F.normalize(rows.sum(1), dim=-1)

    def item_scores(self, states, item_indices=None):
        return states @ self.vectors.T


def test_ranks(scorer, tokenizer, test, max_len: int, batch_size: int) -> torch.Tensor:
    """0-based rank `(U,)` of each original test target among the scorer's items (history items kept). Items the
    tokenizer does not know are left out of histories; an unknown target ranks last."""
    rows, unknown = [], []
    for history, target in zip(test["item_ids"], test["target"]):
        known_target = tokenizer.encode_items([target], unknown_items="skip")
        unknown.append(not known_target)
        rows.append({"item_indices": tokenizer.encode_items(history, unknown_items="skip"),
                     "target": known_target[0] if known_target else 0})
    collator = HistoryCollator(num_items=tokenizer.num_items, max_len=max_len)
    ranks = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            ranks.append(batch_ranks(scorer, collator(rows[start : start + batch_size]))[0])
    ranks = torch.cat(ranks)
    ranks[torch.tensor(unknown)] = tokenizer.num_items - 1
    return ranks


def row_metrics(ranks: torch.Tensor, cold_target: torch.Tensor) -> dict:
    """Metrics on all users, on cold-target users and on warm-target users."""
    per_user = metrics_from_ranks(ranks, DEFAULT_KS)
    return {group: aggregate({k: v[rows] for k, v in per_user.items()}) | {"users": int(rows.sum())}
            for group, rows in (("all", torch.ones_like(cold_target)), ("cold", cold_target), ("warm", ~cold_target))}


# ----------------------------------------------------------------------------------------------------------------
# Codes given to cold items


def code_purity(codes: torch.Tensor, labels: torch.Tensor, cold: torch.Tensor) -> dict:
    """Mean share of warm items with the same leaf category among the warm items sharing an item's first-level code:
    for cold items, for warm items (themselves left out), and for cold items with shuffled codes (chance)."""

    def purity(query_codes, query_labels, self_rows=None):
        shares = []
        for row, (code, label) in enumerate(zip(query_codes.tolist(), query_labels.tolist())):
            same_code = warm & (codes[:, 0] == code) & (labels >= 0)
            if self_rows is not None:
                same_code[self_rows[row]] = False
            if label >= 0 and same_code.any():
                shares.append(float((labels[same_code] == label).float().mean()))
        return sum(shares) / len(shares)

    warm = ~cold
    warm_rows = warm.nonzero().flatten()
    generator = torch.Generator().manual_seed(0)
    shuffled = codes[warm_rows[torch.randint(len(warm_rows), (int(cold.sum()),), generator=generator)], 0]
    return {"cold": purity(codes[cold, 0], labels[cold]), "warm": purity(codes[warm, 0], labels[warm], warm_rows),
            "cold_random_codes": purity(shuffled, labels[cold])}


# ----------------------------------------------------------------------------------------------------------------
# One cold set


def run_pipeline(config: str, output_dir: Path, flags: list[str]) -> None:
    """The pipeline in a child process (finished stages are skipped), its output appended to OUTPUT_DIR.log."""
    command = [sys.executable, str(REPO_ROOT / "training" / "pipeline.py"), "--config", config,
               "--output_dir", str(output_dir), *flags]
    with open(f"{output_dir}.log", "a") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)


def content_of(item_ids: list[str], items, features_dir: Path, settings: dict) -> list[dict]:
    """The new-item dicts of `item_ids`: the fields the checkpoint reads from the items dataset, and the precomputed
    `text_vector` / `image_vector` from the source run's features when the checkpoint takes them (Scientific's CLIP
    vectors); a field or vector the item lacks is left out."""
    from safetensors.torch import load_file

    accepted = accepted_fields(settings)
    row_of = {item_id: row for row, item_id in enumerate(items["item_id"])}
    vectors = {}
    for modality, key in VECTOR_KEYS.items():
        path = features_dir / f"{modality}.safetensors"
        uses_matrix = modality == "image" or not settings["text_fields"]
        if key in accepted and uses_matrix and path.is_file():
            vectors[key] = load_file(str(path))
    content = []
    for item_id in item_ids:
        row = items[row_of[item_id]]
        item = {key: row[key] for key in accepted if key in row and row[key]}
        for key, tensors in vectors.items():
            if tensors["mask"][row_of[item_id], 0]:
                item[key] = tensors["features"][row_of[item_id], 0].tolist()
        content.append(item)
    return content


def add_cold_items(checkpoint: Path, items: list[dict], init: str):
    """Load a cold run's checkpoint and add the cold items from their content; returns tokenizer, model, cost."""
    tokenizer = SemanticIdTokenizer.from_pretrained(checkpoint)
    model = QBert4RecForMaskedItemModeling.from_pretrained(checkpoint).eval()
    started = time.perf_counter()
    model.add_items(tokenizer, items, item_embeddings=init, progress=False)
    cost = {"seconds": time.perf_counter() - started, "items": len(items)}
    return tokenizer, model, cost


def cold_set(args: ColdStartArgs) -> dict:
    """Make the seed's cold dataset, train its runs, rank every row; returns the seed's record."""
    source = Path(args.source_dir)
    seed_dir = Path(args.runs_dir) / f"seed{args.seed}"
    base = seed_dir / "base"
    item_ids = [str(i) for i in load_items(source / "data")["item_id"]]
    cold_ids = cold_item_ids(item_ids, args.fraction, args.seed)
    if not (base / "data" / "summary.json").is_file():
        without_items(source / "data", set(cold_ids), base / "data")
    runs = {"base": (base, [])}
    if args.item_embedding_dropout > 0:
        dropout = seed_dir / "id-dropout"
        dropout.mkdir(parents=True, exist_ok=True)
        for stage in ("data", "features", "inject", "semantic_ids"):  # stages 1-2 are shared with base/
            if not (dropout / stage).exists():
                (dropout / stage).symlink_to((base / stage).resolve(), target_is_directory=True)
        runs["id-dropout"] = (dropout, ["--item_embedding_dropout", str(args.item_embedding_dropout)])
    for name, (folder, flags) in runs.items():
        print(f"[cold start] seed {args.seed}: pipeline run {name} ({folder})")
        run_pipeline(args.pipeline_config, folder, flags)

    test = load_sequences(source / "data")["test"]
    cold = set(cold_ids)
    cold_target = torch.tensor([target in cold for target in test["target"]])
    items = load_items(source / "data")
    cold_items = content_of(cold_ids, items, source / "features", QBert4RecConfig.from_pretrained(base / "final").item_encoder)
    record = {"seed": args.seed, "cold_items": len(cold_ids), "test_users": len(test),
              "cold_target_users": int(cold_target.sum()), "rows": {}, "add_items": {}}

    def evaluate(name, scorer, tokenizer, max_len):
        record["rows"][name] = row_metrics(test_ranks(scorer, tokenizer, test, max_len, args.batch_size), cold_target)
        print(f"[cold start] seed {args.seed} {name}: " + ", ".join(
            f"{group} N@10 {m['ndcg@10']:.4f} R@10 {m['recall@10']:.4f}" for group, m in record["rows"][name].items()))

    # Baselines, over the catalogue of the cold run after adding the cold items.
    tokenizer, model, _ = add_cold_items(base / "final", cold_items, "zero")
    max_len = model.config.max_position_embeddings
    cold_train = encode_split(load_sequences(base / "data")["test"], tokenizer)["item_indices"]
    evaluate("most-popular", MostPopular.from_sequences(cold_train, tokenizer.num_items), tokenizer, max_len)
    from safetensors.torch import load_file

    text = load_file(str(source / "features" / "text.safetensors"))
    row_of = {item_id: row for row, item_id in enumerate(item_ids)}
    vectors = text["features"][:, 0] * text["mask"][:, :1]
    evaluate("content-knn", ContentKNN(vectors[[row_of[i] for i in tokenizer.item_ids]]), tokenizer, max_len)
    labels = leaf_labels(tokenizer.item_ids, load_item_labels(source / "data"))
    is_cold = torch.tensor([item_id in cold for item_id in tokenizer.item_ids])
    record["code_purity"] = code_purity(tokenizer.item_codes, labels, is_cold)

    warm = Path(args.warm_checkpoint or source / "final")
    warm_tokenizer = SemanticIdTokenizer.from_pretrained(warm)
    warm_model = QBert4RecForMaskedItemModeling.from_pretrained(warm).eval()
    evaluate("qbert4rec/warm", warm_model, warm_tokenizer, warm_model.config.max_position_embeddings)

    for name, (folder, _) in runs.items():
        inits = ["unknown", "content_twin"] if name == "id-dropout" else ["content_twin", "prefix_mean", "zero"]
        for init in inits:
            tokenizer, model, cost = add_cold_items(folder / "final", cold_items, init)
            record["add_items"][f"{name}+{init}"] = cost
            evaluate(f"qbert4rec/{name}+{init}", model, tokenizer, max_len)
    if args.sasrec:
        record["rows"]["sasrec-ce"] = sasrec_row(args, base, test, cold_target)
    record["add_1000_items"] = measure_adding(base / "final", cold_items, seed_dir / "add_1000.jsonl")
    return record


def measure_adding(checkpoint: Path, cold_items: list[dict], path: Path, count: int = 1000) -> dict:
    """Seconds and peak RSS of adding `count` items to `checkpoint` in a fresh process (one thread, MiniLM loaded
    from disk on first use): the cold items, then copies of their content under new ids."""
    extra = [{**{k: v for k, v in item.items() if k != "item_id"}, "item_id": f"COPY{i:05d}"}
             for i, item in zip(range(count - len(cold_items)), cycle(cold_items))]
    path.write_text("".join(json.dumps(item) + "\n" for item in (cold_items + extra)[:count]))
    child = (
        "import json, resource, sys, time, torch; torch.set_num_threads(1)\n"
        "from modeling_qbert4rec import QBert4RecForMaskedItemModeling\n"
        "from tokenization_semantic_id import SemanticIdTokenizer\n"
        "tok = SemanticIdTokenizer.from_pretrained(sys.argv[1])\n"
        "model = QBert4RecForMaskedItemModeling.from_pretrained(sys.argv[1]).eval()\n"
        "items = [json.loads(line) for line in open(sys.argv[2])]\n"
        "loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "start = time.perf_counter(); model.add_items(tok, items, progress=False); seconds = time.perf_counter() - start\n"
        "print(json.dumps({'items': len(items), 'seconds': seconds, 'peak_rss_mib_after_loading': loaded,\n"
        "                  'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    result = subprocess.run([sys.executable, "-c", child, str(checkpoint), str(path)], cwd=REPO_ROOT, check=True,
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"[cold start] adding {measured['items']} items: {measured['seconds']:.1f} s, peak RSS "
          f"{measured['peak_rss_mib']:.0f} MiB ({measured['peak_rss_mib_after_loading']:.0f} MiB after loading)")
    return measured


def sasrec_row(args: ColdStartArgs, base: Path, test, cold_target) -> dict:
    """Train SASRec-CE on the cold data (the config's `pretrain` section and `id_baselines` keys) and rank."""
    from benchmarks.accuracy import id_baseline_sections
    from benchmarks.baselines import train_id_model
    from training.config import load_yaml

    overrides = [f"--{k}={v}" for k, v in id_baseline_sections(load_yaml(args.pipeline_config)).get("pretrain", {}).items()]
    result = train_id_model("sasrec-ce", str(base / "data"), str(base.parent / "sasrec-ce"), args.seed, args.pipeline_config,
                            overrides)
    folder = Path(result["output_dir"]) / "pretrain" / "best"  # the epoch kept by validation
    tokenizer = SemanticIdTokenizer.from_pretrained(folder)
    model = QBert4RecForMaskedItemModeling.from_pretrained(folder).eval()
    metrics = row_metrics(test_ranks(model, tokenizer, test, model.config.max_position_embeddings, args.batch_size),
                          cold_target)
    print(f"[cold start] sasrec-ce: all N@10 {metrics['all']['ndcg@10']:.4f}, cold {metrics['cold']['ndcg@10']:.4f}")
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# Report


def mean_std(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.4f}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.4f} ± {std:.4f}"


def markdown_report(records: list[dict]) -> str:
    """Mean (± sample std over cold sets) of R@10 / N@10 per row, on cold-target, warm-target and all users."""
    rows = list(dict.fromkeys(name for record in records for name in record["rows"]))
    lines = [
        f"Cold sets (seeds): {', '.join(str(r['seed']) for r in records)}; {records[0]['cold_items']} cold items each; "
        f"{records[0]['test_users']:,} test users, of which "
        f"{', '.join(str(r['cold_target_users']) for r in records)} have a cold target. Full ranking over all items, "
        "history items kept as candidates.",
        "",
        "| row | cold-target R@10 | cold-target N@10 | warm-target R@10 | warm-target N@10 | all R@10 | all N@10 "
        "| cold sets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in rows:
        present = [r["rows"][name] for r in records if name in r["rows"]]
        cells = [mean_std([m[group][metric] for m in present])
                 for group in ("cold", "warm", "all") for metric in ("recall@10", "ndcg@10")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(present)} |")
    purity = [r["code_purity"] for r in records]
    lines += ["", "First-level code purity (share of warm items with the item's leaf category among the warm items "
              "sharing its first code): cold items " + mean_std([p["cold"] for p in purity]) + ", warm items "
              + mean_std([p["warm"] for p in purity]) + ", cold items with random codes "
              + mean_std([p["cold_random_codes"] for p in purity]) + "."]
    costs = [c for r in records for c in r["add_items"].values()]
    lines += ["", f"Adding the cold items in the benchmark's process (MiniLM loaded on first use, one thread): "
              f"{mean_std([c['seconds'] for c in costs])} s for {costs[0]['items']} items."]
    adds = [r["add_1000_items"] for r in records if "add_1000_items" in r]
    if adds:
        lines += ["", f"Adding {adds[0]['items']} items to a cold run's checkpoint in a fresh process (one thread, MiniLM "
                  f"loaded from disk on first use): {mean_std([a['seconds'] for a in adds])} s; peak RSS "
                  f"{mean_std([a['peak_rss_mib'] for a in adds])} MiB, of which "
                  f"{mean_std([a['peak_rss_mib_after_loading'] for a in adds])} MiB after loading the checkpoint "
                  "(1-minute load average when each cold set's record was written: "
                  + ", ".join(f"{r['machine']['load_average'][0]:.2f}" for r in records if "add_1000_items" in r)
                  + "; above 1, other jobs shared the 2 cores)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    (args,) = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    torch.set_num_threads(1)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    if not args.report:
        record = cold_set(args) | {"machine": machine_info(), "command": " ".join(sys.argv),
                                   "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        (results_dir / f"seed{args.seed}.json").write_text(json.dumps(record, indent=2))
    records = [json.loads(p.read_text()) for p in sorted(results_dir.glob("seed*.json"))]
    report = {"records": records, "table": markdown_report(records)}
    (results_dir / "cold_start.json").write_text(json.dumps(report, indent=2))
    (results_dir / "cold_start.md").write_text(report["table"])
    print(report["table"])
    return report


SECTION = "cold_start"
ARGUMENT_TYPES = (ColdStartArgs,)

if __name__ == "__main__":
    main()
