"""Quirks of the paddle backend only (the shared contract is tests/test_backend_contract.py): asymmetric
pools, parameter counts against paddle.vision, state-dict names, dtype/BN momentum, import order."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lightnets
from lightnets import reference
from lightnets.graph import GraphBuilder
from lightnets.parity.cases import make_input
from lightnets.parity.tolerances import OP_REL, rel_error

paddle = pytest.importorskip("paddle")
P = lightnets.load_backend("paddle")

DTYPES = ("float64", "float32")
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


# --- conformance -----------------------------------------------------------------------------


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
