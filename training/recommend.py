"""Recommend for a file of users: the top-k next items after each history, streamed batch by batch.

    python training/recommend.py --model outputs/beauty/final --input histories.jsonl --output recs.jsonl --top_k 10

`--input` is a JSON-lines file, one user a line, the history oldest first:

    {"user_id": "A1B2C3", "history": ["B004756YJA", "B004ZT0SSG"]}

`--output` gets one line per user, in input order, best item first (`titles` when the checkpoint's item table has
titles):

    {"user_id": "A1B2C3", "item_ids": ["B002WLWX82", ...], "scores": [9.81, ...], "titles": ["...", ...]}

Memory stays bounded whatever the number of users: lines are read, scored and written `--batch_size` at a time. A line
that is not a user (not JSON, no `user_id`, no `history`, a history that is not a list of item-id strings) is named
on stderr with its line number and skipped; every other user is written. Unknown item ids are dropped from their
history and counted (`--unknown_items skip`), or stop the run naming the line (`error`); a user left with no known
item is still scored (from the `[MASK]` position alone, close to popularity) and counted. The output is written to a
temporary file renamed at the end, so an interrupted run leaves no partial file. A summary closes the run: users
written, malformed lines, unknown items skipped, empty histories, seconds, users per second.
"""

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_qbert4rec import QBert4RecForMaskedItemModeling
from tokenization_semantic_id import SemanticIdTokenizer
from training.config import parse_args
from training.export_onnx import current_umask, empty_history_warnings_muted

MALFORMED_SHOWN = 10  # line numbers of malformed lines kept in the summary
COUNT_LINES_UP_TO = 1 << 30  # bytes: smaller inputs get a progress bar in lines (one quick pass to count them)


@dataclass
class RecommendArgs:
    """Arguments of `training/recommend.py`."""

    model: str = field(default=None, metadata={"help": "checkpoint folder (model + tokenizer)", "required": True})
    input: str = field(default=None, metadata={"help": "JSON-lines file of {\"user_id\", \"history\"}",
                                               "required": True})
    output: str = field(default=None, metadata={"help": "JSON-lines file written with each user's top-k",
                                                "required": True})
    top_k: int = field(default=10, metadata={"help": "items recommended per user"})
    batch_size: int = field(default=256, metadata={"help": "users scored together"})
    unknown_items: Literal["skip", "error"] = field(default="skip", metadata={
        "help": "an item id the checkpoint does not know: drop it from the history and count it, or stop"})
    exclude_history: bool = field(default=False, metadata={"help": "never recommend an item of the user's history"})
    device: str = field(default="", metadata={"help": "torch device (default: cuda when available, else cpu)"})


SECTION = "recommend"
ARGUMENT_TYPES = (RecommendArgs,)


def parse_user(line: str) -> tuple[str | int, list[str]]:
    """One input line -> (user id, history); `ValueError` says what is wrong with it."""
    try:
        user = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(user, dict):
        raise ValueError(f"a JSON {type(user).__name__}, not an object {{\"user_id\": ..., \"history\": [...]}}")
    if "user_id" not in user:
        raise ValueError("no \"user_id\"")
    if not isinstance(user["user_id"], (str, int)) or isinstance(user["user_id"], bool):
        raise ValueError(f"user_id must be a string or an integer, got {type(user['user_id']).__name__}")
    if "history" not in user:
        raise ValueError("no \"history\" (a list of item ids, oldest first)")
    history = user["history"]
    if not isinstance(history, list):
        raise ValueError(f"history must be a list of item ids, got {type(history).__name__}")
    bad = next((item for item in history if not isinstance(item, str)), None)
    if bad is not None:
        hint = f" (write \"{bad}\")" if isinstance(bad, int) else ""
        raise ValueError(f"item ids are strings, got {type(bad).__name__} {bad!r}{hint}")
    return user["user_id"], history


def progress_total(path: Path) -> tuple[int, str]:
    """The progress bar's total and unit: the file's lines when it is small enough to count quickly, else bytes."""
    size = path.stat().st_size
    if size > COUNT_LINES_UP_TO:
        return size, "B"
    with open(path, "rb") as f:
        lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    with open(path, "rb") as f:
        f.seek(max(size - 1, 0))
        lines += size > 0 and f.read(1) != b"\n"  # a last line without a newline
    return lines, "line"


