"""PyTorch backend: the op vocabulary lowered to a ``torch.nn.Module`` that runs the nodes in order.

The package: ``lowering`` (the modules torch lacks, one converter per op in ``CONVERTERS``, ``GraphModule``),
``fast`` (``lightnets.optimize``'s channels_last and frozen-trace forms) and here the backend object ``BACKEND``
(``lightnets.backends.base.Backend``: weights, native ``.pt`` / ``.safetensors`` files, training hooks).
Nodes with parameters become ordinary ``nn`` modules nested by their dotted name, so node
``blocks.3.dw.conv`` holds ``blocks.3.dw.conv.weight`` in the state dict. Canonical weights share
torch's layouts (conv OIHW, linear (out, in)); only BN names differ (see ``NATIVE_NAMES``).
"""

from __future__ import annotations

import copy
import sys
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightnets import weights as W
from lightnets.errors import BackendConflictError, LightnetsError

from ..base import Backend, unreadable
from .fast import ChannelsLastShuffle, CompiledGraphModule, CompiledModule, channels_last
from .lowering import CONVERTERS, DTYPES, ChannelShuffle, GraphModule, PadConv2d, PadPool2d, build, graph_of, owns

__all__ = ["BACKEND", "CONVERTERS", "CompiledGraphModule", "GraphModule", "PadConv2d", "PadPool2d", "TorchBackend",
           "build", "graph_of", "owns"]

# THE canonical suffix -> torch state-dict leaf table, per op (torch layouts are canonical)
NATIVE_NAMES = {"conv2d": {"weight": "weight", "bias": "bias"},
                "depthwise_conv2d": {"weight": "weight", "bias": "bias"},
                "linear": {"weight": "weight", "bias": "bias"},
                "batch_norm": {"gamma": "weight", "beta": "bias", "mean": "running_mean", "var": "running_var"}}


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
