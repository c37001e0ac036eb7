"""PaddlePaddle backend: lowers each op of the vocabulary to a ``paddle.nn.Layer``.

The model is one ``paddle.nn.Layer`` whose sublayers nest by the dotted node names, so state_dict
keys read ``blocks.3.dw.conv.weight`` or ``blocks.3.dw.bn._mean``. Paddle is NCHW like the IR.
The backend object is ``BACKEND`` (``lightnets.backends.base.Backend``).
"""

from __future__ import annotations

import copy
import sys

from lightnets.errors import BackendConflictError

# Importing tensorflow before paddle in one process segfaults (paddle 3.3.1, tf 2.21; paddle first works).
if "tensorflow" in sys.modules and "paddle" not in sys.modules:
    raise BackendConflictError(
        "tensorflow is already imported in this process, and importing paddle after tensorflow "
        "segfaults. Import paddle (or build the paddle model) before tensorflow / keras on the "
        "tensorflow backend, or run the paddle model in a separate process.")

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
from paddle import nn  # noqa: E402

from lightnets import ops  # noqa: E402
from lightnets.errors import LightnetsError  # noqa: E402
from lightnets.graph import INPUT, Graph, Node  # noqa: E402
from lightnets.reference import check_input  # noqa: E402

from .base import Backend, unreadable  # noqa: E402


class _Fn(nn.Layer):
    """A parameter-free op as a layer, so every node is a sublayer at its own name."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _exact_in_float64(native, written_out):
    """Paddle's fused kernel in float32 (fast); in float64 the pinned formula of ops.py, written out,
    since paddle's kernels hold their constants in float32 (hardsigmoid slope 0.1666667)."""
    return lambda x: written_out(x) if x.dtype == paddle.float64 else native(x)


_ACTIVATIONS = {
    "relu": F.relu,
    "relu6": F.relu6,
    "hardsigmoid": _exact_in_float64(lambda x: F.hardsigmoid(x, slope=1 / 6, offset=0.5),
                                     lambda x: F.relu6(x + 3.0) / 6.0),
    "hardswish": _exact_in_float64(F.hardswish, lambda x: x * F.relu6(x + 3.0) / 6.0),
    "sigmoid": F.sigmoid,
    "swish": F.silu,
}


def _paddle_pads(a):
    """IR padding -> paddle padding: "SAME" (paddle's TF "same", from the input size) for strided "same",
    else [top, bottom, left, right] as the IR when asymmetric, or [h, w] (the symmetric form reaches
    paddle's plain conv kernels)."""
    pads = ops.static_pads(a)
    if pads is None:
        return "SAME"
    t, b, l, r = pads
    return [t, l] if (t, l) == (b, r) else list(pads)


def _conv2d(a, in_shapes):
    return nn.Conv2D(in_shapes[0][0], a["out_channels"], a["kernel"], stride=a["stride"],
                     padding=_paddle_pads(a), dilation=a["dilation"], groups=a["groups"],
                     bias_attr=None if a["bias"] else False)


class _BatchNorm2D(nn.BatchNorm2D):
    """BatchNorm2D computing the IR's pinned formulas.

    paddle's batch_norm kernel takes epsilon as a float32 attribute (1e-3 becomes 1.00000005e-3,
    moving float64 outputs by ~5e-11) and updates the running variance with the biased batch
    variance; the IR pins the exact eps and the unbiased update (torch convention). So training and
    float64 eval are written out; float32 eval uses the fused kernel (eps rounding is below float32
    resolution there), which is ~50x faster than the written-out form.
    """

    def forward(self, x):
        shape = [1, -1, 1, 1]
        if self.training:
            mean = x.mean(axis=[0, 2, 3])
            var = ((x - mean.reshape(shape)) ** 2).mean(axis=[0, 2, 3])
            n = x.size // x.shape[1]
            with paddle.no_grad():  # paddle's momentum weighs the old statistic
                keep = self._momentum
                paddle.assign(keep * self._mean + (1 - keep) * mean, self._mean)
                paddle.assign(keep * self._variance + (1 - keep) * var * (n / (n - 1)), self._variance)
        elif x.dtype == paddle.float32:
            return F.batch_norm(x, self._mean, self._variance, self.weight, self.bias, training=False,
                                epsilon=self._epsilon)
        else:
            mean, var = self._mean, self._variance
        scale = self.weight / paddle.sqrt(var + self._epsilon)
        return (x - mean.reshape(shape)) * scale.reshape(shape) + self.bias.reshape(shape)


