"""A compact CenterNet-style detector for grayscale images.

Backbone: a strided stem then four residual stages (strides 4, 8, 16, 32). Neck: a light FPN
(1x1 laterals, nearest upsampling, top-down sums) back to stride 4, where one shared 3x3 trunk
feeds three 1x1 heads: class heatmap (logits), box size (w, h in input pixels) and sub-cell centre
offset. The global-average-pooled stride-32 features are the ``embedding`` used for outlier
scoring. Everything is plain Conv/BN/ReLU/Add/Resize so the ONNX graph is simple and ORT-friendly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - the conventional alias

from defectloop.trainer.config import ModelConfig

STRIDE = 4
# Prior probability of a defect centre in a cell: the heatmap bias starts at logit(0.01), as in
# CenterNet/RetinaNet, so the focal loss is not swamped by easy negatives in the first steps.
_HEATMAP_PRIOR = 0.01
# Sizes are regressed in log space internally (exp in the graph): defects span 5 to 200+ pixels.
_SIZE_INIT = 24.0


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _bias(conv: nn.Conv2d) -> Tensor:
    # The heads are built with bias=True; torch types the attribute as optional.
    if conv.bias is None:
        raise TypeError("detector head built without a bias")
    return conv.bias


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(x + y)


class Stage(nn.Sequential):
    """Strided downsampling conv followed by one residual block."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(_conv_bn(cin, cout, stride=2), ResidualBlock(cout))


class CenterNet(nn.Module):
    """Returns raw ``(heatmap_logits, size, offset, embedding)``; see :class:`ExportWrapper`."""

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        w, hw = cfg.width, cfg.head_width
        self.num_classes = num_classes
        # Stem: two cheap strided convs to stride 4 (one input channel, so the first is nearly free).
        self.stem = nn.Sequential(_conv_bn(1, w, stride=2), _conv_bn(w, w, stride=2))
        self.stage4 = ResidualBlock(w)
        self.stage8 = Stage(w, 2 * w)
        self.stage16 = Stage(2 * w, 4 * w)
        self.stage32 = Stage(4 * w, 4 * w)
        self.embedding_dim = 4 * w
        self.lateral = nn.ModuleList(nn.Conv2d(c, hw, 1) for c in (w, 2 * w, 4 * w, 4 * w))
        self.trunk = _conv_bn(hw, hw)
        self.heatmap = nn.Conv2d(hw, num_classes, 1)
        self.size = nn.Conv2d(hw, 2, 1)
        self.offset = nn.Conv2d(hw, 2, 1)
        self._init_heads()

    def _init_heads(self) -> None:
        nn.init.constant_(_bias(self.heatmap), -math.log((1 - _HEATMAP_PRIOR) / _HEATMAP_PRIOR))
        nn.init.normal_(self.size.weight, std=1e-3)
        nn.init.constant_(_bias(self.size), math.log(_SIZE_INIT))
        nn.init.normal_(self.offset.weight, std=1e-3)
        nn.init.constant_(_bias(self.offset), 0.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c4 = self.stage4(self.stem(x))
        c8 = self.stage8(c4)
        c16 = self.stage16(c8)
        c32 = self.stage32(c16)
        p = self.lateral[3](c32)
        for lateral, feat in zip(
            (self.lateral[2], self.lateral[1], self.lateral[0]), (c16, c8, c4), strict=True
        ):
            p = lateral(feat) + F.interpolate(p, scale_factor=2.0, mode="nearest")
        t = self.trunk(p)  # one shared 3x3 at stride 4: the costliest layer, so only one
        # Size: exp of a clamped log keeps it positive and finite in the first unstable steps.
        size = torch.exp(self.size(t).clamp(-2.0, 7.0))
        offset = torch.sigmoid(self.offset(t))  # the contract: offset in [0, 1) cells
        embedding = c32.mean(dim=(2, 3))
        return self.heatmap(t), size, offset, embedding


class ExportWrapper(nn.Module):
    """What goes to ONNX: the heatmap with its sigmoid applied in the graph (the contract)."""

    def __init__(self, net: CenterNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        logits, size, offset, embedding = self.net(image)
        return torch.sigmoid(logits), size, offset, embedding


def build_model(cfg: ModelConfig, num_classes: int) -> CenterNet:
    return CenterNet(cfg, num_classes)
