"""Prepare a dataset in the canonical form of docs/interfaces.md §1 from any supported source.

    python training/prepare_data.py --source s3rec --output_dir outputs/data/beauty
    python training/prepare_data.py --source recbole --input ../shared/data/amazon-scientific-mm --output_dir DATA
    python training/prepare_data.py --source amazon2014 --input DIR --name Beauty --k_core 5 --output_dir DATA
    python training/prepare_data.py --config configs/beauty.yaml            # section `data`

Writes `DATA/sequences/`, `DATA/items/` (`save_to_disk`) and `DATA/summary.json`, and prints the summary.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):  # `python training/prepare_data.py` puts training/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import default_data_dir, parse_args  # noqa: E402
from training.prepared import save_prepared  # noqa: E402
from training.readers import DEFAULT_INPUTS, READERS, read_source  # noqa: E402
from training.readers.common import take_users  # noqa: E402


@dataclass
class DataArgs:
    """Arguments of `prepare_data.py` (YAML section `data`)."""

    source: Literal[tuple(READERS)] = field(
        default="s3rec",
        metadata={"help": "input format: " + "; ".join(f"{name}: {r.description}" for name, r in READERS.items())},
    )
    input: str | None = field(
        default=None,
        metadata={"help": "input folder or file (amazon2023: also a Hub dataset id); default: the shared benchmark "
                          "folder " + ", ".join(f"{folder} for {source}" for source, folder in DEFAULT_INPUTS.items())},
    )
    name: str | None = field(
        default=None,
        metadata={"help": "dataset or category name, the file prefix (Beauty, Scientific, Office, "
                          "Industrial_and_Scientific, All_Beauty); found from the files when unset"},
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "output folder; default outputs/data/<name in lower case>"}
    )
    metadata: str | None = field(
        default=None, metadata={"help": "raw Amazon sources: the metadata file, when not beside the reviews"}
    )
    k_core: int = field(
        default=5, metadata={"help": "raw Amazon sources: keep users and items with at least this many interactions"}
    )
    on_missing_item: Literal["drop", "error"] = field(
        default="drop",
        metadata={"help": "interactions with items absent from the item table: drop (counted in the summary) or error"},
    )
    on_unnamed_attribute: Literal["drop", "error"] = field(
        default="drop",
        metadata={"help": "s3rec: attribute ids that attribute_names.json does not name: drop them from their items "
                          "(counted in the summary) or error"},
    )
    drop_duplicates: Literal["auto", "yes", "no"] = field(
        default="auto",
        metadata={"help": "drop repeated (user, item) interactions: auto = yes for raw reviews, no for the "
                          "published benchmark files (whose protocol keeps repeats)"},
    )
    max_users: int | None = field(
        default=None, metadata={"help": "keep only the first N users and the items they touch (smoke runs)"}
    )


SECTION = "data"  # its YAML section
ARGUMENT_TYPES = (DataArgs,)


def resolve_input(args: DataArgs) -> str:
    """`--input`, or the shared benchmark folder for the source."""
    if args.input:
        return args.input
    if args.source in DEFAULT_INPUTS:
        return str(default_data_dir() / DEFAULT_INPUTS[args.source])
    raise ValueError(f"--input is required for --source {args.source}")


def format_summary(summary: dict) -> str:
    """The summary as an aligned two-column table."""
    rows = [
        ("dataset", f"{summary['name']} ({summary['source']})"),
        ("users", f"{summary['users']:,}"),
        ("items", f"{summary['items']:,} ({summary['items_in_sequences']:,} in sequences)"),
        ("interactions", f"{summary['interactions']:,} (read {summary['interactions_read']:,})"),
        ("average length", f"{summary['average_length']:.2f}"),
        ("items without title", f"{summary['items_without_title']:,}"),
        ("items without text", f"{summary['items_without_text']:,} (no title and no description)"),
        ("items without image", f"{summary['items_without_image']:,}"),
        ("repeated items kept", f"{summary['repeated_interactions']:,}"),
    ]
    rows += [(f"dropped {key.replace('_', ' ')}", f"{value:,}") for key, value in summary["dropped"].items()]
    rows += [
        ("dropped users (k-core / short)", "{k_core:,} / {short:,}".format(**summary["dropped_users"])),
        ("dropped items (k-core)", f"{summary['dropped_items_k_core']:,}"),
    ]
    if "unnamed_attributes" in summary:
        unnamed = summary["unnamed_attributes"]
        rows.append(("unnamed attributes dropped", f"{unnamed['ids']:,} id(s) on {unnamed['items']:,} item(s)"))
    matrices = summary.get("feature_matrices", {})
    rows += [(f"{modality} matrix", f"{m['path']} (dim {m['dim']})") for modality, m in matrices.items()]
    rows += [("note", note) for note in summary.get("notes", [])]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def main(argv=None) -> Path:
    """Read the source, write the prepared folder, print the summary; returns the output folder."""
    (args,) = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    prepared = read_source(
        args.source,
        resolve_input(args),
        name=args.name,
        metadata=args.metadata,
        k_core=args.k_core,
        on_missing_item=args.on_missing_item,
        on_unnamed_attribute=args.on_unnamed_attribute,
        drop_duplicates={"auto": None, "yes": True, "no": False}[args.drop_duplicates],
    )
    if args.max_users:
        prepared = take_users(prepared, args.max_users)
    output_dir = Path(args.output_dir or f"outputs/data/{prepared.summary['name'].lower()}")
    save_prepared(prepared.sequences, prepared.items, prepared.summary, output_dir)
    print(format_summary(prepared.summary))
    print(f"saved to {output_dir}")
    return output_dir


if __name__ == "__main__":
    main()
