"""Input formats: the registry of readers, each turning one public dataset format into the canonical form.

Each format is one file in this package whose `read_<format>(input_path, name=None, ...)` ends in
`training.readers.common.finish` (which documents the canonical form and the counted drops). `READERS` lists them
in the order `training/prepare_data.py --help` shows them. Adding a format: its file, its line in `READERS`, and its
test `tests/test_readers_<format>.py`.
"""

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable

from training.readers.amazon2023 import read_amazon2023
from training.readers.amazon_raw import read_amazon_raw
from training.readers.common import PreparedData
from training.readers.lcrec import read_lcrec
from training.readers.recbole import read_recbole
from training.readers.s3rec import read_s3rec


@dataclasses.dataclass(frozen=True)
class Reader:
    """A registered input format.

    Args:
        read: `read(input_path, **options) -> PreparedData`.
        description: what the format is, for `prepare_data.py --help`.
        default_input: the folder under the shared data directory read when no input is given, if any.
    """

    read: Callable[..., PreparedData]
    description: str
    default_input: str | None = None


READERS = {
    "s3rec": Reader(read_s3rec, "S3-Rec sequence file + items.tsv + attribute files (Beauty)", "amazon-beauty"),
    "recbole": Reader(read_recbole, "RecBole benchmark .inter files + .text (Scientific)", "amazon-scientific-mm"),
    "lcrec": Reader(read_lcrec, "LC-Rec / LETTER JSON (Office)", "amazon-office"),
    "amazon2014": Reader(functools.partial(read_amazon_raw, version="2014"), "raw Amazon 2014 review + metadata files"),
    "amazon2018": Reader(functools.partial(read_amazon_raw, version="2018"), "raw Amazon 2018 review + metadata files"),
    "amazon2023": Reader(read_amazon2023, "Amazon Reviews 2023 JSONL files or a Hub dataset id"),
}
DEFAULT_INPUTS = {source: reader.default_input for source, reader in READERS.items() if reader.default_input}


def read_source(source: str, input_path: str | os.PathLike, **options) -> PreparedData:
    """Run the reader registered as `source` on `input_path` with the `options` it takes.

    Options are the readers' keyword arguments (`name`, `metadata`, `k_core`, `on_missing_item`, `drop_duplicates`,
    `on_unnamed_attribute`). A reader gets only those it takes (`k_core` applies to raw reviews, not to the
    benchmark files), and `None` leaves the reader's default (`drop_duplicates`: off for benchmark files, on for
    raw reviews).
    """
    if source not in READERS:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(READERS)}")
    taken = {name: set(inspect.signature(reader.read).parameters) for name, reader in READERS.items()}
    unknown = set(options) - set.union(*taken.values())
    if unknown:
        raise TypeError(f"no reader takes the option(s) {', '.join(sorted(unknown))}")
    return READERS[source].read(
        input_path, **{key: value for key, value in options.items() if key in taken[source] and value is not None}
    )
