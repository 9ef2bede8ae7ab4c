"""Explain semantic IDs: the items under a code prefix, and how well each level's prefixes group categories.

    python training/explain_codes.py --tokenizer_dir SID --dataset_dir DATA --prefix 12,200 [--json]

**Purity** of prefix length `l` (levels `1 .. num_codebooks - 1`; the full tuple is unique, so it has no pairs):
group the items with a leaf category (the last entry of `categories`; items without one are left out) by the
first `l` codes of their semantic ID; purity is the fraction of unordered item pairs inside the same group that
share their leaf category,

    purity(l) = sum_g sum_c C(n_gc, 2) / sum_g C(n_g, 2),

with `n_g` the items in group `g` and `n_gc` those of leaf category `c`; `None` when no group holds two items.
The **random** figure is the same quantity after randomly permuting the rows of the code matrix (so the groups keep
their sizes but hold random items), averaged over `--num_random` permutations; its expectation is the chance that
two random items share a leaf, `sum_c C(n_c, 2) / C(n, 2)`.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from training.config import parse_args


@dataclass
class ExplainArgs:
    """Arguments of `training/explain_codes.py` (YAML section `explain_codes`)."""

    tokenizer_dir: str = field(default=None, metadata={"help": "SemanticIdTokenizer folder written by quantize.py", "required": True})
    dataset_dir: str = field(default=None, metadata={"help": "prepared dataset folder (holds items/)", "required": True})
    prefix: str = field(default="", metadata={"help": "code prefix to list, e.g. '12' or '12,200' (empty: none)"})
    max_items: int = field(default=20, metadata={"help": "items listed under the prefix (all are counted)"})
    num_random: int = field(default=5, metadata={"help": "random permutations averaged for the random purity"})
    seed: int = field(default=0, metadata={"help": "seed of the random permutations"})
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of text"})


SECTION = "explain_codes"  # its YAML section
ARGUMENT_TYPES = (ExplainArgs,)


# Data.
def load_items(dataset_dir: str | Path) -> dict[str, dict]:
    """The prepared items dataset (docs/interfaces.md §1) as `item_id -> {title, categories}`."""
    from training.prepared import load_items as load_items_dataset

    items = load_items_dataset(dataset_dir)
    titles = items["title"] if "title" in items.column_names else [""] * len(items)
    categories = items["categories"] if "categories" in items.column_names else [[]] * len(items)
    return {
        str(item_id): {"title": title or "", "categories": list(cats or [])}
        for item_id, title, cats in zip(items["item_id"], titles, categories)
    }


def leaf_labels(item_ids: list[str], items: dict[str, dict]) -> Tensor:
    """`(N,)` integer leaf-category label per item of `item_ids`; -1 for items without categories."""
    missing = [item_id for item_id in item_ids if item_id not in items]
    if missing:
        raise ValueError(
            f"{len(missing)} item(s) of the tokenizer are not in the items dataset, e.g. {missing[0]!r}: "
            "the tokenizer and the dataset do not match"
        )
    vocabulary: dict[str, int] = {}
    labels = []
    for item_id in item_ids:
        categories = items[item_id]["categories"]
        labels.append(vocabulary.setdefault(categories[-1], len(vocabulary)) if categories else -1)
    return torch.tensor(labels, dtype=torch.long)


# Purity.
def prefix_purity(codes: Tensor, labels: Tensor, prefix_len: int) -> float | None:
    """Pair purity (module docstring) of the groups sharing the first `prefix_len` codes.

    Args:
        codes: `(N, L)` semantic IDs.
        labels: `(N,)` leaf labels, -1 = unknown (left out).
    """
    known = labels >= 0
    codes, labels = codes[known, :prefix_len], labels[known]
    if codes.shape[0] < 2:
        return None
    _, group = torch.unique(codes, dim=0, return_inverse=True)
    _, group_sizes = torch.unique(group, return_counts=True)
    _, cell_sizes = torch.unique(torch.stack([group, labels], dim=1), dim=0, return_counts=True)
    pairs = (group_sizes * (group_sizes - 1) // 2).sum()
    if pairs == 0:
        return None
    return float((cell_sizes * (cell_sizes - 1) // 2).sum() / pairs)


def random_purity(codes: Tensor, labels: Tensor, prefix_len: int, num_random: int, seed: int) -> float | None:
    """Mean `prefix_purity` over `num_random` random row permutations of `codes` (same shape and group sizes)."""
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(num_random):
        permuted = codes[torch.randperm(codes.shape[0], generator=generator)]
        value = prefix_purity(permuted, labels, prefix_len)
        if value is not None:
            values.append(value)
    return sum(values) / len(values) if values else None


def purity_table(codes: Tensor, labels: Tensor, num_random: int = 5, seed: int = 0) -> list[dict]:
    """Per prefix length `1 .. L - 1`: groups, mean group size, purity and random purity."""
    rows = []
    known = labels >= 0
    for prefix_len in range(1, codes.shape[1]):
        num_groups = len(torch.unique(codes[known, :prefix_len], dim=0)) if known.any() else 0
        rows.append(
            {
                "prefix_len": prefix_len,
                "groups": num_groups,
                "mean_group_size": float(known.sum() / max(num_groups, 1)),
                "purity": prefix_purity(codes, labels, prefix_len),
                "random_purity": random_purity(codes, labels, prefix_len, num_random, seed),
            }
        )
    return rows


# Prefix listing.
def parse_prefix(text: str, num_codebooks: int, codebook_size: int) -> list[int]:
    """`"12,200"` -> `[12, 200]`, checked against the tokenizer's shape."""
    if not text.strip():
        return []
    try:
        prefix = [int(part) for part in text.replace(" ", "").split(",")]
    except ValueError:
        raise ValueError(f"--prefix must be comma-separated integers such as '12,200', got {text!r}") from None
    if len(prefix) > num_codebooks:
        raise ValueError(f"--prefix {text!r} has {len(prefix)} codes but semantic IDs have {num_codebooks} levels")
    for level, code in enumerate(prefix):
        if not 0 <= code < codebook_size:
            raise ValueError(f"--prefix {text!r}: code {code} at level {level} is outside [0, {codebook_size})")
    return prefix


