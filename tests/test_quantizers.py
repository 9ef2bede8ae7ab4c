"""The quantiser interface, parametrised over the registry (round trip, save/load, determinism, bad input), each
quantiser's own properties, and the converter of folders saved before the interface."""

import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.quantize import METHODS, QuantizeArgs, build_quantizer, load_codebooks
from training.quantizers import QUANTIZERS, Quantizer, codebook_sum
from training.quantizers.__main__ import main as convert_main
from training.quantizers.residual_kmeans import kmeans

NUM_CLUSTERS, PER_CLUSTER, DIM = 6, 8, 16
TINY = dict(num_codebooks=2, codebook_size=8, hidden_sizes=[32], latent_dim=8, warmup_epochs=5, epochs=20,
            batch_size=16, learning_rate=1e-2, kmeans_iters=10)  # fmt: skip


def clustered_vectors(seed=0):
    """`(48, 16)` vectors in 6 well-separated clusters, and each item's cluster `(48,)`."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(NUM_CLUSTERS, DIM, generator=generator) * 5
    clusters = torch.arange(NUM_CLUSTERS).repeat_interleave(PER_CLUSTER)
    return centres[clusters] + 0.1 * torch.randn(len(clusters), DIM, generator=generator), clusters


def tiny(method, **overrides) -> Quantizer:
    return build_quantizer(QuantizeArgs(method=method, **{**TINY, **overrides}), DIM)


def fitted(method, seed=0, **overrides) -> Quantizer:
    quantizer = tiny(method, **overrides)
    quantizer.fit(clustered_vectors()[0], seed)
    return quantizer.eval()


# The interface, for every registered quantiser.
def test_registry_lists_every_quantizer_and_the_command_offers_them():
    assert set(QUANTIZERS) == {"rqvae", "rkmeans"}
    assert METHODS == tuple(QUANTIZERS)
    assert all(issubclass(cls, Quantizer) and QUANTIZERS[cls.name] is cls for cls in QUANTIZERS.values())


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
def test_encode_decode_round_trip(method):
    vectors, _ = clustered_vectors()
    quantizer = fitted(method)
    codes = quantizer.encode(vectors)
    assert codes.shape == (48, 2) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 8
    assert quantizer.codebooks.shape[:2] == (2, 8)
    decoded = quantizer.decode(codes)
    assert decoded.shape == vectors.shape
    # Six tight clusters and eight codes per level: the codes keep most of what the mean alone loses.
    error, spread = (decoded - vectors).pow(2).sum(), (vectors - vectors.mean(0)).pow(2).sum()
    assert error < 0.1 * spread, (float(error), float(spread))
    with pytest.raises(ValueError, match=r"expected codes of shape \(N, 2\), got \(48, 3\)"):
        quantizer.decode(torch.zeros(48, 3, dtype=torch.long))


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
def test_save_load_identity_in_our_own_keys(tmp_path, method):
    vectors, _ = clustered_vectors()
    quantizer = fitted(method)
    quantizer.save(tmp_path)
    loaded = Quantizer.load(tmp_path)
    assert type(loaded) is type(quantizer) and not loaded.training
    assert loaded.settings == quantizer.settings
    torch.testing.assert_close(loaded.codebooks, quantizer.codebooks, rtol=0, atol=0)
    codes = quantizer.encode(vectors)
    assert torch.equal(loaded.encode(vectors), codes)
    torch.testing.assert_close(loaded.decode(codes), quantizer.decode(codes), rtol=0, atol=0)
    tensors = load_file(str(tmp_path / "quantizer.safetensors"))
    assert tensors["codebooks"].shape == quantizer.codebooks.shape
    assert not [key for key in tensors if "_codebook" in key or key.startswith("quantizer.")]  # no library keys
    config = json.loads((tmp_path / "quantizer_config.json").read_text())
    assert config == {"method": method, "input_dim": DIM, "num_codebooks": 2, "codebook_size": 8,
                      "settings": quantizer.settings}  # fmt: skip
    torch.testing.assert_close(load_codebooks(tmp_path), quantizer.codebooks, rtol=0, atol=0)


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
def test_loading_leaves_the_global_random_stream_alone(tmp_path, method):
    """Pretraining loads the codebooks after seeding: a load that drew from the global generator (building the
    RQ-VAE before its weights arrive) changed every later dropout mask and pretraining's results."""
    fitted(method).save(tmp_path)
    torch.manual_seed(0)
    load_codebooks(tmp_path)
    after_load = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after_load, torch.rand(3))


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
def test_same_seed_same_codes(method):
    vectors, _ = clustered_vectors(seed=1)
    first, second = tiny(method), tiny(method)
    torch.manual_seed(123)  # the global RNG before `fit` does not matter: `fit` seeds what it draws
    first.fit(vectors, seed=3)
    second.fit(vectors, seed=3)
    assert torch.equal(first.encode(vectors), second.encode(vectors))
    torch.testing.assert_close(first.codebooks, second.codebooks, rtol=0, atol=0)


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
def test_quantizer_refuses_wrong_input_dimension_and_too_small_catalogue(method):
    vectors, _ = clustered_vectors()
    quantizer = tiny(method)
    with pytest.raises(ValueError, match=r"expects vectors of shape \(N, 16\), got \(48, 12\)"):
        quantizer.fit(vectors[:, :12], seed=0)
    with pytest.raises(ValueError, match=r"expects vectors of shape \(N, 16\), got \(48, 12\)"):
        quantizer.encode(vectors[:, :12])
    with pytest.raises(ValueError, match=r"codebook_size=8 is larger than the number of items \(5\)"):
        quantizer.fit(vectors[:5], seed=0)


