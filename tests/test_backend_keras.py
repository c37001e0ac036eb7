"""Quirks of the Keras 3 backend only (the shared contract is tests/test_backend_contract.py): lowerings
that need custom layers or explicit pads, layer names, any-size inputs, saving without Lambda layers,
keras on torch, TF without oneDNN.

Keras (and so tensorflow) is imported inside tests only: paddle tests must import paddle first.
Measured maximum errors are printed at the end of the module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lightnets
from lightnets import reference
from lightnets import weights as W
from lightnets.backends import keras as kb  # imports no framework
from lightnets.errors import InputShapeError
from lightnets.graph import INPUT, GraphBuilder
from lightnets.parity.cases import Case, make_input, op_cases
from lightnets.parity.tolerances import MODEL_REL, OP_REL, rel_error

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras is not installed"),
    # keras' own model.save converts tf.Variables with np.array(): a numpy 2 warning that is not ours
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]

KB = kb.BACKEND
ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float64", "float32")
MEASURED: dict[str, float] = {}


def _record(kind: str, err: float) -> None:
    MEASURED[kind] = max(MEASURED.get(kind, 0.0), err)


@pytest.fixture(scope="module", autouse=True)
def report_measured(request):
    """Print the measured maxima after the module (outside output capture)."""
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        for kind, err in sorted(MEASURED.items()):
            print(f"\nkeras measured max rel error {kind}: {err:.3g}", end="")
        print()


def _extra_cases() -> list[Case]:
    """Paths op_cases() does not reach: -inf padded max pool, strided dilated conv, symmetric same."""
    def one(case_id, shape, op, **attrs):
        g = GraphBuilder(case_id, shape)
        g.add("op", op, INPUT, **attrs)
        return Case(case_id, g.build())
    return [
        one("max_pool_3x3_s2_p1_even", (3, 8, 8), "max_pool2d", kernel=3, stride=2, pads=1),
        one("conv_3x3_s2_dilated", (3, 12, 11), "conv2d", out_channels=4, kernel=3, stride=2, pads=2,
            dilation=2, bias=True),
        one("depthwise_3x3_s2_p1_even", (4, 8, 8), "conv2d", out_channels=4, kernel=3, stride=2, pads=1,
            groups=4),
        one("avg_pool_3x3_s2_exclude_same_odd", (3, 9, 9), "avg_pool2d", kernel=3, stride=2, pads=1,
            count_include_pad=False),
    ]


def _custom_graph():
    """One graph through every custom layer (and a native one), for saving and the torch backend."""
    g = GraphBuilder("customs", (6, 9, 8))
    sl = g.add("sl", "slice_channels", INPUT, start=1, stop=5)
    sh = g.add("sh", "channel_shuffle", INPUT, groups=3)
    mp = g.add("mp", "max_pool2d", sh, kernel=3, stride=2, pads=1)  # W=8: not TF same -> -inf pad
    ap = g.add("ap", "avg_pool2d", sl, kernel=3, stride=2, pads=1, count_include_pad=False)
    cv = g.add("cv", "conv2d", sh, out_channels=4, kernel=3, stride=2, pads=2, dilation=2)
    g.add("out", "concat", [mp, ap, cv])
    return g.build()


EXTRA = _extra_cases()
CASES = op_cases() + EXTRA


def _input(graph, batch=2, seed=0):
    x = make_input(graph, batch, seed)
    return x - 3.0 if "max_pool" in graph.name else x  # all-negative windows: zero pads would win


def _assert_no_lambda(model):
    assert not [la.name for la in model.layers if type(la).__name__ == "Lambda"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_op_is_native_or_a_serialisable_layer_named_by_its_node(case):
    model = kb.build(case.graph, "float32")
    _assert_no_lambda(model)
    assert {kb.layer_name(n.name) for n in case.graph.nodes} <= {la.name for la in model.layers}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", EXTRA, ids=[c.id for c in EXTRA])
def test_extra_op_matches_reference(case, dtype):
    w = W.init_weights(case.graph, seed=1)
    model = KB.build(case.graph, dtype)
    KB.set_weights(model, w)
    x = _input(case.graph, case.batch)
    y = KB.run(model, x.astype(dtype))
    assert y.dtype == np.dtype(dtype)
    err = rel_error(y, reference.run(case.graph, w, x))
    _record(f"op {dtype}", err)
    assert err <= OP_REL[dtype], f"{case.id} {dtype}: rel error {err:.3g}"


def test_pad_choice():
    """keras' "same" only where it is the node's padding at every input size."""
    a = {"kernel": (3, 3), "stride": (2, 2), "pads": (0, 1, 0, 1), "padding": "explicit"}
    assert kb.lowering._pad_mode(a) is None  # TF same at even sizes only: explicit
    assert kb.lowering._pad_mode({**a, "pads": (0, 0, 0, 0), "padding": "same"}) == "same"
    assert kb.lowering._pad_mode({**a, "stride": (1, 1), "pads": (1, 1, 1, 1)}) == "same"
    assert kb.lowering._pad_mode({**a, "pads": (1, 1, 1, 1)}) is None
    assert kb.lowering._pad_mode({**a, "pads": (0, 0, 0, 0)}) == "valid"


def test_layers_are_native_and_padding_uses_tf_same_when_it_matches():
    by_id = {c.id: c.graph for c in CASES}

    def layers(case_id):
        return {la.name: la for la in kb.build(by_id[case_id], "float32").layers}

    tf_same = layers("conv_5x5_s2_same")
    assert tf_same["op"].padding == "same" and "op__pad" not in tf_same
    explicit = layers("conv_5x5_asym_pads")
    assert explicit["op"].padding == "valid" and type(explicit["op__pad"]).__name__ == "ZeroPadding2D"
    assert type(layers("max_pool_3x3_s2_p1_even")["op__pad"]).__name__ == "Pad2D"
    assert type(layers("conv_depthwise_mult2")["op"]).__name__ == "DepthwiseConv2D"
    grouped = layers("conv_3x3_grouped_s2")["op"]
    assert type(grouped).__name__ == "Conv2D" and grouped.groups == 4
    assert kb.layer_name("blocks.3.dw.conv") == "blocks__3__dw__conv"
    assert kb.layer_name("blocks.3.dw.conv", "pad") == "blocks__3__dw__conv__pad"


def test_colliding_layer_names_are_refused():
    g = GraphBuilder("clash", (2, 4, 4))
    g.add("a.b", "activation", INPUT, kind="relu")
    g.add("a__b", "activation", "a.b", kind="relu")
    with pytest.raises(lightnets.errors.SpecError, match="collide"):
        kb.build(g.build(), "float32")


def test_channel_shuffle_is_the_paper_permutation_any_batch():
    g = GraphBuilder("shuffle", (12, 2, 3))
    g.add("op", "channel_shuffle", INPUT, groups=3)
    graph = g.build()
    model = kb.build(graph, "float64")
    for batch in (1, 3):
        x = make_input(graph, batch)
        y = KB.run(model, x)
        c, groups = 12, 3
        perm = [i * (c // groups) + j for j in range(c // groups) for i in range(groups)]  # out[j*g+i]
        np.testing.assert_array_equal(y, x[:, perm])
        np.testing.assert_array_equal(y, reference.run(graph, {}, x))


@pytest.mark.parametrize("model_id, app, expected", [("mobilenet_v1_100", "MobileNet", 4_231_976),
                                                     ("mobilenet_v2_100", "MobileNetV2", 3_504_872)])
def test_trainable_params_match_graph_and_keras_applications(model_id, app, expected):
    import keras

    def trainable(m):
        return sum(int(np.prod(v.shape)) for v in m.trainable_weights)

    graph = lightnets.get_spec(model_id)
    model = kb.build(graph, "float32")
    twin = getattr(keras.applications, app)(weights=None)
    assert trainable(model) == graph.num_params() == trainable(twin) == expected


def test_any_input_size_and_input_errors():
    model = lightnets.build("mobilenet_v1_025", backend="keras", num_classes=10, input_size=64)
    with pytest.raises(lightnets.LightnetsError, match="no lightnets graph"):
        KB.graph_of(object())
    assert model.input_shape == (None, None, None, 3)  # any size the graph allows
    x = np.zeros((2, 3, 64, 64), np.float32)
    assert lightnets.run(model, x).shape == (2, 10)
    assert KB.run(model, np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)
    for bad in (x[0], x.transpose(0, 2, 3, 1), np.zeros((2, 4, 64, 64), np.float32)):
        with pytest.raises(InputShapeError):
            KB.run(model, bad)


def test_compiled_fast_path_runs_frozen_sessions_and_drops_them_on_new_weights():
    """optimize(compile=True) on tensorflow: frozen-graph sessions per input shape (lightnets.backends.keras.frozen);
    a net and a backbone (a list of outputs) match the unfolded reference at two batch sizes, and new weights set
    through lightnets drop the snapshot of the old ones."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("frozen sessions are tensorflow's")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    for features in (False, True):
        model = lightnets.build("mobilenet_v3_small_075", backend="keras", num_classes=10, input_size=32,
                                features=features)
        ref = reference.run(KB.graph_of(model), lightnets.export_weights(model), x)
        fast = lightnets.optimize(model, compile=True)
        assert kb._FROZEN in vars(fast)
        for n in (2, 1):
            got = lightnets.run(fast, x[:n].astype("float32"))
            pairs = zip(got, ref, strict=True) if features else [(got, ref)]
            assert all(rel_error(a, b[:n]) <= MODEL_REL["float32"] for a, b in pairs)
        assert len(vars(fast)[kb._FROZEN].sessions) == 2
    w = {k: v * 1.1 if k.endswith(".weight") else v for k, v in lightnets.export_weights(fast).items()}
    KB.set_weights(fast, w)
    assert kb._FROZEN not in vars(fast)
    want = reference.run(KB.graph_of(fast), w, x)
    assert all(rel_error(a, b) <= MODEL_REL["float32"] for a, b in zip(lightnets.run(fast, x.astype("float32")),
                                                                      want, strict=True))


