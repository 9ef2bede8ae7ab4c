"""Q-Bert4Rec: a bidirectional Transformer over semantic-ID sequences (Huang & Gai, arXiv 2512.02474).

Differences from BERT4Rec (Sun et al., CIKM 2019):
- an item is not one embedding row but the sum of its `num_codebooks` code embeddings (one span of the vocabulary
  per level), optionally plus a learned item-ID embedding;
- the head predicts each level's code at masked positions, tied to the code embeddings;
- inputs are item indices; each item's codes come from the catalogue kept as the buffer `item_codes`;
- an item's score is the sum over levels of its code logits (`item_scores`), an inner product between the history
  state and the item's summed code embeddings plus a bias, computed for the whole catalogue at once: an exact full
  ranking, no beam search;
- positions count back from the newest item, so the `[MASK]` appended for next-item prediction always has
  position 0 and left padding changes nothing;
- pre-LayerNorm blocks (nanoGPT) with `scaled_dot_product_attention`.
The model never masks: masking strategies live in `training/masking.py`.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

try:  # inside a checkpoint (remote code) the files form a package
    from .configuration_qbert4rec import QBert4RecConfig
    # saved with the model, so that config.custom_pipelines finds it in the checkpoint
    from .pipeline_qbert4rec import SequentialRecommendationPipeline  # noqa: F401
    from .quantization_qbert4rec import (
        ItemEncoder, content_features, load_text_encoder, new_item_problems, prefix_mean_rows,
    )
    from .tokenization_semantic_id import code_token_ids, mask_index, padding_index
except ImportError:  # installed as flat modules (pip install -e .)
    from configuration_qbert4rec import QBert4RecConfig
    from pipeline_qbert4rec import SequentialRecommendationPipeline  # noqa: F401
    from quantization_qbert4rec import (
        ItemEncoder, content_features, load_text_encoder, new_item_problems, prefix_mean_rows,
    )
    from tokenization_semantic_id import code_token_ids, mask_index, padding_index


# How `add_items` gives new items an item-ID embedding (models with `use_item_embedding`): `content_twin` = the one
# that makes the new item's embedding (codes + ID) that of its content twin, the catalogue item whose content-only
# fused vector is the most similar, so it is scored as its twin is (its code biases stay its own); `prefix_mean` = the
# mean ID embedding of the items sharing the longest prefix of its semantic codes; `unknown` = the unknown-item vector
# learned with `item_embedding_dropout`; `zero` = none (scored from its codes alone). On Beauty with 5% of items cold,
# `content_twin` ranked cold targets about ten times better than the others (docs/results.md, "Cold start").
NEW_ITEM_EMBEDDINGS = ("content_twin", "prefix_mean", "unknown", "zero")

# Rows of catalogue logits alive at once in the training loss: one reused buffer of 64 x 12,101 floats (3.1 MB) on
# Beauty, whatever the number of labelled positions.
ITEM_LOSS_BLOCK = 64


def catalogue_scores(states, item_embeddings, item_bias, seen_columns=None, seen_values=None, out=None):
    """The score of every item after each history: `states` `(M, H)` @ `item_embeddings.T` `(H, N)` + `item_bias`
    `(N,)`, plus `seen_values` `(M, S)` at each row's `seen_columns` `(M, S)` (`seen_item_columns`) -> `(M, N)`,
    written into `out` when given. Ranking, `recommend` and the training loss all score items here."""
    scores = torch.addmm(item_bias, states, item_embeddings.t(), out=out)
    return scores if seen_columns is None else scores.scatter_add_(1, seen_columns, seen_values)


class CatalogueCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `states` `(M, H)` against `targets` `(M,)` over the item scores `(M, N)` of
    `catalogue_scores`, which never exist whole; with `seen_bias`, a scalar, added at each row's `seen_columns`
    `(M, S)` times `seen_weights` `(M, S)` (`seen_item_columns`).

    The forward pass works through `ITEM_LOSS_BLOCK` rows at a time in one reused `(ITEM_LOSS_BLOCK, N)` buffer and
    makes the gradients as it goes (softmax minus one-hot, then two products), so backward only scales them: a fused
    linear cross-entropy, as Liger-Kernel's, for CPU. Against checkpointed blocks, this saves the logits' second
    product in backward, and the heap no longer fills with a fresh logits block per block (on Beauty, SASRec-CE's 200
    blocks per batch kept 280 MiB more resident than mapped 12 MB blocks did). Computed in float32.
    """

    @staticmethod
    def _needs_grad(ctx):
        """Whether states, item embeddings, item bias and seen bias need gradients (the last three inputs are optional)."""
        needs = (*ctx.needs_input_grad, False, False, False)
        return needs[0], needs[2], needs[3], needs[6]

    @staticmethod
    def forward(ctx, states, targets, item_embeddings, item_bias, seen_columns=None, seen_weights=None, seen_bias=None):
        with torch.autocast(states.device.type, enabled=False):  # float32 throughout, also under mixed precision
            return CatalogueCrossEntropy._forward(
                ctx, states, targets, item_embeddings, item_bias, seen_columns, seen_weights, seen_bias
            )

    @staticmethod
    def _forward(ctx, states, targets, item_embeddings, item_bias, seen_columns, seen_weights, seen_bias):
        dtype = torch.float32
        states32, embeddings32, bias32 = (t.detach().to(dtype) for t in (states, item_embeddings, item_bias))
        needs_states, needs_embeddings, needs_bias, needs_seen_bias = CatalogueCrossEntropy._needs_grad(ctx)
        grad_states = torch.empty_like(states32) if needs_states else None
        grad_embeddings = torch.zeros_like(embeddings32) if needs_embeddings else None
        grad_bias = torch.zeros_like(bias32) if needs_bias else None
        if seen_bias is not None:
            seen_values = seen_weights.to(dtype) * seen_bias.detach().to(dtype)  # (M, S)
            grad_seen_bias = seen_bias.new_zeros((), dtype=dtype)
        buffer = states32.new_empty(min(len(states32), ITEM_LOSS_BLOCK), len(embeddings32))
        loss = states32.new_zeros(())
        for start in range(0, len(states32), ITEM_LOSS_BLOCK):
            rows = slice(start, start + ITEM_LOSS_BLOCK)
            block, block_targets = states32[rows], targets[rows, None]  # (m, H), (m, 1)
            seen = (seen_columns[rows], seen_values[rows]) if seen_bias is not None else ()
            logits = catalogue_scores(block, embeddings32, bias32, *seen, out=buffer[: len(block)])  # (m, N)
            top = logits.amax(dim=1, keepdim=True)
            target_logits = logits.gather(1, block_targets)
            probabilities = logits.sub_(top).exp_()  # in place: the buffer now holds exp(logit - max)
            normaliser = probabilities.sum(dim=1, keepdim=True)
            loss += (normaliser.log() + top - target_logits).sum()
            gradient = probabilities.div_(normaliser).scatter_add_(1, block_targets, torch.full_like(target_logits, -1.0))
            if needs_states:
                torch.mm(gradient, embeddings32, out=grad_states[rows])  # d loss / d states
            if needs_embeddings:
                grad_embeddings.addmm_(gradient.t(), block)
            if needs_bias:
                grad_bias += gradient.sum(dim=0)
            if seen_bias is not None and needs_seen_bias:
                grad_seen_bias += (gradient.gather(1, seen_columns[rows]) * seen_weights[rows]).sum()
        if seen_bias is None or not needs_seen_bias:
            grad_seen_bias = None
        grads = (grad_states, grad_embeddings, grad_bias, grad_seen_bias)
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in grads))
        ctx.dtypes = states.dtype, item_embeddings.dtype, item_bias.dtype, getattr(seen_bias, "dtype", None)
        return loss.to(states.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        inputs = len(ctx.needs_input_grad)  # 4, or 7 with the seen-item arguments
        needs_states, needs_embeddings, needs_bias, needs_seen_bias = CatalogueCrossEntropy._needs_grad(ctx)
        grads = [g * grad_loss if needed else None
                 for g, needed in zip(ctx.saved_tensors, (needs_states, needs_embeddings, needs_bias, needs_seen_bias))]
        grads = [g.to(dtype) if g is not None else None for g, dtype in zip(grads, ctx.dtypes)]
        return (grads[0], None, grads[1], grads[2], None, None, grads[3])[:inputs]


def seen_item_columns(item_indices, num_items):
    """Items already seen `(..., S)` (indices `>= num_items` are padding or `[MASK]`) -> `columns` (long) and `weights`
    (float), both `(..., S)`: each distinct item once with weight 1, the rest weight 0 at column 0, so that
    `logits.scatter_add_(-1, columns, weights * bias)` adds `bias` once to every seen item's logit."""
    columns = item_indices.sort(dim=-1).values
    first = torch.ones_like(columns[..., :1], dtype=torch.bool)
    distinct = (columns < num_items) & torch.cat([first, columns[..., 1:] != columns[..., :-1]], dim=-1)
    return columns.masked_fill(~distinct, 0), distinct.float()


def history_exclusion(item_indices, num_items):
    """Bool `(B, num_items)`: True for every item in each history `item_indices` `(B, T)` (padding and `[MASK]`
    ignored), the candidates that `exclude_history` removes."""
    exclude = torch.zeros(item_indices.shape[0], mask_index(num_items) + 1, dtype=torch.bool, device=item_indices.device)
    exclude.scatter_(1, item_indices, True)
    return exclude[:, :num_items]


class QBert4RecEmbeddings(nn.Module):
    """Sum of code embeddings (+ item-ID embedding) + position embedding, then LayerNorm and dropout."""

    def __init__(self, config: QBert4RecConfig):
        super().__init__()
        self.code_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        # One row per item index: the items, then padding and [MASK].
        self.item_embeddings = (
            nn.Embedding(mask_index(config.num_items) + 1, config.hidden_size, padding_idx=padding_index(config.num_items))
            if config.use_item_embedding
            else None
        )
        # The vector that stands for an item-ID embedding dropped in training (`item_embedding_dropout`).
        self.unknown_item_embedding = (
            nn.Parameter(torch.zeros(config.hidden_size)) if config.item_embedding_dropout > 0 else None
        )
        self.item_embedding_dropout = config.item_embedding_dropout
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def drop_item_embeddings(self, item_embeddings, item_indices, num_items):
        """In training, replace each item's ID embedding `(..., H)` at `item_indices` `(...)` by the unknown-item
        vector with probability `item_embedding_dropout` (padding and `[MASK]` rows untouched)."""
        if not (self.training and torch.is_grad_enabled() and self.item_embedding_dropout > 0):
            return item_embeddings
        drop = (torch.rand(item_indices.shape, device=item_indices.device) < self.item_embedding_dropout)
        drop &= item_indices < num_items
        return torch.where(drop[..., None], self.unknown_item_embedding.to(item_embeddings.dtype), item_embeddings)

    def forward(self, input_ids, attention_mask, item_indices=None, inputs_embeds=None):
        """`input_ids` `(B, T, L)`, `attention_mask` `(B, T)`, `item_indices` `(B, T)` -> `(B, T, H)`.
        `inputs_embeds` `(B, T, H)`, when given, replaces the summed code (and item-ID) embeddings."""
        if inputs_embeds is not None:
            embeddings = inputs_embeds
        else:
            embeddings = self.code_embeddings(input_ids).sum(dim=2)  # (B, T, L, H) -> (B, T, H)
            if self.item_embeddings is not None:
                if item_indices is None:
                    raise ValueError("this model adds item-ID embeddings (use_item_embedding=True): pass item_indices")
                num_items = self.item_embeddings.padding_idx  # padding_index(num_items) is num_items
                embeddings = embeddings + self.drop_item_embeddings(self.item_embeddings(item_indices), item_indices,
                                                                    num_items)
        # Position 0 is the newest item; padding positions get 0 too, but they are never attended to.
        from_end = attention_mask.flip(1).cumsum(1).flip(1) - 1  # (B, T)
        position_ids = from_end.clamp(0, self.position_embeddings.num_embeddings - 1)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class QBert4RecSelfAttention(nn.Module):
    def __init__(self, config: QBert4RecConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(self, hidden_states, key_mask, last_position_only=False):
        """`hidden_states` `(B, T, H)`, `key_mask` `(B, 1, T, T)` bool (True = attend) -> `(B, T, H)`, or `(B, 1, H)`
        for the last position's query alone with `last_position_only`."""
        B, T, H = hidden_states.shape
        q, k, v = self.qkv(hidden_states).split(H, dim=2)
        q, k, v = (x.view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2) for x in (q, k, v))  # (B, nh, T, hs)
        if last_position_only:
            q, key_mask = q[:, :, -1:], key_mask[:, :, -1:]
        dropout = self.dropout_prob if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout)  # (B, nh, Tq, hs)
        return self.output(context.transpose(1, 2).reshape(B, q.shape[2], H))


