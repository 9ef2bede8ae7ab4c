"""Add new items to a checkpoint from their content, and retire items, without retraining.

    python training/add_items.py --checkpoint outputs/beauty/final --items new_items.jsonl --output_dir beauty-v2
    python training/add_items.py --checkpoint beauty-v2 --retire retired.txt --output_dir beauty-v3

`--items` is a JSON-lines file, one item per line: `{"item_id": "B0NEW00001", "title": "...", "brand": "...",
"categories": ["Makeup", "Nails"]}` (the text fields the checkpoint was trained with; or precomputed `text_vector` /
`image_vector`). `--retire` is a text file of item ids, one per line: retired items are never recommended, histories
may still hold them. Items that cannot be added are rejected with their reason and the others are added; the
checkpoint (model and tokenizer) is written to `--output_dir`, never over `--checkpoint`, with `add_items_report.json`
(added, collided and resolved, rejected with reasons, retired). A checkpoint with run files (training/export.py)
keeps them, the change is appended to run.json, and its card says what changed since its metrics were measured.
"""

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_qbert4rec import NEW_ITEM_EMBEDDINGS, QBert4RecForMaskedItemModeling
from quantization_qbert4rec import new_item_problems
from tokenization_semantic_id import SemanticIdTokenizer
from training.config import parse_args
from training.export import record_catalogue_change


@dataclass
class AddItemsArgs:
    """Arguments of `training/add_items.py`."""

    checkpoint: str = field(default=None, metadata={"help": "checkpoint folder (model + tokenizer)", "required": True})
    output_dir: str = field(default=None, metadata={"help": "where the grown checkpoint is saved", "required": True})
    items: str = field(default="", metadata={"help": "JSON-lines file of new items"})
    retire: str = field(default="", metadata={"help": "text file of item ids to retire, one per line"})
    text_encoder: str = field(default="", metadata={"help": "HF id or local folder (default: the one the checkpoint records)"})
    item_embeddings: str = field(
        default="prefix_mean", metadata={"help": f"item-ID embedding of new items, one of {NEW_ITEM_EMBEDDINGS}"}
    )
    batch_size: int = field(default=64, metadata={"help": "texts per encoder batch"})


SECTION = "add_items"
ARGUMENT_TYPES = (AddItemsArgs,)


def read_items(path: str) -> tuple[list, list[str]]:
    """The items of a JSON-lines file, and a reason for each line that is not JSON (items are numbered from 0 among
    the lines that are)."""
    items, rejected = [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as error:
            rejected.append(f"line {number}: not JSON ({error})")
    return items, rejected


def main(argv=None) -> dict:
    (args,) = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    if not args.items and not args.retire:
        raise SystemExit("nothing to do: give --items FILE and/or --retire FILE")
    if Path(args.output_dir).resolve() == Path(args.checkpoint).resolve():
        raise SystemExit("--output_dir must differ from --checkpoint (the original checkpoint is kept)")
    tokenizer = SemanticIdTokenizer.from_pretrained(args.checkpoint)
    model = QBert4RecForMaskedItemModeling.from_pretrained(args.checkpoint).eval()
    report = {"checkpoint": args.checkpoint, "items_before": tokenizer.num_items, "added": [], "rejected": [],
              "retired": []}
    started = time.perf_counter()
    if args.items:
        items, report["rejected"] = read_items(args.items)
        if model.config.item_encoder is None:
            model.add_items(tokenizer, items)  # raises, naming what the checkpoint lacks
        problems = new_item_problems(items, model.config.item_encoder, set(tokenizer.item_ids))
        report["rejected"] += [message for _, message in problems]
        bad = {position for position, _ in problems}
        good = [item for position, item in enumerate(items) if position not in bad]
        if good:
            codes = model.add_items(tokenizer, good, text_encoder=args.text_encoder or None,
                                    item_embeddings=args.item_embeddings, batch_size=args.batch_size)
            # A new item collided when its semantic codes were already taken: it got a disambiguation code > 0.
            report["added"] = [{"item_id": item["item_id"], "codes": c, "collided": c[-1] > 0}
                               for item, c in zip(good, codes)]
    if args.retire:
        ids = [line.strip() for line in Path(args.retire).read_text(encoding="utf-8").splitlines() if line.strip()]
        model.retire_items(tokenizer, ids)
        report["retired"] = ids
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    report.update(items_after=tokenizer.num_items, seconds=round(time.perf_counter() - started, 2))
    (Path(args.output_dir) / "add_items_report.json").write_text(json.dumps(report, indent=2))
    command = shlex.join(["python", "training/add_items.py", *(sys.argv[1:] if argv is None else argv)])
    record_catalogue_change(Path(args.checkpoint), Path(args.output_dir), {
        "command": command, "items_before": report["items_before"], "added": len(report["added"]),
        "retired": len(report["retired"]), "items_after": report["items_after"]})
    collided = sum(entry["collided"] for entry in report["added"])
    print(f"{args.output_dir}: {len(report['added'])} added ({collided} collided and got the next free "
          f"disambiguation code), {len(report['rejected'])} rejected, {len(report['retired'])} retired; "
          f"{report['items_before']} -> {report['items_after']} items, {report['seconds']} s")
    for reason in report["rejected"]:
        print(f"  rejected: {reason}")
    return report


if __name__ == "__main__":
    main()
