"""QDQ int8 ONNX: a lightnets graph quantized by ``onnxruntime.quantization.quantize_static``, and the tensors of a QDQ
file kept and mapped onto a lightnets graph (the ONNX Runtime side of the per-layer int8 locator,
:mod:`lightnets.int8`; ``backends/tflite_int8.py`` is the LiteRT side).

Quantizing (:func:`quantize_qdq`): the float32 ONNX model emitted from the IR at its build size, its batch norms
folded into the convs by ONNX Runtime's basic offline optimization (``quantize_static``'s own pre-processing step:
the quantizer does not fold them, and a BatchNormalization between a conv and its activation would keep its own
quantized output), then ``quantize_static`` with ``QuantFormat.QDQ``, ``per_channel=True`` and the quantizer's other
defaults: weights int8 symmetric per output channel (scale = max |w| / 127), activations int8 asymmetric per tensor
with min/max calibration (the range always holds 0), biases int32 at input scale x weight scale. The quantizer drops
a Relu / Clip(0, 6) that follows a quantized op (the output's range does the clipping), and renames that op's output
after the activation's: a quantized tensor carries the name of the LAST graph node whose output it holds, as a TFLite
file's fused op does.

Locating (:func:`node_tensors`): every activation ``QuantizeLinear -> DequantizeLinear`` pair of the file quantizes
one tensor; the QuantizeLinear outputs are added as graph outputs and the file is run once: the integer values
(dequantized in float64, as LiteRT's are), scale and zero point of every tensor named after a graph node (or
``input``); a file of another exporter (torch.onnx's ``/features/features.1/.../Clip_output_0``) is mapped through
the graph's structure instead (:func:`structural_names`). A quantized tensor that is a graph output is not fused
into ONNX Runtime's integer kernels (QLinearConv...): the kept run computes each quantized op in float32 from
dequantized inputs and rounds its output in QuantizeLinear (round half to even), which is the QDQ format's
definition; :func:`traced_vs_fused` measures how far that is from the fused run (on this AVX2 host without VNNI: tens
to ~150 output steps on 64 px nets, see docs/design.md §6).

Every int8 input this module cannot read is refused by name (:func:`check_int8`): activations of another integer
type (int16: ``activation_type=QInt16``), float16 weights, and quantized operators that are not QDQ pairs
(``QuantFormat.QOperator``'s QLinearConv, ConvInteger, com.microsoft QLinear* ...).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lightnets.errors import FileFormatError, LightnetsError
from lightnets.graph import INPUT, Graph

from .onnx import OnnxModel, make_session
from .onnx_export import to_onnx
from .tflite_int8 import QuantTensor

# quantized operators other than the QDQ pair (QuantFormat.QOperator, dynamic quantization, contrib ops)
QUANTIZED_OPS = ("QLinear", "ConvInteger", "MatMulInteger", "DynamicQuantize", "QGemm", "QAttention", "QEmbed")
CALIBRATION_CHUNK = 8  # images per calibration batch fed to the quantizer (min/max does not depend on it)


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _consts(model) -> dict[str, onnx.TensorProto]:
    out = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = n.attribute[0].t
    return out


def check_int8(model, where: str, qoperator: bool = False) -> None:
    """LightnetsError naming the tensor and op of the first int8 input of ``model`` (an onnx.ModelProto) that the
    QDQ reader (``qoperator``: the importer, which also reads :data:`_QOPERATOR`'s ops) cannot take; ``where`` names
    the file."""
    consts = _consts(model)
    for n in model.graph.node:
        if qoperator and n.op_type in _QOPERATOR:
            continue
        if n.op_type.startswith(QUANTIZED_OPS) or (n.domain == "com.microsoft" and "Quant" in n.op_type):
            known = "the QOperator ops " + ", ".join(_QOPERATOR) if qoperator else "QDQ files"
            raise FileFormatError(f"{where}: quantized operator {n.op_type} (node {n.name!r}, output {n.output[0]!r}) "
                                  f"is not a QuantizeLinear/DequantizeLinear pair (QOperator format or dynamic "
                                  f"quantization), and lightnets reads {known} here: quantize the float model with "
                                  "onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ)")
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            dtype = zp.data_type if zp is not None else TensorProto.UINT8
            weight = n.op_type == "DequantizeLinear" and n.input[0] in consts
            if dtype not in (TensorProto.INT8, TensorProto.UINT8) and not (weight and dtype == TensorProto.INT32):
                kind = TensorProto.DataType.Name(dtype).lower()
                what = "weights" if weight else "activations"
                raise FileFormatError(f"{where}: {n.op_type} node {n.name!r} quantizes tensor {n.input[0]!r} to "
                                      f"{kind} ({what}); the int8 reader takes int8/uint8 activations and weights "
                                      "(int32 biases): quantize with activation_type/weight_type QuantType.QInt8 or "
                                      "QUInt8")
    for i in model.graph.initializer:
        if i.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
            user = next((n for n in model.graph.node if i.name in n.input), None)
            op = f"{user.op_type} node {user.name!r}" if user is not None else "no node"
            raise FileFormatError(f"{where}: weight {i.name!r} (read by {op}) is stored as "
                                  f"{TensorProto.DataType.Name(i.data_type).lower()}, not int8: a float16 model is "
                                  "not an int8 one; quantize the float32 model with quantize_static (QDQ), or import "
                                  "the float file")


class _Pair:
    """A QuantizeLinear -> DequantizeLinear pair of an activation: the tensor it quantizes, its DequantizeLinear
    output, scale, zero point and integer type."""

    def __init__(self, q, dq, consts):
        self.source, self.q_out, self.dq_out, self.op_q = q.input[0], q.output[0], dq.output[0], q
        self.scale = float(numpy_helper.to_array(consts[q.input[1]]).reshape(()))
        zp = numpy_helper.to_array(consts[q.input[2]]) if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
        self.zero_point, self.dtype = int(zp.reshape(())), zp.dtype.type


def activation_pairs(model) -> list[_Pair]:
    """The activation QDQ pairs of ``model`` in node order (a per-channel or non-constant scale is refused)."""
    consts = _consts(model)
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    pairs = []
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in consts:
            continue
        if q.input[1] not in consts or np.size(numpy_helper.to_array(consts[q.input[1]])) != 1:
            raise FileFormatError(f"QuantizeLinear node {q.name!r} quantizes activation {q.input[0]!r} with a "
                                  "per-channel or computed scale; the int8 reader takes per-tensor activation scales "
                                  "(quantize_static's)")
        for dq in users.get(q.output[0], []):
            if dq.op_type == "DequantizeLinear":
                pairs.append(_Pair(q, dq, consts))
                break
    return pairs


def _node_of(pair: _Pair, names: set[str]) -> str | None:
    """The graph node (or ``input``) whose output a pair quantizes: its source tensor, else (a graph output) the
    DequantizeLinear output that took the node's name."""
    for t in (pair.source, pair.source.removesuffix("_QuantizeLinear_Input"), pair.dq_out):
        if t in names:
            return t
    return None


def _fused(graph: Graph, node: str, quantized: set[str]) -> tuple[str, ...]:
    """The graph nodes computed between ``node``'s quantized inputs and ``node`` (itself included), graph order."""
    if node == INPUT:
        return (INPUT,)
    seen, stack = set(), [node]
    while stack:
        v = stack.pop()
        if v in seen or v == INPUT:
            continue
        seen.add(v)
        stack += [i for i in graph.node(v).inputs if i not in quantized]
    return tuple(n.name for n in graph.nodes if n.name in seen)


def node_tensors(model_bytes: bytes, graph: Graph, x_nchw: np.ndarray, where: str = "the QDQ model"
                 ) -> dict[str, QuantTensor]:
    """Run the QDQ ONNX model (its bytes) on the NCHW batch ``x_nchw`` with every activation's DequantizeLinear
    output kept: ``{node: QuantTensor}`` for every graph node (and ``input``) whose output a QDQ pair quantizes."""
    model = onnx.load_from_string(bytes(model_bytes))
    check_int8(model, where)
    names = {INPUT, *(n.name for n in graph.nodes)}
    pairs = [(p, _node_of(p, names)) for p in activation_pairs(model)]
    pairs = [(p, node) for p, node in pairs if node is not None]
    if not pairs:  # another exporter's tensor names: map them through the graph's structure
        by_structure = structural_names(model, graph, where)
        pairs = [(p, by_structure.get(p.source) or by_structure.get(p.dq_out)) for p in activation_pairs(model)]
        pairs = [(p, node) for p, node in pairs if node is not None]
        seen: set[str] = set()
        pairs = [(p, node) for p, node in pairs if not (node in seen or seen.add(node))]  # one tensor per node
    if not pairs:
        raise LightnetsError(f"{where} quantizes no tensor that maps onto a node of graph {graph.name!r} (by the node "
                             "names lightnets' ONNX export writes, or through the graph's convs and data flow): is it "
                             "a QDQ file of that graph? Export the float model with `lightnets export ... --to onnx "
                             "--quantize int8`, or quantize lightnets' float ONNX export with quantize_static(..., "
                             "quant_format=QuantFormat.QDQ)")
    inp = model.graph.input[0]
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise LightnetsError(f"the int8 locator feeds float32 images; {where} takes "
                             f"{helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type).name} input")
    have = {o.name for o in model.graph.output}
    for p, _ in pairs:
        if p.q_out not in have:
            model.graph.output.append(helper.make_empty_tensor_value_info(p.q_out))
            have.add(p.q_out)
    sess = make_session(model.SerializeToString())
    outs = dict(zip([o.name for o in sess.get_outputs()],
                    sess.run(None, {inp.name: np.ascontiguousarray(x_nchw, np.float32)}), strict=True))
    shapes = graph.shapes_at(*np.shape(x_nchw)[2:])
    pairs = [(p, node) for p, node in pairs  # a tensor of another shape (a reshape the graph writes otherwise)
             if tuple(np.shape(outs[p.q_out])[1:]) == tuple(shapes[node] if node != INPUT else graph.input_shape)]
    quantized = {node for _, node in pairs}
    out: dict[str, QuantTensor] = {}
    for p, node in pairs:
        info = np.iinfo(p.dtype)
        op = "QuantizeLinear" if node == INPUT else next(
            (n.op_type for n in model.graph.node if p.source in n.output), "?")
        values = (outs[p.q_out].astype(np.float64) - p.zero_point) * p.scale  # as LiteRT's are read
        out[node] = QuantTensor(node, _fused(graph, node, quantized), op, values, p.scale, p.zero_point,
                                int(info.min), int(info.max))
    return out


def graph_ranges(model_bytes: bytes, graph: Graph) -> dict[str, list[float]]:
    """``{node: [lo, hi]}``: the float range each quantized node output represents (its scale and zero point)."""
    model = onnx.load_from_string(bytes(model_bytes))
    names = {INPUT, *(n.name for n in graph.nodes)}
    out = {}
    for p in activation_pairs(model):
        node = _node_of(p, names)
        if node is not None:
            info = np.iinfo(p.dtype)
            out[node] = [round((info.min - p.zero_point) * p.scale, 6), round((info.max - p.zero_point) * p.scale, 6)]
    return out


def _reader(calibration: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class Images(CalibrationDataReader):
        def __init__(self):
            self.it = iter(range(0, len(calibration), CALIBRATION_CHUNK))

        def get_next(self):
            i = next(self.it, None)
            return None if i is None else {INPUT: np.ascontiguousarray(calibration[i: i + CALIBRATION_CHUNK],
                                                                       np.float32)}
    return Images()


def quantize_qdq(graph: Graph, weights, calibration: np.ndarray, quant_format: str = "QDQ") -> onnx.ModelProto:
    """The QDQ int8 ONNX model of ``graph`` with ``weights``, calibrated on the NCHW images ``calibration`` (see the
    module doc); its metadata_props and doc_string are the float export's. ``quant_format="QOperator"``: the same
    quantization written as QLinearConv... (what the importer reads too)."""
    import logging

    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, quantize_static

    float_model = to_onnx(graph, weights, "float32", dynamic_hw=False, lean=False)  # every node, for the ranges
    with tempfile.TemporaryDirectory(prefix="lightnets-qdq-") as tmp:
        src, folded, out = (str(Path(tmp) / n) for n in ("float.onnx", "folded.onnx", "qdq.onnx"))
        onnx.save(float_model, src)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # folds BN into the conv
        so.optimized_model_filepath = folded
        so.log_severity_level = 3
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer warns on the root logger ("consider pre-processing")
        try:
            quantize_static(folded, out, _reader(np.asarray(calibration)), quant_format=QuantFormat[quant_format],
                            per_channel=True)
        finally:
            root.setLevel(level)
        q = onnx.load(out)
    q.graph.doc_string = float_model.graph.doc_string
    del q.metadata_props[:]
    q.metadata_props.extend(float_model.metadata_props)
    return q


class QDQModel(OnnxModel):
    """A lightnets graph and its canonical weights as a QDQ int8 ONNX model (:func:`quantize_qdq`, on first use),
    run by ONNX Runtime; ``calibration``: the NCHW images it is calibrated on."""

    def __init__(self, graph: Graph, calibration: np.ndarray):
        super().__init__(graph, "float32")
        self.quantize, self.calibration = "int8", np.asarray(calibration, np.float32)
        self._qdq = None

    def __repr__(self) -> str:
        return f"<QDQModel {self.graph.name!r} int8, {len(self.graph.nodes)} nodes>"

    def proto(self, return_all: bool = False, dynamic_hw: bool | None = None, lean: bool | None = None):
        """The QDQ file (quantized from the node-for-node float graph: ``lean`` does not apply)."""
        if return_all:
            raise LightnetsError("a QDQ model keeps its quantized tensors, not every node's float output: use "
                                 "lightnets.backends.onnx_int8.node_tensors")
        if self._qdq is None:
            self._qdq = quantize_qdq(self.graph, self.weights, self.calibration)
        return self._qdq

    def model_bytes(self) -> bytes:
        return self.proto().SerializeToString()

    def invalidate(self) -> None:
        super().invalidate()
        self._qdq = None


def traced_vs_fused(model_bytes: bytes, graph: Graph, x_nchw: np.ndarray) -> float:
    """max |kept run's output - plain run's output| in quantization steps of the output: how far the run that keeps
    every tensor (float32 op + QuantizeLinear per quantized op) is from ONNX Runtime's fused integer kernels."""
    plain = make_session(bytes(model_bytes))
    y = plain.run(None, {plain.get_inputs()[0].name: np.ascontiguousarray(x_nchw, np.float32)})[0]
    t = node_tensors(model_bytes, graph, x_nchw)
    last = t.get(graph.output_names[0])
    if last is None:
        raise LightnetsError(f"the QDQ model of {graph.name!r} does not quantize its output")
    return float(np.abs(np.asarray(y, np.float64) - last.values).max() / last.scale)


def is_qdq(path_or_bytes) -> bool:
    """Whether an .onnx file (path or bytes) holds QuantizeLinear/DequantizeLinear or other quantized operators."""
    model = onnx.load_from_string(bytes(path_or_bytes)) if isinstance(path_or_bytes, (bytes, bytearray)) else \
        onnx.load(str(path_or_bytes))
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") or n.op_type.startswith(QUANTIZED_OPS)
               for n in model.graph.node)


def locate_model(model: QDQModel, x: np.ndarray) -> dict:
    """:func:`lightnets.int8.locate` on a :class:`QDQModel` and the NCHW images ``x``: its graph, the weights it was
    quantized from, its tensors."""
    from lightnets import int8

    if not isinstance(model, QDQModel):
        raise LightnetsError(f"{model!r} is not a QDQ int8 model; make one with "
                             "lightnets.export.to_onnx_int8(source, calibration)")
    return int8.locate(model.graph, model.weights, x, node_tensors(model.model_bytes(), model.graph, x))


def dequantized_view(model):
    """A copy of the QDQ ``model`` without its activation QuantizeLinear -> DequantizeLinear pairs (each reader of a
    DequantizeLinear output reads the quantized tensor itself; a pair at a graph output renames its tensor): the
    float graph the file computes, its weights still behind their DequantizeLinear nodes. The importer reads its
    structure; the file itself runs."""
    view = onnx.ModelProto()
    view.CopyFrom(model)
    pairs = activation_pairs(view)
    outputs = {o.name for o in view.graph.output}
    rename: dict[str, str] = {}
    drop: set[str] = set()
    for p in pairs:
        dq = next(n for n in view.graph.node if n.op_type == "DequantizeLinear" and p.dq_out in n.output)
        drop.update((p.op_q.name or p.op_q.output[0], dq.name or dq.output[0]))
        if p.dq_out in outputs:  # the file's output: the quantized tensor takes its name
            rename[p.source] = p.dq_out
        else:
            rename[p.dq_out] = p.source
    for k, v in list(rename.items()):  # chains (a pair's source another pair's output)
        while v in rename and rename[v] != v:
            v = rename[v]
        rename[k] = v
    kept = [n for n in view.graph.node if (n.name or n.output[0]) not in drop]
    for n in kept:
        for seq in (n.input, n.output):
            for i, t in enumerate(seq):
                if t in rename:
                    seq[i] = rename[t]
    del view.graph.node[:]
    view.graph.node.extend(kept)
    return view


def input_range(model, image: str) -> tuple[float, float] | None:
    """The float range the QuantizeLinear of an int8 file's input ``image`` represents (QDQ or QOperator), or None."""
    consts = _consts(model)
    for q in model.graph.node:
        if q.op_type == "QuantizeLinear" and q.input[0] == image and q.input[1] in consts:
            scale = float(numpy_helper.to_array(consts[q.input[1]]).reshape(-1)[0])
            has_zp = len(q.input) > 2 and q.input[2]
            zp = numpy_helper.to_array(consts[q.input[2]]) if has_zp else np.zeros((), np.uint8)
            info, z = np.iinfo(zp.dtype), int(zp.reshape(-1)[0])
            return (info.min - z) * scale, (info.max - z) * scale
    return None


def versions() -> dict:
    """The runtime version an export's report records."""
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


# QOperator ops as their float counterparts: (float op, index of the data inputs in the quantized op's inputs,
# the weight input, the bias input or None), for the importer's view of a QOperator file
_QOPERATOR = {"QLinearConv": ("Conv", (0,), 3, 8), "QGemm": ("Gemm", (0,), 3, 6),
              "QLinearMatMul": ("MatMul", (0,), 3, None),
              "QLinearAdd": ("Add", (0, 3), None, None), "QLinearMul": ("Mul", (0, 3), None, None),
              "QLinearGlobalAveragePool": ("GlobalAveragePool", (0,), None, None),
              "QLinearAveragePool": ("AveragePool", (0,), None, None), "QLinearSigmoid": ("Sigmoid", (0,), None, None),
              "QLinearSoftmax": ("Softmax", (0,), None, None)}


def qoperator_view(model):
    """A QOperator-format ``model`` (``quantize_static(..., quant_format=QuantFormat.QOperator)``) as the float graph
    it computes: each QLinear op its float op on the same tensor names, its int8 weight and int32 bias dequantized
    into new initializers (bias scale = input scale x weight scale), the QuantizeLinear / DequantizeLinear of
    activations Identity. The importer reads its structure; the file itself runs. Other quantized ops are refused by
    name (:func:`check_int8`'s message)."""
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    view = onnx.ModelProto()
    view.CopyFrom(model)
    nodes, inits = [], []

    def dequantized(q: str, scale, zero, name: str, axis: int = 0) -> str:
        w, s, z = consts[q].astype(np.float64), np.asarray(scale, np.float64), np.asarray(zero, np.float64)
        shape = [1] * w.ndim
        if s.size > 1:
            shape[axis] = -1
        inits.append(numpy_helper.from_array(((w - z.reshape(shape)) * s.reshape(shape)).astype(np.float32), name))
        return name

    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] not in consts:
            nodes.append(helper.make_node("Identity", [n.input[0]], list(n.output), name=n.name))
            continue
        if n.op_type not in _QOPERATOR:
            nodes.append(n)
            continue
        op, data, w, b = _QOPERATOR[n.op_type]
        attrs = {k: v for k, v in _attrs(n).items() if k not in ("channels_last", "opset")}
        if _attrs(n).get("channels_last"):
            raise FileFormatError(f"{n.op_type} node {n.name!r} is channels_last; lightnets imports NCHW QOperator "
                                  "files")
        inputs = [n.input[i] for i in data]
        if w is not None:
            if n.input[w] not in consts:
                raise FileFormatError(f"{n.op_type} node {n.name!r}: its weight {n.input[w]!r} is not a constant")
            ws, wz = consts[n.input[w + 1]], consts.get(n.input[w + 2], np.zeros(()))
            inputs.append(dequantized(n.input[w], ws, wz, n.input[w] + "/dequantized", 1 if op == "MatMul" else 0))
            if b is not None and len(n.input) > b and n.input[b]:
                scale = np.asarray(consts[n.input[1]], np.float64) * np.asarray(ws, np.float64)
                inputs.append(dequantized(n.input[b], scale, np.zeros(()), n.input[b] + "/dequantized"))
        nodes.append(helper.make_node(op, inputs, list(n.output), name=n.name, **attrs))
    del view.graph.node[:]
    view.graph.node.extend(nodes)
    view.graph.initializer.extend(inits)
    return view


