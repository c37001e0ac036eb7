"""The backend contract, once, over every installed backend (einops' collect_test_backends is the model).

Each test is parametrised over :func:`collect_test_backends`; per-backend test files keep only the
quirks of one framework. Frameworks are imported inside tests only, and test ids carry the backend
name, so conftest runs the paddle cases first (tensorflow imported before paddle segfaults).

Zoo models are the frameworks' own MobileNetV2 (torchvision, paddle.vision, keras.applications) with
random weights, never downloaded.
"""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

import lightnets
import lightnets.backends as backends_pkg
from lightnets.errors import FileFormatError, LightnetsError, WeightsError
from lightnets.frameworks import BACKENDS, load_backend
from lightnets.numerics import rel_error
from lightnets.parity.tolerances import MODEL_REL

SIZE, CLASSES = 32, 10


def collect_test_backends() -> list[str]:
    """The backends whose framework is installed, paddle first."""
    return [n for n in ("paddle", "torch", "keras") if importlib.util.find_spec(BACKENDS[n][0]) is not None]


NAMES = collect_test_backends()


@pytest.fixture(scope="module", params=NAMES)
def name(request):
    """The backend under test: a module-scoped parameter, so pytest runs every paddle case, then every
    torch case, then every keras case (tensorflow last: imported before paddle or torchvision it segfaults)."""
    return request.param


def _x(batch=2, seed=0, dtype="float32"):
    return np.random.default_rng(seed).standard_normal((batch, 3, SIZE, SIZE)).astype(dtype)


def _lightnets_model(name, seed=0, classes=CLASSES, dtype="float32"):
    return lightnets.build("mobilenet_v2_035", backend=name, num_classes=classes, input_size=SIZE, seed=seed,
                           dtype=dtype)


def _zoo_model(name, classes=CLASSES):
    """The framework's own MobileNetV2, random weights."""
    if name == "torch":
        import torchvision

        return torchvision.models.mobilenet_v2(weights=None, num_classes=classes)
    if name == "paddle":
        import paddle.vision.models as pm

        return pm.mobilenet_v2(pretrained=False, num_classes=classes)
    import keras

    return keras.applications.MobileNetV2(weights=None, classes=classes, classifier_activation=None,
                                          input_shape=(SIZE, SIZE, 3))


MAKERS = {"lightnets": _lightnets_model, "zoo": _zoo_model}


def _same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)  # (a safetensors file keeps its keys sorted)
    for k in a:
        assert a[k].shape == b[k].shape and np.array_equal(a[k], b[k]), k


# --- shape of the surface ---------------------------------------------------------------------------
def test_backend_object_has_the_whole_surface(name):
    be = load_backend(name)
    assert be.name == name and be.framework == BACKENDS[name][0] and lightnets.load_backend(name) is be
    for attr in ("build", "owns", "graph_of", "set_weights", "get_weights", "run", "train_forward", "gradients",
                 "read_state_dict", "load_file", "save_file", "state_dict", "load_state_dict", "forward", "cast",
                 "bn_eps", "in_model_preprocessing", "classifier_activation", "set_threads", "timed_call"):
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
        assert be.in_model_preprocessing(m) == (1 / 127.5, -1.0) and be.classifier_activation(m) == "softmax"


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


# --- house rules ---------------------------------------------------------------------------------
def test_backends_mention_no_model_name():
    """A backend lowers ops; it never names an architecture."""
    files = sorted(Path(backends_pkg.__file__).parent.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "base.py", "torch.py", "keras.py", "paddle.py"}
    for f in files:
        hit = re.search(r"mobilenet|shufflenet|ghostnet|efficientnet", f.read_text().lower())
        assert hit is None, f"{f.name} names an architecture: {hit.group(0)!r}"
