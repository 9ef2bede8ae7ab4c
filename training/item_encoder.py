"""What a checkpoint ships so that new items get semantic IDs from content: the item encoder, built from the stage
folders (features, stage 1, stage 2) and attached to a saved model.

    python training/item_encoder.py --model_dir OUT/final --dataset_dir OUT/data --features_dir OUT/features \
        --inject_dir OUT/inject --semantic_ids_dir OUT/semantic_ids

The pipeline does this for its `final/` folder; the command is for checkpoints saved before. It sets
`config.item_encoder` (`quantization_qbert4rec.item_encoder_settings`) and saves the encoder's weights with the
model's: stage 1's injector without its ID table, stage 2's input normalisation, RQ-VAE encoder and codebooks, and
every catalogue item's content-only fused vector (a new item's content twin is found among them).
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from quantization_qbert4rec import MINILM_HUB_ID, ItemEncoder, item_encoder_settings
from training.config import parse_args
from training.quantizers import Quantizer
from training.quantizers.normalisation import NORMALISATION_NAME

FEATURE_SETTINGS = "features_args.json"  # written by training/extract_features.py beside the modality files
INJECTOR_SIZES = ("dim", "num_layers", "num_heads", "ffn_dim", "pool_temperature", "id_in_memory", "use_gate",
                  "gate_threshold")


@dataclass
class ItemEncoderArgs:
    """Arguments of `training/item_encoder.py`."""

    model_dir: str = field(default=None, metadata={"help": "save_pretrained folder to extend (rewritten in place)", "required": True})
    dataset_dir: str = field(default=None, metadata={"help": "prepared dataset the model was trained on", "required": True})
    features_dir: str = field(default=None, metadata={"help": "extract_features.py output folder", "required": True})
    inject_dir: str = field(default=None, metadata={"help": "inject.py output folder", "required": True})
    semantic_ids_dir: str = field(default=None, metadata={"help": "quantize.py output folder", "required": True})


SECTION = "item_encoder"
ARGUMENT_TYPES = (ItemEncoderArgs,)


def feature_settings(features_dir: Path, modalities) -> dict:
    """How the features were made: the text encoder and fields, `max_length`, `max_categories`, the image source.
    Read from `features_args.json` when extract_features.py wrote one, else from the modality files' metadata and
    extract_features.py's defaults."""
    from training.extract_features import MINILM_NAMES, MINILM_SHA256, FeatureArgs, resolve_model

    path = features_dir / FEATURE_SETTINGS
    args = FeatureArgs(**json.loads(path.read_text())) if path.is_file() else FeatureArgs()
    metadata = {}
    for modality in modalities:
        with safe_open(str(features_dir / f"{modality}.safetensors"), framework="pt") as f:
            metadata[modality] = f.metadata() or {}
    encoders = {metadata[m].get("encoder", "") for m in ("text", "structure") if m in metadata}
    encoders = {e for e in encoders if not e.startswith("matrix:")}
    text_encoder, sha256 = None, None
    if encoders:
        (name,) = encoders
        if name in MINILM_NAMES:
            text_encoder, sha256 = MINILM_HUB_ID, MINILM_SHA256
        else:
            text_encoder, fingerprint = resolve_model(name)
            sha256 = None if fingerprint.startswith("hub:") else fingerprint
    text = metadata.get("text", {})
    text_fields = [] if text.get("fields", "matrix") == "matrix" else text["fields"].split(",")
    image = None
    if "image" in metadata:
        image = "precomputed" if metadata["image"].get("encoder", "").startswith("matrix:") else metadata["image"]["encoder"]
    return {"text_encoder": text_encoder, "text_encoder_sha256": sha256, "text_fields": text_fields,
            "max_length": args.max_length, "max_categories": args.max_categories, "image": image}


