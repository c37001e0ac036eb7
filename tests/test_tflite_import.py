"""Importing .tflite files lightnets did not write: keras.applications MobileNet, MobileNetV2, MobileNetV3Small
and MobileNetV3Large converted by ``tf.lite.TFLiteConverter`` (float32, and int8 post-training full-integer
quantization), with batch-norm statistics drawn so that small running variances matter.

Each file imports as its ``_keras`` id with the id found from the file; the imported weights reproduce keras
itself on the float64 reference and LiteRT (float32 <= 1e-4 relative) or, for int8 files, LiteRT's top-1.
tensorflow is imported in-process, paddle never (conftest runs the paddle tests first).
"""


import numpy as np
import pytest
from keras_apps import TFLITE_CONVERTER, draw_batch_norms
from profiles import SLOW

import lightnets
from lightnets import artifacts as A
from lightnets import cli, reference
from lightnets import provenance as PV
from lightnets.backends import tflite_file
from lightnets.errors import FileFormatError, InputShapeError, RuntimeFailure, WeightsError
from lightnets.numerics import rel_error, softmax

pytestmark = TFLITE_CONVERTER

SIZE = 96


def _keras_app(app: str, value_range=(-1, 1), **kwargs):
    """A keras.applications model with random weights and BN statistics taken from one batch of uniform images
    in ``value_range`` (a train-mode forward with momentum 0), so that every layer depends on the input."""
    import keras

    keras.utils.set_random_seed(0)
    net = getattr(keras.applications, app)(input_shape=(SIZE, SIZE, 3), weights=None, **kwargs)
    rng = np.random.default_rng(0)
    for layer in draw_batch_norms(net, rng, statistics=False):
        layer.momentum = 0.0
    net(rng.uniform(*value_range, (8, SIZE, SIZE, 3)).astype(np.float32), training=True)
    return net


