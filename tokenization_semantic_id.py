"""SemanticIdTokenizer: the table item id <-> semantic ID, and histories -> Q-Bert4Rec model inputs.

An item's semantic ID is a tuple of `num_codebooks` codes, each in `[0, codebook_size)`; the last level
disambiguates items whose other codes collide, so every tuple is unique. Level `l`'s code `c` is the token
`<{letter}_{c}>` (letters a, b, c, ...) with id `num_special_tokens + l * codebook_size + c`; ids below
`num_special_tokens` are `[PAD]`, `[MASK]`, `[UNK]`, `[SEP]`. The item order of the table is the model's item
index order.
"""

import hashlib
import json
import os
import string
import tempfile

import torch
from transformers import BatchEncoding, PreTrainedTokenizer

SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[UNK]", "[SEP]")
UNKNOWN_ITEM_POLICIES = ("error", "skip")


def _level_name(level: int) -> str:
    return string.ascii_lowercase[level]


def _validate_table(table: dict, source: str) -> None:
    """Refuse a malformed item table with a message naming `source`."""
    for key in ("num_codebooks", "codebook_size", "item_ids", "codes"):
        if key not in table:
            raise ValueError(f"{source}: semantic-ID table lacks '{key}'")
    num_codebooks, codebook_size = table["num_codebooks"], table["codebook_size"]
    item_ids, codes = table["item_ids"], table["codes"]
    if not 1 <= num_codebooks <= len(string.ascii_lowercase):
        raise ValueError(f"{source}: num_codebooks must be in [1, 26], got {num_codebooks}")
    if codebook_size < 1:
        raise ValueError(f"{source}: codebook_size must be positive, got {codebook_size}")
    if len(item_ids) == 0:
        raise ValueError(f"{source}: the semantic-ID table holds no items")
    if len(item_ids) != len(codes):
        raise ValueError(f"{source}: {len(item_ids)} item ids but {len(codes)} code tuples")
    if len(set(item_ids)) != len(item_ids):
        seen, dup = set(), None
        for item_id in item_ids:
            if item_id in seen:
                dup = item_id
                break
            seen.add(item_id)
        raise ValueError(f"{source}: item id {dup!r} appears more than once in the semantic-ID table")
    owner = {}
    for item_id, tuple_ in zip(item_ids, codes):
        if not isinstance(item_id, str) or not item_id:
            raise ValueError(f"{source}: item ids must be non-empty strings, got {item_id!r}")
        if len(tuple_) != num_codebooks:
            raise ValueError(f"{source}: item {item_id!r} has {len(tuple_)} codes, expected {num_codebooks}")
        if any(not 0 <= c < codebook_size for c in tuple_):
            raise ValueError(f"{source}: item {item_id!r} has a code outside [0, {codebook_size}): {list(tuple_)}")
        key = tuple(tuple_)
        if key in owner:
            raise ValueError(
                f"{source}: items {owner[key]!r} and {item_id!r} share the semantic ID {list(key)}; "
                "every item needs a unique tuple (add a disambiguation level)"
            )
        owner[key] = item_id


