"""MobileNetV4 conv-small / conv-medium / conv-large (issue 23): parameter counts equal timm mobilenetv4_conv_*, MACs
torch's FlopCounter count of the twins at their training sizes, the structure the details that make a different net
(which depthwise of a UIB strides, the start depthwise without activation, FFN / ConvNeXt / IB / ExtraDW rows, the
fused IB, the 1280 head conv + BN on the pooled map, the fixed stem below width 1), include_top=False = timm's
num_classes=0 features; the zoo imports with BN statistics from data are tests/test_zoo_calibrated.py (every new
family), the timm features_only taps tests/test_features.py.

The quick profile builds the smallest twin of each variant (small_035, medium, large); LIGHTNETS_SLOW=1 every twin.
Zoo models are built locally with random weights (never downloaded).
"""

import numpy as np
import profiles
import pytest

import lightnets
from lightnets import reference, registry, zoo
from lightnets.archs import mobilenet_v4
from lightnets.numerics import rel_error

# Trainable parameters, measured on timm mobilenetv4_conv_small_035 / _050 / small / medium / large (docs/design.md §3)
PARAMS = {"mobilenet_v4_conv_small_035": 1_905_384, "mobilenet_v4_conv_small_050": 2_238_952,
          "mobilenet_v4_conv_small_100": 3_774_024, "mobilenet_v4_conv_medium_100": 9_715_512,
          "mobilenet_v4_conv_large_100": 32_590_864}
# multiply-accumulates in millions at the twins' training sizes (224 / 256 / 384 px): torch.utils.flop_counter
# FlopCounterMode on the timm twins / 2 gives exactly these; timm's model cards say 0.2 / 1.1 / 6.4 GMACs
MACS = {"mobilenet_v4_conv_small_035": (224, 47.72304), "mobilenet_v4_conv_small_050": (224, 64.741408),
        "mobilenet_v4_conv_small_100": (224, 186.005568), "mobilenet_v4_conv_medium_100": (256, 1080.244224),
        "mobilenet_v4_conv_large_100": (384, 6376.220672)}
TWINS = [("mobilenet_v4_conv_small_035", "timm", "mobilenetv4_conv_small_035"),
         ("mobilenet_v4_conv_small_050", "timm", "mobilenetv4_conv_small_050"),
         ("mobilenet_v4_conv_small_100", "timm", "mobilenetv4_conv_small"),
         ("mobilenet_v4_conv_medium_100", "timm", "mobilenetv4_conv_medium"),
         ("mobilenet_v4_conv_large_100", "timm", "mobilenetv4_conv_large")]
QUICK_TWINS = profiles.smallest_of_each_variant(TWINS, arch=lambda t: t[0])


def test_every_id_is_registered_counted_and_has_a_zoo_entry():
    assert lightnets.list_models("mobilenet_v4") == sorted(PARAMS)
    assert {(z, n) for _, z, n in TWINS} == {k for k in zoo.list_zoo()
                                             if registry.entry(zoo.ZOO[k].arch).family == "mobilenet_v4"}
    assert all(zoo.ZOO[(z, n)].arch == i for i, z, n in TWINS)
    if not profiles.SLOW:
        assert [t[0] for t in QUICK_TWINS] == ["mobilenet_v4_conv_small_035", "mobilenet_v4_conv_medium_100"]


@pytest.mark.parametrize("model_id", sorted(PARAMS))
def test_params_and_macs(model_id):
    assert lightnets.get_spec(model_id).num_params() == PARAMS[model_id]
    size, macs = MACS[model_id]
    assert lightnets.get_spec(model_id, input_size=size).macs() / 1e6 == pytest.approx(macs, abs=1e-6)


@pytest.mark.parametrize("model_id,zoo_name,ctor", QUICK_TWINS, ids=[t[0] for t in QUICK_TWINS])
def test_params_equal_the_timm_twin(model_id, zoo_name, ctor):
    timm = pytest.importorskip("timm")
    twin = timm.create_model(ctor, pretrained=False)
    assert lightnets.get_spec(model_id).num_params() == sum(p.numel() for p in twin.parameters() if p.requires_grad)


def _convs(g, block):
    return {n.name.split(".")[2]: n for n in g.nodes if n.op == "conv2d" and n.name.startswith(f"{block}.")}


