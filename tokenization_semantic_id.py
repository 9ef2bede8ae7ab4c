"""SemanticIdTokenizer and the catalogue: item id <-> item index <-> semantic ID, and histories -> model inputs.

This file owns every fact of the catalogue; the model, the collators and the evaluation ask it:
- the **item index** of an item is its row in the table (`item_ids`, `item_codes`); indices `num_items` and
  `num_items + 1` are `[PAD]` and `[MASK]` (`padding_index`, `mask_index`);
- an item's **semantic ID** is a tuple of `num_codebooks` codes, each in `[0, codebook_size)`; the last level
  disambiguates items whose other codes collide, so every tuple is unique;
- level `l`'s code `c` is the token `<{letter}_{c}>` (letters a, b, c, ...) with token id
  `num_special_tokens + l * codebook_size + c` (`code_token_ids`); token ids below `num_special_tokens` are
  `[PAD]`, `[MASK]`, `[UNK]`, `[SEP]`;
- model inputs are item indices, left-padded: the newest item is the last position (`left_pad`).
"""

import hashlib
import json
import logging
import os
import string
import tempfile
from collections import Counter
from itertools import chain

import numpy as np
import torch
from transformers import BatchEncoding, PreTrainedTokenizer

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[UNK]", "[SEP]")
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)
UNKNOWN_ITEM_POLICIES = ("error", "skip")
EMPTY_HISTORY_POLICIES = ("allow", "error")


def padding_index(num_items: int) -> int:
    """The item index of a padding position in a catalogue of `num_items` items."""
    return num_items


def mask_index(num_items: int) -> int:
    """The item index of a `[MASK]` position (the item to predict) in a catalogue of `num_items` items."""
    return num_items + 1


