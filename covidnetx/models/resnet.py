"""The CPU size axis: ResNets of widths 4-64 with a 3x3 stem for 32-128 px inputs (timm's ResNets fix the
stage widths at 64-512 and use a 7x7 stride-2 stem, so they cannot express it)."""
from __future__ import annotations

import torch
from torch import nn

from covidnetx.models import register
from covidnetx.models.layers import GrayConv2d


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.short is None else self.short(x)))


class SmallResNet(nn.Module):
    """4 stages of BasicBlocks with widths w, 2w, 4w, 8w; a 3x3 stem (for 32-128 px inputs)."""

    def __init__(self, width: int, depths=(1, 1, 1, 1)):
        super().__init__()
        self.stem = nn.Sequential(GrayConv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, d in enumerate(depths):
            cout = width * 2 ** i
            for j in range(d):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)


# the CPU size axis: ~20k ... ~11M parameters (> 500x); w4 ... w23 (one block per stage) are five widths
# evenly spaced in log(params) over 1.5 decades (20k, 44k, 146k, 308k, 635k), each affordable on a CPU;
# w3 ... w12 (11k, 20k, 44k, 77k, 173k: 1.2 decades) the cheaper axis of the real-data study
SMALL = {"resnet_w3": (3, (1, 1, 1, 1)), "resnet_w12": (12, (1, 1, 1, 1)), "resnet_w4": (4, (1, 1, 1, 1)), "resnet_w6": (6, (1, 1, 1, 1)), "resnet_w8": (8, (1, 1, 1, 1)),
         "resnet_w11": (11, (1, 1, 1, 1)), "resnet_w16": (16, (1, 1, 1, 1)), "resnet_w23": (23, (1, 1, 1, 1)),
         "resnet_w32": (32, (2, 2, 2, 2)), "resnet_w64": (64, (2, 2, 2, 2))}
for _name, (_w, _d) in SMALL.items():
    register(_name)(lambda w=_w, d=_d: (lambda m: (m, m.out_dim))(SmallResNet(w, d)))
