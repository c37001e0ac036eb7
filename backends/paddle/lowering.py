"""The PaddlePaddle lowering: parameter-free ops as layers (``_Fn``), the batch norm and average pool written
out where paddle's kernels miss the IR's formulas, one converter per op (``CONVERTERS``) and ``GraphLayer``,
which runs the nodes in order."""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn

from lightnets import ops
from lightnets.graph import Graph

from ..base import Lowering


class _Fn(nn.Layer):
    """A parameter-free op as a layer, so every node is a sublayer at its own name."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


class DropPath(nn.Dropout):
    """Stochastic depth: in train mode each sample is zeroed with probability ``p`` (paddle's RNG), the survivors
    scaled by ``1 / (1 - p)``; in eval the identity. A ``Dropout``, so ``training()`` switches it off with them."""

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = paddle.bernoulli(paddle.full([x.shape[0]] + [1] * (x.ndim - 1), keep, dtype=x.dtype))
        return x * (mask / keep)


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


def _conv2d(c: Lowering):
    a = c.attrs
    return nn.Conv2D(c.in_shapes[0][0], a["out_channels"], a["kernel"], stride=a["stride"],
                     padding=_paddle_pads(a), dilation=a["dilation"], groups=a["groups"],
                     bias_attr=None if a["bias"] else False)


class _BatchNorm2D(nn.BatchNorm2D):
    """BatchNorm2D computing the IR's pinned formulas.

    paddle's batch_norm kernel takes epsilon as a float32 attribute (1e-3 becomes 1.00000005e-3,
    moving float64 outputs by ~5e-11) and updates the running variance with the biased batch
    variance; the IR pins the exact eps and the unbiased update (torch convention). So float64 is
    written out, and the running statistics are updated here. float32 normalises with the fused kernel
    (eps rounding is below float32 resolution): ~50x faster in eval, and in training its batch variance is
    ~10x more accurate than a written-out float32 one (paddle's reduction: 1.5e-6 against 1.6e-7 on a
    stem map of 8192 values per channel; design.md §3, train-mode float32).
    """

    def forward(self, x):
        shape = [1, -1, 1, 1]
        fused = x.dtype == paddle.float32
        if self.training:
            if fused:  # momentum 0: the kernel writes the batch mean and (biased) variance into mean, var
                mean, var = paddle.zeros_like(self._mean), paddle.zeros_like(self._variance)
                y = F.batch_norm(x, mean, var, self.weight, self.bias, training=True, momentum=0.0,
                                 epsilon=self._epsilon)
            else:
                mean = x.mean(axis=[0, 2, 3])
                var = ((x - mean.reshape(shape)) ** 2).mean(axis=[0, 2, 3])
            n = x.size // x.shape[1]
            with paddle.no_grad():  # paddle's momentum weighs the old statistic
                keep = self._momentum
                paddle.assign(keep * self._mean + (1 - keep) * mean, self._mean)
                paddle.assign(keep * self._variance + (1 - keep) * var * (n / (n - 1)), self._variance)
            if fused:
                return y
        elif fused:
            return F.batch_norm(x, self._mean, self._variance, self.weight, self.bias, training=False,
                                epsilon=self._epsilon)
        else:
            mean, var = self._mean, self._variance
        scale = self.weight / paddle.sqrt(var + self._epsilon)
        return (x - mean.reshape(shape)) * scale.reshape(shape) + self.bias.reshape(shape)


def _batch_norm(c: Lowering):
    # paddle's momentum weighs the old statistic (like keras): the IR's torch momentum m is 1 - m here.
    return _BatchNorm2D(c.in_shapes[0][0], momentum=1.0 - c.attrs["momentum"], epsilon=c.attrs["eps"])


def _max_pool2d(c: Lowering):
    # paddle's pooling ignores padded cells for max, i.e. -inf padding semantics.
    return nn.MaxPool2D(c.attrs["kernel"], stride=c.attrs["stride"], padding=_paddle_pads(c.attrs))


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


def _avg_pool2d(c: Lowering):
    a = c.attrs
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


def _resize_nearest(x, like):
    """``x`` at ``like``'s height and width: rows/columns floor(i * in / out) gathered by index (F.interpolate's
    float32 scale lands one index low at some size pairs, as torch's)."""
    (h, w), (ho, wo) = x.shape[2:], like.shape[2:]
    if (h, w) == (ho, wo):
        return x
    rows = paddle.to_tensor(ops.nearest_index(h, ho), dtype="int64")
    cols = paddle.to_tensor(ops.nearest_index(w, wo), dtype="int64")
    return paddle.index_select(paddle.index_select(x, rows, axis=2), cols, axis=3)


def _linear(c: Lowering):
    return nn.Linear(c.in_shapes[0][0], c.attrs["out_features"], bias_attr=None if c.attrs["bias"] else False)


CONVERTERS = {
    "conv2d": _conv2d,
    "batch_norm": _batch_norm,
    "activation": lambda c: _Fn(_ACTIVATIONS[c.attrs["kind"]]),
    "add": lambda c: _Fn(lambda x, y: x + y),
    "mul": lambda c: _Fn(lambda x, y: x * y),
    "concat": lambda c: _Fn(lambda *xs: paddle.concat(list(xs), axis=1)),
    "slice_channels": lambda c: _Fn(lambda x: x[:, c.attrs["start"]: c.attrs["stop"]]),
    "channel_shuffle": lambda c: _Fn(lambda x: F.channel_shuffle(x, c.attrs["groups"])),
    "resize_nearest": lambda c: _Fn(_resize_nearest),
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "global_avg_pool": lambda c: _Fn(lambda x: x.mean(axis=[2, 3], keepdim=True)),
    "flatten": lambda c: _Fn(lambda x: x.flatten(1)),
    "linear": _linear,
    "dropout": lambda c: nn.Dropout(c.attrs["rate"]),
    "drop_path": lambda c: DropPath(c.attrs["rate"]),
}

class GraphLayer(nn.Layer):
    """A lightnets graph as a paddle layer: forward runs the nodes in order, each by the layer found at its
    node's dotted name then (one that paddle replaced in place, as convert_sync_batchnorm does, runs)."""

    def __init__(self, graph: Graph, dtype: str):
        super().__init__()
        self.graph, self.lightnets_dtype = graph, dtype
        self._paths = {node.name: tuple(node.name.split(".")) for node in graph.nodes}
        for node in graph.nodes:
            *path, leaf = self._paths[node.name]
            parent = self
            for part in path:
                if part not in parent._sub_layers:
                    parent.add_sublayer(part, nn.Layer())
                parent = parent._sub_layers[part]
            parent.add_sublayer(leaf, CONVERTERS[node.op](Lowering(node, graph.in_shapes(node))))

    def layer(self, name: str) -> nn.Layer:
        """The layer at node ``name`` now."""
        layer = self
        for part in self._paths[name]:
            layer = layer._sub_layers[part]
        return layer

    def forward(self, x, return_all: bool = False):
        # graph.walk frees what no later node reads (memory reuse) unless every output is kept
        return self.graph.walk(x, lambda node, xs: self.layer(node.name)(*xs), keep_all=return_all)


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

