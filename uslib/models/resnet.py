"""ResNet-18 encoder for USCL (torchvision architecture, random init, classifier dropped).

Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``) minus ``fc``.
USCL's ``best_model.pth`` stores the same modules as ``features.<i>`` in torchvision child order
(0 conv1, 1 bn1, 2 relu, 3 maxpool, 4-7 layer1-4, 8 avgpool); ``checkpoints.load_official(...,
kind="uscl")`` renames them. Ref: USCL notes §B.3, §B.10; partial fine-tuning §B.8.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18 as tv_resnet18

from uslib.models import BACKBONES


class ResNetEncoder(nn.Module):
    """torchvision ResNet-18 trunk with the uslib backbone contract.

    ``forward`` -> (B, 512) global-average-pooled feature (USCL's representation h);
    ``forward_features`` -> the four stage outputs (64/128/256/512 channels at strides 4-32);
    ``last_block()`` -> ``layer4[-1]``, the block USCL's POCUS protocol fine-tunes
    (``features.7.1``).

    Args:
        in_chans: input channels (1 = grey; USCL fed grey frames replicated to RGB, which the
            checkpoint loader reproduces exactly by summing the RGB filters).
    """

    def __init__(self, in_chans: int = 1) -> None:
        super().__init__()
        net = tv_resnet18(weights=None)  # never downloads
        if in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.in_chans = in_chans
        self.num_features = 512
        self.feature_info = [
            {"num_chs": c, "reduction": r} for c, r in zip((64, 128, 256, 512), (4, 8, 16, 32))
        ]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> stage maps (B, 64|128|256|512, H/4|8|16|32, W/4|8|16|32)."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 512) pooled representation."""
        return self.forward_features(x)[-1].mean(dim=(2, 3))

    def last_block(self) -> nn.Module:
        """``layer4[-1]``: the last residual block (USCL's "last three layers" with the new fc)."""
        return self.layer4[-1]


@BACKBONES.register()
def resnet18(**kwargs: Any) -> ResNetEncoder:
    """USCL ResNet-18 (11.2 M parameters, 512-d pooled feature). Ref: USCL notes §B.3."""
    return ResNetEncoder(**kwargs)


@BACKBONES.register()
def resnet18_smoke(**kwargs: Any) -> ResNetEncoder:
    """Same architecture as ``resnet18`` (fast enough at 32-64 px on CPU); for tests."""
    return ResNetEncoder(**kwargs)
