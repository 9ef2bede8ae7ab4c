"""RecBole atomic benchmark files: `<Name>.{train,valid,test}.inter` + `.item2index` + `.user2index` + `.text`
(Scientific), with optional precomputed feature matrices (`<Name>.feat1CLS`, `<Name>.feat3CLS`)."""

import os
from collections import Counter
from pathlib import Path

from training.readers.common import (
    MIN_SEQUENCE_LENGTH,
    PreparedData,
    clean_brand,
    clean_text,
    find_one,
    finish,
    require_file,
    split_category_paths,
)


def read_index_file(path: Path, what: str) -> list[str]:
    """`token<TAB>index` lines with indices 0..n-1 -> tokens in index order."""
    path = require_file(path, what)
    by_index = {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2 or not fields[1].strip().isdigit():
                raise ValueError(f"{path}, line {line_number}: expected 'token<TAB>index', got {line.strip()[:80]!r}")
            index = int(fields[1])
            if index in by_index:
                raise ValueError(f"{path}, line {line_number}: index {index} used twice")
            by_index[index] = fields[0]
    if not by_index:
        raise ValueError(f"{path}: empty file ({what})")
    if set(by_index) != set(range(len(by_index))):
        raise ValueError(f"{path}: indices must be 0..{len(by_index) - 1} without gaps")
    return [by_index[i] for i in range(len(by_index))]


def read_recbole_inter(path: Path, num_users: int, num_items: int) -> list[tuple[int, list[int], int]]:
    """A benchmark `.inter` file -> `[(user_index, history_indices, target_index), ...]` in file order."""
    path = require_file(path, "RecBole .inter file")
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        expected = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
        if header != expected:
            raise ValueError(f"{path}, line 1: header must be {'<TAB>'.join(expected)}, got {'<TAB>'.join(header)}")
        for line_number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            tokens = fields[0:1] + (fields[1].split() if len(fields) == 3 else []) + fields[2:3]
            if len(fields) != 3 or not all(t.isdigit() for t in tokens):
                raise ValueError(f"{path}, line {line_number}: expected 'user<TAB>item item ...<TAB>item' indices")
            user, history, target = int(fields[0]), [int(t) for t in fields[1].split()], int(fields[2])
            if user >= num_users or max(history + [target]) >= num_items:
                raise ValueError(f"{path}, line {line_number}: user or item index out of range of the index files")
            rows.append((user, history, target))
    if not rows:
        raise ValueError(f"{path}: no interaction rows after the header")
    return rows


def reconstruct_recbole_sequences(test_rows, valid_rows, train_rows, paths) -> dict[int, list[int]]:
    """Full sequences from the test rows (history + target), checked against the valid and train rows.

    RecBole's benchmark files hold, per user, one test row (`seq[:-1] -> seq[-1]`), one valid row
    (`seq[:-2] -> seq[-2]`) and one train row per training prefix (`seq[:i] -> seq[i]`, 1 <= i <= len - 3),
    in any order. Histories must be complete (files written with `MAX_ITEM_LIST_LENGTH` at least the longest
    sequence); any other row is an inconsistency and raises a `ValueError`.
    """
    test_path, valid_path, train_path = paths
    sequences = {}
    for user, history, target in test_rows:
        if user in sequences:
            raise ValueError(f"{test_path}: user index {user} has more than one test row")
        if len(history) < MIN_SEQUENCE_LENGTH - 1:
            raise ValueError(f"{test_path}: user index {user} has a test history of {len(history)} item(s), need 2")
        sequences[user] = history + [target]

    def check(path, user, history, target, seen):
        full = sequences.get(user)
        if full is None:
            raise ValueError(f"{path}: user index {user} has no row in {test_path.name}")
        end = len(history)
        if end in seen or end >= len(full) or full[: end + 1] != history + [target]:
            raise ValueError(
                f"{path}: user index {user} row {history} -> {target} is inconsistent with (or repeats a prefix "
                f"of) the sequence {full} reconstructed from {test_path.name}"
            )
        seen.add(end)

    valid_ends = {}
    for user, history, target in valid_rows:
        seen = valid_ends.setdefault(user, set())
        if seen or len(history) != len(sequences.get(user, [])) - 2:
            raise ValueError(f"{valid_path}: user index {user} row {history} -> {target} is not the one validation row "
                             f"expected from {test_path.name}")
        check(valid_path, user, history, target, seen)
    missing = set(sequences) - set(valid_ends)
    if missing:
        raise ValueError(
            f"{valid_path}: {len(missing)} user(s) of {test_path.name} have no valid row, e.g. {min(missing)}"
        )

    train_ends = {}
    for user, history, target in train_rows:
        seen = train_ends.setdefault(user, set())
        if len(history) > len(sequences.get(user, [])) - 3:
            raise ValueError(f"{train_path}: user index {user} row {history} -> {target} reaches into the validation "
                             f"or test part of the sequence reconstructed from {test_path.name}")
        check(train_path, user, history, target, seen)
    incomplete = [u for u, seq in sequences.items() if train_ends.get(u, set()) != set(range(1, len(seq) - 2))]
    if incomplete:
        raise ValueError(
            f"{train_path}: user index {incomplete[0]} (and {len(incomplete) - 1} more) lacks training prefixes "
            f"of the sequence reconstructed from {test_path.name}"
        )
    return sequences


def split_recbole_text(text: str, category_root: str | None) -> tuple[str, str, str]:
    """`"title. categories. brand. "` -> `(title, categories, brand)`.

    Titles and brands may hold ". " themselves, so the categories field is located as the right-most field
    that is empty or starts with the dataset's category root (its most common first word); the title is what
    precedes it and the brand what follows.
    """
    body = text.strip()
    if body.endswith("."):
        body = body[:-1]
    fields = body.split(". ")
    if len(fields) < 3:
        return clean_text(body), "", ""
    position = None
    for k in range(len(fields) - 2, 0, -1):
        if fields[k].strip() == "" or (category_root and fields[k].startswith(category_root + " ")):
            position = k
            break
    if position is None:
        position = len(fields) - 2
    return (
        clean_text(". ".join(fields[:position])),
        clean_text(fields[position]),
        clean_brand(". ".join(fields[position + 1 :])),
    )


def read_recbole_text(path: Path) -> dict[str, str]:
    """`.text` file (`item_id:token<TAB>text:token_seq` header) -> `{item_id: text}`."""
    path = require_file(path, "RecBole .text file")
    texts = {}
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if len(header) != 2 or not header[0].startswith("item_id"):
            raise ValueError(f"{path}, line 1: header must be 'item_id:token<TAB>text:token_seq', got {header}")
        for line_number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}, line {line_number}: {len(fields)} tab-separated fields, expected 2")
            if fields[0] in texts:
                raise ValueError(f"{path}, line {line_number}: item {fields[0]} already has a text")
            texts[fields[0]] = fields[1]
    return texts


