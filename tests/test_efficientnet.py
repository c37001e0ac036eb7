"""EfficientNet B0-B3 and EfficientNet-Lite 0-4 (issue 23): parameter counts equal the torchvision / timm twins,
MACs the paper's, the structure the details that make a different net (SE from the block input, swish / relu6,
Lite's fixed stem and head, TF "same" padding of the ``_tf`` ids, stochastic depth as drop_path nodes on
torchvision's schedule), a tf_ checkpoint refused by
the symmetric graph, and the twins' torch.onnx files import as their id. The zoo imports with BN statistics from data
are tests/test_zoo_calibrated.py (every new family).

The quick profile builds the smallest twin of each zoo and variant (b, b_tf, lite, lite_tf); LIGHTNETS_SLOW=1 every
twin.
Zoo models are built locally with random weights (never downloaded).
"""

import numpy as np
import profiles
import pytest
from zoo_calibration import calibrated

import lightnets
from lightnets import registry, zoo
from lightnets.archs import efficientnet
from lightnets.errors import WeightsError
from lightnets.numerics import rel_error

# Trainable parameters, measured on the twins (docs/design.md §3): torchvision efficientnet_b0..b3 = timm
# efficientnet_b0..b3; timm efficientnet_lite0..4 = tf_efficientnet_lite0..4.
PARAMS = {
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_lite0": 4_652_008, "efficientnet_lite1": 5_416_680, "efficientnet_lite2": 6_092_072,
    "efficientnet_lite3": 8_197_096, "efficientnet_lite4": 13_006_568,
}
PARAMS.update({f"{k}_tf": v for k, v in PARAMS.items()})
# Paper table 1 / figure 1: FLOPs (multiply-accumulates) in billions at each model's resolution, within 2%
PAPER_MACS = {"b0": 0.39, "b1": 0.70, "b2": 1.0, "b3": 1.8}
TWINS = [(f"efficientnet_b{k}", "torchvision", f"efficientnet_b{k}") for k in range(4)]
TWINS += [(f"efficientnet_b{k}", "timm", f"efficientnet_b{k}") for k in range(4)]
TWINS += [(f"efficientnet_lite{k}", "timm", f"efficientnet_lite{k}") for k in range(5)]
TWINS += [(f"efficientnet_lite{k}_tf", "timm", f"tf_efficientnet_lite{k}") for k in range(5)]
TWINS += [(f"efficientnet_b{k}_tf", "timm", f"tf_efficientnet_b{k}") for k in range(4)]
QUICK_TWINS = profiles.smallest_of_each_variant(TWINS, arch=lambda t: t[0], source=lambda t: t[1])
ZOO_KEYS = profiles.smallest_of_each_variant(
    [k for k in zoo.list_zoo() if registry.entry(zoo.ZOO[k].arch).family == "efficientnet"],
    arch=lambda k: zoo.ZOO[k].arch, source=lambda k: k[0])


def test_every_id_is_registered_and_counted():
    assert lightnets.list_models("efficientnet") == sorted(PARAMS)
    assert {t[0] for t in TWINS} == set(PARAMS) and {(z, n) for _, z, n in TWINS} == {
        k for k in zoo.list_zoo() if registry.entry(zoo.ZOO[k].arch).family == "efficientnet"}


@pytest.mark.parametrize("model_id", sorted(PARAMS))
def test_params_match_the_twins_measured(model_id):
    assert lightnets.get_spec(model_id).num_params() == PARAMS[model_id]


@pytest.mark.parametrize("version", sorted(PAPER_MACS))
def test_macs_match_the_paper_at_each_resolution(version):
    g = lightnets.get_spec(f"efficientnet_{version}", input_size=efficientnet.SCALING[version].resolution)
    assert g.macs() / 1e9 == pytest.approx(PAPER_MACS[version], rel=0.02)


def _twin(zoo_name, ctor):
    if zoo_name == "torchvision":
        import torchvision
        return getattr(torchvision.models, ctor)(weights=None)
    import timm
    return timm.create_model(ctor, pretrained=False)


