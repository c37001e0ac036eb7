"""What the TFLite and foreign-file tests share: the TFLite converter's skip marks, and keras.applications
batch norms drawn the same way in every test."""

import importlib.util
import os

import numpy as np
import pytest

TFLITE_CONVERTER = [
    pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None,
                       reason="tensorflow/keras are not installed"),
    pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                       reason="the TFLite converter needs keras on tensorflow"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
]


def draw_batch_norms(net, rng: np.random.Generator, statistics: bool) -> list:
    """Every BatchNormalization layer of the keras model ``net``, with gamma ~ U(0.5, 1.5), beta ~ U(-0.2, 0.2)
    and, with ``statistics``, moving mean ~ U(-0.1, 0.1) and variance ~ U(1e-3, 1) (small variances: eps and
    padding matter)."""
    import keras

    layers = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        c = layer.gamma.shape[0]
        layer.gamma.assign(rng.uniform(0.5, 1.5, c))
        layer.beta.assign(rng.uniform(-0.2, 0.2, c))
        if statistics:
            layer.moving_mean.assign(rng.uniform(-0.1, 0.1, c))
            layer.moving_variance.assign(rng.uniform(1e-3, 1.0, c))
    return layers
