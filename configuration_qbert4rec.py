"""Configuration of Q-Bert4Rec (Huang & Gai, arXiv 2512.02474): hyperparameters only, validated on creation."""

from transformers import PretrainedConfig


class QBert4RecConfig(PretrainedConfig):
    r"""Configuration for [`QBert4RecModel`] and [`QBert4RecForMaskedItemModeling`].

    Every item is a tuple of `num_codebooks` codes (its semantic ID; the last level disambiguates items whose other
    codes collide). Token id of level `l`'s code `c` is `num_special_tokens + l * codebook_size + c`.

    Args:
        num_codebooks (`int`, defaults to 4): levels of a semantic ID, the disambiguation level included.
        codebook_size (`int`, defaults to 256): codes per level.
        num_items (`int`, defaults to 1): items in the catalogue the model scores (rows of its item-code table).
        num_special_tokens (`int`, defaults to 4): ids below this are special tokens (`[PAD]`, `[MASK]`, `[UNK]`, `[SEP]`).
        hidden_size (`int`, defaults to 64): width of the encoder.
        num_hidden_layers (`int`, defaults to 2): Transformer layers.
        num_attention_heads (`int`, defaults to 2): attention heads; must divide `hidden_size`.
        intermediate_size (`int`, defaults to 256): width of the feed-forward layer.
        hidden_act (`str`, defaults to `"gelu"`): activation of the feed-forward layer (`"gelu"` or `"relu"`).
        hidden_dropout_prob (`float`, defaults to 0.2): dropout on embeddings and residual branches.
        attention_probs_dropout_prob (`float`, defaults to 0.2): dropout on attention weights.
        max_position_embeddings (`int`, defaults to 51): positions; the history holds at most this minus one items,
            because inference appends one `[MASK]` position.
        initializer_range (`float`, defaults to 0.02): standard deviation of the normal initialiser.
        layer_norm_eps (`float`, defaults to 1e-12): epsilon of the layer norms.
        use_item_embedding (`bool`, defaults to `False`): add a learned item-ID embedding to the code embeddings.
        score_item_embedding (`bool`, defaults to `False`): with `use_item_embedding`, also add the (tied) item-ID
            embedding to each item's summed code embeddings when scoring the catalogue, so items whose codes are
            nearly identical can still be told apart.
        loss_type (`str`, defaults to `"codes+items"`): training loss at masked positions: `"codes"` = cross-entropy
            of each level's code (the paper's), `"items"` = cross-entropy over the whole catalogue of the item scores
            used for ranking (sum over levels of the code logits), `"codes+items"` = their sum.
        is_causal (`bool`, defaults to `False`): causal (left-to-right) attention instead of bidirectional; the next
            item is then predicted from the last history position, not from an appended `[MASK]` (the SASRec
            baseline of `benchmarks/accuracy.py`).
        seen_item_bias (`bool`, defaults to `False`): learn one logit added to the score of every item already in the
            history (trained by the catalogue loss, so it needs `loss_type` `"items"` or `"codes+items"`). Items stay
            candidates; on data where users never buy an item twice, the logit learns to push them down.
        item_embedding_dropout (`float`, defaults to 0.0): with `use_item_embedding`, the share of items whose item-ID
            embedding is replaced by one learned unknown-item vector in each training step (in histories and, with
            `score_item_embedding`, in the catalogue scores), so the model also learns to rank items from their codes
            alone; `add_items` can give new items that vector.
        item_encoder (`dict`, *optional*): settings of the item encoder shipped with the checkpoint (stage 1's content
            path and stage 2's encoder, `quantization_qbert4rec.item_encoder_settings`): which text encoder and
            fields made the features, the modality sizes, the injector and quantiser sizes. `None`: the checkpoint
            cannot give new items semantic IDs.
        retired_items (`list[int]`, *optional*): item indices retired with `retire_items`: never recommended.
        item_table_fingerprint (`str`, *optional*): `SemanticIdTokenizer.table_fingerprint` of the catalogue the model
            was trained on (item ids and codes); `check_tokenizer` compares it.
        pad_token_id (`int`, defaults to 0), mask_token_id (`int`, defaults to 1), unk_token_id (`int`, defaults to 2),
        sep_token_id (`int`, defaults to 3): special token ids, all below `num_special_tokens`.
    """

    model_type = "qbert4rec"

    def __init__(
        self,
        num_codebooks: int = 4,
        codebook_size: int = 256,
        num_items: int = 1,
        num_special_tokens: int = 4,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 2,
        intermediate_size: int = 256,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.2,
        attention_probs_dropout_prob: float = 0.2,
        max_position_embeddings: int = 51,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        use_item_embedding: bool = False,
        score_item_embedding: bool = False,
        loss_type: str = "codes+items",
        is_causal: bool = False,
        seen_item_bias: bool = False,
        item_embedding_dropout: float = 0.0,
        item_encoder: dict | None = None,
        retired_items: list | None = None,
        item_table_fingerprint: str | None = None,
        pad_token_id: int = 0,
        mask_token_id: int = 1,
        unk_token_id: int = 2,
        sep_token_id: int = 3,
        **kwargs,
    ):
        positive = {
            "num_codebooks": num_codebooks,
            "codebook_size": codebook_size,
            "num_items": num_items,
            "num_special_tokens": num_special_tokens,
            "hidden_size": hidden_size,
            "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": num_attention_heads,
            "intermediate_size": intermediate_size,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if max_position_embeddings < 2:
            raise ValueError(
                f"max_position_embeddings must be at least 2 (one history item plus the [MASK] position), "
                f"got {max_position_embeddings}"
            )
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})"
            )
        for name, p in (("hidden_dropout_prob", hidden_dropout_prob), ("attention_probs_dropout_prob", attention_probs_dropout_prob)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        if not 0.0 <= item_embedding_dropout < 1.0:
            raise ValueError(f"item_embedding_dropout must be in [0, 1), got {item_embedding_dropout}")
        if item_embedding_dropout and not use_item_embedding:
            raise ValueError("item_embedding_dropout needs use_item_embedding=True")
        if hidden_act not in ("gelu", "relu"):
            raise ValueError(f"hidden_act must be 'gelu' or 'relu', got {hidden_act!r}")
        if score_item_embedding and not use_item_embedding:
            raise ValueError("score_item_embedding=True needs use_item_embedding=True")
        if loss_type not in ("codes", "items", "codes+items"):
            raise ValueError(f"loss_type must be 'codes', 'items' or 'codes+items', got {loss_type!r}")
        if seen_item_bias and loss_type == "codes":
            raise ValueError("seen_item_bias=True is trained by the catalogue loss: use loss_type 'items' or 'codes+items'")
        specials = {"pad_token_id": pad_token_id, "mask_token_id": mask_token_id, "unk_token_id": unk_token_id, "sep_token_id": sep_token_id}
        for name, value in specials.items():
            if not 0 <= value < num_special_tokens:
                raise ValueError(f"{name} ({value}) must be in [0, num_special_tokens={num_special_tokens})")
        if len(set(specials.values())) != len(specials):
            raise ValueError(f"special token ids must be distinct, got {specials}")

        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.num_items = num_items
        self.num_special_tokens = num_special_tokens
        self.vocab_size = num_special_tokens + num_codebooks * codebook_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.use_item_embedding = use_item_embedding
        self.score_item_embedding = score_item_embedding
        self.loss_type = loss_type
        self.is_causal = is_causal
        self.seen_item_bias = seen_item_bias
        self.item_embedding_dropout = item_embedding_dropout
        self.item_encoder = item_encoder
        self.retired_items = list(retired_items or [])
        self.item_table_fingerprint = item_table_fingerprint
        self.mask_token_id = mask_token_id
        self.unk_token_id = unk_token_id
        self.sep_token_id = sep_token_id
        kwargs.pop("vocab_size", None)  # derived above; present when a saved config is reloaded
        kwargs.setdefault("custom_pipelines", CUSTOM_PIPELINES)
        super().__init__(pad_token_id=pad_token_id, **kwargs)


# `pipeline("sequential-recommendation", model=..., trust_remote_code=True)` reads this from config.json and loads the
# class from pipeline_qbert4rec.py, which the model's save_pretrained copies beside it.
CUSTOM_PIPELINES = {
    "sequential-recommendation": {"impl": "pipeline_qbert4rec.SequentialRecommendationPipeline", "pt": ["AutoModel"],
                                  "type": "text"},
}


# save_pretrained writes `auto_map` and copies this file, so `AutoConfig.from_pretrained(..., trust_remote_code=True)`
# works even for a config saved without the model.
QBert4RecConfig.register_for_auto_class()
