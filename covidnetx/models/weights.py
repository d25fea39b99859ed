"""``model.init_from``: weight files in the formats researchers have, read without running code.

* covidnetx checkpoints (``torch.load(weights_only=True)``; keys ``backbone.*`` / ``head.*``);
* torchvision and timm state dicts: ``.pth``/``.pt``/``.bin`` (``weights_only``; a timm training
  checkpoint's ``state_dict`` inside) and ``.safetensors``;
* the official BiT ``.npz`` files (``BiT-S-R50x1.npz`` ...; read by numpy with ``allow_pickle=False``),
  whose TensorFlow names (``resnet/block1/unit01/a/standardized_conv2d/kernel``, HWIO kernels) are mapped
  onto timm's ResNetV2.

Nothing is downloaded. Every file yields a report: the tensors loaded, the model's tensors left at their
initialisation (the new head) and the file's tensors not used (the source's classifier, anything else);
a tensor of the wrong shape, or a backbone tensor the file lacks, is one error naming it.
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import torch

from covidnetx.models.timm_models import classifier_keys
from covidnetx.rundir import is_checkpoint, load_checkpoint
from covidnetx.utils import UserError, require_file


@dataclasses.dataclass
class WeightFile:
    path: str
    format: str                 # covidnetx checkpoint | state dict | safetensors | BiT npz
    tensors: dict               # model key (backbone.* / head.*) -> tensor
    names: dict                 # model key -> the tensor's name in the file
    unused: list                # names in the file that map to no model key (the source's classifier, ...)
    meta: dict                  # a covidnetx checkpoint's metadata, else {}


def _bit_key(name: str):
    """timm ResNetV2 key of an official BiT .npz tensor name, or None (the classifier, unknown names)."""
    n = name.removeprefix("resnet/")
    if n == "root_block/standardized_conv2d/kernel":
        return "stem.conv.weight"
    g = re.fullmatch(r"group_norm/(gamma|beta)", n)
    if g:
        return "norm." + ("weight" if g.group(1) == "gamma" else "bias")
    b = re.fullmatch(r"block(\d+)/unit(\d+)/(a|b|c)/(?:(proj)/)?(standardized_conv2d/kernel|group_norm/gamma|group_norm/beta)", n)
    if not b:
        return None
    stage, unit, part, proj, what = int(b.group(1)) - 1, int(b.group(2)) - 1, b.group(3), b.group(4), b.group(5)
    where = f"stages.{stage}.blocks.{unit}."
    if proj:
        return where + "downsample.conv.weight" if what.endswith("kernel") and part == "a" else None
    i = "abc".index(part) + 1
    return where + (f"conv{i}.weight" if what.endswith("kernel") else f"norm{i}." + ("weight" if what.endswith("gamma") else "bias"))


def _read_npz(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files}
    except ValueError as e:        # object arrays (pickles) are refused here, before anything is built
        raise UserError(f"weights file {path!r}: not a plain array archive ({e})") from None
    except Exception as e:  # noqa: BLE001 - any failure to read is the same user-facing error
        raise UserError(f"weights file {path!r} is not readable as .npz ({type(e).__name__}: {e})") from None


def _read_safetensors(path: str) -> dict:
    from safetensors.torch import load_file  # lazy: optional, .safetensors files only
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"weights file {path!r} is not readable as safetensors ({type(e).__name__}: {e})") from None


def read(path: str) -> tuple:
    """(format, {name: tensor} as stored, covidnetx metadata) of a weight file."""
    require_file(path, "weights file")
    low = path.lower()
    if low.endswith(".npz"):
        return "BiT npz", _read_npz(path), {}
    if low.endswith(".safetensors"):
        return "safetensors", _read_safetensors(path), {}
    ck = load_checkpoint(path, "weights file")
    if is_checkpoint(ck):
        return "covidnetx checkpoint", ck["model"], dict(ck.get("meta") or {})
    if isinstance(ck, dict) and isinstance(ck.get("state_dict"), dict):       # a timm/Lightning training checkpoint
        ck = ck["state_dict"]
    if not isinstance(ck, dict) or not ck or not all(isinstance(v, torch.Tensor) for v in ck.values()):
        raise UserError(f"weights file {path!r} holds no state dict of tensors "
                        f"({type(ck).__name__}{' of other objects' if isinstance(ck, dict) and ck else ''})")
    return "state dict", ck, {}


def load_file(path: str, model) -> WeightFile:
    """The file's tensors under the transfer model's keys."""
    fmt, stored, meta = read(path)
    tensors, names, unused = {}, {}, []
    if fmt == "BiT npz":
        for name, t in stored.items():
            key = _bit_key(name)
            if key is None:
                unused.append(name)
                continue
            tensors["backbone." + key] = t.permute(3, 2, 0, 1).contiguous() if t.ndim == 4 else t   # HWIO -> OIHW
            names["backbone." + key] = name
    else:
        own = any(k.startswith("backbone.") for k in stored)          # a covidnetx model's own keys
        heads = classifier_keys(model.backbone)
        for name, t in stored.items():
            k = name[len("module."):] if name.startswith("module.") else name        # DistributedDataParallel
            if not own:
                if any(k == h or k.startswith(h + ".") for h in heads):
                    unused.append(name)          # the source model's classifier
                    continue
                k = "backbone." + k
            tensors[k], names[k] = t, name
    return WeightFile(path, fmt, tensors, names, unused, meta)


def apply(model, wf: WeightFile, drop_head: bool = True) -> str:
    """Copy ``wf`` into ``model``; the report line. Errors name the tensor."""
    own = model.state_dict()
    loaded, unused = [], list(wf.unused)
    for k, t in wf.tensors.items():
        if k not in own or (drop_head and k.startswith("head.")):
            unused.append(wf.names[k])
            continue
        if tuple(t.shape) != tuple(own[k].shape):
            if k.startswith("head."):
                raise UserError(f"{wf.path}: checkpoint head has {t.shape[0]} classes, the task has "
                                f"{own[k].shape[0]}; transfer with model.drop_head=true")
            raise UserError(f"{wf.path}: weights do not fit model {model.name!r}: tensor {wf.names[k]!r} has shape "
                            f"{tuple(t.shape)} in the file, the model's {k} has {tuple(own[k].shape)}")
        loaded.append(k)
    missing = [k for k in own if k not in loaded]
    backbone_missing = [k for k in missing if not k.startswith("head.")]
    if backbone_missing:
        raise UserError(f"{wf.path}: weights do not fit model {model.name!r} ({wf.format}): "
                        f"{len(backbone_missing)} of its tensors are not in the file ({', '.join(backbone_missing[:4])}"
                        f"{', ...' if len(backbone_missing) > 4 else ''})"
                        + (f"; the file has {len(unused)} others ({', '.join(unused[:3])}...)" if unused else ""))
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(wf.tensors[k])
    text = f"{len(loaded)} tensors loaded"
    text += f"; left at init: {', '.join(missing)}" if missing else "; nothing left at init"
    text += f"; in the file, not used: {', '.join(unused[:6])}{', ...' if len(unused) > 6 else ''}" if unused else ""
    return f"{wf.path} ({wf.format}): {text}"


def load_weights(model, path: str, drop_head: bool = True) -> dict:
    """Initialise ``model`` from a local weight file (see the module). Returns {"meta": covidnetx
    checkpoint metadata or {}, "format": ..., "report": one line}."""
    wf = load_file(path, model)
    report = apply(model, wf, drop_head)
    return {"meta": wf.meta, "format": wf.format, "report": report}
