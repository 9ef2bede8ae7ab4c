"""Stage 2: semantic quantisation of the fused item vectors into collision-free semantic IDs.

Reads `INJ/fused.safetensors` (`embeddings` `(num_items, dim)`, item-index order) and the prepared items dataset,
turns every vector into `num_codebooks` residual codes of `codebook_size` values, appends TIGER's disambiguation
level (Rajput et al., NeurIPS 2023, §3.1: an item's index within the group of items sharing its tuple) so every
item's tuple is unique, and writes a `SemanticIdTokenizer` folder with `num_codebooks + 1` levels, plus
`codebook_stats.json`, `code_usage.png` and the quantiser weights (`quantizer.safetensors`, for cold-start items).

Two methods:
- `rqvae`: RQ-VAE (Zeghidour et al. 2021; Lee et al. 2022) = MLP encoder, residual codebooks
  (vector-quantize-pytorch's `ResidualVQ`: EMA codebooks, k-means initialisation on the whole catalogue,
  dead-code restart from the batch's residuals, commitment loss), MLP decoder; trained with Accelerate.
- `rkmeans`: residual k-means, no encoder: k-means++ then Lloyd at each level, on the previous level's residual.

    python training/quantize.py --dataset_dir DATA --embeddings INJ/fused.safetensors --output_dir SID
"""

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from training.config import parse_args

METHODS = ("rqvae", "rkmeans")
INPUT_NORMS = ("l2", "standard", "none")