def _batch_norm(a, in_shapes):
    # paddle's momentum weighs the old statistic (like keras): the IR's torch momentum m is 1 - m here.
    return _BatchNorm2D(in_shapes[0][0], momentum=1.0 - a["momentum"], epsilon=a["eps"])


def _max_pool2d(a, in_shapes):
    # paddle's pooling ignores padded cells for max, i.e. -inf padding semantics.
    return nn.MaxPool2D(a["kernel"], stride=a["stride"], padding=_paddle_pads(a))


def _window_sum(x, a, pads):
    """Sum over each pooling window, as a depthwise conv with a ones kernel (exact in float64,
    forward and backward, where paddle's avg_pool2d backward is not: measured 3e-8)."""
    c = x.shape[1]
    ones = paddle.ones([c, 1, *a["kernel"]], dtype=x.dtype)
    return F.conv2d(x, ones, stride=a["stride"], padding=list(pads), groups=c)


def _avg_pool2d_float64(a):
    area = a["kernel"][0] * a["kernel"][1]

    def pool(x):
        pads = ops.effective_pads(a, x.shape[2:])
        if a["count_include_pad"]:
            return _window_sum(x, a, pads) / area
        return _window_sum(x, a, pads) / _window_sum(paddle.ones([1, 1, *x.shape[2:]], dtype=x.dtype), a, pads)
    return pool


def _avg_pool2d(a, in_shapes):
    if not a["count_include_pad"]:
        native = nn.AvgPool2D(a["kernel"], stride=a["stride"], padding=_paddle_pads(a), exclusive=True)
    else:
        # paddle's exclusive=False divides by a wrong count at asymmetric pads (measured: /6 for /9 at a
        # corner), so pad with zeros explicitly and pool unpadded. F.pad takes [left, right, top, bottom].
        def native(x):
            t, b, l, r = ops.effective_pads(a, x.shape[2:])
            return F.avg_pool2d(F.pad(x, [l, r, t, b]) if any((t, b, l, r)) else x, a["kernel"],
                                stride=a["stride"], exclusive=False)
    return _Fn(_exact_in_float64(native, _avg_pool2d_float64(a)))


def _linear(a, in_shapes):
    return nn.Linear(in_shapes[0][0], a["out_features"], bias_attr=None if a["bias"] else False)


CONVERTERS = {
    "conv2d": _conv2d,
    "batch_norm": _batch_norm,
    "activation": lambda a, s: _Fn(_ACTIVATIONS[a["kind"]]),
    "add": lambda a, s: _Fn(lambda x, y: x + y),
    "mul": lambda a, s: _Fn(lambda x, y: x * y),
    "concat": lambda a, s: _Fn(lambda *xs: paddle.concat(list(xs), axis=1)),
    "slice_channels": lambda a, s: _Fn(lambda x: x[:, a["start"]: a["stop"]]),
    "channel_shuffle": lambda a, s: _Fn(lambda x: F.channel_shuffle(x, a["groups"])),
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "global_avg_pool": lambda a, s: _Fn(lambda x: x.mean(axis=[2, 3], keepdim=True)),
    "flatten": lambda a, s: _Fn(lambda x: x.flatten(1)),
    "linear": _linear,
    "dropout": lambda a, s: nn.Dropout(a["rate"]),
}

