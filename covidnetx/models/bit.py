"""BiT ResNetV2 (Kolesnikov et al., "Big Transfer"): pre-activation bottlenecks with GroupNorm(32) and
weight-standardised convolutions; R50x1 ... R152x4 (depths 50/101/152, width factors 1-4)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from covidnetx.models import register
from covidnetx.models.layers import GrayConv2d


class StdConv2d(GrayConv2d):
    """Convolution with weight standardisation (per output channel: zero mean, unit variance); the root
    one takes gray input as GrayConv2d does (standardise, then sum over the 3 input channels)."""

    def conv_weight(self):
        w = self.weight
        m = w.mean(dim=(1, 2, 3), keepdim=True)
        v = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (w - m) / torch.sqrt(v + 1e-10)


def _gn(c):
    return nn.GroupNorm(32, c, eps=1e-5)


class PreActBottleneck(nn.Module):
    def __init__(self, cin, cout, cmid, stride):
        super().__init__()
        self.gn1, self.conv1 = _gn(cin), StdConv2d(cin, cmid, 1, bias=False)
        self.gn2, self.conv2 = _gn(cmid), StdConv2d(cmid, cmid, 3, stride, 1, bias=False)
        self.gn3, self.conv3 = _gn(cmid), StdConv2d(cmid, cout, 1, bias=False)
        self.down = StdConv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        out = F.relu(self.gn1(x))
        residual = self.down(out) if self.down is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.gn2(out)))
        out = self.conv3(F.relu(self.gn3(out)))
        return out + residual


class ResNetV2(nn.Module):
    def __init__(self, depths, wf):
        super().__init__()
        self.root = nn.Sequential(StdConv2d(3, 64 * wf, 7, 2, 3, bias=False), nn.ConstantPad2d(1, 0),
                                  nn.MaxPool2d(3, 2))
        blocks, cin = [], 64 * wf
        for i, d in enumerate(depths):
            cmid = 64 * wf * 2 ** i
            cout = cmid * 4
            for j in range(d):
                blocks.append(PreActBottleneck(cin, cout, cmid, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.body = nn.Sequential(*blocks)
        self.norm = _gn(cin)
        self.out_dim = cin

    def forward(self, x):
        x = F.relu(self.norm(self.body(self.root(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


BIT = {"bit_r50x1": ((3, 4, 6, 3), 1), "bit_r50x3": ((3, 4, 6, 3), 3), "bit_r101x1": ((3, 4, 23, 3), 1),
       "bit_r101x3": ((3, 4, 23, 3), 3), "bit_r152x2": ((3, 8, 36, 3), 2), "bit_r152x4": ((3, 8, 36, 3), 4)}
for _name, (_d, _wf) in BIT.items():
    register(_name)(lambda d=_d, wf=_wf: (lambda m: (m, m.out_dim))(ResNetV2(d, wf)))
