"""Keras 3 backend against the float64 numpy reference: ops, models, weights, saving, keras backends.

Keras (and so tensorflow) is imported inside tests only: paddle tests must import paddle first.
Measured maximum errors are printed at the end of the module.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
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

ROOT = Path(__file__).resolve().parents[1]
MODELS = [m for m in lightnets.list_models() if m.startswith(("mobilenet_v1_", "mobilenet_v2_"))]
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


CASES = op_cases() + _extra_cases()


def _input(graph, batch=2, seed=0):
    x = make_input(graph, batch, seed)
    return x - 3.0 if "max_pool" in graph.name else x  # all-negative windows: zero pads would win


def _assert_no_lambda(model):
    assert not [la.name for la in model.layers if type(la).__name__ == "Lambda"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_matches_reference(case, dtype):
    w = W.init_weights(case.graph, seed=1)
    model = kb.build(case.graph, dtype)
    kb.set_weights(model, w)
    _assert_no_lambda(model)
    assert {kb.layer_name(n.name) for n in case.graph.nodes} <= {la.name for la in model.layers}
    x = _input(case.graph, case.batch)
    y = kb.run(model, x.astype(dtype))
    assert y.dtype == np.dtype(dtype)
    err = rel_error(y, reference.run(case.graph, w, x))
    _record(f"op {dtype}", err)
    assert err <= OP_REL[dtype], f"{case.id} {dtype}: rel error {err:.3g}"


def test_pad_choice():
    """keras' "same" only where it is the node's padding at every input size."""
    a = {"kernel": (3, 3), "stride": (2, 2), "pads": (0, 1, 0, 1), "padding": "explicit"}
    assert kb._pad_mode(a) is None  # TF same at even sizes only: explicit
    assert kb._pad_mode({**a, "pads": (0, 0, 0, 0), "padding": "same"}) == "same"
    assert kb._pad_mode({**a, "stride": (1, 1), "pads": (1, 1, 1, 1)}) == "same"
    assert kb._pad_mode({**a, "pads": (1, 1, 1, 1)}) is None
    assert kb._pad_mode({**a, "pads": (0, 0, 0, 0)}) == "valid"


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
        y = kb.run(model, x)
        c, groups = 12, 3
        perm = [i * (c // groups) + j for j in range(c // groups) for i in range(groups)]  # out[j*g+i]
        np.testing.assert_array_equal(y, x[:, perm])
        np.testing.assert_array_equal(y, reference.run(graph, {}, x))


@functools.cache
def _model_case(model_id):
    graph = lightnets.get_spec(model_id, num_classes=10, input_size=64)
    w = W.init_weights(graph, seed=0)
    x = make_input(graph, 2)
    return graph, w, x, reference.run(graph, w, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model_id", MODELS)
def test_model_matches_reference(model_id, dtype):
    graph, w, x, ref = _model_case(model_id)
    model = kb.build(graph, dtype)
    kb.set_weights(model, w)
    _assert_no_lambda(model)
    y = kb.run(model, x.astype(dtype))
    assert y.shape == (2, 10)
    err = rel_error(y, ref)
    _record(f"model {dtype}", err)
    assert err <= MODEL_REL[dtype], f"{model_id} {dtype}: rel error {err:.3g}"


def test_return_all_gives_every_node_in_nchw():
    graph, w, x, _ = _model_case("mobilenet_v2_035")
    model = kb.build(graph, "float64")
    kb.set_weights(model, w)
    every = kb.run(model, x, return_all=True)
    ref = reference.run(graph, w, x, return_all=True)
    assert list(every) == list(ref)
    for name, y in every.items():
        assert rel_error(y, ref[name]) <= MODEL_REL["float64"], name
    np.testing.assert_array_equal(kb.run(model, x, return_all=True)[graph.output], every[graph.output])


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


def test_weights_round_trip_bit_exact(tmp_path):
    graph = lightnets.get_spec("mobilenet_v2_050", num_classes=10, input_size=64)
    w = W.init_weights(graph, seed=3)
    m64 = kb.build(graph, "float64")
    kb.set_weights(m64, w)
    out = kb.get_weights(m64)
    assert list(out) == [p.name for p in graph.params]
    for k in w:
        assert out[k].dtype == np.float64 and out[k].shape == w[k].shape
        np.testing.assert_array_equal(out[k], w[k])
    m32 = lightnets.build(graph, backend="keras", weights=w, dtype="float32")
    e32 = lightnets.export_weights(m32)
    assert all(v.dtype == np.float32 for v in e32.values())
    lightnets.save_weights(m32, tmp_path / "w.safetensors")
    again = lightnets.build(graph, backend="keras", weights=tmp_path / "w.safetensors", dtype="float32")
    for k, v in lightnets.export_weights(again).items():
        np.testing.assert_array_equal(v, e32[k])


def test_build_by_id_and_input_errors():
    model = lightnets.build("mobilenet_v1_025", backend="keras", num_classes=10, input_size=64)
    assert kb.owns(model) and not kb.owns(object())
    with pytest.raises(lightnets.LightnetsError, match="no lightnets graph"):
        kb.graph_of(object())
    assert kb.graph_of(model).name == "mobilenet_v1_025"
    assert model.input_shape == (None, 64, 64, 3)
    x = np.zeros((2, 3, 64, 64), np.float32)
    assert lightnets.run(model, x).shape == (2, 10)
    for bad in (x[0], x.transpose(0, 2, 3, 1), np.zeros((2, 4, 64, 64), np.float32),
                np.zeros((2, 3, 32, 32), np.float32)):
        with pytest.raises(InputShapeError):
            kb.run(model, bad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_train_forward_matches_reference(dtype):
    graph, w, x, _ = _model_case("mobilenet_v2_035")  # has a dropout (off in train_forward)
    model = kb.build(graph, dtype)
    kb.set_weights(model, w)
    out, stats = kb.train_forward(model, x.astype(dtype))
    ref_out, ref_stats = reference.train_forward(graph, w, x)
    assert set(stats) == set(ref_stats)
    err = max(rel_error(out, ref_out), *(rel_error(stats[k], v) for k, v in ref_stats.items()))
    _record(f"train {dtype}", err)
    assert err <= MODEL_REL[dtype]
    assert model.get_layer("head__dropout").rate == 0.2
    np.testing.assert_array_equal(kb.get_weights(model)["blocks.3.dw.bn.var"], stats["blocks.3.dw.bn.var"])


def _grad_graph():
    g = GraphBuilder("grad", (4, 6, 6))
    x = g.conv_bn_act("a", INPUT, 8, 3, stride=2, groups=2, act="hardswish")
    y = g.add("dw", "conv2d", x, out_channels=8, kernel=3, pads=1, groups=8, bias=True)
    s = g.add("se", "activation", g.add("sq", "global_avg_pool", y), kind="hardsigmoid")
    y = g.add("scale", "mul", [y, s])
    g.classifier(y, 3, dropout=0.5)
    return g.build()


def _finite_difference_errors(graph, w, x, probe, grads, h=1e-6, picks=3):
    """Max relative error of ``grads`` against central differences of the reference, per key."""
    def f(w, x):
        return float(np.sum(reference.run(graph, w, x) * probe))
    rng, errs = np.random.default_rng(0), {}
    for key in [*(p.name for p in graph.params if p.trainable), "input"]:
        base = x if key == "input" else w[key]
        got, scale = grads[key], np.max(np.abs(grads[key])) or 1.0
        worst = 0.0
        for i in rng.choice(base.size, min(picks, base.size), replace=False):
            plus, minus = base.copy(), base.copy()
            plus.flat[i] += h
            minus.flat[i] -= h
            fp = f(w, plus) if key == "input" else f({**w, key: plus}, x)
            fm = f(w, minus) if key == "input" else f({**w, key: minus}, x)
            worst = max(worst, abs((fp - fm) / (2 * h) - got.flat[i]) / scale)
        errs[key] = worst
    return errs


def test_gradients_match_finite_differences():
    graph = _grad_graph()
    w, x = W.init_weights(graph, seed=4), make_input(graph, 2)
    probe = np.random.default_rng(5).standard_normal((2, 3))
    model = kb.build(graph, "float64")
    kb.set_weights(model, w)
    grads = kb.gradients(model, x, probe)
    assert set(grads) == {p.name for p in graph.params if p.trainable} | {"input"}
    assert all(grads[k].shape == w[k].shape for k in w if k in grads) and grads["input"].shape == x.shape
    errs = _finite_difference_errors(graph, w, x, probe, grads)
    assert max(errs.values()) <= 1e-6, errs


def _run_python(code: str, **env) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **env}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_saved_model_loads_in_fresh_process(tmp_path):
    """A mobilenet and a graph of every custom layer reload (no Lambda) in a new process, batch 1 and 3."""
    models = {}
    for graph, dtype in ((lightnets.get_spec("mobilenet_v2_035", num_classes=10, input_size=64), "float32"),
                         (_custom_graph(), "float64")):
        model = kb.build(graph, dtype)
        kb.set_weights(model, W.init_weights(graph, seed=2))
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
    from lightnets.parity.tolerances import rel_error
    from tests.test_backend_keras import _custom_graph
    graphs = [c.graph for c in op_cases() if c.id in {ids!r}] + [_custom_graph()]
    graphs += [lightnets.get_spec(m, num_classes=10, input_size=64) for m in {models!r}]
    errs, round_trip = {{}}, True
    for dtype in {dtypes!r}:
        for g in graphs:
            w = W.init_weights(g, seed=1)
            m = kb.build(g, dtype)
            kb.set_weights(m, w)
            back = kb.get_weights(m)
            round_trip &= all(np.array_equal(back[k], w[k].astype(dtype)) for k in w)
            x = make_input(g, 2) - 3.0
            errs[dtype + " " + g.name] = [rel_error(kb.run(m, x.astype(dtype)), reference.run(g, w, x)),
                                          sorted({{n.op for n in g.nodes}})]
    out = {{"backend": keras.backend.backend(), "errs": errs, "round_trip": round_trip,
           "demotes_float64": keras.backend.result_type("float64", "float32") != "float64"}}
    if {grads!r}:
        from tests.test_backend_keras import _finite_difference_errors, _grad_graph
        g = _grad_graph()
        w, x = W.init_weights(g, seed=4), make_input(g, 2)
        probe = np.random.default_rng(5).standard_normal((2, 3))
        m = kb.build(g, "float64")
        kb.set_weights(m, w)
        out["grad_err"] = max(_finite_difference_errors(g, w, x, probe, kb.gradients(m, x, probe)).values())
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


def test_backend_names_no_architecture():
    pattern = re.compile(r"shufflenet|mobilenet|ghostnet|mnasnet|efficientnet", re.I)
    assert not pattern.search((ROOT / "backends" / "keras.py").read_text())
