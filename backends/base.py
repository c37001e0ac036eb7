"""The backend contract, written once: every backend module defines ``BACKEND = XBackend()``.

Modelled on einops' ``AbstractBackend``: a small class whose methods are the whole surface that
the rest of lightnets (api, formats/port, zoo, bench, parity) uses, so those modules import no
framework and never branch on one. A subclass supplies the framework parts; this module imports
numpy only.

Contract (lightnets models): ``build``, ``owns``, ``graph_of``, ``set_weights``, ``get_weights``,
``run``, ``train_forward``, ``gradients``.

Native I/O (any model of the framework: lightnets models and zoo models alike):
``FORMATS``, ``read_state_dict``, ``load_file``, ``save_file``, ``state_dict``, ``load_state_dict``,
``forward``, ``cast``, ``bn_eps``, ``NATIVE_NAMES``, ``in_model_preprocessing``,
``classifier_activation``; bench: ``set_threads``, ``timed_call``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lightnets.errors import FileFormatError, LightnetsError, WeightsError
from lightnets.frameworks import BACKENDS, TRAINERS
from lightnets.layouts import to_canonical, to_native
from lightnets.numerics import check_dtype
from lightnets.reference import check_input
from lightnets.weights import atomic_write, few


class Lowering(NamedTuple):
    """What an op's converter gets, in every backend: ``CONVERTERS[op](c: Lowering)``.

    ``node`` (its op, ``attrs`` and name), ``in_shapes`` (per sample, channels-first, at the build size),
    ``inputs`` (the native values the node reads, where the backend wires values as it lowers: keras tensors, ONNX
    value names; empty for torch/paddle, whose converters return the module called at forward), ``dtype``,
    ``name`` (the native name of the node's layer or value) and ``native`` (the backend's builder: the keras
    module, the ONNX emitter; None for torch/paddle).
    """

    node: Any
    in_shapes: list
    inputs: list | tuple = ()
    dtype: str = "float32"
    name: str = ""
    native: Any = None

    @property
    def attrs(self) -> dict:
        return self.node.attrs


def before_tensorflow() -> None:
    """Call before tensorflow may be imported (the keras and tflite backends do, when they load): where torch is
    loaded, import ``torch._dynamo`` first - torch's optimizers import it, and imported after tensorflow it segfaults
    (torch 2.14.1, tensorflow 2.21; the other order works: docs/design.md §2)."""
    if "torch" in sys.modules and "tensorflow" not in sys.modules:
        import torch._dynamo  # noqa: F401


def native_op(node, in_channels: int) -> str:
    """The key of ``node`` in ``NATIVE_NAMES``/``NATIVE_LAYOUTS``: its op, or "depthwise_conv2d" for a conv2d
    with groups == in_channels > 1 (a layer kind of its own in keras)."""
    if node.op == "conv2d" and node.attrs["groups"] == in_channels > 1:
        return "depthwise_conv2d"
    return node.op


def unreadable(path, what: str, e: BaseException) -> FileFormatError:
    """The error for a native file its framework cannot parse."""
    return FileFormatError(f"{path} is not a readable {what} file ({type(e).__name__}: {str(e)[:200]}); it may "
                           "be truncated, corrupt or of another format - re-export it")


class Backend:
    """One framework. Subclasses set ``name``, ``FORMATS`` and ``NATIVE_NAMES`` and implement the hooks."""

    name: str = ""
    # native format name -> the suffix its files carry
    FORMATS: dict[str, str] = {}
    # {op: {canonical suffix: native leaf}}; "depthwise_conv2d" is a conv2d with groups == in_channels
    # (keras stores it as a DepthwiseConv2D, whose kernel leaf is "depthwise_kernel"); see native_op
    NATIVE_NAMES: dict[str, dict[str, str]] = {}
    # {op: {canonical suffix: layout name of lightnets.layouts}}; absent entries are "id"
    NATIVE_LAYOUTS: dict[str, dict[str, str]] = {}
    # state-dict leaves that may be absent from a file (torch BN's num_batches_tracked)
    OPTIONAL_KEYS: tuple[str, ...] = ()

    @property
    def computes_float64(self) -> bool:
        """Whether a float64 model really computes in float64 (a port then probes in float64)."""
        return True

    @property
    def framework(self) -> str:
        """The import name of the framework (``lightnets.frameworks.BACKENDS`` says it once)."""
        return BACKENDS[self.name].package

    def __repr__(self) -> str:
        return f"<lightnets backend {self.name!r}>"

    # --- contract: lightnets models, written once over the hooks below ----------------------------
    def build(self, graph, dtype: str = "float32"):
        """The native model of ``graph`` in eval mode, weights in ``dtype``, carrying ``graph``."""
        raise NotImplementedError

    def owns(self, model) -> bool:
        """Whether ``model`` is a lightnets model of this backend."""
        raise NotImplementedError

    def graph_of(self, model):
        raise NotImplementedError

    def params(self, model):
        """``(canonical name, native variable, layout, in_channels)`` for every canonical parameter: THE
        canonical <-> native mapping (names from ``NATIVE_NAMES``, layouts from ``NATIVE_LAYOUTS``)."""
        graph = self.graph_of(model)
        nodes = {n.name: n for n in graph.nodes}
        for p in graph.params:
            node_name, suffix = p.name.rsplit(".", 1)
            node = nodes[node_name]
            c = graph.shapes[node.inputs[0]][0]
            op = native_op(node, c)
            yield (p.name, self._variable(model, node, self.NATIVE_NAMES[op][suffix]),
                   self.NATIVE_LAYOUTS.get(op, {}).get(suffix, "id"), c)

    def set_weights(self, model, weights) -> None:
        """Assign canonical weights (already checked against the graph), cast to the model's dtype."""
        for name, var, layout, c in self.params(model):
            self._assign_variable(var, np.ascontiguousarray(to_native(np.asarray(weights[name]), layout, c)))

    def get_weights(self, model) -> dict[str, np.ndarray]:
        """Canonical weights as numpy arrays in the model's dtype."""
        return {name: np.ascontiguousarray(to_canonical(self._value(var), layout, c))
                for name, var, layout, c in self.params(model)}

    def _checked(self, model, x) -> np.ndarray:
        x = np.asarray(x)
        check_input(self.graph_of(model), x)
        return x

    def run(self, model, x, return_all: bool = False):
        """Eval forward of the NCHW numpy batch ``x`` (any train/eval mode is restored after); NCHW out,
        ``(N, C)`` for vectors; ``return_all`` gives every node's output by node name."""
        x = self._checked(model, x)
        with self._evaluating(model):
            y = self._call(model, self._input(model, x), return_all)
        if return_all:
            return {k: self._output(model, v) for k, v in y.items()}
        return self._outputs(model, y)

    def train_forward(self, model, x):
        """One training-mode forward (BN on batch statistics, running statistics updated with the IR
        momentum in the framework's convention and the unbiased batch variance, dropout off) ->
        ``(output, {"<bn>.mean": ..., "<bn>.var": ...})``. Leaves the model in eval mode."""
        x = self._checked(model, x)
        y = self._train_call(model, self._input(model, x))
        stats = {k: v for k, v in self.get_weights(model).items() if k.endswith((".mean", ".var"))}
        return self._outputs(model, y), stats

    def gradients(self, model, x, probe) -> dict[str, np.ndarray]:
        """Eval-mode gradients of ``sum(output * probe)`` (summed over the outputs of a multi-output graph,
        ``probe`` then a list) w.r.t. every trainable canonical parameter (canonical names and layouts) and
        ``"input"`` (NCHW)."""
        x = self._checked(model, x)
        trainable = {p.name for p in self.graph_of(model).params if p.trainable}
        params = [p for p in self.params(model) if p[0] in trainable]
        probe = ([self._probe(model, np.asarray(p)) for p in probe] if self.graph_of(model).multi_output
                 else self._probe(model, np.asarray(probe)))
        g_input, grads = self._backward(model, self._input(model, x), probe, [p[1] for p in params])
        out = {name: np.ascontiguousarray(to_canonical(g, layout, c))
               for (name, _, layout, c), g in zip(params, grads, strict=True)}
        return {**out, "input": self._output(model, g_input)}

    # hooks of the contract (lightnets models)
    def _variable(self, model, node, leaf: str):
        """The native variable ``leaf`` of ``node``'s layer."""
        raise NotImplementedError

    def _value(self, var) -> np.ndarray:
        """A variable's value, a numpy copy."""
        raise NotImplementedError

    def _assign_variable(self, var, value: np.ndarray) -> None:
        raise NotImplementedError

    def _input(self, model, x: np.ndarray):
        """The native input of a checked NCHW numpy batch, in the model's dtype."""
        raise NotImplementedError

    def _probe(self, model, probe: np.ndarray):
        """The native tensor of an output-shaped NCHW (or (N, C)) probe."""
        return self._input(model, probe)

    def _output(self, model, y) -> np.ndarray:
        """A native output as numpy, NCHW, in the model's dtype."""
        raise NotImplementedError

    def _outputs(self, model, y):
        """The model's native output(s) as numpy: a list for a graph with ``outputs``."""
        return [self._output(model, v) for v in y] if isinstance(y, (list, tuple)) else self._output(model, y)

    @staticmethod
    def probe_loss(y, probe, reduce_sum=lambda t: t.sum()):
        """``sum(output * probe)`` summed over every output (lists for a graph with ``outputs``): the
        scalar the gradients are taken of."""
        if isinstance(y, (list, tuple)):
            return sum(reduce_sum(a * p) for a, p in zip(y, probe, strict=True))
        return reduce_sum(y * probe)

    @contextlib.contextmanager
    def _evaluating(self, model):
        """Context: eval mode and no autograd (``_no_grad``); the previous train/eval mode is restored after."""
        was_training = model.training
        model.eval()
        try:
            with self._no_grad():
                yield
        finally:
            if was_training:
                model.train()

    def _no_grad(self):
        """Context: no autograd recording."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def training(self, model):
        """Context: train mode (BN on batch statistics) with every dropout off; eval mode after."""
        model.train()
        for layer in self._dropouts(model):
            layer.eval()
        try:
            yield model
        finally:
            model.eval()

    def _dropouts(self, model):
        """The dropout layers of a model of this framework."""
        raise NotImplementedError

    def _call(self, model, x, return_all: bool):
        """The eval forward: the output, or ``{node name: output}`` with ``return_all``."""
        raise NotImplementedError

    def _train_call(self, model, x):
        """The training-mode forward (see :meth:`train_forward`); leaves eval mode."""
        raise NotImplementedError

    def _backward(self, model, x, probe, variables) -> tuple[np.ndarray, list[np.ndarray]]:
        """Eval-mode gradients of ``sum(model(x) * probe)``: (w.r.t. ``x``, [w.r.t. each variable]) as
        numpy arrays in native layout."""
        raise NotImplementedError

    # --- native I/O ----------------------------------------------------------------------------
    def check_format(self, fmt: str) -> str:
        if fmt not in self.FORMATS:
            raise FileFormatError(f"{fmt!r} is not a {self.name} format; {self.name} formats are "
                                  f"{', '.join(self.FORMATS)}")
        return fmt

    @staticmethod
    def existing(path) -> Path:
        path = Path(path)
        if not path.is_file():
            raise FileFormatError(f"weights file {path} does not exist; check the path")
        return path

    def read_state_dict(self, path, fmt: str) -> dict[str, np.ndarray]:
        """The native state dict (native keys and layouts, numpy values) stored in ``path``."""
        self.check_format(fmt)
        sd = self._read(self.existing(path), fmt)
        if not isinstance(sd, Mapping) or not all(hasattr(v, "shape") for v in sd.values()):
            raise FileFormatError(f"{path} holds a {type(sd).__name__}, not a {self.name} state dict of "
                                  "tensors; save the model's state dict")
        return {str(k): self.to_numpy(v) for k, v in sd.items()}

    def load_file(self, model, path, fmt: str) -> None:
        """Load the native file ``path`` into ``model`` (any model of this framework), strictly."""
        self.check_format(fmt)
        self.load_state_dict(model, self.read_state_dict(path, fmt))

    def save_file(self, model, path, fmt: str) -> Path:
        """Write ``model``'s weights as a native ``fmt`` file at exactly ``path``, atomically."""
        self.check_format(fmt)
        suffix = self.FORMATS[fmt]

        def write(tmp):
            if tmp.endswith(suffix):
                self._write(model, tmp, fmt)
                return
            # libraries that insist on a suffix: write tmp + suffix, then rename onto tmp
            t2 = tmp + suffix
            try:
                self._write(model, t2, fmt)
                os.replace(t2, tmp)
            finally:
                Path(t2).unlink(missing_ok=True)
        return atomic_write(path, write)

    def state_dict(self, model) -> dict[str, np.ndarray]:
        """The native state dict of any model of this framework, as numpy arrays."""
        raise NotImplementedError

    def load_state_dict(self, model, sd: Mapping[str, np.ndarray]) -> None:
        """Assign a native state dict strictly: every key, shape and float-ness checked first."""
        self.check_state_dict(self._shapes(model), sd, type(model).__name__)
        self._assign(model, sd)

    def check_state_dict(self, want: Mapping[str, tuple], got: Mapping, what: str) -> None:
        """WeightsError naming missing, unexpected, mis-shaped and non-float entries of ``got``."""
        optional = self.OPTIONAL_KEYS
        missing = [k for k in want if k not in got and not k.endswith(optional)]
        extra = sorted(k for k in got if k not in want)
        bad = [f"{k} has shape {tuple(np.shape(got[k]))}, expected {tuple(want[k])}" for k in want
               if k in got and tuple(np.shape(got[k])) != tuple(want[k])]
        nonfloat = [k for k in want if k in got and not k.endswith(optional)
                    and np.asarray(self.to_numpy(got[k])).dtype.kind != "f"]
        problems = []
        if missing:
            problems.append(f"missing keys {few(missing)}")
        if extra:
            problems.append(f"unexpected keys {few(extra)}")
        if bad:
            problems.append("; ".join(bad[:8]) + (f" ... ({len(bad) - 8} more)" if len(bad) > 8 else ""))
        if nonfloat:
            problems.append(f"non-float tensors {few(nonfloat)}")
        if problems:
            raise WeightsError(f"{self.name} state dict does not fit the {what}: " + "; ".join(problems)
                               + ". Check the model id, the class count and that the weights were saved "
                                 "from this model.")

    def forward(self, model, x) -> np.ndarray:
        """Eval forward of any model of this framework on the NCHW numpy batch ``x`` (no grad)."""
        raise NotImplementedError

    def cast(self, model, dtype: str):
        """The same model (a copy) with every weight in ``dtype``."""
        check_dtype(dtype)
        if self.owns(model):
            copy = self.build(self.graph_of(model), dtype)
            self.set_weights(copy, self.get_weights(model))
            return copy
        return self._cast_native(model, dtype)

    def bn_eps(self, model) -> set[float]:
        """The eps of every batch-norm layer of ``model``."""
        raise NotImplementedError

    def float32_output(self, graph, weights, x) -> np.ndarray:
        """``graph`` with canonical ``weights`` run in float32 on the NCHW batch ``x``: how an import measures the
        float32 noise of a graph in this runtime (lightnets.artifacts' probe bound)."""
        model = self.build(graph, "float32")
        self.set_weights(model, weights)
        return self.run(model, np.asarray(x, np.float32))

    def in_model_preprocessing(self, model):
        """``(scale, offset)`` of a rescaling layer inside ``model`` (keras), else None."""
        return None

    def classifier_activation(self, model) -> str:
        """The activation of the model's last layer ("linear" for logits)."""
        return "linear"

    def input_hw(self, model) -> tuple[int, int] | None:
        """The ``(height, width)`` a model is built for (keras.applications built with ``input_shape``), or None
        if it takes any size."""
        return None

    # --- training: the IR's loss, optimizers and schedule (lightnets.optim), one loop over _trainer --------
    def optimizer(self, spec, params):
        """The framework's optimizer of a ``lightnets.optim`` spec over ``params`` (the trainable parameters or
        variables, whose dtype it takes)."""
        raise self._unsupported("training")

    def loss(self, logits, labels):
        """The IR loss of one batch (``optim.cross_entropy``: softmax cross-entropy with label smoothing
        ``optim.LABEL_SMOOTHING``, batch mean) of native ``logits`` and integer class ``labels``."""
        raise self._unsupported("training")

    def train_steps(self, model, batches, labels, optimizer, schedule=None):
        """Optimizer steps on ``model`` in place, one per NCHW batch, with the IR's loss, ``optimizer`` spec and
        ``schedule`` (``lightnets.optim``), BN in train mode, dropout off -> ``optim.Trace`` (canonical weights
        and BN statistics after every step, losses, lrs)."""
        from lightnets import optim

        batches, labels, lrs = optim.check_run(self.graph_of(model), batches, labels, optimizer, schedule)
        trace = optim.Trace()
        with self.training(model):
            step = self._trainer(model, optimizer)
            for x, y, lr in zip(batches, labels, lrs, strict=True):
                trace.losses.append(step(x, y, lr))
                trace.weights.append(self.get_weights(model))
                trace.lrs.append(lr)
        return trace

    def sync_batchnorm(self, model):
        """The model with batch statistics over every replica of the framework's data-parallel training."""
        raise self._unsupported("synchronised batch norm")

    def _trainer(self, model, spec):
        """``step(x, y, lr) -> loss``: one optimizer step of ``model`` (in train mode) on the NCHW numpy batch
        ``x`` with integer labels ``y`` at learning rate ``lr``, the optimizer made from ``spec`` once."""
        raise self._unsupported("training")

    def _unsupported(self, what: str) -> LightnetsError:
        return LightnetsError(f"{what} is not supported by the {self.name} backend; use one of "
                              f"{', '.join(TRAINERS)} for it")

    # --- bench ---------------------------------------------------------------------------------
    def set_threads(self, n: int) -> None:
        """Pin the framework's intra-op threads to ``n`` (inter-op to 1) where it allows."""

    def timed_call(self, model):
        """``(to_input, call)``: ``to_input(x_nchw)`` makes the native input once; ``call(native_x)``
        runs the framework's fast eval path and materialises the output."""
        raise NotImplementedError

    # --- fast inference path -------------------------------------------------------------------
    def optimize(self, model, compile: bool = False):
        """The framework's fast eval form of ``model`` (``lightnets.optimize`` passes a fresh BN-folded
        lightnets model; zoo models are accepted too): a model ``lightnets.run`` and ``timed_call`` accept.
        ``compile``: the compiled/frozen variant, paying a one-time cost (``compile_s`` where lazy)."""
        raise LightnetsError(f"backend {self.name!r} has no separate fast path: its models already run an "
                             "optimised inference runtime; use the model as built")

    # --- hooks -----------------------------------------------------------------------------------
    @staticmethod
    def to_numpy(v) -> np.ndarray:
        """A framework tensor (or array) as numpy."""
        if isinstance(v, np.ndarray):
            return v
        if hasattr(v, "detach"):
            return v.detach().cpu().numpy()
        return np.asarray(v.numpy() if hasattr(v, "numpy") else v)

    def _read(self, path: Path, fmt: str):
        raise NotImplementedError

    def _write(self, model, path: str, fmt: str) -> None:
        raise NotImplementedError

    def _shapes(self, model) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in self.state_dict(model).items()}

    def _assign(self, model, sd: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _cast_native(self, model, dtype: str):
        raise NotImplementedError
