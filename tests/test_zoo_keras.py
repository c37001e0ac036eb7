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
          "MobileNetV3Small": 2_542_856, "MobileNetV3Small_0.75": 2_041_872}


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


@pytest.mark.parametrize("name", sorted(PARAMS))
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
