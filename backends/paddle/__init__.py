"""PaddlePaddle backend: the op vocabulary lowered to one ``paddle.nn.Layer`` that runs the nodes in order.

The package: ``lowering`` (parameter-free ops as layers, the written-out batch norm and pools, one converter per
op in ``CONVERTERS``, ``GraphLayer``), ``fast`` (``lightnets.optimize``'s ``paddle.jit.to_static`` and
``paddle.inference`` predictors) and here the backend object ``BACKEND`` (``lightnets.backends.base.Backend``:
weights, native ``.pdparams`` files, training hooks). The model's sublayers nest by the dotted node names, so
state_dict keys read ``blocks.3.dw.conv.weight`` or ``blocks.3.dw.bn._mean``. Paddle is NCHW like the IR.
"""

from __future__ import annotations

import copy
import sys

from lightnets.errors import BackendConflictError, LightnetsError

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

from ..base import Backend, unreadable  # noqa: E402
from .fast import PredictorLayer, PredictorModel, optimize  # noqa: E402
from .lowering import CONVERTERS, GraphLayer, build, graph_of, owns  # noqa: E402

__all__ = ["BACKEND", "CONVERTERS", "GraphLayer", "PaddleBackend", "PredictorLayer", "PredictorModel", "build",
           "graph_of", "owns"]

# THE canonical suffix -> paddle attribute table, per op, and the layouts that differ from canonical
NATIVE_NAMES = {"conv2d": {"weight": "weight", "bias": "bias"},  # OIHW in both
                "depthwise_conv2d": {"weight": "weight", "bias": "bias"},
                "linear": {"weight": "weight", "bias": "bias"},
                "batch_norm": {"gamma": "weight", "beta": "bias", "mean": "_mean", "var": "_variance"}}
NATIVE_LAYOUTS = {"linear": {"weight": "T"}}  # (out, in) <-> paddle (in, out)
_NUMPY_DTYPES = {paddle.float32: np.float32, paddle.float64: np.float64}


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
    optimize = staticmethod(optimize)

BACKEND = PaddleBackend()
