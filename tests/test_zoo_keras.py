"""keras.applications importers: MobileNet / MobileNetV2 / MobileNetV3 import into the ``_keras`` ids,
run in the keras and torch backends like the keras model (float32, rel error <= 1e-4), in paddle in
a subprocess, export back into a fresh keras model, and bad weights raise WeightsError naming keys.

keras.applications models are built locally with weights=None and randomised BN statistics (never
downloaded). This module imports no framework at import time and never imports paddle: tensorflow
before paddle in one process segfaults (DESIGN §2), so the paddle check runs in a subprocess.
"""

import json
import os
import subprocess
import sys

import numpy as np
import profiles
import pytest

import lightnets
from lightnets import zoo
from lightnets.errors import WeightsError
from lightnets.numerics import rel_error

NUM_CLASSES = 10
TOL = 1e-4
ERRORS: dict[str, float] = {}  # "name@size -> backend": max rel error, printed with -s
# NB: no test name here may contain "paddle": conftest runs those first, before tensorflow is loaded.
# (name, input size): keras.applications accepts any size >= 32 with weights=None; 99 is odd, where
# TF 'same', correct_pad and MobileNet's fixed ((0, 1), (0, 1)) pads all differ from the even case
CASES = [("MobileNet", 96), ("MobileNet_0.25", 99), ("MobileNetV2", 96), ("MobileNetV2_0.35", 99),
         ("MobileNetV3Large", 96), ("MobileNetV3Small", 96), ("MobileNetV3Small_0.75", 99)]
# `make test` leaves out the full-width MobileNet, MobileNetV2 and MobileNetV3Large at 96 (LIGHTNETS_SLOW=1 runs
# them): the first two graphs are their narrow twins' at 99; the even-size pads of both are
# tests/test_input_sizes.py (keras and torch against the full-width keras.applications models built at 200 and
# 225), the import of a MobileNet model object at 96 the third-backend test below; MobileNetV3Large's graph is
# imported at width 0.75 in tests/test_zoo_cross.py
QUICK_CASES = CASES if profiles.SLOW else [c for c in CASES if c not in (("MobileNet", 96), ("MobileNetV2", 96),
                                                                         ("MobileNetV3Large", 96))]
# keras.applications' own trainable counts at 1000 classes (DESIGN §3)
PARAMS = {"MobileNet": 4_231_976, "MobileNet_0.75": 2_585_560, "MobileNet_0.5": 1_331_592,
          "MobileNet_0.25": 470_072, "MobileNetV2": 3_504_872, "MobileNetV2_0.75": 2_636_424,
          "MobileNetV2_0.5": 1_968_680, "MobileNetV2_0.35": 1_677_128, "MobileNetV2_1.4": 6_108_776,
          "MobileNetV3Large": 5_483_032, "MobileNetV3Large_0.75": 3_993_528,
          "MobileNetV3Small": 2_542_856, "MobileNetV3Small_0.75": 2_041_872,
          "EfficientNetB0": 5_288_548, "EfficientNetB1": 7_794_184, "EfficientNetB2": 9_109_994,
          "EfficientNetB3": 12_233_232}
# an EfficientNet keras.applications build is ~3.5 s: `make test` counts B0's (its template is the import test's),
# LIGHTNETS_SLOW=1 B1-B3's too (their graphs' counts are tests/test_archs.py's)
PARAM_NAMES = sorted(n for n in PARAMS if profiles.SLOW or n in ("EfficientNetB0",) or not n.startswith("Efficient"))


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    keras = pytest.importorskip("keras")
    return keras


def _randomise(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 1.5, c)])
    return model


def _keras_model(keras, name, size, seed=0, **kw):
    keras.utils.set_random_seed(seed)
    e = zoo.ZOO[("keras", name)]
    model = e.make(NUM_CLASSES, size) if not kw else _make_with(keras, name, size, **kw)
    return _randomise(model, seed + 1)


def _make_with(keras, name, size, **kw):
    ctor, _, alpha = name.partition("_")
    return getattr(keras.applications, ctor)(weights=None, classes=NUM_CLASSES, input_shape=(size, size, 3),
                                             **({"alpha": float(alpha)} if alpha else {}), **kw)


