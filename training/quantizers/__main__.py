"""Convert semantic-ID folders whose quantiser was saved before the quantiser interface, in place:

    python -m training.quantizers SID [SID ...]

Such a folder's `quantizer.safetensors` holds the old module's state dict (RQ-VAE: vector-quantize-pytorch's
`quantizer.layers.<l>._codebook.embed` `(1, K, D)` per level beside `encoder.*` and `decoder.*`; rkmeans:
`codebooks`) and `input_mean` / `input_std`; its `quantizer_config.json` holds every stage-2 argument and
`input_dim`. The two old files are kept as `quantizer.legacy.safetensors` and `quantizer_config.legacy.json`.
"""

import argparse
import json
from pathlib import Path

import torch

from training.quantizers import QUANTIZERS
from training.quantizers.base import CONFIG_NAME, WEIGHTS_NAME
from training.quantizers.normalisation import save_input_normalisation


def convert(directory: str | Path) -> None:
    """Rewrite `directory`'s quantiser in the current format (`Quantizer.save`, `save_input_normalisation`)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not (config_path.is_file() and weights_path.is_file()):
        raise FileNotFoundError(f"{directory}: no {CONFIG_NAME} and {WEIGHTS_NAME} to convert")
    old = json.loads(config_path.read_text())
    if "settings" in old:
        raise ValueError(f"{directory}: the quantiser is already in the current format")
    state = load_file(str(weights_path))
    cls = QUANTIZERS[old["method"]]
    settings = {name: old[name] for name in cls.setting_names()}
    quantizer = cls(old["input_dim"], old["num_codebooks"], old["codebook_size"], **settings)
    tensors = {k: v for k, v in state.items() if k == "codebooks" or k.startswith(("encoder.", "decoder."))}
    levels = sorted(int(k.split(".")[2]) for k in state if k.endswith("._codebook.embed"))
    if levels:
        tensors["codebooks"] = torch.stack([state[f"quantizer.layers.{level}._codebook.embed"][0] for level in levels])
    quantizer.load_state_tensors(tensors)

    weights_path.rename(directory / "quantizer.legacy.safetensors")
    config_path.rename(directory / "quantizer_config.legacy.json")
    quantizer.save(directory)
    statistics = {"mean": state["input_mean"], "std": state["input_std"]} if "input_mean" in state else {}
    save_input_normalisation(old["input_norm"], statistics, directory)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.quantizers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directories", nargs="+", metavar="SID", help="a folder written by training/quantize.py")
    for directory in parser.parse_args(argv).directories:
        convert(directory)
        print(f"{directory}: quantiser converted (old files kept as *.legacy.*)")


if __name__ == "__main__":
    main()