def _convert(net, path, int8_range=None, int8_io=False):
    """``net`` as a .tflite file: float32, or int8 calibrated on 16 uniform images in ``int8_range``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(net)
    if int8_range is not None:
        rng = np.random.default_rng(1)
        images = rng.uniform(*int8_range, (16, SIZE, SIZE, 3)).astype(np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([images[i: i + 1]] for i in range(len(images)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = converter.inference_output_type = tf.int8
    path.write_bytes(converter.convert())
    return path


def _planted_swap_is_refused(art, tfl, arch):
    """A planted swap of two same-shape depthwise kernels fails the probe."""
    dw = [la for la in art.layers if la.op == "DEPTHWISE_CONV_2D"]
    a, b = next((a, b) for i, a in enumerate(dw) for b in dw[i + 1:]
                if a.tensors["weight"].shape == b.tensors["weight"].shape)
    a.tensors["weight"], b.tensors["weight"] = b.tensors["weight"], a.tensors["weight"]
    with pytest.raises(WeightsError, match="is not that net"):
        A.import_artifact(art, tfl, arch=arch)


# app, keras kwargs, id, input range of the calibration images (the model's own preprocessing range), whether the
# int8 file is converted too (MobileNet's with LIGHTNETS_SLOW=1: the int8 reader is V3Small's in `make test`;
# MobileNet's float file covers the ReLU6 / correct_pad nets there, MobileNetV2 is LIGHTNETS_SLOW=1's: ~29 s)
APPS = [("MobileNet", {"alpha": 0.25, "classes": 1001, "classifier_activation": "softmax"},
         "mobilenet_v1_025_keras", (-1, 1), SLOW),
        pytest.param("MobileNetV2", {"alpha": 0.35}, "mobilenet_v2_035_keras", (-1, 1), True,
                     marks=pytest.mark.skipif(not SLOW, reason="MobileNet and V3Small cover it: LIGHTNETS_SLOW=1")),
        ("MobileNetV3Small", {}, "mobilenet_v3_small_100_keras", (0, 255), True),
        pytest.param("MobileNetV3Large", {"alpha": 0.75}, "mobilenet_v3_large_075_keras", (0, 255), True,
                     marks=pytest.mark.skipif(not SLOW, reason="MobileNetV3Small covers its ops: LIGHTNETS_SLOW=1"))]


@pytest.mark.parametrize("app,kwargs,arch,value_range,int8", APPS,
                         ids=["MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large"])
def test_keras_applications_tflite_float_and_int8_import_as_their_id(tmp_path, app, kwargs, arch, value_range, int8):
    net = _keras_app(app, value_range, **{"classifier_activation": None, **kwargs})
    softmax_head = kwargs.get("classifier_activation") == "softmax"
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 3, SIZE, SIZE))
    v3 = app.startswith("MobileNetV3")
    feed = (x + 1) * 127.5 if v3 else x  # V3 rescales [0, 255] inside the model
    nhwc = feed.transpose(0, 2, 3, 1).astype(np.float32)

    path = _convert(net, tmp_path / f"{app}.tflite")
    imp = A.read(path, "tflite", "tflite")
    assert imp.graph.name == arch
    card = imp.graph.meta["provenance"]
    assert card["classifier_activation"] == ("softmax" if softmax_head else "linear")
    assert card["source"]["sha256"] and card["source"]["format"] == "tflite"
    assert (card["preprocessing"] is not None) == v3
    assert (PV.num_classes_of(imp.graph) == 1001) == (kwargs.get("classes") == 1001)
    assert any("background class" in n for n in card["notes"]) == (kwargs.get("classes") == 1001)
    assert any("hard sigmoid" in n for n in card["notes"]) == v3
    assert imp.probe["rel_error"] <= imp.probe["tolerance"]
    got = reference.run(imp.graph, imp.weights, x)
    got = softmax(got) if softmax_head else got
    assert rel_error(got, np.asarray(net(nhwc), np.float64)) <= 1e-4  # the keras model itself
    tfl = lightnets.load_backend("tflite")
    art = tfl.read_artifact(path)
    assert rel_error(got, np.asarray(art.run(nhwc), np.float64)) <= 1e-4  # LiteRT
    if SLOW or app == "MobileNet":  # the refusal is one code path for every file: the cheapest net in make test
        _planted_swap_is_refused(art, tfl, arch)
    if not int8:
        return
    int8_io = app == "MobileNetV2"
    if softmax_head:  # int8 rounds a softmax over 1001 classes of a random net to a few levels: quantize logits
        import keras

        net = keras.Model(net.inputs[0], net.layers[-2].output)
    q = A.read(_convert(net, tmp_path / f"{app}_int8.tflite", value_range, int8_io), "tflite", "tflite")
    assert q.graph.name == arch and q.graph.nodes == imp.graph.nodes
    notes = q.graph.meta["provenance"]["notes"]
    assert any("quantized weights dequantized" in n for n in notes)
    assert any(("int8 input" if int8_io else "float32 input") in n for n in notes)
    # the oracle for the dequantized mapping: the float file's weights, within int8 rounding (scale = max / 127
    # per channel; biases by input scale x weight scale). Identity BNs are exact in both. A bias that held hard
    # sigmoid's + 3 in the file was rounded at that magnitude.
    for k, v in imp.weights.items():
        err = np.max(np.abs(q.weights[k] - v)) / max(np.max(np.abs(v)), 3.0 if k.endswith(".bias") else 1e-12)
        assert err <= 0.02, (k, err)


def test_cli_port_and_import_zoo_take_a_tflite_file_and_run_like_litert(tmp_path, capsys):
    net = _keras_app("MobileNet", alpha=0.25, classifier_activation=None)
    path = _convert(net, tmp_path / "m.tflite")
    out = tmp_path / "m.pt"
    assert cli.main(["port", "--from", str(path), "--to", "torch", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mobilenet_v1_025_keras" in printed
    model = lightnets.build(out, backend="torch")
    x = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    want = lightnets.load_backend("tflite").forward(str(path), x)
    assert rel_error(lightnets.run(model, x), want) <= 1e-4
    graph, weights, info = lightnets.import_zoo("keras", "MobileNet_0.25", path, input_size=SIZE)
    assert graph.name == "mobilenet_v1_025_keras" and info["source"]["format"] == "tflite"
    assert info["preprocessing"]["rescale"] == [1 / 127.5, -1.0]  # the zoo's preprocessing, not in the file
    assert rel_error(reference.run(graph, weights, x.astype(np.float64)), want) <= 1e-4


def test_bad_tflite_files_are_named_errors(tmp_path):
    import keras

    good = _convert(_keras_app("MobileNet", alpha=0.25), tmp_path / "m.tflite")
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(FileFormatError, match="not a readable .tflite file"):
        A.read(cut, "tflite", "tflite")
    up = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2DTranspose(4, 3, strides=2)])
    with pytest.raises(FileFormatError, match=r"unsupported TFLite op TRANSPOSE_CONV \(op \d+\)"):
        A.read(_convert(up, tmp_path / "up.tflite"), "tflite", "tflite")
    small = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    with pytest.raises(WeightsError, match="fits no lightnets id"):
        A.read(_convert(small, tmp_path / "small.tflite"), "tflite", "tflite")
    with pytest.raises(WeightsError, match="fits no lightnets id 'mobilenet_v2_100_keras'"):
        A.read(good, "tflite", "tflite", arch="mobilenet_v2_100_keras")
    art = lightnets.load_backend("tflite").read_artifact(good)
    flat = art._replace(quantized="int8", run=lambda x: np.zeros((len(x), 1000), np.float32))
    with pytest.raises(WeightsError, match="quantized flat"):  # e.g. a softmax int8 rounds to zeros
        A.import_artifact(flat, lightnets.load_backend("tflite"))


# --- files as users write them (issue 21): a fixed batch of 1, TF1-era uint8, backbones ------------------------
# A file whose input batch is fixed to 1 (a keras model on keras.Input(batch_size=1), every TF1 converter's file) is
# run one image at a time: resizing its input to the probe's batch fails in XNNPack ("failed to reshape runtime")
# where a constant RESHAPE fixes the batch inside (TF-slim's squeezed logits).


def _folded_convs(graph, weights):
    """conv name -> (HWIO or depthwise HWC1 weight, bias) with its batch norm folded in (the TF1 QAT graph's)."""
    users = {}
    for n in graph.nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n)
    out = {}
    for n in graph.nodes:
        if n.op != "conv2d":
            continue
        w = weights[f"{n.name}.weight"].astype(np.float64)
        b = weights.get(f"{n.name}.bias", np.zeros(w.shape[0])).astype(np.float64)
        bn = users[n.name][0]
        s = weights[f"{bn.name}.gamma"] / np.sqrt(weights[f"{bn.name}.var"] + bn.attrs["eps"])
        shift = (b - weights[f"{bn.name}.mean"]) * s + weights[f"{bn.name}.beta"]
        out[n.name] = (w * s[:, None, None, None], shift, bn)
    return out, users