@dataclass
class QuantizeArgs:
    """Arguments of `training/quantize.py` (YAML section `quantize`)."""

    dataset_dir: str = field(default="", metadata={"help": "prepared dataset folder (holds items/)"})
    embeddings: str = field(default="", metadata={"help": "stage 1 output fused.safetensors ('embeddings' (N, dim))"})
    output_dir: str = field(default="", metadata={"help": "where the SemanticIdTokenizer folder and stats go"})
    method: str = field(default="rqvae", metadata={"help": f"quantiser: one of {METHODS}"})
    num_codebooks: int = field(
        default=3, metadata={"help": "residual levels; the semantic IDs get one more (disambiguation) level"}
    )
    codebook_size: int = field(default=256, metadata={"help": "codes per level (also bounds the disambiguation level)"})
    input_norm: str = field(
        default="standard",
        metadata={
            "help": f"input normalisation before quantising, one of {INPUT_NORMS}: 'standard' (z-score per column) "
            "removes the direction every vector shares, without which an RQ-VAE on CLIP vectors collapses"
        },
    )
    kmeans_iters: int = field(default=20, metadata={"help": "Lloyd iterations of each k-means (init or rkmeans level)"})
    hidden_sizes: list[int] = field(
        default_factory=lambda: [256, 128], metadata={"help": "rqvae: encoder hidden sizes (decoder mirrors them)"}
    )
    latent_dim: int = field(default=32, metadata={"help": "rqvae: dimension of the quantised latent"})
    warmup_epochs: int = field(
        default=5, metadata={"help": "rqvae: auto-encoder epochs without quantisation before the k-means init"}
    )
    epochs: int = field(default=30, metadata={"help": "rqvae: passes over the catalogue with quantisation"})
    batch_size: int = field(default=1024, metadata={"help": "rqvae: items per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "rqvae: AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "rqvae: AdamW weight decay"})
    commitment_weight: float = field(default=0.25, metadata={"help": "rqvae: weight of the commitment loss"})
    ema_decay: float = field(default=0.95, metadata={"help": "rqvae: EMA decay of the codebook updates"})
    dead_code_threshold: float = field(
        default=1.0, metadata={"help": "rqvae: restart a code whose EMA usage per batch falls below this"}
    )
    max_len: int = field(default=50, metadata={"help": "tokenizer max_len (history length kept)"})
    seed: int = field(default=42, metadata={"help": "random seed (same seed, same codes)"})
    mixed_precision: str = field(default="no", metadata={"help": "Accelerate mixed precision: no, fp16 or bf16"})

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {self.input_norm!r}")
        for name in ("num_codebooks", "codebook_size", "kmeans_iters", "latent_dim", "epochs", "batch_size", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")


# Input: embeddings and items.
def load_embeddings(path: str | Path, item_ids: list[str] | None = None) -> Tensor:
    """Read `embeddings` `(num_items, dim)` float32 from a stage 1 safetensors file; `check_embeddings` it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    tensors = load_file(str(path))
    if "embeddings" not in tensors:
        raise ValueError(f"{path}: no tensor named 'embeddings' (found: {', '.join(sorted(tensors)) or 'none'})")
    return check_embeddings(tensors["embeddings"], source=str(path), item_ids=item_ids)


def check_embeddings(embeddings: Tensor, source: str = "embeddings", item_ids: list[str] | None = None) -> Tensor:
    """Validate `(num_items, dim)` vectors (2-D, finite, one row per item) and return them as float32."""
    if embeddings.ndim != 2:
        raise ValueError(f"{source}: embeddings must be 2-D (num_items, dim), got shape {tuple(embeddings.shape)}")
    if item_ids is not None and embeddings.shape[0] != len(item_ids):
        raise ValueError(
            f"{source}: {embeddings.shape[0]} embedding rows but the items dataset has {len(item_ids)} items; "
            "rows must follow the item index order"
        )
    embeddings = embeddings.float()
    bad_rows = (~torch.isfinite(embeddings)).any(dim=1).nonzero().flatten().tolist()
    if bad_rows:
        named = [f"{r} ({item_ids[r]!r})" if item_ids is not None else str(r) for r in bad_rows[:5]]
        raise ValueError(
            f"{source}: {len(bad_rows)} embedding row(s) hold NaN or inf, e.g. row {', '.join(named)}"
        )
    return embeddings


def load_item_ids(dataset_dir: str | Path) -> list[str]:
    """Item ids of the prepared dataset's `items/` (docs/interfaces.md §1), in item-index order, checked unique."""
    from datasets import load_from_disk

    items_dir = Path(dataset_dir) / "items"
    if not items_dir.is_dir():
        raise FileNotFoundError(f"no items dataset at {items_dir} (run training/prepare_data.py first)")
    item_ids = [str(i) for i in load_from_disk(str(items_dir))["item_id"]]
    seen = {}
    for index, item_id in enumerate(item_ids):
        if item_id in seen:
            raise ValueError(f"{items_dir}: item id {item_id!r} appears at rows {seen[item_id]} and {index}")
        seen[item_id] = index
    return item_ids


def normalise_inputs(embeddings: Tensor, input_norm: str) -> tuple[Tensor, dict[str, Tensor]]:
    """`(N, dim)` -> `(N, dim)` unit-length rows (`l2`), z-scored columns (`standard`) or as is (`none`).

    Also returns the `standard` statistics (`input_mean`, `input_std`, each `(dim,)`) so that new items can be
    normalised the same way; empty for the other modes.
    """
    if input_norm == "l2":
        return F.normalize(embeddings, dim=-1), {}
    if input_norm == "standard":
        mean, std = embeddings.mean(0), embeddings.std(0).clamp_min(1e-6)
        return (embeddings - mean) / std, {"input_mean": mean, "input_std": std}
    return embeddings, {}


# Residual k-means.
def kmeans(vectors: Tensor, num_clusters: int, num_iters: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """k-means++ seeding, then Lloyd; an empty cluster restarts at the point worst served by its centroid.

    Args:
        vectors: `(N, D)` points, `N >= num_clusters`.

    Returns:
        centroids `(num_clusters, D)` and assignments `(N,)` (index of the nearest centroid).
    """
    num_points = vectors.shape[0]
    centroids = vectors.new_empty(num_clusters, vectors.shape[1])
    centroids[0] = vectors[torch.randint(num_points, (1,), generator=generator)]
    nearest = (vectors - centroids[0]).pow(2).sum(1)  # (N,) squared distance to the nearest chosen centroid
    for k in range(1, num_clusters):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)  # all points coincide: uniform
        centroids[k] = vectors[torch.multinomial(weights, 1, generator=generator)]
        nearest = torch.minimum(nearest, (vectors - centroids[k]).pow(2).sum(1))
    for _ in range(num_iters):
        assignments = torch.cdist(vectors, centroids).argmin(1)
        counts = torch.bincount(assignments, minlength=num_clusters)
        sums = vectors.new_zeros(centroids.shape).index_add_(0, assignments, vectors)
        updated = sums / counts.clamp_min(1).unsqueeze(1)
        empty = counts == 0
        if empty.any():
            error = (vectors - centroids[assignments]).pow(2).sum(1)
            updated[empty] = vectors[error.topk(int(empty.sum())).indices]
        centroids = updated
    return centroids, torch.cdist(vectors, centroids).argmin(1)


class ResidualKMeans(nn.Module):
    """Residual k-means: level `l` clusters the residual left by levels `< l`; no encoder, no decoder.

    The codebooks `(num_codebooks, codebook_size, dim)` live in a buffer, so `state_dict` saves them.
    """

    def __init__(self, dim: int, num_codebooks: int, codebook_size: int):
        super().__init__()
        self.register_buffer("codebooks", torch.zeros(num_codebooks, codebook_size, dim))

    def fit(self, vectors: Tensor, num_iters: int, generator: torch.Generator) -> "ResidualKMeans":
        """Fit each level in turn on `vectors` `(N, dim)`."""
        residual = vectors
        for level in tqdm(range(self.codebooks.shape[0]), desc="residual k-means", leave=False):
            centroids, assignments = kmeans(residual, self.codebooks.shape[1], num_iters, generator)
            self.codebooks[level] = centroids
            residual = residual - centroids[assignments]
        return self

    @torch.no_grad()
    def encode(self, vectors: Tensor) -> Tensor:
        """`(N, dim)` -> codes `(N, num_codebooks)` (greedy nearest code per level)."""
        check_input_dim(vectors, self.codebooks.shape[-1])
        residual, codes = vectors, []
        for codebook in self.codebooks:
            level_codes = torch.cdist(residual, codebook).argmin(1)
            residual = residual - codebook[level_codes]
            codes.append(level_codes)
        return torch.stack(codes, dim=1)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Codes `(N, num_codebooks)` -> quantised vectors `(N, dim)`: the sum of each level's codebook vector."""
        return codebook_sum(self.codebooks, codes)

    def reconstruct(self, vectors: Tensor) -> Tensor:
        """`(N, dim)` -> `(N, dim)`: the quantised approximation of `vectors`."""
        return self.decode_codes(self.encode(vectors))


def codebook_sum(codebooks: Tensor, codes: Tensor) -> Tensor:
    """`codebooks` `(L, K, D)`, `codes` `(N, L)` -> `(N, D)` = sum over levels of `codebooks[l, codes[:, l]]`."""
    levels = torch.arange(codebooks.shape[0], device=codes.device)
    return codebooks[levels, codes].sum(dim=1)  # (N, L, D) -> (N, D)


def check_input_dim(vectors: Tensor, dim: int) -> None:
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"the quantiser expects vectors of shape (N, {dim}), got {tuple(vectors.shape)}")


