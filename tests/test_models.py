"""Model registry: gray input straight into the stem equals the RGB-repeated input, in value and gradient."""
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
