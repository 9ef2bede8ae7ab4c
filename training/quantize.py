"""Stage 2: semantic quantisation of the fused item vectors into collision-free semantic IDs.

Reads `INJ/fused.safetensors` (`embeddings` `(num_items, dim)`, item-index order) and the prepared items dataset,
normalises the vectors (`--input_norm`), fits the quantiser named by `--method` (one file each in
`training/quantizers/`: `rqvae`, an RQ-VAE; `rkmeans`, residual k-means) to give every item `num_codebooks` residual
codes of `codebook_size` values, and appends the disambiguation level (`training/semantic_ids.py`) so every item's
tuple is unique. Writes into `--output_dir`: a `SemanticIdTokenizer` folder with `num_codebooks + 1` levels; the
quantiser for cold-start items (`quantizer.safetensors`, `quantizer_config.json`, `input_normalisation.safetensors`);
`codebook_stats.json`, `code_usage.png` and, for an RQ-VAE, `quantizer_train_log.json`.

    python training/quantize.py --dataset_dir DATA --embeddings INJ/fused.safetensors --output_dir SID
"""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from training.config import parse_args
from training.prepared import load_item_ids, load_items
from training.quantizers import QUANTIZERS, Quantizer
from training.quantizers.normalisation import INPUT_NORMS, normalise_inputs, save_input_normalisation
from training.semantic_ids import codebook_stats, disambiguate, plot_code_usage

METHODS = tuple(QUANTIZERS)


@dataclass
class QuantizeArgs:
    """Arguments of `training/quantize.py` (YAML section `quantize`)."""

    dataset_dir: str = field(default=None, metadata={"help": "prepared dataset folder (holds items/)", "required": True})
    embeddings: str = field(default=None, metadata={"help": "stage 1 output fused.safetensors ('embeddings' (N, dim))", "required": True})
    output_dir: str = field(default=None, metadata={"help": "where the SemanticIdTokenizer folder and stats go", "required": True})
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


SECTION = "quantize"  # its YAML section
ARGUMENT_TYPES = (QuantizeArgs,)


# Input: embeddings.
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


# Quantisation.
def build_quantizer(args: QuantizeArgs, input_dim: int) -> Quantizer:
    """The `--method` quantiser, its settings taken from the `QuantizeArgs` fields of the same names."""
    cls = QUANTIZERS[args.method]
    settings = {name: getattr(args, name) for name in cls.setting_names()}
    return cls(input_dim, args.num_codebooks, args.codebook_size, **settings)


def reconstruction_error(vectors: Tensor, reconstruction: Tensor) -> dict:
    """MSE per coordinate and relative squared error `sum ||x - x_hat||^2 / sum ||x||^2` of `(N, dim)` tensors."""
    error = (vectors - reconstruction).pow(2)
    return {
        "mse": float(error.mean()),
        "relative_squared_error": float(error.sum() / vectors.pow(2).sum().clamp_min(1e-12)),
    }


def load_codebooks(semantic_ids_dir: str | Path) -> Tensor:
    """The residual codebooks `(num_codebooks, codebook_size, dim)` of the quantiser saved in a semantic-IDs folder
    (without the disambiguation level, which has no vectors). RQ-VAE's live in its latent space, rkmeans' in the
    normalised input space."""
    return Quantizer.load(semantic_ids_dir).codebooks.detach()


def quantize(embeddings: Tensor, item_ids: list[str], args: QuantizeArgs, output_dir: Path,
             titles: list[str] | None = None) -> dict:
    """Quantise `embeddings` `(N, dim)` of `item_ids`, write the tokenizer folder (with the items' `titles`, when
    given), quantiser and stats; returns the stats."""
    from tokenization_semantic_id import SemanticIdTokenizer

    start = time.perf_counter()
    embeddings = check_embeddings(embeddings, source=args.embeddings or "embeddings", item_ids=item_ids)
    vectors, norm_stats = normalise_inputs(embeddings, args.input_norm)
    quantizer = build_quantizer(args, embeddings.shape[1])
    train_log = quantizer.fit(vectors, args.seed)
    fit_seconds = time.perf_counter() - start

    quantizer.eval()
    semantic_codes = quantizer.encode(vectors)  # (N, num_codebooks)
    reconstruction = quantizer.decode(semantic_codes)  # (N, dim)
    final_codes = disambiguate(semantic_codes, args.codebook_size, item_ids)  # (N, num_codebooks + 1)

    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = SemanticIdTokenizer.from_codes(item_ids, final_codes, args.codebook_size, max_len=args.max_len,
                                               titles=titles)
    tokenizer.save_pretrained(str(output_dir))
    quantizer.save(output_dir)
    save_input_normalisation(args.input_norm, norm_stats, output_dir)
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
    (args,) = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    item_ids = load_item_ids(args.dataset_dir)
    embeddings = load_embeddings(args.embeddings, item_ids)
    items = load_items(args.dataset_dir)
    titles = items["title"] if "title" in items.column_names else None
    stats = quantize(embeddings, item_ids, args, Path(args.output_dir), titles)
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