def _x(size, seed=3):
    return np.random.default_rng(seed).standard_normal((2, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("name,size", QUICK_CASES, ids=[f"{n}@{s}" for n, s in QUICK_CASES])
def test_import_runs_like_the_keras_model_in_keras_and_torch_and_exports_back(keras, name, size):
    e = zoo.ZOO[("keras", name)]
    model = _keras_model(keras, name, size)
    x = _x(size)
    want = zoo.zoo_forward("keras", model, x)
    assert want.shape == (2, NUM_CLASSES)
    source = model if CASES.index((name, size)) % 2 == 0 else zoo.keras_state_dict(model)
    graph, w, info = zoo.import_zoo("keras", name, source, input_size=size, probe_size=size)
    assert info["arch"] == e.arch and e.arch.endswith("_keras") and info["num_classes"] == NUM_CLASSES
    assert info["probe"]["dtype"] == "float64" and info["probe_rel_error"] <= zoo.PROBE_FLOAT64
    assert info["probe"]["float32_rel_error"] <= TOL
    assert info["preprocessing"]["rescale"] == [1 / 127.5, -1.0]
    assert info["zoo"]["default_classifier_activation"] == "softmax"
    assert all(n.attrs["eps"] == 1e-3 and n.attrs["momentum"] == e.bn_momentum
               for n in graph.nodes if n.op == "batch_norm")
    for backend in ("keras", "torch"):
        ours = lightnets.build(graph, backend=backend, weights=w)
        err = rel_error(lightnets.run(ours, x), want)
        ERRORS[f"{name}@{size} -> {backend}"] = err
        print(f"ZOOERR keras {name}@{size} -> {backend}: {err:.2e}")
        assert err <= TOL, (backend, err)
    # export back into a fresh keras model of other random weights
    fresh = _keras_model(keras, name, size, seed=7)
    zoo.load_native(fresh, zoo.export_zoo("keras", name, w), "keras")
    err = rel_error(zoo.zoo_forward("keras", fresh, x), want)
    print(f"ZOOERR keras {name}@{size} -> export: {err:.2e}")
    assert err <= 1e-6


def test_symmetric_padding_would_fail_the_probe(keras):
    # the default id (torch-style pads) with the keras weights must not pass silently
    name, size = "MobileNetV2", 96
    model = _keras_model(keras, name, size)
    key = ("keras", name)
    good = zoo.ZOO[key]
    zoo.ZOO[key] = good._replace(arch="mobilenet_v2_100")
    try:
        with pytest.raises(WeightsError, match="probe"):
            zoo.import_zoo(*key, model, input_size=size)
    finally:
        zoo.ZOO[key] = good


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_params_equal_keras_applications_trainable_counts(name):
    shapes, _ = zoo.template("keras", name, 1000)  # a fresh keras.applications model at 224
    trainable = sum(int(np.prod(s)) for k, s in shapes.items()
                    if not k.endswith((".moving_mean", ".moving_variance")))
    assert trainable == PARAMS[name]
    assert zoo.zoo_graph("keras", name).num_params() == PARAMS[name]


def test_name_map_layouts_and_every_key_once():
    nmap = zoo.name_map("keras", "MobileNetV3Small")
    shapes, _ = zoo.template("keras", "MobileNetV3Small", 1000)
    assert sorted(k for k, _ in nmap.values()) == sorted(shapes)
    assert set(nmap) == {p.name for p in zoo.zoo_graph("keras", "MobileNetV3Small").params}
    assert nmap["stem.conv.weight"] == ("conv.kernel", "khwio")
    assert nmap["blocks.0.dw.conv.weight"] == ("expanded_conv_depthwise.depthwise_kernel", "khwcm")
    assert nmap["head.hidden.weight"] == ("conv_2.kernel", "k11io")
    assert nmap["head.fc.weight"] == ("logits.kernel", "k11io")
    assert nmap["stem.bn.var"] == ("conv_bn.moving_variance", "id")
    assert zoo.name_map("keras", "MobileNetV2")["head.fc.weight"] == ("predictions.kernel", "T")
    assert zoo.name_map("keras", "MobileNet")["head.fc.weight"] == ("conv_preds.kernel", "k11io")


def _pads(g, name):
    """The pads a node applies at the graph's input size (``padding="same"`` resolved for that size)."""
    node = g.node(name)
    return lightnets.ops.effective_pads(node.attrs, g.in_shapes(node)[0][1:])


def test_keras_ids_carry_tf_padding_from_the_input_size():
    g = lightnets.get_spec("mobilenet_v3_small_100_keras", input_size=96)
    assert _pads(g, "stem.conv") == (0, 1, 0, 1)  # TF same, stride 2, even input
    assert _pads(g, "blocks.3.dw.conv") == (1, 2, 1, 2)  # correct_pad, k=5 on 12x12
    g = lightnets.get_spec("mobilenet_v3_small_100_keras", input_size=99)
    assert _pads(g, "stem.conv") == (1, 1, 1, 1)
    g = lightnets.get_spec("mobilenet_v1_100_keras", input_size=99)
    assert _pads(g, "blocks.3.dw.conv") == (0, 1, 0, 1)  # MobileNet pads (0, 1) always
    assert g.node("blocks.0.dw.act").attrs["kind"] == "relu6"
    assert lightnets.get_spec("mobilenet_v1_100").node("stem.conv").attrs["pads"] == (1, 1, 1, 1)


def test_default_keras_model_with_preprocessing_and_softmax_imports(keras):
    # keras' defaults: Rescaling inside MobileNetV3, softmax head; the probe accounts for both
    model = _randomise(_make_with(keras, "MobileNetV3Small", 96), 1)
    graph, w, info = zoo.import_zoo("keras", "MobileNetV3Small", model, input_size=96)
    assert info["classifier_activation"] == "softmax"
    assert info["zoo"]["model_rescaling"] == pytest.approx((1 / 127.5, -1.0))
    assert info["probe"]["dtype"] == "float64" and info["probe_rel_error"] <= zoo.PROBE_FLOAT64
    assert info["preprocessing"]["in_model"].startswith("Rescaling")


# --- keras.applications EfficientNetB0-B3: the _tf ids, normalising inside the model -----------------------------
# B0 at 224 in `make test` (~16 s: three EfficientNet builds, two predict traces, the float64 reference at 224);
# LIGHTNETS_SLOW=1 adds B0 at 193 (odd at every stride: 193, 97, 49, 25, 13, 7) and B1-B3 at their own sizes
EFFICIENTNET_CASES = [("EfficientNetB0", 224)] + ([("EfficientNetB0", 193), ("EfficientNetB1", 240),
                                                   ("EfficientNetB2", 260), ("EfficientNetB3", 300)]
                                                  if profiles.SLOW else [])


def _calibrated(keras, name, size, seed=0):
    """The zoo's twin (ImageNet mean/std in its Normalization; 1000 classes, the template's) with random weights
    and BN statistics from data: one train-mode forward (keras momentum 0) of 4 images that the in-model
    normalisation maps onto 0.05 x randn: running variances down to ~1e-4..1e-6."""
    keras.utils.set_random_seed(seed)
    model = zoo.ZOO[("keras", name)].make(1000, size)
    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    for la in bns:
        la.momentum = 0.0
    pre = lightnets.frameworks.load_backend("keras").in_model_preprocessing(model)
    x = 0.05 * np.random.default_rng(seed + 1).standard_normal((4, 3, size, size))
    model(zoo.convert.undo_in_model(pre, x).transpose(0, 2, 3, 1).astype(np.float32), training=True)
    for la in bns:
        la.momentum = 0.99
    return model, min(float(np.min(la.moving_variance.numpy())) for la in bns)


@pytest.mark.parametrize("name,size", EFFICIENTNET_CASES, ids=[f"{n}@{s}" for n, s in EFFICIENTNET_CASES])
def test_efficientnet_with_data_calibrated_bn_imports_in_float64_and_exports_back_bit_for_bit(keras, name, size):
    e = zoo.ZOO[("keras", name)]
    model, min_var = _calibrated(keras, name, size)
    assert min_var < 1e-3
    graph, w, info = zoo.import_zoo("keras", name, model)
    p = info["probe"]
    print(f"ZOOERR keras {name}@{size} calibrated (min var {min_var:.1e}): float64 {p['rel_error']:.2e}, "
          f"float32 {p['float32_rel_error']:.2e}")
    # the keras twin cast to float64 vs the float64 reference of the imported graph, on the probe batch (randn) at
    # the twin's size, measured: B0@224 4.2e-12, B0@193 3.8e-15, B1@240 4.6e-14, B2@260 4.7e-12, B3@300 3.9e-13;
    # PROBE_FLOAT64 = 1e-9 bounds it. The twin's own float32 is 7.5e-3 / 9.4e-7 / 1.9e-4 / 0.50 / 1.2e-4 off there
    assert info["arch"] == e.arch == f"efficientnet_b{name[-1]}_tf" and p["dtype"] == "float64"
    assert p["rel_error"] <= zoo.PROBE_FLOAT64 and p["shape"] == [1, 3, size, size]
    assert {(n.attrs["eps"], n.attrs["momentum"]) for n in graph.nodes if n.op == "batch_norm"} == {(1e-3, 0.01)}
    # the card: the twin's own in-model normalisation, x * scale + offset = (x * 1/255 - mean) / std
    pre = info["preprocessing"]
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225] and pre["scale"] == 1 / 255
    assert pre["input_range"] == [0, 255] and "variance = std" in pre["in_model"]
    assert np.allclose(info["zoo"]["model_rescaling"][0], np.float32(1 / 255) / np.array(pre["std"]), rtol=1e-7)
    assert any("inside the model" in n and "per channel" in n for n in info["notes"])
    # export: the twin's own weights back, bit for bit (Normalization state is not a weight)
    native = zoo.export_zoo("keras", name, w)
    sd = zoo.keras_state_dict(model)
    assert sorted(native) == sorted(sd) and all(np.array_equal(native[k], sd[k]) for k in sd)
    assert all(native[k].dtype == sd[k].dtype for k in sd)


@pytest.mark.skipif(not profiles.SLOW, reason="~2 min under load: LIGHTNETS_SLOW=1")
def test_efficientnet_files_carry_their_own_normalisation_and_port_to_a_float32_runtime(keras, tmp_path):
    """.keras and .weights.h5 files of a keras.applications EfficientNetB0 whose Normalization holds other statistics
    than the twin's: read_checkpoint's card states the file's mean/std, and lightnets.port to onnxruntime (a float32
    target, probed against the file's keras model through its in-model normalisation) and torch reproduce it."""
    pytest.importorskip("onnxruntime")
    size, mean, var = 64, [0.1, 0.2, 0.3], [4.0, 1.0, 0.25]
    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(weights=None, classes=10, classifier_activation=None,
                                              input_shape=(size, size, 3))
    norm = next(la for la in model.layers if isinstance(la, keras.layers.Normalization))
    norm.set_weights([np.array(mean), np.array(var), np.array(0)])
    norm.finalize_state()
    _randomise(model, 1)
    x = _x(size)
    want = zoo.zoo_forward("keras", model, x)
    for path in (tmp_path / "b0.keras", tmp_path / "b0.weights.h5"):
        model.save(path) if path.suffix == ".keras" else model.save_weights(path)
        _, graph, w, card = zoo.read_checkpoint(path, "keras", "EfficientNetB0", input_size=size)
        assert card["preprocessing"]["mean"] == mean and card["preprocessing"]["std"] == [2.0, 1.0, 0.5], path
        assert card["probe"]["dtype"] == "float64" and card["probe"]["rel_error"] <= zoo.PROBE_FLOAT64
        for to in ("onnxruntime", "torch"):
            ported = lightnets.port(path, to=to, from_format="keras:EfficientNetB0", input_size=size)
            err = rel_error(lightnets.run(ported, x), want)
            print(f"ZOOERR keras EfficientNetB0 {path.name} -> {to}: {err:.2e}")
            assert err <= TOL, (path.name, to, err)


def test_keras_efficientnets_are_the_bench_twins_of_the_tf_ids():
    from lightnets import bench

    twins = bench.twins_of("keras")
    assert [twins[f"efficientnet_b{i}_tf"] for i in range(4)] == [("keras", f"EfficientNetB{i}") for i in range(4)]
    assert [zoo.ZOO[("keras", f"EfficientNetB{i}")].bn_momentum for i in range(4)] == [0.01] * 4  # keras 0.99


def test_efficientnet_keras_pads_are_the_tf_ids_pads_at_an_odd_size(keras):
    """correct_pad + 'valid' (keras' stem and strided depthwise convs) = TF 'same' of efficientnet_b0_tf at a size
    odd at every stride (the import at 224 above is even at every stride)."""
    size = 193
    model = zoo.ZOO[("keras", "EfficientNetB0")].make(10, size)
    g = lightnets.get_spec("efficientnet_b0_tf", num_classes=10, input_size=size)
    convs = [n.name for n in g.nodes if n.op == "conv2d" and n.attrs["stride"] == (2, 2)]
    pads = [la.padding for la in model.layers if type(la).__name__ == "ZeroPadding2D"]
    assert len(convs) == len(pads) == 5
    assert [_pads(g, n) for n in convs] == [(t, b, left, r) for (t, b), (left, r) in pads] == [
        (1, 1, 1, 1), (1, 1, 1, 1), (2, 2, 2, 2), (1, 1, 1, 1), (2, 2, 2, 2)]
    assert lightnets.get_spec("efficientnet_b0_tf", input_size=224).node("stem.conv").attrs["padding"] == "same"
    assert [_pads(lightnets.get_spec("efficientnet_b0_tf", input_size=224), n) for n in convs] == [
        (0, 1, 0, 1), (0, 1, 0, 1), (1, 2, 1, 2), (0, 1, 0, 1), (1, 2, 1, 2)]


def test_in_model_normalisation_with_keras_imagenet_variance_quirk(keras):
    """What keras.applications EfficientNet(weights="imagenet") computes, built small without the download:
    Rescaling(1/255) -> Normalization(variance = the ImageNet std, as keras' file holds it) -> Rescaling(1/sqrt(std))
    = (x / 255 - mean) / std; without the third layer the same Normalization divides by sqrt(std) only."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    be = lightnets.frameworks.load_backend("keras")
    for third in (True, False):
        inp = keras.Input((4, 4, 3))
        norm = keras.layers.Normalization(mean=mean, variance=std)
        y = norm(keras.layers.Rescaling(1 / 255)(inp))
        if third:
            y = keras.layers.Rescaling(list(1 / np.sqrt(std)))(y)
        model = keras.Model(inp, keras.layers.Conv2D(2, 1)(y))
        scale, offset = map(np.array, be.in_model_preprocessing(model))
        d = std if third else np.sqrt(std)
        assert np.allclose(scale, np.float32(1 / 255) / d, rtol=1e-6) and np.allclose(offset, -mean / d, rtol=1e-6)
        x = np.random.default_rng(0).uniform(0, 255, (1, 3, 4, 4)).astype(np.float32)
        # zoo_forward feeds what the in-model layers map onto x
        inner = keras.Model(inp, y)
        got = be.forward(inner, zoo.convert.undo_in_model((scale, offset), x.astype(np.float64)).astype(np.float32))
        assert rel_error(got, x) <= 1e-6
        assert "normalization" not in " ".join(be.state_dict(model))  # not a weight of the graph


def _kd(keras, name="MobileNetV2_0.35", size=96):
    return zoo.keras_state_dict(_keras_model(keras, name, size))


def test_missing_extra_and_misshaped_keys_are_named(keras):
    sd = _kd(keras)
    del sd["block_3_expand_BN.moving_variance"]
    with pytest.raises(WeightsError, match=r"missing keys \['block_3_expand_BN.moving_variance'\]"):
        zoo.import_zoo("keras", "MobileNetV2_0.35", sd)
    sd = _kd(keras)
    sd["extra.kernel"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match=r"unexpected keys \['extra.kernel'\]"):
        zoo.import_zoo("keras", "MobileNetV2_0.35", sd)
    sd = _kd(keras)
    sd["Conv1.kernel"] = sd["Conv1.kernel"][:, :, :2]
    with pytest.raises(WeightsError, match=r"Conv1.kernel"):
        zoo.import_zoo("keras", "MobileNetV2_0.35", sd)


def test_weights_of_another_alpha_are_refused(keras):
    sd = _kd(keras, "MobileNetV2_0.35")
    with pytest.raises(WeightsError, match=r"Conv1|has shape|missing keys"):
        zoo.import_zoo("keras", "MobileNetV2_0.5", sd)


PADDLE_CHECK = r"""
import json, sys
import paddle  # first: tensorflow is never imported in this process
import numpy as np
import lightnets
from lightnets.graph import Graph
from lightnets.numerics import rel_error
out = {}
for case in json.load(open(sys.argv[1])):
    graph = Graph.from_json(open(case["graph"]).read())
    w = dict(np.load(case["weights"]))
    d = np.load(case["io"])
    model = lightnets.build(graph, backend="paddle", weights=w)
    out[case["name"]] = rel_error(lightnets.run(model, d["x"]), d["want"])
print(json.dumps(out))
"""


def test_imported_weights_run_in_the_third_backend_in_a_fresh_subprocess(keras, tmp_path):
    pytest.importorskip("torch")  # paddle presence is checked in the subprocess
    cases = []
    for name, size in (("MobileNet_0.25", 96), ("MobileNetV3Small", 99)):
        model = _keras_model(keras, name, size)
        x = _x(size)
        graph, w, _ = zoo.import_zoo("keras", name, model, input_size=size)
        stem = tmp_path / name
        (stem.with_suffix(".json")).write_text(graph.to_json())
        np.savez(stem.with_suffix(".w.npz"), **w)
        np.savez(stem.with_suffix(".io.npz"), x=x, want=zoo.zoo_forward("keras", model, x))
        cases.append({"name": f"{name}@{size}", "graph": str(stem.with_suffix(".json")),
                      "weights": str(stem.with_suffix(".w.npz")), "io": str(stem.with_suffix(".io.npz"))})
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", PADDLE_CHECK, str(tmp_path / "cases.json")], capture_output=True,
                       text=True, timeout=300, env=env)
    if r.returncode != 0 and "No module named 'paddle'" in r.stderr:
        pytest.skip("paddle is not installed")
    assert r.returncode == 0, r.stderr[-2000:]
    errs = json.loads(r.stdout.strip().splitlines()[-1])
    for k, err in errs.items():
        ERRORS[f"{k} -> paddle"] = err
        print(f"ZOOERR keras {k} -> paddle: {err:.2e}")
        assert err <= TOL, (k, err)


# --- keras.applications files port to every backend (issue 12.4) --------------------------------------
# the keras.applications models whose .keras and .weights.h5 files are read: MobileNetV3Small (Rescaling inside
# the model); MobileNetV2 too with LIGHTNETS_SLOW=1 (the same reader; its model objects are imported above)
FILE_APPS = ["MobileNetV2", "MobileNetV3Small"] if profiles.SLOW else ["MobileNetV3Small"]
FILES_CHECK = r"""
import json, sys
import paddle  # first: tensorflow after paddle is fine, the other order segfaults
import keras
import numpy as np
import lightnets
from lightnets import zoo
from lightnets.numerics import rel_error
tmp, names, out = sys.argv[1], json.loads(sys.argv[2]), {}
for name, size in ((n, 96) for n in names):
    keras.utils.set_random_seed(0)
    # keras' own defaults (MobileNetV3: Rescaling inside the model), logits head
    model = getattr(keras.applications, name)(weights=None, classes=10, input_shape=(size, size, 3),
                                              classifier_activation=None)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # randomised BN statistics
        if type(layer).__name__ == "BatchNormalization":
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 1.5, c)])
    raw = rng.uniform(0, 255, (2, 3, size, size)).astype("float32")
    x = (raw / 127.5 - 1).astype("float32")  # what the graph sees (keras preprocess_input / Rescaling)
    fed = raw if name.startswith("MobileNetV3") else x
    want = np.asarray(model.predict_on_batch(fed.transpose(0, 2, 3, 1)))
    arch = zoo.entry("keras", name).arch
    paths = {".keras": f"{tmp}/{name}.keras", ".weights.h5": f"{tmp}/{name}.weights.h5"}
    model.save(paths[".keras"])
    model.save_weights(paths[".weights.h5"])
    for suffix, path in paths.items():
        source, graph, w, card = zoo.read_checkpoint(path, "keras", name, input_size=size)
        out[f"{name}{suffix} card"] = [card["source"]["format"], card["probe"]["dtype"], card["probe"]["rel_error"]]
        out[f"{name}{suffix} detect"] = [list(k) for k in zoo.detect(
            lightnets.frameworks.load_backend("keras").read_state_dict(path, card["source"]["format"]), "keras",
            arch=arch, fmt=card["source"]["format"])]
        for to in ("torch", "paddle"):
            ours = lightnets.build(graph, backend=to, weights=w)
            out[f"read_checkpoint {name}{suffix} -> {to}"] = rel_error(lightnets.run(ours, x), want)
        # each file ported to each backend: the zoo named (-> paddle), and found by detection (-> torch)
        for ff, to in ((f"keras:{name}", "paddle"), (None, "torch")):
            key = f"port {name}{suffix} from_format={ff} -> {to}"
            try:
                target = lightnets.port(path, to=to, arch=arch, from_format=ff, input_size=size)
                out[key] = rel_error(lightnets.run(target, x), want)
            except Exception as e:  # report every case
                out[key] = f"{type(e).__name__}: {e}"[:400]
    keras.backend.clear_session()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """One subprocess (paddle imported first) over .keras and .weights.h5 files written by keras.applications
    MobileNetV2 / MobileNetV3Small (keras' defaults, so V3 rescales inside the model, logits head):
    read_checkpoint, detect and lightnets.port (with from_format "keras:<name>" and without) to torch and
    paddle, each judged against keras' own logits."""
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("keras_files")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-c", FILES_CHECK, str(tmp), json.dumps(FILE_APPS)], capture_output=True,
                       text=True, timeout=900, env=env)
    if r.returncode != 0 and "No module named 'paddle'" in r.stderr:
        pytest.skip("paddle is not installed")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for k, v in out.items():
        print(f"ZOOERR {k}: {v:.2e}" if isinstance(v, float) else f"ZOOERR {k}: {v}")
    return out


