"""Keras 3 backend: a functional ``keras.Model`` (NHWC) with one named layer per IR node.

Each op has one converter in ``CONVERTERS``. Ops without a native layer (channel slices, shuffle,
-inf padding, average pooling that excludes non-"same" pads, strided dilated convs) use the small
serialisable layers below, written with ``keras.ops`` only: the model runs on any keras backend and
reloads from ``.keras`` without Lambda layers. Keras is imported lazily. The backend object is
``BACKEND`` (``lightnets.backends.base.Backend``).

Known keras 3.15 limit: on non-tensorflow backends ``backend.result_type`` maps float64 to float32,
so BatchNormalization, ``ops.mean`` and Dense compute in float32 inside a float64 model there.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile

import numpy as np

from lightnets import ops as ir_ops  # the IR's op rules (keras.ops is `ops` below)
from lightnets.errors import FileFormatError, InputShapeError, LightnetsError, SpecError, WeightsError
from lightnets.graph import INPUT, Graph, Node
from lightnets.reference import check_input

from .base import Backend, Lowering, unreadable

_GRAPH = "_lightnets_graph"  # attribute of the model holding the Graph
_ALL = "_lightnets_all"  # cached keras.Model over every node's output (return_all)
_FROZEN = "_lightnets_frozen"  # optimize(compile=True): tf_frozen.FrozenSessions of the model
_LAYERS = None  # the custom layer classes, defined on first use (keras is imported lazily)


def layer_name(node_name: str, part: str | None = None) -> str:
    """THE node -> keras layer name mapping: dots become ``__`` (torch-backed keras refuses dots).

    ``part`` names an auxiliary layer of the node (``pad``, ``conv``) as if it were a child node.
    """
    return "__".join(node_name.split(".") + ([part] if part else []))


# --- custom layers ---------------------------------------------------------------------------
def _custom_layers():
    """Define (once) and return the custom layers; registered for ``keras.saving.load_model``."""
    global _LAYERS
    if _LAYERS is not None:
        return _LAYERS
    import keras
    from keras import ops

    register = keras.saving.register_keras_serializable(package="lightnets")

    @register
    class Pad2D(keras.layers.Layer):
        """Constant padding of H and W by ``pads`` = (top, bottom, left, right), e.g. -inf for max pool."""

        def __init__(self, pads, value=0.0, **kwargs):
            super().__init__(**kwargs)
            self.pads, self.value = tuple(pads), float(value)

        def call(self, x):
            t, b, l, r = self.pads
            return ops.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=self.value)

        def get_config(self):
            return {**super().get_config(), "pads": list(self.pads), "value": self.value}

    @register
    class Subsample2D(keras.layers.Layer):
        """Keep every ``stride``-th row and column (a strided conv = stride-1 conv, then this)."""

        def __init__(self, stride, **kwargs):
            super().__init__(**kwargs)
            self.stride = tuple(stride)

        def call(self, x):
            sh, sw = self.stride
            return x[:, ::sh, ::sw, :]

        def get_config(self):
            return {**super().get_config(), "stride": list(self.stride)}

    @register
    class SliceChannels(keras.layers.Layer):
        """Channels ``[start, stop)`` of an NHWC tensor."""

        def __init__(self, start, stop, **kwargs):
            super().__init__(**kwargs)
            self.start, self.stop = int(start), int(stop)

        def call(self, x):
            return x[:, :, :, self.start: self.stop]

        def get_config(self):
            return {**super().get_config(), "start": self.start, "stop": self.stop}

    @register
    class ChannelShuffle(keras.layers.Layer):
        """Paper/torch shuffle in NHWC: out[j*g + i] = in[i*(C/g) + j]; any batch size."""

        def __init__(self, groups, **kwargs):
            super().__init__(**kwargs)
            self.groups = int(groups)

        def call(self, x):
            c, g = x.shape[-1], self.groups  # channels are static; batch, height and width may not be
            y = ops.swapaxes(ops.reshape(x, (-1, g, c // g)), 1, 2)
            return ops.reshape(y, ops.shape(x))

        def get_config(self):
            return {**super().get_config(), "groups": self.groups}

    @register
    class AvgPool2DExcludePad(keras.layers.Layer):
        """Average pooling over zero pads that divides by the number of real inputs only: explicit
        ``pads``, or ``pads=None`` for TF "same" pads computed from the (static) input size."""

        def __init__(self, kernel, stride, pads, **kwargs):
            super().__init__(**kwargs)
            self.kernel, self.stride = tuple(kernel), tuple(stride)
            self.pads = None if pads is None else tuple(pads)

        def call(self, x):
            if self.pads is None:
                window = {"kernel": self.kernel, "stride": self.stride, "padding": "same"}
                t, b, l, r = ir_ops.effective_pads(window, tuple(x.shape[1:3]))
            else:
                t, b, l, r = self.pads
            pad = ((0, 0), (t, b), (l, r), (0, 0))
            total = ops.average_pool(ops.pad(x, pad), self.kernel, self.stride, padding="valid")
            count = ops.average_pool(ops.pad(ops.ones_like(x[..., :1]), pad), self.kernel, self.stride,
                                     padding="valid")
            return total / count

        def get_config(self):
            return {**super().get_config(), "kernel": list(self.kernel), "stride": list(self.stride),
                    "pads": None if self.pads is None else list(self.pads)}

    @register
    class ResizeNearest(keras.layers.Layer):
        """``x`` at ``like``'s height and width (NHWC), nearest: rows/columns floor(i * in / out) gathered by
        integer index (lightnets.ops.nearest_index); the sizes may be dynamic (keras' and TF's resize use
        half-pixel centres or a float scale, which differ)."""

        def call(self, inputs):
            x, like = inputs

            def index(size_in, size_out):
                return ops.floor_divide(ops.arange(0, size_out, dtype="int32") * size_in, size_out)

            xs, ls = ops.shape(x), ops.shape(like)
            return ops.take(ops.take(x, index(xs[1], ls[1]), axis=1), index(xs[2], ls[2]), axis=2)

        def compute_output_shape(self, shapes):
            x_shape, like_shape = shapes
            return (x_shape[0], like_shape[1], like_shape[2], x_shape[3])

    classes = (Pad2D, Subsample2D, SliceChannels, ChannelShuffle, AvgPool2DExcludePad, ResizeNearest)
    _LAYERS = {c.__name__: c for c in classes}
    return _LAYERS


def custom_objects() -> dict:
    """The custom layers by name (importing them registers them for ``keras.saving.load_model``)."""
    return dict(_custom_layers())


# --- padding ---------------------------------------------------------------------------------
def _pad_mode(a: dict) -> str | None:
    """"valid" without pads, "same" where keras' "same" is the node's padding at EVERY input size (the
    IR's "same", or explicit stride-1 pads equal to it), else None (pad explicitly)."""
    pads = ir_ops.static_pads(a)
    if pads is None:
        return "same"
    if not any(pads):
        return "valid"
    if all(s == 1 for s in a["stride"]) and pads == ir_ops.effective_pads({**a, "padding": "same"}, (1, 1)):
        return "same"
    return None


def _explicit_pad(keras, x, node: Node, dtype, value=0.0):
    """The node's pads as a layer of their own: zeros natively, other values with ``Pad2D``."""
    pads, name = ir_ops.static_pads(node.attrs), layer_name(node.name, "pad")
    if pads is None:
        raise SpecError(f"node {node.name!r}: keras cannot pad a strided dilated or pad-counting 'same' "
                        f"{node.op} explicitly (its pads depend on the input size); use explicit pads")
    if value == 0.0:
        t, b, l, r = pads
        return keras.layers.ZeroPadding2D(((t, b), (l, r)), name=name, dtype=dtype)(x)
    return _custom_layers()["Pad2D"](pads, value, name=name, dtype=dtype)(x)


def _static_size_only(keras, node: Node) -> bool:
    """Whether the node's lowering reads the input size at build time (a strided exclude-pad "same" average
    pool off tensorflow, whose custom layer computes its pads from the static size)."""
    a = node.attrs
    return (node.op == "avg_pool2d" and ir_ops.static_pads(a) is None and not a["count_include_pad"]
            and keras.backend.backend() != "tensorflow")


# --- converters: Lowering (native: the keras module) -> output tensor -------------------------
def _strided_dilated(node: Node) -> bool:
    """Keras convs refuse stride > 1 with dilation > 1: such a node is conv (stride 1) + subsample."""
    a = node.attrs
    return node.op == "conv2d" and max(a["stride"]) > 1 and max(a["dilation"]) > 1


def _is_depthwise(node: Node, in_channels: int) -> bool:
    return node.op == "conv2d" and node.attrs["groups"] == in_channels > 1


# Weight layers start at zeros: the model's weights are set from canonical weights right after the build,
# and keras' random initializers cost an XLA compile per weight shape on jax (40 s of a 60 s build, 300 layers).
_INIT = "zeros"


def _conv2d(c: Lowering):
    keras, node, xs, shapes, name, dtype = c.native, c.node, c.inputs, c.in_shapes, c.name, c.dtype
    a, x, c = node.attrs, xs[0], shapes[0][0]
    split = _strided_dilated(node)
    mode = None if split else _pad_mode(a)
    if mode is None:
        x, mode = _explicit_pad(keras, x, node, dtype), "valid"
    common = dict(kernel_size=a["kernel"], strides=(1, 1) if split else a["stride"], padding=mode,
                  dilation_rate=a["dilation"], use_bias=a["bias"], name=_param_layer_name(node), dtype=dtype)
    if _is_depthwise(node, c):
        y = keras.layers.DepthwiseConv2D(depth_multiplier=a["out_channels"] // c, depthwise_initializer=_INIT,
                                         **common)(x)
    else:
        y = keras.layers.Conv2D(a["out_channels"], groups=a["groups"], kernel_initializer=_INIT, **common)(x)
    if split:
        y = _custom_layers()["Subsample2D"](a["stride"], name=name, dtype=dtype)(y)
    return y


def _param_layer_name(node: Node) -> str:
    """The layer holding a node's parameters: the node's own layer, or ``<node>__conv`` before a subsample."""
    return layer_name(node.name, "conv" if _strided_dilated(node) else None)


def _batch_norm(c: Lowering):
    keras, node, xs, name, dtype = c.native, c.node, c.inputs, c.name, c.dtype
    a = node.attrs  # keras momentum weighs the old statistic: keras = 1 - torch
    return keras.layers.BatchNormalization(epsilon=a["eps"], momentum=1.0 - a["momentum"], name=name,
                                           dtype=dtype)(xs[0])


# keras 3: hard_sigmoid = relu6(x + 3) / 6, hard_silu = x * hard_sigmoid(x), silu = x * sigmoid(x)
_ACTIVATIONS = {"hardsigmoid": "hard_sigmoid", "hardswish": "hard_silu", "sigmoid": "sigmoid",
                "swish": "silu"}


def _activation(c: Lowering):
    keras, node, xs, name, dtype = c.native, c.node, c.inputs, c.name, c.dtype
    kind = node.attrs["kind"]
    if kind in ("relu", "relu6"):
        return keras.layers.ReLU(max_value=6.0 if kind == "relu6" else None, name=name, dtype=dtype)(xs[0])
    return keras.layers.Activation(_ACTIVATIONS[kind], name=name, dtype=dtype)(xs[0])


def _max_pool2d(c: Lowering):
    keras, node, xs, name, dtype = c.native, c.node, c.inputs, c.name, c.dtype
    a, x = node.attrs, xs[0]
    mode = _pad_mode(a)
    if mode is None:  # zero pads could win the max: pad with -inf
        x, mode = _explicit_pad(keras, x, node, dtype, value=-math.inf), "valid"
    return keras.layers.MaxPooling2D(a["kernel"], a["stride"], padding=mode, name=name, dtype=dtype)(x)


def _avg_pool2d(c: Lowering):
    keras, node, xs, name, dtype = c.native, c.node, c.inputs, c.name, c.dtype
    a, x = node.attrs, xs[0]
    mode, pads = _pad_mode(a), ir_ops.static_pads(a)
    if mode != "valid" and a["count_include_pad"]:
        x, mode = _explicit_pad(keras, x, node, dtype), "valid"
    # TF "same" excludes pads, but keras' torch backend pads an asymmetric "same" by replication
    symmetric = pads is not None and (pads[0], pads[2]) == (pads[1], pads[3])
    if mode is None or (mode == "same" and not symmetric and keras.backend.backend() != "tensorflow"):
        return _custom_layers()["AvgPool2DExcludePad"](a["kernel"], a["stride"], pads, name=name, dtype=dtype)(x)
    return keras.layers.AveragePooling2D(a["kernel"], a["stride"], padding=mode, name=name, dtype=dtype)(x)


def _custom(cls, *attrs):
    return lambda k, a, **kw: _custom_layers()[cls](*(a[n] for n in attrs), **kw)


# ops that are one layer: (keras, attrs, name=, dtype=) -> layer
_LAYER = {
    "add": lambda k, a, **kw: k.layers.Add(**kw),
    "mul": lambda k, a, **kw: k.layers.Multiply(**kw),  # broadcasts (N,1,1,C) x (N,H,W,C)
    "concat": lambda k, a, **kw: k.layers.Concatenate(axis=-1, **kw),
    "slice_channels": _custom("SliceChannels", "start", "stop"),
    "channel_shuffle": _custom("ChannelShuffle", "groups"),
    "resize_nearest": _custom("ResizeNearest"),
    "global_avg_pool": lambda k, a, **kw: k.layers.GlobalAveragePooling2D(keepdims=True, **kw),
    "flatten": lambda k, a, **kw: k.layers.Flatten(**kw),  # only on (N, 1, 1, C): no order issue
    "linear": lambda k, a, **kw: k.layers.Dense(a["out_features"], use_bias=a["bias"], kernel_initializer=_INIT,
                                                **kw),
    "dropout": lambda k, a, **kw: k.layers.Dropout(a["rate"], **kw),
}


def _one_layer(c: Lowering):
    keras, node, xs, name, dtype = c.native, c.node, c.inputs, c.name, c.dtype
    layer = _LAYER[node.op](keras, node.attrs, name=name, dtype=dtype)
    return layer(xs if len(xs) > 1 else xs[0])


CONVERTERS = {"conv2d": _conv2d, "batch_norm": _batch_norm, "activation": _activation,
              "max_pool2d": _max_pool2d, "avg_pool2d": _avg_pool2d, **dict.fromkeys(_LAYER, _one_layer)}


# --- contract --------------------------------------------------------------------------------
def build(graph: Graph, dtype: str = "float32"):
    """The functional keras model of ``graph`` (NHWC input), every layer in ``dtype``; its weight layers hold
    zeros until ``set_weights`` (as ``lightnets.build`` does right after)."""
    import keras

    _check_layer_names(graph)
    c, h, w = graph.input_shape
    if not graph.fixed_size and not any(_static_size_only(keras, n) for n in graph.nodes):
        h = w = None  # any input size the graph allows (pads of "same" nodes follow it)
    inp = keras.Input((h, w, c), dtype=dtype, name=layer_name(INPUT))
    values = {INPUT: inp}
    for node in graph.nodes:
        values[node.name] = CONVERTERS[node.op](Lowering(node, graph.in_shapes(node), [values[i] for i in node.inputs],
                                                         dtype, layer_name(node.name), keras))
    outputs = [values[o] for o in graph.outputs] if graph.multi_output else values[graph.output]
    model = keras.Model(inp, outputs, name=graph.name)
    setattr(model, _GRAPH, graph)
    return model


def _check_layer_names(graph: Graph) -> None:
    """Two node names (or a node and an auxiliary ``pad``/``conv`` layer) may not map to one name."""
    names = [layer_name(INPUT)] + [layer_name(n.name, part) for n in graph.nodes
                                   for part in (None, "pad", "conv")]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise SpecError(f"graph {graph.name!r}: node names collide as keras layer names {clashes} "
                        "(dots become '__'); rename the nodes")


def owns(model) -> bool:
    return isinstance(getattr(model, _GRAPH, None), Graph)


def graph_of(model) -> Graph:
    if not owns(model):
        raise LightnetsError(f"{type(model).__name__} carries no lightnets graph (nor does a model reloaded "
                             "from .keras); build it with lightnets.build(..., backend='keras')")
    return getattr(model, _GRAPH)


def _to_nchw(y, dtype) -> np.ndarray:
    """NHWC -> NCHW, in the model's dtype (keras on torch may return float32 from a float64 model)."""
    y = np.asarray(y, dtype)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if y.ndim == 4 else y


def _nhwc(model, x) -> np.ndarray:
    """Validate the NCHW numpy batch ``x`` and return it in NHWC and the model's dtype: the one transpose."""
    graph = graph_of(model)
    x = np.asarray(x)
    check_input(graph, x)
    fixed = model.inputs[0].shape[1:3]
    if None not in fixed and tuple(x.shape[2:]) != tuple(fixed):
        raise InputShapeError(f"input size {x.shape[2]}x{x.shape[3]} differs from the {fixed[0]}x{fixed[1]} this "
                              "keras model was built for (its graph needs a static size); build it at that "
                              "input_size")
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=_dtype(model))


