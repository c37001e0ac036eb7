"""PyTorch lowering of the op vocabulary: one converter per op, a module that runs the nodes in order.

Nodes with parameters become ordinary ``nn`` modules nested by their dotted name, so node
``blocks.3.dw.conv`` holds ``blocks.3.dw.conv.weight`` in the state dict. Canonical weights share
torch's layouts (conv OIHW, linear (out, in)); only BN names differ (see ``NATIVE_NAMES``).
The backend object is ``BACKEND`` (``lightnets.backends.base.Backend``).
"""

from __future__ import annotations

import copy
import operator
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightnets import ops
from lightnets import weights as W
from lightnets.errors import BackendConflictError, LightnetsError, SpecError
from lightnets.graph import INPUT, Graph
from lightnets.numerics import check_dtype

from .base import Backend, Lowering, unreadable

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# THE canonical suffix -> torch state-dict leaf table, per op (torch layouts are canonical)
NATIVE_NAMES = {"conv2d": {"weight": "weight", "bias": "bias"},
                "depthwise_conv2d": {"weight": "weight", "bias": "bias"},
                "linear": {"weight": "weight", "bias": "bias"},
                "batch_norm": {"gamma": "weight", "beta": "bias", "mean": "running_mean", "var": "running_var"}}


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
_ALIASING = ("slice_channels", "flatten", "dropout", "channel_shuffle", "resize_nearest")


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
            # unless that output may alias a live tensor (a view: slice, flatten, eval-mode dropout)
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


# --- the fast inference path (lightnets.optimize) --------------------------------------------------
class ChannelsLastShuffle(ChannelShuffle):
    """The paper shuffle as ``torch.channel_shuffle`` (the same permutation), whose CPU kernel keeps a
    channels_last tensor channels_last; the view/transpose form copies it back to NCHW (measured 5x slower
    on a (16, 116, 28, 28) channels_last tensor)."""

    def forward(self, x):
        return torch.channel_shuffle(x, self.groups)


class _Traces:
    """Frozen ``torch.jit.trace``s of a module, one per (input shape, dtype, weights version).

    ``torch.jit.freeze`` bakes the weights in as constants, so a trace is redone when any parameter is
    modified in place (``set_weights``/``load_state_dict`` bump the tensors' version counters).
    ``optimize_for_inference`` is not applied: its MKLDNN conversions measured slower at batch 1 here.
    """

    def __init__(self, module: nn.Module):
        self.module, self.traces, self.compile_s = module, {}, 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        version = sum(p._version for p in self.module.parameters())
        key = (tuple(x.shape), x.dtype, version)
        fn = self.traces.get(key)
        if fn is None:
            t0 = time.perf_counter()
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                # traced outside inference mode (freeze needs it); TracerWarnings about Python ints are expected
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                example = x.clone()
                traced = torch.jit.trace(self.module.eval(), example, check_trace=False, strict=False)
                fn = torch.jit.freeze(traced)
                fn(example)  # the profiling executor optimises on the first runs
                fn(example)
            self.traces = {k: v for k, v in self.traces.items() if k[2] == version}
            self.traces[key] = fn
            self.compile_s += time.perf_counter() - t0
        return fn(x)


class CompiledGraphModule(GraphModule):
    """``lightnets.optimize(model, compile=True)`` in torch: the BN-folded channels_last model run as a
    frozen ``torch.jit.trace`` (traced per input shape on first use, ``compile_s`` seconds in all).

    It shares its submodules with the eager model it wraps, so the state dict, ``export_weights`` and
    ``lightnets.run(return_all=True)`` (the eager walk) work as for any lightnets model; with autograd
    enabled it runs the eager model. Changing its weights re-traces on the next call.
    """

    def __init__(self, eager: GraphModule):
        nn.Module.__init__(self)
        self.graph, self.dtype_name = eager.graph, getattr(eager, "dtype_name", "float32")
        self._modules = eager._modules  # the same submodules, parameters and state dict
        self._steps, self._fast_steps, self._bound_at = eager._steps, eager._fast_steps, eager._bound_at
        object.__setattr__(self, "_traces", _Traces(eager))
        self.eval()

    @property
    def compile_s(self) -> float:
        return self._traces.compile_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        return self._traces(x.contiguous(memory_format=torch.channels_last))


