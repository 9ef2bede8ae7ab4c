"""Prepare a dataset in the canonical form of docs/interfaces.md §1 from any supported source.

    python training/prepare_data.py --source s3rec --output_dir outputs/data/beauty
    python training/prepare_data.py --source recbole --input ../shared/data/amazon-scientific-mm --output_dir DATA
    python training/prepare_data.py --source amazon2014 --input DIR --name Beauty --k_core 5 --output_dir DATA
    python training/prepare_data.py --config configs/beauty.yaml            # section `data`
    python training/prepare_data.py --source s3rec --output_dir DATA --push_to_hub ORG/beauty-prepared [--private]
    python training/prepare_data.py --source prepared --input DATA --push_to_hub ORG/NAME   # push an existing folder
    python training/prepare_data.py --source hub --input ORG/NAME --output_dir DATA         # or a local folder

Writes `DATA/sequences/`, `DATA/items/` (`save_to_disk`) and `DATA/summary.json`, and prints the summary. With
`--push_to_hub` it then uploads the prepared dataset to a Hub dataset repo (two configs, `sequences` and `items`, and
summary.json: the layout of `training/prepared.py`), which `--source hub` reads back. Pushing needs a token
(`hf auth login`, `$HF_TOKEN` or `--token`); a failed push leaves the local folder written and ends in one line.
"""

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):  # `python training/prepare_data.py` puts training/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import default_data_dir, parse_args  # noqa: E402
from training.hub import HubError, check_repo_id, hub_errors  # noqa: E402
from training.prepared import (  # noqa: E402
    load_from_hub,
    load_items,
    load_sequences,
    load_summary,
    save_prepared,
    write_hub_layout,
)
from training.readers import DEFAULT_INPUTS, READERS, read_source  # noqa: E402
from training.readers.common import PreparedData, take_users  # noqa: E402

PREPARED_SOURCES = {  # sources that are already in the canonical form, beside the readers of raw formats
    "hub": "a prepared dataset pushed with --push_to_hub: a Hub dataset id or a local folder in that layout",
    "prepared": "a folder this command wrote (e.g. to push it without reading the source again)",
}


@dataclass
class DataArgs:
    """Arguments of `prepare_data.py` (YAML section `data`)."""

    source: Literal[(*READERS, *PREPARED_SOURCES)] = field(
        default="s3rec",
        metadata={"help": "input format: " + "; ".join(
            [f"{name}: {r.description}" for name, r in READERS.items()]
            + [f"{name}: {description}" for name, description in PREPARED_SOURCES.items()])},
    )
    input: str | None = field(
        default=None,
        metadata={"help": "input folder or file (amazon2023, hub: also a Hub dataset id); default: the shared "
                          "benchmark folder "
                          + ", ".join(f"{folder} for {source}" for source, folder in DEFAULT_INPUTS.items())},
    )
    name: str | None = field(
        default=None,
        metadata={"help": "dataset or category name, the file prefix (Beauty, Scientific, Office, "
                          "Industrial_and_Scientific, All_Beauty); found from the files when unset"},
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "output folder; default outputs/data/<name in lower case> (--source prepared: the input)"},
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


@dataclass
class HubArgs:
    """Hugging Face Hub"""

    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub dataset repo ORG/NAME to upload the prepared dataset to"}
    )
    private: bool = field(default=False, metadata={"help": "create the Hub dataset repo as private"})
    revision: str | None = field(
        default=None, metadata={"help": "Hub branch pushed to (created if needed), or revision read by --source hub"}
    )
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one or $HF_TOKEN)"})


SECTION = "data"  # its YAML section
ARGUMENT_TYPES = (DataArgs, HubArgs)


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


def read(args: DataArgs, hub: HubArgs) -> PreparedData:
    """The prepared dataset from `args.source`: a reader of a raw format, a Hub dataset or a prepared folder."""
    if args.source == "hub":
        return PreparedData(*load_from_hub(resolve_input(args), revision=hub.revision, token=hub.token))
    if args.source == "prepared":
        folder = resolve_input(args)
        return PreparedData(load_sequences(folder), load_items(folder), load_summary(folder))
    return read_source(
        args.source,
        resolve_input(args),
        name=args.name,
        metadata=args.metadata,
        k_core=args.k_core,
        on_missing_item=args.on_missing_item,
        on_unnamed_attribute=args.on_unnamed_attribute,
        drop_duplicates={"auto": None, "yes": True, "no": False}[args.drop_duplicates],
    )


def write_hub_files(prepared: PreparedData, folder: str | Path, repo_id: str) -> Path:
    """The files of the Hub dataset repo `repo_id`, written into `folder`: what `push` uploads."""
    summary_text = format_summary(prepared.summary)
    return write_hub_layout(prepared.sequences, prepared.items, prepared.summary, folder, repo_id, summary_text)


def push(prepared: PreparedData, hub: HubArgs, output_dir: Path) -> str:
    """Upload the prepared dataset to the Hub dataset repo `hub.push_to_hub`; returns the commit URL."""
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="qbert4rec-data-") as staging:
        write_hub_files(prepared, staging, hub.push_to_hub)
        with hub_errors(f"pushing {output_dir} to {hub.push_to_hub}"):
            api = HfApi(token=hub.token)
            api.create_repo(hub.push_to_hub, repo_type="dataset", private=hub.private, exist_ok=True)
            if hub.revision:
                api.create_branch(hub.push_to_hub, repo_type="dataset", branch=hub.revision, exist_ok=True)
            commit = api.upload_folder(folder_path=staging, repo_id=hub.push_to_hub, repo_type="dataset",
                                       revision=hub.revision, commit_message="Upload prepared dataset")
    return commit.commit_url


def main(argv=None) -> Path:
    """Read the source, write the prepared folder, print the summary, push it with `--push_to_hub`; returns the
    output folder. Hub failures (offline, no token, no right to the repo) end in one line."""
    args, hub = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    if hub.push_to_hub:
        check_repo_id(hub.push_to_hub)
    try:
        prepared = read(args, hub)
        if args.max_users:
            prepared = take_users(prepared, args.max_users)
        default = args.input if args.source == "prepared" else f"outputs/data/{prepared.summary['name'].lower()}"
        output_dir = Path(args.output_dir or default)
        if args.source == "prepared" and output_dir.resolve() == Path(args.input).resolve():
            if args.max_users:
                raise ValueError("--max_users with --source prepared needs an --output_dir other than the input")
        else:
            save_prepared(prepared.sequences, prepared.items, prepared.summary, output_dir)
        print(format_summary(prepared.summary))
        print(f"saved to {output_dir}")
        if hub.push_to_hub:
            print(f"pushed to {push(prepared, hub, output_dir)}")
    except HubError as error:
        raise SystemExit(f"error: {error}") from None
    return output_dir


if __name__ == "__main__":
    main()
