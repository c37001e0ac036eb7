"""Reading a foreign .onnx file (torch.onnx, tf2onnx, paddle2onnx exports) into a
:class:`lightnets.artifacts.Artifact`: the Conv / BatchNormalization / Gemm / MatMul nodes in file order with
their canonical weights (constants found through Identity / DequantizeLinear; a zero Pad in front of a conv
folded into its pads; a per-channel Mul/Add after a conv absorbed as its folded batch norm), the input layout
and size, a leading scalar rescaling and a Softmax head. ``lightnets.artifacts`` matches it onto a model id
and probes it in the file's own runtime, which the onnx backend supplies.

Files as users write them: ``torch.onnx.export(model, x, path)`` fixes the batch to 1 (the runs feed one image
at a time); the dynamo exporter (torch 2.14's default) names nodes ``node_Conv_12``, folds batch norms and writes
``Split``/``ReduceMean``; onnxruntime's basic offline optimization reorders parallel branches (the matcher follows
the data flow, ``Artifact.producers``); its fused ops above the basic level (``com.microsoft`` FusedConv) are
refused by name. Every onnxruntime error is re-raised as a ``RuntimeFailure`` (:func:`run_onnx`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lightnets.artifacts import Artifact, Layer, in_batches, then_rescale
from lightnets.errors import FileFormatError, LightnetsError, runtime_failure
from lightnets.layouts import TO_NCHW, TO_NHWC

from . import onnx_int8
from .base import unreadable

# ops without weights that the light CNNs export to (torch.onnx, tf2onnx, paddle2onnx); anything else is refused.
# Resize: a nearest upsample of an attention gate (IR resize_nearest; torch: nearest, asymmetric, floor); the
# probe, which runs the file itself, judges any other mode
WEIGHTLESS = frozenset("""Relu Clip HardSwish HardSigmoid Sigmoid Mul Add Sub Div Neg Max Min GlobalAveragePool
    AveragePool MaxPool ReduceMean Flatten Reshape Transpose Concat Split Slice Gather Shape Unsqueeze Squeeze
    Constant ConstantOfShape Identity Dropout Softmax Pad Cast Range Expand Tile Floor Ceil Equal Where
    ScatterND CastLike Resize CumSum""".split())
# nodes whose outputs are constants when their inputs are (folded on reading, the runtime still computes them)
_FOLDED = frozenset("Constant Shape Expand ConstantOfShape Unsqueeze Squeeze Concat Gather Range".split())
_CONV_LIKE = {"Conv": "conv", "BatchNormalization": "bn", "Gemm": "linear", "MatMul": "linear"}


class _OnnxFile:
    """An onnx graph's constants (initializers, Constant nodes, Identity/DequantizeLinear of constants)
    and producers, for :func:`read_artifact`."""

    def __init__(self, model):
        g = model.graph
        self.const = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.producer, self.users = {}, {}
        for node in g.node:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                self.users.setdefault(i, []).append(node)
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.const[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type == "CastLike" and node.input[0] in self.const:  # dynamo without optimize: dtype kept
                self.const[node.output[0]] = self.const[node.input[0]]
            elif node.op_type in ("Identity", "Cast") and node.input[0] in self.const:
                v = self.const[node.input[0]]
                self.const[node.output[0]] = v if node.op_type == "Identity" else v.astype(
                    helper.tensor_dtype_to_np_dtype(_attrs(node)["to"]))
            elif node.op_type == "DequantizeLinear" and all(i in self.const for i in node.input if i):
                q, scale, *zp = (self.const[i] for i in node.input if i)
                axis = _attrs(node).get("axis", 1)
                shape = [1] * q.ndim
                if np.ndim(scale):
                    shape[axis] = -1
                zero = zp[0].astype(np.float64).reshape(shape) if zp else 0.0
                self.const[node.output[0]] = ((q.astype(np.float64) - zero) * scale.reshape(shape)).astype(np.float32)
                self.dequantized = True
            elif node.op_type in _FOLDED and all(i in self.const for i in node.input if i):
                self._fold(node)

    dequantized = False

    def _fold(self, node) -> None:
        """Evaluate a shape-computing node of constants (``onnx.reference``): torch's dynamo exporter without its
        optimizer writes a zero conv bias as Expand(CastLike(0), Shape(weight)), Constant(value_ints), ..."""
        from onnx.reference import ReferenceEvaluator

        try:
            outs = ReferenceEvaluator(node).run(None, {i: self.const[i] for i in node.input if i})
        except Exception:  # noqa: BLE001 -- not foldable here: the node stays a runtime op
            return
        for name, v in zip(node.output, outs, strict=False):
            self.const[name] = np.asarray(v)

    def value(self, name: str, node, what: str) -> np.ndarray:
        if name not in self.const:
            raise FileFormatError(f"{node.op_type} node {node.name!r}: its {what} {name!r} is not a constant; "
                                  "lightnets imports files whose weights are initializers")
        return np.asarray(self.const[name])


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv_layer(f: _OnnxFile, node) -> Layer:
    a = _attrs(node)
    w = f.value(node.input[1], node, "weight")
    tensors = {"weight": w}
    if len(node.input) > 2 and node.input[2]:
        tensors["bias"] = f.value(node.input[2], node, "bias")
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        raise FileFormatError(f"Conv {node.name!r} is dilated {a['dilations']}; the light CNNs have no dilated convs")
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    x = node.input[0]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if auto == "SAME_LOWER":
            raise FileFormatError(f"Conv {node.name!r} pads SAME_LOWER; TF 'same' is SAME_UPPER")
        padding, pads = "same", (0, 0, 0, 0)
    else:
        t, l, b, r = a.get("pads", [0, 0, 0, 0])
        padding, pads = "explicit", (t, b, l, r)
        src, nhwc = f.producer.get(x), False
        if src is not None and src.op_type == "Transpose" and tuple(_attrs(src).get("perm", ())) == TO_NCHW:
            src, nhwc = f.producer.get(src.input[0]), True  # tf2onnx: NHWC Pad -> Transpose -> Conv
        if src is not None and src.op_type == "Pad":
            extra = _zero_pad(f, src, nhwc)
            pads = tuple(p + e for p, e in zip(pads, extra, strict=True))
            x = src.input[0]
    attrs = {"stride": tuple(a.get("strides", [1, 1])), "groups": int(a.get("group", 1)), "padding": padding,
             "pads": pads}
    out = _absorb_affine(f, tensors, node.output[0])
    return Layer(node.name, node.op_type, "conv", tensors, attrs, (x,), out)


def _absorb_affine(f: _OnnxFile, tensors: dict, out: str) -> str:
    """Fold the per-channel Mul/Add/Sub by constants that alone follow a conv (tf2onnx writes a keras batch norm
    as ``conv * scale + shift``, NCHW or behind a Transpose to NHWC) into its weight and bias; the tensor after
    them. Scalars are not absorbed (hardswish's ``x + 3`` is not a bias)."""
    c = tensors["weight"].shape[0]
    w, b = tensors["weight"].astype(np.float64), np.asarray(tensors.get("bias", np.zeros(c)), np.float64)
    nhwc, changed, end = False, False, out
    while len(f.users.get(out, [])) == 1:
        node = f.users[out][0]
        if node.op_type == "Transpose" and tuple(_attrs(node).get("perm", ())) in (TO_NHWC, TO_NCHW):
            nhwc, out = tuple(_attrs(node)["perm"]) == TO_NHWC, node.output[0]
            continue
        other = [i for i in node.input if i != out]
        if node.op_type not in ("Mul", "Add", "Sub") or len(other) != 1 or other[0] not in f.const:
            break
        v = np.asarray(f.const[other[0]], np.float64)
        per_channel = {(c,), (1, c), (1, 1, c), (1, 1, 1, c)} if nhwc else {(c, 1, 1), (1, c, 1, 1)}
        if c == 1 or v.shape not in per_channel or (node.op_type == "Sub" and node.input[0] != out):
            break
        v = v.reshape(c)
        if node.op_type == "Mul":
            w, b = w * v.reshape(-1, 1, 1, 1), b * v
        else:
            b = b + (v if node.op_type == "Add" else -v)
        out = end = node.output[0]
        changed = True
    if changed:
        tensors["weight"], tensors["bias"] = w.astype(tensors["weight"].dtype), b.astype(tensors["weight"].dtype)
    return end


def _zero_pad(f: _OnnxFile, node, nhwc: bool) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a constant zero Pad over the spatial axes of an NCHW (or NHWC) tensor."""
    a = _attrs(node)
    mode = a.get("mode", b"constant")
    pads = a.get("pads") or list(f.value(node.input[1], node, "pads"))
    value = float(f.value(node.input[2], node, "value")) if len(node.input) > 2 and node.input[2] else 0.0
    h, w = (1, 2) if nhwc else (2, 3)
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant" or value != 0 or len(pads) != 8 or \
            any(pads[i] for i in range(8) if i % 4 not in (h, w)):
        raise FileFormatError(f"Pad node {node.name!r} ({mode}, value {value}, pads {list(pads)}) is not a zero pad of "
                              "height/width in front of a conv; lightnets imports zero padding only")
    return int(pads[h]), int(pads[h + 4]), int(pads[w]), int(pads[w + 4])


def _linear_layer(f: _OnnxFile, node) -> Layer:
    a = _attrs(node)
    if node.op_type == "Gemm":
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise FileFormatError(f"Gemm {node.name!r} has transA/alpha/beta {a}; lightnets imports y = x W^T + b")
        w = f.value(node.input[1], node, "weight")
        tensors = {"weight": w if a.get("transB", 0) else w.T}
        if len(node.input) > 2 and node.input[2]:
            tensors["bias"] = f.value(node.input[2], node, "bias")
        return Layer(node.name, "Gemm", "linear", tensors, {}, (node.input[0],), node.output[0])
    w = f.value(node.input[1], node, "weight")  # MatMul x @ W: (in, out)
    out, tensors = node.output[0], {"weight": w.T}
    users = f.users.get(out, [])
    if len(users) == 1 and users[0].op_type == "Add":
        other = [i for i in users[0].input if i != out][0]
        if other in f.const and np.ndim(f.const[other]) == 1:
            tensors["bias"], out = np.asarray(f.const[other]), users[0].output[0]
    return Layer(node.name, "MatMul", "linear", tensors, {}, (node.input[0],), out)


def _bn_layer(f: _OnnxFile, node) -> Layer:
    names = ("gamma", "beta", "mean", "var")
    tensors = {k: f.value(i, node, k) for k, i in zip(names, node.input[1:5], strict=True)}
    return Layer(node.name, node.op_type, "bn", tensors, {"eps": float(_attrs(node).get("epsilon", 1e-5))},
                 (node.input[0],), node.output[0])


def _rescaling(f: _OnnxFile, g, x: str) -> tuple[tuple[float, float] | None, str]:
    """Leading Mul/Div/Add/Sub of the input by scalars (through Transposes): ((scale, offset), the tensor
    after them)."""
    rescaling = (1.0, 0.0)
    while len(f.users.get(x, [])) == 1 and f.users[x][0].op_type in ("Mul", "Div", "Add", "Sub", "Transpose"):
        node = f.users[x][0]
        if node.op_type == "Transpose":
            x = node.output[0]
            continue
        other = [i for i in node.input if i != x]
        if (len(other) != 1 or other[0] not in f.const or np.size(f.const[other[0]]) != 1
                or (node.op_type in ("Sub", "Div") and node.input[0] != x)):
            break
        rescaling = then_rescale(rescaling, node.op_type.lower(), float(np.asarray(f.const[other[0]]).reshape(())))
        x = node.output[0]
    return (rescaling if rescaling != (1.0, 0.0) else None), x


def read_artifact(path, session_of) -> Artifact:
    """A foreign .onnx file as a :class:`lightnets.artifacts.Artifact` (weights canonical, file order);
    ``session_of(model_bytes)`` is the ONNX Runtime session that runs the file (``Artifact.run``)."""
    path = Path(path)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 -- protobuf/checker raise their own errors on bad bytes
        raise unreadable(path, ".onnx", e) from None
    runs, qdq = model, None
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") or n.op_type.startswith(onnx_int8.QUANTIZED_OPS)
           for n in model.graph.node):  # an int8 file (QDQ, or QOperator): its float graph read, the file run
        onnx_int8.check_int8(model, path.name, qoperator=True)
        qdq = model
        model = onnx_int8.dequantized_view(model) if not onnx_int8.is_qoperator(model) else \
            onnx_int8.qoperator_view(model)
    f, g = _OnnxFile(model), model.graph
    unknown = [n for n in g.node if n.op_type not in WEIGHTLESS and n.op_type not in _CONV_LIKE
               and n.op_type != "DequantizeLinear"]
    if unknown:
        n = unknown[0]
        fused = (f" - an onnxruntime fused op (domain {n.domain}), written by its graph optimizer above the basic "
                 "level: import the file before that optimization, or one saved with "
                 "GraphOptimizationLevel.ORT_ENABLE_BASIC") if n.domain == "com.microsoft" else ""
        raise FileFormatError(f"{path.name}: unsupported ONNX op {n.op_type} (node {n.name!r}, one of {len(unknown)} "
                              f"such nodes{fused}); lightnets imports the light CNNs' ops (Conv, BatchNormalization, "
                              "Gemm, MatMul and weightless activations, pools, shape ops)")
    inputs = [i for i in g.input if i.name not in f.const]
    if len(inputs) != 1:
        raise FileFormatError(f"{path.name} has {len(inputs)} inputs; lightnets imports single-image-input nets")
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise FileFormatError(f"{path.name}: input {inputs[0].name!r} has {len(dims)} dims, not 4 (an image batch)")
    layout = "NHWC" if dims[3] in (1, 3) and dims[1] not in (1, 3) else "NCHW"
    hw = tuple(dims[1:3]) if layout == "NHWC" else tuple(dims[2:4])
    rescaling, _ = _rescaling(f, g, inputs[0].name)
    readers = {"conv": _conv_layer, "bn": _bn_layer, "linear": _linear_layer}
    layers = tuple(readers[_CONV_LIKE[n.op_type]](f, n) for n in g.node if n.op_type in _CONV_LIKE
                   and not (n.op_type == "MatMul" and n.input[1] not in f.const))
    last = f.producer.get(g.output[0].name)
    activation = "softmax" if last is not None and last.op_type == "Softmax" else "linear"
    elem = inputs[0].type.tensor_type.elem_type
    dtype = np.float64 if elem == TensorProto.DOUBLE else np.float32
    name, batch = inputs[0].name, dims[0]
    shown = "x".join(str(d or "?") for d in dims)
    try:
        session = session_of(runs.SerializeToString())
    except Exception as e:  # noqa: BLE001 -- onnxruntime raises its own exception types
        raise runtime_failure(path, "onnxruntime", name, dims, e, "the file passes the onnx checker but ONNX Runtime "
                              "cannot load it; re-export it for the default ai.onnx domain at an opset ONNX Runtime "
                              "supports (or run it through onnxruntime's own optimizer first)") from None

    def run_file(x):
        return in_batches(lambda xb: run_onnx(session, path, name, shown, xb, dtype), np.asarray(x), batch)
    quantized = "weights stored quantized (DequantizeLinear): dequantized on import" if f.dequantized else None
    if qdq is not None:
        kind = "QOperator (QLinearConv...)" if onnx_int8.is_qoperator(qdq) else "QDQ (QuantizeLinear/DequantizeLinear)"
        quantized = (f"{kind} int8 file: int8 weights dequantized on import (per-channel scales; int32 biases at "
                     "input x weight scale), activations quantized per tensor in the file")
    return Artifact(str(path), "onnx", layers, layout, hw if None not in hw else None, rescaling, activation,
                    quantized, (), run_file, None if qdq is None else onnx_int8.input_range(qdq, name), batch=batch,
                    outputs=len(g.output), producers=_producers(f, g, name))


def _producers(f: _OnnxFile, g, image: str) -> dict:
    """tensor -> the non-constant inputs of the node that makes it; the image input -> None."""
    out = {o: tuple(i for i in n.input if i and i not in f.const) for n in g.node for o in n.output}
    return {**out, image: None}


def run_onnx(session, path, name: str, shown: str, x: np.ndarray, dtype=np.float32):
    """One ONNX Runtime call of a file's session on ``x`` (its output, or the list of its outputs); the runtime's
    errors re-raised as a RuntimeFailure naming the file, the input tensor, its shape in the file and the fix."""
    try:
        outs = session.run(None, {name: np.ascontiguousarray(x, dtype)})
    except LightnetsError:
        raise
    except Exception as e:  # noqa: BLE001 -- onnxruntime raises its own exception types
        raise runtime_failure(path, "onnxruntime", name, np.shape(x), e,
                              f"the file's input is {shown}: feed float32 images of that shape; a file that fixes its "
                              "batch inside (e.g. a Reshape to [1, ...]) under a dynamic input batch needs its input "
                              "batch fixed as well (torch.onnx.export without dynamic_axes), which lightnets then "
                              "feeds one chunk at a time") from None
    return outs[0] if len(outs) == 1 else list(outs)