def is_qoperator(model) -> bool:
    """Whether ``model`` holds QOperator ops (QLinearConv, QGemm...)."""
    return any(n.op_type in _QOPERATOR for n in model.graph.node)


# ONNX ops of a file -> the lightnets op (and activation kind) they compute, for mapping a file's tensors onto nodes
_SAME_OP = {"Add": ("add", None), "Mul": ("mul", None), "Concat": ("concat", None),
            "GlobalAveragePool": ("global_avg_pool", None), "ReduceMean": ("global_avg_pool", None),
            "MaxPool": ("max_pool2d", None), "AveragePool": ("avg_pool2d", None), "Flatten": ("flatten", None),
            "Relu": ("activation", "relu"), "Clip": ("activation", "relu6"), "HardSwish": ("activation", "hardswish"),
            "HardSigmoid": ("activation", "hardsigmoid"), "Sigmoid": ("activation", "sigmoid"),
            "Identity": ("dropout", None), "Slice": ("slice_channels", None)}
_REMOVABLE = ("relu", "relu6")  # activations the quantizer folds into the op before them


def structural_names(model, graph: Graph, where: str = "the QDQ file") -> dict[str, str]:
    """``{file tensor: graph node}`` for a QDQ file whose tensors are not named after the graph's nodes (another
    exporter's names, e.g. torch.onnx's ``/features/features.1/conv/conv.0/conv.0.2/Clip_output_0``): the file's
    convs / linears matched onto the graph as the importer matches them (``lightnets.artifacts.match``: shapes, order,
    data flow); each one's output tensor is its graph unit's last node (conv, its BN, and a relu/relu6 after it that
    the file does not compute: the quantizer folded it); then, along the file's float graph, an op whose inputs are
    mapped takes the graph node of the same op that reads exactly those nodes. Tensors of ops the graph writes
    otherwise (a channel shuffle's reshapes, a hard-swish split into HardSigmoid and Mul) stay unmapped, and the
    next conv maps again."""
    from lightnets import artifacts

    from .onnx_file import read_artifact

    with tempfile.TemporaryDirectory(prefix="lightnets-qdq-") as tmp:
        path = Path(tmp) / "file.onnx"
        onnx.save(model, str(path))
        art = read_artifact(path, lambda model_bytes: None)
    fits, _, closest = artifacts.fitting(art, graph)
    if not fits:
        raise LightnetsError(f"{where} does not fit graph {graph.name!r} ({closest[1].problem if closest else ''}); "
                             "locate it with the graph it was exported from")
    pairs = fits[0][1].layers
    view = dequantized_view(model)
    consts = _consts(view)
    users: dict[str, list] = {}
    for n in graph.nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n)
    file_users: dict[str, list] = {}
    for n in view.graph.node:
        for i in n.input:
            file_users.setdefault(i, []).append(n)
    names = {view.graph.input[0].name: INPUT}
    for node_name, layer in pairs.items():
        end = graph.node(node_name)
        after = users.get(end.name, [])
        if len(after) == 1 and after[0].op == "batch_norm":
            end = after[0]
            after = users.get(end.name, [])
        file_act = any(u.op_type in ("Relu", "Clip") for u in file_users.get(layer.output, []))
        if len(after) == 1 and after[0].op == "activation" and after[0].attrs["kind"] in _REMOVABLE and not file_act:
            end = after[0]
        names[layer.output] = end.name
    for n in view.graph.node:
        if n.op_type not in _SAME_OP or not n.output or n.output[0] in names:
            continue
        ins = [i for i in n.input if i and i not in consts and i in names]
        if not ins or (len(ins) < len([i for i in n.input if i and i not in consts]) and n.op_type != "Mul"):
            continue
        gins = [names[i] for i in ins]
        op, kind = _SAME_OP[n.op_type]
        if n.op_type == "Mul" and len(ins) == 1:  # x * HardSigmoid(x): onnxruntime's optimizer splits HardSwish so
            gate = next((m for m in view.graph.node if m.op_type == "HardSigmoid" and m.output[0] in n.input), None)
            if gate is not None and gate.input[0] == ins[0]:
                op, kind = "activation", "hardswish"
        found = [u for u in users.get(gins[0], []) if u.op == op and sorted(u.inputs) == sorted(gins)
                 and (kind is None or u.attrs.get("kind") == kind)]
        if len(found) == 1:
            names[n.output[0]] = found[0].name
        elif n.op_type in ("Slice", "Identity") and not found:  # a slice of every channel (timm's ghost module
            names[n.output[0]] = gins[0]  # cuts its concat to the channels it has): the same node's tensor
    return names
