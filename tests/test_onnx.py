"""ONNX export (written from the IR, never traced) and ONNX Runtime as a backend / parity target.

The backend contract (op cases and models against the float64 reference, training refused, existing files
kept) is tests/test_backend_contract.py's. Here: every op case's file passes the onnx checker, shape inference
agrees with the IR's shapes at every node, and float64 runs in double where onnxruntime has the kernels; the batch
and the "same" pads follow the input; the graph and provenance card travel in the file. Skipped when onnx or
onnxruntime is missing.
"""

import json
import subprocess
import sys

import numpy as np
import profiles
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import lightnets  # noqa: E402
from lightnets import cli, reference, registry  # noqa: E402
from lightnets import provenance as PV  # noqa: E402
from lightnets import weights as W  # noqa: E402
from lightnets.errors import LightnetsError  # noqa: E402
from lightnets.frameworks import load_backend  # noqa: E402
from lightnets.numerics import rel_error  # noqa: E402
from lightnets.parity import cases as C  # noqa: E402
from lightnets.parity import runner  # noqa: E402
from lightnets.parity import tolerances as T  # noqa: E402

O = pytest.importorskip("lightnets.backends.onnx")  # noqa: N816
BE = load_backend("onnxruntime")
OP_CASES = C.op_cases()
# (id, input size, batch sizes run through ONE session)
MODELS = [("mobilenet_v2_100", 64, (2,)), ("mobilenet_v3_small_100_keras", 225, (1,)),
          ("shufflenet_v2_050", 64, (1, 3)), ("ghostnet_050", 64, (2,)), ("shufflenet_v1_g3_050", 64, (2,))]


def _built(graph, weights, dtype="float32"):
    m = BE.build(graph, dtype)
    BE.set_weights(m, weights)
    return m


def _uses_float32_kernel(graph) -> bool:
    return any(n.op in O.FLOAT32_ONLY for n in graph.nodes)


def _inferred_shapes(model, batch: int, hw) -> dict:
    """onnx shape inference (strict, with data propagation) of ``model`` with a concrete input shape."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (batch, None, *hw), strict=True):
        if v is not None:
            d.dim_value = v
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in v.type.tensor_type.shape.dim]
    return {v.name: dims(v) for v in list(inferred.graph.value_info) + list(inferred.graph.output)}


def _check_file(model, graph, batch: int = 2) -> None:
    onnx.checker.check_model(model, full_check=True)
    shapes = _inferred_shapes(model, batch, graph.input_shape[1:])
    bad = [(n.name, shapes.get(n.name), graph.shapes[n.name]) for n in graph.nodes
           if shapes.get(n.name) != [batch, *graph.shapes[n.name]]]
    assert bad == []


# --- op cases ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", OP_CASES, ids=[c.id for c in OP_CASES])
def test_op_case_files_check_and_run_in_double_where_onnxruntime_can(case):
    w = W.init_weights(case.graph, seed=3)
    x = C.make_input(case.graph, case.batch, seed=3)
    ref = reference.run(case.graph, w, x)
    m32 = _built(case.graph, w)
    # float64: double kernels where onnxruntime has them (float64 bounds), else float32 between Casts (module doc)
    m64 = _built(case.graph, w, "float64")
    if not _uses_float32_kernel(case.graph):
        assert rel_error(BE.run(m64, x), ref) <= T.OP_REL["float64"]
    for m in (m32, m64):  # the locator's view: every node is a graph output
        _check_file(m.proto(return_all=True), case.graph, case.batch)
        every = BE.run(m, x, return_all=True)
        assert list(every) == [n.name for n in case.graph.nodes]
        assert rel_error(every[case.graph.output], ref) <= T.OP_REL["float32"]


def test_float64_kernels_of_onnxruntime_are_as_documented():
    """The measured fact behind FLOAT32_ONLY and EFFECTIVE_DTYPE: no double Conv/AveragePool on ORT's CPU."""
    from onnx import TensorProto, helper

    def runs(op, n_in, dtype, **attrs):
        ins = [helper.make_tensor_value_info(f"i{k}", dtype, None) for k in range(n_in)]
        g = helper.make_graph([helper.make_node(op, [i.name for i in ins], ["y"], **attrs)], "g", ins,
                              [helper.make_tensor_value_info("y", dtype, None)])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", O.OPSET)], ir_version=O.IR_VERSION)
        try:
            O.make_session(m.SerializeToString(), 1)
            return True
        except Exception as e:  # noqa: BLE001 -- onnxruntime's NOT_IMPLEMENTED
            assert "NOT_IMPLEMENTED" in str(e)
            return False

    D, F = TensorProto.DOUBLE, TensorProto.FLOAT  # noqa: N806
    window = {"kernel_shape": [3, 3]}
    assert not runs("Conv", 2, D) and runs("Conv", 2, F)
    assert not runs("AveragePool", 1, D, **window) and runs("AveragePool", 1, F, **window)
    assert not runs("GlobalAveragePool", 1, D) and not runs("HardSigmoid", 1, D) and not runs("HardSwish", 1, D)
    assert runs("MaxPool", 1, D, **window) and runs("ReduceMean", 1, D, axes=[2, 3]) and runs("Gemm", 2, D)
    assert runs("BatchNormalization", 5, D) and runs("Sigmoid", 1, D) and runs("Clip", 1, D)
    assert T.effective_dtype("onnxruntime", "float64") == "float32"


