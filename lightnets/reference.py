"""Float64 numpy executor of the IR: the golden oracle every backend is measured against."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import ops
from .errors import InputShapeError, SpecError
from .graph import Graph, Node

F = np.float64


def pad_hw(x: np.ndarray, pads, value=0.0) -> np.ndarray:
    t, b, l, r = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)


def _windows(x: np.ndarray, a: dict, ho: int, wo: int):
    """Yield (i, j, strided view of shape (N, C, ho, wo)) for every kernel offset."""
    kh, kw = a["kernel"]
    sh, sw = a["stride"]
    dh, dw = a.get("dilation", (1, 1))
    for i in range(kh):
        for j in range(kw):
            yield i, j, x[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]


def conv2d(x, w, b, a, out_shape):
    n, c = x.shape[:2]
    o, ho, wo = out_shape
    g = a["groups"]
    xp = pad_hw(x, ops.effective_pads(a, x.shape[2:]))
    wg = w.reshape(g, o // g, c // g, *w.shape[2:])
    y = np.zeros((n, g, o // g, ho * wo), F)
    for i, j, win in _windows(xp, a, ho, wo):
        y += np.matmul(wg[None, :, :, :, i, j], win.reshape(n, g, c // g, ho * wo))
    y = y.reshape(n, o, ho, wo)
    return y if b is None else y + b[None, :, None, None]


def batch_norm(x, gamma, beta, mean, var, eps):
    scale = gamma / np.sqrt(var + eps)
    return (x - mean[None, :, None, None]) * scale[None, :, None, None] + beta[None, :, None, None]


def _relu6(x):
    return np.minimum(np.maximum(x, 0.0), 6.0)


def sigmoid(x):
    """1 / (1 + exp(-x)), written per sign so that it neither overflows nor cancels."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": _relu6,
    "hardsigmoid": lambda x: _relu6(x + 3.0) / 6.0,
    "hardswish": lambda x: x * _relu6(x + 3.0) / 6.0,
    "sigmoid": sigmoid,
    "swish": lambda x: x * sigmoid(x),
}


