"""A catalogue of bad inputs: each raises a LightnetsError subclass whose message names the problem AND
the fix, and nothing is written or changed.

Already covered in test_spec.py (not repeated here): unknown op / missing / unknown / non-positive /
wrong-length / wrong-type attrs, bad activation kind, dropout rate 1, NaN eps, groups not dividing
conv channels, kernel larger than the input, flatten before global_avg_pool, shuffle groups, add
arity, duplicate / dangling / prefix / bad node names, conv9d and truncated graph JSON, reference
input rank / channels / size, check_weights (missing, extra, shape, NaN, int dtype together),
truncated .safetensors, save into a missing directory, pickled .npz, misspelled id, duplicate
registration, num_classes 0, input_size 16, unknown backend, float16 dtype, missing paddle, bad
weights before any framework import (about 35).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lightnets
from lightnets import errors, provenance, reference, registry
from lightnets import weights as W
from lightnets.graph import Graph, GraphBuilder, Node

ROOT = Path(__file__).resolve().parents[1]
E = errors


def _small():
    return lightnets.get_spec("mobilenet_v1_025", input_size=32, num_classes=4)


def _folder_images(folder):
    from lightnets.export import folder_images

    return folder_images(folder, _small())


def _flatten_head():
    """A 5x5 conv without padding, flattened into a linear: the shapes fix the input to 5x5."""
    g = GraphBuilder("flat_head", (3, 5, 5))
    g.add("fc", "linear", g.add("flat", "flatten", g.add("conv", "conv2d", "input", out_channels=4, kernel=5)),
          out_features=2)
    return g.build()


def _tiny(h=16, w=16):
    """conv 7x7 without padding, then a 3x3 stride-2 max pool: needs an input of at least 9x9."""
    g = GraphBuilder("tiny", (3, h, w))
    x = g.add("conv", "conv2d", "input", out_channels=4, kernel=7)
    g.add("pool", "max_pool2d", x, kernel=3, stride=2)
    return g.build()


def _json(**changes):
    d = json.loads(_small().to_json())
    for path, value in changes.items():
        target, *keys = path.split("__")
        obj = d
        for k in [target, *keys][:-1]:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        last = [target, *keys][-1]
        if value is _DELETE:
            del obj[last]
        elif isinstance(obj, list):
            obj[int(last)] = value
        else:
            obj[last] = value
    return json.dumps(d)


_DELETE = object()


def _weights(**changes):
    g = _small()
    w = W.init_weights(g)
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is _DELETE:
            del w[k]
        else:
            w[k] = v(w[k]) if callable(v) else v
    return g, w


def _check(g_w):
    return W.check_weights(*g_w)


def _node(name="a", op="conv2d", inputs=("input",), **attrs):
    return Node(name, op, inputs, attrs)


def _graph(*nodes, shape=(6, 8, 8)):
    return Graph("g", shape, tuple(nodes))


def _relu(name, inputs):
    return Node(name, "activation", inputs, {"kind": "relu"})


def _builder_v1(groups, width):
    e = registry.entry("shufflenet_v1_g3_100")
    return e.builder(name="x", groups=groups, width=width, num_classes=10, input_size=32, include_top=True)


# (id, thunk, exception class, problem fragment, fix fragment)
CATALOGUE = [
    # --- model ids and spec arguments -------------------------------------------------------
    ("misspelled_id", lambda: lightnets.get_spec("mobilenet_v3_larg_100"), E.UnknownModelError,
     "unknown model id 'mobilenet_v3_larg_100'", "Did you mean 'mobilenet_v3_large_100'"),
    ("foreign_id", lambda: lightnets.get_spec("resnet50"), E.UnknownModelError,
     "unknown model id 'resnet50'", "lightnets list"),
    ("id_not_a_string", lambda: registry.get_spec(3), E.SpecError, "must be a string", "lightnets list"),
    ("arch_not_id_or_graph", lambda: lightnets.spec(3.5), E.LightnetsError, "arch must be", "model id or a Graph"),
    ("width_as_kwarg", lambda: registry.get_spec("mobilenet_v2_100", width=0.3), E.SpecError,
     "unsupported argument(s) ['width']", "mobilenet_v2_050"),
    ("groups_as_kwarg", lambda: registry.get_spec("shufflenet_v1_g3_100", groups=5), E.SpecError,
     "unsupported argument(s) ['groups']", "shufflenet_v1_g8_100"),
    ("family_groups_unsupported", lambda: _builder_v1(5, 1.0), E.SpecError, "got groups=5",
     "has groups [1, 2, 3, 4, 8]"),
    ("family_width_unsupported", lambda: _builder_v1(3, 0.3), E.SpecError, "width=0.3",
     "widths [0.5, 1.0, 1.5, 2.0]"),
    ("num_classes_negative", lambda: lightnets.get_spec("mobilenet_v1_025", num_classes=-3), E.SpecError,
     "got -3", "must be a positive int"),
    ("num_classes_bool", lambda: lightnets.get_spec("mobilenet_v1_025", num_classes=True), E.SpecError,
     "got True", "must be a positive int"),
    ("num_classes_float", lambda: lightnets.get_spec("mobilenet_v1_025", num_classes=10.0), E.SpecError,
     "got 10.0", "must be a positive int"),
    ("input_size_string", lambda: lightnets.get_spec("mobilenet_v1_025", input_size="224"), E.SpecError,
     "got '224'", "must be an int >= 32"),
    ("include_top_string", lambda: lightnets.get_spec("mobilenet_v1_025", include_top="no"), E.SpecError,
     "got 'no'", "must be True or False"),
    # --- ops and graphs -----------------------------------------------------------------------
    ("depthwise_groups_not_dividing_out", lambda: _graph(_node(out_channels=9, kernel=3, groups=6)), E.SpecError,
     "out_channels 9 must both be divisible by groups 6", "change the channel table or the groups"),
    ("shuffle_groups_not_dividing", lambda: _graph(Node("s", "channel_shuffle", ("input",), {"groups": 4})),
     E.SpecError, "6 channels are not divisible by groups 4", "choose groups that divide"),
    ("pool_pads_not_below_kernel",
     lambda: _graph(Node("p", "max_pool2d", ("input",), {"kernel": 2, "pads": (2, 0, 0, 0)})), E.SpecError,
     "pads (2, 0, 0, 0)", "must be smaller than the kernel"),
    ("linear_on_feature_map", lambda: _graph(Node("l", "linear", ("input",), {"out_features": 3})), E.SpecError,
     "must be a vector", "flatten it first"),
    ("mul_scale_wrong_shape", lambda: _graph(
        Node("g", "global_avg_pool", ("input",), {}), Node("f", "flatten", ("g",), {}),
        Node("m", "mul", ("input", "f"), {})), E.SpecError, "scale shape (6,)", "per-channel, as in SE"),
    ("concat_spatial_mismatch", lambda: _graph(
        Node("p", "max_pool2d", ("input",), {"kernel": 2, "stride": 2}), Node("c", "concat", ("input", "p"), {})),
     E.SpecError, "concat: inputs", "must be feature maps of one spatial size"),
    ("resize_nearest_to_a_vector", lambda: _graph(
        Node("g", "global_avg_pool", ("input",), {}), Node("f", "flatten", ("g",), {}),
        Node("r", "resize_nearest", ("input", "f"), {})), E.SpecError, "resize_nearest needs a (C, H, W) feature map",
     "put it before global_avg_pool/flatten"),
    ("slice_out_of_range", lambda: _graph(Node("s", "slice_channels", ("input",), {"start": 4, "stop": 9})),
     E.SpecError, "[4, 9) is not a non-empty range", "inside the 6 input channels"),
    ("cycle", lambda: _graph(_relu("a", ("b",)), _relu("b", ("a",))), E.SpecError,
     "node 'a' reads ['b']", "topological order / a cycle"),
    ("self_loop", lambda: _graph(_relu("a", ("a",))), E.SpecError, "node 'a' reads ['a']", "earlier node"),
    ("input_shape_zero", lambda: Graph("g", (3, 0, 8), (_relu("a", ("input",)),)), E.SpecError,
     "(3, 0, 8)", "must be 3 positive ints"),
    ("empty_graph", lambda: Graph("g", (3, 8, 8), ()), E.SpecError, "graph needs", "at least one node"),
    ("nodes_not_nodes", lambda: Graph("g", (3, 8, 8), ("relu",)), E.SpecError, "got str",
     "build them with Node(...) or GraphBuilder"),
    ("stride_bool", lambda: _node(out_channels=4, kernel=3, stride=True), E.SpecError,
     "conv2d.stride", "must be an int or 2 ints"),
    ("negative_pads", lambda: _node(out_channels=4, kernel=3, pads=(0, -1, 0, 0)), E.SpecError,
     "pads=(0, -1, 0, 0)", "must be >= 0"),
    ("momentum_zero", lambda: Node("b", "batch_norm", ("input",), {"momentum": 0.0}), E.SpecError,
     "momentum=0.0", "must be in (0, 1]"),
    ("eps_infinite", lambda: Node("b", "batch_norm", ("input",), {"eps": float("inf")}), E.SpecError,
     "batch_norm.eps", "must be of type float"),
    ("op_not_a_string", lambda: Node("a", ["conv2d"], ("input",), {}), E.SpecError, "got ['conv2d']",
     "op must be a string naming an op"),
    # --- graph JSON -----------------------------------------------------------------------------
    ("json_wrong_version", lambda: Graph.from_json(_json(version=3)), E.SpecError, "version 3 is not supported",
     "re-export it"),
    ("json_version_bool", lambda: Graph.from_json(_json(version=True)), E.SpecError, "version True",
     "re-export it"),
    ("json_no_format", lambda: Graph.from_json(_json(format=_DELETE)), E.SpecError, "lacks",
     "pass the text of Graph.to_json()"),
    ("json_not_an_object", lambda: Graph.from_json("[1, 2]"), E.SpecError, "lacks", "Graph.to_json()"),
    ("json_none", lambda: Graph.from_json(None), E.SpecError, "not valid JSON", "Graph.to_json()"),
    ("json_missing_nodes", lambda: Graph.from_json(_json(nodes=_DELETE)), E.SpecError,
     "missing or mistyped field 'nodes'", "every node needs name, op, inputs and attrs"),
    ("json_missing_inputs", lambda: Graph.from_json(_json(nodes__0__inputs=_DELETE)), E.SpecError,
     "missing or mistyped field 'inputs'", "every node needs"),
    ("json_string_kernel", lambda: Graph.from_json(_json(nodes__0__attrs__kernel="3")), E.SpecError,
     "conv2d.kernel", "must be an int or 2 ints"),
    ("json_float_pads", lambda: Graph.from_json(_json(nodes__0__attrs__pads=1.5)), E.SpecError,
     "conv2d.pads", "must be an int or 4 ints"),
    ("json_inputs_bare_string", lambda: Graph.from_json(_json(nodes__0__inputs="input")), E.SpecError,
     "got 'input'", "inputs must be a list of node names"),
    ("json_attrs_list", lambda: Graph.from_json(_json(nodes__0__attrs=[3])), E.SpecError,
     "got [3]", "attrs must be a mapping"),
    ("json_dangling_input", lambda: Graph.from_json(_json(nodes__2__inputs=["stem.nope"])), E.SpecError,
     "reads ['stem.nope']", "not the input or an earlier node"),
    ("json_duplicate_name", lambda: Graph.from_json(_json(nodes__1__name="stem.conv")), E.SpecError,
     "duplicate node name 'stem.conv'", "must be unique"),
    ("json_unknown_attr", lambda: Graph.from_json(_json(nodes__0__attrs__pad="same")), E.SpecError,
     "unknown attribute(s) ['pad']", "allowed:"),
    ("json_name_not_string", lambda: Graph.from_json(_json(name=5)), E.SpecError, "got 5",
     "name must be a string"),
    # --- inputs ---------------------------------------------------------------------------------
    ("input_complex", lambda: reference.check_input(_small(), np.zeros((1, 3, 32, 32), complex)),
     E.InputShapeError, "dtype complex128", "x.astype('float32')"),
    ("input_int", lambda: reference.check_input(_small(), np.zeros((1, 3, 32, 32), np.uint8)),
     E.InputShapeError, "dtype uint8", "scale uint8 images"),
    ("input_object", lambda: reference.check_input(_small(), np.zeros((1, 3, 32, 32), object)),
     E.InputShapeError, "dtype object", "x.astype('float32')"),
    ("input_bool", lambda: reference.check_input(_small(), np.zeros((1, 3, 32, 32), bool)),
     E.InputShapeError, "dtype bool", "x.astype('float32')"),
    ("input_empty_batch", lambda: reference.check_input(_small(), np.zeros((0, 3, 32, 32))),
     E.InputShapeError, "is empty", "at least one image"),
    ("input_ragged", lambda: reference.check_input(_small(), [[1.0], [1.0, 2.0]]), E.InputShapeError,
     "input is not an array", "4-D NCHW numpy batch"),
    ("input_too_small", lambda: reference.check_input(_tiny(), np.zeros((1, 3, 8, 8))), E.InputShapeError,
     "input size 8x8 is too small for graph 'tiny'", "at least 9x9"),
    ("input_too_small_one_axis", lambda: reference.check_input(_tiny(), np.zeros((1, 3, 30, 6))),
     E.InputShapeError, "input size 30x6 is too small", "at least 9x9"),
    ("input_other_size_of_a_flatten_head", lambda: reference.check_input(_flatten_head(), np.zeros((1, 3, 6, 6))),
     E.InputShapeError, "input size 6x6 differs from the 5x5 that graph 'flat_head' is fixed to",
     "rebuild the graph at that size"),
    ("calibration_folder_missing", lambda: _folder_images("missing"), E.LightnetsError,
     "calibration folder missing does not exist", "pass a folder of image files"),
    ("calibration_folder_without_images", lambda: _folder_images("."), E.LightnetsError,
     "has no image files", "put the images the model will see there"),
    ("input_nhwc_to_reference", lambda: reference.run(_small(), W.init_weights(_small()), np.zeros((1, 32, 32, 3))),
     E.InputShapeError, "32 channels", "is it in NCHW layout?"),
    # --- backends -------------------------------------------------------------------------------
    ("backend_unknown", lambda: lightnets.load_backend("tensorflow"), E.UnknownBackendError,
     "unknown backend 'tensorflow'", "choose one of torch, keras, paddle"),
    ("not_a_lightnets_model", lambda: lightnets.run(object(), np.zeros((1, 3, 32, 32))), E.LightnetsError,
     "object is not a lightnets model", "build one with lightnets.build()"),
    # --- weights --------------------------------------------------------------------------------
    ("weights_missing_key", lambda: _check(_weights(head__fc__bias=_DELETE)), E.WeightsError,
     "missing keys ['head.fc.bias']", "exported from the same model id"),
    ("weights_extra_key", lambda: _check(_weights(head__fc2__bias=np.zeros(4))), E.WeightsError,
     "unexpected keys ['head.fc2.bias']", "exported from the same model id"),
    ("weights_non_string_key", lambda: W.check_weights(_small(), {**W.init_weights(_small()), 7: np.zeros(1)}),
     E.WeightsError,
     "unexpected keys [7]", "same model id"),
    ("weights_wrong_shape", lambda: _check(_weights(head__fc__weight=lambda v: v.T)), E.WeightsError,
     "head.fc.weight has shape", "num_classes"),
    ("weights_wrong_dtype_complex", lambda: _check(_weights(stem__conv__weight=lambda v: v.astype(complex))),
     E.WeightsError, "stem.conv.weight has dtype complex128", "expected a float dtype"),
    ("weights_inf", lambda: _check(_weights(stem__bn__var=lambda v: v + np.inf)), E.WeightsError,
     "stem.bn.var contains NaN or Inf", "same model id"),
    ("weights_ragged_value", lambda: _check(_weights(head__fc__bias=[[1.0], [1.0, 2.0]])), E.WeightsError,
     "head.fc.bias is not an array", "same model id"),
    ("weights_not_a_mapping", lambda: W.check_weights(_small(), list(W.init_weights(_small()).values())),
     E.WeightsError, "got list", "pass lightnets.export_weights(model)"),
    ("weights_seed_string", lambda: W.init_weights(_small(), seed="x"), E.WeightsError, "got 'x'",
     "must be a non-negative int"),
    ("build_with_bad_weights", lambda: lightnets.build(_small(), weights={"a": np.zeros(1)}), E.WeightsError,
     "missing keys", "same model id"),
]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("case", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_catalogue(case, tmp_path, monkeypatch):
    _, thunk, cls, problem, fix = case
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    before = _snapshot(tmp_path)
    with pytest.raises(cls) as e:
        thunk()
    assert isinstance(e.value, errors.LightnetsError)
    msg = str(e.value)
    assert problem in msg, f"problem {problem!r} not named in: {msg}"
    assert fix in msg, f"fix {fix!r} not named in: {msg}"
    assert "Traceback" not in msg
    assert _snapshot(tmp_path) == before, "a failing call wrote or changed files"


def test_an_unreadable_calibration_image_is_named(tmp_path):
    pytest.importorskip("PIL")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(E.LightnetsError, match="broken.png cannot be read .*remove it or replace it"):
        _folder_images(tmp_path)


def test_catalogue_size():
    ids = [c[0] for c in CATALOGUE] + [c[0] for c in FILE_CASES] + CLI_IDS
    assert len(ids) == len(set(ids)) and len(ids) >= 40


# --- files: nothing is written, existing files are never touched --------------------------------------
def _saved(tmp_path, suffix=".safetensors") -> Path:
    return W.save(W.init_weights(_small()), tmp_path / f"w{suffix}")


def _truncate(p: Path, keep: int) -> Path:
    p.write_bytes(p.read_bytes()[:keep])
    return p


def _garbage(tmp_path, name) -> Path:
    p = tmp_path / name
    p.write_bytes(b"\x00\xffnot a weights file" * 3)
    return p


def _pickle(tmp_path) -> Path:
    p = tmp_path / "w.pkl"
    p.write_bytes(pickle.dumps({"stem.conv.weight": np.zeros(3)}))
    return p


def _with_graph(tmp_path, name="g.safetensors") -> Path:
    """A canonical file that records its graph (mobilenet_v1_025, 4 classes, 32 px) and card."""
    g = _small()
    meta = {"lightnets.graph": g.to_json(), "lightnets.card": json.dumps(provenance.init_card(g, 0))}
    return W.save(W.init_weights(g), tmp_path / name, meta)


def _native_with_garbage_sidecar(tmp_path) -> Path:
    p = tmp_path / "n.pt"
    p.write_bytes(b"not read: the sidecar is checked first")
    (tmp_path / "n.pt.lightnets.json").write_text("{not json")
    return p


def _npz_bad_meta(tmp_path) -> Path:
    np.savez(tmp_path / "m.npz", **{"a": np.zeros(2), W.NPZ_META: np.array("{not json")})
    return tmp_path / "m.npz"


def _bad_graph_meta(tmp_path) -> Path:
    return W.save(W.init_weights(_small()), tmp_path / "b.safetensors", {"lightnets.graph": "{not a graph"})


def _onnx_batch_inside(d: Path) -> Path:
    """A foreign .onnx file (a lightnets export without its graph) whose input batch is dynamic but whose Flatten
    became a Reshape to [1, -1], as a model doing ``x.view(1, -1)`` exports: ONNX Runtime fails on a batch of 4."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    g = _small()
    src = lightnets.export((g, W.init_weights(g)), to="onnx", path=d / "src.onnx", dynamic_hw=False)
    m = onnx.load(str(src))
    del m.metadata_props[:]
    m.graph.doc_string = ""
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, -1], np.int64), "const/batch1"))
    for n in m.graph.node:
        if n.op_type == "Flatten":
            n.CopyFrom(onnx.helper.make_node("Reshape", [n.input[0], "const/batch1"], list(n.output), name=n.name))
    onnx.save(m, str(d / "batch_inside.onnx"))
    return d / "batch_inside.onnx"


