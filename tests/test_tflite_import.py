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
from lightnets.errors import FileFormatError, WeightsError
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
# int8 file is converted too (MobileNet's with LIGHTNETS_SLOW=1: the int8 reader is MobileNetV2's and V3Small's)
APPS = [("MobileNet", {"alpha": 0.25, "classes": 1001, "classifier_activation": "softmax"},
         "mobilenet_v1_025_keras", (-1, 1), SLOW),
        ("MobileNetV2", {"alpha": 0.35}, "mobilenet_v2_035_keras", (-1, 1), True),
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
    assert (A.PV.num_classes_of(imp.graph) == 1001) == (kwargs.get("classes") == 1001)
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
