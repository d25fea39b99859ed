"""Layers shared by the model families."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class GrayConv2d(nn.Conv2d):
    """A stem convolution made for 3 input channels that also takes 1-channel (gray) input directly.

    For gray images repeated to 3 channels, conv(x, w) over the 3 copies equals conv(x, w summed over its
    input channels) over one: the same output and the same gradient for ``w``, with a third of the stem's
    multiply-adds and of the input bytes. Chest X-rays arrive as 1 channel and stay so up to this layer."""
    takes_gray = True

    def conv_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv_weight()
        if x.shape[1] == 1 and w.shape[1] == 3 and self.groups == 1:
            w = w.sum(1, keepdim=True)
        if self.padding_mode != "zeros":
            return F.conv2d(F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode), w, self.bias,
                            self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    @classmethod
    def like(cls, conv: nn.Conv2d) -> "GrayConv2d":
        """A GrayConv2d holding ``conv``'s parameters (same state-dict keys and values)."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode)
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new
