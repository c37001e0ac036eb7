"""The spec alone (numpy only): ops, graph IR, reference, weights, registry, errors, packaging rules."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lightnets
from lightnets import errors, ops, reference, weights
from lightnets.graph import Graph, GraphBuilder, Node

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("torch", "tensorflow", "keras", "paddle", "jax")


def test_import_lightnets_imports_no_framework():
    code = ("import sys, lightnets, lightnets.parity.cases, lightnets.cli; lightnets.list_models(); "
            "lightnets.get_spec('mobilenet_v2_100'); "
            f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_framework_import_outside_backends_but_the_zoo_constructors():
    """Framework and runtime packages are imported in backends/ only; the zoo's entry constructors
    (lightnets/zoo/entries.py, inside functions) are the one exception: they make the zoo's own models."""
    packages = {*FRAMEWORKS, "torchvision", "timm", "onnx", "onnxruntime", "ai_edge_litert", "tf2onnx", "paddle2onnx"}
    offenders = []
    for path in [*(ROOT / "lightnets").rglob("*.py"), *(ROOT / "parity").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        top_level = set(tree.body)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if not any(n.split(".")[0] in packages for n in names):
                continue
            allowed = path == ROOT / "lightnets" / "zoo" / "entries.py" and node not in top_level
            if not allowed:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_no_backend_names_an_architecture():
    pattern = re.compile(r"shufflenet|mobilenet|ghostnet|mnasnet|efficientnet|lcnet|mobileone|repghost", re.I)
    offenders = [f"{p.name}:{i}" for p in (ROOT / "backends").rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


# --- ops ------------------------------------------------------------------------------------
def test_attrs_are_normalized_and_defaulted():
    a = ops.normalize_attrs("conv2d", {"out_channels": 8, "kernel": 3, "pads": 1})
    assert a == {"out_channels": 8, "kernel": (3, 3), "stride": (1, 1), "pads": (1, 1, 1, 1),
                 "padding": "explicit", "dilation": (1, 1), "groups": 1, "bias": False}


@pytest.mark.parametrize("op,attrs,message", [
    ("conv3d", {}, "unknown op 'conv3d'"),
    ("conv2d", {"kernel": 3}, "missing required attribute 'out_channels'"),
    ("conv2d", {"out_channels": 4, "kernel": 3, "pad": 1}, "unknown attribute(s) ['pad']"),
    ("conv2d", {"out_channels": 4, "kernel": 3, "padding": "valid"}, "must be one of explicit, same"),
    ("conv2d", {"out_channels": 4, "kernel": 3, "padding": "same", "pads": 1}, "given with padding='same'"),
    ("conv2d", {"out_channels": 0, "kernel": 3}, "must be > 0"),
    ("conv2d", {"out_channels": 4, "kernel": (3, 3, 3)}, "must be an int or 2 ints"),
    ("conv2d", {"out_channels": 4, "kernel": 3, "bias": 1}, "must be of type bool"),
    ("activation", {"kind": "gelu"}, "must be one of relu, relu6"),
    ("dropout", {"rate": 1.0}, "must be in [0, 1)"),
    ("batch_norm", {"eps": float("nan")}, "must be of type float"),
])
def test_bad_attrs_are_rejected(op, attrs, message):
    with pytest.raises(errors.SpecError) as e:
        ops.normalize_attrs(op, attrs)
    assert message in str(e.value)


def test_shape_inference_rejects_bad_graphs():
    g = GraphBuilder("t", (6, 8, 8))
    with pytest.raises(errors.SpecError, match="divisible by groups 4"):
        g.add("c", "conv2d", "input", out_channels=8, kernel=1, groups=4)
    with pytest.raises(errors.SpecError, match="too small"):
        g.add("c", "conv2d", "input", out_channels=8, kernel=11)
    with pytest.raises(errors.SpecError, match="flatten only after global_avg_pool"):
        g.add("f", "flatten", "input")
    with pytest.raises(errors.SpecError, match="not divisible by groups 4"):
        g.add("s", "channel_shuffle", "input", groups=4)
    with pytest.raises(errors.SpecError, match="takes 2 input"):
        g.add("a", "add", ["input"])


def test_graph_validation_names_the_problem():
    n = lambda name, inputs: Node(name, "activation", inputs, {"kind": "relu"})  # noqa: E731
    with pytest.raises(errors.SpecError, match="duplicate node name 'a'"):
        Graph("g", (3, 8, 8), (n("a", ["input"]), n("a", ["input"])))
    with pytest.raises(errors.SpecError, match="dangling input"):
        Graph("g", (3, 8, 8), (n("a", ["b"]), n("b", ["a"])))
    with pytest.raises(errors.SpecError, match="may not be a prefix"):
        Graph("g", (3, 8, 8), (n("a", ["input"]), n("a.b", ["a"])))
    with pytest.raises(errors.SpecError, match="dotted path"):
        n("a b", ["input"])


def test_graph_json_round_trip_and_malformed_json():
    g = lightnets.get_spec("mobilenet_v2_100")
    text = g.to_json()
    assert Graph.from_json(text) == g
    assert Graph.from_json(text).to_json() == text
    d = json.loads(text)
    d["nodes"][3]["op"] = "conv9d"
    with pytest.raises(errors.SpecError, match="unknown op 'conv9d'"):
        Graph.from_json(json.dumps(d))
    with pytest.raises(errors.SpecError, match="not valid JSON"):
        Graph.from_json(text[:100])
    d = json.loads(text)
    del d["nodes"][0]["op"]
    with pytest.raises(errors.SpecError, match="malformed"):
        Graph.from_json(json.dumps(d))


def test_graph_is_frozen():
    g = lightnets.get_spec("mobilenet_v1_025")
    with pytest.raises(AttributeError):
        g.name = "x"
    with pytest.raises(TypeError):
        g.nodes[0].attrs["groups"] = 2


# --- reference ------------------------------------------------------------------------------
def _naive_conv(x, w, stride, pads, groups):
    """Direct loop convolution, independent of the reference's im2col formulation."""
    t, b, l, r = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
    n, c, h, wd = xp.shape
    o, cg, kh, kw = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    y = np.zeros((n, o, ho, wo))
    for oc in range(o):
        gi = oc // (o // groups)
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, gi * cg:(gi + 1) * cg, i * stride:i * stride + kh, j * stride:j * stride + kw]
                y[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3))
    return y