def channel_shuffle(x, groups):
    """Paper / torch shuffle: view (g, C/g), transpose, flatten: out[j*g + i] = in[i*(C/g) + j]."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


def resize_nearest(x, size):
    """``x`` at ``size`` = (H, W), nearest: rows/columns ``floor(i * in / out)`` (:func:`ops.nearest_index`)."""
    rows, cols = ops.nearest_index(x.shape[2], size[0]), ops.nearest_index(x.shape[3], size[1])
    return x[:, :, rows][:, :, :, cols]


def max_pool2d(x, a, out_shape):
    xp = pad_hw(x, ops.effective_pads(a, x.shape[2:]), -np.inf)
    _, ho, wo = out_shape
    return np.max([win for _, _, win in _windows(xp, a, ho, wo)], axis=0)


def avg_pool2d(x, a, out_shape):
    _, ho, wo = out_shape
    pads = ops.effective_pads(a, x.shape[2:])
    total = sum(win for _, _, win in _windows(pad_hw(x, pads), a, ho, wo))
    if a["count_include_pad"]:
        return total / (a["kernel"][0] * a["kernel"][1])
    ones = np.ones((1, 1, *x.shape[2:]), F)
    count = sum(win for _, _, win in _windows(pad_hw(ones, pads), a, ho, wo))
    return total / count


def run_node(node: Node, inputs: list[np.ndarray], weights: dict[str, np.ndarray], out_shape) -> np.ndarray:
    """Evaluate one node in float64 (eval mode: BN uses running statistics, dropout and drop_path are identity)."""
    a = node.attrs
    x = inputs[0]
    p = lambda suffix: weights.get(f"{node.name}.{suffix}")  # noqa: E731
    op = node.op
    if op == "conv2d":
        return conv2d(x, p("weight"), p("bias"), a, out_shape)
    if op == "batch_norm":
        return batch_norm(x, p("gamma"), p("beta"), p("mean"), p("var"), a["eps"])
    if op == "activation":
        return ACTIVATIONS[a["kind"]](x)
    if op == "add":
        return x + inputs[1]
    if op == "mul":
        return x * inputs[1]
    if op == "concat":
        return np.concatenate(inputs, axis=1)
    if op == "slice_channels":
        return x[:, a["start"]: a["stop"]]
    if op == "channel_shuffle":
        return channel_shuffle(x, a["groups"])
    if op == "resize_nearest":
        return resize_nearest(x, inputs[1].shape[2:])
    if op == "max_pool2d":
        return max_pool2d(x, a, out_shape)
    if op == "avg_pool2d":
        return avg_pool2d(x, a, out_shape)
    if op == "global_avg_pool":
        return x.mean(axis=(2, 3), keepdims=True)
    if op == "flatten":
        return x.reshape(x.shape[0], -1)
    if op == "linear":
        y = x @ p("weight").T
        return y if p("bias") is None else y + p("bias")
    if op in ("dropout", "drop_path"):
        return x
    raise AssertionError(f"op {op!r} has no reference")  # unreachable: Node validates ops


def check_input(graph: Graph, x: np.ndarray, layout: str = "NCHW") -> None:
    """Raise InputShapeError unless ``x`` is a non-empty real float batch of images that fits the graph.

    Checks rank, channels, dtype (real floats only: ints, bools, complex and object arrays are
    refused) and, when the spatial size differs from the graph's, that every layer still produces
    at least a 1x1 map at that size.
    """
    c = graph.input_shape[0]
    try:
        x = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise InputShapeError(f"input is not an array ({e}); pass a 4-D {layout} numpy batch") from None
    if x.ndim != 4:
        raise InputShapeError(f"input must be a 4-D {layout} batch, got shape {tuple(x.shape)}; "
                              "add a batch axis with x[None] for one image")
    got = x.shape[1] if layout == "NCHW" else x.shape[3]
    if got != c:
        raise InputShapeError(f"input has {got} channels on the {layout} channel axis, the model expects {c}; "
                              f"shape {tuple(x.shape)} - is it in {layout} layout?")
    if x.dtype.kind != "f":
        raise InputShapeError(f"input has dtype {x.dtype}, the model takes real floating point images; "
                              "convert it first, e.g. x.astype('float32') (scale uint8 images to [0, 1] too)")
    if x.shape[0] == 0:
        raise InputShapeError(f"input batch {tuple(x.shape)} is empty; pass at least one image")
    hw = tuple(x.shape[2:4]) if layout == "NCHW" else tuple(x.shape[1:3])
    if hw != graph.input_shape[1:]:
        _check_size(graph, *hw)


def _check_size(graph: Graph, h: int, w: int) -> None:
    """Raise InputShapeError if the graph has no valid output for an ``h`` x ``w`` input."""
    try:
        graph.shapes_at(h, w)
    except SpecError as e:
        built = "x".join(map(str, graph.input_shape[1:]))
        if graph.fixed_size:
            raise InputShapeError(f"input size {h}x{w} differs from the {built} that graph {graph.name!r} is "
                                  f"fixed to: {e}") from None
        smallest = next((s for s in range(1, max(graph.input_shape[1:]) + 1) if _fits(graph, s)), None)
        at_least = f"at least {smallest}x{smallest}" if smallest else f"{built}"
        raise InputShapeError(f"input size {h}x{w} is too small for graph {graph.name!r} (built for {built}): "
                              f"{e}; pass inputs of {at_least} pixels, e.g. the {built} it was built for") from None


def _fits(graph: Graph, size: int) -> bool:
    try:
        graph.shapes_at(size, size)
        return True
    except SpecError:
        return False


def _storage(stored_as: str | None):
    """``a -> float64 array``, rounded through ``stored_as`` first (``None``: exact)."""
    if stored_as is None:
        return lambda a: np.asarray(a, F)
    return lambda a: np.asarray(np.asarray(a, stored_as), F)


def train_forward(graph: Graph, weights: dict[str, np.ndarray], x: np.ndarray, stored_as: str | None = None):
    """Training-mode forward (BN on batch statistics, dropout off) in float64.

    Returns the output (a list for a graph with ``outputs``) and the updated running statistics
    ``{"<bn>.mean": ..., "<bn>.var": ...}`` after one step, torch convention: ``new = (1 - m) * old + m * batch``
    with the unbiased batch variance (normalisation itself uses the biased variance).
    ``stored_as="float32"`` rounds the input, the weights and every node's output to float32 (each node still
    computed in float64): the error that storing tensors in float32 alone causes, which no float32 kernel avoids.
    """
    check_input(graph, x)
    stored = _storage(stored_as)
    x = stored(x)
    shapes = graph.shapes_at(*x.shape[2:])
    w = {k: stored(v) for k, v in weights.items()}
    stats = {}

    def step(node, inputs):
        if node.op != "batch_norm":
            return stored(run_node(node, inputs, w, shapes[node.name]))
        h, m = inputs[0], node.attrs["momentum"]
        mean, var = h.mean(axis=(0, 2, 3)), h.var(axis=(0, 2, 3))
        n = h.size // h.shape[1]
        p = lambda s: w[f"{node.name}.{s}"]  # noqa: E731
        stats[f"{node.name}.mean"] = (1 - m) * p("mean") + m * mean
        stats[f"{node.name}.var"] = (1 - m) * p("var") + m * var * n / (n - 1)
        return stored(batch_norm(h, p("gamma"), p("beta"), mean, var, node.attrs["eps"]))
    return graph.walk(x, step), stats


def run(graph: Graph, weights: dict[str, np.ndarray], x: np.ndarray, return_all: bool = False,
        stored_as: str | None = None) -> np.ndarray | list[np.ndarray] | dict[str, np.ndarray]:
    """Run ``graph`` on the NCHW batch ``x`` in float64 at any input size the graph allows (``padding="same"``
    pads follow the size): the output, or the list of outputs of a graph with ``outputs`` (a feature graph);
    ``return_all`` gives every node's output; ``stored_as`` as in :func:`train_forward`."""
    check_input(graph, x)
    stored = _storage(stored_as)
    x = stored(x)
    shapes = graph.shapes_at(*x.shape[2:])
    w = {k: stored(v) for k, v in weights.items()}
    return graph.walk(x, lambda node, inputs: stored(run_node(node, inputs, w, shapes[node.name])), keep_all=return_all)
