"""The backend contract, once, over every installed backend (einops' collect_test_backends is the model).

Each test is parametrised over the backends it applies to: ``name``, the frameworks with native files
(:func:`collect_test_backends`), or ``any_name``, every installed backend, the inference runtimes (ONNX Runtime,
LiteRT) too, whose refusals of every training call are rows of their own. Per-backend test files keep only the
quirks of one backend. Frameworks are imported inside tests only, and test ids carry the backend
name, so conftest runs the paddle cases first (tensorflow imported before paddle segfaults).

Zoo models are the frameworks' own MobileNetV2 (torchvision, paddle.vision) or MobileNet 0.25
(keras.applications: keras builds and saves layer by layer, and it has 3x fewer layers) with random weights,
never downloaded; the lightnets model of the native I/O tests is mobilenet_v1_025 for the same reason.
"""

import dataclasses
import functools
import importlib
import importlib.util
import re

import numpy as np
import profiles
import pytest

import lightnets
from lightnets import optim, reference
from lightnets import weights as W
from lightnets.errors import FileFormatError, InputShapeError, LightnetsError, WeightsError
from lightnets.frameworks import BACKENDS, NATIVE, TRAINERS, backend_of, installed, load_backend
from lightnets.graph import INPUT, GraphBuilder
from lightnets.numerics import rel_error
from lightnets.parity.cases import make_input, op_cases
from lightnets.parity.tolerances import MODEL_REL, OP_REL

pytestmark = [  # keras' own model.save converts tf.Variables with np.array(): a numpy 2 warning not ours
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning")]

SIZE, CLASSES = 32, 10
DTYPES = ("float64", "float32")
OPS = op_cases()
# the MobileNetV1/V2 ids: one width of each variant in `make test` (every width: LIGHTNETS_SLOW=1, and the
# every-id parity matrix of tests/test_parity.py in torch and paddle)
MODELS = profiles.smallest_of_each_variant(m for m in lightnets.list_models()
                                           if m.startswith(("mobilenet_v1_", "mobilenet_v2_")))


def collect_test_backends() -> list[str]:
    """The backends with native files whose framework is installed, in import order."""
    return installed(NATIVE)


NAMES = collect_test_backends()
EVERY = installed()  # every backend, in import order: the inference runtimes too
RUNTIMES = [n for n in EVERY if not BACKENDS[n].trains]
# (backend, model id): a backend that converts another's lowering (LiteRT: keras', ~20 s a model) runs one, a
# "same"-padded inverted-residual net; the lowering's own rows run them all
MODEL_ROWS = [(n, m) for n in EVERY for m in (["mobilenet_v2_035_keras"] if BACKENDS[n].lowered_by else MODELS)]


@pytest.fixture(scope="module", params=NAMES)
def name(request):
    """The backend under test: a module-scoped parameter, so pytest runs every case of one backend, then the
    next, in ``frameworks.IMPORT_ORDER`` (keras last: tensorflow imported before paddle segfaults)."""
    return request.param


@pytest.fixture(scope="module", params=EVERY)
def any_name(request):
    """The backend under test, the inference runtimes included (as ``name``: module-scoped, in import order)."""
    return request.param


def _bound(bounds, name, dtype):
    """The bound for ``dtype`` in backend ``name``: float32's where it computes float64 in float32 inside."""
    return bounds[dtype if load_backend(name).computes_float64 else "float32"]


def _x(batch=2, seed=0, dtype="float32"):
    return np.random.default_rng(seed).standard_normal((batch, 3, SIZE, SIZE)).astype(dtype)


def _lightnets_model(name, seed=0, classes=CLASSES, dtype="float32"):
    return lightnets.build("mobilenet_v1_025", backend=name, num_classes=classes, input_size=SIZE, seed=seed,
                           dtype=dtype)


def _zoo_model(name, classes=CLASSES):
    """The framework's own MobileNetV2 (keras: MobileNet 0.25), random weights."""
    if name == "torch":
        import torchvision

        return torchvision.models.mobilenet_v2(weights=None, num_classes=classes)
    if name == "paddle":
        import paddle.vision.models as pm

        return pm.mobilenet_v2(pretrained=False, num_classes=classes)
    import keras

    return keras.applications.MobileNet(alpha=0.25, weights=None, classes=classes, classifier_activation=None,
                                        input_shape=(SIZE, SIZE, 3))


MAKERS = {"lightnets": _lightnets_model, "zoo": _zoo_model}


def _same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)  # (a safetensors file keeps its keys sorted)
    for k in a:
        assert a[k].shape == b[k].shape and np.array_equal(a[k], b[k]), k