def test_load_refuses_a_folder_without_a_quantizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="not written by training/quantize.py"):
        Quantizer.load(tmp_path)


# RQ-VAE.
def test_rqvae_decode_path_matches_forward():
    vectors, _ = clustered_vectors()
    torch.manual_seed(0)
    model = tiny("rqvae", num_codebooks=3)
    model.train()
    model(vectors)  # k-means initialisation and one EMA step
    model.eval()
    with torch.no_grad():
        output = model(vectors)
        looked_up = sum(model.codebooks[level][output.codes[:, level]] for level in range(3))
        assert output.codes.shape == (len(vectors), 3)
        torch.testing.assert_close(output.quantized, looked_up)
        torch.testing.assert_close(codebook_sum(model.codebooks, output.codes), looked_up)
        torch.testing.assert_close(model.residual_vq.get_output_from_indices(output.codes), looked_up)
        torch.testing.assert_close(model.decode(output.codes), model.decoder(looked_up))
        assert torch.equal(model.encode(vectors), output.codes)


def test_rqvae_training_lowers_loss_and_gradients_reach_encoder():
    vectors, _ = clustered_vectors()
    vectors = torch.nn.functional.normalize(vectors, dim=-1)
    model = tiny("rqvae", warmup_epochs=2, epochs=6, batch_size=8)
    log = model.fit(vectors, seed=42)
    assert [entry["warmup"] for entry in log] == [True] * 2 + [False] * 6
    assert log[-1]["reconstruction_loss"] < 0.5 * log[0]["reconstruction_loss"], log
    assert all(entry["commitment_loss"] > 0 for entry in log[2:])
    model.train()
    model(vectors).loss.backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0


# Residual k-means.
def test_kmeans_recovers_separated_clusters():
    vectors, clusters = clustered_vectors()
    _, assignments = kmeans(vectors, NUM_CLUSTERS, num_iters=10, generator=torch.Generator().manual_seed(0))
    # Same partition: each cluster maps to one code and no two clusters share one.
    pairs = set(zip(clusters.tolist(), assignments.tolist()))
    assert len(pairs) == NUM_CLUSTERS and len({c for _, c in pairs}) == NUM_CLUSTERS


def test_residual_kmeans_round_trip_and_levels_reduce_error():
    vectors, _ = clustered_vectors()
    quantizer = fitted("rkmeans", num_codebooks=3, codebook_size=4)
    codes = quantizer.encode(vectors)
    looked_up = sum(quantizer.codebooks[level][codes[:, level]] for level in range(3))
    torch.testing.assert_close(quantizer.decode(codes), looked_up)
    residual_errors = []
    for levels in range(1, 4):
        partial = sum(quantizer.codebooks[level][codes[:, level]] for level in range(levels))
        residual_errors.append(float((vectors - partial).pow(2).sum()))
    assert residual_errors[0] > residual_errors[1] > residual_errors[2]


# Folders saved before the interface (vector-quantize-pytorch's keys): refused, then converted.
def write_legacy_folder(directory, method, vectors):
    """What training/quantize.py wrote before the interface: the old module's state dict plus `input_mean` /
    `input_std`, and every stage-2 argument with `input_dim` in `quantizer_config.json`. Returns the old codes."""
    quantizer = tiny(method)
    if method == "rqvae":  # the old `RQVAE` module: `encoder`, `quantizer` (a ResidualVQ), `decoder`
        old = nn.Module()
        old.encoder, old.quantizer, old.decoder = quantizer.encoder, quantizer.residual_vq, quantizer.decoder
        old.train()
        old.quantizer(old.encoder(vectors))  # k-means initialisation
        old.eval()
        with torch.no_grad():
            codes = old.quantizer(old.encoder(vectors))[1]
        state = old.state_dict()
        assert "quantizer.layers.1._codebook.embed" in state
    else:
        quantizer.fit(vectors, seed=0)
        codes, state = quantizer.encode(vectors), {"codebooks": quantizer.codebooks}
    state = {**state, "input_mean": torch.zeros(DIM), "input_std": torch.ones(DIM)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "quantizer.safetensors"))
    config = {"input_dim": DIM, **asdict(QuantizeArgs(method=method, **TINY))}
    (directory / "quantizer_config.json").write_text(json.dumps(config))
    return codes, quantizer.codebooks.detach().clone()


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
def test_legacy_folder_is_refused_then_converted_to_the_same_codes(tmp_path, method, capsys):
    vectors, _ = clustered_vectors()
    old_codes, old_codebooks = write_legacy_folder(tmp_path, method, vectors)
    with pytest.raises(ValueError, match=rf"convert the folder with: python -m training.quantizers {tmp_path}"):
        load_codebooks(tmp_path)
    convert_main([str(tmp_path)])
    assert "quantiser converted" in capsys.readouterr().out
    converted = Quantizer.load(tmp_path)
    assert torch.equal(converted.encode(vectors), old_codes)
    torch.testing.assert_close(load_codebooks(tmp_path), old_codebooks, rtol=0, atol=0)
    normalisation = load_file(str(tmp_path / "input_normalisation.safetensors"))
    assert torch.equal(normalisation["std"], torch.ones(DIM))
    assert (tmp_path / "quantizer.legacy.safetensors").is_file()
    with pytest.raises(ValueError, match="already in the current format"):
        convert_main([str(tmp_path)])
