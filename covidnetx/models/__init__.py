"""Model registry with one transfer API for every architecture.

``create_model(name, num_classes)`` returns a :class:`TransferModel`: ``features(x)`` gives pooled
features, ``head`` is the classifier, ``reset_head(n)`` replaces it, ``freeze_backbone()`` freezes the rest.
Names: the CPU width axis ``resnet_w4`` ... ``resnet_w64`` (resnet.py), BiT ``bit_r50x1`` ... and
``resnet18`` ... ``resnet152`` (from timm), and ``timm:NAME`` for any timm architecture (timm_models.py).
Weights load only from local files (``load_weights``, weights.py); nothing is downloaded.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from covidnetx.utils import UserError

_REGISTRY: dict[str, Callable[[], tuple[nn.Module, int]]] = {}


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn
    return deco


def list_models() -> list:
    return sorted(_REGISTRY)


class TransferModel(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int, name: str = ""):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.feat_dim = feat_dim
        self.head = nn.Linear(feat_dim, num_classes)
        nn.init.zeros_(self.head.weight)      # BiT: zero-initialised head
        nn.init.zeros_(self.head.bias)
        self.frozen = False
        first = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
        self.gray_stem = bool(getattr(first, "takes_gray", False))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features; 1-channel (gray) input goes straight into a gray-capable stem, else it is
        repeated to 3 channels."""
        if x.shape[1] == 1 and not self.gray_stem:
            x = x.expand(-1, 3, -1, -1)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def reset_head(self, num_classes: int) -> None:
        self.head = nn.Linear(self.feat_dim, num_classes).to(next(self.parameters()).device)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def freeze_backbone(self) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.frozen = True

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:           # a frozen backbone keeps its normalisation statistics
            self.backbone.eval()
        return self


def create_model(name: str, num_classes: int) -> TransferModel:
    """A registered model, or any timm architecture as ``timm:NAME``."""
    if name.startswith("timm:"):
        backbone, dim = _timm.timm_backbone(name[len("timm:"):])     # registered below (timm itself is lazy)
    elif name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; registered: {', '.join(list_models())}, or timm:NAME for "
                        "any timm architecture")
    else:
        backbone, dim = _REGISTRY[name]()
    return TransferModel(backbone, dim, num_classes, name)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_sample(model: nn.Module, image_size: int, channels: int = 3) -> int:
    """Forward FLOPs (2 x multiply-adds of conv and linear layers) for one image."""
    total = [0]

    def conv_hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total[0] += 2 * k * out.numel() // out.shape[0]

    def lin_hook(m, inp, out):
        total[0] += 2 * m.in_features * m.out_features * (out.numel() // out.shape[0] // m.out_features)

    def attn_hook(m, inp, out):          # a transformer's attention: Q K^T and the weighted sum of V
        _, n, c = inp[0].shape
        total[0] += 2 * 2 * n * n * c

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
        elif isinstance(getattr(m, "qkv", None), nn.Linear) and hasattr(m, "num_heads"):
            hooks.append(m.register_forward_hook(attn_hook))
    was = model.training
    model.eval()
    with torch.no_grad():
        p = next(model.parameters())
        model(torch.zeros(1, channels, image_size, image_size, device=p.device, dtype=p.dtype))
    model.train(was)
    for h in hooks:
        h.remove()
    return int(total[0])


def load_state(model, state, path, strict: bool = True):
    """``model.load_state_dict`` whose failures (another architecture: missing keys, other shapes) are a
    UserError naming the file and the model."""
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds no state dict of weights")
    try:
        return model.load_state_dict(state, strict=strict)
    except (RuntimeError, KeyError, TypeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3] or lines[:1])[:300]
        raise UserError(f"{path}: weights do not fit model {getattr(model, 'name', type(model).__name__)!r} "
                        f"({detail})") from None


from covidnetx.models import resnet as _resnet  # noqa: E402,F401  (registers models)
from covidnetx.models import timm_models as _timm  # noqa: E402
from covidnetx.models.weights import load_weights  # noqa: E402,F401