def items_under_prefix(codes: Tensor, prefix: list[int]) -> Tensor:
    """Indices `(M,)` of the items whose first `len(prefix)` codes equal `prefix`."""
    if not prefix:
        return torch.arange(codes.shape[0])
    return (codes[:, : len(prefix)] == torch.tensor(prefix)).all(dim=1).nonzero().flatten()


def explain(tokenizer, items: dict[str, dict], args: ExplainArgs) -> dict:
    """The report as a dict: purity per level and (with `args.prefix`) the items under the prefix."""
    item_ids = tokenizer.item_ids
    codes = tokenizer.item_codes  # (N, num_codebooks)
    labels = leaf_labels(item_ids, items)
    report = {
        "num_items": len(item_ids),
        "num_codebooks": tokenizer.num_codebooks,
        "codebook_size": tokenizer.codebook_size,
        "items_with_leaf_category": int((labels >= 0).sum()),
        "leaf_categories": int(labels.max() + 1) if (labels >= 0).any() else 0,
        "purity": purity_table(codes, labels, args.num_random, args.seed),
    }
    if args.prefix:
        prefix = parse_prefix(args.prefix, tokenizer.num_codebooks, tokenizer.codebook_size)
        members = items_under_prefix(codes, prefix)
        leaves: dict[str, int] = {}
        for index in members.tolist():
            categories = items[item_ids[index]]["categories"]
            leaf = categories[-1] if categories else "(none)"
            leaves[leaf] = leaves.get(leaf, 0) + 1
        report["prefix"] = {
            "codes": prefix,
            "num_items": len(members),
            "leaf_category_counts": dict(sorted(leaves.items(), key=lambda kv: -kv[1])),
            "items": [
                {
                    "item_id": item_ids[index],
                    "semantic_id": tokenizer.render(item_ids[index]),
                    "title": items[item_ids[index]]["title"],
                    "categories": items[item_ids[index]]["categories"],
                }
                for index in members[: args.max_items].tolist()
            ],
        }
    return report


def prefix_explanations(tokenizer, items: dict[str, dict], top: int = 3) -> dict:
    """What each code prefix stands for, for people reading recommendations (shipped as `code_prefixes.json`).

    Returns:
        `{"num_codebooks": L, "prefixes": {"12": {"num_items": 40, "leaf_categories": [["Nail Polish", 30], ...]},
        "12,200": {...}, ...}}`: every prefix of length 1 .. L - 1 that some item has, with its item count and its
        `top` most frequent leaf categories (the last entry of `categories`) as `[name, count]`.
    """
    counts: dict[str, dict[str, int]] = {}
    sizes: dict[str, int] = {}
    for item_id, codes in zip(tokenizer.item_ids, tokenizer.item_codes.tolist()):
        categories = items.get(item_id, {}).get("categories") or []
        for prefix_len in range(1, tokenizer.num_codebooks):
            key = ",".join(map(str, codes[:prefix_len]))
            sizes[key] = sizes.get(key, 0) + 1
            leaves = counts.setdefault(key, {})
            if categories:
                leaves[categories[-1]] = leaves.get(categories[-1], 0) + 1
    prefixes = {
        key: {"num_items": sizes[key],
              "leaf_categories": [[name, n] for name, n in sorted(counts[key].items(), key=lambda kv: -kv[1])[:top]]}
        for key in sizes
    }
    return {"num_codebooks": tokenizer.num_codebooks, "prefixes": prefixes}


def format_report(report: dict) -> str:
    """The report as readable text."""
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    lines = [
        f"{report['num_items']} items, {report['num_codebooks']} levels x {report['codebook_size']} codes; "
        f"{report['items_with_leaf_category']} items in {report['leaf_categories']} leaf categories",
        "prefix_len  groups  mean_size  purity  random_purity",
    ]
    for row in report["purity"]:
        lines.append(
            f"{row['prefix_len']:>10}  {row['groups']:>6}  {row['mean_group_size']:>9.2f}  "
            f"{fmt(row['purity']):>6}  {fmt(row['random_purity']):>13}"
        )
    if "prefix" in report:
        prefix = report["prefix"]
        lines.append(f"\nprefix {prefix['codes']}: {prefix['num_items']} items")
        for leaf, count in list(prefix["leaf_category_counts"].items())[:10]:
            lines.append(f"  {count:>5}  {leaf}")
        for item in prefix["items"]:
            lines.append(f"  {item['semantic_id']}  {item['item_id']}  {item['title'][:80]}")
            lines.append(f"      {' > '.join(item['categories'])}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    from tokenization_semantic_id import SemanticIdTokenizer

    (args,) = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    if not (Path(args.tokenizer_dir) / "semantic_ids.json").is_file():
        raise FileNotFoundError(f"no semantic_ids.json in {args.tokenizer_dir} (run training/quantize.py first)")
    tokenizer = SemanticIdTokenizer.from_pretrained(args.tokenizer_dir)
    report = explain(tokenizer, load_items(args.dataset_dir), args)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return report


if __name__ == "__main__":
    main()
