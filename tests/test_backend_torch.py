"""Quirks of the torch backend only (the shared contract is tests/test_backend_contract.py):
parameter counts against the zoo twins, torch-looking state dicts, explicit padding modules."""

import numpy as np
import pytest

import lightnets
from lightnets import reference
from lightnets import weights as W
from lightnets.parity.cases import make_input
from lightnets.parity.tolerances import OP_REL, rel_error

torch = pytest.importorskip("torch")
tb = pytest.importorskip("lightnets.backends.torch")
BE = tb.BACKEND


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_param_counts_match_spec_and_zoo_twins():
    torchvision = pytest.importorskip("torchvision")
    timm = pytest.importorskip("timm")
    twins = {"mobilenet_v2_100": (torchvision.models.mobilenet_v2(weights=None), 3_504_872),
             "mobilenet_v1_100": (timm.create_model("mobilenetv1_100", pretrained=False), 4_231_976)}
    for model_id, (twin, expected) in twins.items():
        graph = lightnets.get_spec(model_id)
        model = BE.build(graph, "float32")
        assert _trainable(model) == graph.num_params() == _trainable(twin) == expected, model_id


def test_state_dict_keys_look_like_torch():
    model = lightnets.build("mobilenet_v2_035", backend="torch", num_classes=10, input_size=32)
    keys = set(model.state_dict())
    for k in ("stem.conv.weight", "stem.bn.weight", "stem.bn.bias", "stem.bn.running_mean",
              "stem.bn.running_var", "blocks.3.dw.conv.weight", "head.fc.weight", "head.fc.bias"):
        assert k in keys, k
    assert isinstance(model.get_submodule("blocks.3.dw.conv"), torch.nn.Conv2d)
    assert isinstance(model.get_submodule("stem.bn"), torch.nn.BatchNorm2d)
    assert not model.training


def test_asymmetric_pools_and_conv_use_explicit_padding():
    g = lightnets.GraphBuilder("pads", (2, 8, 8))
    g.add("conv", "conv2d", "input", out_channels=2, kernel=3, stride=2, pads=(0, 1, 0, 1))
    g.add("maxp", "max_pool2d", "input", kernel=3, stride=2, pads=(0, 1, 0, 1))
    g.add("avgp", "avg_pool2d", "input", kernel=3, stride=2, pads=(1, 2, 0, 1), count_include_pad=False)
    g.add("avgi", "avg_pool2d", "input", kernel=3, stride=2, pads=(1, 2, 0, 1), count_include_pad=True)
    graph = g.build()
    model = lightnets.build(graph, backend="torch", dtype="float64")
    assert isinstance(model.conv, tb.PadConv2d) and isinstance(model.maxp, tb.PadPool2d)
    x = -np.abs(make_input(graph, 2))  # all negative: zero padding in max pool would show
    ref = reference.run(graph, W.init_weights(graph, 0), x, return_all=True)
    got = BE.run(model, x, return_all=True)
    for name in ref:
        assert rel_error(got[name], ref[name]) <= OP_REL["float64"], name
