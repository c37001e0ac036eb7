"""ShuffleNetV1/V2, MobileNetV3, GhostNet, MNASNet, LCNet specs: counts against docs/design.md §3 and the zoo
twins, forward numerics against the twins (float64, test-local positional weight mapping), channel shuffle order.

Frameworks are imported inside tests only; tensorflow never (paddle tests run first, see conftest).
"""

from collections import OrderedDict

import numpy as np
import pytest

import lightnets
from lightnets import reference, registry, weights
from lightnets.archs import shufflenet_v1

FAMILIES = ("shufflenet_v1", "shufflenet_v2", "mobilenet_v3", "ghostnet", "mnasnet", "lcnet")

# docs/design.md §3: trainable parameters of the zoo twins at 1000 classes.
PARAMS = {
    "mobilenet_v3_large_100": 5_483_032, "mobilenet_v3_large_075": 3_993_528,
    "mobilenet_v3_large_075_paddle": 3_377_576,
    "mobilenet_v3_small_100": 2_542_856, "mobilenet_v3_small_075": 2_041_872,
    "shufflenet_v2_050": 1_366_792, "shufflenet_v2_100": 2_278_604, "shufflenet_v2_150": 3_503_624,
    "shufflenet_v2_200": 7_393_996, "shufflenet_v2_200_paddle": 7_366_536,
    "ghostnet_050": 2_587_292, "ghostnet_100": 5_182_508, "ghostnet_130": 7_358_820,
    # keras.applications flavours (TF padding, keras BN/head): same counts as keras.applications
    "mobilenet_v1_100_keras": 4_231_976, "mobilenet_v1_075_keras": 2_585_560,
    "mobilenet_v1_050_keras": 1_331_592, "mobilenet_v1_025_keras": 470_072,
    "mobilenet_v2_100_keras": 3_504_872, "mobilenet_v2_075_keras": 2_636_424,
    "mobilenet_v2_050_keras": 1_968_680, "mobilenet_v2_035_keras": 1_677_128,
    "mobilenet_v2_140_keras": 6_108_776,
    "mobilenet_v3_large_100_keras": 5_483_032, "mobilenet_v3_large_075_keras": 3_993_528,
    "mobilenet_v3_small_100_keras": 2_542_856, "mobilenet_v3_small_075_keras": 2_041_872,
    # MNASNet: torchvision mnasnet0_5..1_3 and timm mnasnet_050..140 (B1), timm semnasnet_050..140 (A1), mnasnet_small
    "mnasnet_b1_050": 2_218_512, "mnasnet_b1_075": 3_170_208, "mnasnet_b1_100": 4_383_312,
    "mnasnet_b1_130": 6_282_256, "mnasnet_b1_140": 7_115_728,
    "mnasnet_a1_050": 2_082_006, "mnasnet_a1_075": 2_912_278, "mnasnet_a1_100": 3_887_038,
    "mnasnet_a1_140": 6_105_992, "mnasnet_small_100": 2_030_264,
    # PP-LCNet: timm lcnet_035..150
    "lcnet_035": 1_644_370, "lcnet_050": 1_880_856, "lcnet_075": 2_358_288, "lcnet_100": 2_953_800,
    "lcnet_150": 4_501_112,
    # GhostNetV2: timm ghostnetv2_100/130/160
    "ghostnet_v2_100": 6_156_908, "ghostnet_v2_130": 8_960_404, "ghostnet_v2_160": 12_392_698,
}
# docs/design.md §3: official megvii ShuffleNetV1 (rounded to 0.01M there; within 1% here).
SHUFFLENET_V1_PARAMS = {
    "g3_050": 0.72e6, "g3_100": 1.86e6, "g3_150": 3.44e6, "g3_200": 5.45e6,
    "g8_050": 1.01e6, "g8_100": 2.43e6, "g8_150": 4.27e6, "g8_200": 6.52e6,
}
# docs/design.md §3: multiply-accumulates of the papers / official repos, in millions (within 2%).
MACS = {
    "shufflenet_v1_g1_100": 143, "shufflenet_v1_g2_100": 140, "shufflenet_v1_g3_100": 137.5,
    "shufflenet_v1_g4_100": 133, "shufflenet_v1_g8_100": 137.5,
    "shufflenet_v2_050": 41, "shufflenet_v2_100": 146, "shufflenet_v2_150": 299, "shufflenet_v2_200": 591,
    "mobilenet_v3_large_100": 219, "mobilenet_v3_small_100": 56,
    "ghostnet_050": 42, "ghostnet_100": 141, "ghostnet_130": 226,
    "mnasnet_b1_100": 315, "mnasnet_a1_100": 312,
    "ghostnet_v2_100": 167, "ghostnet_v2_130": 269, "ghostnet_v2_160": 399,  # GhostNetV2 paper table 2
}


