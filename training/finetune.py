"""Stage 3b: fine-tune a pretrained Q-Bert4Rec for next-item prediction, then report test metrics.

    accelerate launch training/finetune.py --config configs/beauty.yaml \
        --pretrained_dir outputs/beauty/pretrain/final --dataset_dir outputs/beauty/data --output_dir outputs/beauty/finetune

Every cut point of every training sequence becomes one example: the prefix, then a `[MASK]` whose label is the
next item's codes (tail masking of the last item). The best epoch by validation NDCG@10 is evaluated on the test
split (full ranking over all items) and saved to `OUTPUT_DIR/final` with `metrics.json`.
Cross-domain: `--semantic_ids_dir` may name another dataset's tokenizer than the pretrained one; the model's item
table is then replaced by that catalogue (codes are shared; a learned item-ID embedding is re-initialised).
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_qbert4rec import QBert4RecForMaskedItemModeling
from tokenization_semantic_id import SemanticIdTokenizer
from training.config import parse_args
from training.evaluate import evaluate_model, save_metrics
from training.loop import BEST, LoopArgs, make_accelerator, save_final, train
from training.masking import HistoryCollator, NextItemCollator
from training.sequences import encode_split, eval_loader, load_sequences, next_item_examples


@dataclass
class FinetuneArgs:
    pretrained_dir: str = field(default=None, metadata={"help": "save_pretrained folder from pretrain.py"})
    dataset_dir: str = field(default=None, metadata={"help": "prepared dataset folder to fine-tune on"})
    semantic_ids_dir: str = field(
        default=None, metadata={"help": "tokenizer folder of that dataset (default: the pretrained one)"}
    )
    exclude_history: bool = field(default=False, metadata={"help": "remove history items from the test candidates"})
    loss_type: str = field(default="", metadata={"help": "codes, items or codes+items (default: the pretrained model's)"})
    hidden_dropout_prob: float = field(default=None, metadata={"help": "dropout while fine-tuning (default: the pretrained model's)"})
    attention_probs_dropout_prob: float = field(
        default=None, metadata={"help": "attention dropout while fine-tuning (default: the pretrained model's)"}
    )
    seen_item_bias: bool = field(
        default=False, metadata={"help": "learn a logit for history items (QBert4RecConfig) if the pretrained model has none"}
    )


def adapt_to_catalogue(model, tokenizer):
    """Point `model` at `tokenizer`'s catalogue when it differs from the pretrained one (cross-domain)."""
    same_shape = (model.config.num_codebooks, model.config.codebook_size) == (tokenizer.num_codebooks, tokenizer.codebook_size)
    if not same_shape:
        raise ValueError(
            f"the tokenizer's semantic IDs ({tokenizer.num_codebooks} levels x {tokenizer.codebook_size}) do not fit the "
            f"pretrained model ({model.config.num_codebooks} x {model.config.codebook_size})"
        )
    if model.config.num_items == tokenizer.num_items and torch.equal(model.item_codes, tokenizer.item_codes):
        model.config.item_table_fingerprint = tokenizer.table_fingerprint
        return model
    model.config.num_items = tokenizer.num_items
    model.item_codes = torch.zeros(tokenizer.num_items, tokenizer.num_codebooks, dtype=torch.long)
    model.set_item_codes(tokenizer.item_codes, tokenizer.table_fingerprint)
    if model.config.use_item_embedding:
        embeddings = model.qbert4rec.embeddings
        embeddings.item_embeddings = torch.nn.Embedding(tokenizer.num_items + 2, model.config.hidden_size, padding_idx=tokenizer.num_items)
        model._init_weights(embeddings.item_embeddings)
    return model


def main(argv=None):
    args, loop_args = parse_args(argv, FinetuneArgs, LoopArgs, section="finetune", description=__doc__)
    if not args.pretrained_dir or not args.dataset_dir:
        raise ValueError("--pretrained_dir and --dataset_dir are required (or set them in the config's finetune section)")
    accelerator = make_accelerator(loop_args, "finetune")
    overrides = {name: getattr(args, name) for name in ("hidden_dropout_prob", "attention_probs_dropout_prob")}
    overrides["seen_item_bias"] = args.seen_item_bias or None  # False keeps the pretrained model's
    model = QBert4RecForMaskedItemModeling.from_pretrained(
        args.pretrained_dir, **{name: value for name, value in overrides.items() if value is not None}
    )
    max_len = model.config.max_position_embeddings
    tokenizer = SemanticIdTokenizer.from_pretrained(args.semantic_ids_dir or args.pretrained_dir, max_len=max_len - 1)
    model = adapt_to_catalogue(model, tokenizer)
    if args.loss_type:
        if args.loss_type not in ("codes", "items", "codes+items"):
            raise ValueError(f"--loss_type must be codes, items or codes+items, got {args.loss_type!r}")
        model.config.loss_type = args.loss_type
    if model.config.seen_item_bias and model.config.loss_type == "codes":
        raise ValueError("seen_item_bias is trained by the catalogue loss: fine-tune with --loss_type items or codes+items")
    with accelerator.main_process_first():
        sequences = load_sequences(args.dataset_dir)
        train_examples = next_item_examples(encode_split(sequences["train"], tokenizer))
        validation = encode_split(sequences["validation"], tokenizer)
        test = encode_split(sequences["test"], tokenizer)
    if loop_args.max_train_sequences:
        train_examples = train_examples.select(range(min(loop_args.max_train_sequences, len(train_examples))))
    codes = {"item_codes": tokenizer.item_codes, "codebook_size": tokenizer.codebook_size, "max_len": max_len}
    accelerator.print(f"fine-tuning on {len(train_examples)} next-item examples, {model.num_parameters():,} parameters")
    validation_loader = eval_loader(validation, HistoryCollator(**codes), loop_args, accelerator)
    train(model, tokenizer, train_examples, NextItemCollator(**codes), validation_loader, loop_args, accelerator)

    output_dir = Path(loop_args.output_dir)
    best = QBert4RecForMaskedItemModeling.from_pretrained(output_dir / BEST)
    test_loader = eval_loader(test, HistoryCollator(**codes), loop_args, accelerator, max_users=0)
    metrics = evaluate_model(best, test_loader, accelerator=accelerator, exclude_history=args.exclude_history)
    save_final(accelerator, best, tokenizer, output_dir / "final")
    if accelerator.is_main_process:
        save_metrics(
            metrics,
            output_dir / "metrics.json",
            split="test",
            candidates="all items" + (" minus history" if args.exclude_history else " (history items kept)"),
            num_items=tokenizer.num_items,
            num_interactions=sum(len(x) for x in sequences["test"]["item_ids"]) + len(sequences["test"]),
        )
    accelerator.print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics


if __name__ == "__main__":
    main()
