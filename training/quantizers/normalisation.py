"""Input normalisation applied to the item vectors before quantising (stage 2), saved so new items get the same.

On disk: `input_normalisation.safetensors`, metadata `{"input_norm": mode}`, tensors `mean` and `std` `(dim,)`
for `standard` (none for the other modes).
"""

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor

INPUT_NORMS = ("l2", "standard", "none")
NORMALISATION_NAME = "input_normalisation.safetensors"


def normalise_inputs(embeddings: Tensor, input_norm: str) -> tuple[Tensor, dict[str, Tensor]]:
    """`(N, dim)` -> `(N, dim)` unit-length rows (`l2`), z-scored columns (`standard`) or as is (`none`).

    Also returns the `standard` statistics (`mean`, `std`, each `(dim,)`); empty for the other modes.
    """
    if input_norm == "l2":
        return F.normalize(embeddings, dim=-1), {}
    if input_norm == "standard":
        mean, std = embeddings.mean(0), embeddings.std(0).clamp_min(1e-6)
        return (embeddings - mean) / std, {"mean": mean, "std": std}
    return embeddings, {}


def save_input_normalisation(input_norm: str, statistics: dict[str, Tensor], directory: str | Path) -> None:
    """Write `input_normalisation.safetensors` into `directory`."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in statistics.items()}
    save_file(tensors, str(Path(directory) / NORMALISATION_NAME), metadata={"input_norm": input_norm})
