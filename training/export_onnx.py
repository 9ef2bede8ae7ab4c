"""Export a checkpoint to ONNX for serving, check it against PyTorch, and run it with onnxruntime.

    python training/export_onnx.py --model outputs/beauty/final --output outputs/beauty/final/model.onnx
    python training/export_onnx.py --model outputs/beauty/final --output model.onnx --verify_histories users.jsonl

The graph maps left-padded histories to the score of every item, as `model.score_items` does:

    item_indices    int64 (batch, seq_len)   the tokenizer's output (padding = num_items)
    attention_mask  int64 (batch, seq_len)   1 at items, 0 at padding
    scores          float32 (batch, num_items), retired items at -inf

Both `batch` and `seq_len` are dynamic, and `seq_len` has no upper bound: a bidirectional model encodes the newest
`max_position_embeddings - 1` items (plus the `[MASK]` it appends) as `score_items` does, and a causal one, which
PyTorch refuses beyond `max_position_embeddings` positions, gets the newest `max_position_embeddings`.
`OnnxRecommender(path, tokenizer).recommend(histories, top_k)` runs it: tokenizer, session, top-k in numpy. The file
records the item table's fingerprint: a tokenizer grown or shrunk since (`add_items`, `retire_items`) is refused;
export again.

Why scores, not top-k, leave the graph: `top_k` and `exclude_history` stay choices of each call rather than constants
baked in at export; the check against PyTorch compares every score, not only ranks; and the top-k of 12,101 Beauty
scores costs a numpy `argpartition` of 0.03 ms per history (measured at batch 1 and 256, one thread), under a tenth
of a batch-1 call. The price is the
(batch, num_items) output, 48 KB per history on Beauty.

Why the TorchScript-based exporter (`dynamo=False`): torch 2.13's default, `torch.export`, cannot capture the scoring
path: the model checks its inputs with data-dependent branches (item indices in range, histories left-padded), which
`torch.export` refuses to guard on, and its inference cache of item tables keys on `data_ptr()`, which fake tensors
lack (it would also need the `onnxscript` package). The tracer runs those checks once on a valid example and records
the tensor operations alone; `OnnxRecommender` feeds the graph nothing but tokenizer output, valid by construction.
The model is written without the two operations this exporter cannot hand to onnxruntime (an in-place `&=` on bool
tensors, a bool identity matrix).

What the export refuses, each with its reason: an opset below 14 (attention needs 14); weights that are not float32
(a bfloat16 or float16 graph fails to load in onnxruntime, its LayerNormalization nodes mixing float32 and half
types), though the command itself loads any checkpoint as float32; and a tokenizer built for another item table.
Every configuration option was exported and checked against PyTorch (causal or bidirectional, item-ID embeddings,
seen-item logit, retired items, ReLU, a one-layer model, a grown catalogue). Graphs over protobuf's 2 GB (some eight
million items at hidden size 64) would need ONNX external data: not written, not tried.

After writing the file, the command scores a few histories (random ones from the catalogue, or `--verify_histories`,
a JSON-lines file as `training/recommend.py` reads) with PyTorch and onnxruntime and prints the largest score
difference and the share of identical top-10 lists; beyond `--tolerance` it fails and leaves no file.
"""

import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import parse_args

INPUT_NAMES = ("item_indices", "attention_mask")
OUTPUT_NAME = "scores"
METADATA_PREFIX = "qbert4rec."
DEFAULT_OPSET = 17  # LayerNormalization as one operator
MIN_OPSET = 14  # scaled_dot_product_attention


@dataclass
class ExportOnnxArgs:
    """Arguments of `training/export_onnx.py`."""

    model: str = field(default=None, metadata={"help": "checkpoint folder (model + tokenizer)", "required": True})
    output: str = field(default=None, metadata={"help": "the .onnx file to write", "required": True})
    opset: int = field(default=DEFAULT_OPSET, metadata={"help": f"ONNX opset version (>= {MIN_OPSET})"})
    verify_histories: str = field(default="", metadata={
        "help": "JSON-lines file of {\"history\": [item ids]} to check the export on (default: random histories from "
                "the catalogue)"})
    verify_users: int = field(default=64, metadata={"help": "histories checked against PyTorch"})
    tolerance: float = field(default=1e-3, metadata={"help": "largest score difference accepted"})


