"""Models at input sizes other than the build size: TF "same" pads follow the input, fixed graphs refuse.

keras.applications computes "same" pads (and correct_pad) from the input size it is built for; a
``_keras`` model built once must equal keras.applications built at each size (random weights, the
same weights at every size). keras runs in a subprocess (tensorflow before paddle segfaults).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import profiles
import pytest

import lightnets
from lightnets import reference
from lightnets import weights as W
from lightnets.errors import InputShapeError
from lightnets.graph import Graph

SIZES = (160, 200, 224, 225, 256, 321)
# every size for MobileNetV3Small (correct_pad and 5x5 kernels: the pads that move most with the size); in
# `make test` MobileNetV2 and MobileNet_0.25 at one even size with an odd stride-8 map (200) and one odd (225),
# MobileNetV3Small at 200 and 321 (odd at every stride)
MODEL_SIZES = {"MobileNetV2": SIZES if profiles.SLOW else (200, 225),
               "MobileNetV3Small": SIZES if profiles.SLOW else (200, 321),
               "MobileNet_0.25": SIZES if profiles.SLOW else (200, 225)}
KERAS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    import lightnets
    from lightnets import zoo
    model_sizes, out, imported = json.loads(sys.argv[1]), {}, {}
    IMPORT_SIZES = (160, 200, 225)
    for name, ctor, kw in [("MobileNetV2", "MobileNetV2", {}), ("MobileNetV3Small", "MobileNetV3Small", {}),
                           ("MobileNet_0.25", "MobileNet", {"alpha": 0.25})]:
        if ctor.startswith("MobileNetV3"):
            kw = {**kw, "include_preprocessing": False}
        def make(n):
            return getattr(keras.applications, ctor)(weights=None, input_shape=(n, n, 3), classifier_activation=None,
                                                     **kw)
        src, rng = make(224), np.random.default_rng(0)
        for layer in src.layers:  # BN statistics that make every pad matter
            if type(layer).__name__ == "BatchNormalization":
                g, b, m, v = layer.get_weights()
                layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape),
                                   rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 1.5, v.shape)])
        graph, w, _ = zoo.import_zoo("keras", name, src)
        models = {be: lightnets.build(graph, be, weights=w) for be in ("keras", "torch")}
        for n in model_sizes[name]:
            twin = make(n)
            twin.set_weights(src.get_weights())
            x = np.random.default_rng(n).standard_normal((2, 3, n, n)).astype("float32")
            want = np.asarray(twin(x.transpose(0, 2, 3, 1), training=False), np.float64)
            for be, m in models.items():
                got = np.asarray(lightnets.run(m, x), np.float64)
                out[f"{name} {be} {n}"] = float(np.abs(got - want).max() / np.abs(want).max())
            if name != "MobileNetV2" and n in IMPORT_SIZES:  # the model states its size: no size argument
                g2, w2, _ = zoo.import_zoo("keras", name, twin)
                got = lightnets.reference.run(g2, w2, x.astype(np.float64))
                out[f"{name} import {n}"] = float(np.abs(got - want).max() / np.abs(want).max())
                imported[f"{name} {n}"] = [list(g2.input_shape), g2.fixed_size]
    free = keras.applications.MobileNetV3Small(weights=None, input_shape=None, classifier_activation=None,
                                               include_preprocessing=False)
    try:
        zoo.import_zoo("keras", "MobileNetV3Small", free)
        imported["size-free"] = "imported"
    except lightnets.errors.WeightsError as e:
        imported["size-free"] = str(e)
    g3, _, info = zoo.import_zoo("keras", "MobileNetV3Small", free, input_size=96)
    imported["size-free 96"] = [list(g3.input_shape), g3.fixed_size, info["notes"][-1]]
    try:
        zoo.import_zoo("keras", "MobileNet_0.25", keras.applications.MobileNet(
            alpha=0.25, weights=None, input_shape=(200, 200, 3), classifier_activation=None), input_size=224)
        imported["contradicting size"] = "imported"
    except lightnets.errors.WeightsError as e:
        imported["contradicting size"] = str(e)
    g = lightnets.get_spec("mobilenet_v1_025_keras", input_size=64)
    dynamic = lightnets.build(g, "keras")
    fixed = lightnets.build(lightnets.Graph(g.name, g.input_shape, g.nodes, {**g.meta, "fixed_size": True}), "keras")
    try:
        lightnets.run(fixed, np.zeros((1, 3, 65, 65), np.float32))
        refused = ""
    except lightnets.errors.InputShapeError as e:
        refused = str(e)
    out["shapes"] = [list(dynamic.inputs[0].shape), list(fixed.inputs[0].shape), refused]
    out["imported"] = imported
    print("RESULT" + json.dumps(out))
""")