class BatchRecommender:
    """Scores batches of users with a checkpoint and writes their lines; counts what it met."""

    def __init__(self, model, tokenizer, args: RecommendArgs, out):
        self.model, self.tokenizer, self.args, self.out = model, tokenizer, args, out
        self.known = set(tokenizer.item_ids)
        titles = tokenizer.item_titles
        self.titles = titles if any(titles) else None
        self.device = next(model.parameters()).device
        self.written = self.unknown = self.empty = 0

    def known_history(self, history: list[str], line_number: int) -> list[str]:
        """The history without unknown items (counted), or `ValueError` with `--unknown_items error`."""
        known = [item for item in history if item in self.known]
        if len(known) < len(history):
            if self.args.unknown_items == "error":
                unknown = next(item for item in history if item not in self.known)
                raise ValueError(f"line {line_number}: unknown item id {unknown!r} (not in the checkpoint's "
                                 f"{len(self.known)} items); pass --unknown_items skip to drop unknown items")
            self.unknown += len(history) - len(known)
        self.empty += not known
        return known

    @torch.inference_mode()
    def write(self, user_ids: list, histories: list[list[str]]) -> None:
        """Recommend for one batch of (known-item) histories and write a line per user."""
        batch = self.tokenizer(histories, return_tensors="pt", unknown_items="skip").to(self.device)
        out = self.model.recommend(**batch, top_k=self.args.top_k, exclude_history=self.args.exclude_history)
        indices, scores = out.item_indices.tolist(), out.scores.float().tolist()
        for user_id, row, row_scores in zip(user_ids, indices, scores):
            line = {"user_id": user_id, "item_ids": self.tokenizer.decode_items(row),
                    "scores": [round(score, 6) for score in row_scores]}
            if self.titles is not None:
                line["titles"] = [self.titles[i] for i in row]
            self.out.write(json.dumps(line) + "\n")
        self.written += len(user_ids)


def recommend_file(model, tokenizer, args: RecommendArgs, out) -> dict:
    """Stream `args.input` through `model` into the open text file `out`; the counts of the summary."""
    scorer = BatchRecommender(model, tokenizer, args, out)
    malformed, lines = [], 0
    user_ids, histories = [], []
    total, unit = progress_total(Path(args.input))
    with open(args.input, "rb") as f, tqdm(total=total, unit=unit, unit_scale=unit == "B", desc="recommend") as bar:
        for number, raw in enumerate(f, start=1):
            bar.update(1 if unit == "line" else len(raw))
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            lines += 1
            try:
                user_id, history = parse_user(line)
            except ValueError as error:
                malformed.append(number)
                tqdm.write(f"{args.input}:{number}: skipped: {error}", file=sys.stderr)
                continue
            user_ids.append(user_id)
            histories.append(scorer.known_history(history, number))
            if len(user_ids) == args.batch_size:
                scorer.write(user_ids, histories)
                user_ids, histories = [], []
        if user_ids:
            scorer.write(user_ids, histories)
    return {"lines": lines, "users_written": scorer.written, "lines_malformed": len(malformed),
            "malformed_line_numbers": malformed[:MALFORMED_SHOWN], "unknown_items_skipped": scorer.unknown,
            "empty_histories": scorer.empty}


def check_args(args: RecommendArgs) -> None:
    if not (Path(args.model) / "config.json").is_file():
        raise ValueError(f"{args.model} is no checkpoint folder (no config.json): pass a save_pretrained folder")
    if not Path(args.input).is_file():
        raise FileNotFoundError(f"input file not found: {args.input}")
    if Path(args.input).stat().st_size == 0:
        raise ValueError(f"{args.input} is empty: no user to recommend for (one JSON object a line: "
                         "{\"user_id\": ..., \"history\": [item ids]})")
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise ValueError("--output must differ from --input")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}")


def main(argv=None) -> dict:
    (args,) = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    try:
        check_args(args)
        tokenizer = SemanticIdTokenizer.from_pretrained(args.model)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = QBert4RecForMaskedItemModeling.from_pretrained(args.model).to(device).eval()
        model.check_tokenizer(tokenizer)
        candidates = tokenizer.num_items - len(tokenizer.retired_items)
        if not 1 <= args.top_k <= candidates:
            raise ValueError(f"--top_k must be in [1, {candidates}] (the checkpoint's items less retired ones), got "
                             f"{args.top_k}")
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Written beside the output and renamed at the end: a crash or an error leaves no half file.
    handle, staging = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out, empty_history_warnings_muted(tokenizer):
            summary = recommend_file(model, tokenizer, args, out)
        if summary["users_written"] == 0:
            what = "holds no line" if summary["lines"] == 0 else f"has no valid user in its {summary['lines']} lines"
            raise ValueError(f"{args.input} {what}: nothing written (one JSON object a line: "
                             "{\"user_id\": ..., \"history\": [item ids]})")
        os.chmod(staging, 0o666 & ~current_umask())
        os.replace(staging, output)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    finally:
        Path(staging).unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    summary.update(output=str(output), seconds=round(seconds, 2),
                   users_per_second=round(summary["users_written"] / seconds, 1))
    shown = ", ".join(map(str, summary["malformed_line_numbers"]))
    more = "..." if summary["lines_malformed"] > MALFORMED_SHOWN else ""
    print(f"wrote {summary['users_written']} users to {output} in {summary['seconds']} s "
          f"({summary['users_per_second']} users/s); {summary['lines_malformed']} malformed line(s) skipped"
          f"{f' (lines {shown}{more})' if shown else ''}; {summary['unknown_items_skipped']} unknown item(s) skipped; "
          f"{summary['empty_histories']} empty history(ies) scored from the [MASK] alone")
    return summary


if __name__ == "__main__":
    main()