FILE_CASES = [
    ("file_missing", lambda d: W.load(d / "nope.safetensors"), E.FileFormatError, "does not exist",
     "check the path"),
    ("file_truncated_npz", lambda d: W.load(_truncate(_saved(d, ".npz"), 200)), E.FileFormatError,
     "not an .npz (zip) archive; it may be truncated", "re-export it"),
    ("file_garbage_safetensors", lambda d: W.load(_garbage(d, "g.safetensors")), E.FileFormatError,
     "truncated or corrupt", "re-export it"),
    ("file_garbage_npz", lambda d: W.load(_garbage(d, "g.npz")), E.FileFormatError, "not an .npz (zip) archive",
     "re-export it"),
    ("file_npy_renamed_npz", lambda d: (np.save(d / "a.npy", np.zeros(3)), W.load((d / "a.npy").rename(d / "a.npz"))),
     E.FileFormatError, "renamed .npy/pickle", "re-export it with lightnets.weights.save"),
    ("file_empty_safetensors", lambda d: W.load(_truncate(_saved(d), 0)), E.FileFormatError,
     "truncated or corrupt", "re-export it"),
    ("file_npz_object_arrays", lambda d: (np.savez(d / "o.npz", a=np.array([{"x": 1}], dtype=object)),
                                          W.load(d / "o.npz")), E.FileFormatError,
     "pickled object arrays", "re-export it with plain float arrays"),
    ("file_pickle_suffix", lambda d: W.load(_pickle(d)), E.FileFormatError, "is a pickle",
     "Re-export the weights as .safetensors or .npz"),
    ("file_unknown_suffix", lambda d: W.load(_garbage(d, "w.h5")), E.FileFormatError,
     "unknown canonical weights suffix '.h5'", "use .safetensors or .npz"),
    ("save_pickle_suffix", lambda d: W.save({"a": np.zeros(2)}, d / "w.pkl"), E.FileFormatError,
     "cannot save canonical weights as '.pkl'", "use .safetensors or .npz"),
    ("save_existing_file", lambda d: W.save({"a": np.zeros(2)}, d / "keep.safetensors"), E.LightnetsError,
     "already exists", "pass overwrite=True"),
    ("save_onto_directory", lambda d: W.save({"a": np.zeros(2)}, d / "sub.npz", overwrite=True), E.LightnetsError,
     "is a directory", "pass a file path"),
    ("save_read_only_directory", lambda d: W.save({"a": np.zeros(2)}, Path("/sys/w.safetensors")), E.LightnetsError,
     "is not writable", "choose a writable directory"),
    ("save_not_a_mapping", lambda d: W.save([np.zeros(2)], d / "new.npz"), E.WeightsError, "got list",
     "must be a mapping"),
    ("build_from_corrupt_file", lambda d: lightnets.build(_small(), weights=_garbage(d, "c.safetensors")),
     E.FileFormatError, "truncated or corrupt", "re-export it"),
    # --- a file's own graph (lightnets.formats) -------------------------------------------------------
    ("file_graph_disagrees_with_id", lambda d: lightnets.build("mobilenet_v1_025", weights=_with_graph(d),
                                                               num_classes=10),
     E.WeightsError, "node 'head.fc' attr out_features: file 4, mobilenet_v1_025 builds 10",
     "Build from the file's own graph"),
    ("file_graph_other_id", lambda d: lightnets.build("mobilenet_v1_050", weights=_with_graph(d)), E.WeightsError,
     "model id: file 'mobilenet_v1_025', mobilenet_v1_050 builds", "pass the id and arguments it was saved with"),
    ("file_without_graph_needs_id", lambda d: lightnets.build(_saved(d)), E.LightnetsError, "holds no graph",
     "pass the lightnets model id"),
    ("build_file_and_weights", lambda d: lightnets.build(_with_graph(d), weights={}), E.LightnetsError,
     "takes the graph and weights from that file", "do not also pass weights="),
    ("file_sidecar_garbage", lambda d: lightnets.build(_native_with_garbage_sidecar(d)), E.FileFormatError,
     "is unreadable", "delete it"),
    ("file_npz_metadata_not_json", lambda d: W.load(_npz_bad_meta(d)), E.FileFormatError,
     "is not lightnets metadata", "re-export it"),
    ("file_graph_metadata_corrupt", lambda d: lightnets.build(_bad_graph_meta(d)), E.FileFormatError,
     "unreadable", "re-export it"),
    # --- a foreign file's own runtime fails (issue 21): re-raised naming the file, runtime, tensor and fix ---------
    ("onnx_runtime_fails_in_import_probe", lambda d: lightnets.build(_onnx_batch_inside(d)), E.RuntimeFailure,
     "batch_inside.onnx: onnxruntime failed on input tensor 'input' of shape (4, 3, 32, 32)",
     "needs its input batch fixed as well"),
    ("onnx_runtime_fails_on_forward", lambda d: lightnets.load_backend("onnxruntime").forward(
        _onnx_batch_inside(d), np.zeros((1, 4, 32, 32))), E.RuntimeFailure,
     "onnxruntime failed on input tensor 'input' of shape (1, 4, 32, 32)", "feed float32 images of that shape"),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_file_catalogue(case, tmp_path):
    _, thunk, cls, problem, fix = case
    (tmp_path / "keep.safetensors").write_bytes(b"precious")
    (tmp_path / "sub.npz").mkdir()
    with pytest.raises(cls) as e:
        thunk(tmp_path)
    msg = str(e.value)
    assert problem in msg and fix in msg, msg
    assert (tmp_path / "keep.safetensors").read_bytes() == b"precious"
    new = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    assert new == [], f"temporary files left behind: {new}"
    assert not (tmp_path / "new.npz").exists() and not (tmp_path / "w.pkl.tmp").exists()


def test_overwrite_true_replaces_atomically(tmp_path):
    p = W.save({"a": np.zeros(2)}, tmp_path / "w.safetensors")
    W.save({"a": np.ones(2)}, p, overwrite=True)
    assert W.load(p)["a"].tolist() == [1.0, 1.0]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w.safetensors"]


# --- every backend: bad input is refused clearly, bad weights leave the model untouched -----------------
_BACKEND_SCRIPT = r"""
import sys, numpy as np, lightnets
from lightnets import errors, weights as W
from lightnets.graph import GraphBuilder
backend = sys.argv[1]
g = lightnets.get_spec("mobilenet_v1_025", input_size=32, num_classes=4)
m = lightnets.build(g, backend=backend, dtype="float64", seed=3)
before = lightnets.export_weights(m)
x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
y = lightnets.run(m, x)
good = W.init_weights(g, seed=9)
bad = [dict(good, **{"stem.conv.weight": good["stem.conv.weight"][:, :2]}),
       dict(good, **{"blocks.3.pw.bn.var": np.full_like(good["blocks.3.pw.bn.var"], np.nan)}),
       dict(good, **{"head.fc.bias": good["head.fc.bias"].astype(np.int32)}),
       {k: v for k, v in good.items() if k != "head.fc.weight"},
       dict(good, extra=np.zeros(3)),
       [1, 2, 3]]
for w in bad:
    try:
        lightnets.load_weights(m, w)
        print("NOT REFUSED")
    except errors.WeightsError:
        pass
after = lightnets.export_weights(m)
assert set(after) == set(before) and all(np.array_equal(after[k], before[k]) for k in before), "weights changed"
assert np.array_equal(lightnets.run(m, x), y), "outputs changed"
tiny = GraphBuilder("tiny", (3, 16, 16))
tiny.add("pool", "max_pool2d", tiny.add("conv", "conv2d", "input", out_channels=4, kernel=7), kernel=3, stride=2)
t = lightnets.build(tiny.build(), backend=backend, dtype="float64")
for label, arr in [("small", np.zeros((1, 3, 8, 8))), ("complex", np.zeros((1, 3, 32, 32), complex)),
                   ("int", np.zeros((1, 3, 32, 32), np.int64)), ("rank", np.zeros((3, 32, 32))),
                   ("nhwc", np.zeros((1, 32, 32, 3))), ("empty", np.zeros((0, 3, 32, 32)))]:
    model = t if label == "small" else m
    try:
        lightnets.run(model, arr)
        print("NOT REFUSED", label)
    except errors.InputShapeError as e:
        print("refused", label, str(e).replace(chr(10), " "))
print("OK")
"""


@pytest.mark.parametrize("backend", ["torch", "paddle", "keras"])
def test_backend_refuses_bad_inputs_and_weights_leave_model_untouched(backend):
    out = subprocess.run([sys.executable, "-c", _BACKEND_SCRIPT, backend], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "NOT REFUSED" not in out.stdout, out.stdout
    assert out.stdout.strip().endswith("OK"), out.stdout
    assert "refused small input size 8x8 is too small" in out.stdout and "at least 9x9" in out.stdout


def test_tensorflow_before_paddle_is_refused_not_a_segfault():
    code = ("import tensorflow, lightnets\n"
            "try:\n    lightnets.build('mobilenet_v1_025', backend='paddle', input_size=32)\n"
            "except lightnets.errors.BackendConflictError as e:\n    print('CONFLICT', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CONFLICT" in out.stdout and "segfaults" in out.stdout and "before tensorflow" in out.stdout


def test_torch_training_after_tensorflow_is_refused_or_made_safe_not_a_segfault():
    """torch._dynamo (torch's optimizers) imported after tensorflow segfaults: with the torch backend loaded first,
    the keras backend imports it in time and a keras build then a torch optimizer step run; with tensorflow first,
    the torch backend's optimizer refuses by name."""
    from lightnets import optim

    step = ("m = lightnets.build('mobilenet_v1_025', backend='torch', num_classes=10, input_size=32)\n"
            "be = lightnets.load_backend('torch')\n"
            "import numpy as np\n"
            f"t = be.train_steps(m, [np.ones((2, 3, 32, 32))], [np.array([1, 2])], optim.{optim.SGD(0.1, 0.9)!r})\n"
            "print('TRAINED', len(t.losses))\n")
    safe = ("import lightnets\nfrom lightnets import optim\nlightnets.load_backend('torch')\n"
            "lightnets.build('mobilenet_v1_025', backend='keras', num_classes=10, input_size=32)\n" + step)
    unsafe = ("import tensorflow, lightnets\nfrom lightnets import optim\ntry:\n"
              + "".join("    " + line + "\n" for line in step.splitlines())
              + "except lightnets.errors.BackendConflictError as e:\n    print('CONFLICT', e)\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    for code, want in ((safe, "TRAINED 1"), (unsafe, "CONFLICT")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert want in out.stdout, out.stdout
    assert "segfaults" in out.stdout and "separate process" in out.stdout


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_missing_framework_is_simulated_and_names_the_extra(framework):
    code = (f"import sys; sys.modules[{framework!r}] = None\n"
            "import importlib.util as u; real = u.find_spec\n"
            f"u.find_spec = lambda n, *a: None if n == {framework!r} else real(n, *a)\n"
            "import lightnets\n"
            f"try:\n    lightnets.build('mobilenet_v1_025', backend={framework!r})\n"
            "except lightnets.errors.BackendNotInstalledError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"needs the {framework!r} package" in out and f"pip install 'lightnets[{framework}]'" in out


# --- the CLI: bad arguments exit 2 with the usage; errors exit 1 with a message; never a traceback ------
CLI_BAD_ARGS = [
    ("cli_no_command", []),
    ("cli_unknown_command", ["frobnicate"]),
    ("cli_summary_without_model", ["summary"]),
    ("cli_size_not_int", ["summary", "mobilenet_v2_100", "--size", "abc"]),
    ("cli_unknown_option", ["list", "--bogus"]),
    ("cli_unknown_parity_backend", ["parity", "--backends", "jax"]),
    ("cli_unknown_dtype", ["parity", "--dtype", "float16"]),
    ("cli_bench_batch_zero", ["bench", "--batch", "0"]),
    ("cli_bench_size_too_small", ["bench", "--size", "8"]),
    ("cli_bench_unknown_model", ["bench", "--models", "nope"]),
    ("cli_summary_size_16", ["summary", "mobilenet_v2_100", "--size", "16"]),
    ("cli_summary_zero_classes", ["summary", "mobilenet_v2_100", "--num-classes", "0"]),
    ("cli_list_unknown_family", ["list", "--family", "nope"]),
    ("cli_parity_jobs_zero", ["parity", "--jobs", "0"]),
    ("cli_info_without_file", ["info"]),
    ("cli_int8_unknown_model", ["int8", "nope"]),
    ("cli_int8_zero_calibration_images", ["int8", "mobilenet_v1_025", "--calibration", "0"]),
    ("cli_int8_unknown_runtime", ["int8", "mobilenet_v1_025", "--to", "paddle"]),
]
CLI_ERRORS = [
    ("cli_summary_misspelled_model", ["summary", "mobilenet_v2_10"], "Did you mean"),
]
CLI_IDS = [c[0] for c in CLI_BAD_ARGS] + [c[0] for c in CLI_ERRORS]


def _cli(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "lightnets.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("args", [c[1] for c in CLI_BAD_ARGS], ids=[c[0] for c in CLI_BAD_ARGS])
def test_cli_bad_arguments_exit_2_with_usage(args, tmp_path):
    out = _cli(args, tmp_path)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "usage: lightnets" in out.stderr and "error:" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,message", [c[1:] for c in CLI_ERRORS], ids=[c[0] for c in CLI_ERRORS])
def test_cli_errors_exit_1_with_message(args, message, tmp_path):
    out = _cli(args, tmp_path)
    assert out.returncode == 1 and message in out.stderr, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and out.stderr.startswith("lightnets: error:")
    assert list(tmp_path.iterdir()) == []
