"""The PaddlePaddle fast path of ``lightnets.optimize``: ``paddle.jit.to_static`` and ``paddle.inference``
predictors with oneDNN (:class:`PredictorLayer` for a lightnets model, :class:`PredictorModel` for any layer)."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import paddle
import paddle.nn.functional as F

from .lowering import GraphLayer, owns


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



def optimize(model, compile=False):
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
