"""PaddlePaddle backend: lowers each op of the vocabulary to a ``paddle.nn.Layer``.

The model is one ``paddle.nn.Layer`` whose sublayers nest by the dotted node names, so state_dict
keys read ``blocks.3.dw.conv.weight`` or ``blocks.3.dw.bn._mean``. Paddle is NCHW like the IR.
The backend object is ``BACKEND`` (``lightnets.backends.base.Backend``).
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time

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
from lightnets.graph import Graph  # noqa: E402

from .base import Backend, Lowering, unreadable  # noqa: E402


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


def _conv2d(c: Lowering):
    a = c.attrs
    return nn.Conv2D(c.in_shapes[0][0], a["out_channels"], a["kernel"], stride=a["stride"],
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
}

# THE canonical suffix -> paddle attribute table, per op, and the layouts that differ from canonical
NATIVE_NAMES = {"conv2d": {"weight": "weight", "bias": "bias"},  # OIHW in both
                "depthwise_conv2d": {"weight": "weight", "bias": "bias"},
                "linear": {"weight": "weight", "bias": "bias"},
                "batch_norm": {"gamma": "weight", "beta": "bias", "mean": "_mean", "var": "_variance"}}
NATIVE_LAYOUTS = {"linear": {"weight": "T"}}  # (out, in) <-> paddle (in, out)
_NUMPY_DTYPES = {paddle.float32: np.float32, paddle.float64: np.float64}


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


# --- the fast inference path (lightnets.optimize) --------------------------------------------------
def _threads() -> int:
    """The predictor's math-library threads: the process's pinned OMP_NUM_THREADS, else every CPU."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def _global_avg_pool(x):
    """The global average pool as ``adaptive_avg_pool2d(x, 1)``: the same mean, an op oneDNN runs."""
    return F.adaptive_avg_pool2d(x, 1)


def _bias_via_batch_norm(conv) -> None:
    """Run ``conv`` (a paddle Conv2D with a bias) as conv without bias, then the bias added by the eval batch-norm
    kernel (mean 0, variance 1, scale 1, eps 0: ``(y - 0) / sqrt(1) * 1 + b``, exactly ``y + b``). Paddle's
    dygraph adds a conv bias with a separate broadcast kernel: a folded bench net at batch 16 ran 1486 ms
    that way vs 846 ms like this (the unfolded model, conv + fused BN: 884 ms)."""
    c = conv.weight.shape[0]
    stats = (paddle.zeros([c], conv.weight.dtype), paddle.ones([c], conv.weight.dtype))

    def forward(x):
        y = F.conv._conv_nd(x, conv.weight, bias=None, stride=conv._stride, padding=conv._updated_padding,
                            padding_algorithm=conv._padding_algorithm, dilation=conv._dilation, groups=conv._groups,
                            data_format=conv._data_format, channel_dim=conv._channel_dim, op_type=conv._op_type,
                            use_cudnn=conv._use_cudnn)
        return F.batch_norm(y, stats[0], stats[1], stats[1], conv.bias, training=False, epsilon=0.0)
    conv.forward = forward


class Predictors:
    """``paddle.inference`` predictors of a layer, one per input (C, H, W) (the batch stays dynamic),
    created on first use: ``paddle.jit.save`` to a temporary directory with ``InputSpec([None, C, H, W])``,
    then ``Config`` with oneDNN on and IR optimisation on (conv + bias + activation fusion), the
    process's thread count. The weights are a snapshot taken at creation; ``compile_s`` is the time spent.
    """

    def __init__(self, layer):
        self.layer, self.predictors, self.compile_s = layer, {}, 0.0

    def _create(self, shape, dtype):
        from paddle import inference

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="lightnets-paddle-") as d:
            prefix = os.path.join(d, "model")
            spec = [paddle.static.InputSpec([None, *shape], dtype, "x")]
            paddle.jit.save(self.layer, prefix, input_spec=spec)
            program = next(f for f in os.listdir(d) if f.endswith((".json", ".pdmodel")))
            config = inference.Config(os.path.join(d, program), prefix + ".pdiparams")
            config.disable_gpu()
            config.enable_mkldnn()
            config.switch_ir_optim(True)
            config.set_cpu_math_library_num_threads(_threads())
            config.disable_glog_info()
            predictor = inference.create_predictor(config)  # reads the files: the directory may go
        handles = (predictor.get_input_handle(predictor.get_input_names()[0]),
                   [predictor.get_output_handle(n) for n in predictor.get_output_names()])
        self.compile_s += time.perf_counter() - t0
        return predictor, handles

    def __call__(self, x: np.ndarray):
        """The output for the NCHW numpy batch ``x`` (a list for a graph with several outputs)."""
        key = (tuple(x.shape[1:]), x.dtype.name)
        if key not in self.predictors:
            self.predictors[key] = self._create(*key)
        predictor, (inp, outs) = self.predictors[key]
        inp.reshape(list(x.shape))
        inp.copy_from_cpu(np.ascontiguousarray(x))
        predictor.run()
        ys = [o.copy_to_cpu() for o in outs]
        return ys[0] if len(ys) == 1 else ys


