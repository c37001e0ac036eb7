"""The paddle backend against the float64 numpy reference, plus its weights, I/O and import-order rules."""

import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lightnets
from lightnets import reference
from lightnets import weights as W
from lightnets.errors import InputShapeError
from lightnets.graph import GraphBuilder
from lightnets.parity.cases import make_input, op_cases
from lightnets.parity.tolerances import MODEL_REL, OP_REL, rel_error

paddle = pytest.importorskip("paddle")
P = lightnets.load_backend("paddle")

DTYPES = ("float64", "float32")
OPS = {c.id: c for c in op_cases()}
MODELS = [m for m in lightnets.list_models() if m.startswith(("mobilenet_v1_", "mobilenet_v2_"))]
MEASURED: dict[str, float] = {}  # "op float32" -> worst rel error seen, reported at the end


@pytest.fixture(scope="module", autouse=True)
def report_measured(request):
    yield
    plugins = request.config.pluginmanager
    tr, capman = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if tr and capman and MEASURED:
        with capman.global_and_fixture_disabled():
            tr.write_line("\npaddle max rel error vs reference: "
                          + ", ".join(f"{k} {v:.2e}" for k, v in sorted(MEASURED.items())))


def _measure(kind: str, err: float) -> float:
    MEASURED[kind] = max(MEASURED.get(kind, 0.0), err)
    return err


def _trainable(model) -> int:
    return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)


def _built(graph, dtype, seed=0):
    w = W.init_weights(graph, seed)
    model = P.build(graph, dtype)
    P.set_weights(model, w)
    return model, w


# --- conformance -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", list(OPS))
def test_op_case_matches_reference(case_id, dtype):
    case = OPS[case_id]
    model, w = _built(case.graph, dtype)
    x = make_input(case.graph, case.batch)
    y = P.run(model, x)
    assert y.dtype == np.dtype(dtype)
    assert _measure(f"op {dtype}", rel_error(y, reference.run(case.graph, w, x))) <= OP_REL[dtype]


def _pool_graph(op, shape, **attrs):
    g = GraphBuilder(op, shape)
    g.add("op", op, "input", **attrs)
    return g.build()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,attrs", [
    ("avg_pool2d", dict(kernel=3, stride=2, pads=(0, 1, 1, 2), count_include_pad=True)),
    ("avg_pool2d", dict(kernel=3, stride=2, pads=(1, 0, 2, 1), count_include_pad=False)),
    ("max_pool2d", dict(kernel=3, stride=2, pads=(2, 1, 0, 2))),
])
def test_asymmetric_pools(op, attrs, dtype):
    graph = _pool_graph(op, (3, 9, 8), **attrs)
    x = make_input(graph) - 5.0  # all negative: zero padding would win a max
    y = P.run(P.build(graph, dtype), x)
    assert _measure(f"op {dtype}", rel_error(y, reference.run(graph, {}, x))) <= OP_REL[dtype]


