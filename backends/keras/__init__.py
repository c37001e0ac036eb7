"""Keras 3 backend: a functional ``keras.Model`` (NHWC) with one named layer per IR node.

The package: ``lowering`` (node -> layer names, padding policy, one converter per op in ``CONVERTERS``, ``build``),
``layers`` (the small serialisable layers for ops without a native one: channel slices, shuffle, -inf padding,
average pooling that excludes non-"same" pads, strided dilated convs, nearest resize; written with ``keras.ops``
only, so the model runs on any keras backend and reloads from ``.keras`` without Lambda layers), ``train``
(train-mode BN, gradients, optimizer steps) and here the backend object ``BACKEND``
(``lightnets.backends.base.Backend``: weights, native ``.weights.h5`` / ``.keras`` files, the fast path). Keras
is imported lazily.

Known keras 3.15 limit: on non-tensorflow backends ``backend.result_type`` maps float64 to float32,
so BatchNormalization, ``ops.mean`` and Dense compute in float32 inside a float64 model there.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np

from lightnets.errors import FileFormatError, LightnetsError, WeightsError
from lightnets.layouts import to_nchw, to_nhwc

from ..base import Backend, before_tensorflow, unreadable
from .layers import custom_objects
from .lowering import (
    _ALL,
    _FROZEN,
    CONVERTERS,
    _dtype,
    _nhwc,
    _param_layer_name,
    build,
    graph_of,
    layer_name,
    owns,
)
from .train import KerasTraining

__all__ = ["BACKEND", "CONVERTERS", "KerasBackend", "build", "custom_objects", "graph_of", "layer_name", "owns"]

before_tensorflow()  # keras on tensorflow imports it lazily: torch._dynamo goes first where torch is loaded


# --- the backend object ---------------------------------------------------------------------------
def _retype(config, dtype: str):
    """A model config with every layer dtype (policy or plain name) replaced by ``dtype``."""
    if isinstance(config, dict):
        out = {}
        for k, v in config.items():
            if k == "dtype" and isinstance(v, str) and v.startswith(("float", "mixed", "bfloat")):
                out[k] = dtype
            elif k == "dtype" and isinstance(v, dict) and "Policy" in str(v.get("class_name", "")):
                out[k] = {**v, "config": {**v.get("config", {}), "name": dtype}}
            else:
                out[k] = _retype(v, dtype)
        return out
    if isinstance(config, list):
        return [_retype(v, dtype) for v in config]
    return config


# keras preprocessing layers a model may open with (some keras.applications models): not weights of
# the graph. Their composite is ``in_model_preprocessing``; a Normalization's state (mean, variance, an int count)
# stays out of the state dict (keras names the layer "normalization_<n>" after the first one in a process)
_PREPROCESSING = ("Rescaling", "Normalization")


def _weight_layers(model):
    """``model.layers`` that hold weights of the computation (not its preprocessing layers)."""
    return [la for la in model.layers if type(la).__name__ not in _PREPROCESSING]


def _copy_preprocessing(source, model) -> None:
    """The state of ``source``'s preprocessing layers (Normalization mean/variance) into ``model``'s, in order."""
    pairs = zip(*([la for la in m.layers if type(la).__name__ in _PREPROCESSING and la.weights]
                  for m in (source, model)), strict=False)
    for a, b in pairs:
        if [tuple(w.shape) for w in a.weights] == [tuple(w.shape) for w in b.weights]:
            b.set_weights(a.get_weights())
            b.finalize_state()  # a Normalization computes with the values taken at build or load


def _state_key(layer, weight) -> str:
    """``layer.leaf``; Keras 3 names a DepthwiseConv2D's kernel "kernel", the key says "depthwise_kernel"."""
    leaf = weight.name.rsplit("/", 1)[-1]
    if type(layer).__name__ == "DepthwiseConv2D" and leaf == "kernel":
        leaf = NATIVE_NAMES["depthwise_conv2d"]["weight"]
    return f"{layer.name}.{leaf}"


# THE canonical suffix -> keras leaf table, per op ("depthwise_kernel" is the state-dict leaf of a
# DepthwiseConv2D's kernel, whose attribute keras 3 calls "kernel"), and the layouts (lightnets.layouts)
NATIVE_NAMES = {"conv2d": {"weight": "kernel", "bias": "bias"},
                "depthwise_conv2d": {"weight": "depthwise_kernel", "bias": "bias"},
                "linear": {"weight": "kernel", "bias": "bias"},
                "batch_norm": {"gamma": "gamma", "beta": "beta", "mean": "moving_mean", "var": "moving_variance"}}
NATIVE_LAYOUTS = {"conv2d": {"weight": "khwio"}, "depthwise_conv2d": {"weight": "khwcm"}, "linear": {"weight": "T"}}


