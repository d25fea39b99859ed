"""Model registry: gray input straight into the stem equals the RGB-repeated input, in value and gradient."""
import numpy as np
import pytest
import torch

from covidnetx.models import create_model
from covidnetx.models.layers import GrayConv2d


@pytest.mark.parametrize("name, size", [("resnet_w4", 16), ("resnet18", 32), ("bit_r50x1", 32)])
def test_gray_input_equals_the_gray_image_repeated_to_rgb(name, size):
    torch.manual_seed(0)
    model = create_model(name, 3).double()
    assert model.gray_stem
    torch.nn.init.normal_(model.head.weight)          # the zero-initialised head would hide differences
    model.eval()
    x = torch.randn(2, 1, size, size, dtype=torch.float64)
    out1 = model(x)
    g1 = torch.autograd.grad(out1.square().sum(), [p for p in model.parameters()])
    out3 = model(x.expand(-1, 3, -1, -1))
    g3 = torch.autograd.grad(out3.square().sum(), [p for p in model.parameters()])
    assert out1.abs().max() > 0.01
    assert torch.allclose(out1, out3, rtol=1e-9, atol=1e-9)
    for a, b in zip(g1, g3):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)


def test_gray_stem_keeps_the_parameter_names_and_count():
    import torchvision
    ref = torchvision.models.resnet18(weights=None)
    ours = create_model("resnet18", 3)
    assert isinstance(ours.backbone.conv1, GrayConv2d)
    keys = {k for k in ref.state_dict() if not k.startswith("fc.")}
    assert {k[len("backbone."):] for k in ours.state_dict() if k.startswith("backbone.")} == keys
    # a torchvision checkpoint loads as it is
    ours.backbone.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
    assert torch.equal(ours.backbone.conv1.weight, ref.conv1.weight)


# ------------------------------------------------------------------------------------------------------------
# models from timm, and init_from in every format: each file, written here, loads and gives the outputs of the
# model it was written from; files that would run code are refused

def _bit_npz_layout(depths=(3, 4, 6, 3), wf=1, classes=10, seed=0) -> dict:
    """Random weights under the official BiT .npz names and shapes (TensorFlow HWIO kernels)."""
    rng = np.random.default_rng(seed)

    def conv(kh, cin, cout):
        return (rng.standard_normal((kh, kh, cin, cout)) * 0.1).astype(np.float32)

    def gn(c, p):
        return {f"{p}/group_norm/gamma": (1 + 0.1 * rng.standard_normal(c)).astype(np.float32),
                f"{p}/group_norm/beta": (0.1 * rng.standard_normal(c)).astype(np.float32)}
    w = {"resnet/root_block/standardized_conv2d/kernel": conv(7, 3, 64 * wf)}
    cin = 64 * wf
    for i, d in enumerate(depths, 1):
        cmid = 64 * wf * 2 ** (i - 1)
        for j in range(1, d + 1):
            p = f"resnet/block{i}/unit{j:02d}"
            w.update(gn(cin, f"{p}/a"))
            w[f"{p}/a/standardized_conv2d/kernel"] = conv(1, cin, cmid)
            if j == 1:
                w[f"{p}/a/proj/standardized_conv2d/kernel"] = conv(1, cin, 4 * cmid)
            w.update(gn(cmid, f"{p}/b"))
            w[f"{p}/b/standardized_conv2d/kernel"] = conv(3, cmid, cmid)
            w.update(gn(cmid, f"{p}/c"))
            w[f"{p}/c/standardized_conv2d/kernel"] = conv(1, cmid, 4 * cmid)
            cin = 4 * cmid
    w.update(gn(cin, "resnet"))
    w["resnet/head/conv2d/kernel"] = conv(1, cin, classes)
    w["resnet/head/conv2d/bias"] = np.zeros(classes, np.float32)
    return w