class CompiledModule(nn.Module):
    """``BACKEND.optimize(m, compile=True)`` of any other torch module (a zoo model): the same frozen trace."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        object.__setattr__(self, "_traces", _Traces(module))
        self.eval()

    @property
    def compile_s(self) -> float:
        return self._traces.compile_s

    def forward(self, x):
        if torch.is_grad_enabled():
            return self.module(x)
        return self._traces(x.contiguous(memory_format=torch.channels_last))


def channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s first 4-D parameter is in channels_last memory format (an optimized model)."""
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


# --- the backend object ---------------------------------------------------------------------------
class TorchBackend(Backend):
    """PyTorch: ``torch.nn.Module`` models, NCHW, state dicts of tensors."""

    name = "torch"
    FORMATS = {"torch": ".pt", "torch-safetensors": ".safetensors"}
    NATIVE_NAMES = NATIVE_NAMES
    OPTIONAL_KEYS = ("num_batches_tracked",)

    build = staticmethod(build)
    owns = staticmethod(owns)
    graph_of = staticmethod(graph_of)

    # hooks of the contract (Backend.run / train_forward / gradients / set_weights / get_weights)
    def _variable(self, model, node, leaf):
        return getattr(model.get_submodule(node.name), leaf)  # the module there now (e.g. a SyncBatchNorm)

    def _value(self, var):
        return var.detach().cpu().numpy().copy()

    def _assign_variable(self, var, value):
        with torch.no_grad():
            var.copy_(torch.from_numpy(value).to(var.dtype))

    def _input(self, model, x):
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else DTYPES[model.dtype_name]
        return torch.as_tensor(x, dtype=dtype, device=device)

    def _output(self, model, y):
        return y if isinstance(y, np.ndarray) else y.detach().cpu().numpy()

    def _no_grad(self):
        return torch.inference_mode()

    def _call(self, model, x, return_all):
        return model.forward_all(x) if return_all else model(x)

    def _train_call(self, model, x):
        model.eval()
        try:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
            with torch.no_grad():
                return model(x)
        finally:
            model.eval()

    def _backward(self, model, x, probe, variables):
        x = x.requires_grad_(True)
        model.eval()
        model.zero_grad(set_to_none=True)
        self.probe_loss(model(x), probe).backward()
        grads = [v.grad.cpu().numpy().copy() for v in variables]
        model.zero_grad(set_to_none=True)
        return x.grad.cpu().numpy().copy(), grads

    # native I/O
    def _dropouts(self, model):
        return [m for m in model.modules() if isinstance(m, nn.Dropout)]

    def _read(self, path, fmt):
        if fmt == "torch-safetensors":
            return W.read_safetensors(path)[0]
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- any unpickling failure is a bad file
            raise unreadable(path, "torch .pt", e) from None

    def _write(self, model, path, fmt):
        if fmt == "torch":
            torch.save(model.state_dict(), path)
            return
        arrays = {k: np.array(v, order="C") for k, v in self.state_dict(model).items()}
        meta = {"format": "torch", "sha256": W.digest(arrays)}
        if owns(model):
            meta["lightnets.graph"] = model.graph.name
        W.write_safetensors(arrays, path, meta)

    def state_dict(self, model):
        if not isinstance(model, nn.Module):
            raise LightnetsError(f"{type(model).__name__} is not a torch.nn.Module")
        return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}

    def _shapes(self, model):
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def _assign(self, model, sd: Mapping):
        tensors = OrderedDict((k, v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v)))
                              for k, v in sd.items())
        # torch passes each module its state-dict version from ``state_dict._metadata``; a module whose
        # _load_from_state_dict checks it refuses a plain dict. The keys are the model's own (checked), so the
        # model's own metadata is theirs unless the dict brings one
        tensors._metadata = getattr(sd, "_metadata", None) or model.state_dict()._metadata
        model.load_state_dict(tensors, strict=False)  # keys checked already; absent ones are optional

    def forward(self, model, x):
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        with self._evaluating(model):
            return self._outputs(model, model(torch.as_tensor(np.asarray(x), dtype=dtype)))

    def _cast_native(self, model, dtype):
        return copy.deepcopy(model).to(DTYPES[dtype])

    def bn_eps(self, model):
        return {float(m.eps) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

    # bench
    def set_threads(self, n):
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # only settable before the first parallel work
            pass

    def timed_call(self, model):
        model.eval()

        fmt = torch.channels_last if channels_last(model) else torch.contiguous_format  # optimized: NHWC input

        def call(x):
            with torch.inference_mode():
                return model(x)
        return (lambda x: torch.from_numpy(np.ascontiguousarray(x)).contiguous(memory_format=fmt)), call

    # fast inference path (lightnets.optimize folds the batch norms first)
    def optimize(self, model, compile=False):
        """The fast eval form of ``model`` (a fresh lightnets model, or any torch module), changed in place:
        eval mode, channels_last memory format (weights and, through ``timed_call``/the first conv,
        activations; channel shuffles via ``torch.channel_shuffle``, which keeps it), and with ``compile``
        a frozen ``torch.jit.trace`` per input shape (:class:`CompiledGraphModule`). Measured here:
        torch.compile (inductor) was no faster than the frozen trace and costs 15-45 s per shape."""
        model = model.eval().to(memory_format=torch.channels_last)
        for m in model.modules():
            if type(m) is ChannelShuffle:
                m.__class__ = ChannelsLastShuffle
        if not compile:
            return model
        return CompiledGraphModule(model) if owns(model) else CompiledModule(model)


    # --- training: the IR's loss, optimizers and schedule (lightnets.optim) ----------------------------
    def optimizer(self, spec, params):
        """The torch optimizer of a ``lightnets.optim`` spec over ``params``: torch's SGD and AdamW are the IR's
        formulas as written (coupled L2 on SGD, decoupled decay on AdamW)."""
        if "torch._dynamo" not in sys.modules and "tensorflow" in sys.modules:
            raise BackendConflictError(
                "torch's optimizers import torch._dynamo, which segfaults when imported after tensorflow (already "
                "imported in this process). Load the torch backend before keras / tensorflow "
                "(lightnets.load_backend('torch') first: the keras backend then imports torch._dynamo in time), "
                "or train in a separate process.")
        if spec.kind == "sgd":
            return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                                   nesterov=spec.nesterov)
        return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)

    def loss(self, logits, labels):
        """The IR loss: softmax cross-entropy with label smoothing ``optim.LABEL_SMOOTHING``, batch mean."""
        from lightnets.optim import LABEL_SMOOTHING

        return F.cross_entropy(logits, torch.as_tensor(labels), label_smoothing=LABEL_SMOOTHING)

    def _trainer(self, model, spec):
        params = list(model.parameters())  # the graph's trainable parameters (BN statistics are buffers)
        opt = self.optimizer(spec, params)

        def step(x, y, lr):
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = self.loss(model(torch.as_tensor(x, dtype=params[0].dtype)), y)
            loss.backward()
            opt.step()
            return float(loss.detach())
        return step

    def sync_batchnorm(self, model, process_group=None):
        """``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` for a lightnets model (for DistributedDataParallel:
        batch statistics over every process); torch's function alone does the same (a GraphModule runs the
        modules at its node names at forward)."""
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)


BACKEND = TorchBackend()
