"""Residual k-means (`rkmeans`): k-means++ then Lloyd at each level, on the previous level's residual; no encoder."""

import torch
from torch import Tensor
from tqdm.auto import tqdm

from quantization_qbert4rec import nearest_codes
from training.quantizers.base import Quantizer, codebook_sum


def kmeans(vectors: Tensor, num_clusters: int, num_iters: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """k-means++ seeding, then Lloyd; an empty cluster restarts at the point worst served by its centroid.

    Args:
        vectors: `(N, D)` points, `N >= num_clusters`.

    Returns:
        centroids `(num_clusters, D)` and assignments `(N,)` (index of the nearest centroid).
    """
    num_points = vectors.shape[0]
    centroids = vectors.new_empty(num_clusters, vectors.shape[1])
    centroids[0] = vectors[torch.randint(num_points, (1,), generator=generator)]
    nearest = (vectors - centroids[0]).pow(2).sum(1)  # (N,) squared distance to the nearest chosen centroid
    for k in range(1, num_clusters):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)  # all points coincide: uniform
        centroids[k] = vectors[torch.multinomial(weights, 1, generator=generator)]
        nearest = torch.minimum(nearest, (vectors - centroids[k]).pow(2).sum(1))
    for _ in range(num_iters):
        assignments = torch.cdist(vectors, centroids).argmin(1)
        counts = torch.bincount(assignments, minlength=num_clusters)
        sums = vectors.new_zeros(centroids.shape).index_add_(0, assignments, vectors)
        updated = sums / counts.clamp_min(1).unsqueeze(1)
        empty = counts == 0
        if empty.any():
            error = (vectors - centroids[assignments]).pow(2).sum(1)
            updated[empty] = vectors[error.topk(int(empty.sum())).indices]
        centroids = updated
    return centroids, torch.cdist(vectors, centroids).argmin(1)


class ResidualKMeans(Quantizer):
    """Residual k-means: level `l` clusters the residual left by levels `< l`; codes index the input space.

    Args:
        kmeans_iters: Lloyd iterations of each level.
    """

    name = "rkmeans"

    def __init__(self, input_dim: int, num_codebooks: int, codebook_size: int, *, kmeans_iters: int):
        super().__init__(input_dim, num_codebooks, codebook_size)
        self.kmeans_iters = kmeans_iters
        self.register_buffer("centroids", torch.zeros(num_codebooks, codebook_size, input_dim))

    @property
    def codebooks(self) -> Tensor:
        return self.centroids

    def _fit(self, vectors: Tensor, seed: int) -> list[dict]:
        generator = torch.Generator().manual_seed(seed)
        residual = vectors
        for level in tqdm(range(self.num_codebooks), desc="residual k-means", leave=False):
            centroids, assignments = kmeans(residual, self.codebook_size, self.kmeans_iters, generator)
            self.centroids[level] = centroids
            residual = residual - centroids[assignments]
        return []

    def _encode(self, vectors: Tensor) -> Tensor:
        """Greedy nearest code per level."""
        return nearest_codes(vectors, self.centroids)

    def _decode(self, codes: Tensor) -> Tensor:
        return codebook_sum(self.centroids, codes)

    def state_tensors(self) -> dict[str, Tensor]:
        return {"codebooks": self.centroids}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.centroids.copy_(tensors["codebooks"])