@pytest.mark.parametrize("groups,stride,pads", [(1, 1, (1, 1, 1, 1)), (2, 2, (0, 1, 0, 1)), (4, 2, (2, 1, 0, 3))])
def test_reference_conv_matches_naive_loop(groups, stride, pads):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 7, 6))
    g = GraphBuilder("c", (4, 7, 6))
    g.add("c", "conv2d", "input", out_channels=8, kernel=3, stride=stride, pads=pads, groups=groups)
    graph = g.build()
    w = weights.init_weights(graph, seed=3)
    np.testing.assert_allclose(reference.run(graph, w, x), _naive_conv(x, w["c.weight"], stride, pads, groups),
                               rtol=1e-12, atol=1e-12)


def test_channel_shuffle_is_the_paper_permutation_not_its_inverse():
    x = np.arange(6, dtype=float).reshape(1, 6, 1, 1)
    y = reference.channel_shuffle(x, 2)[0, :, 0, 0]
    assert y.tolist() == [0, 3, 1, 4, 2, 5]  # view(2, 3).T: out[j*g + i] = in[i*C/g + j]
    inverse = x.reshape(1, 3, 2, 1, 1).transpose(0, 2, 1, 3, 4).reshape(6)  # seed 000's (C/g, g) order
    assert inverse.tolist() == [0, 2, 4, 1, 3, 5] != y.tolist()


def test_avg_pool_pad_counting_differs_as_documented():
    """docs/design.md §2: 4x4 ones, 3x3/2 pad 1: counting pads gives 4/9 in the corner, excluding gives 1."""
    out = {}
    for include in (True, False):
        g = GraphBuilder("p", (1, 4, 4))
        g.add("p", "avg_pool2d", "input", kernel=3, stride=2, pads=1, count_include_pad=include)
        out[include] = reference.run(g.build(), {}, np.ones((1, 1, 4, 4)))[0, 0, 0, 0]
    assert out[True] == pytest.approx(4 / 9) and out[False] == pytest.approx(1.0)


def test_activation_formulas():
    x = np.linspace(-8, 8, 161)
    a = reference.ACTIVATIONS
    assert np.array_equal(a["hardsigmoid"](x), np.clip(x + 3, 0, 6) / 6)
    assert np.array_equal(a["hardswish"](x), x * np.clip(x + 3, 0, 6) / 6)
    np.testing.assert_allclose(a["sigmoid"](x), 1 / (1 + np.exp(-x)), rtol=1e-15)
    assert a["relu6"](np.array([7.0]))[0] == 6.0