def code_token_ids(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Codes `(..., num_codebooks)` -> their token ids `(..., num_codebooks)`: level `l`'s code `c` is token
    `NUM_SPECIAL_TOKENS + l * codebook_size + c`."""
    levels = torch.arange(codes.shape[-1], device=codes.device)
    return codes + NUM_SPECIAL_TOKENS + levels * codebook_size


def left_pad(sequences: list, keep: int, pad: int, extra_slots: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the newest `keep` items of each sequence (lists of item indices, oldest first) and left-pad them with
    `pad`, leaving `extra_slots` padded columns at the end.

    Returns:
        long `(B, T + extra_slots)` item indices and bool `(B, T + extra_slots)`, True at the kept items, with T the
        longest kept sequence. Done in numpy: many tiny torch ops are slow on CPU.
    """
    kept = [seq[max(len(seq) - keep, 0) :] if keep > 0 else [] for seq in sequences]
    lengths = np.fromiter((len(seq) for seq in kept), dtype=np.int64, count=len(kept))  # (B,)
    width, total = int(lengths.max(initial=0)), int(lengths.sum())
    flat = np.asarray(list(chain.from_iterable(kept)))  # (total,) all kept items, row after row
    if total and flat.dtype.kind not in "iu":
        row = next(b for b, seq in enumerate(kept) if len(seq) and np.asarray(seq).dtype.kind not in "iu")
        raise ValueError(f"sequence {row}: item indices must be ints, got {list(kept[row][:5])}")
    # Right-align each row: item j of the flat list, in row r, goes to flat position (r + 1) * T - (end_r - j),
    # where end_r is the flat offset where row r ends.
    rows = np.repeat(np.arange(len(kept)), lengths)
    positions = (rows + 1) * width - np.cumsum(lengths)[rows] + np.arange(total)
    padded = np.full(len(kept) * width, pad, dtype=np.int64)
    padded[positions] = flat
    indices = torch.from_numpy(padded.reshape(len(kept), width))
    valid = torch.arange(width)[None, :] >= torch.from_numpy(width - lengths)[:, None]
    if extra_slots:
        indices = torch.nn.functional.pad(indices, (0, extra_slots), value=pad)
        valid = torch.nn.functional.pad(valid, (0, extra_slots))
    return indices, valid


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
    titles = table.get("titles")
    if titles is not None and (len(titles) != len(item_ids) or not all(isinstance(t, str) for t in titles)):
        raise ValueError(f"{source}: 'titles' must hold one string per item ({len(item_ids)}), got {len(titles)} "
                         "entries")
    retired = table.get("retired", [])
    unknown = set(retired) - set(item_ids)
    if unknown:
        raise ValueError(f"{source}: retired item(s) {sorted(unknown)[:5]} are not in the table")
    if retired and len(set(retired)) == len(item_ids):
        raise ValueError(f"{source}: every item is retired")


class SemanticIdTokenizer(PreTrainedTokenizer):
    """The catalogue's item table, and batches of histories -> model inputs.

    Args:
        vocab_file (`str`): path of `semantic_ids.json` (`num_codebooks`, `codebook_size`, `item_ids`, `codes`;
            optionally `titles`, one per item, and `retired` item ids).
        max_len (`int`, defaults to 50): histories keep their newest `max_len` items.
        unknown_items (`str`, defaults to `"error"`): what an item id missing from the table does: `"error"` raises
            a `KeyError` naming it, `"skip"` drops it from the history.

    Build a new table with [`SemanticIdTokenizer.from_codes`].
    """

    vocab_files_names = {"vocab_file": "semantic_ids.json"}
    model_input_names = ["item_indices", "attention_mask"]
    padding_side = "left"
    _auto_class = "AutoTokenizer"

    def __init__(self, vocab_file=None, max_len=50, unknown_items="error", **kwargs):
        if vocab_file is None or not os.path.isfile(vocab_file):
            where = kwargs.get("name_or_path") or vocab_file
            raise ValueError(
                f"SemanticIdTokenizer needs its item table semantic_ids.json, and {where!r} has none: load the "
                "tokenizer from a checkpoint folder or Hub repo made by save_pretrained (or training/quantize.py)"
            )
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
        self.num_special_tokens = NUM_SPECIAL_TOKENS
        self._item_ids = list(table["item_ids"])
        self._item_index = {item_id: i for i, item_id in enumerate(self._item_ids)}
        self.item_codes = torch.tensor(table["codes"], dtype=torch.long)  # (num_items, num_codebooks)
        self._item_titles = list(table.get("titles") or [""] * len(self._item_ids))
        self._retired = [item_id for item_id in self._item_ids if item_id in set(table.get("retired", []))]
        self.max_len = max_len
        self.unknown_items = unknown_items
        self._vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
        every_code = torch.arange(self.codebook_size)[:, None].expand(-1, self.num_codebooks)  # (K, L)
        for code, token_ids in enumerate(code_token_ids(every_code, self.codebook_size).tolist()):
            for level, token_id in enumerate(token_ids):
                self._vocab[self._code_token(level, code)] = token_id
        self._id_to_token = {i: token for token, i in self._vocab.items()}
        kwargs.setdefault("pad_token", "[PAD]")
        kwargs.setdefault("mask_token", "[MASK]")
        kwargs.setdefault("unk_token", "[UNK]")
        kwargs.setdefault("sep_token", "[SEP]")
        super().__init__(max_len=max_len, unknown_items=unknown_items, **kwargs)

    @classmethod
    def from_codes(cls, item_ids, codes, codebook_size: int, max_len: int = 50, titles=None,
                   **kwargs) -> "SemanticIdTokenizer":
        """Build a tokenizer from `item_ids` (list of `num_items` strings) and `codes` (`(num_items, num_codebooks)`
        ints), optionally with one title per item (shown to people, never used for scoring)."""
        codes = torch.as_tensor(codes).tolist()
        table = {
            "num_codebooks": len(codes[0]) if codes else 0,
            "codebook_size": int(codebook_size),
            "item_ids": [str(i) for i in item_ids],
            "codes": codes,
        }
        if titles is not None:
            table["titles"] = [title or "" for title in titles]
        _validate_table(table, "from_codes")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "semantic_ids.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(table, f)
            return cls(vocab_file=path, max_len=max_len, **kwargs)

    # Token ids <-> tokens.
    def _code_token(self, level: int, code: int) -> str:
        return f"<{_level_name(level)}_{code}>"

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

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
        if any(self._item_titles):
            table["titles"] = self._item_titles
        if self._retired:
            table["retired"] = self._retired
        with open(path, "w", encoding="utf-8") as f:
            json.dump(table, f)
        return (path,)

    # Items <-> indices.
    @property
    def item_ids(self) -> list:
        """Every known item id, in the model's item index order."""
        return list(self._item_ids)

    @property
    def item_titles(self) -> list[str]:
        """Every item's title, in item index order ("" for an item without one, and for every item when the table
        carries no titles)."""
        return list(self._item_titles)

    @property
    def num_items(self) -> int:
        return len(self._item_ids)

    @property
    def retired_items(self) -> list:
        """Item ids retired with `retire_items`, in item index order: histories may hold them, they are never
        recommended."""
        return list(self._retired)

    @property
    def table_fingerprint(self) -> str:
        """sha256 of the item table (ids, codes and retired items): equal fingerprints mean the same catalogue."""
        table = [self._item_ids, self.item_codes.tolist(), self.codebook_size] + ([self._retired] if self._retired else [])
        return hashlib.sha256(json.dumps(table).encode()).hexdigest()

    # Growing and shrinking the catalogue (the model follows: `QBert4RecForMaskedItemModeling.add_items`).
    def add_items(self, item_ids, semantic_codes, titles=None) -> torch.Tensor:
        """Append items with their semantic codes `(n, num_codebooks - 1)` (and titles, "" when None); each gets the
        smallest disambiguation code that no item with the same semantic codes holds (0 when there is none).

        Returns:
            the new items' full codes `(n, num_codebooks)`. Nothing changes when an id is already known or repeated,
            or when every disambiguation code of some new item's semantic codes is taken (`ValueError`).
        """
        item_ids = list(item_ids)
        semantic_codes = torch.as_tensor(semantic_codes, dtype=torch.long).reshape(len(item_ids), -1)
        if semantic_codes.shape[1] != self.num_codebooks - 1:
            raise ValueError(f"semantic codes must have shape (n, {self.num_codebooks - 1}), got "
                             f"{tuple(semantic_codes.shape)}")
        taken = {}  # semantic codes -> disambiguation codes in use
        for codes in self.item_codes.tolist():
            taken.setdefault(tuple(codes[:-1]), set()).add(codes[-1])
        full, repeated = [], {item_id for item_id, count in Counter(item_ids).items() if count > 1}
        for item_id, codes in zip(item_ids, semantic_codes.tolist()):
            if item_id in self._item_index or item_id in repeated:
                raise ValueError(f"item id {item_id!r} is already in the catalogue or repeated in this call")
            used = taken.setdefault(tuple(codes), set())
            free = next((c for c in range(self.codebook_size) if c not in used), None)
            if free is None:
                raise ValueError(
                    f"item {item_id!r}: all {self.codebook_size} disambiguation codes of the semantic ID prefix "
                    f"{codes} are taken (by {self.codebook_size} items that share it); it cannot get a unique ID "
                    "in this catalogue: retrain stage 2 with a larger codebook_size or more levels"
                )
            used.add(free)
            full.append(codes + [free])
        new_codes = torch.tensor(full, dtype=torch.long).reshape(len(item_ids), self.num_codebooks)
        if new_codes.numel() and (new_codes.min() < 0 or new_codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        for item_id in item_ids:
            self._item_index[item_id] = len(self._item_ids)
            self._item_ids.append(item_id)
        self.item_codes = torch.cat([self.item_codes, new_codes])
        self._item_titles += [title or "" for title in titles] if titles is not None else [""] * len(item_ids)
        return new_codes

    def retire_items(self, item_ids) -> list[int]:
        """Mark items as retired (still read in histories, never recommended); returns their item indices. An unknown
        id, or retiring the last active item, raises and changes nothing."""
        item_ids = list(item_ids)
        unknown = [item_id for item_id in item_ids if item_id not in self._item_index]
        if unknown:
            raise KeyError(f"cannot retire unknown item id(s) {', '.join(map(repr, unknown[:5]))}: they are not in "
                           f"this tokenizer's table of {self.num_items} items")
        retired = set(self._retired) | set(item_ids)
        if len(retired) == self.num_items:
            raise ValueError(f"retiring these {len(item_ids)} item(s) would retire every item in the catalogue: "
                             "nothing would be left to recommend")
        self._retired = [item_id for item_id in self._item_ids if item_id in retired]
        return [self._item_index[item_id] for item_id in item_ids]

    @property
    def padding_index(self) -> int:
        return padding_index(self.num_items)

    def _lookup(self, item_id, unknown_items=None):
        if not isinstance(item_id, str):
            raise TypeError(
                f"item ids are strings (the dataset's own ids, e.g. ASINs), got {type(item_id).__name__} {item_id!r}"
                + (f": pass {str(item_id)!r}" if isinstance(item_id, int) else "")
            )
        index = self._item_index.get(item_id)
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
    def __call__(self, histories, return_tensors=None, max_len=None, unknown_items=None, empty_histories="allow",
                 **kwargs):
        """Encode a batch of histories (each a list of item ids, oldest first) into left-padded model inputs.

        Args:
            histories: `list[list[str]]`, or one history as `list[str]`.
            return_tensors: `"pt"` for tensors (what the model takes), `None` for nested lists.
            max_len: keep the newest `max_len` items (default: the tokenizer's `max_len`).
            unknown_items: `"error"` or `"skip"` (default: the tokenizer's setting).
            empty_histories: a history with no (known) item is scored from the `[MASK]` position alone, which
                ranks items close to popularity: `"allow"` does that and logs a warning, `"error"` raises.

        Returns:
            `BatchEncoding` with `item_indices` `(batch, seq_len)` (padding = `padding_index`) and
            `attention_mask` `(batch, seq_len)`.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        if empty_histories not in EMPTY_HISTORY_POLICIES:
            raise ValueError(f"empty_histories must be one of {EMPTY_HISTORY_POLICIES}, got {empty_histories!r}")
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
            rows.append(self.encode_items(history, unknown_items))
        empty = [b for b, row in enumerate(rows) if not row]
        if empty:
            message = (f"{len(empty)} of {len(rows)} histories (first: {empty[0]}) hold no known item: they are scored "
                       "from the [MASK] position alone, which ranks items close to popularity")
            if empty_histories == "error":
                raise ValueError(message)
            logger.warning(message + "; pass empty_histories='error' to refuse them")
        item_indices, valid = left_pad(rows, keep=max_len, pad=self.padding_index)
        if item_indices.shape[1] == 0:  # every history empty: one padding column
            item_indices, valid = left_pad(rows, keep=max_len, pad=self.padding_index, extra_slots=1)
        data = {"item_indices": item_indices, "attention_mask": valid.long()}
        if return_tensors is None:
            data = {k: v.tolist() for k, v in data.items()}
        return BatchEncoding(data)
