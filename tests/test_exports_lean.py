"""Our exports are lean (issue 25): op counts in the written ONNX and TFLite files, deterministic and cheap.

ONNX (every default bench model's structure, at its smallest width and 32 px): Transpose and Reshape only in
channel shuffles (4-D: Reshape, Transpose, Reshape), hard-swish / hard-sigmoid as ONNX's own ops (opset >= 14); the
inference form (batch norms folded, what ``lightnets.optimize`` runs): no BatchNormalization, no Identity, GhostNet's
ghost concats kept as their pieces (``lightnets.transforms.split_concats``; the part convs' weights are Slices of the
canonical initializers, which ONNX Runtime folds at load); the plain export keeps every IR node a tensor.
TFLite: one small graph with every structure of those models (stride-2 conv, hard-swish,
SE with hard-sigmoid, ShuffleNetV2 units, ghost modules with a residual, the head): NHWC-native (a TRANSPOSE only in
the channel shuffle, no tensor above 4-D), HARD_SWISH as the builtin, the ghost concats gone; the default models
themselves with LIGHTNETS_SLOW=1 (a conversion each, ~30 s).
"""

import importlib.util
from collections import Counter

import numpy as np
import pytest
from keras_apps import TFLITE_CONVERTER
from profiles import SLOW

import lightnets
from lightnets import reference
from lightnets import transforms as T
from lightnets.graph import GraphBuilder

ONNX = pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx is not installed")
ORT = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")


def tflite_converter(test):
    for mark in TFLITE_CONVERTER:
        test = mark(test)
    return test
# the default bench models (lightnets.bench.DEFAULT_MODELS) and the smallest id of the same structure
SMALL = {"mobilenet_v2_100": "mobilenet_v2_035", "mobilenet_v3_large_100": "mobilenet_v3_large_075",
         "shufflenet_v2_100": "shufflenet_v2_050", "ghostnet_100": "ghostnet_050"}
MODELS = tuple(SMALL) if SLOW else tuple(SMALL.values())


def _weights(graph, seed: int = 0) -> dict:
    """Random weights (BN variances positive): the counts do not read them, and init_weights takes ~1 s a model."""
    rng = np.random.default_rng(seed)
    return {p.name: np.abs(rng.standard_normal(p.shape)) + 0.5 if p.name.endswith(".var") else
            rng.standard_normal(p.shape) * 0.1 for p in graph.params}


def _forms(graph):
    w = _weights(graph)
    return {"plain": (graph, w), "fast": T.inference_form(graph, w)}


def _ir(graph) -> Counter:
    """IR op counts, activations by kind."""
    return Counter(n.attrs["kind"] if n.op == "activation" else n.op for n in graph.nodes)


def tiny_graph(size: int = 16):
    """Every structure of the default bench models in a few nodes."""
    b = GraphBuilder("tiny", (3, size, size))
    x = b.conv_bn_act("stem", "input", 16, 3, stride=2, act="hardswish")  # explicit pads, stride 2
    # ShuffleNetV2 stride-1 unit: split, branch, concat, shuffle
    a = b.add("s.a", "slice_channels", x, start=0, stop=8)
    c = b.add("s.c", "slice_channels", x, start=8, stop=16)
    c = b.conv_bn_act("s.pw", c, 8, 1)
    c = b.conv_bn_act("s.dw", c, 8, 3, groups=8, act=None)
    x = b.add("s.shuffle", "channel_shuffle", b.add("s.cat", "concat", [a, c]), groups=2)
    # ghost bottleneck: ghost(relu) -> SE(hard-sigmoid) -> ghost -> + shortcut(x)
    p = b.conv_bn_act("g1.primary", x, 12, 1)
    y = b.add("g1.concat", "concat", [p, b.conv_bn_act("g1.cheap", p, 12, 3, groups=12)])
    se = b.add("se.pool", "global_avg_pool", y)
    se = b.add("se.act", "activation", b.add("se.fc1", "conv2d", se, out_channels=8, kernel=1, bias=True),
               kind="relu")
    se = b.add("se.gate", "activation", b.add("se.fc2", "conv2d", se, out_channels=24, kernel=1, bias=True),
               kind="hardsigmoid")
    y = b.add("se.scale", "mul", [y, se])
    p = b.conv_bn_act("g2.primary", y, 8, 1, act=None)
    y = b.add("g2.concat", "concat", [p, b.conv_bn_act("g2.cheap", p, 8, 3, groups=8, act=None)])
    x = b.add("add", "add", [y, b.conv_bn_act("shortcut", x, 16, 1, act=None)])  # a conv shortcut: cut in two
    x = b.conv_bn_act("head.conv", x, 32, 1, act="hardswish")
    b.classifier(x, 10, dropout=0.2)
    return b.build()


# --- the transform ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_id", ["tiny", "ghostnet_050"])
def test_split_concats_computes_the_same_function(model_id):
    graph = tiny_graph() if model_id == "tiny" else lightnets.spec(model_id, input_size=32)
    x = np.random.default_rng(0).standard_normal((2, *graph.input_shape))
    for form, (g, w) in _forms(graph).items():
        lean, lw, sources = T.split_concats(g, w)
        assert lean.num_params() == g.num_params() and lean.output_names == g.output_names, form
        got, want = reference.run(lean, lw, x), reference.run(g, w, x)
        assert np.abs(got - want).max() <= 1e-13 * np.abs(want).max(), form
        for part, (src, out, inp) in sources.items():  # each part weight is its slice of a canonical weight
            want_part = w[src][out[0]:out[1]] if inp is None else w[src][out[0]:out[1], inp[0]:inp[1]]
            assert np.array_equal(lw[part], want_part), part
        concats = _ir(lean)["concat"]
        assert concats < _ir(g)["concat"], form
    if model_id == "tiny":  # the ghost concats go; the shuffle unit's concat stays (a shuffle reads it)
        assert concats == 1