# --- models ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def model_case(request):
    mid, size, batches = request.param
    graph = registry.get_spec(mid, num_classes=10, input_size=size)
    return mid, graph, W.init_weights(graph, seed=0), batches


def test_model_matches_the_reference_with_dynamic_batch(model_case):
    mid, graph, w, batches = model_case
    m = _built(graph, w)
    for batch in batches:  # one session: the batch axis is dynamic (channel shuffle's reshapes included)
        x = np.random.default_rng(batch).standard_normal((batch, *graph.input_shape))
        assert rel_error(BE.run(m, x), reference.run(graph, w, x)) <= T.MODEL_REL["float32"], (mid, batch)
    assert len(m._sessions) == 1
    _check_file(m.proto(return_all=True), graph)


def test_same_padding_follows_the_input_size():
    """A _keras id (TF "same", strided nodes as SAME_UPPER) built at 225 runs at 224 and 193 too."""
    graph = registry.get_spec("mobilenet_v3_small_100_keras", num_classes=10, input_size=225)
    w = W.init_weights(graph, seed=1)
    model = O.to_onnx(graph, w)
    modes = {a.s.decode() for n in model.graph.node for a in n.attribute if a.name == "auto_pad"}
    assert modes == {"SAME_UPPER"}
    m = _built(graph, w)
    for size in (224, 193):
        x = np.random.default_rng(size).standard_normal((1, 3, size, size))
        assert rel_error(BE.run(m, x), reference.run(graph, w, x)) <= T.MODEL_REL["float32"], size
    # static export: the pads of the build size, written out
    static = O.to_onnx(graph, w, dynamic_hw=False)
    assert not any(a.name == "auto_pad" for n in static.graph.node for a in n.attribute)
    assert [d.dim_value for d in static.graph.input[0].type.tensor_type.shape.dim][1:] == [3, 225, 225]
    _check_file(static, graph, 1)


# --- the file -----------------------------------------------------------------------------------------
def test_initializers_are_the_canonical_weights_and_the_file_carries_graph_and_card(tmp_path):
    graph = registry.get_spec("ghostnet_050", num_classes=10, input_size=64)
    model = lightnets.build(graph, backend="onnxruntime", seed=4)  # init card in graph.meta
    path = lightnets.export(model, path=tmp_path / "g.onnx")
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    assert {p.name for p in graph.params} <= set(inits)
    assert all("/" in k for k in set(inits) - {p.name for p in graph.params})  # the rest are internal
    assert {n.op_type for n in proto.graph.node} >= {"Conv", "BatchNormalization", "Gemm", "GlobalAveragePool"}
    assert proto.opset_import[0].version == O.OPSET and proto.ir_version == O.IR_VERSION
    doc = json.loads(proto.graph.doc_string)
    card = PV.card_of(BE.graph_of(model))
    assert card["source"] == {"kind": "init", "seed": 4}
    assert doc["format"] == O.DOC_FORMAT and doc["card"] == card
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props[O.CARD_KEY]) == card and props[O.DTYPE_KEY] == "float32"
    g2, w2 = O.read_onnx(path)
    assert g2.to_json() == lightnets.Graph.from_json(json.dumps(doc["graph"])).to_json() == BE.graph_of(model).to_json()
    got = BE.get_weights(model)
    assert all(np.array_equal(w2[k], got[k]) for k in got)
    assert BE.read_state_dict(path, "onnx").keys() == got.keys()


