"""TFLite as a backend: the keras lowering, converted by ``tf.lite.TFLiteConverter.from_keras_model``, run by
the LiteRT interpreter.

Nothing is lowered twice: a model's flat buffer is made from the keras backend's model of the graph
(``lightnets.frameworks.load_backend("keras")``, float32, canonical weights set) by the TFLite converter, in
memory, on first use (again after ``set_weights``). It runs in ``ai_edge_litert.interpreter.Interpreter``
(the ``ai-edge-litert`` package, the ``tflite`` extra), else in ``tf.lite.Interpreter`` (deprecated in
tensorflow 2.21, same runtime). Keras must run on tensorflow (``KERAS_BACKEND=tensorflow``, keras' default).

Precision: TFLite flat buffers here hold float32 and the LiteRT interpreter has no float64 kernels, so a
model built with ``dtype="float64"`` computes in float32 and returns float64 arrays (the parity runner holds
it to the float32 bounds: ``parity.tolerances.EFFECTIVE_DTYPE``). ``quantize_int8`` makes a post-training
full-integer quantized model (int8 weights and activations, every op from ``TFLITE_BUILTINS_INT8``) that
keeps float32 input and output: the interpreter quantizes the input and dequantizes the logits, so it takes
the same NHWC images as the float model.

Sizes: the keras model takes ``(None, None, C)`` inputs, so the flat buffer's input signature is
``[-1, -1, -1, C]`` and ``run`` resizes the interpreter's input (``resize_tensor_input``) to each batch's
shape: any batch size, and any height/width the graph allows (``"same"`` pads are TF's, computed by the
interpreter for the actual size; ``Graph.shapes_at`` checks the size first). A graph fixed to its size
(``meta["fixed_size"]``), or a model made with ``static_hw=True``, has a ``[-1, H, W, C]`` signature: other
sizes raise InputShapeError.

``run(model, x, return_all=True)`` runs a second flat buffer converted from the keras model with every node's
output as a named model output (keys = node names, kept as the signature's output names), so the parity
locator reads every node; the converter then cannot fuse a batch norm or an activation into the conv before
it, so these values come from the same kernels with fewer fusions.

The backend object is ``BACKEND`` (``lightnets.backends.base.Backend``); its models are :class:`TFLiteModel`.
TFLite runs inference only: ``train_forward`` and ``gradients`` raise LightnetsError. ``save_file`` writes the
flat buffer (``lightnets.formats`` keeps the graph and provenance card of a written file in its
``<file>.lightnets.json`` sidecar; the flat buffer has no field the converter fills for them).

Reading foreign files: :mod:`lightnets.backends.tflite_file` (``read_artifact``).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lightnets import weights as W
from lightnets.errors import BackendNotInstalledError, FileFormatError, InputShapeError, LightnetsError, runtime_failure
from lightnets.graph import Graph
from lightnets.layouts import to_nchw, to_nhwc
from lightnets.reference import check_input

from . import tflite_file
from .base import Backend, before_tensorflow
from .compiled import CompiledModel, InferenceRuntime

before_tensorflow()  # LiteRT's converter and interpreter import tensorflow: torch._dynamo first where torch is loaded

DTYPES = {"float32": np.float32, "float64": np.float64}  # requested dtype -> output dtype (compute: float32)
QUANTIZE = ("int8",)
SIGNATURE = "serving_default"  # the converter's signature of a keras model


# --- the frameworks ---------------------------------------------------------------------------------
def _tensorflow():
    """tensorflow and keras (on tensorflow): the converter's side."""
    try:
        import keras
        import tensorflow as tf
    except ImportError as e:
        raise BackendNotInstalledError(f"the tflite backend converts keras models with tensorflow ({e}); run: "
                                       "pip install 'lightnets[tflite]'") from None
    if keras.backend.backend() != "tensorflow":
        raise LightnetsError(f"the tflite backend converts keras models on tensorflow, but keras runs on "
                             f"{keras.backend.backend()!r} in this process; run with KERAS_BACKEND=tensorflow")
    return tf, keras