@pytest.mark.parametrize("model_id,zoo_name,ctor", QUICK_TWINS, ids=[f"{t[0]}-{t[1]}" for t in QUICK_TWINS])
def test_params_equal_each_twin(model_id, zoo_name, ctor):
    twin = _twin(zoo_name, ctor)
    assert lightnets.get_spec(model_id).num_params() == sum(p.numel() for p in twin.parameters() if p.requires_grad)


def test_quick_profile_has_one_twin_and_one_zoo_entry_per_zoo_and_variant():
    assert {(t[1], profiles.variant(t[0])) for t in QUICK_TWINS} == {
        ("torchvision", "efficientnet_b"), ("timm", "efficientnet_b"), ("timm", "efficientnet_lite"),
        ("timm", "efficientnet_lite_tf"), ("timm", "efficientnet_b_tf")}
    if not profiles.SLOW:
        assert len(QUICK_TWINS) == 5 and sorted(zoo.ZOO[k].arch for k in ZOO_KEYS) == [
            "efficientnet_b0", "efficientnet_b0", "efficientnet_b0_tf", "efficientnet_lite0", "efficientnet_lite0_tf"]


def test_b_structure_se_from_the_block_input_swish_and_compound_scaling():
    g = lightnets.get_spec("efficientnet_b0")
    # block 1: 16 -> x6 = 96 expanded; SE squeezes the block INPUT 16 / 4 = 4 (not 96 / 4), swish then sigmoid
    assert g.shapes["blocks.1.expand.act"][0] == 96 and g.shapes["blocks.1.se.fc1"][0] == 4
    assert g.node("blocks.1.se.act").attrs["kind"] == "swish" and g.node("blocks.1.se.gate").attrs["kind"] == "sigmoid"
    assert g.shapes["blocks.0.se.fc1"][0] == 8 and "blocks.0.expand.conv" not in {n.name for n in g.nodes}
    assert {n.attrs["kind"] for n in g.nodes if n.op == "activation"} == {"swish", "sigmoid"}
    assert sum(n.name.endswith(".se.scale") for n in g.nodes) == 16
    # one dropout, the classifier's (stochastic depth is drop_path, test_drop_path_...)
    assert [n.name for n in g.nodes if n.op == "dropout"] == ["head.dropout"]
    assert g.node("head.dropout").attrs["rate"] == 0.2
    b3 = lightnets.get_spec("efficientnet_b3")
    # width 1.2: make_divisible(32 * 1.2) = 40 stem, head 1280 * 1.2 = 1536; depth 1.4: ceil(n * 1.4)
    assert efficientnet.repeats("b3") == (2, 3, 3, 5, 5, 6, 2)
    assert b3.shapes["stem.act"][0] == 40 and b3.shapes["head.conv.act"][0] == 1536
    assert b3.shapes["blocks.1.se.fc1"][0] == 24 // 4 and b3.node("head.dropout").attrs["rate"] == 0.3
    assert efficientnet.repeats("b1") == (2, 3, 3, 4, 4, 5, 2)  # ceil(1 * 1.1) = 2: the first stage too
    assert "blocks.1.add" in {n.name for n in lightnets.get_spec("efficientnet_b1").nodes}  # 16 -> 16 MBConv1
    assert all(n.attrs["eps"] == 1e-5 and n.attrs["momentum"] == 0.1 for n in b3.nodes if n.op == "batch_norm")


def test_lite_structure_relu6_no_se_fixed_stem_head_first_and_last_stage():
    g = lightnets.get_spec("efficientnet_lite4")
    assert not any(".se." in n.name for n in g.nodes)
    assert {n.attrs["kind"] for n in g.nodes if n.op == "activation"} == {"relu6"}
    assert g.shapes["stem.act"][0] == 32 and g.shapes["head.conv.act"][0] == 1280  # not scaled by 1.4
    assert efficientnet.repeats("lite4") == (1, 4, 4, 6, 6, 8, 1)
    assert g.shapes["blocks.0.project.bn"][0] == 24 and g.shapes["blocks.29.project.bn"][0] == 448


