"""Stage 3a: multi-mask pretraining of Q-Bert4Rec on semantic-ID sequences.

    accelerate launch training/pretrain.py --config configs/beauty.yaml \
        --dataset_dir outputs/beauty/data --semantic_ids_dir outputs/beauty/semantic_ids --output_dir outputs/beauty/pretrain

Each training sequence is masked by a strategy drawn per sequence (cloze, span, tail, multi-region; see
`training/masking.py`); the model predicts every level's code at masked positions. With `--code_embedding_init
codebooks` the code embeddings start from stage 2's codebook vectors instead of at random. Validation ranks all
items for each user's validation target; the best epoch by NDCG@10 is saved to `OUTPUT_DIR/final` (model + tokenizer).
Cross-domain: `--extra_dataset_dirs` / `--extra_semantic_ids_dirs` add other datasets' training sequences (each
with its own semantic IDs; the code vocabulary is shared); validation uses the main dataset.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import concatenate_datasets

if __package__ in (None, ""):  # `python training/pretrain.py` / `accelerate launch training/pretrain.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration_qbert4rec import QBert4RecConfig
from modeling_qbert4rec import QBert4RecForMaskedItemModeling
from tokenization_semantic_id import SemanticIdTokenizer
from training.config import parse_args
from training.loop import BEST, LoopArgs, make_accelerator, save_final, train
from training.masking import HistoryCollator, MultiMaskCollator
from training.quantize import load_codebooks
from training.sequences import encode_split, eval_loader, load_sequences


@dataclass
class ModelArgs:
    """Architecture of the model created for pretraining (see `QBert4RecConfig`)."""

    hidden_size: int = field(default=64, metadata={"help": "encoder width"})
    num_hidden_layers: int = field(default=2, metadata={"help": "Transformer layers"})
    num_attention_heads: int = field(default=2, metadata={"help": "attention heads"})
    intermediate_size: int = field(default=256, metadata={"help": "feed-forward width"})
    hidden_dropout_prob: float = field(default=0.2, metadata={"help": "dropout on embeddings and residuals"})
    attention_probs_dropout_prob: float = field(default=0.2, metadata={"help": "dropout on attention weights"})
    max_len: int = field(default=50, metadata={"help": "positions per sequence (history + [MASK])"})
    use_item_embedding: bool = field(default=False, metadata={"help": "add an item-ID embedding to the codes"})
    score_item_embedding: bool = field(
        default=False, metadata={"help": "also score the catalogue with the item-ID embedding (QBert4RecConfig)"}
    )
    loss_type: str = field(default="codes+items", metadata={"help": "codes, items or codes+items (QBert4RecConfig)"})
    seen_item_bias: bool = field(default=False, metadata={"help": "learn a logit for history items (QBert4RecConfig)"})


@dataclass
class PretrainArgs:
    dataset_dir: str = field(default=None, metadata={"help": "prepared dataset folder (prepare_data.py)"})
    semantic_ids_dir: str = field(default=None, metadata={"help": "SemanticIdTokenizer folder (quantize.py)"})
    extra_dataset_dirs: str = field(default="", metadata={"help": "comma-separated extra datasets (cross-domain)"})
    extra_semantic_ids_dirs: str = field(default="", metadata={"help": "their tokenizer folders, same order"})
    cloze_prob: float = field(default=0.4, metadata={"help": "probability a sequence gets cloze masking"})
    span_prob: float = field(default=0.2, metadata={"help": "probability of span masking"})
    tail_prob: float = field(default=0.2, metadata={"help": "probability of tail masking"})
    multi_region_prob: float = field(default=0.2, metadata={"help": "probability of multi-region masking"})
    cloze_ratio: float = field(default=0.2, metadata={"help": "fraction of items cloze masks"})
    span_ratio: float = field(default=0.2, metadata={"help": "length of the span as a fraction of the sequence"})
    tail_ratio: float = field(default=0.2, metadata={"help": "fraction of newest items tail masks"})
    multi_region_ratio: float = field(default=0.3, metadata={"help": "fraction masked by multi-region"})
    num_regions: int = field(default=3, metadata={"help": "most regions of multi-region masking"})
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


def build_model(model_args: ModelArgs, tokenizer: SemanticIdTokenizer, is_causal: bool = False) -> QBert4RecForMaskedItemModeling:
    """A fresh model whose item table is the tokenizer's (`is_causal` for the SASRec baseline)."""
    config = QBert4RecConfig(
        num_codebooks=tokenizer.num_codebooks,
        codebook_size=tokenizer.codebook_size,
        num_items=tokenizer.num_items,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        intermediate_size=model_args.intermediate_size,
        hidden_dropout_prob=model_args.hidden_dropout_prob,
        attention_probs_dropout_prob=model_args.attention_probs_dropout_prob,
        max_position_embeddings=model_args.max_len,
        use_item_embedding=model_args.use_item_embedding,
        score_item_embedding=model_args.score_item_embedding,
        loss_type=model_args.loss_type,
        seen_item_bias=model_args.seen_item_bias,
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
    table = model.qbert4rec.embeddings.code_embeddings.weight
    with torch.no_grad():
        for level, offset in enumerate(model._level_offsets()[:num_levels].tolist()):
            table[offset : offset + codebook_size] = projected[level]


def training_sequences(args: PretrainArgs, tokenizer, loop_args: LoopArgs, model_args: ModelArgs):
    """The main dataset's training sequences plus the extra datasets', as item indices into one combined code table.

    Returns `(dataset with item_indices, item_codes (num_all_items, L))`; extra datasets' indices are offset."""
    extra_data = [d for d in args.extra_dataset_dirs.split(",") if d]
    extra_sids = [d for d in args.extra_semantic_ids_dirs.split(",") if d]
    if len(extra_data) != len(extra_sids):
        raise ValueError(f"{len(extra_data)} extra datasets but {len(extra_sids)} extra semantic-ID folders")
    if extra_data and args.code_embedding_init != "random":
        raise ValueError(
            "cross-domain pretraining mixes codes from several quantisers: their codebooks do not describe each "
            "other's items, so code_embedding_init must be random"
        )
    if extra_data and model_args.use_item_embedding:
        raise ValueError("cross-domain pretraining shares codes, not item ids: use_item_embedding must be False")
    if extra_data and model_args.loss_type != "codes":
        raise ValueError(
            "cross-domain pretraining needs loss_type=codes: the catalogue-level loss would score other domains' "
            "items against the main catalogue"
        )
    train = encode_split(load_sequences(args.dataset_dir)["train"], tokenizer)
    parts, tables, offset = [train], [tokenizer.item_codes], tokenizer.num_items
    for data_dir, sid_dir in zip(extra_data, extra_sids):
        extra_tokenizer = SemanticIdTokenizer.from_pretrained(sid_dir)
        if (extra_tokenizer.num_codebooks, extra_tokenizer.codebook_size) != (tokenizer.num_codebooks, tokenizer.codebook_size):
            raise ValueError(f"{sid_dir}: semantic IDs of another shape than {args.semantic_ids_dir}")
        extra = encode_split(load_sequences(data_dir)["train"], extra_tokenizer)
        shift = offset
        parts.append(extra.map(lambda row: {"item_indices": [i + shift for i in row["item_indices"]]}))
        tables.append(extra_tokenizer.item_codes)
        offset += extra_tokenizer.num_items
    dataset = concatenate_datasets([part.select_columns(["item_indices"]) for part in parts])
    if loop_args.max_train_sequences:
        dataset = dataset.select(range(min(loop_args.max_train_sequences, len(dataset))))
    return dataset, torch.cat(tables)


def main(argv=None):
    model_args, args, loop_args = parse_args(argv, ModelArgs, PretrainArgs, LoopArgs, section="pretrain", description=__doc__)
    if not args.dataset_dir or not args.semantic_ids_dir:
        raise ValueError("--dataset_dir and --semantic_ids_dir are required (or set them in the config's pretrain section)")
    if args.code_embedding_init not in ("random", "codebooks"):
        raise ValueError(f"--code_embedding_init must be random or codebooks, got {args.code_embedding_init!r}")
    accelerator = make_accelerator(loop_args, "pretrain")
    tokenizer = SemanticIdTokenizer.from_pretrained(args.semantic_ids_dir, max_len=model_args.max_len - 1)
    with accelerator.main_process_first():
        train_dataset, item_codes = training_sequences(args, tokenizer, loop_args, model_args)
        validation = encode_split(load_sequences(args.dataset_dir)["validation"], tokenizer)
    model = build_model(model_args, tokenizer)
    if args.code_embedding_init == "codebooks":
        init_code_embeddings(model, load_codebooks(args.semantic_ids_dir), args.code_embedding_init_std, loop_args.seed)
    probs = {"cloze": args.cloze_prob, "span": args.span_prob, "tail": args.tail_prob, "multi_region": args.multi_region_prob}
    collator = MultiMaskCollator(
        item_codes=item_codes,
        codebook_size=tokenizer.codebook_size,
        max_len=model_args.max_len,
        strategy_probs={k: v for k, v in probs.items() if v > 0},
        strategy_ratios={"cloze": args.cloze_ratio, "span": args.span_ratio, "tail": args.tail_ratio, "multi_region": args.multi_region_ratio},
        num_regions=args.num_regions,
        seed=loop_args.seed,
        process_index=accelerator.process_index,
    )
    history_collator = HistoryCollator(item_codes=tokenizer.item_codes, codebook_size=tokenizer.codebook_size, max_len=model_args.max_len)
    loader = eval_loader(validation, history_collator, loop_args, accelerator)
    accelerator.print(
        f"pretraining on {len(train_dataset)} sequences, {model.num_parameters():,} parameters, "
        f"validating on {len(loader.dataset)} users"
    )
    train(model, tokenizer, train_dataset, collator, loader, loop_args, accelerator)
    best = QBert4RecForMaskedItemModeling.from_pretrained(Path(loop_args.output_dir) / BEST)
    save_final(accelerator, best, tokenizer, Path(loop_args.output_dir) / "final")
    accelerator.print(f"saved {Path(loop_args.output_dir) / 'final'}")


if __name__ == "__main__":
    main()