class QBert4RecLayer(nn.Module):
    """Pre-LN Transformer block: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: QBert4RecConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = QBert4RecSelfAttention(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size),
            nn.GELU() if config.hidden_act == "gelu" else nn.ReLU(),
            nn.Linear(config.intermediate_size, config.hidden_size),
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, key_mask, last_position_only=False):
        """`(B, T, H)` -> `(B, T, H)`; `(B, 1, H)` with `last_position_only` (every position is still attended to)."""
        attended = self.attention(self.attention_norm(hidden_states), key_mask, last_position_only)
        if last_position_only:
            hidden_states = hidden_states[:, -1:]
        hidden_states = hidden_states + self.dropout(attended)
        return hidden_states + self.dropout(self.ffn(self.ffn_norm(hidden_states)))


class QBert4RecEncoder(nn.Module):
    def __init__(self, config: QBert4RecConfig):
        super().__init__()
        self.layers = nn.ModuleList(QBert4RecLayer(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.is_causal = config.is_causal

    def forward(self, hidden_states, attention_mask, last_position_only=False):
        """`hidden_states` `(B, T, H)`, `attention_mask` `(B, T)` -> `(B, T, H)`; `(B, 1, H)`, the last position
        alone, with `last_position_only` (scoring needs no other output: the last layer skips the rest)."""
        T = hidden_states.shape[1]
        key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        if self.is_causal:
            key_mask = key_mask & torch.ones(T, T, dtype=torch.bool, device=key_mask.device).tril()
        # Every position may attend to itself, so a padding row (never read) gets finite values, not NaN.
        key_mask = key_mask | torch.eye(T, device=key_mask.device).bool()  # (float eye: onnxruntime has no bool one)
        for i, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states, key_mask, last_position_only and i == len(self.layers) - 1)
        return self.final_norm(hidden_states)


class QBert4RecPredictionHead(nn.Module):
    """Dense + activation + LayerNorm, then per-level code logits tied to the code embeddings."""

    def __init__(self, config: QBert4RecConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.GELU() if config.hidden_act == "gelu" else nn.ReLU()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.num_codebooks, config.codebook_size))
        # One logit for items already in the history (`seen_item_bias`); a bias, so it gets no weight decay.
        self.seen_item_bias = nn.Parameter(torch.zeros(())) if config.seen_item_bias else None
        self.num_special_tokens = config.num_special_tokens
        self.num_codebooks = config.num_codebooks
        self.codebook_size = config.codebook_size

    def transform(self, hidden_states):
        """`(..., H)` encoder states -> `(..., H)` prediction states."""
        return self.LayerNorm(self.activation(self.dense(hidden_states)))

    def code_logits(self, states, code_embedding_weight):
        """Prediction states `(..., H)`, `code_embedding_weight` `(vocab_size, H)` -> logits `(..., L, K)`."""
        codes = code_embedding_weight[self.num_special_tokens :]  # (L * K, H), level-major
        logits = F.linear(states, codes)  # (..., L * K)
        return logits.view(*logits.shape[:-1], self.num_codebooks, self.codebook_size) + self.bias

    def forward(self, hidden_states, code_embedding_weight):
        """`hidden_states` `(..., H)`, `code_embedding_weight` `(vocab_size, H)` -> logits `(..., L, K)`."""
        return self.code_logits(self.transform(hidden_states), code_embedding_weight)


class QBert4RecPreTrainedModel(PreTrainedModel):
    config_class = QBert4RecConfig
    base_model_prefix = "qbert4rec"
    supports_gradient_checkpointing = False
    _no_split_modules = ["QBert4RecLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, QBert4RecPredictionHead):
            for bias in (module.bias, module.seen_item_bias):
                if bias is not None and not getattr(bias, "_is_hf_initialized", False):
                    with torch.no_grad():
                        bias.zero_()


@dataclass
class QBert4RecMaskedItemOutput(ModelOutput):
    """Output of [`QBert4RecForMaskedItemModeling`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, with `labels`): mean cross-entropy over levels and masked positions.
        logits (`torch.FloatTensor`): per-level code logits, `(num_masked, num_codebooks, codebook_size)` at the
            labelled positions when `labels` is given (`None` with `loss_type="items"`, which does not use them),
            else `(batch, seq_len, num_codebooks, codebook_size)`.
        last_hidden_state (`torch.FloatTensor` of shape `(batch, seq_len, hidden_size)`, without `labels`): encoder
            output.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