def test_train_forward_switches_dropout_off_and_back():
    graph = lightnets.get_spec("mobilenet_v2_035", num_classes=10, input_size=64)  # has a dropout
    model = lightnets.build(graph, backend="keras", dtype="float64")
    x = make_input(graph, 2)
    out, stats = KB.train_forward(model, x)
    assert model.get_layer("head__dropout").rate == 0.2
    assert np.array_equal(out, KB.train_forward(lightnets.build(graph, backend="keras", dtype="float64"), x)[0])
    np.testing.assert_array_equal(KB.get_weights(model)["blocks.3.dw.bn.var"], stats["blocks.3.dw.bn.var"])


def _run_python(code: str, **env) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "tests"), **env}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_saved_model_loads_in_fresh_process(tmp_path):
    """A mobilenet and a graph of every custom layer reload (no Lambda) in a new process, batch 1 and 3."""
    models = {}
    for graph, dtype in ((lightnets.get_spec("mobilenet_v2_035", num_classes=10, input_size=64), "float32"),
                         (_custom_graph(), "float64")):
        model = KB.build(graph, dtype)
        KB.set_weights(model, W.init_weights(graph, seed=2))
        model.save(tmp_path / f"{graph.name}.keras")
        for b in (1, 3):
            x = _input(graph, b, seed=b).transpose(0, 2, 3, 1).astype(dtype)
            np.save(tmp_path / f"{graph.name}_x{b}.npy", x)
        models[graph.name] = model
    out = _run_python(f"""
        import json, numpy as np, keras
        from lightnets.backends import keras as kb
        kb.custom_objects()  # registers the lightnets layers
        layers = set()
        for name in {sorted(models)!r}:
            m = keras.saving.load_model({str(tmp_path)!r} + f"/{{name}}.keras")
            layers |= {{type(la).__name__ for la in m.layers}}
            for b in (1, 3):
                x = np.load({str(tmp_path)!r} + f"/{{name}}_x{{b}}.npy")
                np.save({str(tmp_path)!r} + f"/{{name}}_y{{b}}.npy", m.predict_on_batch(x))
        print(json.dumps({{"layers": sorted(layers)}}))
    """)
    assert "Lambda" not in out["layers"]
    assert {"ChannelShuffle", "Pad2D", "AvgPool2DExcludePad", "Subsample2D"} < set(out["layers"])
    for name, model in models.items():
        for b in (1, 3):
            y = np.load(tmp_path / f"{name}_y{b}.npy")
            assert y.shape[0] == b
            np.testing.assert_array_equal(y, model.predict_on_batch(np.load(tmp_path / f"{name}_x{b}.npy")))


