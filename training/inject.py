"""Stage 1 of Q-Bert4Rec: cross-modal semantic injection (docs/method.md §1.1, arXiv 2512.02474).

Each item owns a learnable ID vector `q_i`, the query of a small dynamic cross-modal Transformer:

1. every modality (text, image, structure) is projected by `Linear` + `LayerNorm` into a shared space of size `dim`;
2. inside a modality, its vectors (tokens, patches, attributes) are pooled by `softmax(cos(q_i, x_j) / tau)`, with
   masked vectors excluded; an item whose mask row is all False lacks the modality and its slot is masked out of
   attention, never zero-filled into it;
3. a stack of cross-attention blocks (query = the item state, memory = pooled modality vectors [+ the ID vector])
   proposes a candidate state `c = Block(h)`; the per-item gate `g = sigmoid(MLP(c))` scales the update,
   `h <- h + g * (c - h)`; at inference an item stops after the first layer whose gate falls below
   `gate_threshold` (its depth is recorded); training uses every layer.

Loss: a multi-view InfoNCE (fused vector against each available view: ID, text, image, structure; in-batch
negatives) plus a behaviour InfoNCE that pulls together items adjacent in TRAIN sequences (optionally a cost on the
mean gate). ID dropout replaces some items' ID vectors by one shared unknown-item vector during training, so the
fused vector is also reachable from content alone: that is how items with no trained ID (cold start) are embedded.

Command line:
    python training/inject.py --dataset_dir DATA --features_dir FEAT --output_dir OUT [--config configs/x.yaml]
reads `DATA/items`, `DATA/sequences` (train split only) and `FEAT/<modality>.safetensors` (docs/interfaces.md §2)
and writes `OUT/fused.safetensors` (`embeddings` (N, dim) float32, L2-normalised; `depth` (N,) int64),
`OUT/train_log.json`, `OUT/depth_histogram.{json,png}`, `OUT/inject_args.json`, the final weights
`OUT/model.safetensors` (`load_injector(OUT)`; `embed_items(..., new_items=True)` embeds items with no trained ID
vector from their content) and `OUT/checkpoints/epoch_<k>/`.
"""

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

if __package__ in (None, ""):  # `python training/inject.py` without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from quantization_qbert4rec import MODALITIES, CrossModalInjector, InjectorOutput
from training.config import parse_args
from training.loop import find_checkpoint, prune_checkpoints, save_checkpoint
from training.prepared import load_item_ids, load_sequences

logger = logging.getLogger(__name__)