def test_reference_returns_every_node():
    g = lightnets.get_spec("mobilenet_v1_025", input_size=32, num_classes=5)
    out = reference.run(g, weights.init_weights(g), np.zeros((1, 3, 32, 32)), return_all=True)
    assert list(out) == [n.name for n in g.nodes]
    assert all(out[k].shape[1:] == g.shapes[k] for k in out)


@pytest.mark.parametrize("shape,message", [((3, 32, 32), "4-D NCHW"), ((1, 32, 32, 3), "the model expects 3"),
                                           ((1, 3, 16, 16), "is too small for graph"),
                                           ((1, 3, 40, 40), "is fixed to 32x32")])
def test_reference_input_errors(shape, message):
    g = lightnets.get_spec("mobilenet_v1_025_keras", input_size=32)
    g = Graph(g.name, g.input_shape, g.nodes, {**g.meta, "fixed_size": shape[2] > 32})
    with pytest.raises(errors.InputShapeError) as e:
        reference.run(g, weights.init_weights(g), np.zeros(shape))
    assert message in str(e.value)


@pytest.mark.parametrize("model_id", ["mobilenet_v2_050_keras", "mobilenet_v3_small_075_keras",
                                      "mobilenet_v1_025_keras", "shufflenet_v2_050", "ghostnet_050"])
def test_same_padding_follows_the_input_size(model_id):
    """A graph built at one size runs at another exactly as the graph built at that size (TF "same" pads are
    a rule resolved by shape inference, not numbers baked for the build size)."""
    g64 = lightnets.get_spec(model_id, input_size=64)
    w = weights.init_weights(g64)
    for size in (65, 70, 96):
        x = np.random.default_rng(size).standard_normal((1, 3, size, size))
        want = reference.run(lightnets.get_spec(model_id, input_size=size), w, x)
        np.testing.assert_array_equal(reference.run(g64, w, x), want)
    assert g64.shapes_at(65, 65)["stem.conv"] == (g64.shapes["stem.conv"][0], 33, 33)


def test_same_pads_are_tf_same():
    assert ops.same_pads(10, 3, 2) == (0, 1) and ops.same_pads(9, 3, 2) == (1, 1)
    assert ops.same_pads(12, 5, 2) == (1, 2) and ops.same_pads(8, 3, 1) == (1, 1)
    assert ops.same_pads(12, 3, 1, 2) == (2, 2) and ops.same_pads(5, 1, 2) == (0, 0)
    a = ops.normalize_attrs("conv2d", {"out_channels": 4, "kernel": 5, "stride": 2, "padding": "same"})
    assert ops.static_pads(a) is None and ops.effective_pads(a, (224, 225)) == (1, 2, 2, 2)


def test_version_1_graph_json_with_baked_tf_pads_is_fixed_size():
    g = lightnets.get_spec("mobilenet_v1_025_keras", input_size=32)
    d = json.loads(g.to_json())
    d["version"] = 1
    for n in d["nodes"]:
        n["attrs"].pop("padding", None)
        if n["op"] == "conv2d":
            node = g.node(n["name"])
            n["attrs"]["pads"] = list(ops.effective_pads(dict(node.attrs), g.in_shapes(node)[0][1:]))
    old = Graph.from_json(json.dumps(d))
    assert old.fixed_size and not g.fixed_size
    w = weights.init_weights(g)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
    np.testing.assert_array_equal(reference.run(old, w, x), reference.run(g, w, x))


