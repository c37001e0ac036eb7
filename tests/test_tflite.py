"""TFLite: the keras lowering converted by the TFLite converter and run by the LiteRT interpreter, as a backend,
a parity target and an export (float32, and int8 post-training quantization).

The backend contract (op cases and models against the float64 numpy reference, training refused, existing files
kept) is tests/test_backend_contract.py's. Here: one interpreter runs any batch and size ("same" pads follow it),
float64 models run the float32 flat buffer, every node's output by name, the card in the file; the int8 export of
mobilenet_v2_050 is judged by its top-1 agreement with the reference (a measured floor, parity/tolerances.py
INT8_TOP1_FLOOR).
tensorflow is imported inside tests only and this module never imports paddle (tensorflow before paddle in
one process segfaults; conftest runs the paddle tests first). Skipped without tensorflow/keras.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from keras_apps import TFLITE_CONVERTER
from profiles import SLOW

import lightnets
from lightnets import cli, formats, reference, registry
from lightnets import provenance as PV
from lightnets import weights as W
from lightnets.backends import tflite as TL  # imports no framework
from lightnets.errors import InputShapeError, LightnetsError
from lightnets.export import (
    AGREEMENT_IMAGES,
    AGREEMENT_SEED,
    CALIBRATION_IMAGES,
    CALIBRATION_SEED,
    export_tflite,
    seeded_images,
)
from lightnets.frameworks import load_backend
from lightnets.graph import INPUT, GraphBuilder
from lightnets.numerics import rel_error
from lightnets.parity import cases as C
from lightnets.parity import runner
from lightnets.parity import tolerances as T

pytestmark = TFLITE_CONVERTER

BE = load_backend("tflite")
MEASURED: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if MEASURED:
        print("\ntflite measured:", json.dumps({k: float(f"{v:.3g}") for k, v in sorted(MEASURED.items())}))


def _note(key: str, value: float) -> float:
    MEASURED[key] = max(MEASURED.get(key, 0.0), value)
    return value


def _built(graph, weights, dtype="float32"):
    m = BE.build(graph, dtype)
    BE.set_weights(m, weights)
    return m


# --- the interpreter ----------------------------------------------------------------------------------
def test_one_interpreter_runs_any_batch_and_size_and_float64_runs_the_float32_buffer():
    """A keras-padded id (TF "same") built at an odd size: the interpreter resized to one image at another height
    and width ("same" pads follow the size), converted once; its float64 model runs the same flat buffer."""
    graph = registry.get_spec("mobilenet_v3_small_075_keras", num_classes=10, input_size=65)
    w = W.init_weights(graph, seed=1)
    m = _built(graph, w)
    x = np.random.default_rng(0).standard_normal((2, *graph.input_shape))
    y = BE.run(m, x)
    assert _note("mobilenet_v3_small_075_keras@65", rel_error(y, reference.run(graph, w, x))) <= T.MODEL_REL["float32"]
    x1 = np.random.default_rng(1).standard_normal((1, 3, 65 + 9, 65 - 7))
    assert rel_error(BE.run(m, x1), reference.run(graph, w, x1)) <= T.MODEL_REL["float32"]
    assert len(m._buffers) == 1  # converted once
    y64 = BE.run(_built(graph, w, "float64"), x)  # float64 arrays, computed in float32: no conversion
    assert y64.dtype == np.float64 and np.array_equal(y64, y) and T.effective_dtype("tflite", "float64") == "float32"


def test_return_all_gives_every_node_by_name():
    """The parity locator's view: a keras model with every node's output named, converted on its own."""
    g = GraphBuilder("all_nodes", (6, 9, 8))
    cv = g.add("stem.conv", "conv2d", INPUT, out_channels=6, kernel=3, stride=2, padding="same")
    bn = g.add("stem.bn", "batch_norm", cv)
    act = g.add("stem.act", "activation", bn, kind="hardswish")
    sh = g.add("shuffle", "channel_shuffle", act, groups=3)
    sl = g.add("half", "slice_channels", sh, start=0, stop=3)
    cat = g.add("cat", "concat", [sl, sh])
    mp = g.add("pool", "max_pool2d", cat, kernel=3, stride=2, pads=1)
    gp = g.add("gap", "global_avg_pool", mp)
    fl = g.add("flat", "flatten", gp)
    g.add("fc", "linear", fl, out_features=5, bias=True)
    graph = g.build()
    w = W.init_weights(graph, seed=2)
    m = _built(graph, w)
    x = C.make_input(graph, 2, seed=2)
    got = BE.run(m, x, return_all=True)
    ref = reference.run(graph, w, x, return_all=True)
    assert list(got) == [n.name for n in graph.nodes] and mp in got
    errs = {k: rel_error(v, ref[k]) for k, v in got.items()}
    assert _note("return_all node", max(errs.values())) <= T.MODEL_REL["float32"]
    # another flat buffer (fewer fusions: every node is an output), so not bit-equal to the output of run
    assert _note("return_all vs run", rel_error(got["fc"], BE.run(m, x))) <= T.MODEL_REL["float32"]


def test_parity_target_is_inference_only():
    assert runner.TARGETS["tflite"][0] == "tflite" and runner.TARGETS["tflite"][1]["KERAS_BACKEND"] == "tensorflow"
    assert "tflite" in runner.INFERENCE_ONLY and "tflite" in cli.PARITY_TARGETS
    assert "tflite" not in cli.DEFAULT_PARITY_TARGETS  # a conversion per model: asked for by name
    graph = registry.get_spec("mobilenet_v1_025", num_classes=10, input_size=32)
    assert not lightnets.build(graph, backend="tflite", seed=1)._buffers  # no conversion until it runs


# --- export ------------------------------------------------------------------------------------------
def test_int8_export_agrees_with_the_float_model_on_top1(tmp_path):
    path = tmp_path / "q.tflite"
    written, rep = export_tflite("mobilenet_v2_050", path, quantize="int8", input_size=96)
    assert written == path and rep["images"] == AGREEMENT_IMAGES
    agreement = _note("int8 top-1 agreement mobilenet_v2_050@96", rep["top1_agreement"])
    assert agreement >= T.INT8_TOP1_FLOOR[("mobilenet_v2_050", 96)]
    # the file alone: int8 inside, float32 input/output, and the agreement it reports
    interp = TL.make_interpreter(path.read_bytes())
    kinds = {np.dtype(d["dtype"]) for d in interp.get_tensor_details()}
    assert np.dtype(np.int8) in kinds
    assert [np.dtype(d["dtype"]) for d in interp.get_input_details() + interp.get_output_details()] == [np.float32] * 2
    graph = registry.get_spec("mobilenet_v2_050", input_size=96)
    x = seeded_images(graph, AGREEMENT_IMAGES, AGREEMENT_SEED)
    w = W.init_weights(graph, 0)
    agree = sum(int(np.sum(BE.forward(path, x[i: i + 16]).argmax(1) == reference.run(graph, w, x[i: i + 16]).argmax(1)))
                for i in range(0, len(x), 16))
    assert agree == rep["agreeing"]
    card = formats.describe(path)["card"]
    assert card["source"] == {"kind": "init", "seed": 0}
    assert any(f"top-1 agreement with the float64 reference {agree}/64" in n for n in card["notes"])
    # the card says how to reproduce the calibration and the range it gave every quantized node output
    q = card["int8"]
    assert q["calibration_images"] == CALIBRATION_IMAGES and q["calibration_seed"] == CALIBRATION_SEED
    assert len(q["ranges"]) >= len(graph.nodes) // 3
    calibration = seeded_images(graph, CALIBRATION_IMAGES, CALIBRATION_SEED)
    assert q["ranges"]["input"] == pytest.approx([calibration.min(), calibration.max()], abs=0.05)
    relu6 = [r for n, r in q["ranges"].items() if n != "input" and graph.node(n).op == "activation"
             and graph.node(n).attrs["kind"] == "relu6"]
    assert len(relu6) >= 10 and all(lo == 0.0 and 0.5 < hi <= 6.0 + 0.05 for lo, hi in relu6)


def test_float_export_keeps_the_card(tmp_path):
    graph = registry.get_spec("mobilenet_v1_025", num_classes=10, input_size=32)
    model = lightnets.build(graph, backend="tflite", seed=4)  # init card in graph.meta
    x = np.random.default_rng(7).standard_normal((2, 3, 32, 32))
    want = BE.run(model, x)
    path = tmp_path / "m.tflite"
    assert lightnets.export(model, to="tflite", path=path) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "m.tflite.lightnets.json"]
    assert np.array_equal(BE.forward(path, x), want)  # the file alone runs the same flat buffer
    assert rel_error(want, reference.run(graph, BE.get_weights(model), x)) <= T.MODEL_REL["float32"]
    info = formats.describe(path)
    card = PV.card_of(BE.graph_of(model))
    assert info["format"] == "tflite" and info["graph_from"] == "sidecar m.tflite.lightnets.json"
    assert info["card"]["source"] == card["source"] == {"kind": "init", "seed": 4}
    assert info["card"]["notes"][:-1] == card["notes"] and "TFLite float32 export" in info["card"]["notes"][-1]
    side = json.loads(formats.sidecar_of(path).read_text())
    assert lightnets.Graph.from_json(json.dumps(side["graph"])).nodes == graph.nodes
    # the flat buffer's convs carry the folded BNs: read back onto the sidecar's graph as identity BNs
    rebuilt = lightnets.build(path, backend="torch")
    assert BE.graph_of(model).nodes == lightnets.load_backend("torch").graph_of(rebuilt).nodes
    assert rel_error(lightnets.run(rebuilt, x), want) <= T.MODEL_REL["float32"]
    with pytest.raises(LightnetsError, match="float32"):
        lightnets.export(model, to="tflite", path=tmp_path / "d.tflite", dtype="float64")
    with pytest.raises(LightnetsError, match="calibrates an int8 export; add quantize='int8'"):
        lightnets.export(model, to="onnx", path=tmp_path / "d.onnx", calibration=4)  # (int8 ONNX is QDQ: test_int8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "m.tflite.lightnets.json"]


def test_cli_export_tflite(tmp_path, capsys):
    out = tmp_path / "s.tflite"
    args = ["export", "mobilenet_v1_025", "--to", "tflite", "--out", str(out), "--size", "32"]
    assert cli.main([*args, "--static"]) == 0
    printed = capsys.readouterr().out
    assert "-> tflite" in printed and "input NHWC float32 (N, 32, 32, 3)" in printed and "probe rel error" in printed
    assert BE.forward(out, np.zeros((3, 3, 32, 32))).shape == (3, 1000)  # the batch stays dynamic
    with pytest.raises(InputShapeError, match="fixed height/width"):
        BE.forward(out, np.zeros((1, 3, 40, 32)))
    assert cli.main(args) == 1 and "exists" in capsys.readouterr().err
    assert cli.main([*args[:3], "onnx", *args[4:], "--calibration", str(tmp_path), "--force"]) == 2
    assert "--calibration calibrates an int8 export; add --quantize int8" in capsys.readouterr().err


def test_backend_module_imports_no_framework():
    code = ("import sys, lightnets.backends.tflite, lightnets.export; "
            "print([m for m in ('tensorflow', 'keras', 'ai_edge_litert') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("arch", ["ghostnet_050", pytest.param("mobilenet_v2_050", marks=pytest.mark.skipif(
    not SLOW, reason="ghostnet covers the quick profile: LIGHTNETS_SLOW=1"))])
def test_backbone_exports_one_output_per_map_and_imports_back(tmp_path, arch):
    """build(id, features=True) exports to TFLite (every map probed; the probe raised on the list of maps before)
    with one output per feature map, and the file builds back onto its sidecar's graph, each map probed in LiteRT.
    GhostNet's stride-2 map is its stem conv before the BN: the converter cannot fold that BN (MUL + ADD kept)."""
    pytest.importorskip("torch")
    model = lightnets.build(arch, features=True, input_size=64)  # BN statistics from data
    graph = load_backend("torch").graph_of(model)
    path = lightnets.export(model, to="tflite", path=tmp_path / "b.tflite")
    x = np.random.default_rng(8).standard_normal((2, 3, 64, 64))
    want = reference.run(graph, lightnets.export_weights(model), x)
    got = BE.forward(path, x)  # the file alone: its outputs in the flat buffer's order
    assert sorted(g.shape for g in got) == sorted(w.shape for w in want)
    by_shape = {g.shape: g for g in got}
    assert max(rel_error(by_shape[w.shape], w) for w in want) <= T.MODEL_REL["float32"]
    back = lightnets.build(path, backend="torch")
    maps = lightnets.run(back, x.astype(np.float32))
    assert len(maps) == len(want) and max(rel_error(g, w) for g, w in zip(maps, want, strict=True)) <= \
        T.MODEL_REL["float32"]
    assert any("feature maps" in n for n in PV.card_of(load_backend("torch").graph_of(back))["notes"])


