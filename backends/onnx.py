"""ONNX Runtime as a backend: lightnets graphs emitted as ONNX (:mod:`lightnets.backends.onnx_export`, the
exporter: one converter per op, opset and naming conventions, float64 lowering) and run by onnxruntime's CPU provider.

The backend object is ``BACKEND`` (``lightnets.backends.base.Backend``); its models are :class:`OnnxModel`
(graph + canonical weights, sessions made on first use). ONNX Runtime runs inference only:
``train_forward`` and ``gradients`` raise LightnetsError. Reading foreign .onnx files:
:mod:`lightnets.backends.onnx_file` (``read_artifact``). The exporter's names are re-exported here
(``to_onnx``, ``read_onnx``, ``CONVERTERS``, ...) for the callers that take them from the backend module.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lightnets.errors import BackendNotInstalledError, LightnetsError, runtime_failure
from lightnets.graph import INPUT, Graph
from lightnets.reference import check_input

from .base import unreadable
from .compiled import CompiledModel, InferenceRuntime

# the exporter's names, re-exported for the callers that take them from the backend module
from .onnx_export import (  # noqa: F401
    CARD_KEY,
    CONVERTERS,
    DOC_FORMAT,
    DTYPE_KEY,
    DTYPES,
    FLOAT32_ONLY,
    GRAPH_KEY,
    IR_VERSION,
    NATIVE_NAMES,
    OPSET,
    TensorProto,
    checked,
    doc_of,
    initializers,
    input_dims,
    onnx,
    read_onnx,
    to_onnx,
)


# --- the model --------------------------------------------------------------------------------------
class OnnxModel(CompiledModel):
    """A lightnets graph and its canonical weights, run by ONNX Runtime. The ONNX model is emitted from
    them on first use (again after ``set_weights``); ``proto()`` gives it."""

    DTYPES = {k: np_type for k, (np_type, _) in DTYPES.items()}

    def __init__(self, graph: Graph, dtype: str = "float32"):
        super().__init__(graph, dtype)
        self.threads = _default_threads()
        self._sessions: dict[bool, object] = {}

    def __repr__(self) -> str:
        return f"<OnnxModel {self.graph.name!r} {self.dtype}, {len(self.graph.nodes)} nodes>"

    def proto(self, return_all: bool = False, dynamic_hw: bool | None = None, lean: bool | None = None):
        return to_onnx(self.graph, self.weights, self.dtype, dynamic_hw, return_all, lean)

    def session(self, return_all: bool = False):
        if return_all not in self._sessions:
            self._sessions[return_all] = make_session(self.proto(return_all).SerializeToString(), self.threads)
        return self._sessions[return_all]

    def invalidate(self) -> None:
        self._sessions.clear()


_THREADS: list[int] = []  # set_threads(n): intra-op threads of the sessions made from then on


def _default_threads() -> int:
    """Intra-op threads: ``set_threads``'s, else OMP_NUM_THREADS (ONNX Runtime ignores it, this backend
    honours it, so the parity runner's single-thread environment applies), else 0 (ORT's default)."""
    if _THREADS:
        return _THREADS[-1]
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendNotInstalledError("running ONNX models needs the 'onnxruntime' package, which is not "
                                       "installed; run: pip install 'lightnets[onnx]'") from None
    return onnxruntime


def make_session(model_bytes: bytes, threads: int = 0, parallel: bool = False):
    """An ONNX Runtime CPU session: ``threads`` intra-op threads; ``parallel``: ORT's parallel execution mode
    (independent nodes at once, on ``threads`` inter-op threads too) instead of the sequential one."""
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = threads if parallel else 1
    if parallel:
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


# --- the backend object ---------------------------------------------------------------------------
class OnnxBackend(InferenceRuntime):
    """ONNX Runtime: models emitted as ONNX from the IR, NCHW, inference only (its CPU Conv/AveragePool have
    no double kernel: ``computes_float64`` is False)."""

    name = "onnxruntime"
    FORMATS = {"onnx": ".onnx"}
    NATIVE_NAMES = NATIVE_NAMES
    model_class = OnnxModel

    def build(self, graph: Graph, dtype: str = "float32") -> OnnxModel:
        """The ONNX Runtime model of ``graph`` in ``dtype`` (deterministic placeholder weights until set)."""
        return OnnxModel(graph, dtype)

    def run(self, model: OnnxModel, x: np.ndarray, return_all: bool = False):
        """Eval forward of the NCHW numpy batch ``x`` (a list of outputs for a graph with ``outputs``);
        ``return_all`` gives every node's output."""
        check_input(model.graph, x)
        try:
            sess = model.session(return_all)
            outs = sess.run(None, {INPUT: np.ascontiguousarray(x, model.DTYPES[model.dtype])})
        except LightnetsError:
            raise
        except Exception as e:  # noqa: BLE001 -- onnxruntime raises its own exception types
            raise runtime_failure(f"the ONNX model of {model.graph.name!r}", self.name, INPUT, np.shape(x), e,
                                  "a lowering bug: please report it with the model id and input shape") from None
        if return_all:
            return {o.name: v for o, v in zip(sess.get_outputs(), outs, strict=True)}
        return list(outs) if model.graph.multi_output else outs[0]

    def read_artifact(self, path):
        from . import onnx_file  # after this module's check that the onnx package is installed

        return onnx_file.read_artifact(path, lambda model_bytes: make_session(model_bytes, _default_threads()))

    # native I/O: an .onnx file's initializers are the canonical weights
    def _read(self, path: Path, fmt):
        try:
            model = onnx.load(str(path))
        except Exception as e:  # noqa: BLE001 -- protobuf raises its own errors on bad bytes
            raise unreadable(path, ".onnx", e) from None
        return initializers(model)

    def _write(self, model, path, fmt):
        proto = model.proto(lean=False) if self.owns(model) else model  # a written file builds back node for node
        onnx.save(proto, path)

    def _file_state_dict(self, model):
        if isinstance(model, onnx.ModelProto):
            return initializers(model)
        raise LightnetsError(f"{type(model).__name__} is not an onnxruntime model (OnnxModel or onnx.ModelProto)")

    def forward(self, model, x):
        if self.owns(model):
            return self.run(model, x)
        from lightnets.artifacts import in_batches

        from .onnx_file import run_onnx

        where = model.graph.name if isinstance(model, onnx.ModelProto) else Path(model)
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        try:
            sess = make_session(proto.SerializeToString(), _default_threads())
        except Exception as e:  # noqa: BLE001 -- onnxruntime raises its own exception types
            raise runtime_failure(where, self.name, proto.graph.input[0].name, np.shape(x), e,
                                  "ONNX Runtime cannot load the model; check it with onnx.checker and re-export it "
                                  "at an opset ONNX Runtime supports") from None
        elem = proto.graph.input[0].type.tensor_type.elem_type
        dtype = np.float64 if elem == TensorProto.DOUBLE else np.float32
        inp = sess.get_inputs()[0]
        batch = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else None  # a fixed batch: in chunks
        shown = "x".join(str(d) if isinstance(d, int) else "?" for d in inp.shape)
        return in_batches(lambda xb: run_onnx(sess, where, inp.name, shown, xb, dtype), np.asarray(x), batch)

    def _cast_native(self, model, dtype):
        if isinstance(model, onnx.ModelProto):
            graph, w = read_onnx(model)
            copy = self.build(graph, dtype)
            self.set_weights(copy, w)
            return copy
        raise LightnetsError(f"cannot cast a {type(model).__name__}; pass an OnnxModel or a lightnets onnx.ModelProto")

    def _file_bn_eps(self, model):
        return {float(a.f) for n in model.graph.node if n.op_type == "BatchNormalization"
                for a in n.attribute if a.name == "epsilon"}

    # bench
    def set_threads(self, n):
        _THREADS[:] = [int(n)]

    def timed_call(self, model, parallel: bool = False):
        """``(to_input, call)`` of ``model``'s session (``parallel``: in ORT's parallel execution mode)."""
        model.threads = _default_threads()
        model.invalidate()
        sess = make_session(model.proto().SerializeToString(), model.threads, parallel) if parallel else \
            model.session(False)
        dtype = model.DTYPES[model.dtype]
        return (lambda x: np.ascontiguousarray(x, dtype)), (lambda x: sess.run(None, {INPUT: x})[0])

    def timed_export(self, model, size: int, work: Path):
        """``(to_input, call)`` of a torch model exported as its users export it (``torch.onnx.export``, TorchScript
        exporter, dynamic batch) to ``work`` and run in ONNX Runtime: the bench's zoo twin in this runtime."""
        import torch

        path = Path(work) / f"{type(model).__name__}.onnx"
        torch.onnx.export(model.eval(), (torch.randn(1, 3, size, size),), str(path), dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        sess = make_session(path.read_bytes(), _default_threads())
        return (lambda x: np.ascontiguousarray(x, np.float32)), (lambda x: sess.run(None, {"input": x})[0])


BACKEND = OnnxBackend()