SECTION = "export_onnx"
ARGUMENT_TYPES = (ExportOnnxArgs,)


class ExportError(ValueError):
    """The checkpoint cannot be exported, or its export disagrees with PyTorch."""


# -- Export ---------------------------------------------------------------------------------------------------------


class CatalogueScorer(torch.nn.Module):
    """The exported function: `model.score_items`, `(B, T)` item indices and attention mask -> `(B, num_items)`
    scores. A bidirectional model encodes the newest positions of any T itself; a causal one refuses more positions
    than it has, so it gets the newest `max_position_embeddings` columns."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.keep = model.config.max_position_embeddings if model.config.is_causal else None

    def forward(self, item_indices, attention_mask):
        if self.keep is not None:
            item_indices, attention_mask = item_indices[:, -self.keep :], attention_mask[:, -self.keep :]
        return self.model.score_items(item_indices, attention_mask)


def history_limit(config) -> int:
    """The newest items of a history that the model attends to: `max_position_embeddings`, less the `[MASK]` slot
    that a bidirectional model appends."""
    return config.max_position_embeddings - (0 if config.is_causal else 1)


def check_exportable(model, tokenizer, opset: int) -> None:
    """Refuse, with the reason, what the export cannot handle: an opset without attention, weights that are not
    float32, a tokenizer built for another item table."""
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset} is too old: the attention (scaled_dot_product_attention) exports from "
                          f"opset {MIN_OPSET} on; use {DEFAULT_OPSET}")
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()} - {"float32"})
    if dtypes:
        raise ExportError(
            f"the model's weights are {', '.join(dtypes)}: onnxruntime cannot load the graph this makes (its layer "
            "norms get float32 statistics and half-precision inputs); export a float32 copy (model.float(), or "
            "from_pretrained(..., dtype=torch.float32), as training/export_onnx.py does)"
        )
    model.check_tokenizer(tokenizer)


def example_inputs(model, tokenizer) -> dict:
    """Two left-padded histories to trace with: one as long as the model reads, one shorter (so padding is traced)."""
    length = min(history_limit(model.config), tokenizer.max_len)
    generator = torch.Generator().manual_seed(0)
    items = torch.randint(model.config.num_items, (2 * length,), generator=generator).tolist()
    ids = tokenizer.decode_items(items)
    return tokenizer([ids[:length], ids[length : length + max(length // 2, 1)]], return_tensors="pt")


def export_onnx(model, tokenizer, path, opset: int = DEFAULT_OPSET) -> Path:
    """Write `model`'s catalogue scoring (`score_items`) to the ONNX file `path`, with the item table's fingerprint,
    `num_items` and the history limit as metadata (`OnnxRecommender` checks them against its tokenizer). Puts
    `model` in eval mode; raises `ExportError` (a `ValueError`) for what `check_exportable` refuses."""
    import onnx

    check_exportable(model, tokenizer, opset)
    model = model.eval()
    inputs = example_inputs(model, tokenizer)
    axes = {0: "batch", 1: "history"}
    with torch.no_grad(), tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        # Expected: the tracer evaluates the input checks once (see the module docstring), and this exporter is the
        # TorchScript-based one.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        model.score_items(**inputs)  # builds the cached item tables: the graph holds them as constants
        traced = Path(folder) / "traced.onnx"
        torch.onnx.export(
            CatalogueScorer(model).eval(), (inputs["item_indices"], inputs["attention_mask"]), str(traced),
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False,
            dynamic_axes={**{name: axes for name in INPUT_NAMES}, OUTPUT_NAME: {0: "batch"}},
        )
        proto = onnx.load(str(traced))
    metadata = {"num_items": model.config.num_items, "history_limit": history_limit(model.config),
                "item_table_fingerprint": tokenizer.table_fingerprint, "torch_version": torch.__version__}
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, str(value)
    onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


# -- Running the export ---------------------------------------------------------------------------------------------


@dataclass
class OnnxRecommendations:
    """Top-k of a batch of histories: `item_indices` int64 `(B, k)`, `scores` float32 `(B, k)` (best first) and
    `item_ids`, the `(B, k)` item ids."""

    item_indices: np.ndarray
    scores: np.ndarray
    item_ids: list


def session_options(threads: int | None = None):
    """onnxruntime session options: `threads` intra-op threads (default: onnxruntime's), one inter-op thread."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    return options


class OnnxRecommender:
    """Recommend with an exported model (`export_onnx`) and its checkpoint's tokenizer, through onnxruntime.

        tok = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)
        recommender = OnnxRecommender(f"{checkpoint}/model.onnx", tok)
        recs = recommender.recommend([["B004756YJA", "B004ZT0SSG"]], top_k=10)   # recs.item_ids, recs.scores

    Args:
        path: the `.onnx` file.
        tokenizer: the `SemanticIdTokenizer` of the exported checkpoint (checked against the file's item table).
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
    """

    def __init__(self, path, tokenizer, threads: int | None = None):
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: export it with training/export_onnx.py --model CHECKPOINT "
                                    f"--output {path}")
        self.session = onnxruntime.InferenceSession(str(path), session_options(threads),
                                                    providers=["CPUExecutionProvider"])
        metadata = self.session.get_modelmeta().custom_metadata_map
        fingerprint = metadata.get(METADATA_PREFIX + "item_table_fingerprint")
        if fingerprint is None:
            raise ValueError(f"{path} carries no qbert4rec metadata: export it with training/export_onnx.py")
        if fingerprint != tokenizer.table_fingerprint:
            raise ValueError(
                f"{path} was exported for another item table ({metadata[METADATA_PREFIX + 'num_items']} items) than "
                f"this tokenizer's ({tokenizer.num_items} items): load the tokenizer of the checkpoint it was exported "
                "from, or export again after add_items / retire_items"
            )
        self.tokenizer = tokenizer
        self.num_items = int(metadata[METADATA_PREFIX + "num_items"])
        self.retired = len(tokenizer.retired_items)

    def score(self, item_indices, attention_mask) -> np.ndarray:
        """Left-padded `(B, T)` item indices and attention mask (tensors or arrays) -> scores `(B, num_items)`."""
        feed = {"item_indices": np.asarray(item_indices, dtype=np.int64),
                "attention_mask": np.asarray(attention_mask, dtype=np.int64)}
        return self.session.run([OUTPUT_NAME], feed)[0]

    def scores(self, histories, unknown_items=None) -> np.ndarray:
        """Histories (lists of item ids, oldest first) -> the score of every item `(B, num_items)`."""
        batch = self.tokenizer(histories, return_tensors="pt", unknown_items=unknown_items)
        return self.score(batch["item_indices"].numpy(), batch["attention_mask"].numpy())

    def recommend(self, histories, top_k: int = 10, exclude_history: bool = False,
                  unknown_items=None) -> OnnxRecommendations:
        """The `top_k` best items after each history (item ids, oldest first), as `model.recommend` ranks them;
        `exclude_history` never recommends an item of the history."""
        candidates = self.num_items - self.retired
        if not 1 <= top_k <= candidates:
            raise ValueError(f"top_k must be in [1, {candidates}] (the catalogue's {self.num_items} items, less "
                             f"{self.retired} retired), got {top_k}")
        batch = self.tokenizer(histories, return_tensors="pt", unknown_items=unknown_items)
        item_indices = batch["item_indices"].numpy()
        scores = self.score(item_indices, batch["attention_mask"].numpy())
        if exclude_history:
            rows, columns = np.nonzero(item_indices < self.num_items)
            scores[rows, item_indices[rows, columns]] = -np.inf
        indices, values = top_k_rows(scores, top_k)
        if exclude_history and not np.isfinite(values).all():
            row = int(np.isfinite(values).sum(1).argmin())
            raise ValueError(f"top_k={top_k} exceeds the items left in history {row} after exclude_history removed "
                             "its items: lower top_k")
        return OnnxRecommendations(indices, values, self.tokenizer.decode_items(indices))


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` largest entries of each row of `scores` `(B, N)`, best first: indices and values, each `(B, k)`."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (B, k), unordered
    values = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(values, order, axis=1)


# -- Checking the export against PyTorch ----------------------------------------------------------------------------


def random_histories(tokenizer, count: int, longest: int, seed: int = 0) -> list[list[str]]:
    """`count` histories of catalogue items, of lengths 0 to `longest` (spread evenly), drawn with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.linspace(0, longest, count).round().long().tolist()
    return [tokenizer.decode_items(torch.randint(tokenizer.num_items, (n,), generator=generator).tolist())
            for n in lengths]


def compare_with_pytorch(recommender: OnnxRecommender, model, histories, top_k: int = 10,
                         batch_size: int = 256) -> dict:
    """Score `histories` with onnxruntime and PyTorch: `{"users", "max_abs_diff" (over finite scores),
    "same_top_k" (share of histories whose top-k lists are identical, in order), "top_k"}`."""
    tokenizer, worst, same = recommender.tokenizer, 0.0, 0
    for start in range(0, len(histories), batch_size):
        batch = tokenizer(histories[start : start + batch_size], return_tensors="pt", unknown_items="skip")
        with torch.no_grad():
            expected = model.score_items(**batch).numpy()
        got = recommender.score(batch["item_indices"].numpy(), batch["attention_mask"].numpy())
        finite = np.isfinite(expected)
        if not np.array_equal(finite, np.isfinite(got)):
            worst = math.inf
        else:
            worst = max(worst, float(np.abs(got[finite] - expected[finite]).max()))
        k = min(top_k, int(finite.sum(1).min()))
        same += int((top_k_rows(got, k)[0] == top_k_rows(expected, k)[0]).all(axis=1).sum())
    return {"users": len(histories), "top_k": top_k, "max_abs_diff": worst, "same_top_k": same / len(histories)}


def read_verify_histories(path, count: int) -> list[list[str]]:
    """The first `count` histories of a JSON-lines file of `{"history": [...]}` objects (other lines skipped)."""
    histories = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                history = json.loads(line).get("history")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(history, list) and all(isinstance(item, str) for item in history):
                histories.append(history)
            if len(histories) == count:
                break
    if not histories:
        raise ExportError(f"{path}: no line holds a {{\"history\": [item ids]}} object to check the export on")
    return histories


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def empty_history_warnings_muted(tokenizer):
    """Silence the warning of `tokenizer` (an instance or its class) about histories with no known item: the callers
    count such histories themselves."""
    tokenizer_logger = logging.getLogger(tokenizer.__module__)
    level = tokenizer_logger.level
    tokenizer_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tokenizer_logger.setLevel(level)


def main(argv=None) -> dict:
    (args,) = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    from modeling_qbert4rec import QBert4RecForMaskedItemModeling
    from tokenization_semantic_id import SemanticIdTokenizer

    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"error: {args.model} is no checkpoint folder (no config.json): pass a save_pretrained folder")
    tokenizer = SemanticIdTokenizer.from_pretrained(args.model)
    # float32 whatever the saved dtype: onnxruntime's CPU kernels run this graph in float32 only.
    model = QBert4RecForMaskedItemModeling.from_pretrained(args.model, dtype=torch.float32).eval()
    output = Path(args.output)
    started = time.perf_counter()
    # Written beside the target and renamed only once it agrees with PyTorch: a failed export leaves no file.
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(handle)
    try:
        export_onnx(model, tokenizer, staging, args.opset)
        seconds = time.perf_counter() - started
        histories = (read_verify_histories(args.verify_histories, args.verify_users) if args.verify_histories
                     else random_histories(tokenizer, args.verify_users, history_limit(model.config) + 5))
        with empty_history_warnings_muted(tokenizer):  # random_histories holds an empty one on purpose
            check = compare_with_pytorch(OnnxRecommender(staging, tokenizer), model, histories)
        if not check["max_abs_diff"] <= args.tolerance:
            raise ExportError(f"the ONNX graph disagrees with PyTorch: largest score difference "
                              f"{check['max_abs_diff']:.3g} > --tolerance {args.tolerance} on {check['users']} "
                              "histories")
        os.chmod(staging, 0o666 & ~current_umask())
        os.replace(staging, output)
    except ValueError as error:  # ExportError, or a tokenizer that does not fit the model (check_tokenizer)
        raise SystemExit(f"error: {error}") from None
    finally:
        Path(staging).unlink(missing_ok=True)
    report = {"output": str(output), "megabytes": round(output.stat().st_size / 2**20, 2),
              "export_seconds": round(seconds, 2), **check}
    print(f"wrote {output} ({report['megabytes']} MB, {report['export_seconds']} s); onnxruntime vs PyTorch on "
          f"{check['users']} histories: max |score diff| {check['max_abs_diff']:.2e}, identical top-"
          f"{check['top_k']} for {check['same_top_k']:.1%}")
    return report


if __name__ == "__main__":
    main()