def _input(graph, batch=2, seed=0):
    x = make_input(graph, batch, seed)
    return x - 3.0 if "max_pool" in graph.name else x  # all-negative windows: zero pads would win a max


def _built(name, graph, dtype, seed=0):
    be = load_backend(name)
    w = W.init_weights(graph, seed)
    model = be.build(graph, dtype)
    be.set_weights(model, w)
    return be, model, w


# --- the contract on lightnets models: numbers against the float64 numpy reference ------------------
@functools.cache
def _op_reference(case_id):
    case = next(c for c in OPS if c.id == case_id)
    x = _input(case.graph, case.batch)
    return x, reference.run(case.graph, W.init_weights(case.graph, 1), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", OPS, ids=[c.id for c in OPS])
def test_op_matches_reference(any_name, case, dtype):
    be, model, _ = _built(any_name, case.graph, dtype, seed=1)
    x, ref = _op_reference(case.id)
    y = be.run(model, x.astype(dtype))
    assert y.dtype == np.dtype(dtype)
    err = rel_error(y, ref)
    assert err <= _bound(OP_REL, any_name, dtype), f"{case.id} {dtype}: rel error {err:.3g}"


@functools.cache
def _model_case(model_id):
    graph = lightnets.get_spec(model_id, num_classes=CLASSES, input_size=64)
    w = W.init_weights(graph, seed=0)
    x = make_input(graph, 2)
    return graph, w, x, reference.run(graph, w, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("any_name, model_id", MODEL_ROWS)
def test_model_matches_reference(any_name, model_id, dtype):
    graph, w, x, ref = _model_case(model_id)
    be = load_backend(any_name)
    model = be.build(graph, dtype)
    be.set_weights(model, w)
    y = be.run(model, x.astype(dtype))
    assert y.shape == (2, CLASSES) and y.dtype == np.dtype(dtype)
    err = rel_error(y, ref)
    assert err <= _bound(MODEL_REL, any_name, dtype), f"{model_id} {dtype}: rel error {err:.3g}"


def test_return_all_gives_every_node_in_nchw(name):
    graph, w, x, _ = _model_case("mobilenet_v2_035")
    be, model, _ = _built(name, graph, "float64")
    every = be.run(model, x, return_all=True)
    ref = reference.run(graph, w, x, return_all=True)
    assert list(every) == [n.name for n in graph.nodes] == list(ref)
    for node, y in every.items():
        assert y.shape == ref[node].shape and rel_error(y, ref[node]) <= MODEL_REL["float64"], node
    assert np.array_equal(be.run(model, x, return_all=True)[graph.output], every[graph.output])
    # (keras: the every-node model is another compiled function than run's: equal within summation order)
    assert rel_error(be.run(model, x), every[graph.output]) <= MODEL_REL["float64"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_train_forward_matches_reference(name, dtype):
    graph, w, x, _ = _model_case("mobilenet_v2_035")  # has a dropout (off in train_forward)
    be, model, _ = _built(name, graph, dtype)
    out, stats = be.train_forward(model, x.astype(dtype))
    ref_out, ref_stats = reference.train_forward(graph, w, x)
    assert set(stats) == set(ref_stats) and out.dtype == np.dtype(dtype)
    err = max(rel_error(out, ref_out), *(rel_error(stats[k], v) for k, v in ref_stats.items()))
    assert err <= MODEL_REL[dtype], err
    now = be.get_weights(model)
    assert all(np.array_equal(now[k], v) for k, v in stats.items())  # the model holds the new statistics
    y = be.run(model, x.astype(dtype))  # and is back in eval mode
    assert rel_error(y, reference.run(graph, {**w, **ref_stats}, x)) <= MODEL_REL[dtype]


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


def test_gradients_match_finite_differences(name):
    graph = _grad_graph()
    be, model, w = _built(name, graph, "float64", seed=4)
    x = make_input(graph, 2)
    probe = np.random.default_rng(5).standard_normal((2, 3))
    before = be.get_weights(model)
    grads = be.gradients(model, x, probe)
    assert set(grads) == {p.name for p in graph.params if p.trainable} | {"input"}
    assert all(grads[k].shape == w[k].shape for k in grads if k != "input") and grads["input"].shape == x.shape
    errs = _finite_difference_errors(graph, w, x, probe, grads)
    assert max(errs.values()) <= 1e-6, errs
    after = be.get_weights(model)
    assert all(np.array_equal(after[k], v) for k, v in before.items())  # eval mode: nothing updated
    assert all(np.array_equal(g, grads[k]) for k, g in be.gradients(model, x, probe).items())  # no accumulation


# --- weights, ownership, inputs --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_round_trip_bit_exact(name, dtype):
    graph = lightnets.get_spec("mobilenet_v1_025", num_classes=CLASSES, input_size=SIZE)
    be, model, w = _built(name, graph, dtype, seed=3)
    out = be.get_weights(model)
    assert list(out) == [p.name for p in graph.params]
    for k, v in out.items():
        assert v.dtype == np.dtype(dtype) and v.shape == w[k].shape and np.array_equal(v, w[k].astype(dtype)), k
    fresh = be.build(graph, dtype)
    be.set_weights(fresh, out)
    again = be.get_weights(fresh)
    assert all(np.array_equal(again[k], v) for k, v in out.items())
    x = make_input(graph, 2)
    assert np.array_equal(be.run(fresh, x), be.run(model, x))


def test_canonical_file_round_trip_and_existing_files(any_name, tmp_path):
    """Weights go through a canonical file; an existing file, in any of the backend's formats, is replaced only
    with ``overwrite=True``, and nothing else is written beside it."""
    a = _lightnets_model(any_name, seed=1)
    b = _lightnets_model(any_name, seed=2)
    path = lightnets.save_weights(a, tmp_path / "w.safetensors")
    lightnets.load_weights(b, path)
    be = load_backend(any_name)
    _same_state(be.get_weights(b), be.get_weights(a))
    for fmt, suffix in be.FORMATS.items():
        kept = tmp_path / f"kept{suffix}"
        kept.write_bytes(b"keep")
        with pytest.raises(FileFormatError, match="exists; pass overwrite=True"):
            lightnets.save_weights(a, kept, fmt)
        assert kept.read_bytes() == b"keep"
        kept.unlink()
    assert lightnets.save_weights(b, path, overwrite=True) == path and [p.name for p in tmp_path.iterdir()] == [
        path.name]


def test_ownership_and_build_by_id(any_name):
    be = load_backend(any_name)
    model = lightnets.build("mobilenet_v1_025", backend=any_name, num_classes=7, input_size=SIZE)
    assert be.owns(model) and not be.owns(object()) and backend_of(model) is be
    if any_name in NAMES:
        assert not be.owns(_zoo_model(any_name))
    assert be.graph_of(model).name == "mobilenet_v1_025" and be.bn_eps(model) == {1e-5}
    y = lightnets.run(model, make_input(be.graph_of(model), 3))
    assert y.shape == (3, 7) and y.dtype == np.float32


@pytest.mark.parametrize("shape, message", [
    ((3, 32, 32), "4-D NCHW"), ((1, 32, 32, 3), "is it in NCHW layout"), ((1, 1, 32, 32), "the model expects 3")])
def test_bad_input_raises_input_shape_error(any_name, shape, message):
    be = load_backend(any_name)
    model = _lightnets_model(any_name)
    for call in (be.run, be.train_forward) if any_name in TRAINERS else (be.run,):
        with pytest.raises(InputShapeError, match=message):
            call(model, np.zeros(shape, np.float32))


def test_run_is_eval_even_in_train_mode_and_restores_it(name):
    be = load_backend(name)
    model = _lightnets_model(name, dtype="float64")
    x = make_input(be.graph_of(model), 2).astype("float64")
    y = be.run(model, x)
    if hasattr(model, "train"):  # torch / paddle layers have a train/eval switch; keras runs inference
        model.train()
        assert np.array_equal(be.run(model, x), y) and model.training
        model.train()
        be.train_forward(model, x)
        assert not model.training  # train_forward leaves eval mode
    assert np.array_equal(be.run(model, x), be.run(model, x))


def _train_mode_forward(name, model, x):
    """The framework's own train-mode forward of the NCHW batch ``x`` (dropouts and drop-paths ON), NCHW out."""
    if name == "torch":
        import torch

        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    if name == "paddle":
        import paddle

        return model(paddle.to_tensor(x)).numpy()
    return np.asarray(model(x.transpose(0, 2, 3, 1), training=True)).transpose(0, 3, 1, 2)


def test_drop_path_drops_whole_samples_in_train_mode_and_is_off_in_training(name):
    """The seeded-mask check of drop_path: in train mode each sample's output is 0 or x / (1 - rate) (float64, to
    1e-12), the mask recovered from the output has a plausible kept count (binomial, 5 sd); parity's train mode
    (``Backend.training``, ``train_forward``) and eval are the identity."""
    case = next(c for c in OPS if c.graph.node("op").op == "drop_path")
    rate, n = case.graph.node("op").attrs["rate"], 64
    be, model, _ = _built(name, case.graph, "float64")
    x = make_input(case.graph, n)
    if hasattr(model, "train"):
        model.train()
    y = _train_mode_forward(name, model, x)
    if hasattr(model, "eval"):
        model.eval()
    kept = np.array([np.abs(s).max() > 0 for s in y])
    scaled = x / (1.0 - rate)
    assert all(np.abs(y[i] - (scaled[i] if kept[i] else 0.0)).max() <= 1e-12 * np.abs(scaled[i]).max()
               for i in range(n))
    assert abs(kept.sum() - n * (1 - rate)) <= 5 * np.sqrt(n * rate * (1 - rate)), kept.sum()
    with be.training(model):
        assert np.array_equal(_train_mode_forward(name, model, x), x)
    assert np.array_equal(be.train_forward(model, x)[0], x) and np.array_equal(be.run(model, x), x)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_inference_runtime_refuses_every_training_call_by_name(runtime):
    be = load_backend(runtime)
    model = _lightnets_model(runtime)  # nothing compiled: every call is refused before it runs
    x, spec = _x(), optim.SGD()
    for call in (lambda: be.train_forward(model, x), lambda: be.gradients(model, x, np.zeros((2, CLASSES))),
                 lambda: be.training(model), lambda: be.optimizer(spec, []), lambda: be.loss(x, [0, 1]),
                 lambda: be.train_steps(model, [x], [np.array([0, 1])], spec), lambda: be.sync_batchnorm(model)):
        with pytest.raises(LightnetsError, match=f"not supported by {runtime}.*use one of {', '.join(TRAINERS)}"):
            call()


# --- shape of the surface ---------------------------------------------------------------------------
def test_backend_object_has_the_whole_surface(any_name):
    be = load_backend(any_name)
    assert be.name == any_name and be.framework == BACKENDS[any_name].package
    assert lightnets.load_backend(any_name) is be
    for attr in ("build", "owns", "graph_of", "set_weights", "get_weights", "run", "train_forward", "gradients",
                 "read_state_dict", "load_file", "save_file", "state_dict", "load_state_dict", "forward", "cast",
                 "bn_eps", "in_model_preprocessing", "classifier_activation", "set_threads", "timed_call",
                 "training", "optimizer", "loss", "train_steps", "sync_batchnorm", "optimize"):
        assert callable(getattr(be, attr)), attr
    assert all(s.startswith(".") for s in be.FORMATS.values())


def test_native_names_have_one_shape(name):
    """Every backend's table names the same ops and canonical suffixes (the zoo's matcher reads them)."""
    table = load_backend(name).NATIVE_NAMES
    assert {op: set(t) for op, t in table.items()} == {
        "conv2d": {"weight", "bias"}, "depthwise_conv2d": {"weight", "bias"}, "linear": {"weight", "bias"},
        "batch_norm": {"gamma", "beta", "mean", "var"}}
    # the BN leaves are the framework's own (DESIGN §2)
    assert table["batch_norm"]["mean"] == {"torch": "running_mean", "keras": "moving_mean",
                                           "paddle": "_mean"}[name]


def test_state_dict_names_bn_by_native_names(name):
    be = load_backend(name)
    sd = be.state_dict(_lightnets_model(name))
    leaves = {k.rsplit(".", 1)[1] for k in sd}
    assert set(be.NATIVE_NAMES["batch_norm"].values()) <= leaves


# --- native I/O round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lightnets", "zoo"])
def test_save_read_load_round_trip(name, kind, tmp_path):
    be = load_backend(name)
    make = MAKERS[kind]
    a = make(name) if kind == "zoo" else make(name, seed=1)
    want = be.state_dict(a)
    for fmt, suffix in be.FORMATS.items():
        b = make(name) if kind == "zoo" else make(name, seed=2)
        path = tmp_path / f"w{suffix}"
        assert be.save_file(a, path, fmt) == path and path.is_file()
        assert [p.name for p in tmp_path.iterdir()] == [path.name]  # nothing else left behind
        got = be.read_state_dict(path, fmt)
        if fmt == "keras-weights":  # stored by layer position, not name: the same arrays, other keys
            def key(v):
                return (v.shape, v.tobytes())
            assert sorted(map(key, got.values())) == sorted(map(key, want.values()))
        else:
            _same_state(got, want)
        be.load_file(b, path, fmt)
        _same_state(be.state_dict(b), want)
        x = _x()
        assert np.array_equal(be.forward(b, x), be.forward(a, x)), fmt
        path.unlink()


def test_save_file_takes_any_target_name(name, tmp_path):
    """save_file writes exactly the path given, whatever its suffix (atomic-write temp names)."""
    be = load_backend(name)
    m = _lightnets_model(name)
    for fmt in be.FORMATS:
        path = tmp_path / f"{fmt}.tmp"
        be.save_file(m, path, fmt)
        assert path.is_file()
        be.load_file(_lightnets_model(name, seed=3), path, fmt)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{f}.tmp" for f in be.FORMATS)


@pytest.mark.parametrize("kind", ["lightnets", "zoo"])
def test_state_dict_round_trip(name, kind):
    be = load_backend(name)
    a, b = (_zoo_model(name), _zoo_model(name)) if kind == "zoo" else (_lightnets_model(name, seed=1),
                                                                         _lightnets_model(name, seed=2))
    sd = be.state_dict(a)
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    be.load_state_dict(b, sd)
    _same_state(be.state_dict(b), sd)
    assert np.array_equal(be.forward(b, _x()), be.forward(a, _x()))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_equals_run_on_lightnets_models(name, dtype):
    be = load_backend(name)
    m = _lightnets_model(name, dtype=dtype)
    x = _x(3, dtype=dtype)
    y = be.forward(m, x)
    assert y.dtype == np.dtype(dtype) and y.shape == (3, CLASSES)
    assert np.array_equal(y, be.run(m, x))


@pytest.mark.parametrize("kind", ["lightnets", "zoo"])
def test_cast_to_float64(name, kind):
    be = load_backend(name)
    m = MAKERS[kind](name)
    if kind == "zoo" and name != "keras":  # zoo models are not in eval mode: forward must set and restore it
        m.train()
    x = _x()
    y32 = be.forward(m, x)
    m64 = be.cast(m, "float64")
    y64 = be.forward(m64, x.astype("float64"))
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    assert all(v.dtype == np.float64 for v in be.state_dict(m64).values() if v.dtype.kind == "f")
    assert all(v.dtype == np.float32 for v in be.state_dict(m).values() if v.dtype.kind == "f")  # a copy
    err = rel_error(y32, y64)
    assert 0 < err <= MODEL_REL["float32"], err  # float32 noise, and truly another precision
    if name == "keras":  # every layer computes in float64 (keras.applications included)
        assert {la.compute_dtype for la in m64.layers if type(la).__name__ != "InputLayer"} == {"float64"}
    if kind == "lightnets":
        assert be.owns(m64) and be.graph_of(m64) is be.graph_of(m)
        assert rel_error(be.run(m64, x.astype("float64")), y64) == 0
    elif name != "keras":
        assert m.training  # forward restored the mode
    assert np.array_equal(be.forward(be.cast(m64, "float32"), x), y32)


def test_bn_eps(name):
    be = load_backend(name)
    assert be.bn_eps(_lightnets_model(name)) == {1e-5}
    assert be.bn_eps(_zoo_model(name)) == {1e-3 if name == "keras" else 1e-5}


def test_preprocessing_and_classifier_activation(name):
    be = load_backend(name)
    for m in (_lightnets_model(name), _zoo_model(name)):
        assert be.in_model_preprocessing(m) is None and be.classifier_activation(m) == "linear"
    if name == "keras":
        import keras

        inp = keras.Input((4, 4, 3))
        y = keras.layers.Dense(3, activation="softmax")(keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp))
        m = keras.Model(inp, y)
        # keras multiplies by the scale cast to floatx (float32), in a float64 model too: that value
        assert be.in_model_preprocessing(m) == (float(np.float32(1 / 127.5)), -1.0)
        assert be.classifier_activation(m) == "softmax"


def test_timed_call(name):
    be = load_backend(name)
    m = _lightnets_model(name)
    to_input, call = be.timed_call(m)
    x = _x()
    y = be.to_numpy(call(to_input(x)))
    assert rel_error(y, be.run(m, x)) <= MODEL_REL["float32"]


# --- errors ------------------------------------------------------------------------------------------
def test_truncated_or_missing_file_is_a_file_format_error(name, tmp_path):
    be = load_backend(name)
    m = _lightnets_model(name)
    for fmt, suffix in be.FORMATS.items():
        path = tmp_path / f"w{suffix}"
        be.save_file(m, path, fmt)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(FileFormatError, match=re.escape(str(path))):
            be.read_state_dict(path, fmt)
        with pytest.raises(FileFormatError, match=re.escape(str(path))):
            be.load_file(m, path, fmt)
        with pytest.raises(FileFormatError, match="does not exist"):
            be.read_state_dict(tmp_path / "nothing.bin", fmt)
    with pytest.raises(FileFormatError, match="not a"):
        be.save_file(m, tmp_path / "x.bin", "npz")


def test_wrong_keys_are_a_weights_error_naming_them(name):
    be = load_backend(name)
    m = _lightnets_model(name)
    sd = be.state_dict(m)
    keys = list(sd)
    dropped, renamed, reshaped = keys[1], keys[2], keys[4]
    bad = {k: v for k, v in sd.items() if k not in (dropped, renamed)}
    bad[renamed + "_x"] = sd[renamed]
    bad[reshaped] = np.zeros((*sd[reshaped].shape, 2), sd[reshaped].dtype)
    before = be.state_dict(m)
    with pytest.raises(WeightsError) as e:
        be.load_state_dict(m, bad)
    for k in (dropped, renamed, renamed + "_x", reshaped):
        assert repr(k) in str(e.value) or k in str(e.value), k
    _same_state(be.state_dict(m), before)  # nothing assigned


def test_file_of_another_class_count_is_a_weights_error(name, tmp_path):
    be = load_backend(name)
    m, other = _lightnets_model(name), _lightnets_model(name, classes=7)
    a, b = be.state_dict(m), be.state_dict(other)
    for fmt, suffix in be.FORMATS.items():
        path = tmp_path / f"w{suffix}"
        be.save_file(other, path, fmt)
        with pytest.raises(WeightsError) as e:
            be.load_file(m, path, fmt)
        if fmt != "keras-weights":  # keras' own message; the others name the mis-shaped classifier keys
            for k in (k for k in a if a[k].shape != b[k].shape):
                assert k in str(e.value), (fmt, k)


def test_not_a_model_of_this_framework(name):
    with pytest.raises(LightnetsError):
        load_backend(name).state_dict(object())


# --- house rules (a backend names no architecture: tests/test_spec.py) ----------------------------------
def test_every_backend_is_one_row_that_the_cli_parity_bench_and_port_read():
    """lightnets.frameworks.FRAMEWORKS is the only list of backends: each row's module exists (found without
    importing its framework), and the CLI's, parity's, bench's and port's choices are read from it."""
    from lightnets import bench, cli, frameworks
    from lightnets.parity import runner, train

    port = importlib.import_module("lightnets.port")  # lightnets.port is the function

    for row in frameworks.FRAMEWORKS:
        assert importlib.util.find_spec(frameworks.module_of(row.name)) is not None, row.name
        assert row.trains or not row.native_files  # an inference runtime has no state dict of its own
    names = [f.name for f in frameworks.FRAMEWORKS]
    assert list(bench.BACKENDS) == names and sorted(port.IMPORT_ORDER) == sorted(names)
    tf_rows = [n for n in frameworks.IMPORT_ORDER if frameworks.BACKENDS[n].tensorflow]
    assert frameworks.IMPORT_ORDER.index("paddle") < min(frameworks.IMPORT_ORDER.index(n) for n in tf_rows)
    assert cli.PARITY_TARGETS is runner.TARGETS and set(train.TRAIN_TARGETS) <= set(runner.TARGETS)
    assert {runner.TARGETS[t][0] for t in runner.INFERENCE_ONLY} == {f.name for f in frameworks.FRAMEWORKS
                                                                     if not f.trains}
    assert set(bench.RUNTIME_TWINS) == {f.name for f in frameworks.FRAMEWORKS if not f.trains}


def missing_converters() -> list[tuple[str, str]]:
    """(op, backend) pairs without a converter: each installed backend's ``CONVERTERS`` against ``ops.OPS``
    (LiteRT converts keras' lowering: the table's ``lowered_by``). Imports every installed framework, paddle first."""
    from lightnets import frameworks, ops

    missing = []
    for name in frameworks.installed():
        lowering = frameworks.BACKENDS[name].lowered_by or name
        converters = importlib.import_module(frameworks.module_of(lowering)).CONVERTERS
        missing += [(op, name) for op in ops.OPS if op not in converters]
        assert set(converters) <= set(ops.OPS), (name, set(converters) - set(ops.OPS))
    return missing


def test_every_op_has_a_converter_in_every_backend(monkeypatch):
    assert missing_converters() == []
    # a throwaway op added to the vocabulary alone is missing in every backend
    from lightnets import frameworks, ops

    monkeypatch.setitem(ops.OPS, "throwaway", dataclasses.replace(ops.OPS["dropout"], name="throwaway"))
    assert missing_converters() == [("throwaway", n) for n in frameworks.installed()]