def read_recbole(
    data_dir: str | os.PathLike,
    name: str | None = None,
    drop_duplicates: bool = False,
    text_matrix_suffix: str = "feat1CLS",
    image_matrix_suffix: str = "feat3CLS",
) -> PreparedData:
    """Read RecBole benchmark files (`<Name>.{train,valid,test}.inter`, `.item2index`, `.user2index`, `.text`).

    Ids are the tokens of the index files (ASINs, reviewer ids); the items table follows `.item2index`, so
    precomputed matrices (`<Name>.feat1CLS` text, `<Name>.feat3CLS` image: float32, one row per item index)
    stay aligned; their paths and widths go in the summary under `feature_matrices`. `image` is "" (the
    images come only as those vectors). Validation and test targets equal the RecBole files'.
    """
    data_dir = Path(data_dir)
    if name is None:
        name = find_one(data_dir, "*.item2index", "RecBole .item2index").name[: -len(".item2index")]
    item_tokens = read_index_file(data_dir / f"{name}.item2index", "RecBole .item2index")
    user_tokens = read_index_file(data_dir / f"{name}.user2index", "RecBole .user2index")
    paths = tuple(data_dir / f"{name}.{split}.inter" for split in ("test", "valid", "train"))
    rows = [read_recbole_inter(p, len(user_tokens), len(item_tokens)) for p in paths]
    index_sequences = reconstruct_recbole_sequences(*rows, paths)

    text_path = data_dir / f"{name}.text"
    texts = read_recbole_text(text_path) if text_path.exists() else {}
    category_fields = [t.strip().rstrip(".").split(". ") for t in texts.values()]
    first_words = Counter(f[-2].split()[0] for f in category_fields if len(f) >= 3 and f[-2].split())
    category_root = first_words.most_common(1)[0][0] if first_words else None
    parsed = {item: split_recbole_text(text, category_root) for item, text in texts.items()}
    category_paths = split_category_paths([parsed.get(i, ("", "", ""))[1].split() for i in item_tokens], " ")
    item_records = [
        {"item_id": item, "title": parsed.get(item, ("", "", ""))[0], "brand": parsed.get(item, ("", "", ""))[2],
         "categories": categories}
        for item, categories in zip(item_tokens, category_paths)
    ]

    feature_matrices = {}
    for modality, suffix in (("text", text_matrix_suffix), ("image", image_matrix_suffix)):
        matrix_path = data_dir / f"{name}.{suffix}"
        if matrix_path.is_file():
            size = matrix_path.stat().st_size
            if size == 0 or size % (4 * len(item_tokens)):
                raise ValueError(
                    f"{matrix_path}: {size} bytes is not a float32 matrix with {len(item_tokens)} rows "
                    "(one per item index)"
                )
            feature_matrices[modality] = {"path": str(matrix_path.resolve()), "dim": size // (4 * len(item_tokens))}

    sequences = {user_tokens[u]: [item_tokens[i] for i in seq] for u, seq in index_sequences.items()}
    return finish(
        "recbole",
        name,
        sequences,
        None,
        item_records,
        sum(len(seq) for seq in sequences.values()),
        on_missing_item="error",
        drop_duplicates=drop_duplicates,
        feature_matrices=feature_matrices,
        texts_for_unknown_items=len(set(texts) - set(item_tokens)),
        category_root=category_root,
        notes=["images are precomputed vectors (feature_matrices.image), so the image column is empty"]
        if "image" in feature_matrices
        else [],
        input=str(data_dir),
    )