_PARITY_SCRIPT = """
    import json, numpy as np, keras, lightnets
    from lightnets import reference, weights as W
    from lightnets.backends import keras as kb
    from lightnets.parity.cases import make_input, op_cases
    KB = kb.BACKEND
    from lightnets.parity.tolerances import rel_error
    from tests.test_backend_keras import _custom_graph
    graphs = [c.graph for c in op_cases() if c.id in {ids!r}] + [_custom_graph()]
    graphs += [lightnets.get_spec(m, num_classes=10, input_size=64) for m in {models!r}]
    errs, round_trip = {{}}, True
    for dtype in {dtypes!r}:
        for g in graphs:
            w = W.init_weights(g, seed=1)
            m = KB.build(g, dtype)
            KB.set_weights(m, w)
            back = KB.get_weights(m)
            round_trip &= all(np.array_equal(back[k], w[k].astype(dtype)) for k in w)
            x = make_input(g, 2) - 3.0
            errs[dtype + " " + g.name] = [rel_error(KB.run(m, x.astype(dtype)), reference.run(g, w, x)),
                                          sorted({{n.op for n in g.nodes}})]
    out = {{"backend": keras.backend.backend(), "errs": errs, "round_trip": round_trip,
           "demotes_float64": keras.backend.result_type("float64", "float32") != "float64"}}
    if {grads!r}:
        from tests.test_backend_contract import _finite_difference_errors, _grad_graph
        g = _grad_graph()
        w, x = W.init_weights(g, seed=4), make_input(g, 2)
        probe = np.random.default_rng(5).standard_normal((2, 3))
        m = KB.build(g, "float64")
        KB.set_weights(m, w)
        out["grad_err"] = max(_finite_difference_errors(g, w, x, probe, KB.gradients(m, x, probe)).values())
    print(json.dumps(out))
"""