def test_split_concats_leaves_graphs_without_them_alone():
    g = lightnets.spec("mobilenet_v2_035", input_size=32)
    w = _weights(g)
    assert T.split_concats(g, w)[0] is g


# --- ONNX ---------------------------------------------------------------------------------------------
def onnx_ops(graph, weights, **kw) -> Counter:
    from lightnets.backends.onnx_export import to_onnx

    return Counter(n.op_type for n in to_onnx(graph, weights, **kw).graph.node)


@ONNX
@pytest.mark.parametrize("model_id", MODELS)
def test_onnx_export_is_lean(model_id):
    from lightnets.backends.onnx_export import OPSET

    assert OPSET >= 14  # HardSwish is an ONNX op from opset 14
    for form, (g, w) in _forms(lightnets.spec(model_id, input_size=32)).items():
        ops, ir = onnx_ops(g, w), _ir(g)
        lean = _ir(T.split_concats(g, w)[0]) if form == "fast" else ir  # plain: every IR node a tensor
        shuffles = ir["channel_shuffle"]
        assert ops["Identity"] == (0 if form == "fast" else ir["dropout"]), form
        assert (ops["Transpose"], ops["Reshape"], ops["Shape"]) == (shuffles, 2 * shuffles, shuffles), form
        # (an SE gate over a concat's pieces is cut in two: one hard-sigmoid per piece)
        assert (ops["HardSwish"], ops["HardSigmoid"]) == (lean["hardswish"], lean["hardsigmoid"]), form
        assert ops["Div"] == ops["Sigmoid"] == 0, form  # no written-out activation
        assert ops["BatchNormalization"] == (lean["batch_norm"] if form == "plain" else 0), form
        if ir["channel_shuffle"] or form == "plain":  # ShuffleNetV2: every concat feeds a shuffle
            assert ops["Concat"] == ir["concat"], form
        else:  # GhostNet: 32 ghost concats -> the 10 whose readers cannot take pieces
            assert ops["Concat"] <= ir["concat"] // 3, form
    # float64 and return_all keep every node
    assert onnx_ops(g, w, return_all=True)["Concat"] == ir["concat"]


@ORT
def test_lean_onnx_runs_and_its_weight_slices_fold_at_load(tmp_path):
    import onnxruntime as ort

    from lightnets.backends.onnx_export import to_onnx

    g, w = _forms(tiny_graph())["fast"]
    model = to_onnx(g, w)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "folded.onnx")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, *g.input_shape))
    got, want = sess.run(None, {"input": x.astype(np.float32)})[0], reference.run(g, w, x)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    import onnx

    folded = Counter(n.op_type for n in onnx.load(str(tmp_path / "folded.onnx")).graph.node)
    assert folded["Slice"] == _ir(g)["slice_channels"]  # the part weights' Slices are constants now


# --- TFLite -------------------------------------------------------------------------------------------
def tflite_ops(graph, weights, static_hw=False):
    """(op counts, the largest tensor rank) of the float32 TFLite file of ``graph``."""
    from lightnets.backends import tflite as TL

    cls, _ = TL.interpreter_class()
    w32 = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    interp = cls(model_content=TL.convert(graph, w32, static_hw=static_hw))
    ops = Counter(d["op_name"] for d in interp._get_ops_details())
    return ops, max(len(t["shape"]) for t in interp.get_tensor_details())


def _check_tflite(graph, weights, static_hw=False):
    ops, rank = tflite_ops(graph, weights, static_hw)
    lean, ir = _ir(T.split_concats(graph, weights)[0]), _ir(graph)
    assert rank <= 4  # no 5-D tensor anywhere (the channel shuffle: 3-D reshape, transpose)
    assert ops["TRANSPOSE"] == ir["channel_shuffle"]  # NHWC-native: a transpose in the shuffle only
    assert ops["HARD_SWISH"] == ir["hardswish"]
    assert ops["CONCATENATION"] == lean["concat"] <= ir["concat"]  # ghost concats in pieces, shuffle units' kept
    return ops


@tflite_converter
def test_tflite_export_is_lean():
    g, w = _forms(tiny_graph())["fast"]
    ops = _check_tflite(g, w, static_hw=True)  # a fixed-size file (export --static): its shuffle reshapes are constant
    assert ops["CONCATENATION"] == 1
    # a shape read at run time (SHAPE -> STRIDED_SLICE -> PACK) only in keras' Flatten of the head (its batch), none
    # in the shuffle (before: one per shuffle)
    assert ops["SHAPE"] == ops["PACK"] == _ir(g)["flatten"] == 1


@tflite_converter
@pytest.mark.skipif(not SLOW, reason="a TFLite conversion per default model (~30 s each): LIGHTNETS_SLOW=1")
@pytest.mark.parametrize("model_id", SMALL)
def test_tflite_export_of_default_models_is_lean(model_id):
    _check_tflite(*_forms(lightnets.spec(model_id, input_size=64))["fast"])


@ONNX
def test_export_writes_every_node_unless_lean(tmp_path):
    """lightnets.export writes every IR node (the file builds back through the importer); lean=True writes what the
    runtime runs (the ghost concats in pieces)."""
    import onnx

    g, w = _forms(tiny_graph())["fast"]
    counts = {}
    for lean in (False, True):
        path = lightnets.export((g, w), to="onnx", path=tmp_path / f"{lean}.onnx", lean=lean)
        counts[lean] = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert (counts[False]["Concat"], counts[True]["Concat"]) == (_ir(g)["concat"], 1)
    assert (counts[False]["Identity"], counts[True]["Identity"]) == (1, 0)