def test_export_refuses_an_unknown_target_and_a_graph_without_weights(tmp_path):
    graph = registry.get_spec("shufflenet_v2_050", num_classes=10, input_size=64)
    src = (graph, W.init_weights(graph, seed=0, calibrate=False))
    with pytest.raises(LightnetsError, match="unknown export target"):
        lightnets.export(src, to="coreml", path=tmp_path / "x.mlmodel")
    with pytest.raises(LightnetsError, match="needs weights too"):
        lightnets.export(graph, path=tmp_path / "y.onnx")


def test_export_of_a_torch_model_and_of_its_weights_file(tmp_path):
    """The numbers of a torch model, exported through its canonical weights (no torch.onnx)."""
    pytest.importorskip("torch")
    tb = load_backend("torch")
    model = lightnets.build("shufflenet_v1_g3_050", backend="torch", num_classes=10, input_size=64, seed=2)
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 64)).astype(np.float32)
    want = tb.run(model, x)
    path = lightnets.export(model, path=tmp_path / "t.onnx")
    got = BE.forward(onnx.load(str(path)), x)  # the file alone, as a user would run it
    assert rel_error(got, want) <= 2 * T.MODEL_REL["float32"]
    assert rel_error(got, reference.run(tb.graph_of(model), tb.get_weights(model), x)) <= T.MODEL_REL["float32"]
    weights_file = lightnets.save_weights(model, tmp_path / "t.safetensors")
    path2 = lightnets.export(weights_file, path=tmp_path / "t2.onnx")
    assert rel_error(BE.forward(onnx.load(str(path2)), x), got) == 0.0
    assert O.read_onnx(path2)[0].to_json() == O.read_onnx(path)[0].to_json()