def _bit_reference_features(w: dict, x: torch.Tensor, depths=(3, 4, 6, 3)) -> torch.Tensor:
    """BiT ResNetV2 as the paper's code defines it, straight from the .npz arrays: weight standardisation
    (eps 1e-10), pre-activation bottlenecks, stride on the 3x3 of each stage's first unit, GroupNorm(32)."""
    F = torch.nn.functional

    def k(name):
        return torch.from_numpy(w[name]).double().permute(3, 2, 0, 1)

    def conv(x, name, stride=1, pad=0):
        t = k(name)
        m, v = t.mean((1, 2, 3), keepdim=True), t.var((1, 2, 3), keepdim=True, unbiased=False)
        return F.conv2d(x, (t - m) / torch.sqrt(v + 1e-10), None, stride, pad)

    def gn(x, p):
        return F.group_norm(x, 32, torch.from_numpy(w[f"{p}/group_norm/gamma"]).double(),
                            torch.from_numpy(w[f"{p}/group_norm/beta"]).double(), 1e-5)
    x = conv(x, "resnet/root_block/standardized_conv2d/kernel", 2, 3)
    x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)
    for i, d in enumerate(depths, 1):
        for j in range(1, d + 1):
            p, s = f"resnet/block{i}/unit{j:02d}", (2 if (j == 1 and i > 1) else 1)
            out = F.relu(gn(x, f"{p}/a"))
            res = conv(out, f"{p}/a/proj/standardized_conv2d/kernel", s) if j == 1 else x
            out = conv(out, f"{p}/a/standardized_conv2d/kernel")
            out = conv(F.relu(gn(out, f"{p}/b")), f"{p}/b/standardized_conv2d/kernel", s, 1)
            out = conv(F.relu(gn(out, f"{p}/c")), f"{p}/c/standardized_conv2d/kernel")
            x = out + res
    return F.relu(gn(x, "resnet")).mean((2, 3))


def test_bit_npz_in_the_published_layout_loads_into_timms_resnetv2_and_matches_the_reference(tmp_path, capsys):
    from covidnetx.models import count_params, load_weights
    w = _bit_npz_layout()
    path = tmp_path / "BiT-M-R50x1.npz"
    np.savez(path, **w)
    model = create_model("bit_r50x1", 3)
    # the same parameter count as the published architecture (its arrays less the classifier)
    assert count_params(model.backbone) == sum(a.size for n, a in w.items() if "/head/" not in n) == 23_500_352
    got = load_weights(model, str(path), drop_head=True)
    assert got["format"] == "BiT npz" and got["meta"] == {}
    n_backbone = len([n for n in w if "/head/" not in n])
    assert got["report"].startswith(f"{path} (BiT npz): {n_backbone} tensors loaded; left at init: head.weight, head.bias")
    assert "not used: resnet/head/conv2d/kernel, resnet/head/conv2d/bias" in got["report"]
    model = model.double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref = _bit_reference_features(w, x)
        ours = model.features(x)
        gray = model.features(x[:, :1])
        ref_gray = _bit_reference_features(w, x[:, :1].expand(-1, 3, -1, -1))
    assert ref.abs().max() > 0.01
    # timm standardises with eps 1e-8, BiT's code with 1e-10: close as they are, and equal with BiT's eps
    assert (ours - ref).abs().max() < 1e-4 and (gray - ref_gray).abs().max() < 1e-4
    for m in model.modules():
        if hasattr(m, "eps") and isinstance(m, torch.nn.Conv2d):
            m.eps = 1e-10
    with torch.no_grad():
        ours, gray = model.features(x), model.features(x[:, :1])
    assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-10), (ours - ref).abs().max()
    assert torch.allclose(gray, ref_gray, rtol=1e-9, atol=1e-10), (gray - ref_gray).abs().max()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_weight_files_load_into_the_timm_resnets_with_the_same_outputs(tmp_path, name):
    import torchvision
    from covidnetx.models import count_params, load_weights
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)(weights=None).eval()
    for m in ref.modules():            # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    ours = create_model(name, 3)
    assert count_params(ours.backbone) == count_params(ref) - ref.fc.weight.numel() - ref.fc.bias.numel()
    got = load_weights(ours, str(path))
    assert got["format"] == "state dict" and "not used: fc.weight, fc.bias" in got["report"]
    ref.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours.eval().features(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["convnext_atto", "vit_tiny_patch16_224"])
