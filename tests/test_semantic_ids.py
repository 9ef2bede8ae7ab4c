"""Semantic IDs from residual codes: the disambiguation level, per-level statistics and the code-usage plot."""

import pytest
import torch

from training.semantic_ids import codebook_stats, collision_stats, disambiguate, level_stats, plot_code_usage


# Disambiguation.
def test_disambiguation_ranks_items_within_colliding_groups():
    codes = torch.tensor([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    final = disambiguate(codes, codebook_size=4)
    assert final[:, :2].tolist() == codes.tolist()
    assert final[:, 2].tolist() == [0, 0, 1, 2, 0]
    assert len(torch.unique(final, dim=0)) == len(codes)


def test_disambiguation_group_too_big():
    codes = torch.tensor([[1, 2]] * 5 + [[0, 0]])
    ids = [f"item{n}" for n in range(6)]
    with pytest.raises(ValueError, match=r"5 items share the code tuple \[1, 2\] \(e.g. items 'item0', 'item1', "
                                         r"'item2'\), more than codebook_size=4"):  # fmt: skip
        disambiguate(codes, codebook_size=4, item_ids=ids)


# Statistics.
def test_collision_and_level_stats():
    codes = torch.tensor([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1], [0, 1]])
    assert collision_stats(codes) == {
        "unique_tuples": 3,
        "collision_rate": 0.5,
        "colliding_items": 5,
        "colliding_groups": 2,
        "max_group_size": 3,
    }
    uniform = level_stats(torch.tensor([0, 1, 2, 3] * 3), codebook_size=8)
    assert uniform["codes_used"] == 4 and uniform["utilisation"] == 0.5
    assert uniform["perplexity"] == pytest.approx(4.0)
    skewed = level_stats(torch.tensor([0] * 9 + [1, 2, 3]), codebook_size=8)
    assert 1.0 < skewed["perplexity"] < 4.0 and skewed["largest_code_share"] == 0.75


def test_codebook_stats_per_level_and_plot(tmp_path):
    codes = torch.tensor([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1], [0, 1]])
    final = disambiguate(codes, codebook_size=4)
    stats = codebook_stats(codes, final, codebook_size=4)
    assert [level["disambiguation"] for level in stats["levels"]] == [False, False, True]
    assert [level["codes_used"] for level in stats["levels"]] == [2, 3, 3]
    assert [level["distinct_prefixes"] for level in stats["levels"]] == [2, 3, 6]  # the last level tells all apart
    assert stats["collisions_before_disambiguation"] == collision_stats(codes)
    plot_code_usage(final, codebook_size=4, path=tmp_path / "code_usage.png")
    assert (tmp_path / "code_usage.png").stat().st_size > 1000
