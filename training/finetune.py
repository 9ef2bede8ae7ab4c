"""Stage 3b: fine-tune a pretrained Q-Bert4Rec for next-item prediction, then report test metrics.

Example:

    accelerate launch training/finetune.py --config configs/beauty.yaml \\
        --pretrained_dir outputs/beauty/pretrain/final --dataset_dir outputs/beauty/data \\
        --output_dir outputs/beauty/finetune

Every cut point of every training sequence becomes one example: the prefix, then a `[MASK]` whose label is the
next item (tail masking of the last item). The best epoch by validation NDCG@10 is evaluated on the test split (full
ranking over all items) and saved to `OUTPUT_DIR/final` with `metrics.json`.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration_qbert4rec import QBert4RecConfig
from modeling_qbert4rec import QBert4RecForMaskedItemModeling
from tokenization_semantic_id import SemanticIdTokenizer
from training.config import parse_args
from training.evaluate import eval_loader, evaluate_model, save_metrics
from training.loop import BEST, LoopArgs, make_accelerator, save_final, train
from training.masking import HistoryCollator, NextItemCollator
from training.prepared import load_sequences
from training.sequences import encode_split, next_item_examples


@dataclass
class FinetuneArgs:
    """Data and model changes"""

    pretrained_dir: str = field(
        default=None, metadata={"help": "save_pretrained folder from pretrain.py (model + tokenizer)", "required": True}
    )
    dataset_dir: str = field(default=None, metadata={"help": "prepared dataset folder", "required": True})
    exclude_history: bool = field(default=False, metadata={"help": "remove history items from the test candidates"})
    # Settings of the pretrained model's QBert4RecConfig that fine-tuning may change (None keeps the pretrained one).
    loss_type: str = field(default=None, metadata={"help": "codes, items or codes+items (QBert4RecConfig)"})
    hidden_dropout_prob: float = field(default=None, metadata={"help": "dropout while fine-tuning (QBert4RecConfig)"})
    attention_probs_dropout_prob: float = field(
        default=None, metadata={"help": "attention dropout while fine-tuning (QBert4RecConfig)"}
    )
    seen_item_bias: bool = field(default=None, metadata={"help": "learn a logit for history items (QBert4RecConfig)"})


SECTION = "finetune"
ARGUMENT_TYPES = (FinetuneArgs, LoopArgs)
CONFIG_OVERRIDES = ("loss_type", "hidden_dropout_prob", "attention_probs_dropout_prob", "seen_item_bias")


def load_pretrained(args: FinetuneArgs) -> QBert4RecForMaskedItemModeling:
    """The pretrained model, with the settings `args` changes (the config checks them; a new `seen_item_bias`
    starts at 0)."""
    config = QBert4RecConfig.from_pretrained(args.pretrained_dir)
    overrides = {name: getattr(args, name) for name in CONFIG_OVERRIDES if getattr(args, name) is not None}
    config = QBert4RecConfig(**{**config.to_dict(), **overrides})
    return QBert4RecForMaskedItemModeling.from_pretrained(args.pretrained_dir, config=config)


def main(argv=None):
    args, loop_args = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    accelerator = make_accelerator(loop_args, "finetune")
    model = load_pretrained(args)
    max_len = model.config.max_position_embeddings
    tokenizer = SemanticIdTokenizer.from_pretrained(args.pretrained_dir, max_len=max_len - 1)
    model.check_tokenizer(tokenizer)
    with accelerator.main_process_first():
        sequences = load_sequences(args.dataset_dir)
        train_examples = next_item_examples(encode_split(sequences["train"], tokenizer))
        validation = encode_split(sequences["validation"], tokenizer)
        test = encode_split(sequences["test"], tokenizer)
    if loop_args.max_train_sequences:
        train_examples = train_examples.select(range(min(loop_args.max_train_sequences, len(train_examples))))
    history_collator = HistoryCollator(num_items=tokenizer.num_items, max_len=max_len)
    accelerator.print(f"fine-tuning on {len(train_examples)} next-item examples, {model.num_parameters():,} parameters")
    validation_loader = eval_loader(validation, history_collator, loop_args, accelerator)
    collator = NextItemCollator(num_items=tokenizer.num_items, max_len=max_len)
    train(model, tokenizer, train_examples, collator, validation_loader, loop_args, accelerator)

    output_dir = Path(loop_args.output_dir)
    best = QBert4RecForMaskedItemModeling.from_pretrained(output_dir / BEST)
    test_loader = eval_loader(test, history_collator, loop_args, accelerator, max_users=0)
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
            num_processes=accelerator.num_processes,
        )
    accelerator.print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main()