def build_item_encoder(features_dir, inject_dir, semantic_ids_dir) -> ItemEncoder:
    """The item encoder of a pipeline run, with its trained weights, from its three stage folders."""
    features_dir, inject_dir, semantic_ids_dir = Path(features_dir), Path(inject_dir), Path(semantic_ids_dir)
    description = json.loads((inject_dir / "inject_args.json").read_text())
    quantizer = Quantizer.load(semantic_ids_dir)
    with safe_open(str(semantic_ids_dir / NORMALISATION_NAME), framework="pt") as f:
        input_norm = (f.metadata() or {})["input_norm"]
    hidden_sizes = getattr(quantizer, "hidden_sizes", None)  # an RQ-VAE's encoder; residual k-means has none
    settings = item_encoder_settings(
        **feature_settings(features_dir, description["modality_dims"]),
        modality_dims=description["modality_dims"],
        injector={key: description[key] for key in INJECTOR_SIZES},
        quantizer={"method": quantizer.name, "input_norm": input_norm, "num_codebooks": quantizer.num_codebooks,
                   "codebook_size": quantizer.codebook_size, "code_dim": quantizer.codebooks.shape[-1],
                   "hidden_sizes": hidden_sizes},
    )
    encoder = ItemEncoder(settings)
    injector = load_file(str(inject_dir / "model.safetensors"))
    injector.pop("id_vectors.weight")  # new items have no ID vector
    encoder.injector.load_state_dict(injector)
    state = {"mean": encoder.quantizer.mean, "std": encoder.quantizer.std,  # kept unless `standard` saved them
             **load_file(str(semantic_ids_dir / NORMALISATION_NAME)), "codebooks": quantizer.codebooks.detach()}
    if hidden_sizes is not None:
        state.update({f"encoder.{k}": v for k, v in quantizer.encoder.state_dict().items()})
    encoder.quantizer.load_state_dict(state)
    return encoder.eval()


@torch.no_grad()
def content_vectors(encoder: ItemEncoder, features_dir, dataset_dir) -> torch.Tensor:
    """Every catalogue item's fused vector from its content alone `(num_items, dim)`, as a new item gets its own: no
    ID vector and no co-occurrence vector (the structure modality's last slot)."""
    from training.inject import load_modalities
    from training.prepared import load_item_ids

    modalities = load_modalities(features_dir, list(encoder.settings["modality_dims"]), load_item_ids(dataset_dir))
    features = {m: f for m, (f, _) in modalities.items()}
    masks = {m: mask.clone() for m, (_, mask) in modalities.items()}
    if "structure" in masks:
        masks["structure"][:, -1] = False
    return torch.cat([encoder({m: f[rows] for m, f in features.items()}, {m: k[rows] for m, k in masks.items()})[0]
                      for rows in torch.arange(len(next(iter(features.values())))).split(4096)])


def attach_item_encoder(model_dir, dataset_dir, features_dir, inject_dir, semantic_ids_dir) -> None:
    """Add the run's item encoder, with the catalogue's content vectors, to the model saved in `model_dir` (config
    and weights rewritten in place)."""
    from modeling_qbert4rec import QBert4RecForMaskedItemModeling

    model = QBert4RecForMaskedItemModeling.from_pretrained(model_dir)
    encoder = build_item_encoder(features_dir, inject_dir, semantic_ids_dir)
    encoder.content_vectors = content_vectors(encoder, features_dir, dataset_dir)
    if len(encoder.content_vectors) != model.config.num_items:
        raise ValueError(f"{dataset_dir} holds {len(encoder.content_vectors)} items, the model {model.config.num_items}")
    model.config.item_encoder = encoder.settings
    model.item_encoder = encoder
    with torch.no_grad():
        model.save_pretrained(model_dir)


def main(argv=None) -> None:
    (args,) = parse_args(argv, *ARGUMENT_TYPES, section=SECTION, description=__doc__)
    attach_item_encoder(args.model_dir, args.dataset_dir, args.features_dir, args.inject_dir, args.semantic_ids_dir)
    print(f"{args.model_dir}: item encoder attached (model.add_items can now give new items semantic IDs)")


if __name__ == "__main__":
    main()