class PredictorLayer(GraphLayer):
    """``lightnets.optimize(model, compile=True)`` in paddle: the BN-folded model run by
    :class:`Predictors` (``paddle.inference``, oneDNN). It shares every attribute (sublayers, parameters,
    graph) with the eager folded layer, so ``lightnets.run`` (``return_all=True`` walks the eager layers),
    the state dict and ``export_weights`` work; the predictor keeps the weights of its creation (optimize
    again after changing them)."""

    @classmethod
    def wrap(cls, eager: GraphLayer) -> PredictorLayer:
        self = cls.__new__(cls)
        self.__dict__.update(eager.__dict__)
        object.__setattr__(self, "predictors", Predictors(eager))
        return self

    @property
    def compile_s(self) -> float:
        return self.predictors.compile_s

    def forward(self, x, return_all: bool = False):
        if return_all or not x.stop_gradient:
            return super().forward(x, return_all=return_all)
        return _tensors(self.predictors(x.numpy()))


def _tensors(y):
    return [paddle.to_tensor(v) for v in y] if isinstance(y, list) else paddle.to_tensor(y)


class PredictorModel:
    """``BACKEND.optimize(layer, compile=True)`` of any other paddle layer (a zoo model): :class:`Predictors`
    behind a call on paddle tensors or numpy arrays."""

    def __init__(self, layer):
        self.layer, self.predictors = layer, Predictors(layer)

    @property
    def compile_s(self) -> float:
        return self.predictors.compile_s

    def __call__(self, x):
        return _tensors(self.predictors(x if isinstance(x, np.ndarray) else x.numpy()))

    def eval(self):
        return self


