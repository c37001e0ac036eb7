"""The float64 backward pass of the op vocabulary (numpy): what the reference trains with
(``lightnets.optim.reference_train_steps``) and the oracle of every backend's ``gradients``.

:func:`forward` keeps every value (and each batch norm's normalised input and 1/std), :func:`backward`
walks the graph in reverse from the output's gradient; :func:`gradients` is the backends' contract
(``sum(output * probe)``, eval mode or through the batch statistics). :func:`null_gradient_params` names
the parameters whose train-mode gradient is identically zero (float noise only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ops
from .graph import INPUT, Graph
from .reference import F, batch_norm, channel_shuffle, check_input, pad_hw, run_node, sigmoid


def trainable_names(graph: Graph) -> list[str]:
    """The parameters an optimizer updates, in graph order."""
    return [p.name for p in graph.params if p.trainable]


@dataclass
class Cache:
    """A forward pass kept for :func:`backward`: every value, the weights, per-BN (x_hat, 1/std), the shapes."""

    values: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    bn: dict[str, tuple[np.ndarray, np.ndarray]]
    shapes: dict[str, tuple]
    stats: dict[str, np.ndarray]
    train: bool


def forward(graph: Graph, weights, x, train: bool = True) -> Cache:
    """Forward in float64 keeping what backward needs. ``train``: BN on batch statistics (running
    statistics updated the IR's way into ``stats``), else on the running statistics; dropout and drop_path
    are off."""
    check_input(graph, np.asarray(x))
    x = np.asarray(x, F)
    shapes = graph.shapes_at(*x.shape[2:])
    w = {k: np.asarray(v, F) for k, v in weights.items()}
    bn, stats = {}, {}

    def step(node, inputs):
        if node.op != "batch_norm":
            return run_node(node, inputs, w, shapes[node.name])
        h, a = inputs[0], node.attrs
        p = lambda s: w[f"{node.name}.{s}"]  # noqa: E731
        if train:
            mean, var = h.mean(axis=(0, 2, 3)), h.var(axis=(0, 2, 3))
            n = h.size // h.shape[1]
            m = a["momentum"]
            stats[f"{node.name}.mean"] = (1 - m) * p("mean") + m * mean
            stats[f"{node.name}.var"] = (1 - m) * p("var") + m * var * n / (n - 1)
        else:
            mean, var = p("mean"), p("var")
        inv = 1.0 / np.sqrt(var + a["eps"])
        bn[node.name] = ((h - mean[None, :, None, None]) * inv[None, :, None, None], inv)
        return batch_norm(h, p("gamma"), p("beta"), mean, var, a["eps"])

    values = graph.walk(x, step, keep_all=True)
    values[INPUT] = x
    return Cache(values, w, bn, shapes, stats, train)


def backward(graph: Graph, cache: Cache, dout: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of ``sum(output * dout)`` w.r.t. every parameter (canonical names, trainable or not: BN
    mean/var get none) and ``"input"``, by reverse-mode over the graph; BN as in the cached forward."""
    grads: dict[str, np.ndarray] = {graph.output: np.asarray(dout, F)}
    out: dict[str, np.ndarray] = {}
    for node in reversed(graph.nodes):
        dy = grads.pop(node.name, None)
        if dy is None:
            continue
        xs = [cache.values[i] for i in node.inputs]
        dxs, dparams = _node_backward(node, xs, dy, cache)
        for suffix, g in dparams.items():
            out[f"{node.name}.{suffix}"] = g
        for name, dx in zip(node.inputs, dxs, strict=True):
            if dx is not None:
                grads[name] = grads[name] + dx if name in grads else dx
    out["input"] = grads.get(INPUT, np.zeros_like(cache.values[INPUT]))
    return out


def _window_slice(a, i: int, j: int, ho: int, wo: int):
    """The index of kernel offset (i, j) in a padded map: the rows/columns that output (ho, wo) reads."""
    sh, sw = a["stride"]
    dh, dw = a.get("dilation", (1, 1))
    return (slice(None), slice(None), slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
            slice(j * dw, j * dw + sw * (wo - 1) + 1, sw))


def _unpad(xp: np.ndarray, pads, hw) -> np.ndarray:
    t, _, l, _ = pads
    return xp[:, :, t: t + hw[0], l: l + hw[1]]


def _conv2d_backward(x, w, a, dy):
    n, c, h, wd = x.shape
    o, ho, wo = dy.shape[1:]
    g = a["groups"]
    kh, kw = a["kernel"]
    pads = ops.effective_pads(a, (h, wd))
    xp = pad_hw(x, pads)
    wg = w.reshape(g, o // g, c // g, kh, kw)
    dyg = dy.reshape(n, g, o // g, ho * wo)
    dw = np.zeros_like(wg)
    dxp = np.zeros_like(xp)
    for i in range(kh):
        for j in range(kw):
            idx = _window_slice(a, i, j, ho, wo)
            win = xp[idx].reshape(n, g, c // g, ho * wo)
            dw[:, :, :, i, j] = np.matmul(dyg, win.transpose(0, 1, 3, 2)).sum(axis=0)
            dxp[idx] += np.matmul(wg[None, :, :, :, i, j].transpose(0, 1, 3, 2), dyg).reshape(n, c, ho, wo)
    return _unpad(dxp, pads, (h, wd)), dw.reshape(w.shape)


def _max_pool_backward(x, a, dy):
    _, _, ho, wo = dy.shape
    pads = ops.effective_pads(a, x.shape[2:])
    xp = pad_hw(x, pads, -np.inf)
    kh, kw = a["kernel"]
    offsets = [(i, j) for i in range(kh) for j in range(kw)]
    first = np.argmax(np.stack([xp[_window_slice(a, i, j, ho, wo)] for i, j in offsets]), axis=0)
    dxp = np.zeros_like(xp)
    for k, (i, j) in enumerate(offsets):  # the first maximum of each window takes the gradient (torch's rule)
        dxp[_window_slice(a, i, j, ho, wo)] += np.where(first == k, dy, 0.0)
    return _unpad(dxp, pads, x.shape[2:])


def _avg_pool_backward(x, a, dy):
    _, _, ho, wo = dy.shape
    pads = ops.effective_pads(a, x.shape[2:])
    kh, kw = a["kernel"]
    if a["count_include_pad"]:
        scaled = dy / (kh * kw)
    else:
        ones = pad_hw(np.ones((1, 1, *x.shape[2:]), F), pads)
        count = sum(ones[_window_slice(a, i, j, ho, wo)] for i in range(kh) for j in range(kw))
        scaled = dy / count
    dxp = np.zeros_like(pad_hw(x, pads))
    for i in range(kh):
        for j in range(kw):
            dxp[_window_slice(a, i, j, ho, wo)] += scaled
    return _unpad(dxp, pads, x.shape[2:])


def _activation_backward(kind: str, x, dy):
    if kind == "relu":
        return np.where(x > 0, dy, 0.0)
    if kind == "relu6":
        return np.where((x > 0) & (x < 6), dy, 0.0)
    if kind == "hardsigmoid":
        return np.where((x > -3) & (x < 3), dy / 6.0, 0.0)
    if kind == "hardswish":  # torch's rule at the kinks: 0 below -3, x/3 + 1/2 on [-3, 3], 1 above
        return dy * np.where(x < -3, 0.0, np.where(x <= 3, x / 3.0 + 0.5, 1.0))
    s = sigmoid(x)
    if kind == "sigmoid":
        return dy * s * (1.0 - s)
    if kind == "swish":
        return dy * s * (1.0 + x * (1.0 - s))
    raise AssertionError(f"activation {kind!r} has no backward")  # unreachable: ops validates kinds


def _sum_to(g: np.ndarray, shape) -> np.ndarray:
    """Reduce a broadcast gradient back to ``shape``."""
    axes = tuple(i for i, (a, b) in enumerate(zip(g.shape, shape, strict=True)) if b == 1 and a != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _node_backward(node, xs, dy, cache: Cache):
    """(gradients w.r.t. the node's inputs, {param suffix: gradient}) of one node."""
    a, op, x = node.attrs, node.op, xs[0]
    p = lambda s: cache.weights.get(f"{node.name}.{s}")  # noqa: E731
    if op == "conv2d":
        dx, dw = _conv2d_backward(x, p("weight"), a, dy)
        params = {"weight": dw}
        if a["bias"]:
            params["bias"] = dy.sum(axis=(0, 2, 3))
        return [dx], params
    if op == "batch_norm":
        xhat, inv = cache.bn[node.name]
        gamma = p("gamma")
        params = {"gamma": (dy * xhat).sum(axis=(0, 2, 3)), "beta": dy.sum(axis=(0, 2, 3))}
        dxhat = dy * gamma[None, :, None, None]
        if cache.train:  # batch statistics depend on x
            dxhat = (dxhat - dxhat.mean(axis=(0, 2, 3), keepdims=True)
                     - xhat * (dxhat * xhat).mean(axis=(0, 2, 3), keepdims=True))
        return [dxhat * inv[None, :, None, None]], params
    if op == "activation":
        return [_activation_backward(a["kind"], x, dy)], {}
    if op == "add":
        return [dy, dy], {}
    if op == "mul":
        return [_sum_to(dy * xs[1], x.shape), _sum_to(dy * x, xs[1].shape)], {}
    if op == "concat":
        edges = np.cumsum([0] + [v.shape[1] for v in xs])
        return [dy[:, edges[i]: edges[i + 1]] for i in range(len(xs))], {}
    if op == "slice_channels":
        dx = np.zeros_like(x)
        dx[:, a["start"]: a["stop"]] = dy
        return [dx], {}
    if op == "channel_shuffle":  # the inverse permutation: shuffling with C/g groups
        return [channel_shuffle(dy, x.shape[1] // a["groups"])], {}
    if op == "resize_nearest":  # each input pixel gets the sum of the outputs that copied it; like: only a size
        rows, cols = ops.nearest_index(x.shape[2], dy.shape[2]), ops.nearest_index(x.shape[3], dy.shape[3])
        dx = np.zeros(x.shape[:2] + (x.shape[2], dy.shape[3]))
        np.add.at(dx, (slice(None), slice(None), rows), dy)
        dxx = np.zeros(x.shape)
        np.add.at(dxx, (slice(None), slice(None), slice(None), cols), dx)
        return [dxx, np.zeros_like(xs[1])], {}
    if op == "max_pool2d":
        return [_max_pool_backward(x, a, dy)], {}
    if op == "avg_pool2d":
        return [_avg_pool_backward(x, a, dy)], {}
    if op == "global_avg_pool":
        return [np.broadcast_to(dy / (x.shape[2] * x.shape[3]), x.shape).copy()], {}
    if op == "flatten":
        return [dy.reshape(x.shape)], {}
    if op == "linear":
        params = {"weight": dy.T @ x}
        if a["bias"]:
            params["bias"] = dy.sum(axis=0)
        return [dy @ p("weight")], params
    if op in ("dropout", "drop_path"):  # off in train mode too (the reference's and parity's convention)
        return [dy], {}
    raise AssertionError(f"op {op!r} has no backward")  # unreachable: Node validates ops


def _shift_passes(node, shapes) -> bool:
    """Whether a per-channel constant added to the node's (first or any) input reaches its output as a
    per-channel constant: ops that commute with such shifts (a conv only where no window sees a pad)."""
    op, a = node.op, node.attrs
    # max(x + c) = max(x) + c, pads are -inf; resize copies x (like: size); dropout and drop_path are off
    if op in ("add", "concat", "slice_channels", "channel_shuffle", "dropout", "drop_path", "global_avg_pool",
              "flatten", "max_pool2d", "resize_nearest"):
        return True
    if op == "conv2d":
        return not any(ops.effective_pads(a, shapes[node.inputs[0]][1:]))
    if op == "avg_pool2d":  # a mean of constants is that constant, unless zero pads are counted
        return not (a["count_include_pad"] and any(ops.effective_pads(a, shapes[node.inputs[0]][1:])))
    return False  # activation, mul, linear (a per-class shift of the logits changes the loss), batch_norm (absorbs)


def null_gradient_params(graph: Graph, input_size: tuple[int, int] | None = None) -> list[str]:
    """Parameters whose TRAIN-mode gradient is identically zero: BN betas and conv biases whose per-channel
    shift reaches only train-mode batch norms (which subtract it again) through shift-commuting ops - e.g. a
    MobileNetV2 projection BN's beta (its paths end in 1x1 conv -> BN). Float rounding gives them gradients
    of ~1e-15 whose sign is noise: SGD moves them by lr * noise, but Adam's per-coordinate normalisation turns
    noise into steps of ~lr, in every framework, so AdamW runs cannot agree on them (nor need to: the loss
    does not depend on them)."""
    shapes = graph.shapes_at(*input_size) if input_size else graph.shapes
    consumers: dict[str, list] = {}
    for n in graph.nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    hidden: dict[str, bool] = {}  # value -> a per-channel shift of it does not change the loss
    outputs = set(graph.output_names)
    for n in reversed(graph.nodes):
        users = consumers.get(n.name, [])
        hidden[n.name] = n.name not in outputs and bool(users) and all(
            u.op == "batch_norm" or (_shift_passes(u, shapes) and hidden[u.name]) for u in users)
    out = []
    for n in graph.nodes:
        if not hidden[n.name]:
            continue
        if n.op == "batch_norm":
            out.append(f"{n.name}.beta")
        elif n.op == "conv2d" and n.attrs["bias"]:
            out.append(f"{n.name}.bias")
    return out


def gradients(graph: Graph, weights, x, probe, train: bool = False) -> dict[str, np.ndarray]:
    """Gradients of ``sum(output * probe)`` w.r.t. every trainable parameter and ``"input"`` (the backends'
    ``gradients`` contract: eval mode; ``train=True`` differentiates through the batch statistics)."""
    cache = forward(graph, weights, x, train=train)
    g = backward(graph, cache, probe)
    return {k: g[k] for k in [*trainable_names(graph), "input"]}