def _ids():
    return [m for f in FAMILIES for m in lightnets.list_models(f)]


def _trainable_torch(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- counts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model_id", sorted(PARAMS))
def test_params_match_design(model_id):
    assert lightnets.get_spec(model_id).num_params() == PARAMS[model_id]


@pytest.mark.parametrize("variant", sorted(SHUFFLENET_V1_PARAMS))
def test_shufflenet_v1_params_match_the_official_repo(variant):
    for model_id in (f"shufflenet_v1_{variant}", f"shufflenet_v1_{variant}_megvii"):
        n = lightnets.get_spec(model_id).num_params()
        assert n == pytest.approx(SHUFFLENET_V1_PARAMS[variant], rel=0.01), model_id


@pytest.mark.parametrize("model_id", sorted(MACS))
def test_macs_match_papers(model_id):
    assert lightnets.get_spec(model_id).macs() / 1e6 == pytest.approx(MACS[model_id], rel=0.02)


TORCH_TWINS = [  # (our id, zoo, constructor, kwargs)
    ("shufflenet_v2_050", "torchvision", "shufflenet_v2_x0_5", {}),
    ("shufflenet_v2_100", "torchvision", "shufflenet_v2_x1_0", {}),
    ("shufflenet_v2_150", "torchvision", "shufflenet_v2_x1_5", {}),
    ("shufflenet_v2_200", "torchvision", "shufflenet_v2_x2_0", {}),
    ("mobilenet_v3_large_100", "torchvision", "mobilenet_v3_large", {}),
    ("mobilenet_v3_small_100", "torchvision", "mobilenet_v3_small", {}),
    # torchvision's width_mult rounds like paddle, not like timm/keras
    ("mobilenet_v3_large_075_paddle", "torchvision", "mobilenet_v3_large", {"width_mult": 0.75}),
    ("mobilenet_v3_small_075_paddle", "torchvision", "mobilenet_v3_small", {"width_mult": 0.75}),
    ("mobilenet_v3_large_100", "timm", "mobilenetv3_large_100", {}),
    ("mobilenet_v3_large_075", "timm", "mobilenetv3_large_075", {}),
    ("mobilenet_v3_small_100", "timm", "mobilenetv3_small_100", {}),
    ("mobilenet_v3_small_075", "timm", "mobilenetv3_small_075", {}),
    ("ghostnet_050", "timm", "ghostnet_050", {}),
    ("ghostnet_100", "timm", "ghostnet_100", {}),
    ("ghostnet_130", "timm", "ghostnet_130", {}),
    ("mnasnet_b1_050", "torchvision", "mnasnet0_5", {}),
    ("mnasnet_b1_075", "torchvision", "mnasnet0_75", {}),
    ("mnasnet_b1_100", "torchvision", "mnasnet1_0", {}),
    ("mnasnet_b1_130", "torchvision", "mnasnet1_3", {}),
    ("mnasnet_b1_050", "timm", "mnasnet_050", {}),
    ("mnasnet_b1_075", "timm", "mnasnet_075", {}),
    ("mnasnet_b1_100", "timm", "mnasnet_100", {}),
    ("mnasnet_b1_140", "timm", "mnasnet_140", {}),
    ("mnasnet_a1_050", "timm", "semnasnet_050", {}),
    ("mnasnet_a1_075", "timm", "semnasnet_075", {}),
    ("mnasnet_a1_100", "timm", "semnasnet_100", {}),
    ("mnasnet_a1_140", "timm", "semnasnet_140", {}),
    ("mnasnet_small_100", "timm", "mnasnet_small", {}),
    ("lcnet_035", "timm", "lcnet_035", {}),
    ("lcnet_050", "timm", "lcnet_050", {}),
    ("lcnet_075", "timm", "lcnet_075", {}),
    ("lcnet_100", "timm", "lcnet_100", {}),
    ("lcnet_150", "timm", "lcnet_150", {}),
    ("ghostnet_v2_100", "timm", "ghostnetv2_100", {}),
    ("ghostnet_v2_130", "timm", "ghostnetv2_130", {}),
    ("ghostnet_v2_160", "timm", "ghostnetv2_160", {}),
]


def _torch_twin(zoo, ctor, kwargs, num_classes=1000):
    if zoo == "torchvision":
        import torchvision
        return getattr(torchvision.models, ctor)(num_classes=num_classes, **kwargs)
    import timm
    return timm.create_model(ctor, pretrained=False, num_classes=num_classes, **kwargs)


@pytest.mark.parametrize("model_id,zoo,ctor,kwargs", TORCH_TWINS, ids=[f"{t[0]}-{t[1]}" for t in TORCH_TWINS])
def test_params_match_torch_twin(model_id, zoo, ctor, kwargs):
    assert lightnets.get_spec(model_id).num_params() == _trainable_torch(_torch_twin(zoo, ctor, kwargs))


PADDLE_TWINS = [  # (our id, paddle.vision.models constructor, kwargs)
    ("shufflenet_v2_025_paddle", "shufflenet_v2_x0_25", {}),
    ("shufflenet_v2_033_paddle", "shufflenet_v2_x0_33", {}),
    ("shufflenet_v2_050", "shufflenet_v2_x0_5", {}),
    ("shufflenet_v2_100", "shufflenet_v2_x1_0", {}),
    ("shufflenet_v2_150", "shufflenet_v2_x1_5", {}),
    ("shufflenet_v2_200_paddle", "shufflenet_v2_x2_0", {}),
    ("shufflenet_v2_swish_100_paddle", "shufflenet_v2_swish", {}),
    ("mobilenet_v3_large_100", "mobilenet_v3_large", {}),
    ("mobilenet_v3_small_100", "mobilenet_v3_small", {}),
    ("mobilenet_v3_large_075_paddle", "mobilenet_v3_large", {"scale": 0.75}),
    ("mobilenet_v3_small_075_paddle", "mobilenet_v3_small", {"scale": 0.75}),
]


@pytest.mark.parametrize("model_id,ctor,kwargs", PADDLE_TWINS, ids=[t[0] for t in PADDLE_TWINS])
def test_params_match_paddle_twin(model_id, ctor, kwargs):
    import paddle
    model = getattr(paddle.vision.models, ctor)(pretrained=False, **kwargs)
    trainable = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    assert lightnets.get_spec(model_id).num_params() == trainable


# --- forward numerics against the twins -----------------------------------------------------
def _spec(model_id, num_classes, input_size, **override):
    """Build ``model_id`` with some builder kwargs overridden (e.g. the twin's BN eps)."""
    e = registry.entry(model_id)
    return e.builder(name=model_id, num_classes=num_classes, input_size=input_size, include_top=True,
                     **{**e.kwargs, **override})


def _native(graph, twin_keys_shapes, w, linear_transposed=False):
    """Test-only mapping canonical -> twin: positional over (state-dict order, graph param order).

    Both list convs/linears as weight(, bias) and BN as gamma, beta, mean, var in module order; a
    mis-ordered or mis-shaped architecture fails the shape check here or the numerics after.
    """
    params = graph.params
    assert len(params) == len(twin_keys_shapes), (len(params), len(twin_keys_shapes))
    out = {}
    for p, (key, shape) in zip(params, twin_keys_shapes, strict=True):
        v = w[p.name]
        if linear_transposed and graph.node(p.name.rsplit(".", 1)[0]).op == "linear" and p.role == "weight":
            v = v.T
        assert int(np.prod(v.shape)) == int(np.prod(shape)), (p.name, p.shape, key, shape)
        if v.shape != tuple(shape):  # only a 1x1 conv head written here as a linear
            assert p.name.startswith("head.") and len(shape) == 4 and shape[2:] == (1, 1), (p.name, key)
        out[key] = v.reshape(shape)
    return out


TORCH_NUMERICS = [  # (our id, zoo, constructor, kwargs, builder overrides to match the twin)
    ("shufflenet_v2_100", "torchvision", "shufflenet_v2_x1_0", {}, {}),
    ("mobilenet_v3_large_100", "torchvision", "mobilenet_v3_large", {}, {}),
    ("mobilenet_v3_large_075_paddle", "torchvision", "mobilenet_v3_large", {"width_mult": 0.75}, {}),
    ("mobilenet_v3_small_075", "timm", "mobilenetv3_small_075", {}, {"eps": 1e-5}),
    ("ghostnet_100", "timm", "ghostnet_100", {}, {}),
    ("mnasnet_b1_075", "torchvision", "mnasnet0_75", {}, {}),
    ("mnasnet_a1_075", "timm", "semnasnet_075", {}, {}),
    ("mnasnet_small_100", "timm", "mnasnet_small", {}, {}),
    ("lcnet_050", "timm", "lcnet_050", {}, {}),
]


@pytest.mark.parametrize("model_id,zoo,ctor,kwargs,override", TORCH_NUMERICS,
                         ids=[f"{t[0]}-{t[1]}" for t in TORCH_NUMERICS])
def test_forward_matches_torch_twin_float64(model_id, zoo, ctor, kwargs, override):
    import torch
    graph = _spec(model_id, 10, 64, **override)
    twin = _torch_twin(zoo, ctor, kwargs, num_classes=10).double().eval()
    sd = {k: v for k, v in twin.state_dict().items() if not k.endswith("num_batches_tracked")}
    w = weights.init_weights(graph, seed=1)
    native = _native(graph, [(k, tuple(v.shape)) for k, v in sd.items()], w)
    tensors = OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in native.items())
    tensors._metadata = twin.state_dict()._metadata  # module versions: torchvision MNASNet refuses a dict without
    result = twin.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64))
    with torch.no_grad():
        got = twin(torch.from_numpy(x)).numpy()
    want = reference.run(graph, w, x)
    assert got.shape == want.shape == (2, 10)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