@dataclass
class InjectArgs:
    """Arguments of `training/inject.py` (YAML section `inject`)."""

    dataset_dir: str = field(default=None, metadata={"help": "prepared dataset folder (items/, sequences/)", "required": True})
    features_dir: str = field(default="", metadata={"help": "folder of <modality>.safetensors (default DATA/features)"})
    output_dir: str = field(default=None, metadata={"help": "where fused.safetensors, logs and checkpoints go", "required": True})
    use_text: bool = field(default=True, metadata={"help": "use the text modality when its file exists"})
    use_image: bool = field(default=True, metadata={"help": "use the image modality when its file exists"})
    use_structure: bool = field(default=True, metadata={"help": "use the structure modality when its file exists"})
    allow_id_only: bool = field(
        default=False,
        metadata={"help": "let items with no modality at all rely on their ID vector (default: error naming them)"},
    )
    dim: int = field(default=128, metadata={"help": "shared space and fused vector size"})
    num_layers: int = field(default=3, metadata={"help": "cross-attention blocks (maximum depth)"})
    num_heads: int = field(default=4, metadata={"help": "attention heads (must divide dim)"})
    ffn_dim: int = field(default=256, metadata={"help": "hidden size of each block's feed-forward network"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in attention and feed-forward"})
    pool_temperature: float = field(default=0.1, metadata={"help": "tau of the softmax(cos(q, x) / tau) pooling"})
    id_in_memory: bool = field(default=True, metadata={"help": "add the ID vector to the attention memory"})
    use_gate: bool = field(default=True, metadata={"help": "per-item gates and early stop (False: fixed depth)"})
    gate_threshold: float = field(
        default=0.25,
        metadata={"help": "at inference, an item stops after the first layer whose gate is below this (0.5 stopped "
                  "almost every Beauty item after layer 1 and cost a third of its next-item recall)"},
    )
    gate_init_bias: float = field(default=2.0, metadata={"help": "initial gate bias (sigmoid(2) = 0.88)"})
    gate_cost: float = field(default=0.0, metadata={"help": "weight of the mean gate in the loss (a depth cost)"})
    id_dropout: float = field(
        default=0.2,
        metadata={"help": "share of items per step whose ID vector is replaced by the shared unknown-item vector, so "
                  "that the fused vector is reachable from content alone (how new items are embedded)"},
    )
    temperature: float = field(default=0.1, metadata={"help": "InfoNCE temperature"})
    behaviour_weight: float = field(default=1.0, metadata={"help": "weight of the adjacent-items InfoNCE"})
    batch_size: int = field(default=256, metadata={"help": "items per step for the multi-view loss"})
    behaviour_batch_size: int = field(default=256, metadata={"help": "adjacent pairs per step"})
    num_epochs: int = field(default=30, metadata={"help": "passes over the items"})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps with linear warmup (then cosine)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    num_threads: int = field(
        default=1,
        metadata={"help": "torch CPU threads while this stage runs (0: torch's default). The matrices are small: on "
                  "a busy 2-core machine Scientific took 29 s with 1 thread and 174 s with 2"},
    )
    seed: int = field(default=42, metadata={"help": "random seed (same seed, same embeddings)"})
    checkpoints_to_keep: int = field(default=2, metadata={"help": "newest epoch checkpoints kept in OUT/checkpoints"})
    resume_from_checkpoint: str = field(
        default="", metadata={"help": "OUT/checkpoints/epoch_<k> folder, or 'latest' for the newest one in OUT"}
    )


SECTION = "inject"  # its YAML section
ARGUMENT_TYPES = (InjectArgs,)


# ----------------------------------------------------------------------------------------------------------------
# Inputs: items, train sequences, modality features


def load_items_and_train_sequences(dataset_dir: str | Path) -> tuple[list[str], list[list[str]]]:
    """Item ids in item-index order and the `train` split's sequences of a prepared dataset.

    Only the train split is used: validation and test targets never reach stage 1.
    """
    return load_item_ids(dataset_dir), list(load_sequences(dataset_dir)["train"]["item_ids"])


def adjacent_pairs(train_sequences: list[list[str]], item_ids: list[str]) -> torch.Tensor:
    """Consecutive item pairs `(a, b)` with `a != b` from training sequences, as item indices.

    Returns:
        `(num_pairs, 2)` long tensor, one row per occurrence (frequent transitions weigh more).
    """
    item_index = {item_id: index for index, item_id in enumerate(item_ids)}
    pairs = []
    for row, sequence in enumerate(train_sequences):
        for item_id in sequence:
            if item_id not in item_index:
                raise ValueError(f"train sequence {row}: item {item_id!r} is not in the items dataset")
        indices = [item_index[item_id] for item_id in sequence]
        pairs.extend((a, b) for a, b in zip(indices, indices[1:]) if a != b)
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def read_modality_features(path: str | Path, item_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and check one `FEAT/<modality>.safetensors` file (docs/interfaces.md §2).

    Returns:
        `features` float32 `(num_items, num_vectors, dim)` and `mask` bool `(num_items, num_vectors)`.
    """
    path = Path(path)
    tensors = load_file(str(path))
    for key in ("features", "mask"):
        if key not in tensors:
            raise ValueError(f"{path}: missing tensor '{key}' (found {sorted(tensors)})")
    features, mask = tensors["features"], tensors["mask"]
    if features.ndim != 3:
        raise ValueError(f"{path}: 'features' must be (num_items, num_vectors, dim), got shape {tuple(features.shape)}")
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(features.shape[:2]):
        raise ValueError(
            f"{path}: 'mask' must be bool of shape {tuple(features.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}"
        )
    if features.shape[0] != len(item_ids):
        raise ValueError(f"{path}: {features.shape[0]} feature rows but the items dataset has {len(item_ids)} items")
    features = features.float()
    bad = ~torch.isfinite(features).all(dim=-1) & mask
    if bad.any():
        rows = bad.any(dim=1).nonzero().flatten()
        names = ", ".join(repr(item_ids[i]) for i in rows[:5].tolist())
        raise ValueError(f"{path}: NaN or inf in the features of {len(rows)} item(s), e.g. {names}")
    return features, mask


def load_modalities(
    features_dir: str | Path, modalities: list[str], item_ids: list[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Read every requested modality whose file exists; a requested modality without a file is skipped (logged)."""
    features_dir = Path(features_dir)
    loaded = {}
    for modality in modalities:
        path = features_dir / f"{modality}.safetensors"
        if path.is_file():
            loaded[modality] = read_modality_features(path, item_ids)
        else:
            logger.info("no %s: the %s modality is not used", path, modality)
    if not loaded:
        raise ValueError(f"{features_dir}: none of {', '.join(f'{m}.safetensors' for m in modalities)} found")
    return loaded


def check_item_coverage(
    modalities: dict[str, tuple[torch.Tensor, torch.Tensor]], item_ids: list[str], allow_id_only: bool
) -> torch.Tensor:
    """Items with at least one modality vector; raise naming the others unless `allow_id_only`.

    Returns:
        `(num_items,)` bool tensor.
    """
    covered = torch.zeros(len(item_ids), dtype=torch.bool)
    for _, mask in modalities.values():
        covered |= mask.any(dim=1)
    if not allow_id_only and not covered.all():
        missing = (~covered).nonzero().flatten()
        names = ", ".join(repr(item_ids[i]) for i in missing[:5].tolist())
        raise ValueError(
            f"{len(missing)} item(s) have no {'/'.join(modalities)} features at all, e.g. {names}; "
            "fix the features or pass --allow_id_only to let them rely on their ID vector"
        )
    return covered


# ----------------------------------------------------------------------------------------------------------------
# Losses (the model, `CrossModalInjector`, ships with every checkpoint: quantization_qbert4rec.py)


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    temperature: float,
    anchor_ids: torch.Tensor | None = None,
    positive_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives (cosine / temperature).

    Args:
        anchors, positives: `(B, dim)`, row j of each is a positive pair.
        anchor_ids, positive_ids: `(B,)` item indices; a negative that is the same item as the positive is ignored.
    """
    if anchors.shape[0] == 0:
        return anchors.sum() * 0.0
    logits = F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).T / temperature  # (B, B)
    target = torch.arange(anchors.shape[0], device=anchors.device)
    eye = torch.eye(anchors.shape[0], dtype=torch.bool, device=anchors.device)

    def duplicates(ids):
        if ids is None:
            return torch.zeros_like(eye)
        return (ids[:, None] == ids[None, :]) & ~eye

    forward = F.cross_entropy(logits.masked_fill(duplicates(positive_ids), float("-inf")), target)
    backward = F.cross_entropy(logits.T.masked_fill(duplicates(anchor_ids), float("-inf")), target)
    return (forward + backward) / 2


def multi_view_info_nce(output: InjectorOutput, temperature: float) -> torch.Tensor:
    """Mean over views of InfoNCE(fused, view), each over the items that have the view."""
    losses = []
    for view in range(output.views.shape[1]):
        has_view = output.view_mask[:, view]
        if has_view.sum() >= 2:
            losses.append(info_nce(output.fused[has_view], output.views[has_view, view], temperature))
    return torch.stack(losses).mean() if losses else output.fused.sum() * 0.0


# ----------------------------------------------------------------------------------------------------------------
# Training


def gather_features(
    modalities: dict[str, tuple[torch.Tensor, torch.Tensor]], item_indices: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Rows of every modality for `item_indices` `(B,)` -> (`{m: (B, V, D)}`, `{m: (B, V)}`)."""
    features = {m: f[item_indices] for m, (f, _) in modalities.items()}
    masks = {m: mask[item_indices] for m, (_, mask) in modalities.items()}
    return features, masks


def build_model(args: InjectArgs, num_items: int, modality_dims: dict[str, int]) -> CrossModalInjector:
    return CrossModalInjector(
        num_items,
        modality_dims,
        dim=args.dim,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        ffn_dim=args.ffn_dim,
        dropout=args.dropout,
        pool_temperature=args.pool_temperature,
        id_in_memory=args.id_in_memory,
        use_gate=args.use_gate,
        gate_threshold=args.gate_threshold,
        gate_init_bias=args.gate_init_bias,
    )


def training_step(model, modalities, item_indices, pairs, args: InjectArgs) -> tuple[torch.Tensor, dict]:
    """One forward over the item batch `(B,)` and the pair batch `(P, 2)`; returns the loss and its parts."""
    num_items, num_pairs = item_indices.shape[0], pairs.shape[0]
    indices = torch.cat([item_indices, pairs[:, 0], pairs[:, 1]])
    id_known = torch.rand(indices.shape[0], device=indices.device) >= args.id_dropout
    output = model(indices, *gather_features(modalities, indices), id_known=id_known)
    view_loss = multi_view_info_nce(output.rows(slice(0, num_items)), args.temperature)
    behaviour_loss = output.fused.sum() * 0.0
    if num_pairs > 1:
        left = output.fused[num_items : num_items + num_pairs]
        right = output.fused[num_items + num_pairs :]
        behaviour_loss = info_nce(left, right, args.temperature, pairs[:, 0], pairs[:, 1])
    gate_mean = output.gates.mean()
    loss = view_loss + args.behaviour_weight * behaviour_loss
    if args.use_gate:
        loss = loss + args.gate_cost * gate_mean
    parts = {"view_loss": view_loss.item(), "behaviour_loss": behaviour_loss.item(), "gate_mean": gate_mean.item()}
    return loss, parts


@torch.no_grad()
def embed_items(
    model: CrossModalInjector, modalities, batch_size: int = 1024, new_items: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode fused vectors of every row of `modalities`.

    Args:
        modalities: `{modality: (features (N, V, D), mask (N, V))}` rows in item-index order.
        new_items: embed the rows as items without a trained ID vector (cold start: content only); the rows need not
            be items of the training catalogue then.

    Returns:
        `embeddings` float32 `(num_items, dim)` L2-normalised, `depth` long `(num_items,)`.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    num_rows = next(iter(modalities.values()))[0].shape[0]
    embeddings, depths = [], []
    for start in range(0, num_rows, batch_size):
        rows = torch.arange(start, min(start + batch_size, num_rows), device=device)
        id_known = torch.full_like(rows, not new_items, dtype=torch.bool)
        ids = rows if not new_items else torch.zeros_like(rows)
        output = model(ids, *gather_features(modalities, rows), id_known=id_known)
        embeddings.append(F.normalize(output.fused, dim=-1).float().cpu())
        depths.append(output.depth.cpu())
    model.train(was_training)
    return torch.cat(embeddings), torch.cat(depths)


def sample_pairs(pairs: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` rows of `pairs` `(P, 2)` in a permutation fixed by `seed` (cycled when `P < count`)."""
    if pairs.shape[0] == 0:
        return pairs
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(pairs.shape[0], generator=generator) for _ in range(-(-count // pairs.shape[0]))])
    return pairs[order[:count]]


def resolve_checkpoint(args: InjectArgs) -> Path | None:
    """The checkpoint folder to resume from, or None."""
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        return find_checkpoint(args.output_dir, "latest")
    path = Path(args.resume_from_checkpoint)
    if not (path / "train_log.json").is_file():
        raise FileNotFoundError(f"{path} is not an inject checkpoint (no train_log.json)")
    return path


def write_depth_histogram(depth: torch.Tensor, num_layers: int, output_dir: Path) -> dict[int, int]:
    """Count items per depth `1..num_layers` into `depth_histogram.json` and `.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = torch.bincount(depth, minlength=num_layers + 1)
    histogram = {d: int(counts[d]) for d in range(1, num_layers + 1)}
    (output_dir / "depth_histogram.json").write_text(json.dumps(histogram, indent=2))
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(list(histogram), list(histogram.values()))
    ax.set_xlabel("depth (layers used)")
    ax.set_ylabel("items")
    ax.set_xticks(list(histogram))
    fig.tight_layout()
    fig.savefig(output_dir / "depth_histogram.png", dpi=100)
    plt.close(fig)
    return histogram


def check_run_matches(output_dir: Path, description: dict) -> None:
    """On resume, the features and sizes must match the run that wrote the checkpoint."""
    path = output_dir / "inject_args.json"
    if not path.is_file():
        return
    previous = json.loads(path.read_text())
    for key in ("num_items", "modality_dims", "dim", "num_layers", "num_heads", "ffn_dim", "use_gate"):
        if previous.get(key) != description.get(key):
            raise ValueError(
                f"{path}: cannot resume, {key} was {previous.get(key)} and is now {description.get(key)}"
            )


def load_injector(output_dir: str | Path) -> CrossModalInjector:
    """Rebuild the trained injector from `OUT/inject_args.json` and `OUT/model.safetensors` (e.g. for new items)."""
    output_dir = Path(output_dir)
    description = json.loads((output_dir / "inject_args.json").read_text())
    args = InjectArgs(**{f.name: description[f.name] for f in fields(InjectArgs) if f.name in description})
    model = build_model(args, description["num_items"], description["modality_dims"])
    model.load_state_dict(load_file(str(output_dir / "model.safetensors")))
    return model.eval()


def train_epoch(accelerator, model, optimizer, scheduler, loader, modalities, pairs, epoch, args: InjectArgs) -> dict:
    """One pass over the items (with as many adjacent-pair batches); returns the epoch's mean losses."""
    model.train()
    loader.set_epoch(epoch)
    seed = args.seed * 100_003 + epoch * 101 + accelerator.process_index
    epoch_pairs = sample_pairs(pairs, len(loader) * args.behaviour_batch_size, seed)
    totals, started = {"loss": 0.0, "view_loss": 0.0, "behaviour_loss": 0.0, "gate_mean": 0.0}, time.time()
    description = f"inject epoch {epoch + 1}/{args.num_epochs}"
    progress = tqdm(loader, desc=description, disable=not accelerator.is_local_main_process)
    for step, (item_indices,) in enumerate(progress):
        step_pairs = epoch_pairs[step * args.behaviour_batch_size : (step + 1) * args.behaviour_batch_size]
        loss, parts = training_step(model, modalities, item_indices, step_pairs, args)
        if not torch.isfinite(loss):
            raise ValueError(f"inject loss became {loss.item()} at epoch {epoch + 1} step {step}: {parts}")
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        for key, value in {"loss": loss.item(), **parts}.items():
            totals[key] += value
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # shown at the next update
    means = {key: value / len(loader) for key, value in totals.items()}
    return {"epoch": epoch + 1, **means, "seconds": time.time() - started}


def save_inject_checkpoint(accelerator, output_dir: Path, log: list[dict], keep: int) -> None:
    """`save_state` into OUT/checkpoints/epoch_<k> (atomically, with the log so far); keep the newest `keep`."""
    path = output_dir / "checkpoints" / f"epoch_{len(log)}"
    save_checkpoint(accelerator, path)
    if accelerator.is_main_process:
        (path / "train_log.json").write_text(json.dumps(log, indent=2))
        prune_checkpoints(str(output_dir), max(keep, 1))


def main(argv=None) -> dict:
    """Parse the command line / config and run stage 1 (torch's thread count is restored afterwards)."""
    (args,) = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    threads = torch.get_num_threads()
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    try:
        return inject(args)
    finally:
        torch.set_num_threads(threads)


def inject(args: InjectArgs) -> dict:
    """Train the injector and write the stage-1 outputs; returns embeddings, depth, log and the model."""
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed))
    set_seed(args.seed)

    # Inputs
    item_ids, train_sequences = load_items_and_train_sequences(args.dataset_dir)
    pairs = adjacent_pairs(train_sequences, item_ids)
    wanted = [m for m, on in zip(MODALITIES, (args.use_text, args.use_image, args.use_structure)) if on]
    if not wanted:
        raise ValueError("use_text, use_image and use_structure are all off: nothing to inject")
    modalities = load_modalities(args.features_dir or Path(args.dataset_dir) / "features", wanted, item_ids)
    covered = check_item_coverage(modalities, item_ids, args.allow_id_only)
    description = {
        **asdict(args),
        "num_items": len(item_ids),
        "num_pairs": pairs.shape[0],
        "items_id_only": int((~covered).sum()),
        "modality_dims": {m: f.shape[-1] for m, (f, _) in modalities.items()},
    }
    resume_from = resolve_checkpoint(args)
    if resume_from is not None:
        check_run_matches(output_dir, description)
    logger.info(
        "%d items, %d train pairs, modalities %s", len(item_ids), pairs.shape[0], description["modality_dims"]
    )

    # Model, optimiser, data
    model = build_model(args, len(item_ids), description["modality_dims"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.arange(len(item_ids))), batch_size=args.batch_size, shuffle=True
    )
    total_steps = args.num_epochs * len(loader)  # counted before sharding: the prepared scheduler steps per process
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    modalities = {m: (f.to(accelerator.device), k.to(accelerator.device)) for m, (f, k) in modalities.items()}
    pairs = pairs.to(accelerator.device)

    log, start_epoch = [], 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        log = json.loads((resume_from / "train_log.json").read_text())
        start_epoch = len(log)
        accelerator.print(f"resumed from {resume_from} after epoch {start_epoch}")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "inject_args.json").write_text(json.dumps(description, indent=2))

    # Training
    for epoch in range(start_epoch, args.num_epochs):
        log.append(train_epoch(accelerator, model, optimizer, scheduler, loader, modalities, pairs, epoch, args))
        accelerator.print(json.dumps(log[-1]))
        save_inject_checkpoint(accelerator, output_dir, log, args.checkpoints_to_keep)

    # Outputs
    model = accelerator.unwrap_model(model)
    embeddings, depth = embed_items(model, modalities)
    result = {"embeddings": embeddings, "depth": depth, "log": log, "model": model}
    if accelerator.is_main_process:
        fused = {"embeddings": embeddings.contiguous(), "depth": depth.contiguous()}
        save_file(fused, str(output_dir / "fused.safetensors"))
        weights = {name: tensor.contiguous().cpu() for name, tensor in model.state_dict().items()}
        save_file(weights, str(output_dir / "model.safetensors"))
        (output_dir / "train_log.json").write_text(json.dumps(log, indent=2))
        result["depth_histogram"] = write_depth_histogram(depth, args.num_layers, output_dir)
        accelerator.print(f"depth histogram {result['depth_histogram']}; wrote {output_dir / 'fused.safetensors'}")
    accelerator.wait_for_everyone()
    return result


if __name__ == "__main__":
    main()