@dataclass
class QBert4RecRecommendationOutput(ModelOutput):
    """Output of [`QBert4RecForMaskedItemModeling.recommend`].

    Args:
        item_indices (`torch.LongTensor` of shape `(batch, top_k)`): recommended item indices, best first
            (`tokenizer.decode_items` turns them into item ids).
        scores (`torch.FloatTensor` of shape `(batch, top_k)`): their scores (`item_scores`, higher = better).
    """

    item_indices: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None


class QBert4RecModel(QBert4RecPreTrainedModel):
    """The bare encoder: semantic-ID sequences -> hidden states `(batch, seq_len, hidden_size)`."""

    def __init__(self, config: QBert4RecConfig):
        super().__init__(config)
        self.embeddings = QBert4RecEmbeddings(config)
        self.encoder = QBert4RecEncoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.code_embeddings

    def forward(self, input_ids, attention_mask=None, item_indices=None, last_position_only=False, inputs_embeds=None,
                **kwargs):
        """`input_ids` `(B, T, L)` token ids, `attention_mask` `(B, T)`, `item_indices` `(B, T)` -> `BaseModelOutput`
        with `last_hidden_state` `(B, T, H)`, or `(B, 1, H)` (the newest position only) with `last_position_only`.
        `inputs_embeds` `(B, T, H)` optionally replaces the summed code (and item-ID) embeddings of `input_ids`."""
        if input_ids is not None and (input_ids.dim() != 3 or input_ids.shape[-1] != self.config.num_codebooks):
            raise ValueError(
                f"input_ids must have shape (batch, seq_len, num_codebooks={self.config.num_codebooks}), "
                f"got {tuple(input_ids.shape)}"
            )
        seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if seq_len > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {seq_len} positions exceeds max_position_embeddings={self.config.max_position_embeddings}"
            )
        if attention_mask is None:
            attention_mask = (input_ids[..., 0] != self.config.pad_token_id).long()
        hidden_states = self.embeddings(input_ids, attention_mask, item_indices, inputs_embeds)
        return BaseModelOutput(last_hidden_state=self.encoder(hidden_states, attention_mask, last_position_only))