@pytest.mark.parametrize("model_id,ctor", [("shufflenet_v2_swish_100_paddle", "shufflenet_v2_swish"),
                                           ("shufflenet_v2_200_paddle", "shufflenet_v2_x2_0")])
def test_forward_matches_paddle_twin_float64(model_id, ctor):
    import paddle
    before = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    try:
        twin = getattr(paddle.vision.models, ctor)(pretrained=False, num_classes=10)
    finally:
        paddle.set_default_dtype(before)
    twin.eval()
    graph = _spec(model_id, 10, 64)
    sd = twin.state_dict()
    w = weights.init_weights(graph, seed=1)
    native = _native(graph, [(k, tuple(v.shape)) for k, v in sd.items()], w, linear_transposed=True)
    twin.set_state_dict(native)
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64))
    got = twin(paddle.to_tensor(x)).numpy()
    want = reference.run(graph, w, x)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


# --- GhostNetV2 ---------------------------------------------------------------------------------
def test_ghostnet_v2_gates_ghost1_from_the_third_block_and_matches_timm_at_odd_sizes():
    """DFC attention on blocks.2..15's first ghost module only (timm layer_idx > 1); at 35 px their maps are 9, 5, 3
    and 2 wide, so the nearest resize goes 4 -> 9, 2 -> 5, 1 -> 3, 1 -> 2 (float64 vs timm)."""
    import torch
    g = _spec("ghostnet_v2_100", 10, 35)
    gated = sorted({int(n.name.split(".")[1]) for n in g.nodes if n.op == "resize_nearest"})
    assert gated == list(range(2, 16)) and not any(".ghost2.dfc." in n.name for n in g.nodes)
    assert g.node("blocks.2.ghost1.dfc.horizontal.conv").attrs["kernel"] == (1, 5)
    assert {g.shapes[n.name][1:] for n in g.nodes if n.op == "resize_nearest"} == {(9, 9), (5, 5), (3, 3), (2, 2)}
    twin = _torch_twin("timm", "ghostnetv2_100", {}, num_classes=10).double().eval()
    sd = {k: v for k, v in twin.state_dict().items() if not k.endswith("num_batches_tracked")}
    w = weights.init_weights(g, seed=3)
    native = _native(g, [(k, tuple(v.shape)) for k, v in sd.items()], w)
    twin.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in native.items()}, strict=False)
    x = np.random.default_rng(4).standard_normal((2, 3, 35, 35))
    with torch.no_grad():
        got = twin(torch.from_numpy(x)).numpy()
    want = reference.run(g, w, x)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