# The one canonical <-> native mapping: op -> canonical suffix -> (paddle attribute, transpose).
NATIVE = {
    "conv2d": {"weight": ("weight", False), "bias": ("bias", False)},  # OIHW in both
    "linear": {"weight": ("weight", True), "bias": ("bias", False)},  # (out, in) <-> paddle (in, out)
    "batch_norm": {"gamma": ("weight", False), "beta": ("bias", False),
                   "mean": ("_mean", False), "var": ("_variance", False)},
}


class GraphLayer(nn.Layer):
    """A lightnets graph as a paddle layer: forward runs the nodes in order."""

    def __init__(self, graph: Graph, dtype: str):
        super().__init__()
        self.graph, self.lightnets_dtype = graph, dtype
        self._nodes: list[tuple[Node, nn.Layer]] = []
        for node in graph.nodes:
            layer = CONVERTERS[node.op](node.attrs, graph.in_shapes(node))
            *path, leaf = node.name.split(".")
            parent = self
            for part in path:
                if part not in parent._sub_layers:
                    parent.add_sublayer(part, nn.Layer())
                parent = parent._sub_layers[part]
            parent.add_sublayer(leaf, layer)
            self._nodes.append((node, layer))

    def forward(self, x, return_all: bool = False):
        values = {INPUT: x}
        released = self.graph.released
        for node, layer in self._nodes:
            values[node.name] = layer(*[values[i] for i in node.inputs])
            if not return_all:  # free what no later node reads, so memory is reused
                for i in released[node.name]:
                    del values[i]
        if return_all:
            del values[INPUT]
            return values
        return values[self.graph.output]


def build(graph: Graph, dtype: str = "float32") -> GraphLayer:
    """The paddle model of ``graph`` with parameters in ``dtype``, in eval mode."""
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        model = GraphLayer(graph, dtype)
    finally:
        paddle.set_default_dtype(previous)
    model.eval()
    return model


def owns(model) -> bool:
    return isinstance(model, GraphLayer)


def graph_of(model: GraphLayer) -> Graph:
    return model.graph


def _native(model: GraphLayer):
    """Yield (canonical name, paddle parameter, transpose) for every canonical parameter."""
    for node, layer in model._nodes:
        for suffix, (attr, transpose) in NATIVE.get(node.op, {}).items():
            param = getattr(layer, attr)
            if param is not None:
                yield f"{node.name}.{suffix}", param, transpose


def set_weights(model: GraphLayer, weights) -> None:
    """Assign canonical weights (already validated against the graph)."""
    for name, param, transpose in _native(model):
        w = np.asarray(weights[name], dtype=model.lightnets_dtype)
        param.set_value(np.ascontiguousarray(w.T if transpose else w))


def get_weights(model: GraphLayer) -> dict[str, np.ndarray]:
    """Canonical weights as numpy arrays in the model's dtype."""
    out = {}
    for name, param, transpose in _native(model):
        w = param.numpy()
        out[name] = np.ascontiguousarray(w.T if transpose else w)
    return out


def run(model: GraphLayer, x, return_all: bool = False):
    """Eval forward of the NCHW numpy batch ``x``; ``return_all`` gives every node's output."""
    x = np.asarray(x)
    check_input(model.graph, x)
    training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            y = model(paddle.to_tensor(x.astype(model.lightnets_dtype)), return_all=return_all)
    finally:
        if training:
            model.train()
    if return_all:
        return {k: v.numpy() for k, v in y.items()}
    return y.numpy()


def train_forward(model: GraphLayer, x):
    """One training-mode forward (BN on batch statistics, dropout off); returns output and new BN stats."""
    x = np.asarray(x)
    check_input(model.graph, x)
    model.eval()
    bns = [layer for _, layer in model._nodes if isinstance(layer, nn.BatchNorm2D)]
    try:
        for layer in bns:
            layer.train()
        with paddle.no_grad():
            out = model(paddle.to_tensor(x.astype(model.lightnets_dtype))).numpy()
    finally:
        model.eval()
    stats = {k: v for k, v in get_weights(model).items() if k.endswith((".mean", ".var"))}
    return out, stats


