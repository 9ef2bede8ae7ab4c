"""The quantiser interface: item vectors `(N, D)` -> residual codes `(N, L)` and back, saved in our own format.

A quantiser is a `Quantizer` subclass with a `name`; defining it registers it in `QUANTIZERS`. Its keyword-only
`__init__` arguments are its settings (each kept as an attribute of the same name): `training/quantize.py` fills
them from the `QuantizeArgs` fields of the same names, and `save` writes them to `quantizer_config.json`.

On disk (`save` / `Quantizer.load`):
- `quantizer.safetensors`: what `state_tensors()` returns: always `codebooks` `(L, K, D)`, plus the quantiser's
  own weights (RQ-VAE: `encoder.*`, `decoder.*`).
- `quantizer_config.json`: `{"method", "input_dim", "num_codebooks", "codebook_size", "settings": {...}}`.
"""

import inspect
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

WEIGHTS_NAME = "quantizer.safetensors"
CONFIG_NAME = "quantizer_config.json"
QUANTIZERS: dict[str, type["Quantizer"]] = {}


def codebook_sum(codebooks: Tensor, codes: Tensor) -> Tensor:
    """`codebooks` `(L, K, D)`, `codes` `(N, L)` -> `(N, D)` = sum over levels of `codebooks[l, codes[:, l]]`."""
    levels = torch.arange(codebooks.shape[0], device=codes.device)
    return codebooks[levels, codes].sum(dim=1)  # (N, L, D) -> (N, D)


class Quantizer(nn.Module, ABC):
    """Residual quantiser of `input_dim`-dimensional vectors into `num_codebooks` codes of `codebook_size` values.

    Subclasses implement `_fit`, `_encode`, `_decode`, `codebooks`, `state_tensors` and `load_state_tensors`.
    """

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            QUANTIZERS[cls.name] = cls

    def __init__(self, input_dim: int, num_codebooks: int, codebook_size: int):
        super().__init__()
        self.input_dim = input_dim
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size

    @classmethod
    def setting_names(cls) -> list[str]:
        """The keyword-only arguments of `__init__`."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]

    @property
    def settings(self) -> dict:
        return {name: getattr(self, name) for name in self.setting_names()}

    # The interface.
    def fit(self, vectors: Tensor, seed: int) -> list[dict]:
        """Fit on `vectors` `(N, input_dim)`; the same seed gives the same codebooks. Returns a per-epoch log
        (empty for quantisers trained without epochs)."""
        self.check_vectors(vectors)
        if self.codebook_size > vectors.shape[0]:
            raise ValueError(
                f"codebook_size={self.codebook_size} is larger than the number of items ({vectors.shape[0]}); "
                "k-means cannot give every code an item: lower --codebook_size"
            )
        return self._fit(vectors, seed)

    @torch.no_grad()
    def encode(self, vectors: Tensor) -> Tensor:
        """`(N, input_dim)` -> codes `(N, num_codebooks)` long."""
        self.check_vectors(vectors)
        return self._encode(vectors).long()

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes `(N, num_codebooks)` -> vectors `(N, input_dim)`: the quantised approximation of the inputs."""
        if codes.ndim != 2 or codes.shape[1] != self.num_codebooks:
            raise ValueError(f"expected codes of shape (N, {self.num_codebooks}), got {tuple(codes.shape)}")
        return self._decode(codes)

    def check_vectors(self, vectors: Tensor) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.input_dim:
            shape = tuple(vectors.shape)
            raise ValueError(f"the quantiser expects vectors of shape (N, {self.input_dim}), got {shape}")

    @property
    @abstractmethod
    def codebooks(self) -> Tensor:
        """`(num_codebooks, codebook_size, dim)`, in the space the codes index (an RQ-VAE's latent space)."""

    @abstractmethod
    def _fit(self, vectors: Tensor, seed: int) -> list[dict]: ...

    @abstractmethod
    def _encode(self, vectors: Tensor) -> Tensor: ...

    @abstractmethod
    def _decode(self, codes: Tensor) -> Tensor: ...

    # Saving and loading.
    @abstractmethod
    def state_tensors(self) -> dict[str, Tensor]:
        """The tensors `save` writes: `codebooks` and whatever else `_encode` / `_decode` need."""

    @abstractmethod
    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what `state_tensors` returned."""

    def save(self, directory: str | Path) -> None:
        """Write `quantizer.safetensors` and `quantizer_config.json` into `directory`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_tensors().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME))
        config = {
            "method": self.name,
            "input_dim": self.input_dim,
            "num_codebooks": self.num_codebooks,
            "codebook_size": self.codebook_size,
            "settings": self.settings,
        }
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))

    @staticmethod
    def load(directory: str | Path) -> "Quantizer":
        """The quantiser `save` wrote into `directory`, as an instance of its registered class, in eval mode."""
        from safetensors.torch import load_file

        directory = Path(directory)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: the semantic IDs were not written by training/quantize.py")
        config = json.loads((directory / CONFIG_NAME).read_text())
        if "settings" not in config:
            raise ValueError(
                f"{directory}: its quantiser was saved by training/quantize.py before the quantiser interface "
                f"(vector-quantize-pytorch's keys); convert the folder with: python -m training.quantizers {directory}"
            )
        if config["method"] not in QUANTIZERS:
            raise ValueError(f"{directory}: unknown quantiser {config['method']!r}; known: {', '.join(QUANTIZERS)}")
        with torch.random.fork_rng(devices=[]):  # the initial weights, replaced below, must not move the caller's
            # random stream: pretraining's dropout and masks would differ from a run that never loaded the quantiser
            quantizer = QUANTIZERS[config["method"]](
                config["input_dim"], config["num_codebooks"], config["codebook_size"], **config["settings"]
            )
        quantizer.load_state_tensors(load_file(str(weights)))
        return quantizer.eval()