def _tf1_uint8_flat_buffer(graph, weights, calibration):
    """A TF1-era quantization-aware-trained uint8 file of ``graph``: a tf.compat.v1 graph with fake-quant nodes on
    every weight and activation (ranges measured on ``calibration``, NCHW in [-1, 1]), converted by the TF1 converter
    API with ``inference_type=tf.uint8``: per-tensor asymmetric uint8 weights and activations, batch fixed to 1."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    acts = reference.run(graph, weights, calibration, return_all=True)

    def rng(name):
        v = acts[name]
        return float(min(v.min(), 0.0)), float(max(v.max(), 0.0))

    def fq(t, lo, hi):
        return tf.quantization.fake_quant_with_min_max_args(t, lo, hi)

    def fqw(w):
        return fq(tf.constant(w.astype(np.float32)), float(min(w.min(), 0)), float(max(w.max(), 0)))

    folded, users = _folded_convs(graph, weights)
    c, h, w_ = graph.input_shape
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [1, h, w_, c], name="input")
        t = {"input": fq(x, -1.0, 1.0)}
        for n in graph.nodes:
            a, xin = n.attrs, t[n.inputs[0]] if n.inputs[0] in t else None
            if n.op == "conv2d":
                wt, b, bn = folded[n.name]
                pad = "SAME" if a.get("padding") == "same" else "VALID"
                if pad == "VALID" and any(a["pads"]):
                    pt, pb, pl, pr = a["pads"]
                    xin = tf.pad(xin, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
                strides = [1, *a["stride"], 1]
                if a["groups"] == 1:
                    y = tf.nn.conv2d(xin, fqw(wt.transpose(2, 3, 1, 0)), strides, pad)
                else:
                    y = tf.nn.depthwise_conv2d(xin, fqw(wt.transpose(2, 3, 0, 1)), strides, pad)
                y = tf.nn.bias_add(y, tf.constant(b.astype(np.float32)))
                after = users.get(bn.name, [])
                fused = len(after) == 1 and after[0].op == "activation" and after[0].attrs["kind"] == "relu6"
                t[bn.name] = y if fused else fq(y, *rng(bn.name))
            elif n.op == "batch_norm":
                continue
            elif n.op == "activation":
                assert a["kind"] == "relu6", a
                t[n.name] = fq(tf.nn.relu6(xin), *rng(n.name))
            elif n.op == "add":
                t[n.name] = fq(tf.add(t[n.inputs[0]], t[n.inputs[1]]), *rng(n.name))
            elif n.op == "global_avg_pool":
                t[n.name] = fq(tf.reduce_mean(xin, [1, 2], keepdims=True), *rng(n.name))
            elif n.op == "flatten":  # TF-slim keeps (1, 1, 1, C) for the logits conv and squeezes after it
                t[n.name] = xin
            elif n.op == "dropout":
                t[n.name] = xin
            elif n.op == "linear":
                wl = weights[f"{n.name}.weight"]  # TF-slim's logits: a 1x1 conv with bias, then squeeze
                y = tf.nn.conv2d(xin, fqw(wl.T[None, None]), 1, "VALID")
                y = fq(tf.nn.bias_add(y, tf.constant(weights[f"{n.name}.bias"].astype(np.float32))), *rng(n.name))
                t[n.name] = tf.squeeze(y, [1, 2])
            else:
                raise AssertionError(n.op)
        with tf1.Session(graph=g) as sess:
            conv = tf1.lite.TFLiteConverter.from_session(sess, [x], [t[graph.output_names[0]]])
            conv.inference_type = tf.uint8
            conv.quantized_input_stats = {"input": (127.5, 127.5)}  # real = (q - 127.5) / 127.5: [-1, 1]
            return bytes(conv.convert()), folded


def test_tf1_era_uint8_mobilenet_v2_imports(tmp_path):
    """A quantization-aware-trained style file as TF1 wrote them (fake-quant ranges on every weight and activation,
    ``inference_type=tf.uint8``: per-tensor asymmetric uint8, batch 1, TF-slim's 1x1-conv logits squeezed by a
    constant RESHAPE) imports as its id; its weights are the folded float weights within uint8 rounding."""
    graph = lightnets.get_spec("mobilenet_v2_035_keras", input_size=SIZE)
    weights = lightnets.weights.init_weights(graph, seed=0)  # BN statistics from data (calibrated)
    calibration = np.random.default_rng(1).uniform(-1, 1, (8, 3, SIZE, SIZE))
    buf, folded = _tf1_uint8_flat_buffer(graph, weights, calibration)
    path = tmp_path / "mobilenet_v2_quant.tflite"
    path.write_bytes(buf)
    tfl = lightnets.load_backend("tflite")
    inp = tfl.read_artifact(path)
    assert inp.batch == 1 and inp.input_range is not None
    # what the import probe met before it fed the file one image at a time, now named: a batch of 4 resized in
    runner = tflite_file.file_runner(tflite_interpreter(buf), path, batch=None)
    with pytest.raises(RuntimeFailure, match=r"mobilenet_v2_quant.tflite: LiteRT failed on input tensor 'input' of "
                                             r"shape \(4, 96, 96, 3\) \(RuntimeError: XNNPack delegate failed to "
                                             r"reshape runtime.*\); the file's input is NHWC 1x96x96x3"):
        runner(np.zeros((4, SIZE, SIZE, 3), np.float32))
    imp = A.read(path, "tflite", "tflite")
    assert imp.graph.name == "mobilenet_v2_035_keras"
    notes = " ".join(imp.notes)
    assert "uint8 input" in notes and "batch is fixed to 1" in notes
    assert imp.probe["file_batch"] == 1 and imp.probe["top1_agreement"] >= A.QUANTIZED_TOP1
    # the mapping's oracle: every conv's weight within half a uint8 step of its folded float weight (per tensor)
    for conv, (w, b, bn) in folded.items():
        step = (max(w.max(), 0) - min(w.min(), 0)) / 255
        assert np.max(np.abs(imp.weights[f"{conv}.weight"] - w)) <= 0.51 * step + 1e-6, conv
        assert np.max(np.abs(imp.weights[f"{bn.name}.beta"] - b)) <= 1e-3 * max(np.max(np.abs(b)), 1.0), conv
    x = np.random.default_rng(2).uniform(-1, 1, (3, 3, SIZE, SIZE)).astype(np.float32)
    got = tfl.forward(path, x)  # uint8 in and out, one image at a time
    assert got.shape == (3, 1000) and got.dtype == np.float32
    with pytest.raises(InputShapeError, match=r"\(1, 96, 96, 4\) does not fit the input 1x96x96x3 of"):
        tfl.forward(path, np.zeros((1, 4, SIZE, SIZE), np.float32))


def tflite_interpreter(buf: bytes):
    from lightnets.backends.tflite import make_interpreter

    return make_interpreter(buf)


@pytest.mark.skipif(not SLOW, reason="the TF1 uint8 file covers a batch fixed to 1 in the quick profile: "
                                   "LIGHTNETS_SLOW=1")
def test_fixed_batch_keras_files_float_and_uint8_io_import(tmp_path):
    """keras MobileNet on ``keras.Input(batch_size=1)`` (its Reshape head then has a constant batch of 1) as a float
    file and a full-integer file with uint8 input/output (``inference_input_type=tf.uint8``): both import with the
    batch noted, and LiteRT runs a batch of 3 through them one image at a time."""
    import keras
    import tensorflow as tf

    net = _keras_app("MobileNet", alpha=0.25, classifier_activation=None)
    inp = keras.Input((SIZE, SIZE, 3), batch_size=1)
    fixed = keras.Model(inp, net(inp))
    path = _convert(fixed, tmp_path / "b1.tflite")
    imp = A.read(path, "tflite", "tflite")
    assert imp.graph.name == "mobilenet_v1_025_keras" and imp.probe["file_batch"] == 1
    assert imp.probe["rel_error"] <= imp.probe["tolerance"]
    x = np.random.default_rng(3).standard_normal((3, 3, SIZE, SIZE))
    tfl = lightnets.load_backend("tflite")
    got = tfl.forward(path, x.astype(np.float32))
    assert rel_error(got, reference.run(imp.graph, imp.weights, x)) <= 1e-4
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    images = np.random.default_rng(1).uniform(-1, 1, (8, SIZE, SIZE, 3)).astype(np.float32)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([images[i: i + 1]] for i in range(len(images)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.uint8
    q_path = tmp_path / "b1_uint8.tflite"
    q_path.write_bytes(converter.convert())
    q = A.read(q_path, "tflite", "tflite")
    assert q.graph.name == "mobilenet_v1_025_keras" and q.probe["file_batch"] == 1
    assert "uint8 input" in " ".join(q.notes)
    assert tfl.forward(q_path, x.astype(np.float32)).shape == (3, 1000)


@pytest.mark.skipif(not SLOW, reason="~40 s (a TFLite conversion): LIGHTNETS_SLOW=1")
def test_ghostnet_v2_tflite_without_its_sidecar_imports_through_the_resize_gathers(tmp_path):
    """resize_nearest's keras lowering converts to RANGE / FLOOR_DIV / LESS / SELECT / GATHER; a .tflite of it that
    lost its sidecar imports as the timm twin's id (measured probe 2.1e-6)."""
    import importlib

    export = importlib.import_module("lightnets.export")
    path = export.export("ghostnet_v2_100", to="tflite", path=tmp_path / "g.tflite", input_size=64)
    for extra in tmp_path.glob("g.tflite.*"):
        extra.unlink()
    graph, w, info = lightnets.import_zoo("timm", "ghostnetv2_100", str(path), input_size=64)
    assert info["arch"] == "ghostnet_v2_100" and info["probe"]["rel_error"] <= info["probe"]["tolerance"]