class KerasBackend(KerasTraining, Backend):
    """Keras 3: functional ``keras.Model`` (NHWC); state dicts are ``{f"{layer.name}.{leaf}": array}``."""

    @property
    def computes_float64(self) -> bool:
        import keras

        return keras.backend.backend() == "tensorflow"  # keras 3.15 demotes float64 on torch/jax (keras#23223)

    name = "keras"
    FORMATS = {"keras-weights": ".weights.h5", "keras-model": ".keras"}
    NATIVE_NAMES = NATIVE_NAMES

    NATIVE_LAYOUTS = NATIVE_LAYOUTS

    build = staticmethod(build)
    owns = staticmethod(owns)
    graph_of = staticmethod(graph_of)
    custom_objects = staticmethod(custom_objects)
    layer_name = staticmethod(layer_name)

    # hooks of the contract
    def _variable(self, model, node, leaf):
        layer = model.get_layer(_param_layer_name(node))
        return getattr(layer, "kernel" if leaf == NATIVE_NAMES["depthwise_conv2d"]["weight"] else leaf)

    def _value(self, var):
        return np.array(var.numpy())

    def _assign_variable(self, var, value):
        var.assign(np.asarray(value, var.dtype))

    def _input(self, model, x):
        return _nhwc(model, x)

    def _probe(self, model, probe):
        return to_nhwc(probe, _dtype(model))

    def _output(self, model, y):
        return to_nchw(y, _dtype(model))

    def _evaluating(self, model):
        return contextlib.nullcontext()  # a keras call is in inference mode unless it passes training=True

    def _call(self, model, x, return_all):
        if not return_all:
            frozen = getattr(model, _FROZEN, None)
            return model.predict_on_batch(x) if frozen is None else frozen(x)
        every = getattr(model, _ALL, None)
        if every is None:  # built once; shares the model's layers and weights
            import keras

            outputs = {n.name: model.get_layer(layer_name(n.name)).output for n in graph_of(model).nodes}
            every = keras.Model(model.inputs[0], outputs, name=f"{model.name}__all")
            object.__setattr__(model, _ALL, every)
        return every.predict_on_batch(x)

    # native I/O
    @staticmethod
    @contextlib.contextmanager
    def _suffixed(path, suffix: str):
        """``path`` under a name ending in ``suffix`` (keras reads only files named so): a temporary link."""
        if str(path).endswith(suffix):
            yield str(path)
            return
        with tempfile.TemporaryDirectory(prefix="lightnets-") as d:
            link = os.path.join(d, "file" + suffix)
            os.symlink(os.path.abspath(path), link)
            yield link

    def load_model(self, path):
        """A ``.keras`` file as a keras model (safe mode: no lambdas; lightnets' layers registered)."""
        import keras

        path = self.existing(path)
        try:
            with self._suffixed(path, self.FORMATS["keras-model"]) as p:
                return keras.saving.load_model(p, custom_objects=custom_objects(), compile=False, safe_mode=True)
        except Exception as e:  # noqa: BLE001
            raise unreadable(path, "keras .keras", e) from None

    def _read(self, path, fmt):
        if fmt == "keras-model":
            return self.state_dict(self.load_model(path))
        # a .weights.h5 stores variables by layer position ("layers/<class-path>/vars/<i>"), not layer name:
        # those raw entries are returned; load the file into a model with load_file
        try:
            import h5py

            out = {}
            with h5py.File(path, "r") as f:
                def visit(name, obj):
                    if isinstance(obj, h5py.Dataset):
                        out[name] = np.asarray(obj[()])
                f.visititems(visit)
            return out
        except Exception as e:  # noqa: BLE001
            raise unreadable(path, "keras .weights.h5", e) from None

    def load_file(self, model, path, fmt):
        self.check_format(fmt)
        if fmt == "keras-model":
            source = self.load_model(path)
            self.load_state_dict(model, self.state_dict(source))
            _copy_preprocessing(source, model)
            return
        path = self.existing(path)
        try:
            with self._suffixed(path, self.FORMATS["keras-weights"]) as p:
                model.load_weights(p)
        except Exception as e:  # noqa: BLE001 -- keras raises ValueError on mismatch, OSError on a bad file
            kind = WeightsError if isinstance(e, ValueError) and "h5" not in type(e).__module__ else FileFormatError
            raise kind(f"cannot load {path} into the {type(model).__name__} {model.name!r} ({type(e).__name__}: "
                       f"{str(e)[:300]}); it is truncated, corrupt, or not saved from this model / class "
                       "count") from None

    def _write(self, model, path, fmt):
        if fmt == "keras-weights":
            model.save_weights(path)
        else:
            model.save(path)

    def state_dict(self, model):
        if not hasattr(model, "layers"):
            raise LightnetsError(f"{type(model).__name__} is not a keras model")
        out = {}
        for layer in _weight_layers(model):
            for w in layer.weights:
                key = _state_key(layer, w)
                if key in out:
                    raise WeightsError(f"keras model has two weights named {key!r}; layer names must be unique")
                out[key] = np.asarray(w.numpy())
        return out

    def _shapes(self, model):
        return {_state_key(layer, w): tuple(w.shape) for layer in _weight_layers(model) for w in layer.weights}

    def set_weights(self, model, weights):
        super().set_weights(model, weights)
        model.__dict__.pop(_FROZEN, None)  # optimize(compile=True)'s snapshot of the old weights

    def _assign(self, model, sd):
        model.__dict__.pop(_FROZEN, None)
        for layer in _weight_layers(model):
            for w in layer.weights:
                w.assign(np.asarray(self.to_numpy(sd[_state_key(layer, w)]), dtype=w.dtype))

    def forward(self, model, x):
        x = np.asarray(x)
        dtype = np.dtype(model.inputs[0].dtype) if getattr(model, "inputs", None) else x.dtype
        # predict_on_batch: inference mode, the same compiled path as run() (or its frozen sessions)
        x = to_nhwc(x, dtype)
        frozen = getattr(model, _FROZEN, None)
        y = model.predict_on_batch(x) if frozen is None else frozen(x)
        ys = [np.asarray(v) for v in y] if isinstance(y, (list, tuple)) else [np.asarray(y)]
        ys = [to_nchw(v) for v in ys]
        return ys if isinstance(y, (list, tuple)) else ys[0]

    def _cast_native(self, model, dtype):
        import keras

        config = _retype(model.get_config(), dtype)
        with keras.saving.custom_object_scope(custom_objects()):
            copy = type(model).from_config(config)
        copy.set_weights([np.asarray(w, dtype) if np.asarray(w).dtype.kind == "f" else w
                          for w in model.get_weights()])
        for layer in copy.layers:  # a Normalization computes with the mean/variance taken at build or load
            if type(layer).__name__ == "Normalization":
                layer.finalize_state()
        return copy

    def bn_eps(self, model):
        import keras

        return {float(la.epsilon) for la in model._flatten_layers(include_self=False)
                if isinstance(la, keras.layers.BatchNormalization)}

    def in_model_preprocessing(self, model):
        """``(scale, offset)`` of the Rescaling / Normalization layers the model opens with, composed: the model
        computes ``x * scale + offset`` of its input before the first other layer. Floats if every channel has
        the same, else per-channel tuples (e.g. Rescaling(1/255) then a per-channel Normalization,
        ``(x - mean) / max(sqrt(variance), keras epsilon)``); None without such layers. Rescaling's python-float
        scale is cast to floatx by keras (float32, in a float64 model too): the value returned is that one."""
        import keras

        c = int(model.inputs[0].shape[-1]) if getattr(model, "inputs", None) else 1
        scale, offset, found = np.ones(c), np.zeros(c), False
        for layer in model.layers:
            kind = type(layer).__name__
            if kind == "InputLayer":
                continue
            if kind == "Rescaling":  # keras casts scale and offset to floatx first, in a float64 model too
                s, o = (np.asarray(v, keras.config.floatx()).astype(np.float64) for v in (layer.scale, layer.offset))
                scale, offset = scale * s, offset * s + o
            elif kind == "Normalization" and not layer.invert:
                mean = np.asarray(layer.mean, np.float64).reshape(-1)
                d = np.maximum(np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1)), keras.config.epsilon())
                scale, offset = scale / d, (offset - mean) / d
            else:
                break
            found = True
        if not found:
            return None
        if np.all(scale == scale[0]) and np.all(offset == offset[0]):
            return float(scale[0]), float(offset[0])
        return tuple(map(float, scale)), tuple(map(float, offset))

    def classifier_activation(self, model):
        act = getattr(model.layers[-1], "activation", None)
        return getattr(act, "__name__", "linear") if act is not None else "linear"

    def input_hw(self, model):
        hw = tuple(model.inputs[0].shape[1:3])
        return hw if all(isinstance(d, int) for d in hw) else None

    # bench
    def set_threads(self, n):
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(1)

    def timed_call(self, model):
        import keras

        def to_input(x):
            return to_nhwc(x)
        frozen = getattr(model, _FROZEN, None)
        if frozen is not None:
            return to_input, frozen
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
            return (lambda x: tf.constant(to_input(x))), (lambda x: fn(x).numpy())
        return to_input, (lambda x: keras.ops.convert_to_numpy(model(x, training=False)))

    # fast inference path (lightnets.optimize folds the batch norms first)
    def optimize(self, model, compile=False):
        """The fast eval form of ``model`` (a fresh lightnets model, or any keras model): the model itself, run in
        graph mode by a ``tf.function`` (``predict_on_batch`` in ``lightnets.run``, ``timed_call`` in the bench);
        with ``compile`` on tensorflow, run by frozen-graph sessions (:mod:`lightnets.backends.keras.frozen`, which
        says what was measured, XLA included). On keras' jax/torch backends ``compile`` changes nothing."""
        import keras

        if compile and keras.backend.backend() == "tensorflow":
            from .frozen import FrozenSessions

            object.__setattr__(model, _FROZEN, FrozenSessions(model))
        return model


BACKEND = KerasBackend()