class QBert4RecForMaskedItemModeling(QBert4RecPreTrainedModel):
    """Encoder + per-level code heads over the catalogue; trains on masked positions and ranks the whole catalogue.

    Inputs are item indices (`SemanticIdTokenizer` returns them): `[0, num_items)` are items, `padding_index` and
    `mask_index` (`tokenization_semantic_id`) padding and `[MASK]`. Each item's codes come from the buffer
    `item_codes`, so the model never sees a code it was not built with."""

    main_input_name = "item_indices"

    def __init__(self, config: QBert4RecConfig):
        super().__init__(config)
        self.qbert4rec = QBert4RecModel(config)
        self.head = QBert4RecPredictionHead(config)
        # The catalogue: codes of every item in index order, saved with the weights.
        self.register_buffer("item_codes", torch.zeros(config.num_items, config.num_codebooks, dtype=torch.long))
        # Stage 1's content path and stage 2's encoder, for new items (`add_items`); saved with the weights.
        self.item_encoder = ItemEncoder(config.item_encoder, config.num_items) if config.item_encoder else None
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with a clear error when `config.json` and the weights disagree."""
        try:
            return super().from_pretrained(*args, **kwargs)
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            raise ValueError(
                "the weights do not fit config.json (the load report above names the tensors): its num_items, "
                "num_codebooks, codebook_size or hidden_size differ from the saved model's, e.g. item_codes holds one "
                "row per item. config.json and model.safetensors come from different saves: use the config.json saved "
                "with these weights"
            ) from None

    # -- The catalogue ---------------------------------------------------------------------------------------------

    def set_item_codes(self, item_codes, fingerprint=None):
        """Install the catalogue `(num_items, num_codebooks)` of codes (e.g. `tokenizer.item_codes`), and the
        tokenizer's `table_fingerprint` when given."""
        item_codes = torch.as_tensor(item_codes, dtype=torch.long)
        expected = (self.config.num_items, self.config.num_codebooks)
        if tuple(item_codes.shape) != expected:
            raise ValueError(f"item_codes must have shape {expected}, got {tuple(item_codes.shape)}")
        if item_codes.min() < 0 or item_codes.max() >= self.config.codebook_size:
            raise ValueError(f"item codes must lie in [0, codebook_size={self.config.codebook_size})")
        self.item_codes.copy_(item_codes)
        self.config.item_table_fingerprint = fingerprint

    def check_tokenizer(self, tokenizer):
        """Raise `ValueError` unless `tokenizer` was built for this model's item table."""
        shape = (tokenizer.num_items, tokenizer.num_codebooks, tokenizer.codebook_size)
        expected = (self.config.num_items, self.config.num_codebooks, self.config.codebook_size)
        if shape != expected or not torch.equal(tokenizer.item_codes, self.item_codes.cpu()):
            raise ValueError(
                "tokenizer and model were built for different item tables (tokenizer: "
                f"{shape[0]} items x {shape[1]} codes of {shape[2]}; model: {expected[0]} x {expected[1]} of "
                f"{expected[2]}{'; same shapes but different codes' if shape == expected else ''}): "
                "load both from the same checkpoint"
            )
        expected_fingerprint = self.config.item_table_fingerprint
        if expected_fingerprint and tokenizer.table_fingerprint != expected_fingerprint:
            raise ValueError(
                "tokenizer and model were built for different item tables: same codes, but other item ids or another "
                "order (table fingerprints differ); load both from the same checkpoint"
            )

    def add_items(self, tokenizer, items, text_encoder=None, item_embeddings="content_twin", batch_size=64,
                  progress=True):
        """Add new items to the catalogue from their content alone; they are candidates at once. Extends this model
        and `tokenizer` in place (save both to keep them).

        Args:
            tokenizer: the checkpoint's `SemanticIdTokenizer`.
            items: dicts with an `item_id` and content: the text fields the checkpoint was trained with (e.g. `title`,
                `brand`, `categories`), and/or precomputed `text_vector` / `image_vector`.
            text_encoder: HF id or local folder of the text encoder (default: the one `config.item_encoder` records).
            item_embeddings: with item-ID embeddings, what new items get (`NEW_ITEM_EMBEDDINGS`).
            batch_size: texts per encoder batch. progress: show a progress bar while encoding.

        Returns:
            the new items' semantic IDs, one list of `num_codebooks` codes per item; an item whose semantic codes
            collide with an existing item's gets the smallest free disambiguation code. Bad input raises
            `ValueError` naming every problem, and nothing changes.
        """
        if self.item_encoder is None:
            raise ValueError(
                "this checkpoint has no item encoder (stage 1's content path and stage 2's encoder; config.item_encoder "
                "is empty): it was saved before new items were supported. With the run's folders, add it with "
                "python training/item_encoder.py --model_dir DIR --dataset_dir DATA --features_dir FEAT --inject_dir INJ "
                "--semantic_ids_dir SID"
            )
        if item_embeddings not in NEW_ITEM_EMBEDDINGS:
            raise ValueError(f"item_embeddings must be one of {NEW_ITEM_EMBEDDINGS}, got {item_embeddings!r}")
        if item_embeddings == "unknown" and self.qbert4rec.embeddings.unknown_item_embedding is None:
            raise ValueError("item_embeddings='unknown' needs a model trained with item_embedding_dropout > 0")
        self.check_tokenizer(tokenizer)
        items = list(items)
        if not items:
            raise ValueError("items is empty: pass at least one item")
        problems = new_item_problems(items, self.config.item_encoder, set(tokenizer.item_ids))
        if problems:
            lines = "\n  ".join(message for _, message in problems)
            raise ValueError(f"{len(problems)} problem(s) with the new items, nothing was added:\n  {lines}")
        encode = load_text_encoder(self.config.item_encoder, text_encoder, batch_size, progress)
        features, masks = content_features(items, self.config.item_encoder, encode)
        device = self.item_codes.device
        fused, semantic_codes = self.item_encoder({m: f.to(device) for m, f in features.items()},
                                                  {m: k.to(device) for m, k in masks.items()})
        new_codes = tokenizer.add_items([item["item_id"] for item in items], semantic_codes.cpu(),
                                        titles=[item.get("title") for item in items])
        self._grow_catalogue(new_codes.to(device), fused, item_embeddings)
        self.config.item_table_fingerprint = tokenizer.table_fingerprint
        return new_codes.tolist()

    def retire_items(self, tokenizer, item_ids):
        """Retire items: never recommended again (their scores are `-inf`); histories may still hold them. Updates
        this model and `tokenizer` in place. An unknown id, or retiring every item, raises and changes nothing."""
        self.check_tokenizer(tokenizer)
        indices = tokenizer.retire_items(item_ids)
        self.config.retired_items = sorted(set(self.config.retired_items) | set(indices))
        self.config.item_table_fingerprint = tokenizer.table_fingerprint

    @torch.no_grad()
    def _grow_catalogue(self, new_codes, fused, item_embeddings):
        """Append items with codes `new_codes` `(n, num_codebooks)` and content-only fused vectors `fused` `(n, dim)`:
        the `item_codes` and `content_vectors` rows, and with item-ID embeddings their rows (inserted before the
        padding and `[MASK]` rows, which move to the new end)."""
        old, new = self.config.num_items, self.config.num_items + len(new_codes)
        embeddings = self.qbert4rec.embeddings
        if embeddings.item_embeddings is not None:
            weight = embeddings.item_embeddings.weight
            if item_embeddings == "content_twin":  # the twin's codes + ID embedding, less the new item's codes
                twins = self.item_encoder.content_twins(fused)
                own_codes = embeddings.code_embeddings(code_token_ids(new_codes, self.config.codebook_size)).sum(1)
                rows = self._input_table()[twins] - own_codes
            elif item_embeddings == "prefix_mean":
                rows = prefix_mean_rows(self.item_codes[:, :-1], new_codes[:, :-1], weight[:old])
            elif item_embeddings == "unknown":
                rows = embeddings.unknown_item_embedding.expand(len(new_codes), -1)
            else:
                rows = weight.new_zeros(len(new_codes), weight.shape[1])
            grown = nn.Embedding(mask_index(new) + 1, weight.shape[1], padding_idx=padding_index(new))
            grown.weight.copy_(torch.cat([weight[:old], rows, weight[old:]]))
            embeddings.item_embeddings = grown.to(weight.device, weight.dtype)
        self.item_codes = torch.cat([self.item_codes, new_codes])
        self.item_encoder.content_vectors = torch.cat([self.item_encoder.content_vectors, fused])
        self.config.num_items = new
        self._cached_item_table = self._cached_input_table = None

    def code_tokens(self, item_indices):
        """Item indices `(...)` -> the code token ids `(..., num_codebooks)` of each item; padding and `[MASK]`
        positions hold `pad_token_id` and `mask_token_id` at every level."""
        num_items = self.config.num_items
        tokens = code_token_ids(self.item_codes[item_indices.clamp(max=num_items - 1)], self.config.codebook_size)
        tokens = tokens.masked_fill((item_indices == padding_index(num_items))[..., None], self.config.pad_token_id)
        return tokens.masked_fill((item_indices == mask_index(num_items))[..., None], self.config.mask_token_id)

    def _check_inputs(self, item_indices, attention_mask):
        """Refuse what is not a `(batch, seq_len)` tensor of this catalogue's item indices."""
        for name, tensor in (("item_indices", item_indices), ("attention_mask", attention_mask)):
            if tensor is not None and not isinstance(tensor, torch.Tensor):
                raise TypeError(
                    f"{name} must be a tensor, got {type(tensor).__name__}: call the tokenizer with "
                    "return_tensors='pt'"
                )
        if item_indices.dim() != 2:
            raise ValueError(f"item_indices must have shape (batch, seq_len), got {tuple(item_indices.shape)}")
        if item_indices.numel() and (item_indices.min() < 0 or item_indices.max() > mask_index(self.config.num_items)):
            raise ValueError(
                f"item_indices outside [0, {mask_index(self.config.num_items)}]: the tokenizer was built for a "
                f"different item table than this model ({self.config.num_items} items); load both from the same "
                "checkpoint"
            )

    def _cached(self, name, sources, build):
        """`build()`, a table made from the tensors `sources`, cached while no gradient is taken until one of them
        changes (another storage, or an in-place update such as an optimiser step)."""
        cacheable = not torch.is_grad_enabled() and not any(t.is_inference() for t in sources)
        key = tuple((t.data_ptr(), t._version) for t in sources) if cacheable else None
        cached = getattr(self, f"_cached_{name}", None)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        table = build()
        setattr(self, f"_cached_{name}", (key, table) if key is not None else None)
        return table

    def _item_table(self):
        """Each item's output embedding `(num_items, H)` and bias `(num_items,)`: its summed code embeddings (plus its
        item-ID embedding with `score_item_embedding`) and summed code biases.

        Cached for inference (`_cached`): building it is half of a batch-1 `recommend` call on CPU."""
        embeddings = self.qbert4rec.embeddings
        sources = [embeddings.code_embeddings.weight, self.head.bias, self.item_codes]
        if self.config.score_item_embedding:
            sources.append(embeddings.item_embeddings.weight)

        def build():
            tokens = code_token_ids(self.item_codes, self.config.codebook_size)  # (num_items, L)
            item_embeddings = embeddings.code_embeddings(tokens).sum(1)  # (num_items, L, H) -> (num_items, H)
            if self.config.score_item_embedding:
                every_item = torch.arange(self.config.num_items, device=tokens.device)
                ids = embeddings.drop_item_embeddings(embeddings.item_embeddings.weight[: self.config.num_items],
                                                      every_item, self.config.num_items)
                item_embeddings = item_embeddings + ids
            levels = torch.arange(self.config.num_codebooks, device=self.item_codes.device)
            return item_embeddings, self.head.bias[levels, self.item_codes].sum(1)

        return self._cached("item_table", sources, build)

    def _input_table(self):
        """Each item index's input embedding `(num_items + 2, H)` (the last two rows: padding and `[MASK]`): its
        summed code embeddings, plus its item-ID embedding with `use_item_embedding`. Inference looks a history up in
        it, one row per position, instead of summing `num_codebooks` code embeddings per position. Cached like
        `_item_table`."""
        embeddings = self.qbert4rec.embeddings
        sources = [embeddings.code_embeddings.weight, self.item_codes]
        if self.config.use_item_embedding:
            sources.append(embeddings.item_embeddings.weight)

        def build():
            every_index = torch.arange(mask_index(self.config.num_items) + 1, device=self.item_codes.device)
            table = embeddings.code_embeddings(self.code_tokens(every_index)).sum(1)  # (num_items + 2, H)
            return table + embeddings.item_embeddings.weight if self.config.use_item_embedding else table

        return self._cached("input_table", sources, build)

    # -- Encoding and training -------------------------------------------------------------------------------------

    def _encode(self, item_indices, attention_mask, last_position_only=False):
        """Item indices `(B, T)` -> encoder states `(B, T, H)` (`(B, 1, H)` with `last_position_only`). Inference
        reads each item's summed embeddings from one table (the same values, fewer lookups)."""
        if torch.is_grad_enabled():
            tokens, inputs_embeds = self.code_tokens(item_indices), None
        else:
            tokens, inputs_embeds = None, self._input_table()[item_indices]  # (B, T, H)
        return self.qbert4rec(tokens, attention_mask, item_indices, last_position_only=last_position_only,
                              inputs_embeds=inputs_embeds).last_hidden_state

    def _seen_items(self, item_indices, num_labelled_positions):
        """`(B, P, T)`: the items each of the last `num_labelled_positions` positions P has seen, from
        `item_indices` `(B, T)` (padding and `[MASK]` >= num_items): the whole row, or with `is_causal` the row up to
        that position."""
        B, T = item_indices.shape
        seen = item_indices[:, None, :].expand(B, T, T)
        if self.config.is_causal:
            future = torch.ones(T, T, dtype=torch.bool, device=item_indices.device).triu(1)  # [t, s]: s > t
            seen = seen.masked_fill(future, padding_index(self.config.num_items))
        return seen[:, T - num_labelled_positions :]

    def _item_cross_entropy(self, states, target_items, seen=None):
        """Mean catalogue cross-entropy of states `(M, H)` against item indices `(M,)`, with the `seen_item_bias`
        at each row's seen items `seen` `(M, S)` when given.

        Pretraining has thousands of masked positions per batch: their `(M, num_items)` logits, softmax and gradient
        would take hundreds of megabytes (about 0.5 GB for 3,500 positions and 12,101 items). `CatalogueCrossEntropy`
        keeps `ITEM_LOSS_BLOCK` rows of them at a time instead, whatever M."""
        seen_bias = ()
        if seen is not None:
            seen_bias = (*seen_item_columns(seen, self.config.num_items), self.head.seen_item_bias)
        return CatalogueCrossEntropy.apply(states, target_items, *self._item_table(), *seen_bias) / len(states)

    def forward(self, item_indices, attention_mask=None, labels=None, **kwargs):
        """Masked item modelling.

        Args:
            item_indices (`torch.LongTensor` of shape `(batch, seq_len)`): left-padded item indices, `mask_index` at
                masked positions and `padding_index` at padding.
            attention_mask (`torch.LongTensor` of shape `(batch, seq_len)`): 1 for items (masked or not), 0 for
                padding (default: derived from `padding_index`).
            labels (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*): the original item index at masked
                positions, -100 elsewhere.

        Returns:
            [`QBert4RecMaskedItemOutput`]: with `labels`, the loss and the code logits of the labelled positions;
            without, the code logits and encoder states of every position.
        """
        attention_mask = self._attention_mask(item_indices, attention_mask)
        if labels is None:
            hidden = self._encode(item_indices, attention_mask)
            weight = self.qbert4rec.embeddings.code_embeddings.weight
            return QBert4RecMaskedItemOutput(logits=self.head(hidden, weight), last_hidden_state=hidden)
        if labels.shape != item_indices.shape:
            raise ValueError(f"labels must have the shape of item_indices {tuple(item_indices.shape)}, got "
                             f"{tuple(labels.shape)}")
        labelled = labels != -100  # (B, T)
        if ((labels[labelled] < 0) | (labels[labelled] >= self.config.num_items)).any():
            raise ValueError(f"labels must be item indices in [0, {self.config.num_items}) or -100")
        # Fine-tuning labels the appended [MASK] alone: the last layer then computes that position only.
        last_only = labels.shape[1] > 1 and not labelled[:, :-1].any()
        hidden = self._encode(item_indices, attention_mask, last_position_only=last_only)
        if last_only:
            labels, labelled = labels[:, -1:], labelled[:, -1:]
        states = self.head.transform(hidden[labelled])  # (M, H): only labelled positions (sparse prediction)
        target_items = labels[labelled]  # (M,)
        loss = states.sum() * 0.0  # stays 0 (with a graph) when nothing is labelled
        logits = None  # the `items` loss needs no code logits (for the ID baselines, (M, num_items) of them)
        if self.config.loss_type in ("codes", "codes+items"):
            logits = self.head.code_logits(states, self.qbert4rec.embeddings.code_embeddings.weight)  # (M, L, K)
            if labelled.any():
                targets = self.item_codes[target_items]  # (M, L) codes
                loss = loss + F.cross_entropy(logits.reshape(-1, self.config.codebook_size), targets.reshape(-1))
        if self.config.loss_type in ("items", "codes+items") and labelled.any():
            seen = None
            if self.head.seen_item_bias is not None:
                seen = self._seen_items(item_indices, labels.shape[1])[labelled]  # (M, T)
            loss = loss + self._item_cross_entropy(states, target_items, seen)
        return QBert4RecMaskedItemOutput(loss=loss, logits=logits)

    # -- Scoring the catalogue -------------------------------------------------------------------------------------

    def _attention_mask(self, item_indices, attention_mask):
        """The `(B, T)` attention mask (derived from `padding_index` when `None`), after checking the inputs;
        refuses right-padded histories."""
        self._check_inputs(item_indices, attention_mask)
        if attention_mask is None:
            attention_mask = (item_indices != padding_index(self.config.num_items)).long()
        if (attention_mask[:, -1] == 0).logical_and(attention_mask.sum(1) > 0).any():
            raise ValueError("histories must be left-padded (newest item last), as the SemanticIdTokenizer returns them")
        return attention_mask

    def history_states(self, item_indices, attention_mask=None):
        """The prediction state after each left-padded history `(batch, seq_len)`, `(batch, hidden_size)`: what
        `item_scores` scores the catalogue against."""
        attention_mask = self._attention_mask(item_indices, attention_mask)
        if not self.config.is_causal:  # bidirectional: predict at a [MASK] appended after the history
            B, keep = item_indices.shape[0], self.config.max_position_embeddings
            masked = item_indices.new_full((B, 1), mask_index(self.config.num_items))
            item_indices = torch.cat([item_indices, masked], dim=1)[:, -keep:]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)[:, -keep:]
        hidden = self._encode(item_indices, attention_mask, last_position_only=True)[:, -1]  # (B, H)
        return self.head.transform(hidden)  # (B, H)

    def item_scores(self, states, item_indices=None):
        """Prediction states `(M, H)` -> the score of every item `(M, num_items)`: the sum of the item's code logits,
        plus its item-ID term with `score_item_embedding`, and with `seen_item_bias` the learned logit at the items
        of each row's history `item_indices` `(M, T)`, which it then needs. Evaluation, `recommend` and (blockwise)
        the training loss score items through `catalogue_scores`."""
        if self.head.seen_item_bias is None:
            scores = catalogue_scores(states, *self._item_table())
        elif item_indices is None:
            raise ValueError("this model adds a learned logit to history items (seen_item_bias=True): pass item_indices")
        else:
            columns, weights = seen_item_columns(item_indices, self.config.num_items)
            seen_values = weights * self.head.seen_item_bias.to(states.dtype)
            scores = catalogue_scores(states, *self._item_table(), columns, seen_values)
        if self.config.retired_items:  # never recommended
            retired = torch.tensor(self.config.retired_items, device=scores.device)
            scores = scores.index_fill(1, retired, -math.inf)
        return scores

    def score_items(self, item_indices, attention_mask=None, **kwargs):
        """Score every item as the next one after each history.

        Args:
            item_indices (`(batch, seq_len)`), attention_mask (`(batch, seq_len)`): left-padded histories, as the
                tokenizer returns them.

        Returns:
            `torch.FloatTensor` of shape `(batch, num_items)`, higher = better (`item_scores`).
        """
        return self.item_scores(self.history_states(item_indices, attention_mask), item_indices)

    @torch.no_grad()
    def recommend(self, item_indices, attention_mask=None, top_k=10, exclude_history=False, **kwargs):
        """Top-k next items for a batch of histories.

        Args:
            item_indices, attention_mask: the tokenizer's output (left-padded histories).
            top_k (`int`): items to return per history.
            exclude_history (`bool`): never recommend an item already in the history.

        Returns:
            [`QBert4RecRecommendationOutput`] with `item_indices` and `scores`, each `(batch, top_k)`.
        """
        candidates = self.config.num_items - len(self.config.retired_items)
        if not 1 <= top_k <= candidates:
            raise ValueError(f"top_k must be in [1, {candidates}] (the catalogue's {self.config.num_items} items, less "
                             f"{len(self.config.retired_items)} retired), got {top_k}")
        scores = self.score_items(item_indices, attention_mask)
        if exclude_history:
            scores = scores.masked_fill(history_exclusion(item_indices, self.config.num_items), -math.inf)
            left = torch.isfinite(scores).sum(dim=1)  # (B,) candidates after the exclusion
            if (left < top_k).any():
                row = int(left.argmin())
                raise ValueError(
                    f"top_k={top_k} exceeds the {int(left[row])} items left in history {row} after exclude_history "
                    "removed its items: lower top_k"
                )
        top = scores.topk(top_k, dim=1)
        return QBert4RecRecommendationOutput(item_indices=top.indices, scores=top.values)


# save_pretrained writes `auto_map` and copies these files, so `AutoModel.from_pretrained(..., trust_remote_code=True)`
# returns the model with `recommend`.
QBert4RecForMaskedItemModeling.register_for_auto_class("AutoModel")
