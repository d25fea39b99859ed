"""Architectures from timm (the version pinned in setup.py), built without weights (nothing is downloaded).

* ``timm:NAME`` is any timm architecture by its timm name (``timm:vit_tiny_patch16_224``,
  ``timm:convnext_atto``, ``timm:resnetv2_50x1_bit``), built headless (``num_classes=0``: pooled
  features), vision transformers with ``dynamic_img_size`` so they take any image size.
* covidnetx's own names for models that timm provides: BiT ResNetV2 (``bit_r50x1`` ... ``bit_r152x4``:
  pre-activation bottlenecks, GroupNorm(32), weight-standardised convolutions) and the torchvision-layout
  ResNets (``resnet18`` ... ``resnet152``; timm's state-dict keys are torchvision's, so torchvision's
  weight files load as they are). Their stems take gray input directly where the stem is a plain
  convolution (``GrayConv2d``)."""
from __future__ import annotations

import functools

from torch import nn
from torch.nn import functional as F

from covidnetx.models import register
from covidnetx.models.layers import GrayConv2d
from covidnetx.utils import UserError

PREFIX = "timm:"
ALIASES = {"bit_r50x1": "resnetv2_50x1_bit", "bit_r50x3": "resnetv2_50x3_bit", "bit_r101x1": "resnetv2_101x1_bit",
           "bit_r101x3": "resnetv2_101x3_bit", "bit_r152x2": "resnetv2_152x2_bit", "bit_r152x4": "resnetv2_152x4_bit",
           **{n: n for n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")}}


@functools.lru_cache(maxsize=None)
def _gray_std_conv():
    from timm.layers import StdConv2d  # lazy: heavy, timm, only for timm models

    class GrayStdConv2d(StdConv2d):
        """timm's weight-standardised convolution (BiT's stem) taking gray input directly: standardise, then
        sum over the 3 input channels (as GrayConv2d); other input goes through timm's own forward."""
        takes_gray = True

        def forward(self, x):
            if x.shape[1] != 1 or self.in_channels != 3 or self.groups != 1:
                return super().forward(x)
            w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                             momentum=0.0, eps=self.eps).reshape_as(self.weight)
            return F.conv2d(x, w.sum(1, keepdim=True), self.bias, self.stride, self.padding, self.dilation, self.groups)
    return GrayStdConv2d


def timm_backbone(name: str) -> tuple:
    """(headless timm model, feature width) for a timm architecture name."""
    import timm  # lazy: heavy, timm, only for timm models
    if name not in timm.list_models():
        near = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise UserError(f"unknown timm model {name!r}" + (f"; similar: {', '.join(near)}" if near else "")
                        + " (python -c 'import timm; print(timm.list_models())' lists them)")
    try:
        m = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
    except TypeError:               # not a transformer: it takes any image size anyway
        m = timm.create_model(name, pretrained=False, num_classes=0)
    stem = getattr(m, "conv1", None)
    if type(stem) is nn.Conv2d and stem.in_channels == 3:
        m.conv1 = GrayConv2d.like(stem)        # same parameters and keys; gray input without the 3x repeat
    conv = getattr(getattr(m, "stem", None), "conv", None)
    from timm.layers import StdConv2d  # lazy: heavy, timm, only for timm models
    if type(conv) is StdConv2d and conv.in_channels == 3:
        conv.__class__ = _gray_std_conv()      # the same module (parameters, keys), a gray-aware forward
    return m, m.num_features


def classifier_keys(backbone: nn.Module) -> tuple:
    """State-dict prefixes of the classifier a timm architecture has when built with a head (a weight file
    of it carries them; the transfer model has its own head instead)."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    c = cfg.get("classifier")
    return tuple(c) if isinstance(c, (list, tuple)) else ((c,) if c else ())


for _name, _timm in ALIASES.items():
    register(_name)(lambda t=_timm: timm_backbone(t))