def interpreter_class():
    """``(Interpreter class, its name)``: LiteRT's if ``ai-edge-litert`` is installed, else ``tf.lite``'s."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert.interpreter.Interpreter"
    except ImportError:
        tf, _ = _tensorflow()
        return tf.lite.Interpreter, "tf.lite.Interpreter"


def versions() -> dict[str, str]:
    """Versions of the converter (tensorflow) and the interpreter package, for reports."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"interpreter": interpreter_class()[1]}
    for pkg in ("tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


# --- conversion -------------------------------------------------------------------------------------
def fixed_size_graph(graph: Graph) -> Graph:
    """``graph`` fixed to its build size (the keras model then takes static height/width)."""
    if graph.fixed_size:
        return graph
    return Graph(graph.name, graph.input_shape, graph.nodes, {**graph.meta, "fixed_size": True}, graph.outputs)


def keras_model(graph: Graph, weights: Mapping[str, np.ndarray], return_all: bool = False, static_hw: bool = False,
                lean: bool = False):
    """The keras backend's float32 model of ``graph`` with ``weights`` (every node's output a named output
    with ``return_all``); ``lean``: of ``lightnets.transforms.split_concats(graph)`` (channel concats kept as their
    pieces where the readers take pieces; the outputs keep their names)."""
    from lightnets.frameworks import load_backend
    from lightnets.transforms import split_concats

    _tensorflow()
    kb = load_backend("keras")
    if lean and not return_all:
        graph, weights, _ = split_concats(graph, weights)
    model = kb.build(fixed_size_graph(graph) if static_hw else graph, "float32")
    kb.set_weights(model, {k: np.asarray(v, np.float32) for k, v in weights.items()})
    if not return_all and not graph.multi_output:
        return model
    import keras

    from .keras import layer_name

    # named outputs (the signature's output names): every node, or a multi-output graph's outputs
    names = [n.name for n in graph.nodes] if return_all else list(graph.outputs)
    outputs = {name: model.get_layer(layer_name(name)).output for name in names}
    return keras.Model(model.inputs[0], outputs, name=f"{model.name}__all" if return_all else model.name)


def convert(graph: Graph, weights: Mapping[str, np.ndarray], return_all: bool = False, quantize: str | None = None,
            calibration: np.ndarray | None = None, static_hw: bool = False, lean: bool = True) -> bytes:
    """The TFLite flat buffer of ``graph`` with canonical ``weights`` (float32, or int8 with ``quantize="int8"``
    calibrated on the NCHW images ``calibration``, one at a time)."""
    if quantize is not None and quantize not in QUANTIZE:
        raise LightnetsError(f"quantize={quantize!r} is not supported; use None (float32) or one of {QUANTIZE}")
    if quantize and (calibration is None or len(calibration) == 0):
        raise LightnetsError("int8 quantization needs calibration images (an NCHW float array) for the "
                             "representative dataset")
    tf, _ = _tensorflow()
    # ``lean``: a float32 inference-form graph (batch norms folded: lightnets.optimize) runs its concats in pieces; an
    # int8 file keeps every node (its card records each node's range), a written file too (it builds back by its ops)
    lean = lean and quantize is None and bool(graph.meta.get("bn_folded"))
    model = keras_model(graph, weights, return_all, static_hw, lean=lean)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize == "int8":
        images = to_nhwc(calibration, np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([images[i: i + 1]] for i in range(len(images)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # input/output stay float32 (the default inference_input/output_type): QUANTIZE/DEQUANTIZE at the ends
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # keras' export prints its endpoints
            return bytes(converter.convert())
    except Exception as e:  # noqa: BLE001 -- the converter raises ConverterError and friends
        raise LightnetsError(f"the TFLite converter failed on graph {graph.name!r} ({type(e).__name__}: "
                             f"{str(e)[:400]}); please report it with the model id") from None


# --- interpreters -------------------------------------------------------------------------------------
def _default_threads() -> int | None:
    """``set_threads``'s, else OMP_NUM_THREADS (the parity runner sets 1), else the interpreter's default."""
    if _THREADS:
        return _THREADS[-1]
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        return None
    return n if n > 0 else None


_THREADS: list[int] = []


def make_interpreter(flat_buffer: bytes, threads: int | None = None):
    cls, _ = interpreter_class()
    return cls(model_content=flat_buffer, num_threads=threads)


class Runner:
    """One interpreter's serving signature: NHWC float32 in, ``{output name: array}`` out, the input resized to
    every new shape (InputShapeError where the signature fixes the size)."""

    def __init__(self, flat_buffer: bytes, threads: int | None = None):
        self.interpreter = make_interpreter(flat_buffer, threads)
        signatures = self.interpreter.get_signature_list()
        key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures), None)
        if key is None:
            raise FileFormatError("the TFLite model has no signature (not written by the TFLite converter from a "
                                  "keras model); export it with lightnets.export(..., to='tflite')")
        self.runner = self.interpreter.get_signature_runner(key)
        self.input_name = signatures[key]["inputs"][0]
        self.output_names = list(signatures[key]["outputs"])
        details = self.runner.get_input_details()[self.input_name]
        self.signature = tuple(int(d) for d in details["shape_signature"])
        self.input_dtype = details["dtype"]

    def __call__(self, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
        want = self.signature
        if len(want) != x_nhwc.ndim or any(w != -1 and w != g for w, g in zip(want, x_nhwc.shape, strict=False)):
            shown = "x".join("N" if d == -1 else str(d) for d in want)
            raise InputShapeError(f"input of NHWC shape {tuple(x_nhwc.shape)} does not fit this TFLite model's "
                                  f"input {shown} (converted for a fixed height/width); resize the input or "
                                  "build/export the model at that input_size")
        if self.input_dtype != np.float32:
            raise LightnetsError(f"this TFLite model takes {np.dtype(self.input_dtype).name} input; lightnets "
                                 "runs float32-input models only (its int8 export keeps float32 input/output)")
        try:
            return self.runner(**{self.input_name: np.ascontiguousarray(x_nhwc, np.float32)})
        except Exception as e:  # noqa: BLE001 -- the interpreter raises RuntimeError/ValueError of its own
            raise runtime_failure("the TFLite model", "LiteRT", self.input_name, x_nhwc.shape, e,
                                  "feed NHWC float32 images the model was converted for; please report it with "
                                  "the model id if they are") from None


def _timed(runner: Runner):
    """``(to_input, call)`` of a runner for the bench: NCHW -> NHWC once, the first output per call."""
    out = runner.output_names[0]
    return (lambda x: to_nhwc(x, np.float32)), (lambda x: runner(x)[out])


def _cache_limit() -> int:
    """Bytes of flat buffers kept: ``LIGHTNETS_TFLITE_CACHE_MB`` (default 256; the parity target sets 4096, so its
    float64 pass over every id reuses the float32 pass's conversions)."""
    try:
        return max(0, int(os.environ.get("LIGHTNETS_TFLITE_CACHE_MB", "256"))) << 20
    except ValueError:
        return 256 << 20


class _BufferCache:
    """The flat buffers converted in this process, by (graph, float32 weights, options), least recently used
    dropped past ``limit`` bytes: a float64 model of the same graph and weights (float32 inside) is not
    converted twice (the parity worker builds both)."""

    def __init__(self, limit: int | None = None):
        self.limit, self.items = _cache_limit() if limit is None else limit, {}

    def get(self, key):
        buf = self.items.pop(key, None)
        if buf is not None:
            self.items[key] = buf
        return buf

    def put(self, key, buf: bytes) -> None:
        self.items[key] = buf
        while sum(map(len, self.items.values())) > self.limit and len(self.items) > 1:
            self.items.pop(next(iter(self.items)))


_CACHE = _BufferCache()


# --- the model ------------------------------------------------------------------------------------------
class TFLiteModel(CompiledModel):
    """A lightnets graph and its canonical weights, run as a TFLite flat buffer (converted on first use).

    ``quantize="int8"`` with ``calibration`` (NCHW images) makes the int8 model (float32 input/output);
    ``static_hw`` fixes the flat buffer's height/width to the graph's. ``lean``: an inference-form graph's concats in
    pieces (``convert``): None (default) when it runs but not in a written file (which then builds back node for
    node), True in both, False in neither. ``flat_buffer()`` gives the bytes.
    """

    DTYPES = DTYPES

    def __init__(self, graph: Graph, dtype: str = "float32", quantize: str | None = None,
                 calibration: np.ndarray | None = None, static_hw: bool = False, lean: bool | None = None):
        super().__init__(graph, dtype)
        if quantize is not None and quantize not in QUANTIZE:
            raise LightnetsError(f"quantize={quantize!r} is not supported; use None (float32) or one of {QUANTIZE}")
        self.quantize, self.static_hw, self.lean = quantize, static_hw, lean
        self.calibration = None if calibration is None else np.asarray(calibration, np.float32)
        self.threads = _default_threads()
        self._buffers: dict[bool, bytes] = {}
        self._runners: dict[bool, Runner] = {}

    def __repr__(self) -> str:
        kind = "int8 (float32 I/O)" if self.quantize else f"float32 (as {self.dtype})"
        return f"<TFLiteModel {self.graph.name!r} {kind}, {len(self.graph.nodes)} nodes>"

    def flat_buffer(self, return_all: bool = False) -> bytes:
        if return_all not in self._buffers:
            w32 = {k: np.asarray(v, np.float32) for k, v in self.weights.items()}
            calib = None if self.calibration is None else W.digest({"calibration": self.calibration})
            key = (self.graph.to_json(), W.digest(w32), return_all, self.quantize, calib, self.static_hw, self.lean)
            buf = _CACHE.get(key)
            if buf is None:
                buf = convert(self.graph, w32, return_all, self.quantize, self.calibration, self.static_hw,
                              self.lean is not False)
                _CACHE.put(key, buf)
            self._buffers[return_all] = buf
        return self._buffers[return_all]

    def runner(self, return_all: bool = False) -> Runner:
        if return_all not in self._runners:
            self._runners[return_all] = Runner(self.flat_buffer(return_all), self.threads)
        return self._runners[return_all]

    def invalidate(self) -> None:
        self._buffers.clear()
        self._runners.clear()


# --- int8 ---------------------------------------------------------------------------------------------
def quantize_int8(model: TFLiteModel, calibration: np.ndarray) -> TFLiteModel:
    """The int8 model of ``model``'s graph and weights, calibrated on the NCHW images ``calibration``."""
    check_input(model.graph, np.asarray(calibration))
    q = TFLiteModel(model.graph, "float32", "int8", calibration, model.static_hw)
    q.weights = {k: np.asarray(v, np.float32) for k, v in model.weights.items()}
    return q


def _flat_buffer_of(model) -> bytes:
    """The bytes of a TFLite model given as a TFLiteModel, bytes or a path."""
    if isinstance(model, TFLiteModel):
        return model.flat_buffer()
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        return Backend.existing(model).read_bytes()
    raise LightnetsError(f"{type(model).__name__} is not a TFLite model (a TFLiteModel, .tflite bytes or path)")


# --- the backend object -------------------------------------------------------------------------------
class TFLiteBackend(InferenceRuntime):
    """TFLite: keras models converted by the TFLite converter, run by the LiteRT interpreter; inference only
    (float32 kernels: ``computes_float64`` is False)."""

    def float32_output(self, graph, weights, x):
        """The float32 keras model a flat buffer of ``graph`` is converted from, run on ``x``: the same float32
        rounding as the converted file without a conversion (~20 s a net) per import probe."""
        from lightnets.frameworks import load_backend

        kb = load_backend("keras")
        if graph.multi_output:  # keras_model's named-outputs wrapper carries no graph: the keras model itself
            _tensorflow()
            model = kb.build(graph, "float32")
            kb.set_weights(model, {k: np.asarray(v, np.float32) for k, v in weights.items()})
            return kb.run(model, np.asarray(x, np.float32))
        return kb.run(keras_model(graph, weights), np.asarray(x, np.float32))

    name = "tflite"
    FORMATS = {"tflite": ".tflite"}
    # canonical weights are kept as they are (the flat buffer's are converted from them, not stored back)
    NATIVE_NAMES = {"conv2d": {"weight": "weight", "bias": "bias"},
                    "depthwise_conv2d": {"weight": "weight", "bias": "bias"},
                    "linear": {"weight": "weight", "bias": "bias"},
                    "batch_norm": {"gamma": "gamma", "beta": "beta", "mean": "mean", "var": "var"}}

    model_class = TFLiteModel

    def build(self, graph: Graph, dtype: str = "float32") -> TFLiteModel:
        """The TFLite model of ``graph`` (float32 compute; ``dtype`` is the weights' and outputs' dtype)."""
        _tensorflow()  # fail now, not at the first run, when the converter cannot work here
        return TFLiteModel(graph, dtype)

    def run(self, model: TFLiteModel, x: np.ndarray, return_all: bool = False):
        """Eval forward of the NCHW numpy batch ``x`` (outputs in the model's dtype, computed in float32 or
        int8); ``return_all`` gives every node's output by node name."""
        x = np.asarray(x)
        check_input(model.graph, x)  # also: the graph has a valid output at x's height/width
        runner = model.runner(return_all)
        outs = runner(to_nhwc(x, np.float32))
        dtype = DTYPES[model.dtype]
        if return_all:
            return {n.name: to_nchw(outs[n.name], dtype) for n in model.graph.nodes}
        if model.graph.multi_output:  # a backbone: the list of its outputs, by name
            return [to_nchw(outs[o], dtype) for o in model.graph.outputs]
        return to_nchw(outs[runner.output_names[0]], dtype)
    quantize_int8 = staticmethod(quantize_int8)

    def read_artifact(self, path):
        return tflite_file.read_artifact(path, lambda flat_buffer: make_interpreter(flat_buffer, _default_threads()))

    # native I/O
    def _read(self, path: Path, fmt):
        raise FileFormatError(f"{path}: a .tflite file holds converted weights (batch norms folded into the convs, "
                              "NHWC kernels), not a state dict; import it with lightnets.port(file, to=...) or "
                              "lightnets.build(file), which match its ops onto the model id")

    def _write(self, model, path, fmt):
        if isinstance(model, TFLiteModel) and model.lean is None and model.quantize is None:  # builds back node by node
            kept = TFLiteModel(model.graph, model.dtype, static_hw=model.static_hw, lean=False)
            self.set_weights(kept, model.weights)
            model = kept
        Path(path).write_bytes(_flat_buffer_of(model))

    def _file_state_dict(self, model):
        raise LightnetsError(f"{type(model).__name__} is not a lightnets TFLiteModel; a .tflite file's weights do "
                             "not map back to canonical weights")

    def forward(self, model, x):
        """Eval forward of a TFLiteModel, or of a ``.tflite`` file (path or bytes), on NCHW ``x``: an integer-input
        file is fed quantized images and gives dequantized outputs, a fixed-batch file runs its batch at a time, a
        file with several outputs gives the list of them in the flat buffer's order."""
        if self.owns(model):
            return self.run(model, x)
        x = np.asarray(x)
        buf = _flat_buffer_of(model)
        try:
            interpreter = make_interpreter(buf, _default_threads())
        except Exception as e:  # noqa: BLE001 -- flatbuffers and the interpreter raise their own
            raise tflite_file.unreadable(model if isinstance(model, (str, os.PathLike)) else "the flat buffer",
                                         ".tflite", e) from None
        sig = interpreter.get_input_details()[0].get("shape_signature")
        batch = int(sig[0]) if sig is not None and len(sig) and sig[0] > 0 else None
        where = Path(model) if isinstance(model, (str, os.PathLike)) else "the flat buffer"
        # fixed batch, integer I/O, errors named
        y = tflite_file.file_runner(interpreter, where, batch)(to_nhwc(x, np.float32))
        return [to_nchw(v, np.float32) for v in y] if isinstance(y, list) else to_nchw(y, np.float32)

    def _cast_native(self, model, dtype):
        raise LightnetsError(f"cannot cast a {type(model).__name__}; TFLite files are float32 (or int8): build a "
                             "TFLiteModel from the graph and weights instead")

    def _file_bn_eps(self, model):
        raise LightnetsError("a .tflite file has no batch-norm layers (the converter folds them into the convs)")

    # bench
    def set_threads(self, n):
        _THREADS[:] = [int(n)]

    def timed_call(self, model):
        model.threads = _default_threads()
        model._runners.clear()
        return _timed(model.runner(False))

    def timed_export(self, model, size: int, work: Path):
        """``(to_input, call)`` of a keras model converted as its users convert it
        (``tf.lite.TFLiteConverter.from_keras_model``) and run in LiteRT: the bench's zoo twin in this runtime."""
        tf, _ = _tensorflow()
        return _timed(Runner(bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert()), _default_threads()))


BACKEND = TFLiteBackend()