def gradients(model: GraphLayer, x, probe) -> dict[str, np.ndarray]:
    """Eval-mode gradients of ``sum(output * probe)`` w.r.t. every trainable parameter and the input."""
    x = np.asarray(x)
    check_input(model.graph, x)
    model.eval()
    xt = paddle.to_tensor(x.astype(model.lightnets_dtype), stop_gradient=False)
    model.clear_gradients()
    (model(xt) * paddle.to_tensor(np.asarray(probe, model.lightnets_dtype))).sum().backward()
    trainable = {p.name for p in model.graph.params if p.trainable}
    grads = {name: (param.grad.numpy().T if transpose else param.grad.numpy())
             for name, param, transpose in _native(model) if name in trainable}
    model.clear_gradients()
    return {**{k: np.ascontiguousarray(v) for k, v in grads.items()}, "input": xt.grad.numpy()}


# --- the backend object ---------------------------------------------------------------------------
class PaddleBackend(Backend):
    """PaddlePaddle: ``paddle.nn.Layer`` models, NCHW, state dicts of tensors."""

    name = "paddle"
    FORMATS = {"paddle": ".pdparams"}
    NATIVE_NAMES = {op: {suffix: attr for suffix, (attr, _) in table.items()} for op, table in NATIVE.items()}
    NATIVE_NAMES["depthwise_conv2d"] = NATIVE_NAMES["conv2d"]

    build = staticmethod(build)
    owns = staticmethod(owns)
    graph_of = staticmethod(graph_of)
    set_weights = staticmethod(set_weights)
    get_weights = staticmethod(get_weights)
    run = staticmethod(run)
    train_forward = staticmethod(train_forward)
    gradients = staticmethod(gradients)

    # native I/O
    def _read(self, path, fmt):
        try:  # unpickles: only for a file the user named as a native paddle checkpoint
            return paddle.load(str(path), return_numpy=True)
        except Exception as e:  # noqa: BLE001
            raise unreadable(path, "paddle .pdparams", e) from None

    def _write(self, model, path, fmt):
        paddle.save(model.state_dict(), path)

    def state_dict(self, model):
        if not isinstance(model, nn.Layer):
            raise LightnetsError(f"{type(model).__name__} is not a paddle.nn.Layer")
        return {k: np.asarray(v.numpy()) for k, v in model.state_dict().items()}

    def _shapes(self, model):
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def _assign(self, model, sd):
        dtypes = {k: v.dtype for k, v in model.state_dict().items()}
        model.set_state_dict({k: paddle.to_tensor(np.ascontiguousarray(self.to_numpy(v))).astype(dtypes[k])
                              for k, v in sd.items()})

    def forward(self, model, x):
        param = next(iter(model.parameters()), None)
        dtype = param.dtype if param is not None else paddle.float32
        was_training = model.training
        model.eval()
        try:
            with paddle.no_grad():
                return model(paddle.to_tensor(np.asarray(x)).astype(dtype)).numpy()
        finally:
            if was_training:
                model.train()

    def _cast_native(self, model, dtype):
        out = copy.deepcopy(model)
        out.to(dtype=dtype)
        return out

    def bn_eps(self, model):
        from paddle.nn.layer.norm import _BatchNormBase

        return {float(m._epsilon) for m in model.sublayers(include_self=True) if isinstance(m, _BatchNormBase)}

    # bench
    def set_threads(self, n):
        paddle.set_device("cpu")  # threads follow OMP_NUM_THREADS, set before the process starts

    def timed_call(self, model):
        model.eval()

        def call(x):
            with paddle.no_grad():
                return model(x).numpy()
        return (lambda x: paddle.to_tensor(np.ascontiguousarray(x))), call


BACKEND = PaddleBackend()
