"""The PyTorch lowering: the modules torch lacks (explicit pads, hard sigmoid, channel shuffle, nearest
resize), one converter per op (``CONVERTERS``) and ``GraphModule``, which runs the nodes in order."""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lightnets import ops
from lightnets.errors import SpecError
from lightnets.graph import INPUT, Graph
from lightnets.numerics import check_dtype

from ..base import Lowering

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --- modules the standard library lacks --------------------------------------------------------
def _torch_pads(pads) -> tuple[int, int, int, int]:
    """IR pads (top, bottom, left, right) -> F.pad order (left, right, top, bottom)."""
    t, b, l, r = pads
    return (l, r, t, b)


class _Padding:
    """Zero/-inf padding before a conv or pool: fixed 4-sided pads, or TF "same" pads computed in forward
    from each input's size (``ops.effective_pads``), so a strided "same" node is right at any input size."""

    def _init_padding(self, attrs) -> None:
        fixed = ops.static_pads(attrs)
        self.pads = None if fixed is None else _torch_pads(fixed)
        self.window = {k: attrs[k] for k in ("kernel", "stride", "dilation", "padding") if k in attrs}

    def _pads_for(self, x) -> tuple[int, int, int, int]:
        return self.pads if self.pads is not None else _torch_pads(ops.effective_pads(self.window, x.shape[2:]))

    def _padding_repr(self) -> str:
        return f"pads(l,r,t,b)={self.pads}" if self.pads is not None else "padding=same (from the input size)"


class PadConv2d(nn.Conv2d, _Padding):
    """Conv2d after explicit, possibly asymmetric zero padding (e.g. TF "same" with stride 2)."""

    def __init__(self, *args, attrs, **kwargs):
        super().__init__(*args, padding=0, **kwargs)
        self._init_padding(attrs)

    def forward(self, x):
        return super().forward(F.pad(x, self._pads_for(x)))

    def extra_repr(self):
        return f"{super().extra_repr()}, {self._padding_repr()}"


class PadPool2d(nn.Module, _Padding):
    """Max or average pooling after explicit asymmetric padding.

    Max pads with -inf. Average either counts pads (zero padding, fixed divisor) or divides each
    window's sum by its number of real pixels.
    """

    def __init__(self, kind: str, attrs):
        super().__init__()
        self.kind, self.kernel, self.stride = kind, tuple(attrs["kernel"]), tuple(attrs["stride"])
        self.count_include_pad = attrs.get("count_include_pad", True)
        self._init_padding(attrs)

    def forward(self, x):
        pads = self._pads_for(x)
        if self.kind == "max":
            return F.max_pool2d(F.pad(x, pads, value=-float("inf")), self.kernel, self.stride)
        y = F.avg_pool2d(F.pad(x, pads), self.kernel, self.stride, divisor_override=1)
        if self.count_include_pad:
            return y / (self.kernel[0] * self.kernel[1])
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        return y / F.avg_pool2d(F.pad(ones, pads), self.kernel, self.stride, divisor_override=1)

    def extra_repr(self):
        return (f"kind={self.kind}, kernel={self.kernel}, stride={self.stride}, {self._padding_repr()}"
                + ("" if self.kind == "max" else f", count_include_pad={self.count_include_pad}"))


class HardSigmoid(nn.Module):
    """relu6(x + 3) / 6, written out so that autograd is exact in float64 too (it gates SE blocks,
    on (N, C, 1, 1) tensors, so the extra kernels cost nothing measurable)."""

    def forward(self, x):
        return F.relu6(x + 3.0) / 6.0