def test_cli_export(tmp_path, capsys):
    out = tmp_path / "s.onnx"
    assert cli.main(["export", "shufflenet_v2_050", "--out", str(out), "--size", "64"]) == 0
    assert "input (batch, 3, height, width)" in capsys.readouterr().out
    graph, w = O.read_onnx(out)
    assert graph.input_shape == (3, 64, 64) and PV.card_of(graph)["source"]["kind"] == "init"
    assert cli.main(["export", "shufflenet_v2_050", "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert cli.main(["export", "shufflenet_v2_050", "--out", str(out), "--size", "64", "--static", "--force"]) == 0
    assert O.input_dims(out) == ["batch", 3, 64, 64]
    with pytest.raises(SystemExit) as e:
        cli.main(["export", "no_such_model", "--out", str(tmp_path / "n.onnx")])
    assert e.value.code == 2


# --- casts, inference mode and the parity target ---------------------------------------------------------
def test_cast_and_inference_mode():
    graph = registry.get_spec("shufflenet_v2_050", num_classes=10, input_size=32)
    m = lightnets.build(graph, backend="onnxruntime", seed=1)
    x = np.zeros((1, 3, 32, 32), np.float32)
    m64 = BE.cast(m, "float64")
    assert m64.dtype == "float64" and rel_error(BE.run(m64, x), BE.run(m, x)) <= T.MODEL_REL["float32"]
    folded = lightnets.build(graph, backend="onnxruntime", seed=1, mode="inference")
    assert rel_error(BE.run(folded, x + 0.5), BE.run(m, x + 0.5)) <= T.MODEL_REL["float32"]
    assert "lightnets.backends.onnx" in sys.modules


def test_parity_target_runs_and_skips_train_kinds(tmp_path):
    assert "onnxruntime" in runner.TARGETS and "onnxruntime" in runner.INFERENCE_ONLY
    ops = [c for c in OP_CASES if c.id in ("conv_5x5_s2_same", "channel_shuffle_batch1")]
    models = C.model_cases(["shufflenet_v2_050"], input_size=32, num_classes=10)
    results = runner.run_matrix(ops + models, ["onnxruntime"], ["float32", "float64"], tmp_path,
                                kinds={c.id: "op" for c in ops}, train=True, probe=models[0].id, jobs=1)
    assert [r for r in results if r.failed] == []
    assert {r.kind for r in results} == {"op", "model"}  # no train/stats/grad kinds for an inference runtime
    curve = next(r.per_node for r in results if r.case == models[0].id)
    assert len(curve) == len(models[0].graph.nodes)  # the locator reads every node's output


def test_import_lightnets_imports_neither_onnx_nor_onnxruntime():
    code = ("import sys, lightnets, lightnets.cli; from lightnets import export; "
            "lightnets.frameworks.loaded_backends(); print([m for m in ('onnx', 'onnxruntime') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_missing_package_names_the_extra(missing, tmp_path):
    code = (f"import sys; sys.modules[{missing!r}] = None\n"
            "import importlib.util as u; real = u.find_spec\n"
            f"u.find_spec = lambda n, *a: None if n == {missing!r} else real(n, *a)\n"
            "import lightnets\n"
            "for call in (lambda: lightnets.build('shufflenet_v2_050', backend='onnxruntime', input_size=32),\n"
            f"             lambda: lightnets.export('shufflenet_v2_050', path={str(tmp_path / 'm.onnx')!r},\n"
            "                                      input_size=32)):\n"
            "    try:\n        call()\n        print('OK')\n"
            "    except lightnets.errors.BackendNotInstalledError as e:\n        print('MISSING', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    # building needs both packages; exporting needs onnx only (the probe is skipped without onnxruntime)
    assert lines[0].startswith("MISSING") and "pip install 'lightnets[onnx]'" in lines[0]
    assert lines[1].startswith("MISSING") if missing == "onnx" else lines[1] == "OK"
    assert (tmp_path / "m.onnx").exists() == (missing == "onnxruntime")


def test_locator_names_a_planted_wrong_pad_in_onnxruntime(tmp_path):
    """The runner's divergence locator reads every node of the ONNX graph (return_all outputs)."""
    from planted import plant_and_locate

    # same output shape, shifted window
    result, first, per_node = plant_and_locate(tmp_path, "blocks.4.dw.conv", {"pads": [2, 0, 1, 1]}, "onnxruntime",
                                               "float32")
    assert result.failed and result.rel_err > 1e-3
    assert first["node"] == "blocks.4.dw.conv" and len(per_node) == len(registry.get_spec(
        "mobilenet_v1_025", num_classes=10, input_size=32).nodes)


@pytest.mark.parametrize("arch", [pytest.param("mobilenet_v2_050", marks=pytest.mark.skipif(
    not profiles.SLOW, reason="ghostnet covers the quick profile: LIGHTNETS_SLOW=1")), "ghostnet_050"])
def test_backbone_exports_one_output_per_map_and_imports_back(tmp_path, arch):
    """build(id, features=True) exports (the probe compares every map; it raised on the list of maps before), one
    ONNX output per feature map named after its node; the file builds back (its graph) and, stripped of its lightnets
    metadata, imports as the id's backbone found from the file, every map probed. Weights: BN statistics from data."""
    pytest.importorskip("torch")
    model = lightnets.build(arch, features=True, input_size=64)
    graph = load_backend("torch").graph_of(model)
    path = lightnets.export(model, to="onnx", path=tmp_path / "b.onnx")
    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == list(graph.output_names) and len(graph.output_names) >= 4
    x = np.random.default_rng(6).standard_normal((2, 3, 64, 64)).astype(np.float32)
    want = reference.run(graph, lightnets.export_weights(model), x)
    got = BE.forward(proto, x)
    assert max(rel_error(g, w) for g, w in zip(got, want, strict=True)) <= T.MODEL_REL["float32"]
    back = lightnets.build(path, backend="torch")
    assert all(rel_error(g, w) <= T.MODEL_REL["float32"] for g, w in zip(lightnets.run(back, x), want, strict=True))
    del proto.metadata_props[:]
    proto.graph.doc_string = ""
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    imp = lightnets.artifacts.read(tmp_path / "bare.onnx", "onnx", "onnxruntime", input_size=64)
    assert imp.graph.name == arch and imp.graph.output_names == graph.output_names
    assert imp.probe["rel_error"] <= imp.probe["tolerance"]
    assert any("feature maps" in n for n in imp.notes)
    w = lightnets.export_weights(model)
    assert all(np.array_equal(imp.weights[k], w[k]) for k in w)