class SemanticIdTokenizer(PreTrainedTokenizer):
    """Maps item ids to semantic-ID tokens and batches of histories to model inputs.

    Args:
        vocab_file (`str`): path of `semantic_ids.json` (`num_codebooks`, `codebook_size`, `item_ids`, `codes`).
        max_len (`int`, defaults to 50): histories keep their newest `max_len` items.
        unknown_items (`str`, defaults to `"error"`): what an item id missing from the table does: `"error"` raises
            a `KeyError` naming it, `"skip"` drops it from the history.

    Build a new table with [`SemanticIdTokenizer.from_codes`].
    """

    vocab_files_names = {"vocab_file": "semantic_ids.json"}
    model_input_names = ["input_ids", "attention_mask", "item_indices"]
    padding_side = "left"
    _auto_class = "AutoTokenizer"

    def __init__(self, vocab_file=None, max_len=50, unknown_items="error", **kwargs):
        if vocab_file is None or not os.path.isfile(vocab_file):
            raise ValueError(f"SemanticIdTokenizer needs its table file semantic_ids.json, not found at {vocab_file!r}")
        if unknown_items not in UNKNOWN_ITEM_POLICIES:
            raise ValueError(f"unknown_items must be one of {UNKNOWN_ITEM_POLICIES}, got {unknown_items!r}")
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
        with open(vocab_file, encoding="utf-8") as f:
            try:
                table = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{vocab_file}: not a valid semantic-ID table ({error})") from None
        _validate_table(table, vocab_file)
        # The table is set before super().__init__, which asks for the vocabulary.
        self.num_codebooks = table["num_codebooks"]
        self.codebook_size = table["codebook_size"]
        self.num_special_tokens = len(SPECIAL_TOKENS)
        self._item_ids = list(table["item_ids"])
        self._item_index = {item_id: i for i, item_id in enumerate(self._item_ids)}
        self.item_codes = torch.tensor(table["codes"], dtype=torch.long)  # (num_items, num_codebooks)
        self.max_len = max_len
        self.unknown_items = unknown_items
        self._vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
        for level in range(self.num_codebooks):
            for code in range(self.codebook_size):
                self._vocab[self._code_token(level, code)] = self._token_id(level, code)
        self._id_to_token = {i: token for token, i in self._vocab.items()}
        kwargs.setdefault("pad_token", "[PAD]")
        kwargs.setdefault("mask_token", "[MASK]")
        kwargs.setdefault("unk_token", "[UNK]")
        kwargs.setdefault("sep_token", "[SEP]")
        super().__init__(max_len=max_len, unknown_items=unknown_items, **kwargs)

    @classmethod
    def from_codes(cls, item_ids, codes, codebook_size: int, max_len: int = 50, **kwargs) -> "SemanticIdTokenizer":
        """Build a tokenizer from `item_ids` (list of `num_items` strings) and `codes` (`(num_items, num_codebooks)` ints)."""
        codes = torch.as_tensor(codes).tolist()
        table = {
            "num_codebooks": len(codes[0]) if codes else 0,
            "codebook_size": int(codebook_size),
            "item_ids": [str(i) for i in item_ids],
            "codes": codes,
        }
        _validate_table(table, "from_codes")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "semantic_ids.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(table, f)
            return cls(vocab_file=path, max_len=max_len, **kwargs)

    # Token ids <-> tokens.
    def _token_id(self, level: int, code: int) -> int:
        return self.num_special_tokens + level * self.codebook_size + code

    def _code_token(self, level: int, code: int) -> str:
        return f"<{_level_name(level)}_{code}>"

    @property
    def vocab_size(self) -> int:
        return self.num_special_tokens + self.num_codebooks * self.codebook_size

    def get_vocab(self) -> dict:
        return dict(self._vocab)

    def _tokenize(self, text, **kwargs):
        """Whitespace-separated item ids -> their code tokens, e.g. `"B004756YJA"` -> `["<a_12>", "<b_200>", ...]`."""
        tokens = []
        for item_id in text.split():
            index = self._lookup(item_id)
            if index is not None:
                tokens.extend(self._code_token(l, int(c)) for l, c in enumerate(self.item_codes[index]))
        return tokens

    def _convert_token_to_id(self, token):
        return self._vocab.get(token, self._vocab["[UNK]"])

    def _convert_id_to_token(self, index):
        return self._id_to_token.get(index, "[UNK]")

    def save_vocabulary(self, save_directory, filename_prefix=None):
        name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_files_names["vocab_file"]
        path = os.path.join(save_directory, name)
        table = {
            "num_codebooks": self.num_codebooks,
            "codebook_size": self.codebook_size,
            "item_ids": self._item_ids,
            "codes": self.item_codes.tolist(),
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(table, f)
        return (path,)

    # Items <-> indices.
    @property
    def item_ids(self) -> list:
        """Every known item id, in the model's item index order."""
        return list(self._item_ids)

    @property
    def num_items(self) -> int:
        return len(self._item_ids)

    @property
    def table_fingerprint(self) -> str:
        """sha256 of the item table (ids and codes): equal fingerprints mean the same catalogue and semantic IDs."""
        digest = hashlib.sha256(json.dumps([self._item_ids, self.item_codes.tolist(), self.codebook_size]).encode())
        return digest.hexdigest()

    @property
    def item_token_ids(self) -> torch.Tensor:
        """`(num_items, num_codebooks)` token ids of every item's codes."""
        offsets = self.num_special_tokens + torch.arange(self.num_codebooks) * self.codebook_size
        return self.item_codes + offsets

    def _lookup(self, item_id, unknown_items=None):
        index = self._item_index.get(str(item_id))
        if index is None and (unknown_items or self.unknown_items) == "error":
            raise KeyError(
                f"unknown item id {item_id!r}: it is not in this tokenizer's table of {self.num_items} items "
                "(pass unknown_items='skip' to drop unknown items instead)"
            )
        return index

    def encode_items(self, item_ids, unknown_items=None) -> list:
        """Item ids -> item indices (unknown ids raise, or are dropped with `unknown_items="skip"`)."""
        if unknown_items is not None and unknown_items not in UNKNOWN_ITEM_POLICIES:
            raise ValueError(f"unknown_items must be one of {UNKNOWN_ITEM_POLICIES}, got {unknown_items!r}")
        indices = (self._lookup(item_id, unknown_items) for item_id in item_ids)
        return [i for i in indices if i is not None]

    def decode_items(self, item_indices) -> list:
        """Item indices (`(batch, k)` or `(k,)`, tensor, numpy array or lists) -> item ids with the same nesting."""
        if hasattr(item_indices, "tolist"):  # torch tensors, numpy arrays and numpy integers
            item_indices = item_indices.tolist()
        if isinstance(item_indices, int):
            return self._item_id(item_indices)
        return [self.decode_items(x) if not isinstance(x, int) else self._item_id(x) for x in item_indices]

    def _item_id(self, index: int) -> str:
        if not 0 <= index < self.num_items:
            raise IndexError(f"item index {index} is outside this tokenizer's table [0, {self.num_items})")
        return self._item_ids[index]

    def render(self, item_id) -> str:
        """An item's semantic ID as readable tokens, e.g. `"<a_12><b_200><c_3><d_0>"`."""
        index = self._lookup(item_id, "error")
        return "".join(self._code_token(l, int(c)) for l, c in enumerate(self.item_codes[index]))

    # Histories -> model inputs.
    def __call__(self, histories, return_tensors=None, max_len=None, unknown_items=None, **kwargs):
        """Encode a batch of histories (each a list of item ids, oldest first) into left-padded model inputs.

        Args:
            histories: `list[list[str]]`, or one history as `list[str]`.
            return_tensors: `"pt"` for tensors, `None` for nested lists.
            max_len: keep the newest `max_len` items (default: the tokenizer's `max_len`).
            unknown_items: `"error"` or `"skip"` (default: the tokenizer's setting).

        Returns:
            `BatchEncoding` with `input_ids` `(batch, seq_len, num_codebooks)`, `attention_mask` `(batch, seq_len)` and
            `item_indices` `(batch, seq_len)` (padding = `num_items`).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        if isinstance(histories, str) or not isinstance(histories, (list, tuple)):
            raise TypeError("histories must be a list of item-id lists (or one list of item ids), not a string")
        if len(histories) == 0:
            raise ValueError("histories is empty: pass at least one history")
        if all(isinstance(h, str) for h in histories):
            histories = [histories]
        if max_len is None:
            max_len = self.max_len
        elif not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
        rows = []
        for history in histories:
            if isinstance(history, str) or not isinstance(history, (list, tuple)):
                raise TypeError(f"each history must be a list of item ids, got {type(history).__name__}")
            rows.append(self.encode_items(history, unknown_items)[-max_len:])
        seq_len = max(1, max(len(r) for r in rows))
        item_indices = torch.full((len(rows), seq_len), self.num_items, dtype=torch.long)
        for b, row in enumerate(rows):
            if row:
                item_indices[b, seq_len - len(row) :] = torch.tensor(row)
        attention_mask = (item_indices != self.num_items).long()
        table = torch.cat([self.item_token_ids, torch.full((1, self.num_codebooks), self.pad_token_id)])
        input_ids = table[item_indices]  # (batch, seq_len, num_codebooks)
        data = {"input_ids": input_ids, "attention_mask": attention_mask, "item_indices": item_indices}
        if return_tensors != "pt":
            if return_tensors is not None:
                raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
            data = {k: v.tolist() for k, v in data.items()}
        return BatchEncoding(data)