def test_timm_models_and_safetensors_files(tmp_path, name):
    import timm
    from safetensors.torch import save_file
    from covidnetx.models import load_weights
    torch.manual_seed(1)
    src = timm.create_model(name, pretrained=False, num_classes=7, **({"dynamic_img_size": True} if "vit" in name else {}))
    src = src.eval()
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = create_model(f"timm:{name}", 3)
    got = load_weights(model, str(path))
    assert got["format"] == "safetensors" and "left at init: head.weight, head.bias" in got["report"]
    assert "not used: head" in got["report"]            # the source's 7-class classifier
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval().features(x), src.forward_head(src.forward_features(x), pre_logits=True),
                              rtol=1e-5, atol=1e-5)
    model.freeze_backbone()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    model.reset_head(5)
    assert model(x).shape == (2, 5)


def test_weight_files_that_do_not_fit_or_would_run_code_are_refused(tmp_path):
    from covidnetx.models import load_weights
    from covidnetx.utils import UserError
    model = create_model("resnet18", 3)
    sd = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    bad = dict(sd, **{"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(UserError, match=r"tensor 'layer1.0.conv1.weight' has shape \(64, 64, 1, 1\) in the file, the "
                                        r"model's backbone.layer1.0.conv1.weight has \(64, 64, 3, 3\)"):
        load_weights(model, str(tmp_path / "shape.pth"))
    torch.save({k: v for k, v in sd.items() if not k.startswith("layer4.")}, tmp_path / "part.pth")
    with pytest.raises(UserError, match=r"of its tensors are not in the file \(backbone.layer4.0.conv1.weight"):
        load_weights(model, str(tmp_path / "part.pth"))
    # an .npz whose arrays are pickled objects, a .pth that calls a function, garbage as safetensors
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(UserError, match="obj.npz'.*not a plain array archive"):
        load_weights(model, str(tmp_path / "obj.npz"))

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))
    torch.save({"conv1.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="evil.pth' is not readable as a weights-only checkpoint"):
        load_weights(model, str(tmp_path / "evil.pth"))
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(UserError, match="junk.safetensors' is not readable as safetensors"):
        load_weights(model, str(tmp_path / "junk.safetensors"))
    with pytest.raises(UserError, match=r"unknown timm model 'resnet_nope'"):
        create_model("timm:resnet_nope", 3)


def test_a_covidnetx_checkpoint_loads_with_or_without_its_head(tmp_path):
    from covidnetx.models import load_weights
    from covidnetx.rundir import checkpoint, save_checkpoint
    torch.manual_seed(2)
    src = create_model("resnet_w8", 3)
    torch.nn.init.normal_(src.head.weight)
    path = tmp_path / "last.ckpt"
    save_checkpoint(checkpoint(model=src.state_dict(), class_names=["a", "b", "c"], config="", meta={"seed": 3},
                               step=5), path)
    x = torch.randn(2, 1, 32, 32)
    kept = create_model("resnet_w8", 3)
    got = load_weights(kept, str(path), drop_head=False)
    assert got["format"] == "covidnetx checkpoint" and got["meta"] == {"seed": 3}
    assert "nothing left at init" in got["report"]
    with torch.no_grad():
        assert torch.equal(kept.eval()(x), src.eval()(x))
    dropped = create_model("resnet_w8", 3)
    got = load_weights(dropped, str(path))
    assert "left at init: head.weight, head.bias" in got["report"] and "not used: head.weight, head.bias" in got["report"]
    with torch.no_grad():
        assert torch.equal(dropped.eval().features(x), src.features(x)) and not dropped.head.weight.any()