# RQ-VAE.
def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers `sizes[0] -> ... -> sizes[-1]` with SiLU between them (none after the last)."""
    layers = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


@dataclass
class RQVAEOutput:
    """`loss` = `reconstruction_loss` + `commitment_loss`; `codes` `(N, num_codebooks)`; `quantized` `(N, latent_dim)`
    (the sum of the codes' codebook vectors; both `None` without quantisation); `reconstruction` `(N, input_dim)`."""

    loss: Tensor
    reconstruction_loss: Tensor
    commitment_loss: Tensor
    codes: Tensor | None
    quantized: Tensor | None
    reconstruction: Tensor


class RQVAE(nn.Module):
    """Residual-quantised auto-encoder: encoder MLP -> `ResidualVQ` -> decoder MLP (TIGER's semantic-ID quantiser).

    Args:
        input_dim: dimension of the item vectors.
        hidden_sizes: encoder hidden sizes; the decoder mirrors them.
        latent_dim: dimension of the quantised latent.
        num_codebooks, codebook_size: residual levels and codes per level.
        commitment_weight: weight of `||z - sg(q)||^2`; codebooks follow an EMA of their assigned latents
            (van den Oord et al. 2017, appendix), so they need no loss of their own.
        ema_decay: EMA decay of the codebooks.
        kmeans_iters: k-means iterations of the codebook initialisation (on the first batch the quantiser sees;
            `train_rqvae` makes that the whole catalogue after the warm-up).
        dead_code_threshold: a code whose EMA cluster size drops below this restarts at a residual of the batch.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_sizes: list[int],
        latent_dim: int,
        num_codebooks: int,
        codebook_size: int,
        commitment_weight: float = 0.25,
        ema_decay: float = 0.95,
        kmeans_iters: int = 20,
        dead_code_threshold: float = 1.0,
    ):
        from vector_quantize_pytorch import ResidualVQ

        super().__init__()
        self.input_dim = input_dim
        self.encoder = mlp([input_dim, *hidden_sizes, latent_dim])
        self.quantizer = ResidualVQ(
            dim=latent_dim,
            num_quantizers=num_codebooks,
            codebook_size=codebook_size,
            decay=ema_decay,
            kmeans_init=True,
            kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=dead_code_threshold,
            commitment_weight=commitment_weight,
        )
        self.decoder = mlp([latent_dim, *reversed(hidden_sizes), input_dim])

    @property
    def codebooks(self) -> Tensor:
        """`(num_codebooks, codebook_size, latent_dim)`."""
        return self.quantizer.codebooks

    def forward(self, vectors: Tensor, quantize: bool = True) -> RQVAEOutput:
        """`vectors` `(N, input_dim)` -> `RQVAEOutput`. In training mode the codebooks take an EMA step.

        `quantize=False` (the warm-up) skips the quantiser: the latent goes straight to the decoder, and `codes`
        and `quantized` are `None`.
        """
        latent = self.encoder(vectors)  # (N, latent_dim)
        if quantize:
            quantized, codes, commitment = self.quantizer(latent)  # (N, latent_dim), (N, L), (L,)
            reconstruction = self.decoder(quantized)  # (N, input_dim)
            commitment_loss = commitment.sum()
        else:
            quantized, codes = None, None
            reconstruction = self.decoder(latent)
            commitment_loss = latent.new_zeros(())
        reconstruction_loss = (reconstruction - vectors).pow(2).sum(-1).mean()  # squared error per item
        return RQVAEOutput(
            loss=reconstruction_loss + commitment_loss,
            reconstruction_loss=reconstruction_loss,
            commitment_loss=commitment_loss,
            codes=codes,
            quantized=quantized,
            reconstruction=reconstruction,
        )

    @torch.no_grad()
    def encode(self, vectors: Tensor) -> Tensor:
        """`(N, input_dim)` -> codes `(N, num_codebooks)`, with no codebook update."""
        check_input_dim(vectors, self.input_dim)
        was_training = self.training
        self.eval()
        codes = self(vectors).codes
        self.train(was_training)
        return codes

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Codes `(N, num_codebooks)` -> quantised latents `(N, latent_dim)` (the sum of the codebook vectors)."""
        return codebook_sum(self.codebooks, codes)

    def reconstruct(self, vectors: Tensor) -> Tensor:
        """`(N, input_dim)` -> decoder output `(N, input_dim)` through the codes."""
        return self.decoder(self.decode_codes(self.encode(vectors)))


def train_rqvae(vectors: Tensor, args: QuantizeArgs) -> tuple[RQVAE, list[dict]]:
    """Train an `RQVAE` on `vectors` `(N, dim)` with Accelerate; returns the unwrapped model and a per-epoch log.

    Three phases: (1) `warmup_epochs` of plain auto-encoding, so the latents carry the data's structure before any
    code is placed (a fresh encoder maps every item to nearly the same latent); (2) k-means initialisation of every
    level on the latents of the whole catalogue; (3) `epochs` of RQ-VAE training (EMA codebooks, dead-code restart).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader, TensorDataset

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    model = RQVAE(
        vectors.shape[1],
        args.hidden_sizes,
        args.latent_dim,
        args.num_codebooks,
        args.codebook_size,
        commitment_weight=args.commitment_weight,
        ema_decay=args.ema_decay,
        kmeans_iters=args.kmeans_iters,
        dead_code_threshold=args.dead_code_threshold,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    loader = DataLoader(
        TensorDataset(vectors),
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    unwrapped = accelerator.unwrap_model(model)
    model.train()

    log = []
    progress = tqdm(
        range(args.warmup_epochs + args.epochs), desc="rqvae", disable=not accelerator.is_local_main_process
    )
    for epoch in progress:
        warmup = epoch < args.warmup_epochs
        if epoch == args.warmup_epochs:
            with torch.no_grad():  # k-means initialisation on the whole catalogue (ResidualVQ's first call)
                unwrapped(vectors.to(accelerator.device))
        totals = {"loss": 0.0, "reconstruction_loss": 0.0, "commitment_loss": 0.0}
        seen = 0
        for (batch,) in loader:
            output = model(batch, quantize=not warmup)
            accelerator.backward(output.loss)
            optimizer.step()
            optimizer.zero_grad()
            for key in totals:
                totals[key] += getattr(output, key).item() * batch.shape[0]
            seen += batch.shape[0]
        if not all(math.isfinite(v) for v in totals.values()):
            raise ValueError(f"rqvae: non-finite loss at epoch {epoch}: {totals}; lower --learning_rate")
        entry = {"epoch": epoch, "warmup": warmup, **{k: v / seen for k, v in totals.items()}}
        log.append(entry)
        progress.set_postfix(loss=f"{entry['loss']:.4f}", recon=f"{entry['reconstruction_loss']:.4f}")
    return unwrapped.cpu(), log  # codes and statistics are computed on the CPU


# Disambiguation and statistics.
def tuple_groups(codes: Tensor) -> tuple[Tensor, Tensor]:
    """Group identical rows of `codes` `(N, L)`: returns group index `(N,)` and group sizes `(num_groups,)`."""
    _, group, sizes = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    return group, sizes


def disambiguate(codes: Tensor, codebook_size: int, item_ids: list[str] | None = None) -> Tensor:
    """Append TIGER's disambiguation level: each item's rank (item-index order) among items sharing its tuple.

    Args:
        codes: `(N, L)` semantic codes.

    Returns:
        `(N, L + 1)` codes whose rows are all distinct.
    """
    group, sizes = tuple_groups(codes)
    largest = int(sizes.max())
    if largest > codebook_size:
        members = (group == int(sizes.argmax())).nonzero().flatten()
        named = [item_ids[i] for i in members[:3].tolist()] if item_ids is not None else members[:3].tolist()
        raise ValueError(
            f"disambiguation: {largest} items share the code tuple {codes[members[0]].tolist()} (e.g. items "
            f"{', '.join(map(repr, named))}), more than codebook_size={codebook_size} can tell apart; "
            "raise --codebook_size or --num_codebooks"
        )
    extra = torch.zeros(codes.shape[0], dtype=torch.long)
    next_free = torch.zeros(len(sizes), dtype=torch.long)
    for index, g in enumerate(group.tolist()):
        extra[index] = next_free[g]
        next_free[g] += 1
    return torch.cat([codes, extra.unsqueeze(1)], dim=1)


def level_stats(level_codes: Tensor, codebook_size: int) -> dict:
    """One level's `(N,)` codes -> codes used, utilisation (used / size), perplexity (exp of the usage entropy)."""
    counts = torch.bincount(level_codes, minlength=codebook_size).double()
    probs = counts[counts > 0] / counts.sum()
    return {
        "codes_used": int((counts > 0).sum()),
        "utilisation": float((counts > 0).sum() / codebook_size),
        "perplexity": float(torch.exp(-(probs * probs.log()).sum())),
        "largest_code_share": float(counts.max() / counts.sum()),
    }


def collision_stats(codes: Tensor) -> dict:
    """Collisions of the `(N, L)` semantic tuples before disambiguation."""
    _, sizes = tuple_groups(codes)
    num_items = codes.shape[0]
    return {
        "unique_tuples": len(sizes),
        "collision_rate": 1.0 - len(sizes) / num_items,  # share of items that need a nonzero disambiguation code
        "colliding_items": int(sizes[sizes > 1].sum()),  # items sharing their full tuple with another item
        "colliding_groups": int((sizes > 1).sum()),
        "max_group_size": int(sizes.max()),
    }


def codebook_stats(semantic_codes: Tensor, final_codes: Tensor, codebook_size: int) -> dict:
    """Per-level usage (semantic levels, then the disambiguation level), distinct prefixes and collisions."""
    levels = []
    for level in range(final_codes.shape[1]):
        entry = {"level": level, "disambiguation": level == semantic_codes.shape[1]}
        entry.update(level_stats(final_codes[:, level], codebook_size))
        entry["distinct_prefixes"] = len(tuple_groups(final_codes[:, : level + 1])[1])
        levels.append(entry)
    return {"levels": levels, "collisions_before_disambiguation": collision_stats(semantic_codes)}


def plot_code_usage(final_codes: Tensor, codebook_size: int, path: Path) -> None:
    """Bar chart of each level's code counts, most used first, one panel per level (PNG at `path`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_levels = final_codes.shape[1]
    fig, axes = plt.subplots(1, num_levels, figsize=(4 * num_levels, 3), squeeze=False)
    for level, ax in enumerate(axes[0]):
        counts = torch.bincount(final_codes[:, level], minlength=codebook_size)
        stats = level_stats(final_codes[:, level], codebook_size)
        ax.bar(range(codebook_size), counts.sort(descending=True).values.numpy(), width=1.0)
        kind = "disambiguation" if level == num_levels - 1 else "level"
        ax.set_title(f"{kind} {level}: {stats['codes_used']} used, ppl {stats['perplexity']:.0f}", fontsize=9)
        ax.set_xlabel("code rank")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("items")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reconstruction_error(vectors: Tensor, reconstruction: Tensor) -> dict:
    """MSE per coordinate and relative squared error `sum ||x - x_hat||^2 / sum ||x||^2` of `(N, dim)` tensors."""
    error = (vectors - reconstruction).pow(2)
    return {
        "mse": float(error.mean()),
        "relative_squared_error": float(error.sum() / vectors.pow(2).sum().clamp_min(1e-12)),
    }


# Orchestration.
def fit_quantizer(vectors: Tensor, args: QuantizeArgs) -> tuple[nn.Module, list[dict]]:
    """Fit the chosen quantiser on normalised `vectors` `(N, dim)`; returns it (it has `encode`, `decode_codes`,
    `reconstruct`) and the per-epoch log (empty for `rkmeans`)."""
    if args.codebook_size > vectors.shape[0]:
        raise ValueError(
            f"codebook_size={args.codebook_size} is larger than the number of items ({vectors.shape[0]}); "
            "k-means cannot give every code an item: lower --codebook_size"
        )
    if args.method == "rkmeans":
        quantizer = ResidualKMeans(vectors.shape[1], args.num_codebooks, args.codebook_size)
        quantizer.fit(vectors, args.kmeans_iters, torch.Generator().manual_seed(args.seed))
        return quantizer, []
    return train_rqvae(vectors, args)


def load_codebooks(semantic_ids_dir: str | Path) -> Tensor:
    """The residual codebooks `(num_codebooks, codebook_size, dim)` saved by `save_quantizer` in a tokenizer folder
    (without the disambiguation level, which has no vectors). RQ-VAE's live in its latent space, rkmeans' in the
    normalised input space."""
    from safetensors.torch import load_file

    path = Path(semantic_ids_dir) / "quantizer.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the semantic IDs were not written by training/quantize.py")
    state = load_file(str(path))
    if "codebooks" in state:  # rkmeans
        return state["codebooks"]
    levels = sorted(int(k.split(".")[2]) for k in state if k.endswith("._codebook.embed"))
    return torch.stack([state[f"quantizer.layers.{level}._codebook.embed"][0] for level in levels])


def save_quantizer(
    quantizer: nn.Module, norm_stats: dict[str, Tensor], args: QuantizeArgs, input_dim: int, output_dir: Path
) -> None:
    """Write `quantizer.safetensors` (weights + input normalisation) and `quantizer_config.json`, so new items can
    be encoded later."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in quantizer.state_dict().items()}
    state.update({k: v.contiguous() for k, v in norm_stats.items()})
    save_file(state, str(output_dir / "quantizer.safetensors"))
    config = {"input_dim": input_dim, **asdict(args)}
    (output_dir / "quantizer_config.json").write_text(json.dumps(config, indent=2))


def quantize(embeddings: Tensor, item_ids: list[str], args: QuantizeArgs, output_dir: Path) -> dict:
    """Quantise `embeddings` `(N, dim)` of `item_ids`, write the tokenizer folder and stats; returns the stats."""
    from tokenization_semantic_id import SemanticIdTokenizer

    start = time.perf_counter()
    embeddings = check_embeddings(embeddings, source=args.embeddings or "embeddings", item_ids=item_ids)
    vectors, norm_stats = normalise_inputs(embeddings, args.input_norm)
    quantizer, train_log = fit_quantizer(vectors, args)
    fit_seconds = time.perf_counter() - start

    quantizer.eval()
    with torch.no_grad():
        semantic_codes = quantizer.encode(vectors).long()  # (N, num_codebooks)
        reconstruction = quantizer.reconstruct(vectors)  # (N, dim)
    final_codes = disambiguate(semantic_codes, args.codebook_size, item_ids)  # (N, num_codebooks + 1)

    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = SemanticIdTokenizer.from_codes(item_ids, final_codes, args.codebook_size, max_len=args.max_len)
    tokenizer.save_pretrained(str(output_dir))
    save_quantizer(quantizer, norm_stats, args, embeddings.shape[1], output_dir)
    plot_code_usage(final_codes, args.codebook_size, output_dir / "code_usage.png")

    stats = {
        "method": args.method,
        "num_items": len(item_ids),
        "num_codebooks": final_codes.shape[1],
        "semantic_levels": args.num_codebooks,
        "codebook_size": args.codebook_size,
        **codebook_stats(semantic_codes, final_codes, args.codebook_size),
        "reconstruction": {"space": f"input after '{args.input_norm}' normalisation"}
        | reconstruction_error(vectors, reconstruction),
        "final_train_epoch": train_log[-1] if train_log else None,
        "time_seconds": {"fit": fit_seconds, "total": time.perf_counter() - start},
        "args": asdict(args),
    }
    (output_dir / "codebook_stats.json").write_text(json.dumps(stats, indent=2))
    if train_log:
        (output_dir / "quantizer_train_log.json").write_text(json.dumps(train_log, indent=1))
    return stats


def main(argv=None) -> dict:
    args = parse_args(argv, QuantizeArgs, section="quantize", description=__doc__)[0]
    for name in ("dataset_dir", "embeddings", "output_dir"):
        if not getattr(args, name):
            raise ValueError(f"--{name} is required")
    item_ids = load_item_ids(args.dataset_dir)
    embeddings = load_embeddings(args.embeddings, item_ids)
    stats = quantize(embeddings, item_ids, args, Path(args.output_dir))
    collisions = stats["collisions_before_disambiguation"]
    usage = ", ".join(f"{lv['codes_used']}/{args.codebook_size} (ppl {lv['perplexity']:.1f})" for lv in stats["levels"])
    print(
        f"{stats['num_items']} items -> {args.output_dir}: codes used per level {usage}; "
        f"collision rate {collisions['collision_rate']:.4f} (max group {collisions['max_group_size']}); "
        f"relative reconstruction error {stats['reconstruction']['relative_squared_error']:.4f}; "
        f"{stats['time_seconds']['total']:.1f} s"
    )
    return stats


if __name__ == "__main__":
    main()