def test_tf_ids_pad_every_spatial_conv_tf_same_with_bn_eps_1e3():
    tf, sym = lightnets.get_spec("efficientnet_lite0_tf"), lightnets.get_spec("efficientnet_lite0")
    spatial = [n for n in tf.nodes if n.op == "conv2d" and n.attrs["kernel"] != (1, 1)]
    assert len(spatial) == 17 and all(n.attrs["padding"] == "same" for n in spatial)
    assert all(n.attrs["eps"] == 1e-3 and n.attrs["momentum"] == 0.1 for n in tf.nodes if n.op == "batch_norm")
    assert all(n.attrs.get("padding", "explicit") == "explicit" for n in sym.nodes if n.op == "conv2d")
    assert tf.num_params() == sym.num_params() and tf.macs() == sym.macs()


def test_a_tf_same_checkpoint_refuses_the_symmetric_graph(monkeypatch):
    """timm tf_efficientnet_lite0 mapped onto efficientnet_lite0 (symmetric pads) has the same keys and shapes:
    only the float64 probe tells them apart."""
    key = ("timm", "tf_efficientnet_lite0")
    model, _ = calibrated(key)
    monkeypatch.setitem(zoo.ZOO, key, zoo.ZOO[key]._replace(arch="efficientnet_lite0"))
    with pytest.raises(WeightsError, match="float64"):
        zoo.import_zoo(*key, model)


def test_feature_info_equals_timm_features_only():
    timm = pytest.importorskip("timm")
    names = {n for z, n in ZOO_KEYS if z == "timm"}
    for (z, name), e in zoo.ZOO.items():
        if z != "timm" or name not in names:
            continue
        theirs = timm.create_model(name, pretrained=False, features_only=True).feature_info
        ours = lightnets.feature_info(e.arch)
        assert ours.channels() == theirs.channels() and ours.reduction() == theirs.reduction(), name
        assert ours.module_name() == theirs.module_name(), name
        for mine, d in zip(ours.get_dicts(), theirs.get_dicts(), strict=True):
            assert {k: mine[k] for k in d} == d, (name, mine, d)


def test_repeats_per_stage_are_the_twins():
    """ceil(n * depth) (torchvision's adjust_depth, timm's depth_trunc="ceil"); Lite keeps stages 1 and 7 at one
    block (timm fix_first_last). Counted on torchvision ``features[1:-1]`` and timm ``blocks``."""
    want = {"b0": (1, 2, 2, 3, 3, 4, 1), "b1": (2, 3, 3, 4, 4, 5, 2), "b2": (2, 3, 3, 4, 4, 5, 2),
            "b3": (2, 3, 3, 5, 5, 6, 2), "lite0": (1, 2, 2, 3, 3, 4, 1), "lite1": (1, 3, 3, 4, 4, 5, 1),
            "lite2": (1, 3, 3, 4, 4, 5, 1), "lite3": (1, 3, 3, 5, 5, 6, 1), "lite4": (1, 4, 4, 6, 6, 8, 1)}
    assert {v: efficientnet.repeats(v) for v in efficientnet.SCALING} == want


def _residual_blocks(g):
    return [n.name[:-len(".add")] for n in g.nodes if n.op == "add"]


@pytest.mark.parametrize("model_id", sorted(PARAMS))
def test_drop_path_on_every_residual_branch_at_0_2_block_over_blocks(model_id):
    """Stochastic depth on the branch of every residual block (project BN -> drop_path -> add) at torchvision's and
    keras.applications' rate 0.2 * block / blocks; weightless: params and MACs as without it."""
    g = lightnets.get_spec(model_id)
    blocks = sum(efficientnet.repeats(g.meta["version"]))
    drops = {n.name: n for n in g.nodes if n.op == "drop_path"}
    assert sorted(drops) == sorted(f"{b}.drop_path" for b in _residual_blocks(g)) and drops
    for b in _residual_blocks(g):
        assert g.node(f"{b}.drop_path").inputs == (f"{b}.project.bn",)
        assert g.node(f"{b}.add").inputs[1] == f"{b}.drop_path"
        assert drops[f"{b}.drop_path"].attrs["rate"] == 0.2 * int(b.split(".")[1]) / blocks
    plain = efficientnet.build(model_id, num_classes=1000, input_size=g.input_shape[1], include_top=True,
                               drop_path_rate=0.0, **efficientnet.VARIANTS[model_id])
    assert not any(n.op == "drop_path" for n in plain.nodes)
    assert (plain.num_params(), plain.macs()) == (g.num_params(), g.macs())