@pytest.mark.skipif(not SLOW, reason="an int8 conversion (~40 s): LIGHTNETS_SLOW=1")
def test_int8_backbone_exports_and_imports_by_correlation(tmp_path):
    """An int8 backbone export reports its largest feature-map error (no top-1 without classes); importing it judges
    each map by its correlation with the reference (lightnets.artifacts QUANTIZED_CORR): a planted swap of two
    same-shape depthwise kernels is refused."""
    pytest.importorskip("torch")
    from lightnets import artifacts as A

    model = lightnets.build("ghostnet_050", features=True, input_size=64)
    graph = load_backend("torch").graph_of(model)
    report = export_tflite(model, tmp_path / "q.tflite", quantize="int8").report
    assert 0 < report["feature_rel_error"] < 1 and "top1_agreement" not in report
    imp = A.read(tmp_path / "q.tflite", "tflite", "tflite", arch=graph)
    assert imp.probe["min_correlation"] >= A.QUANTIZED_CORR
    art = BE.read_artifact(tmp_path / "q.tflite")
    dw = [la for la in art.layers if la.op == "DEPTHWISE_CONV_2D"]
    a, b = next((a, b) for i, a in enumerate(dw) for b in dw[i + 1:]
                if a.tensors["weight"].shape == b.tensors["weight"].shape)
    a.tensors["weight"], b.tensors["weight"] = b.tensors["weight"], a.tensors["weight"]
    with pytest.raises(lightnets.errors.WeightsError, match="correlation 0.8"):
        A.import_artifact(art, BE, arch=graph)