@functools.cache
def _model_reference(model_id):
    graph = lightnets.spec(model_id, num_classes=10, input_size=64)
    w = W.init_weights(graph, 0)
    x = make_input(graph, 2)
    return graph, w, x, reference.run(graph, w, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model_id", MODELS)
def test_model_matches_reference(model_id, dtype):
    graph, w, x, ref = _model_reference(model_id)
    model = P.build(graph, dtype)
    P.set_weights(model, w)
    assert _trainable(model) == graph.num_params()
    y = P.run(model, x)
    assert y.shape == (2, 10)
    assert _measure(f"model {dtype}", rel_error(y, ref)) <= MODEL_REL[dtype]


def test_return_all_gives_every_node():
    graph, w, x, ref = _model_reference("mobilenet_v2_035")
    model = P.build(graph, "float64")
    P.set_weights(model, w)
    out = P.run(model, x, return_all=True)
    assert list(out) == [n.name for n in graph.nodes]
    for name, v in out.items():
        assert v.shape == (2, *graph.shapes[name]), name
    assert rel_error(out[graph.output], ref) <= MODEL_REL["float64"]


# --- structure -----------------------------------------------------------------------------


def test_param_counts_match_paddle_vision():
    from paddle.vision.models import mobilenet_v1, mobilenet_v2

    for model_id, twin, count in [("mobilenet_v1_100", mobilenet_v1, 4_231_976),
                                  ("mobilenet_v2_100", mobilenet_v2, 3_504_872)]:
        graph = lightnets.spec(model_id)
        assert graph.num_params() == count
        assert _trainable(P.build(graph, "float32")) == count
        assert _trainable(twin(pretrained=False)) == count


def test_state_dict_names_nest_by_node_name():
    graph = lightnets.spec("mobilenet_v2_035", num_classes=10, input_size=32)
    model = P.build(graph, "float32")
    native = {"gamma": "weight", "beta": "bias", "mean": "_mean", "var": "_variance"}
    want = set()
    for p in graph.params:
        node, suffix = p.name.rsplit(".", 1)
        want.add(f"{node}.{native.get(suffix, suffix)}")
    assert set(model.state_dict()) == want
    assert "blocks.3.dw.conv.weight" in want


def test_layers_dtype_eval_and_bn_momentum():
    g = GraphBuilder("bn", (3, 4, 4))
    g.add("a.bn", "batch_norm", "input", eps=1e-3, momentum=0.01)
    g.add("fc", "linear", g.add("f", "flatten", g.add("p", "global_avg_pool", "a.bn")), out_features=2)
    before = paddle.get_default_dtype()
    model = P.build(g.build(), "float64")
    assert paddle.get_default_dtype() == before
    assert not model.training
    bn = model.a.bn
    assert isinstance(bn, paddle.nn.BatchNorm2D)
    assert bn._momentum == pytest.approx(0.99) and bn._epsilon == 1e-3
    assert all(v.dtype == paddle.float64 for v in model.state_dict().values())
    assert tuple(model.fc.weight.shape) == (3, 2)  # paddle Linear is (in, out)


# --- weights and I/O -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_round_trip_bit_exact(dtype):
    graph = lightnets.spec("mobilenet_v1_025", num_classes=10, input_size=32)
    model, w = _built(graph, dtype, seed=3)
    out = P.get_weights(model)
    assert list(out) == [p.name for p in graph.params]
    for k, v in out.items():
        assert v.dtype == np.dtype(dtype) and v.shape == w[k].shape
        np.testing.assert_array_equal(v, w[k].astype(dtype))
    fresh = P.build(graph, dtype)
    P.set_weights(fresh, out)
    for k, v in P.get_weights(fresh).items():
        np.testing.assert_array_equal(v, out[k])


def test_build_through_api_and_port(tmp_path):
    model = lightnets.build("mobilenet_v2_050", backend="paddle", num_classes=10, input_size=32, seed=1)
    assert P.owns(model) and not P.owns(object())
    graph = P.graph_of(model)
    x = make_input(graph, 2)
    y = lightnets.run(model, x)
    np.testing.assert_allclose(y, reference.run(graph, W.init_weights(graph, 1), x),
                               rtol=0, atol=MODEL_REL["float32"] * 10)
    lightnets.save_weights(model, tmp_path / "w.safetensors")
    other = lightnets.build("mobilenet_v2_050", backend="paddle", num_classes=10, input_size=32, seed=2)
    lightnets.load_weights(other, tmp_path / "w.safetensors")
    np.testing.assert_array_equal(lightnets.run(other, x), y)


def test_paddle_save_load_state_dict(tmp_path):
    graph = lightnets.spec("mobilenet_v1_050", num_classes=10, input_size=32)
    model, _ = _built(graph, "float32", seed=4)
    paddle.save(model.state_dict(), str(tmp_path / "m.pdparams"))
    fresh = P.build(graph, "float32")
    fresh.set_state_dict(paddle.load(str(tmp_path / "m.pdparams")))
    x = make_input(graph, 2)
    np.testing.assert_array_equal(P.run(fresh, x), P.run(model, x))


def test_run_is_eval_and_keeps_train_mode():
    graph = lightnets.spec("mobilenet_v2_035", num_classes=10, input_size=32)
    model, _ = _built(graph, "float64")
    x = make_input(graph, 2)
    y = P.run(model, x)
    model.train()
    np.testing.assert_array_equal(P.run(model, x), y)
    assert model.training


def test_wrong_input_raises():
    graph = lightnets.spec("mobilenet_v1_025", num_classes=10, input_size=32)
    model = P.build(graph, "float32")
    with pytest.raises(InputShapeError, match="4-D"):
        P.run(model, np.zeros((3, 32, 32)))
    with pytest.raises(InputShapeError, match="channels"):
        P.run(model, np.zeros((1, 32, 32, 3)))  # NHWC
    with pytest.raises(InputShapeError, match="channels"):
        lightnets.run(model, np.zeros((1, 1, 32, 32)))


# --- import order ------------------------------------------------------------------------------


def _python(code: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_tensorflow_first_raises_conflict_error():
    r = _python("""
        import sys
        import tensorflow  # noqa: F401
        import lightnets
        from lightnets.errors import BackendConflictError
        try:
            lightnets.build("mobilenet_v1_025", backend="paddle", num_classes=10, input_size=32)
        except BackendConflictError as e:
            assert "paddle" not in sys.modules, "paddle was imported after tensorflow"
            print("CONFLICT:", e)
        else:
            sys.exit(3)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    msg = r.stdout
    assert "CONFLICT:" in msg and "segfault" in msg and "separate process" in msg
    assert "before tensorflow" in msg


def test_paddle_first_then_tensorflow_works():
    r = _python("""
        import paddle  # noqa: F401
        import tensorflow  # noqa: F401
        import numpy as np
        import lightnets
        m = lightnets.build("mobilenet_v1_025", backend="paddle", num_classes=10, input_size=32)
        print("SHAPE", lightnets.run(m, np.zeros((1, 3, 32, 32))).shape)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "SHAPE (1, 10)" in r.stdout