def _dtype(model) -> np.dtype:
    return np.dtype(model.inputs[0].dtype)


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


class KerasBackend(Backend):
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
        probe = np.asarray(probe, _dtype(model))
        return probe.transpose(0, 2, 3, 1) if probe.ndim == 4 else probe

    def _output(self, model, y):
        return _to_nchw(y, _dtype(model))

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

    def _train_call(self, model, x):
        """Keras updates the moving variance with the biased batch variance; the IR pins the unbiased one
        (torch convention), so the batch term of each update is rescaled by n / (n - 1) afterwards."""
        import keras

        graph = graph_of(model)
        shapes = graph.shapes_at(x.shape[1], x.shape[2])
        bns = [(n, model.get_layer(layer_name(n.name))) for n in graph.nodes if n.op == "batch_norm"]
        old = {n.name: layer.moving_variance.numpy() for n, layer in bns}
        dropouts = [la for la in model.layers if isinstance(la, keras.layers.Dropout)]
        rates = [la.rate for la in dropouts]
        try:
            for la in dropouts:
                la.rate = 0.0
            out = model(x, training=True)
            out = ([keras.ops.convert_to_numpy(y) for y in out] if isinstance(out, (list, tuple))
                   else keras.ops.convert_to_numpy(out))
        finally:
            for la, rate in zip(dropouts, rates, strict=True):
                la.rate = rate
        for node, layer in bns:
            _, h, w = shapes[node.inputs[0]]
            n, keep = x.shape[0] * h * w, layer.momentum
            kept = keep * old[node.name]
            layer.moving_variance.assign(kept + (layer.moving_variance.numpy() - kept) * (n / (n - 1)))
        return out

    def _backward(self, model, x, probe, variables):
        """keras on tensorflow (GradientTape), torch (autograd) or jax (jax.grad of ``model.stateless_call``)."""
        import keras

        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            xt = tf.constant(x)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                loss = self.probe_loss(model(xt, training=False), probe, tf.reduce_sum)
            grads = [g.numpy() for g in tape.gradient(loss, [xt, *variables])]
        elif backend == "torch":
            import torch

            xt = torch.tensor(x, requires_grad=True)
            pt = [torch.as_tensor(p) for p in probe] if isinstance(probe, list) else torch.as_tensor(probe)
            loss = self.probe_loss(model(xt, training=False), pt)
            grads = torch.autograd.grad(loss, [xt, *(v.value for v in variables)])
            grads = [g.detach().cpu().numpy() for g in grads]
        elif backend == "jax":
            import jax

            trainable = model.trainable_variables
            position = {id(v): i for i, v in enumerate(trainable)}
            missing = [v.path for v in variables if id(v) not in position]
            if missing:
                raise LightnetsError(f"keras-jax gradients: {missing[:3]} are not trainable variables of the model")
            fixed = [v.value for v in model.non_trainable_variables]

            def loss(xv, values, pv):
                y, _ = model.stateless_call(values, fixed, xv, training=False)
                return self.probe_loss(y, pv)
            # jitted: one XLA compile of the whole backward (op-by-op eager dispatch measured 2.7x slower)
            g_x, g_vars = jax.jit(jax.grad(loss, argnums=(0, 1)))(jax.numpy.asarray(x), [v.value for v in trainable],
                                                                  probe)
            grads = [np.asarray(g_x)] + [np.asarray(g_vars[position[id(v)]]) for v in variables]
        else:
            raise LightnetsError(f"gradients are implemented for keras on tensorflow, torch and jax, not {backend!r}")
        dtype = _dtype(model)
        return grads[0], [np.asarray(g, dtype) for g in grads[1:]]

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
            self.load_state_dict(model, self.state_dict(self.load_model(path)))
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
        for layer in model.layers:
            for w in layer.weights:
                key = _state_key(layer, w)
                if key in out:
                    raise WeightsError(f"keras model has two weights named {key!r}; layer names must be unique")
                out[key] = np.asarray(w.numpy())
        return out

    def _shapes(self, model):
        return {_state_key(layer, w): tuple(w.shape) for layer in model.layers for w in layer.weights}

    def set_weights(self, model, weights):
        super().set_weights(model, weights)
        model.__dict__.pop(_FROZEN, None)  # optimize(compile=True)'s snapshot of the old weights

    def _assign(self, model, sd):
        model.__dict__.pop(_FROZEN, None)
        for layer in model.layers:
            for w in layer.weights:
                w.assign(np.asarray(self.to_numpy(sd[_state_key(layer, w)]), dtype=w.dtype))

    def forward(self, model, x):
        x = np.asarray(x)
        dtype = np.dtype(model.inputs[0].dtype) if getattr(model, "inputs", None) else x.dtype
        # predict_on_batch: inference mode, the same compiled path as run() (or its frozen sessions)
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=dtype)
        frozen = getattr(model, _FROZEN, None)
        y = model.predict_on_batch(x) if frozen is None else frozen(x)
        ys = [np.asarray(v) for v in y] if isinstance(y, (list, tuple)) else [np.asarray(y)]
        ys = [np.ascontiguousarray(v.transpose(0, 3, 1, 2)) if v.ndim == 4 else v for v in ys]
        return ys if isinstance(y, (list, tuple)) else ys[0]

    def _cast_native(self, model, dtype):
        import keras

        config = _retype(model.get_config(), dtype)
        with keras.saving.custom_object_scope(custom_objects()):
            copy = type(model).from_config(config)
        copy.set_weights([np.asarray(w, dtype) if np.asarray(w).dtype.kind == "f" else w
                          for w in model.get_weights()])
        return copy

    def bn_eps(self, model):
        import keras

        return {float(la.epsilon) for la in model._flatten_layers(include_self=False)
                if isinstance(la, keras.layers.BatchNormalization)}

    def in_model_preprocessing(self, model):
        for layer in model.layers:
            if type(layer).__name__ == "Rescaling":
                return float(layer.scale), float(layer.offset)
        return None

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
            return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))
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
        with ``compile`` on tensorflow, run by frozen-graph sessions (:mod:`lightnets.backends.tf_frozen`, which
        says what was measured, XLA included). On keras' jax/torch backends ``compile`` changes nothing."""
        import keras

        if compile and keras.backend.backend() == "tensorflow":
            from .tf_frozen import FrozenSessions

            object.__setattr__(model, _FROZEN, FrozenSessions(model))
        return model

    # --- training: the IR's loss, optimizers and schedule (lightnets.optim) ----------------------------
    def optimizer(self, spec, params):
        """The keras optimizer of a ``lightnets.optim`` spec, built over the variables ``params``, its lr variable
        in their dtype (keras makes it in floatx). SGD gets no ``weight_decay`` (keras' is decoupled): the trainer
        adds the IR's coupled L2 to the gradients, rescales the velocities when the lr changes and sets AdamW's
        epsilon per step.

        Hyperparameters are numpy float64 scalars (still ``float`` instances): keras 3.15 on tensorflow applies
        ``ops.cast(self.momentum, variable.dtype)`` (also beta_1/beta_2, weight_decay), and ``tf.cast`` of a
        Python float makes a float32 tensor first - a float64 run would use momentum 0.8999999762 (measured:
        weights off by 3.7e-9 relative after 2 SGD steps)."""
        import keras

        f64 = np.float64
        previous = keras.config.floatx()
        keras.config.set_floatx(keras.backend.standardize_dtype(params[0].dtype))
        try:
            if spec.kind == "sgd":
                opt = keras.optimizers.SGD(learning_rate=f64(spec.lr), momentum=f64(spec.momentum),
                                           nesterov=spec.nesterov)
            else:
                opt = keras.optimizers.AdamW(learning_rate=f64(spec.lr), weight_decay=f64(spec.weight_decay),
                                             beta_1=f64(spec.betas[0]), beta_2=f64(spec.betas[1]),
                                             epsilon=f64(spec.eps))
        finally:
            keras.config.set_floatx(previous)
        opt.build(params)
        return opt

    def loss(self, logits, labels):
        """The IR loss as keras' own: categorical cross-entropy on logits with label smoothing
        ``optim.LABEL_SMOOTHING`` on the one-hot ``labels``, batch mean, in the logits' dtype."""
        import keras

        from lightnets.optim import LABEL_SMOOTHING

        dtype = keras.backend.standardize_dtype(logits.dtype)
        target = keras.ops.one_hot(keras.ops.convert_to_tensor(labels), logits.shape[-1], dtype=dtype)
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=LABEL_SMOOTHING,
                                                    dtype=dtype)(target, logits)

    @contextlib.contextmanager
    def training(self, model):
        """Context: every dropout's rate 0 (keras' train mode is a per-call flag: the trainer passes it)."""
        import keras

        dropouts = [la for la in model.layers if isinstance(la, keras.layers.Dropout)]
        rates = [la.rate for la in dropouts]
        for la in dropouts:
            la.rate = 0.0
        try:
            yield model
        finally:
            for la, rate in zip(dropouts, rates, strict=True):
                la.rate = rate

    @staticmethod
    def correct_bn_variance(model, old: dict, batch: int, hw: dict) -> None:
        """Keras updates a moving variance with the BIASED batch variance; rescale the batch term of the update
        by n / (n - 1) (the IR's unbiased update). ``old``: layer name -> moving variance before the step;
        ``hw``: layer name -> spatial size of the BN input."""
        for name, before in old.items():
            layer = model.get_layer(name)
            n = batch * hw[name]
            kept = layer.momentum * before
            layer.moving_variance.assign(kept + (layer.moving_variance.numpy() - kept) * (n / (n - 1)))

    def _trainer(self, model, spec):
        """Keras semantics mapped as the module doc says; keras on tensorflow (GradientTape) or torch (autograd)."""
        graph = graph_of(model)
        variables = list(model.trainable_variables)  # the graph's trainable parameters
        dtype = np.dtype(model.inputs[0].dtype)
        opt = self.optimizer(spec, variables)
        bns = [n for n in graph.nodes if n.op == "batch_norm"]
        loss_and_grads = self._loss_and_grads_fn(model, variables)
        lrs: list[float] = []

        def step(x, y, lr):
            xn = np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1), dtype=dtype)  # NHWC
            shapes = graph.shapes_at(xn.shape[1], xn.shape[2])
            hw = {layer_name(n.name): shapes[n.inputs[0]][1] * shapes[n.inputs[0]][2] for n in bns}
            old = {name: model.get_layer(name).moving_variance.numpy() for name in hw}
            if spec.kind == "sgd" and spec.momentum and lrs:  # keras' velocity carries lr
                for m in opt.momentums:
                    m.assign(m * (lr / lrs[-1]))
            if spec.kind == "adamw":  # keras adds eps to sqrt of the uncorrected v
                opt.epsilon = np.float64(spec.eps * math.sqrt(1.0 - spec.betas[1] ** (len(lrs) + 1)))
            opt.learning_rate = lr
            loss, grads = loss_and_grads(xn, np.asarray(y))
            if spec.kind == "sgd" and spec.weight_decay:  # the IR's coupled L2
                grads = [g + spec.weight_decay * v.value for g, v in zip(grads, variables, strict=True)]
            opt.apply_gradients(zip(grads, variables, strict=True))
            self.correct_bn_variance(model, old, xn.shape[0], hw)
            lrs.append(lr)
            return float(loss)
        return step

    def sync_batchnorm(self, model):
        """The same lightnets keras model with every BatchNormalization ``synchronized=True`` (batch statistics
        over all replicas of a ``tf.distribute`` strategy; tensorflow only), weights copied. Call it inside
        ``strategy.scope()`` so that the new variables are mirrored."""
        import keras

        config = model.get_config()
        for layer in config["layers"]:
            if layer["class_name"] == "BatchNormalization":
                layer["config"]["synchronized"] = True
        with keras.saving.custom_object_scope(custom_objects()):
            synced = type(model).from_config(config)
        synced.set_weights(model.get_weights())
        setattr(synced, _GRAPH, graph_of(model))
        return synced

    def _loss_and_grads_fn(self, model, variables):
        """``(x, labels) -> (loss, gradients w.r.t. variables)`` of a train-mode forward: one tf.function on
        tensorflow (traced once per input shape; the optimizer runs eagerly), torch autograd on torch."""
        import keras

        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            @tf.function(reduce_retracing=True)
            def step(x, labels):
                with tf.GradientTape() as tape:
                    loss = self.loss(model(x, training=True), labels)
                return loss, tape.gradient(loss, [v.value for v in variables])

            def run(x, labels):
                loss, grads = step(tf.constant(x), tf.constant(labels))
                return loss.numpy(), grads
            return run
        if backend == "torch":
            import torch

            def run(x, labels):
                loss = self.loss(model(torch.as_tensor(x), training=True), torch.as_tensor(labels))
                return loss.detach().cpu().numpy(), list(torch.autograd.grad(loss, [v.value for v in variables]))
            return run
        raise LightnetsError(f"train_steps is implemented for keras on tensorflow and torch, not {backend!r}")


BACKEND = KerasBackend()