def test_drop_path_schedule_is_torchvisions_and_both_drop_in_train_mode():
    """torchvision efficientnet_b1 (its block 1 is a 16 -> 16 residual): the StochasticDepth p of every block that
    adds its input equals our drop_path rate bit for bit (eval-mode parity cannot see it); in train mode both the twin's
    module and our torch lowering's zero whole samples (structural: each its own RNG)."""
    import torch
    import torchvision

    twin = torchvision.models.efficientnet_b1(weights=None)
    theirs = [m.stochastic_depth for stage in twin.features[1:-1] for m in stage if m.use_res_connect]
    g = lightnets.get_spec("efficientnet_b1", input_size=32)
    ours = [n.attrs["rate"] for n in g.nodes if n.op == "drop_path"]
    assert [m.p for m in theirs] == ours and len(ours) == 16
    model = lightnets.build(g, "torch")
    mine = [m for name, m in model.named_modules() if name.endswith(".drop_path")]
    assert [m.p for m in mine] == ours
    torch.manual_seed(0)
    x = torch.ones(256, 4, 2, 2)
    for module in (theirs[-1], mine[-1]):  # p = 0.2 * 22 / 23
        module.train()
        y = module(x)
        kept = y.flatten(1).amax(1)
        assert torch.equal(y.flatten(1).amin(1), kept)  # whole samples
        assert kept.unique().tolist() == [0.0, pytest.approx(1 / (1 - module.p), rel=1e-7)]
        assert 150 < int((kept > 0).sum()) < 250  # 256 samples, keep 0.2087: 202.6 +- 6.5
        module.eval()
        assert torch.equal(module(x), x)


def test_fold_batch_norm_keeps_drop_path_as_the_identity():
    """fold_batch_norm keeps the drop_path nodes (now reading the folded project conv) and computes the same function
    in float64."""
    from lightnets import reference
    from lightnets import weights as W
    from lightnets.transforms import fold_batch_norm

    g = lightnets.get_spec("efficientnet_lite0", num_classes=10, input_size=32)
    w = W.init_weights(g, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    fg, fw = fold_batch_norm(g, w)
    assert fg.node("blocks.2.drop_path").inputs == ("blocks.2.project.conv",)
    ref = reference.run(g, w, x)
    assert rel_error(reference.run(fg, fw, x), ref) <= 1e-12


# timm efficientnet_lite0 in `make test` (~2 s), torchvision efficientnet_b0 (~6 s) with LIGHTNETS_SLOW=1
ONNX_TWINS = [("timm", "efficientnet_lite0"), *([("torchvision", "efficientnet_b0")] if profiles.SLOW else [])]


@pytest.mark.parametrize("key", ONNX_TWINS, ids=[f"{z}-{n}" for z, n in ONNX_TWINS])
def test_the_twins_torch_onnx_file_imports_as_its_id(tmp_path, key):
    """torch.onnx.export (torchscript) of the twin with data-calibrated BN: the id is found from the file and the
    torch port reproduces the twin. timm tf_* files are refused (Conv2dSame computes its pads at run time)."""
    import torch
    torch.manual_seed(0)
    model = zoo.ZOO[key].make(1000)
    for m in model.modules():  # BN statistics of one batch of unit-variance images (as tests/test_onnx_import.py)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    model.eval()
    path = tmp_path / f"{key[1]}.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 64, 64), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    ported, info = lightnets.port(path, to="torch", input_size=64, return_info=True)
    assert info["arch"] == zoo.ZOO[key].arch
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert rel_error(lightnets.run(ported, x), want) <= 1e-4
