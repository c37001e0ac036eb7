"""Backbones (build/spec(features=True, out_indices=)): multi-output graphs, feature_info against timm's
features_only models (same dicts, same shapes, same numbers with ported weights), every backend's outputs
against the float64 reference, the JSON of a multi-output graph, the summary --features table."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import profiles
import pytest

import lightnets
from lightnets import cli, reference, registry
from lightnets import features as FT
from lightnets import weights as W
from lightnets.errors import LightnetsError, SpecError
from lightnets.graph import Graph, GraphBuilder
from lightnets.parity.tolerances import MODEL_REL, rel_error
from lightnets.zoo import TIMM

TIMM_IDS = sorted(k[1] for k in profiles.every_zoo_key(TIMM, arch=lambda k: TIMM[k].arch)
                  if TIMM[k].form == "train")  # not the "<name>_reparam" twins (timm's <name> reparameterized)
SIZE = 64


def _x(size=SIZE, batch=2, w=None, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, w or size))


def _features_and_weights(arch, size=SIZE, seed=1, **kw):
    full = lightnets.spec(arch, input_size=size, **kw)
    w = W.init_weights(full, seed=seed)
    g = FT.feature_graph(full)
    return g, w, {p.name: w[p.name] for p in g.params}


# --- the IR: outputs, JSON, reference ------------------------------------------------------------
def _tiny(outputs=None):
    g = GraphBuilder("tiny", (2, 8, 8))
    a = g.add("a", "activation", "input", kind="relu")
    b = g.add("b", "conv2d", a, out_channels=3, kernel=3, stride=2, pads=1)
    g.add("c", "activation", b, kind="sigmoid")
    return g.build(outputs)


def test_outputs_json_round_trip_and_absent_outputs_mean_the_last_node():
    g = _tiny(("a", "c"))
    d = json.loads(g.to_json())
    assert d["version"] == 2 and d["outputs"] == ["a", "c"]
    back = Graph.from_json(g.to_json())
    assert back.outputs == ("a", "c") and back.multi_output and back.output_shapes == [(2, 8, 8), (3, 4, 4)]
    single = _tiny()
    assert "outputs" not in json.loads(single.to_json()) and Graph.from_json(single.to_json()).outputs is None
    assert single.output == "c" and not single.multi_output
    with pytest.raises(SpecError, match="use graph.output_names"):
        _ = g.output
    with pytest.raises(SpecError, match="not nodes"):
        _tiny(("a", "nope"))
    with pytest.raises(SpecError, match="twice"):
        _tiny(("a", "a"))
    d["outputs"] = "c"
    with pytest.raises(SpecError, match="list of node names"):
        Graph.from_json(json.dumps(d))


def test_reference_returns_a_list_and_keeps_every_output():
    g = _tiny(("a", "c"))
    w = W.init_weights(g, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8))
    every = reference.run(g, w, x, return_all=True)
    ys = reference.run(g, w, x)
    assert isinstance(ys, list) and len(ys) == 2
    np.testing.assert_array_equal(ys[0], every["a"])
    np.testing.assert_array_equal(ys[1], every["c"])
    one = reference.run(_tiny(("c",)), w, x)
    assert isinstance(one, list) and len(one) == 1
    out, stats = reference.train_forward(g, w, x)
    assert isinstance(out, list) and len(out) == 2 and stats == {}


# --- feature_info: framework-free, every id --------------------------------------------------------
@pytest.mark.parametrize("model_id", registry.list_models())
def test_every_id_has_five_stage_ends_at_strides_2_to_32(model_id):
    g = registry.get_spec(model_id)
    info = lightnets.feature_info(model_id)
    assert info.reduction() == [2, 4, 8, 16, 32]
    assert info.channels() == [g.shapes[n][0] for n in info.nodes()]
    assert [g.shapes[n][1] for n in info.nodes()] == [112, 56, 28, 14, 7]  # 224 px
    fg = lightnets.spec(model_id, features=True)
    assert fg.output_names == tuple(info.nodes()) and fg.meta["features"] == info.get_dicts()
    assert {p.name for p in fg.params} <= {p.name for p in g.params}
    assert not any(n.name.startswith("head.") and n.name != "head.conv" and not n.name.startswith("head.conv.")
                   for n in fg.nodes)


def test_shufflenet_rules():
    v2 = FT.feature_points(registry.get_spec("shufflenet_v2_100"))
    assert [(d["module"], d["node"], d["reduction"]) for d in v2] == [
        ("conv1", "stem.act", 2), ("maxpool", "stem.pool", 4), ("stage2", "stages.2.3.shuffle", 8),
        ("stage3", "stages.3.7.shuffle", 16), ("stage4", "stages.4.3.shuffle", 32), ("conv5", "head.conv.act", 32)]
    assert FT.default_indices(v2) == (0, 1, 2, 3, 5)  # conv5 ends the stride-32 resolution
    assert lightnets.feature_info("shufflenet_v2_100", out_indices=(2, 3, 4)).module_name() == [
        "stage2", "stage3", "stage4"]
    v1 = lightnets.feature_info("shufflenet_v1_g3_100")
    assert v1.module_name() == ["conv1", "maxpool", "stage2", "stage3", "stage4"]
    assert v1.channels() == [24, 24, 240, 480, 960]


def test_out_indices_select_in_feature_order_and_bad_ones_name_the_fix():
    info = lightnets.feature_info("mobilenet_v2_100", out_indices=(-1, 1))
    assert info.out_indices == (1, 4) and info.module_name() == ["blocks.1", "blocks.6"]
    g = lightnets.spec("mobilenet_v2_100", features=True, out_indices=(2,))
    assert g.output_names == ("blocks.5.add",) and g.nodes[-1].name == "blocks.5.add"
    for bad, match in (((5,), "0..4"), ((1, 1), "twice"), ((), "non-empty"), (2, "sequence of ints"),
                       ((1.0,), "sequence of ints")):
        with pytest.raises(SpecError, match=match):
            lightnets.spec("mobilenet_v2_100", features=True, out_indices=bad)
    with pytest.raises(LightnetsError, match="features=True"):
        lightnets.spec("mobilenet_v2_100", out_indices=(1,))
    with pytest.raises(SpecError, match="no lightnets family"):
        lightnets.spec(_tiny(), features=True)
    with pytest.raises(SpecError, match="already has outputs"):
        FT.feature_graph(g, (1,))


def test_include_top_false_and_other_sizes_give_the_same_backbone():
    a = lightnets.spec("ghostnet_100", features=True)
    b = lightnets.spec("ghostnet_100", features=True, include_top=False, num_classes=7)
    assert a.nodes == b.nodes and a.outputs == b.outputs
    shapes = a.shapes_at(97, 131)
    assert [shapes[o] for o in a.output_names] == [(16, 49, 66), (24, 25, 33), (40, 13, 17), (80, 7, 9),
                                                   (160, 4, 5)]


# --- timm features_only: same dicts, shapes and numbers ---------------------------------------------
@pytest.fixture(scope="module")
def timm_models():
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    out = {}
    for i, name in enumerate(TIMM_IDS):
        torch.manual_seed(i)
        model = timm.create_model(name, pretrained=False).eval()
        for m in model.modules():  # BN statistics and affine off their defaults, so the taps are checked
            if isinstance(m, torch.nn.BatchNorm2d):
                with torch.no_grad():
                    m.running_mean.normal_(0, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.2)
        feats = timm.create_model(name, pretrained=False, features_only=True).eval()
        sd = model.state_dict()
        # timm's FeatureListNet flattens ghostnet's blocks.N into blocks_N
        feats.load_state_dict({k: sd[k if k in sd else re.sub(r"^([a-z]+)_(\d+)\.", r"\1.\2.", k)]
                               for k in feats.state_dict()})
        out[name] = (model, feats)
    return out


def test_feature_info_equals_timm_for_every_timm_id(timm_models):
    for name in TIMM_IDS:
        entry = TIMM[("timm", name)]
        ours, theirs = lightnets.feature_info(entry.arch), timm_models[name][1].feature_info
        for mine, d in zip(ours.get_dicts(), theirs.get_dicts(), strict=True):
            assert {k: mine[k] for k in d} == d, (name, mine, d)
        assert ours.channels() == theirs.channels() and ours.reduction() == theirs.reduction(), name
        assert ours.module_name() == theirs.module_name(), name


def test_timm_features_have_the_same_shapes_and_numbers_with_ported_weights(timm_models):
    import torch

    x = _x(seed=3)
    worst = 0.0
    for name in TIMM_IDS:
        model, feats = timm_models[name]
        graph, w, _ = lightnets.import_zoo("timm", name, model, input_size=SIZE)
        fg = lightnets.spec(graph, features=True)
        with torch.no_grad():
            theirs = [t.numpy() for t in feats.double()(torch.from_numpy(x))]
        ours = reference.run(fg, {p.name: w[p.name] for p in fg.params}, x)
        assert [a.shape for a in ours] == [b.shape for b in theirs], name
        worst = max(worst, *(rel_error(a, b) for a, b in zip(ours, theirs, strict=True)))
        model_t = lightnets.build(graph, "torch", weights=w, dtype="float64", features=True)  # head weights dropped
        got = lightnets.run(model_t, x)
        assert max(rel_error(a, b) for a, b in zip(got, theirs, strict=True)) <= MODEL_REL["float64"], name
    assert worst <= MODEL_REL["float64"]


# --- backends: lists of native tensors, numbers against the reference -------------------------------
def test_paddle_features_are_a_list_and_match_the_reference():
    paddle = pytest.importorskip("paddle")
    for arch in ("shufflenet_v1_g3_050", "mobilenet_v3_small_075_keras"):
        g, w, fw = _features_and_weights(arch)
        model = lightnets.build(arch, "paddle", weights=w, input_size=SIZE, dtype="float64", features=True)
        x = _x(w=72)
        native = model(paddle.to_tensor(x))
        assert isinstance(native, list) and len(native) == len(g.output_names)
        for a, b in zip(lightnets.run(model, x), reference.run(g, fw, x), strict=True):
            assert rel_error(a, b) <= MODEL_REL["float64"]


def test_torch_features_list_inference_mode_and_weights_shared_by_name():
    torch = pytest.importorskip("torch")
    g, w, fw = _features_and_weights("ghostnet_050")
    x = _x(w=72)
    ref = reference.run(g, fw, x)
    for mode in ("train", "inference"):  # ghostnet's first map is the stem conv BEFORE its BN: never folded
        model = lightnets.build("ghostnet_050", "torch", weights=w, input_size=SIZE, dtype="float64", mode=mode,
                                features=True)
        with torch.no_grad():
            native = model(torch.from_numpy(x))
        shapes = g.shapes_at(SIZE, 72)
        assert isinstance(native, list) and all(isinstance(t, torch.Tensor) for t in native)
        assert [tuple(t.shape[1:]) for t in native] == [shapes[o] for o in g.output_names]
        for a, b in zip(lightnets.run(model, x), ref, strict=True):
            assert rel_error(a, b) <= MODEL_REL["float64"], mode
    # the backbone's weights are the classifier's by name; a backbone-only dict builds the same model
    model = lightnets.build("ghostnet_050", "torch", weights=fw, input_size=SIZE, dtype="float64", features=True)
    exported = lightnets.export_weights(model)
    assert set(exported) == set(fw) and all(np.array_equal(exported[k], w[k]) for k in fw)
    with pytest.raises(LightnetsError, match="unexpected keys"):
        lightnets.build("ghostnet_050", "torch", weights={**fw, "nope.weight": fw["stem.conv.weight"]},
                        input_size=SIZE, features=True)
    probe = [np.ones_like(y) for y in ref]
    grads = lightnets.load_backend("torch").gradients(model, x, probe)
    assert set(grads) == {p.name for p in g.params if p.trainable} | {"input"}


def test_torch_inference_mode_folds_a_bn_that_ends_a_stage_and_renames_the_output():
    pytest.importorskip("torch")
    g, w, fw = _features_and_weights("mobilenet_v2_035")
    assert g.output_names[0] == "blocks.0.project.bn"
    model = lightnets.build("mobilenet_v2_035", "torch", weights=w, input_size=SIZE, dtype="float64",
                            mode="inference", features=True)
    assert model.graph.outputs[0] == "blocks.0.project.conv" and len(model.graph.outputs) == 5
    for a, b in zip(lightnets.run(model, _x()), reference.run(g, fw, _x()), strict=True):
        assert rel_error(a, b) <= MODEL_REL["float64"]


def test_torch_features_at_another_size_with_same_padding():
    g, w, fw = _features_and_weights("mobilenet_v2_035_keras")  # padding="same": pads follow the size
    model = lightnets.build("mobilenet_v2_035_keras", "torch", weights=w, input_size=SIZE, dtype="float64",
                            features=True)
    x = _x(size=45, w=38)
    for a, b in zip(lightnets.run(model, x), reference.run(g, fw, x), strict=True):
        assert a.shape == b.shape and rel_error(a, b) <= MODEL_REL["float64"]


def test_onnxruntime_features_are_a_list():
    pytest.importorskip("onnxruntime")
    g, w, fw = _features_and_weights("shufflenet_v2_050")
    model = lightnets.build("shufflenet_v2_050", "onnxruntime", weights=w, input_size=SIZE, features=True)
    x = _x()
    got = lightnets.run(model, x.astype("float32"))
    assert isinstance(got, list) and len(got) == 5
    for a, b in zip(got, reference.run(g, fw, x), strict=True):
        assert rel_error(a, b) <= MODEL_REL["float32"]


def test_keras_features_are_a_multi_output_model_in_nhwc():
    pytest.importorskip("keras")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    g, w, fw = _features_and_weights("mobilenet_v3_large_075")
    model = lightnets.build("mobilenet_v3_large_075", "keras", weights=w, input_size=SIZE, dtype="float64",
                            features=True)
    assert len(model.outputs) == 5
    native = model.predict_on_batch(_x().transpose(0, 2, 3, 1))
    assert [y.shape[1:] for y in native] == [(s[1], s[2], s[0]) for s in g.output_shapes]  # NHWC
    for a, b in zip(lightnets.run(model, _x()), reference.run(g, fw, _x()), strict=True):
        assert rel_error(a, b) <= MODEL_REL["float64"]


def test_keras_jax_features_and_gradients_in_a_subprocess(tmp_path):
    """keras on jax: the multi-output model, gradients (jax.grad), and its .weights.h5 read by keras on tensorflow."""
    pytest.importorskip("jax")
    path = tmp_path / "jax.weights.h5"
    code = f"""
        import numpy as np, lightnets
        from lightnets import reference, weights as W, features as FT
        full = lightnets.spec("mobilenet_v1_025", input_size={SIZE})
        w = W.init_weights(full, seed=1)
        g = FT.feature_graph(full)
        fw = {{p.name: w[p.name] for p in g.params}}
        model = lightnets.build("mobilenet_v1_025", "keras", weights=w, input_size={SIZE}, features=True)
        x = np.random.default_rng(0).standard_normal((2, 3, {SIZE}, {SIZE}))
        ys = lightnets.run(model, x.astype("float32"))
        err = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(ys, reference.run(g, fw, x)))
        grads = lightnets.load_backend("keras").gradients(model, x.astype("float32"), [np.ones_like(y) for y in ys])
        lightnets.save_weights(model, {str(path)!r})
        print(len(model.outputs), err, len(grads))
    """
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    n, err, n_grads = int(out[-3]), float(out[-2]), int(out[-1])
    assert n == 5 and err <= MODEL_REL["float32"]
    assert n_grads == sum(p.trainable for p in lightnets.spec("mobilenet_v1_025", features=True).params) + 1
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    tf_model = lightnets.build(path, "keras")  # the same .weights.h5 (and its graph) on keras-tensorflow
    assert len(tf_model.outputs) == 5
    g, w, fw = _features_and_weights("mobilenet_v1_025")
    for a, b in zip(lightnets.run(tf_model, _x().astype("float32")), reference.run(g, fw, _x()), strict=True):
        assert rel_error(a, b) <= MODEL_REL["float32"]


# --- files and the CLI ---------------------------------------------------------------------------
def test_a_saved_backbone_rebuilds_as_a_backbone(tmp_path):
    pytest.importorskip("torch")
    model = lightnets.build("mobilenet_v1_025", "torch", input_size=SIZE, features=True, out_indices=(1, 3))
    path = tmp_path / "backbone.safetensors"
    lightnets.save_weights(model, path)
    again = lightnets.build(path, "torch")
    assert again.graph.outputs == model.graph.outputs == ("blocks.2.pw.act", "blocks.10.pw.act")
    x = _x().astype("float32")
    for a, b in zip(lightnets.run(again, x), lightnets.run(model, x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_summary_features_lists_the_stages(capsys):
    assert cli.main(["summary", "mobilenet_v3_small_100", "--features", "--size", "64"]) == 0
    out = capsys.readouterr().out
    for module, node in (("bn1", "stem.act"), ("blocks.0", "blocks.0.project.bn"), ("blocks.5", "head.conv.act")):
        assert module in out and node in out
    assert "576x2x2" in out and "head.fc" not in out