# keras 3.15 on non-TF backends maps float64 to float32 in backend.result_type (BIT64_TO_BIT32_DTYPE,
# keras-team/keras#23223, #23704): BatchNormalization, ops.mean and Dense's matmul then compute in
# float32 inside a float64 model. Graphs using these ops get the float32 bound while keras does that.
_DEMOTED_OPS = {"batch_norm", "global_avg_pool", "linear"}


def test_torch_keras_backend_float64():
    ids = ["conv_3x3_s2_asym_tf_same", "conv_depthwise_7x7_s2_asym", "avg_pool_3x3_s2_exclude_pad",
           "max_pool_3x3_s2_even", "activation_hardswish", "activation_hardsigmoid", "mul_same_shape",
           "channel_shuffle_g3", "batch_norm"]
    out = _run_python(_PARITY_SCRIPT.format(ids=ids, models=["mobilenet_v2_035"], dtypes=["float64"],
                                            grads=True), KERAS_BACKEND="torch")
    assert out["backend"] == "torch" and out["round_trip"]
    assert len(out["errs"]) == len(ids) + 2
    for name, (err, ops_used) in out["errs"].items():
        demoted = out["demotes_float64"] and _DEMOTED_OPS & set(ops_used)
        bounds = MODEL_REL if "mobilenet" in name else OP_REL
        _record(f"torch-keras float64{' (demoted ops)' if demoted else ''}", err)
        assert err <= bounds["float32" if demoted else "float64"], name
    _record("torch-keras float64 gradient vs finite differences", out["grad_err"])
    assert out["grad_err"] <= (1e-4 if out["demotes_float64"] else 1e-6)


def test_models_without_onednn():
    out = _run_python(_PARITY_SCRIPT.format(ids=[], models=["mobilenet_v1_100", "mobilenet_v2_100"],
                                            dtypes=list(DTYPES), grads=False), TF_ENABLE_ONEDNN_OPTS="0")
    assert out["round_trip"]
    for name, (err, _) in out["errs"].items():
        dtype = name.split()[0]
        _record(f"no-oneDNN {dtype}", err)
        assert err <= (MODEL_REL if "mobilenet" in name else OP_REL)[dtype], name
