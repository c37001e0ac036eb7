"""The keras lowering: node -> layer names, padding policy, one converter per op, ``build`` (a functional
``keras.Model``, NHWC) and the model <-> graph helpers."""

from __future__ import annotations

import math

import numpy as np

from lightnets import ops as ir_ops  # the IR's op rules (keras.ops is `ops` below)
from lightnets.errors import InputShapeError, LightnetsError, SpecError
from lightnets.graph import INPUT, Graph, Node
from lightnets.layouts import to_nhwc
from lightnets.reference import check_input

from ..base import Lowering
from .layers import _custom_layers

_GRAPH = "_lightnets_graph"  # attribute of the model holding the Graph
_ALL = "_lightnets_all"  # cached keras.Model over every node's output (return_all)
_FROZEN = "_lightnets_frozen"  # optimize(compile=True): frozen.FrozenSessions of the model


def layer_name(node_name: str, part: str | None = None) -> str:
    """THE node -> keras layer name mapping: dots become ``__`` (torch-backed keras refuses dots).

    ``part`` names an auxiliary layer of the node (``pad``, ``conv``) as if it were a child node.
    """
    return "__".join(node_name.split(".") + ([part] if part else []))


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


def _drop_path(c: Lowering):
    """Stochastic depth as keras.applications writes it: a ``Dropout`` whose mask has one value per sample
    (``noise_shape`` (None, 1, 1, 1)), so ``training()`` switches it off with the dropouts."""
    noise = (None,) + (1,) * len(c.in_shapes[0])
    return c.native.layers.Dropout(c.attrs["rate"], noise_shape=noise, name=c.name, dtype=c.dtype)(c.inputs[0])


def _one_layer(c: Lowering):
    keras, node, xs, name, dtype = c.native, c.node, c.inputs, c.name, c.dtype
    layer = _LAYER[node.op](keras, node.attrs, name=name, dtype=dtype)
    return layer(xs if len(xs) > 1 else xs[0])


CONVERTERS = {"conv2d": _conv2d, "batch_norm": _batch_norm, "activation": _activation,
              "max_pool2d": _max_pool2d, "avg_pool2d": _avg_pool2d, "drop_path": _drop_path,
              **dict.fromkeys(_LAYER, _one_layer)}


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
    return to_nhwc(x, _dtype(model))


def _dtype(model) -> np.dtype:
    return np.dtype(model.inputs[0].dtype)