def _bad(out, prefix, cases):
    errs = {k: v for k, v in out.items() if k.startswith(prefix) and any(c in k for c in cases)}
    assert errs
    return errs, {k: v for k, v in errs.items() if not (isinstance(v, float) and v <= 1e-5)}


def test_keras_applications_files_port_to_torch_and_the_third_backend_in_a_subprocess(keras_files):
    # the keras zoo entry reads both files (float64 probe) and detects them; torch and paddle reproduce
    # keras' logits in float32 (<= 1e-5; measured <= 1.5e-6)
    out = keras_files
    for name in FILE_APPS:
        assert out[f"{name}.keras card"][:2] == ["keras-model", "float64"]
        assert out[f"{name}.weights.h5 card"][:2] == ["keras-weights", "float64"]
        assert all(out[f"{name}{s} card"][2] <= zoo.PROBE_FLOAT64 for s in (".keras", ".weights.h5"))
        assert out[f"{name}.keras detect"] == out[f"{name}.weights.h5 detect"] == [["keras", name]]
    errs, bad = _bad(out, "read_checkpoint", [" -> "])
    assert len(errs) == len(FILE_APPS) * 2 * 2 and not bad, bad
    errs, bad = _bad(out, "port", ["from_format=keras:"])
    assert len(errs) == len(FILE_APPS) * 2 and not bad, bad


def test_keras_applications_files_port_without_from_format(keras_files):
    errs, bad = _bad(keras_files, "port", ["from_format=None"])
    assert len(errs) == len(FILE_APPS) * 2 and not bad, bad
