"""MixNet S/M/L (issue 23): parameter counts equal timm mixnet_s/m/l and tf_mixnet_s/m/l, MACs torch's FlopCounter
count of the twins, the structure the details that make a different net (mixed depthwise kernels as slice -> convs
-> concat with timm's split rule, grouped 1x1 as separate convs, SE from the block input with the block's
activation, relu/swish per stage, the unscaled 1536 head, TF "same" padding of the ``_tf`` ids); the zoo imports with
BN statistics from data are tests/test_zoo_calibrated.py (every new family).

The quick profile builds the smallest twin of each variant (s, m, s_tf, m_tf; mixnet_l is m at width 1.3);
LIGHTNETS_SLOW=1 every twin. Zoo models are built locally with random weights (never downloaded).
"""

import profiles
import pytest

import lightnets
from lightnets import registry, zoo
from lightnets.archs import mixnet

# Trainable parameters, measured on timm mixnet_s/m/l (= tf_mixnet_s/m/l), docs/design.md §3
PARAMS = {"mixnet_s": 4_134_606, "mixnet_m": 5_014_382, "mixnet_l": 7_329_252}
PARAMS.update({f"{k}_tf": v for k, v in PARAMS.items()})
# multiply-accumulates at 224 px in millions: torch.utils.flop_counter.FlopCounterMode on the timm twins / 2 gives
# 239.17 / 339.17 / 555.25; the paper's 256 / 360 / 565M are 6.6 / 5.8 / 1.7% above (not explained)
MACS = {"mixnet_s": 239.17, "mixnet_m": 339.17, "mixnet_l": 555.25}
TWINS = [(k, "timm", k if not k.endswith("_tf") else "tf_" + k[:-3]) for k in sorted(PARAMS)]
QUICK_TWINS = profiles.smallest_of_each_variant(TWINS, arch=lambda t: t[0])
ZOO_KEYS = profiles.smallest_of_each_variant(
    [k for k in zoo.list_zoo() if registry.entry(zoo.ZOO[k].arch).family == "mixnet"],
    arch=lambda k: zoo.ZOO[k].arch, source=lambda k: k[0])


def test_every_id_is_registered_counted_and_has_a_zoo_entry():
    assert lightnets.list_models("mixnet") == sorted(PARAMS)
    assert {(z, n) for _, z, n in TWINS} == {k for k in zoo.list_zoo()
                                             if registry.entry(zoo.ZOO[k].arch).family == "mixnet"}
    if not profiles.SLOW:
        assert [t[0] for t in QUICK_TWINS] == ["mixnet_m", "mixnet_m_tf", "mixnet_s", "mixnet_s_tf"]


@pytest.mark.parametrize("model_id", sorted(PARAMS))
def test_params_and_macs(model_id):
    g = lightnets.get_spec(model_id)
    assert g.num_params() == PARAMS[model_id]
    assert g.macs() / 1e6 == pytest.approx(MACS[model_id.removesuffix("_tf")], abs=0.01)


@pytest.mark.parametrize("model_id,zoo_name,ctor", QUICK_TWINS, ids=[t[0] for t in QUICK_TWINS])
def test_params_equal_the_timm_twin(model_id, zoo_name, ctor):
    timm = pytest.importorskip("timm")
    twin = timm.create_model(ctor, pretrained=False)
    assert lightnets.get_spec(model_id).num_params() == sum(p.numel() for p in twin.parameters() if p.requires_grad)


def test_split_is_the_reference_codes_remainder_first():
    assert mixnet.split_channels(200, 3) == [68, 66, 66] and mixnet.split_channels(120, 4) == [30, 30, 30, 30]
    assert mixnet.split_channels(1200, 5) == [240] * 5 and mixnet.split_channels(7, 2) == [4, 3]


def test_structure_mixed_kernels_grouped_1x1_se_and_activations():
    g = lightnets.get_spec("mixnet_s")
    names = {n.name for n in g.nodes}
    # the ds block keeps the stem's 16 channels: a residual; stage 1 relu, no SE
    assert "blocks.0.add" in names and g.node("blocks.1.dw.act").attrs["kind"] == "relu"
    # blocks.1: 16 -> 96 expansion in two 1x1 convs of 8 -> 48, then 3x3 depthwise, projection 2 x (48 -> 12)
    assert [g.node(f"blocks.1.expand.conv{j}").attrs["out_channels"] for j in (0, 1)] == [48, 48]
    assert g.shapes["blocks.1.expand.slice0"][0] == 8 and "blocks.1.dw.conv" in names
    assert [g.node(f"blocks.1.project.conv{j}").attrs["out_channels"] for j in (0, 1)] == [12, 12]
    # blocks.3: 24 -> 144, mixed 3/5/7 depthwise stride 2 over an even split, SE 24 * 0.5 = 12 with swish
    dw = [g.node(f"blocks.3.dw.conv{j}") for j in range(3)]
    assert [n.attrs["kernel"] for n in dw] == [(3, 3), (5, 5), (7, 7)] and all(n.attrs["stride"] == (2, 2) for n in dw)
    assert [g.shapes[f"blocks.3.dw.slice{j}"][0] for j in range(3)] == [48, 48, 48]
    assert [n.attrs["groups"] for n in dw] == [48, 48, 48] and [n.attrs["pads"] for n in dw] == [
        (1,) * 4, (2,) * 4, (3,) * 4]
    assert g.shapes["blocks.3.se.fc1"][0] == 12 and g.node("blocks.3.se.act").attrs["kind"] == "swish"
    assert g.node("blocks.3.se.gate").attrs["kind"] == "sigmoid"
    # blocks.13: 120 -> 720, 3/5/7/9/11 depthwise over an uneven split (remainder to the first group)
    assert [g.shapes[f"blocks.13.dw.slice{j}"][0] for j in range(5)] == [144] * 5
    assert [g.shapes[f"blocks.14.dw.slice{j}"][0] for j in range(4)] == [300] * 4
    assert g.shapes["head.conv.act"][0] == 1536 and g.node("head.conv.act").attrs["kind"] == "relu"
    assert [n.name for n in g.nodes if n.op == "dropout"] == ["head.dropout"]
    big = lightnets.get_spec("mixnet_l")  # M at 1.3: stem 32, head still 1536
    assert big.shapes["stem.act"][0] == 32 and big.shapes["head.conv.act"][0] == 1536
    # every split of S/M/L is even (the remainder rule of split_channels is not exercised by these three)
    assert all(len({big.shapes[i][0] for i in n.inputs}) == 1 for n in big.nodes if n.op == "concat")


def test_tf_ids_pad_every_spatial_conv_tf_same_with_bn_eps_1e3():
    tf = lightnets.get_spec("mixnet_s_tf")
    spatial = [n for n in tf.nodes if n.op == "conv2d" and n.attrs["kernel"] != (1, 1)]
    assert spatial and all(n.attrs["padding"] == "same" for n in spatial)
    assert all(n.attrs["eps"] == 1e-3 and n.attrs["momentum"] == 0.1 for n in tf.nodes if n.op == "batch_norm")


def test_feature_info_equals_timm_features_only():
    timm = pytest.importorskip("timm")
    for _, z, name in QUICK_TWINS:
        theirs = timm.create_model(name, pretrained=False, features_only=True).feature_info
        ours = lightnets.feature_info(zoo.ZOO[(z, name)].arch)
        assert ours.channels() == theirs.channels() and ours.reduction() == theirs.reduction(), name
        for mine, d in zip(ours.get_dicts(), theirs.get_dicts(), strict=True):
            assert {k: mine[k] for k in d} == d, (name, mine, d)