def test_uib_kinds_stride_placement_and_activations():
    g = lightnets.get_spec("mobilenet_v4_conv_medium_100")
    names = {n.name for n in g.nodes}
    # blocks.1: ExtraDW 3/5 stride 2: the start depthwise keeps the size and has no activation, the middle one strides
    c = _convs(g, "blocks.1")
    assert list(c) == ["dw_start", "pw_exp", "dw_mid", "pw_proj"]
    assert c["dw_start"].attrs["stride"] == (1, 1) and c["dw_start"].attrs["kernel"] == (3, 3)
    assert c["dw_mid"].attrs["stride"] == (2, 2) and c["dw_mid"].attrs["kernel"] == (5, 5)
    assert c["dw_mid"].attrs["pads"] == (2,) * 4 and c["dw_start"].attrs["groups"] == 48
    assert "blocks.1.dw_start.act" not in names and g.node("blocks.1.dw_mid.act").attrs["kind"] == "relu"
    assert "blocks.1.pw_proj.act" not in names and "blocks.1.add" not in names and "blocks.2.add" in names
    assert g.shapes["blocks.1.pw_exp.act"][0] == 4 * 48 and g.shapes["blocks.2.pw_exp.act"][0] == 2 * 80
    # blocks.8 ConvNeXt (start only), blocks.9 FFN (no depthwise), both with a residual
    assert list(_convs(g, "blocks.8")) == ["dw_start", "pw_exp", "pw_proj"] and "blocks.8.add" in names
    assert list(_convs(g, "blocks.9")) == ["pw_exp", "pw_proj"] and "blocks.9.add" in names
    # the fused IB: 3x3 stride 2 conv 32 -> 128 + BN + relu, 1x1 project to 48, no residual
    fused = _convs(g, "blocks.0")
    assert [(n.attrs["kernel"], n.attrs["stride"], n.attrs["out_channels"]) for n in fused.values()] == [
        ((3, 3), (2, 2), 128), ((1, 1), (1, 1), 48)]
    large = lightnets.get_spec("mobilenet_v4_conv_large_100")
    assert large.shapes["stem.act"][0] == 24
    small = lightnets.get_spec("mobilenet_v4_conv_small_100")
    assert [n.attrs["stride"] for n in _convs(small, "blocks.4").values()] == [(1, 1), (1, 1), (2, 2), (1, 1)]
    assert list(_convs(small, "blocks.5")) == ["pw_exp", "dw_mid", "pw_proj"]  # IB
    assert all(n.attrs["kind"] == "relu" for n in small.nodes if n.op == "activation")
    assert all(n.attrs["eps"] == 1e-5 and n.attrs["momentum"] == 0.1 for n in small.nodes if n.op == "batch_norm")


def test_a_strided_start_only_row_strides_its_start_depthwise(monkeypatch):
    table = ((mobilenet_v4.conv(3, 2, 32),), (mobilenet_v4.uib(5, 0, 2, 4, 64),), (mobilenet_v4.conv(1, 1, 96),))
    monkeypatch.setitem(mobilenet_v4.TABLES, "conv_small", table)
    g = mobilenet_v4.build("x", "conv_small", 1.0, 10, 64, True)
    c = _convs(g, "blocks.1")
    assert list(c) == ["dw_start", "pw_exp", "pw_proj"] and c["dw_start"].attrs["stride"] == (2, 2)
    monkeypatch.setitem(mobilenet_v4.TABLES, "conv_small", (table[0], (mobilenet_v4.uib(0, 0, 2, 4, 64),)))
    with pytest.raises(lightnets.errors.SpecError, match="FFN"):
        mobilenet_v4.build("x", "conv_small", 1.0, 10, 64, True)


def test_head_conv_and_bn_on_the_pooled_map_no_dropout_and_width_rules():
    g = lightnets.get_spec("mobilenet_v4_conv_small_035")
    tail = [n.name for n in g.nodes[g.nodes.index(g.node("head.pool")):]]
    assert tail == ["head.pool", "head.conv.conv", "head.conv.bn", "head.conv.act", "head.flatten", "head.fc"]
    assert g.shapes["head.conv.bn"] == (1280, 1, 1) and not g.node("head.conv.conv").attrs["bias"]
    assert not any(n.op == "dropout" for n in g.nodes)
    # below width 1.0 the stem stays 32 and the 1280 head unscaled; the 960 conv and every row scale
    assert g.shapes["stem.act"][0] == 32 and g.shapes["blocks.16.conv.act"][0] == 336  # make_divisible(960 * .35)
    assert g.shapes["blocks.0.conv.act"][0] == 16 and g.shapes["blocks.2.conv.act"][0] == 32  # 32, 96 x .35
    top = lightnets.get_spec("mobilenet_v4_conv_small_035", include_top=False)
    assert top.output_shape == (1280,) and top.nodes[-1].name == "head.flatten"


def test_include_top_false_is_timm_num_classes_0_in_float64():
    torch = pytest.importorskip("torch")
    key = ("timm", "mobilenetv4_conv_small_035")
    model = zoo.ZOO[key].make(1000).eval()
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    _, w, _ = zoo.import_zoo(*key, model)
    model.reset_classifier(0)
    g = lightnets.get_spec("mobilenet_v4_conv_small_035", include_top=False, input_size=64)
    g = zoo.matcher.with_bn(g, 1e-5, 0.1)
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64))
    with torch.no_grad():
        want = model.double()(torch.from_numpy(x)).numpy()
    assert want.shape == (2, 1280)
    assert rel_error(reference.run(g, {p.name: w[p.name] for p in g.params}, x), want) <= 1e-12


def test_every_id_builds_at_any_input_size_and_without_top():
    for model_id in PARAMS:
        for size in (32, 97, 224):
            assert lightnets.get_spec(model_id, num_classes=7, input_size=size).output_shape == (7,)
            assert lightnets.get_spec(model_id, input_size=size, include_top=False).output_shape == (1280,)


def test_parity_cases_run_a_batch_of_4_where_a_bn_normalises_the_pooled_map():
    from lightnets.parity import cases as C
    assert [c.batch for c in C.model_cases(["mobilenet_v4_conv_small_035", "mobilenet_v3_small_075"])] == [4, 2]
