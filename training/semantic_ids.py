"""Semantic IDs from residual codes: TIGER's disambiguation level, per-level statistics and the code-usage plot.

Disambiguation (docs/method.md §1.2; Rajput et al., NeurIPS 2023, §3.1) appends one level holding an item's index
within the group of items sharing its code tuple, so every item's tuple is unique.
"""

from pathlib import Path

import torch
from torch import Tensor


def tuple_groups(codes: Tensor) -> tuple[Tensor, Tensor]:
    """Group identical rows of `codes` `(N, L)`: returns group index `(N,)` and group sizes `(num_groups,)`."""
    _, group, sizes = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    return group, sizes


def disambiguate(codes: Tensor, codebook_size: int, item_ids: list[str] | None = None) -> Tensor:
    """Append TIGER's disambiguation level: each item's rank (item-index order) among items sharing its tuple.

    Args:
        codes: `(N, L)` semantic codes.

    Returns:
        `(N, L + 1)` codes whose rows are all distinct.
    """
    group, sizes = tuple_groups(codes)
    largest = int(sizes.max())
    if largest > codebook_size:
        members = (group == int(sizes.argmax())).nonzero().flatten()
        named = [item_ids[i] for i in members[:3].tolist()] if item_ids is not None else members[:3].tolist()
        raise ValueError(
            f"disambiguation: {largest} items share the code tuple {codes[members[0]].tolist()} (e.g. items "
            f"{', '.join(map(repr, named))}), more than codebook_size={codebook_size} can tell apart; "
            "raise --codebook_size or --num_codebooks"
        )
    extra = torch.zeros(codes.shape[0], dtype=torch.long)
    next_free = torch.zeros(len(sizes), dtype=torch.long)
    for index, g in enumerate(group.tolist()):
        extra[index] = next_free[g]
        next_free[g] += 1
    return torch.cat([codes, extra.unsqueeze(1)], dim=1)


def level_stats(level_codes: Tensor, codebook_size: int) -> dict:
    """One level's `(N,)` codes -> codes used, utilisation (used / size), perplexity (exp of the usage entropy)."""
    counts = torch.bincount(level_codes, minlength=codebook_size).double()
    probs = counts[counts > 0] / counts.sum()
    return {
        "codes_used": int((counts > 0).sum()),
        "utilisation": float((counts > 0).sum() / codebook_size),
        "perplexity": float(torch.exp(-(probs * probs.log()).sum())),
        "largest_code_share": float(counts.max() / counts.sum()),
    }


def collision_stats(codes: Tensor) -> dict:
    """Collisions of the `(N, L)` semantic tuples before disambiguation."""
    _, sizes = tuple_groups(codes)
    num_items = codes.shape[0]
    return {
        "unique_tuples": len(sizes),
        "collision_rate": 1.0 - len(sizes) / num_items,  # share of items that need a nonzero disambiguation code
        "colliding_items": int(sizes[sizes > 1].sum()),  # items sharing their full tuple with another item
        "colliding_groups": int((sizes > 1).sum()),
        "max_group_size": int(sizes.max()),
    }


def codebook_stats(semantic_codes: Tensor, final_codes: Tensor, codebook_size: int) -> dict:
    """Per-level usage (semantic levels, then the disambiguation level), distinct prefixes and collisions."""
    levels = []
    for level in range(final_codes.shape[1]):
        entry = {"level": level, "disambiguation": level == semantic_codes.shape[1]}
        entry.update(level_stats(final_codes[:, level], codebook_size))
        entry["distinct_prefixes"] = len(tuple_groups(final_codes[:, : level + 1])[1])
        levels.append(entry)
    return {"levels": levels, "collisions_before_disambiguation": collision_stats(semantic_codes)}


def plot_code_usage(final_codes: Tensor, codebook_size: int, path: Path) -> None:
    """Bar chart of each level's code counts, most used first, one panel per level (PNG at `path`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_levels = final_codes.shape[1]
    fig, axes = plt.subplots(1, num_levels, figsize=(4 * num_levels, 3), squeeze=False)
    for level, ax in enumerate(axes[0]):
        counts = torch.bincount(final_codes[:, level], minlength=codebook_size)
        stats = level_stats(final_codes[:, level], codebook_size)
        ax.bar(range(codebook_size), counts.sort(descending=True).values.numpy(), width=1.0)
        kind = "disambiguation" if level == num_levels - 1 else "level"
        ax.set_title(f"{kind} {level}: {stats['codes_used']} used, ppl {stats['perplexity']:.0f}", fontsize=9)
        ax.set_xlabel("code rank")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("items")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