# --- channel shuffle ------------------------------------------------------------------------
def test_channel_shuffle_is_torch_order_not_seed_000_order():
    import torch
    n, c, g = 2, 12, 3
    x = np.random.default_rng(0).standard_normal((n, c, 2, 2))
    torch_order = torch.from_numpy(x).view(n, g, c // g, 2, 2).transpose(1, 2).reshape(n, c, 2, 2).numpy()
    seed_000 = x.reshape(n, c // g, g, 2, 2).transpose(0, 2, 1, 3, 4).reshape(n, c, 2, 2)  # (C/g, g)
    assert not np.array_equal(torch_order, seed_000)
    np.testing.assert_array_equal(reference.channel_shuffle(x, g), torch_order)
    # the (C/g, g) order of seed 000 and of the megvii code is the paper shuffle with C/g groups
    np.testing.assert_array_equal(reference.channel_shuffle(x, c // g), seed_000)


def test_shufflenet_v1_structure_avoids_the_seed_defects():
    """docs/design.md §4: depthwise is per channel, no conv bias, stem has BN + ReLU, stage 2 opens ungrouped."""
    g = lightnets.get_spec("shufflenet_v1_g3_100")
    convs = {n.name: n for n in g.nodes if n.op == "conv2d"}
    assert not any(n.attrs["bias"] for n in convs.values())
    for name, n in convs.items():
        if name.endswith(".dw.conv"):
            assert n.attrs["groups"] == g.shapes[n.inputs[0]][0]
    assert [n.op for n in g.nodes[:3]] == ["conv2d", "batch_norm", "activation"]
    assert convs["stages.2.0.branch.pw1.conv"].attrs["groups"] == 1
    assert convs["stages.2.1.branch.pw1.conv"].attrs["groups"] == 3
    assert convs["stages.3.0.branch.pw1.conv"].attrs["groups"] == 3
    names = {n.name for n in g.nodes}
    assert "stages.2.1.branch.dw.act" not in names and "stages.2.1.branch.pw2.act" not in names
    assert g.node("stages.3.0.shortcut").attrs["count_include_pad"] is True
    assert g.node("stages.2.0.branch.shuffle").inputs == ("stages.2.0.branch.pw1.act",)
    assert g.shapes["stages.2.0.concat"][0] == 240 and g.shapes["stages.2.0.branch.pw2.bn"][0] == 240 - 24


def test_shufflenet_v1_megvii_flavour_is_the_same_size_with_its_own_shuffle():
    paper = lightnets.get_spec("shufflenet_v1_g8_100")
    megvii = lightnets.get_spec("shufflenet_v1_g8_100_megvii")
    assert paper.num_params() == megvii.num_params() and paper.macs() == megvii.macs()
    assert paper.node("stages.3.1.branch.shuffle").attrs["groups"] == 8
    s = megvii.node("stages.3.1.branch.shuffle")
    assert s.attrs["groups"] == 768 // 4 // 8 and s.inputs == ("stages.3.1.branch.dw.bn",)


def test_shufflenet_v1_channel_rule_reproduces_the_official_tables():
    assert shufflenet_v1.channels(3, 0.5) == (12, (120, 240, 480))
    assert shufflenet_v1.channels(3, 1.5) == (24, (360, 720, 1440))
    assert shufflenet_v1.channels(8, 0.5) == (16, (192, 384, 768))
    assert shufflenet_v1.channels(8, 2.0) == (48, (768, 1536, 3072))
    for groups in shufflenet_v1.STAGE_CHANNELS:
        for width in shufflenet_v1.WIDTHS:
            stem, outs = shufflenet_v1.channels(groups, width)
            assert stem % groups == 0 and all(o % (4 * groups) == 0 for o in outs)


# --- any input size, features without the top ----------------------------------------------
def test_every_id_builds_at_any_input_size_and_without_top():
    ids = _ids()
    assert len(ids) == 28 + 8 + 6 + 3 + 4 + 10 + 8  # + 4 mobilenet_v3 *_keras, + 10 mnasnet, + 8 lcnet
    for model_id in ids:
        full = lightnets.get_spec(model_id)
        assert full.output_shape == (1000,)
        feats = full.shapes["head.flatten"]
        for size in (32, 97, 224):
            g = lightnets.get_spec(model_id, num_classes=7, input_size=size, include_top=False)
            assert g.output_shape == feats and len(feats) == 1, model_id
        assert lightnets.get_spec(model_id, num_classes=7, input_size=97).output_shape == (7,)


def test_reference_runs_at_the_smallest_input():
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
    smallest = ("shufflenet_v1_g8_050", "shufflenet_v2_025_paddle", "mobilenet_v3_small_075", "ghostnet_050",
                "mnasnet_small_100", "lcnet_025")
    for model_id in smallest:
        g = lightnets.get_spec(model_id, num_classes=3, input_size=32)
        out = reference.run(g, weights.init_weights(g), x)
        assert out.shape == (1, 3) and np.all(np.isfinite(out))


# --- MNASNet ----------------------------------------------------------------------------------
def test_mnasnet_structure_follows_figure_7():
    """B1: no SE, residual on every repeat; A1: SE (relu, sigmoid, squeeze from the block input) on stages 3, 5,
    6; small: the 8 -> 8 SepConv keeps its residual (timm has_skip); torchvision's width rounding."""
    b1, a1, small = (lightnets.get_spec(f"mnasnet_{v}") for v in ("b1_100", "a1_100", "small_100"))
    assert not any(".se." in n.name for n in b1.nodes)
    assert b1.node("stem.bn").attrs["momentum"] == 1 - 0.9997 and b1.node("stem.bn").attrs["eps"] == 1e-5
    assert sum(n.op == "add" for n in b1.nodes) == 2 + 2 + 2 + 1 + 3
    assert a1.shapes["blocks.3.se.fc1"][0] == 6 and a1.shapes["blocks.4.se.fc1"][0] == 10  # round(24/4), 40/4
    assert a1.node("blocks.3.se.gate").attrs["kind"] == "sigmoid" and a1.node("blocks.3.se.act").attrs["kind"] == "relu"
    se_blocks = {int(n.name.split(".")[1]) for n in a1.nodes if n.name.endswith(".se.scale")}
    assert se_blocks == {3, 4, 5, 10, 11, 12, 13, 14}
    assert "blocks.0.add" in {n.name for n in small.nodes}
    # torchvision _get_depths(0.5): [16, 8, 16, 24, 40, 48, 96, 160]; head stays 1280
    g = lightnets.get_spec("mnasnet_b1_050")
    assert [g.shapes[n][0] for n in ("stem.act", "blocks.0.project.bn", "blocks.1.project.bn", "blocks.4.project.bn",
                                     "blocks.7.project.bn", "blocks.10.project.bn", "blocks.12.project.bn",
                                     "blocks.16.project.bn", "head.conv.act")] == [16, 8, 16, 24, 40, 48, 96, 160, 1280]


# --- PP-LCNet ---------------------------------------------------------------------------------
# PaddleClas' table (docs/en/models/PP-LCNet_en.md): FLOPs (M) of PPLCNet_x0_25 .. x2_5
LCNET_FLOPS = {"lcnet_025": 18, "lcnet_035": 29, "lcnet_050": 47, "lcnet_075": 99, "lcnet_100": 161, "lcnet_150": 342,
               "lcnet_200": 590, "lcnet_250": 906}


@pytest.mark.parametrize("model_id", sorted(LCNET_FLOPS))
def test_lcnet_flops_are_paddleclas_count_macs_plus_two_per_batch_norm_output(model_id):
    """PaddleClas' FLOPs are paddle.flops': conv/linear multiply-accumulates plus 2 per BN output element (macs alone
    are 1.4-6.8% below, more at small widths where BN is a larger share)."""
    g = lightnets.get_spec(model_id)
    bn = sum(int(np.prod(g.shapes[n.name])) for n in g.nodes if n.op == "batch_norm")
    assert (g.macs() + 2 * bn) / 1e6 == pytest.approx(LCNET_FLOPS[model_id], rel=0.02)


def test_lcnet_structure_follows_table_1():
    g = lightnets.get_spec("lcnet_100")
    assert not any(n.op == "add" for n in g.nodes)
    assert {int(n.name.split(".")[1]) for n in g.nodes if n.name.endswith(".se.scale")} == {11, 12}
    assert g.shapes["blocks.11.se.fc1"][0] == 256 // 4 and g.node("blocks.11.se.gate").attrs["kind"] == "hardsigmoid"
    assert [g.node(f"blocks.{i}.dw.conv").attrs["kernel"] for i in range(13)] == [(3, 3)] * 6 + [(5, 5)] * 7
    assert g.shapes["head.hidden"] == (1280,) and g.node("head.hidden_act").attrs["kind"] == "hardswish"
    assert lightnets.get_spec("lcnet_025").shapes["stem.act"][0] == 8  # make_divisible(16 * 0.25) = 8