# --- weights --------------------------------------------------------------------------------
def test_init_weights_is_deterministic_and_bn_is_not_identity():
    g = lightnets.get_spec("mobilenet_v1_025")
    a, b = weights.init_weights(g, 7), weights.init_weights(g, 7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.allclose(a["stem.bn.mean"], 0) and not np.allclose(a["stem.bn.var"], 1)
    assert list(a) == [p.name for p in g.params]


def test_check_weights_names_every_bad_key():
    g = lightnets.get_spec("mobilenet_v1_025")
    w = weights.init_weights(g)
    del w["stem.conv.weight"]
    w["bogus.weight"] = np.zeros(1)
    w["head.fc.bias"] = np.zeros(3)
    w["stem.bn.gamma"] = np.full_like(w["stem.bn.gamma"], np.nan)
    w["stem.bn.beta"] = w["stem.bn.beta"].astype(np.int64)
    with pytest.raises(errors.WeightsError) as e:
        weights.check_weights(g, w)
    msg = str(e.value)
    for part in ("missing keys ['stem.conv.weight']", "unexpected keys ['bogus.weight']",
                 "head.fc.bias has shape (3,), expected (1000,)", "stem.bn.gamma contains NaN",
                 "stem.bn.beta has dtype int64"):
        assert part in msg


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_weights_save_load_round_trip(tmp_path, suffix):
    g = lightnets.get_spec("mobilenet_v1_025")
    w = weights.init_weights(g)
    path = weights.save(w, tmp_path / f"w{suffix}")
    back = weights.load(path)
    assert list(back) == list(w) or set(back) == set(w)
    assert all(np.array_equal(back[k], w[k]) and back[k].dtype == w[k].dtype for k in w)
    assert [p.name for p in tmp_path.iterdir()] == [f"w{suffix}"]  # no temp file left


def test_truncated_file_is_a_clear_error(tmp_path):
    g = lightnets.get_spec("mobilenet_v1_025")
    path = weights.save(weights.init_weights(g), tmp_path / "w.safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(errors.FileFormatError, match="truncated or corrupt"):
        weights.load(path)


def test_save_into_missing_directory_writes_nothing(tmp_path):
    with pytest.raises(errors.LightnetsError, match="does not exist"):
        weights.save({"a": np.zeros(2)}, tmp_path / "nope" / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_npz_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(errors.FileFormatError):
        weights.load(path)


# --- registry and api -----------------------------------------------------------------------
def test_unknown_model_suggests_close_names():
    with pytest.raises(errors.UnknownModelError) as e:
        lightnets.get_spec("mobilenet_v2_10")
    assert "unknown model id 'mobilenet_v2_10'" in str(e.value) and "'mobilenet_v2_100'" in str(e.value)


def test_duplicate_registration_raises():
    from lightnets import registry
    registry.list_models()  # loads the families
    with pytest.raises(errors.SpecError, match="already registered"):
        registry.register("mobilenet_v2_100", "x", lambda **k: None)


@pytest.mark.parametrize("kwargs,message", [({"num_classes": 0}, "num_classes must be a positive int"),
                                            ({"input_size": 16}, "input_size must be an int >= 32")])
def test_bad_spec_arguments(kwargs, message):
    with pytest.raises(errors.SpecError, match=message):
        lightnets.get_spec("mobilenet_v2_100", **kwargs)


def test_unknown_backend_and_dtype():
    with pytest.raises(errors.UnknownBackendError, match="choose one of torch, keras, paddle"):
        lightnets.build("mobilenet_v1_025", backend="jax")
    with pytest.raises(errors.LightnetsError, match="dtype 'float16' is not supported"):
        lightnets.build("mobilenet_v1_025", dtype="float16")


def test_missing_framework_names_the_extra():
    code = ("import sys; sys.modules['paddle'] = None\n"
            "import importlib.util as u; real = u.find_spec\n"
            "u.find_spec = lambda n, *a: None if n == 'paddle' else real(n, *a)\n"
            "import lightnets\n"
            "try:\n    lightnets.build('mobilenet_v1_025', backend='paddle')\n"
            "except lightnets.errors.BackendNotInstalledError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'lightnets[paddle]'" in out


def test_bad_weights_fail_before_any_framework_is_touched():
    g = lightnets.get_spec("mobilenet_v1_025")
    w = weights.init_weights(g)
    w.pop("head.fc.weight")
    code = ("import sys, lightnets, numpy as np\n"
            "from lightnets import weights\n"
            "g = lightnets.get_spec('mobilenet_v1_025'); w = weights.init_weights(g); w.pop('head.fc.weight')\n"
            "try:\n    lightnets.build(g, backend='torch', weights=w)\n"
            "except lightnets.errors.WeightsError as e:\n    print('torch' in sys.modules, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False") and "missing keys ['head.fc.weight']" in out


def test_every_op_with_parameters_has_a_weight_kind_the_importers_know():
    """ops.OpSchema.weight_kind is the one table of weight kinds: every op that carries parameters in a registered
    graph names one, and the file importers' layer kinds are those (lightnets.artifacts.KINDS)."""
    from lightnets import artifacts, registry

    graphs = [registry.get_spec(m) for m in registry.list_models()]
    with_params = {g.node(p.name.rsplit(".", 1)[0]).op for g in graphs for p in g.params}
    assert with_params == {"conv2d", "batch_norm", "linear"}
    assert {ops.OPS[o].weight_kind for o in with_params} == set(ops.WEIGHT_KINDS) == set(artifacts.KINDS)
    assert all(s.weight_kind is None for s in ops.OPS.values() if s.name not in with_params)