# --- the backend object ---------------------------------------------------------------------------
class PaddleBackend(Backend):
    """PaddlePaddle: ``paddle.nn.Layer`` models, NCHW, state dicts of tensors."""

    name = "paddle"
    FORMATS = {"paddle": ".pdparams"}
    NATIVE_NAMES = NATIVE_NAMES
    NATIVE_LAYOUTS = NATIVE_LAYOUTS

    build = staticmethod(build)
    owns = staticmethod(owns)
    graph_of = staticmethod(graph_of)

    # hooks of the contract
    def _variable(self, model, node, leaf):
        return getattr(model.layer(node.name), leaf)

    def _value(self, var):
        return var.numpy()

    def _assign_variable(self, var, value):
        var.set_value(value.astype(_NUMPY_DTYPES[var.dtype], copy=False))

    def _input(self, model, x):
        return paddle.to_tensor(x.astype(model.lightnets_dtype))

    def _output(self, model, y):
        return y if isinstance(y, np.ndarray) else y.numpy()

    def _no_grad(self):
        return paddle.no_grad()

    def _dropouts(self, model):
        return [layer for layer in model.sublayers() if isinstance(layer, nn.Dropout)]

    def _call(self, model, x, return_all):
        return model(x, return_all=return_all)

    def _train_call(self, model, x):
        model.eval()
        try:
            for node in model.graph.nodes:
                if node.op == "batch_norm":
                    model.layer(node.name).train()
            with paddle.no_grad():
                return model(x)
        finally:
            model.eval()

    def _backward(self, model, x, probe, variables):
        model.eval()
        x.stop_gradient = False
        model.clear_gradients()
        self.probe_loss(model(x), probe).backward()
        grads = [v.grad.numpy() for v in variables]
        g_input = x.grad.numpy()
        model.clear_gradients()
        return g_input, grads

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
                y = model(paddle.to_tensor(np.asarray(x)).astype(dtype))
                return [t.numpy() for t in y] if isinstance(y, (list, tuple)) else y.numpy()
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

        if isinstance(model, (PredictorLayer, PredictorModel)):  # optimize(compile=True): numpy in and out
            return np.ascontiguousarray, model.predictors

        def call(x):
            with paddle.no_grad():
                return model(x).numpy()
        return (lambda x: paddle.to_tensor(np.ascontiguousarray(x))), call

    # --- training: the IR's loss, optimizers and schedule (lightnets.optim) ----------------------------
    def optimizer(self, spec, params):
        """The paddle optimizer of a ``lightnets.optim`` spec: ``Momentum`` with the L2Decay regulariser
        (coupled: the IR's SGD) and ``AdamW`` (decoupled decay; its kernel's eps placement is the IR's)."""
        if spec.kind == "sgd":
            from paddle.regularizer import L2Decay

            return paddle.optimizer.Momentum(learning_rate=spec.lr, momentum=spec.momentum, parameters=params,
                                             use_nesterov=spec.nesterov,
                                             weight_decay=L2Decay(spec.weight_decay) if spec.weight_decay else None)
        return paddle.optimizer.AdamW(learning_rate=spec.lr, beta1=spec.betas[0], beta2=spec.betas[1],
                                      epsilon=spec.eps, parameters=params, weight_decay=spec.weight_decay)

    def loss(self, logits, labels):
        """The IR loss: paddle's soft-label cross-entropy on the IR's smoothed targets, batch mean.
        (``F.cross_entropy(label_smoothing=)`` smooths a float32 one-hot with a float32 epsilon before casting
        to the logits' dtype: float64 losses off by ~2e-8 relative, measured; so the targets come from
        ``optim.one_hot_smoothed`` in the logits' dtype.)"""
        from lightnets.optim import one_hot_smoothed

        labels = np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels)
        target = paddle.to_tensor(one_hot_smoothed(labels, logits.shape[-1])).astype(logits.dtype)
        return F.cross_entropy(logits, target, soft_label=True, reduction="mean")

    def _trainer(self, model, spec):
        params = [p for p in model.parameters() if not p.stop_gradient]  # BN statistics are stop_gradient
        opt = self.optimizer(spec, params)

        def step(x, y, lr):
            opt.set_lr(lr)
            loss = self.loss(model(paddle.to_tensor(np.asarray(x)).astype(params[0].dtype)), y)
            loss.backward()
            opt.step()
            opt.clear_grad()
            return float(loss.numpy())
        return step

    def sync_batchnorm(self, model):
        """``paddle.nn.SyncBatchNorm.convert_sync_batchnorm`` (a lightnets model runs the layers at its node names,
        so paddle's function alone does the same). Paddle 3.3.1 registers the sync_batch_norm kernel for GPU only:
        on CPU the converted model's train-mode forward raises."""
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    # fast inference path (lightnets.optimize folds the batch norms first)
    def optimize(self, model, compile=False):
        """The fast eval form of ``model`` (a fresh lightnets model, or any paddle layer): eval mode and
        ``paddle.jit.to_static`` on its forward (whole graph, no Python per op; changed in place), or with
        ``compile`` a ``paddle.inference`` predictor with oneDNN (:class:`PredictorLayer`). NHWC was not
        tried: oneDNN picks its own blocked layouts inside the predictor. A lightnets model's global average
        pools run as ``adaptive_avg_pool2d`` (oneDNN has a kernel for it, not for the mean over H, W, whose
        layout round trips made the folded bench predictor (SE net) 2x slower at batch 16); without
        ``compile`` a folded conv adds its bias through the batch-norm kernel (:func:`_bias_via_batch_norm`)."""
        model.eval()
        if owns(model):
            for node in model.graph.nodes:
                layer = model.layer(node.name)
                if node.op == "global_avg_pool":
                    layer.fn = _global_avg_pool
                elif node.op == "conv2d" and node.attrs["bias"] and not compile:
                    _bias_via_batch_norm(layer)
        if compile:
            return PredictorLayer.wrap(model) if owns(model) else PredictorModel(model)
        return paddle.jit.to_static(model, full_graph=True)


BACKEND = PaddleBackend()