class ChannelShuffle(nn.Module):
    """Paper shuffle: view (N, g, C/g, H, W), swap the group axes, flatten back."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self):
        return f"groups={self.groups}"


class DropPath(nn.Dropout):
    """Stochastic depth (torchvision ``StochasticDepth(p, "row")``, timm ``DropPath``): in train mode each sample is
    zeroed with probability ``p`` (torch's RNG), the survivors scaled by ``1 / (1 - p)``; in eval the identity. A
    ``Dropout``, so ``Backend.training`` (parity's train mode) switches it off with the dropouts."""

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask.div_(keep)


def _nearest_index(size_in: int, size_out: int, device) -> torch.Tensor:
    """floor(i * in / out) in integers (lightnets.ops.nearest_index): F.interpolate's float32 scale lands one
    index low at some size pairs (6 -> 74)."""
    return torch.div(torch.arange(size_out, device=device) * size_in, size_out, rounding_mode="floor")


def resize_nearest(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` at ``like``'s height and width, nearest (rows and columns gathered by index)."""
    (h, w), (ho, wo) = x.shape[2:], like.shape[2:]
    if (h, w) == (ho, wo):
        return x
    return x.index_select(2, _nearest_index(h, ho, x.device)).index_select(3, _nearest_index(w, wo, x.device))


# --- converters: Lowering -> module or plain callable of the node's inputs -------------------------
def _symmetric(a, pool: bool = False) -> tuple[int, int] | None:
    """(pad_h, pad_w) if torch's symmetric padding expresses the node's pads at every input size
    (pools: pad <= kernel / 2)."""
    pads = ops.static_pads(a)
    if pads is None:
        return None
    t, b, l, r = pads
    kernel = a["kernel"]
    if t != b or l != r or (pool and (2 * t > kernel[0] or 2 * l > kernel[1])):
        return None
    return (t, l)


def _conv2d(c: Lowering):
    a = c.attrs
    args = dict(in_channels=c.in_shapes[0][0], out_channels=a["out_channels"], kernel_size=a["kernel"],
                stride=a["stride"], dilation=a["dilation"], groups=a["groups"], bias=a["bias"])
    sym = _symmetric(a)
    return nn.Conv2d(padding=sym, **args) if sym else PadConv2d(attrs=a, **args)


def _batch_norm(c: Lowering):
    return nn.BatchNorm2d(c.in_shapes[0][0], eps=c.attrs["eps"], momentum=c.attrs["momentum"])


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,  # max(x, 0)
    "relu6": nn.ReLU6,  # min(max(x, 0), 6)
    "hardsigmoid": HardSigmoid,  # nn.Hardsigmoid's backward uses a float32 1/6 even in float64
    "hardswish": nn.Hardswish,  # x * relu6(x + 3) / 6
    "sigmoid": nn.Sigmoid,
    "swish": nn.SiLU,  # x * sigmoid(x)
}


# in-place forms, used where the activation is the last reader of its input (never the graph input)
_INPLACE: dict[str, Callable] = {
    "relu": F.relu_,
    "relu6": lambda x: F.hardtanh_(x, 0.0, 6.0),
    "hardswish": lambda x: F.hardswish(x, inplace=True),
}


# ops whose torch lowering may return a view of (or the very tensor of) their input; channel_shuffle's
# reshape is a view when groups == 1 or groups == channels
_ALIASING = ("slice_channels", "flatten", "dropout", "drop_path", "channel_shuffle", "resize_nearest")


def _pool(kind: str):
    def convert(c: Lowering):
        a = c.attrs
        sym = _symmetric(a, pool=True)
        include = a.get("count_include_pad", True)
        if sym is None:
            return PadPool2d(kind, a)
        if kind == "max":
            return nn.MaxPool2d(a["kernel"], a["stride"], padding=sym)
        return nn.AvgPool2d(a["kernel"], a["stride"], padding=sym, count_include_pad=include)
    return convert


def _slice(c: Lowering):
    start, stop = c.attrs["start"], c.attrs["stop"]
    return lambda x: x[:, start:stop]


def _linear(c: Lowering):
    return nn.Linear(c.in_shapes[0][0], c.attrs["out_features"], bias=c.attrs["bias"])


CONVERTERS: dict[str, Callable[[Lowering], Callable]] = {
    "conv2d": _conv2d,
    "batch_norm": _batch_norm,
    "activation": lambda c: _ACTIVATIONS[c.attrs["kind"]](),
    "add": lambda c: operator.add,
    "mul": lambda c: operator.mul,
    "concat": lambda c: lambda *xs: torch.cat(xs, 1),
    "slice_channels": _slice,
    "channel_shuffle": lambda c: ChannelShuffle(c.attrs["groups"]),
    "resize_nearest": lambda c: resize_nearest,
    "max_pool2d": _pool("max"),
    "avg_pool2d": _pool("avg"),
    "global_avg_pool": lambda c: nn.AdaptiveAvgPool2d(1),
    "flatten": lambda c: lambda x: torch.flatten(x, 1),
    "linear": _linear,
    "dropout": lambda c: nn.Dropout(c.attrs["rate"]),
    "drop_path": lambda c: DropPath(c.attrs["rate"]),
}


# --- the model ------------------------------------------------------------------------------------
# bumped by torch's global module-registration hook whenever any submodule is added or replaced (e.g. by
# SyncBatchNorm.convert_sync_batchnorm or a quantization pass): a GraphModule then re-reads its modules
_REGISTRATIONS = [0]


def _count_registration(module, name, submodule):
    _REGISTRATIONS[0] += 1


nn.modules.module.register_module_module_registration_hook(_count_registration)


class GraphModule(nn.Module):
    """Runs the nodes of ``graph`` in order. Submodules sit at their node's dotted name; forward runs the
    modules found there now (one that torch replaced in place, as convert_sync_batchnorm does, takes effect)."""

    def __init__(self, graph: Graph):
        super().__init__()
        self.graph = graph
        steps, fast = [], []
        op_of = {n.name: n.op for n in graph.nodes}
        viewed = {n.inputs[0] for n in graph.nodes if n.op in _ALIASING}  # a view of it may outlive its reader
        for node in graph.nodes:
            fn = CONVERTERS[node.op](Lowering(node, graph.in_shapes(node)))
            if isinstance(fn, nn.Module):
                self._attach(node.name, fn)
            # values no later node reads are dropped right after their last reader, so memory is reused
            drop = graph.released[node.name]
            steps.append((node.name, fn, node.inputs, drop))
            # an activation that is the last reader of a node's output may overwrite it (as zoo models do),
            # unless that output may alias a live tensor (a view: slice, flatten, eval-mode dropout / drop_path)
            if (node.op == "activation" and node.inputs[0] in drop and node.inputs[0] != INPUT
                    and node.attrs["kind"] in _INPLACE and op_of[node.inputs[0]] not in _ALIASING
                    and node.inputs[0] not in viewed):
                fast.append((node.name, _INPLACE[node.attrs["kind"]], node.inputs, drop))
            else:
                fast.append(steps[-1])
        self._steps, self._fast_steps = tuple(steps), tuple(fast)
        self._bound_at = _REGISTRATIONS[0]

    def _current_steps(self):
        """The steps, re-bound to the submodules at their names if any module was registered since."""
        if self._bound_at != _REGISTRATIONS[0]:
            def current(name, fn):
                return self.get_submodule(name) if isinstance(fn, nn.Module) else fn
            self._steps, self._fast_steps = (tuple((n, current(n, fn), i, d) for n, fn, i, d in steps)
                                             for steps in (self._steps, self._fast_steps))
            self._bound_at = _REGISTRATIONS[0]
        return self._steps, self._fast_steps

    def _attach(self, dotted: str, module: nn.Module) -> None:
        *parents, leaf = dotted.split(".")
        owner = self
        for part in parents:
            child = owner._modules.get(part)
            if child is None:
                child = nn.Module()
                self._add(owner, part, child, dotted)
            owner = child
        self._add(owner, leaf, module, dotted)

    @staticmethod
    def _add(owner: nn.Module, name: str, module: nn.Module, dotted: str) -> None:
        try:
            owner.add_module(name, module)
        except KeyError as e:
            raise SpecError(f"node {dotted!r}: the name part {name!r} collides with an attribute of "
                            f"torch.nn.Module ({e}); rename the node") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {INPUT: x}
        steps, fast = self._current_steps()
        # in-place activations only without autograd: backward may need the overwritten values
        for name, fn, inputs, drop in (steps if torch.is_grad_enabled() else fast):
            values[name] = fn(*[values[i] for i in inputs])
            for d in drop:
                del values[d]
        if self.graph.outputs is not None:  # a multi-output graph (a backbone): the list of its outputs
            return [values[o] for o in self.graph.outputs]
        return values[self.graph.output]

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every node's output, by node name."""
        values = {INPUT: x}
        for name, fn, inputs, _ in self._current_steps()[0]:
            values[name] = fn(*[values[i] for i in inputs])
        del values[INPUT]
        return values


# --- the backend contract -----------------------------------------------------------------------
def build(graph: Graph, dtype: str = "float32") -> GraphModule:
    """The torch model of ``graph`` in eval mode, parameters in ``dtype``."""
    check_dtype(dtype, DTYPES)
    model = GraphModule(graph).to(DTYPES[dtype])
    model.dtype_name = dtype
    return model.eval()


def owns(model) -> bool:
    return isinstance(model, GraphModule)


def graph_of(model: GraphModule) -> Graph:
    return model.graph
