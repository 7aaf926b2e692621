"""A small DenseNet that embeds a slice so that feature distance follows slice distance.

The coverless transform (paper: Tan et al. 2020, section 4.3) orders the images of a
series by DenseNet feature similarity before building its hash table. The structure is
the paper's: 4 dense blocks, 3 transition layers, no classifier; the features are the
globally pooled output of the last block. It is kept small (growth 8, 64x64 input) so it
trains on a CPU in minutes and runs in about a millisecond per slice.
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_SIZE = 64
WEIGHTS_NAME = "slice_densenet.pt"


class _DenseLayer(nn.Module):
    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


def _transition(channels: int) -> nn.Module:
    return nn.Sequential(
        nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels // 2, 1, bias=False), nn.AvgPool2d(2),
    )


class SliceDenseNet(nn.Module):
    """1 x 64 x 64 grey slice -> feature vector (``self.features`` values)."""

    def __init__(self, growth: int = 8, layers: tuple[int, int, int, int] = (3, 3, 3, 3), stem: int = 16) -> None:
        super().__init__()
        parts: list[nn.Module] = [nn.Conv2d(1, stem, 3, stride=2, padding=1, bias=False)]
        channels = stem
        for block, count in enumerate(layers):
            for _ in range(count):
                parts.append(_DenseLayer(channels, growth))
                channels += growth
            if block < len(layers) - 1:
                parts.append(_transition(channels))
                channels //= 2
        parts += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*parts)
        self.features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
