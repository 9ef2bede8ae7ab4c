"""RQ-VAE (`rqvae`; Zeghidour et al. 2021, Lee et al. 2022): MLP encoder -> residual codebooks -> MLP decoder.

The residual codebooks are vector-quantize-pytorch's `ResidualVQ`: EMA codebooks, k-means initialisation on the
whole catalogue, dead-code restart from the batch's residuals, commitment loss. Trained with Accelerate. This file
is the only one that knows `ResidualVQ`'s internals; `save` writes the codebooks under our own key.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from quantization_qbert4rec import mlp
from training.quantizers.base import Quantizer, codebook_sum


@dataclass
class RQVAEOutput:
    """`loss` = `reconstruction_loss` + `commitment_loss`; `codes` `(N, num_codebooks)`; `quantized` `(N, latent_dim)`
    (the sum of the codes' codebook vectors; both `None` without quantisation); `reconstruction` `(N, input_dim)`."""

    loss: Tensor
    reconstruction_loss: Tensor
    commitment_loss: Tensor
    codes: Tensor | None
    quantized: Tensor | None
    reconstruction: Tensor


class RQVAE(Quantizer):
    """Residual-quantised auto-encoder (TIGER's semantic-ID quantiser); its codebooks live in the latent space.

    Args:
        hidden_sizes: encoder hidden sizes; the decoder mirrors them.
        latent_dim: dimension of the quantised latent.
        commitment_weight: weight of `||z - sg(q)||^2`; codebooks follow an EMA of their assigned latents
            (van den Oord et al. 2017, appendix), so they need no loss of their own.
        ema_decay: EMA decay of the codebooks.
        kmeans_iters: k-means iterations of the codebook initialisation (on the first batch the quantiser sees;
            `_fit` makes that the whole catalogue after the warm-up).
        dead_code_threshold: a code whose EMA cluster size drops below this restarts at a residual of the batch.
        warmup_epochs: auto-encoder epochs without quantisation before the k-means initialisation.
        epochs: passes over the catalogue with quantisation.
        batch_size, learning_rate, weight_decay: AdamW training.
        mixed_precision: Accelerate's `no`, `fp16` or `bf16`.

    A loaded RQ-VAE encodes and decodes; it keeps no EMA statistics to train further.
    """

    name = "rqvae"

    def __init__(
        self,
        input_dim: int,
        num_codebooks: int,
        codebook_size: int,
        *,
        hidden_sizes: list[int],
        latent_dim: int,
        commitment_weight: float,
        ema_decay: float,
        kmeans_iters: int,
        dead_code_threshold: float,
        warmup_epochs: int,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        weight_decay: float,
        mixed_precision: str,
    ):
        super().__init__(input_dim, num_codebooks, codebook_size)
        self.hidden_sizes = list(hidden_sizes)
        self.latent_dim = latent_dim
        self.commitment_weight = commitment_weight
        self.ema_decay = ema_decay
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.warmup_epochs = warmup_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.mixed_precision = mixed_precision
        self.build_networks()

    def build_networks(self) -> None:
        """Create the encoder, the residual codebooks and the decoder with fresh weights from the global RNG."""
        from vector_quantize_pytorch import ResidualVQ

        self.encoder = mlp([self.input_dim, *self.hidden_sizes, self.latent_dim])
        self.residual_vq = ResidualVQ(
            dim=self.latent_dim,
            num_quantizers=self.num_codebooks,
            codebook_size=self.codebook_size,
            decay=self.ema_decay,
            kmeans_init=True,
            kmeans_iters=self.kmeans_iters,
            threshold_ema_dead_code=self.dead_code_threshold,
            commitment_weight=self.commitment_weight,
        )
        self.decoder = mlp([self.latent_dim, *reversed(self.hidden_sizes), self.input_dim])

    @property
    def codebooks(self) -> Tensor:
        """`(num_codebooks, codebook_size, latent_dim)`."""
        return self.residual_vq.codebooks

    def forward(self, vectors: Tensor, quantize: bool = True) -> RQVAEOutput:
        """`vectors` `(N, input_dim)` -> `RQVAEOutput`. In training mode the codebooks take an EMA step.

        `quantize=False` (the warm-up) skips the quantiser: the latent goes straight to the decoder, and `codes`
        and `quantized` are `None`.
        """
        latent = self.encoder(vectors)  # (N, latent_dim)
        if quantize:
            quantized, codes, commitment = self.residual_vq(latent)  # (N, latent_dim), (N, L), (L,)
            reconstruction = self.decoder(quantized)  # (N, input_dim)
            commitment_loss = commitment.sum()
        else:
            quantized, codes = None, None
            reconstruction = self.decoder(latent)
            commitment_loss = latent.new_zeros(())
        reconstruction_loss = (reconstruction - vectors).pow(2).sum(-1).mean()  # squared error per item
        return RQVAEOutput(
            loss=reconstruction_loss + commitment_loss,
            reconstruction_loss=reconstruction_loss,
            commitment_loss=commitment_loss,
            codes=codes,
            quantized=quantized,
            reconstruction=reconstruction,
        )

    def _fit(self, vectors: Tensor, seed: int) -> list[dict]:
        """Train with Accelerate from fresh weights drawn after seeding; ends on the CPU in training mode.

        Three phases: (1) `warmup_epochs` of plain auto-encoding, so the latents carry the data's structure before
        any code is placed (a fresh encoder maps every item to nearly the same latent); (2) k-means initialisation
        of every level on the latents of the whole catalogue; (3) `epochs` of RQ-VAE training (EMA codebooks,
        dead-code restart). Returns one log entry per epoch.
        """
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from torch.utils.data import DataLoader, TensorDataset

        accelerator = Accelerator(mixed_precision=self.mixed_precision)
        set_seed(seed)
        self.build_networks()
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        loader = DataLoader(
            TensorDataset(vectors),
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        model, optimizer, loader = accelerator.prepare(self, optimizer, loader)
        model.train()

        log = []
        progress = tqdm(
            range(self.warmup_epochs + self.epochs), desc="rqvae", disable=not accelerator.is_local_main_process
        )
        for epoch in progress:
            warmup = epoch < self.warmup_epochs
            if epoch == self.warmup_epochs:
                with torch.no_grad():  # k-means initialisation on the whole catalogue (ResidualVQ's first call)
                    self(vectors.to(accelerator.device))
            totals = {"loss": 0.0, "reconstruction_loss": 0.0, "commitment_loss": 0.0}
            seen = 0
            for (batch,) in loader:
                output = model(batch, quantize=not warmup)
                accelerator.backward(output.loss)
                optimizer.step()
                optimizer.zero_grad()
                for key in totals:
                    totals[key] += getattr(output, key).item() * batch.shape[0]
                seen += batch.shape[0]
            if not all(math.isfinite(v) for v in totals.values()):
                raise ValueError(f"rqvae: non-finite loss at epoch {epoch}: {totals}; lower --learning_rate")
            entry = {"epoch": epoch, "warmup": warmup, **{k: v / seen for k, v in totals.items()}}
            log.append(entry)
            progress.set_postfix(loss=f"{entry['loss']:.4f}", recon=f"{entry['reconstruction_loss']:.4f}")
        self.cpu()  # codes and statistics are computed on the CPU
        return log

    def _encode(self, vectors: Tensor) -> Tensor:
        """The codes of the forward pass in eval mode: no codebook update."""
        was_training = self.training
        self.eval()
        codes = self(vectors).codes
        self.train(was_training)
        return codes

    def _decode(self, codes: Tensor) -> Tensor:
        """The decoder's output `(N, input_dim)` for the sum of the codes' codebook vectors `(N, latent_dim)`."""
        return self.decoder(codebook_sum(self.codebooks, codes))

    def state_tensors(self) -> dict[str, Tensor]:
        return {
            "codebooks": self.codebooks,
            **{f"encoder.{k}": v for k, v in self.encoder.state_dict().items()},
            **{f"decoder.{k}": v for k, v in self.decoder.state_dict().items()},
        }

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        for prefix, network in (("encoder.", self.encoder), ("decoder.", self.decoder)):
            network.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)})
        for layer, codebook in zip(self.residual_vq.layers, tensors["codebooks"], strict=True):
            layer._codebook.embed.copy_(codebook.unsqueeze(0))  # (1, K, D): ResidualVQ's one codebook head
            layer._codebook.initted.fill_(True)  # no k-means initialisation on the next call