def test_keras_ids_equal_keras_applications_built_at_each_size():
    proc = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, json.dumps(MODEL_SIZES)], capture_output=True, text=True,
                          timeout=900, env={"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
                                            **__import__("os").environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    errs = json.loads(proc.stdout.split("RESULT", 1)[1])
    dynamic, fixed, refused = errs.pop("shapes")
    assert dynamic == [None, None, None, 3] and fixed == [None, 64, 64, 3]  # any size unless the graph is fixed
    assert "fixed to 64x64" in refused
    imported = errs.pop("imported")
    # keras models built at 160/200/225 import at their own size (graph, probe and outputs follow it)
    assert imported.pop("MobileNetV3Small 200") == [[3, 200, 200], False]
    assert imported.pop("MobileNet_0.25 225") == [[3, 225, 225], False]
    assert "takes any input size" in imported["size-free"] and "pass input_size=" in imported["size-free"]
    assert imported["size-free 96"][:2] == [[3, 96, 96], True] and "fixed to the 96x96" in imported["size-free 96"][2]
    assert "input_size=224, but the model is built for 200x200" in imported["contradicting size"]
    n_imports = sum(n in (160, 200, 225) for name, sizes in MODEL_SIZES.items() if name != "MobileNetV2" for n in sizes)
    assert len(errs) == 2 * sum(len(sizes) for sizes in MODEL_SIZES.values()) + n_imports
    worst = max(errs.values())
    print(f"\nworst keras.applications vs lightnets (keras/torch) over {MODEL_SIZES}: {worst:.2e}")
    assert worst <= 1e-5, {k: v for k, v in errs.items() if v > 1e-5}


@pytest.mark.parametrize("backend", ["paddle", "torch"])
@pytest.mark.parametrize("model_id", ["mobilenet_v2_050_keras", "mobilenet_v3_small_075_keras", "shufflenet_v2_050"])
def test_paddle_and_torch_follow_the_input_size(backend, model_id):
    """Built at 64, run at 65/77/96: equal to the float64 reference of the graph built at that size."""
    g = lightnets.get_spec(model_id, input_size=64)
    w = W.init_weights(g)
    model = lightnets.build(g, backend, weights=w, dtype="float64")
    for n in (65, 77, 96):
        x = np.random.default_rng(n).standard_normal((2, 3, n, n))
        want = reference.run(lightnets.get_spec(model_id, input_size=n), w, x)
        err = float(np.abs(lightnets.run(model, x) - want).max() / np.abs(want).max())
        assert err <= 1e-10, (n, err)


@pytest.mark.parametrize("backend", ["paddle", "torch"])
def test_paddle_and_torch_refuse_other_sizes_on_a_fixed_graph(backend):
    g = lightnets.get_spec("mobilenet_v1_025_keras", input_size=64)
    fixed = Graph(g.name, g.input_shape, g.nodes, {**g.meta, "fixed_size": True})
    model = lightnets.build(fixed, backend)
    assert lightnets.run(model, np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 1000)
    with pytest.raises(InputShapeError, match="fixed to 64x64"):
        lightnets.run(model, np.zeros((1, 3, 65, 65), np.float32))
