"""Zoo imports of the issue-23 families (MNASNet, LCNet, EfficientNet, MixNet, GhostNetV2) with BN statistics from
data: one train-mode forward with momentum 1 on low-variance images makes running variances of ~1e-3..1e-6, which
amplify float32 rounding; the float64 probe must still hold the mapping to PROBE_FLOAT64, the zoo model in float64
must equal the reference of the imported graph on another batch (at an odd, non-square size, where TF "same" pads
differ from symmetric ones), and export_zoo must give the zoo model back bit for bit.

tests/test_zoo.py imports every entry with randomised statistics; this file runs the smallest entry of each zoo
and variant (every entry with LIGHTNETS_SLOW=1). Zoo models are built locally with random weights. The last test
imports the ``torch.onnx.export`` file of the smallest twin of each family as a zoo checkpoint (ONNX re-import).
"""

import numpy as np
import profiles
import pytest
from zoo_calibration import calibrated

import lightnets
from lightnets import registry, zoo
from lightnets.numerics import rel_error

FAMILIES = ("mnasnet", "lcnet", "efficientnet", "mixnet", "ghostnet_v2", "mobilenet_v4", "mobileone", "repghost")
KEYS = profiles.smallest_of_each_variant(  # the "<name>_reparam" entries: tests/test_reparameterize.py
    [k for k in zoo.list_zoo() if registry.entry(zoo.ZOO[k].arch).family in FAMILIES and zoo.ZOO[k].form == "train"],
    arch=lambda k: zoo.ZOO[k].arch, source=lambda k: k[0])


def test_the_quick_profile_covers_every_zoo_and_variant_of_the_new_families():
    variants = {(k[0], profiles.variant(zoo.ZOO[k].arch)) for k in KEYS}
    assert {("torchvision", "mnasnet_b1"), ("timm", "mnasnet_b1"), ("timm", "mnasnet_a1"), ("timm", "mnasnet_small"),
            ("timm", "lcnet"), ("torchvision", "efficientnet_b"), ("timm", "efficientnet_b"),
            ("timm", "efficientnet_lite"), ("timm", "efficientnet_lite_tf"), ("timm", "mixnet_s"),
            ("timm", "mixnet_m_tf"), ("timm", "ghostnet_v2"), ("timm", "mobilenet_v4_conv_small"),
            ("timm", "mobilenet_v4_conv_medium"), ("timm", "mobileone"),
            ("timm", "repghostnet")} <= variants


@pytest.mark.parametrize("key", KEYS, ids=[f"{z}-{n}" for z, n in KEYS])
def test_zoo_import_with_data_calibrated_bn_is_exact_in_float64_and_exports_back(key):
    import torch
    model, min_var = calibrated(key)
    assert min_var < 2e-3
    graph, w, info = zoo.import_zoo(*key, model)
    p = info["probe"]
    print(f"ZOOPROBE calibrated {key[0]} {key[1]} -> {info['arch']}: min var {min_var:.1e}, float64 "
          f"{p['rel_error']:.2e}, float32 {p['float32_rel_error']:.2e}")
    assert info["arch"] == zoo.ZOO[key].arch and p["dtype"] == "float64" and p["rel_error"] <= zoo.PROBE_FLOAT64
    assert graph.meta["bn_eps"] == zoo.ZOO[key].bn_eps
    # another batch at an odd, non-square size (TF "same" pads (0, 1) / (1, 1) per axis there), of the calibration
    # images' scale: unit-variance images through BNs calibrated on 0.05 x randn make deep SE nets so ill-conditioned
    # that float64 itself drifts (torchvision efficientnet_b1: 3.0e-9 relative; float32 is 0.07-0.7 off there)
    x = 0.05 * np.random.default_rng(5).standard_normal((2, 3, 67, 62))
    with torch.no_grad():
        want = model.double()(torch.from_numpy(x)).numpy()
    model.float()
    assert rel_error(lightnets.reference.run(graph, w, x), want) <= zoo.PROBE_FLOAT64
    fresh = zoo.ZOO[key].make(1000).eval()
    zoo.load_native(fresh, zoo.export_zoo(*key, w), key[0])
    x32 = torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        assert torch.equal(fresh(x32), model(x32))


ONNX_KEYS = [("torchvision", "mnasnet0_5"), ("timm", "lcnet_035"), ("timm", "mobilenetv4_conv_small_035")]
ONNX_KEYS += [("timm", "semnasnet_050"), ("timm", "mnasnet_small")] if profiles.SLOW else []


@pytest.mark.parametrize("key", ONNX_KEYS, ids=[f"{z}-{n}" for z, n in ONNX_KEYS])
def test_torch_onnx_export_of_the_twin_imports_as_the_zoo_model(key, tmp_path):
    pytest.importorskip("onnxruntime")
    import torch
    model, _ = calibrated(key)
    path = tmp_path / f"{key[1]}.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 64, 64), str(path), dynamo=False,
                      dynamic_axes={"input": {0: "n"}}, input_names=["input"])
    graph, w, info = zoo.import_zoo(*key, str(path), input_size=64)
    source = graph.meta["provenance"]["source"]
    assert info["arch"] == zoo.ZOO[key].arch and source["format"] == "onnx" and source["name"] == key[1]
    x = np.random.default_rng(6).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert rel_error(lightnets.reference.run(graph, w, x.astype(np.float64)), want) <= 1e-4


@pytest.mark.skipif(not profiles.SLOW, reason="~40 s: LIGHTNETS_SLOW=1")
def test_torch_onnx_export_of_timm_ghostnetv2_imports_through_its_resize(tmp_path):
    """The file holds torch's nearest Resize (asymmetric, floor) where the graph has resize_nearest. timm's own BN
    statistics: with data-calibrated ones (running variances ~1e-8) the twin's float32 is 0.29 off its float64, so a
    float32 file cannot be held to 1e-4 there (measured: probe 1.5e-7, 1.9e-7 vs the twin)."""
    pytest.importorskip("onnxruntime")
    import torch
    key = ("timm", "ghostnetv2_100")
    model = zoo.ZOO[key].make(1000).eval()
    path = tmp_path / "ghostnetv2_100.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 64, 64), str(path), dynamo=False,
                      dynamic_axes={"input": {0: "n"}}, input_names=["input"])
    graph, w, info = zoo.import_zoo(*key, str(path), input_size=64)
    assert info["arch"] == "ghostnet_v2_100" and info["probe"]["rel_error"] <= info["probe"]["tolerance"]
    x = np.random.default_rng(6).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert rel_error(lightnets.reference.run(graph, w, x.astype(np.float64)), want) <= 1e-5
