"""Model registry with one transfer API for every architecture.

``create_model(name, num_classes)`` returns a :class:`TransferModel`: ``features(x)`` gives pooled
features, ``head`` is the classifier, ``reset_head(n)`` replaces it, ``freeze_backbone()`` freezes the rest.
Weights load only from local files (``load_weights``); nothing is downloaded.
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
        from covidnetx.models.layers import GrayConv2d
        first = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
        self.gray_stem = isinstance(first, GrayConv2d)

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
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
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
        total[0] += 2 * m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
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


def load_weights(model: TransferModel, path: str, drop_head: bool = True) -> dict:
    """Load a covidnetx checkpoint or a plain state dict from a local file. With ``drop_head`` the
    classifier is not loaded (transfer to a new label space). Returns the checkpoint's metadata."""
    from covidnetx.record import load_checkpoint
    ck = load_checkpoint(path, "weights file")
    if not isinstance(ck, dict):
        raise UserError(f"weights file {path!r} holds a {type(ck).__name__}, not a state dict")
    state = ck.get("model", ck) if isinstance(ck, dict) else ck
    if drop_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    else:
        w = state.get("head.weight")
        if w is not None and w.shape != model.head.weight.shape:
            raise UserError(f"{path}: checkpoint head has {w.shape[0]} classes, the task has "
                            f"{model.head.weight.shape[0]}; transfer with model.drop_head=true")
    missing, unexpected = load_state(model, state, path, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise UserError(f"{path}: weights do not fit model {model.name!r} "
                        f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})")
    return ck if isinstance(ck, dict) else {}


from covidnetx.models import resnet as _resnet  # noqa: E402,F401  (registers models)
from covidnetx.models import bit as _bit  # noqa: E402,F401
