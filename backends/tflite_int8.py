"""The tensors of an int8 TFLite file, kept and mapped onto a lightnets graph: the runtime side of the per-layer
int8 locator (:mod:`lightnets.int8` compares them with the float64 reference).

LiteRT's ``experimental_preserve_all_tensors`` keeps every intermediate tensor of the builtin kernels; the interpreter
is made with ``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``, else its default XNNPack delegate takes partitions
of ops whose inner tensors are not kept (a planted channel scale went unseen that way). The converter
names a tensor after the keras layers its op fused (``model/blocks__1__dw__act/Relu6;model/blocks__1__dw__bn/...;
model/blocks__1__dw__conv/...``); a tensor holds the output of the LAST of those nodes in graph order (the activation
of a fused conv + BN + activation). The quantize op of the input is the node ``input``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from lightnets.errors import LightnetsError
from lightnets.graph import INPUT, Graph
from lightnets.layouts import to_nchw, to_nhwc

from .keras import layer_name
from .tflite import interpreter_class


class QuantTensor(NamedTuple):
    """One quantized tensor: the node whose output it holds, the nodes its op fused, the TFLite op, the dequantized
    values (NCHW float64), its scale, zero point and integer range."""

    node: str
    fused: tuple[str, ...]
    op: str
    values: np.ndarray
    scale: float
    zero_point: int
    qmin: int
    qmax: int


_UNIQUIFIED = re.compile(r"^(.*?)(_\d+)?$")


def _nodes_named(tensor_name: str, layers: dict[str, str]) -> list[str]:
    """The graph nodes whose keras layers a tensor name lists (keras may append ``_1`` to names it made twice)."""
    found = []
    for part in tensor_name.split(";"):
        for comp in part.split("/"):
            name = layers.get(comp) or layers.get(_UNIQUIFIED.match(comp).group(1))
            if name is not None and name not in found:
                found.append(name)
    return found


class _Quantized(NamedTuple):
    node: str
    fused: tuple[str, ...]
    op: str
    index: int
    scale: float
    zero_point: int
    dtype: type


# the int8 ops a lightnets graph converts to (and the TFLite importer reads); another op with integer outputs is refused
KNOWN_OPS = frozenset("""CONV_2D DEPTHWISE_CONV_2D FULLY_CONNECTED ADD MUL SUB DIV RELU RELU6 RELU_N1_TO_1 HARD_SWISH
    LOGISTIC TANH MEAN SUM AVERAGE_POOL_2D MAX_POOL_2D RESHAPE SQUEEZE EXPAND_DIMS TRANSPOSE CONCATENATION SPLIT
    SPLIT_V STRIDED_SLICE SLICE GATHER PACK UNPACK SHAPE SOFTMAX QUANTIZE DEQUANTIZE CAST MINIMUM MAXIMUM PAD
    PADV2""".split())


def check_int8(it, where: str = "the TFLite file") -> None:
    """LightnetsError naming the tensor and op of the first input the int8 locator cannot take: integer activations
    other than int8/uint8 (the converter's 16x8 mode: per-tensor int16), float16 weights (a float16-quantized file),
    or an op it does not know with integer outputs; and a file with no int8 tensor at all."""
    details = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    quantized = False
    for op in ops:
        for index in op["outputs"]:
            t = details[index]
            dtype = np.dtype(t["dtype"])
            if dtype.kind in "iu" and dtype.itemsize > 1 and t["quantization"][0]:
                raise LightnetsError(f"{where}: tensor {t['name']!r} (output of {op['op_name']}) holds {dtype.name} "
                                     "activations (the converter's 16x8 mode); the int8 locator reads int8/uint8 "
                                     "activations: convert with TFLITE_BUILTINS_INT8 (lightnets.export(..., "
                                     "quantize='int8'))")
            if dtype.kind in "iu" and t["quantization"][0]:
                quantized = True
                if op["op_name"] not in KNOWN_OPS and op["op_name"] != "DELEGATE":  # (a delegate runs known ops)
                    raise LightnetsError(f"{where}: quantized op {op['op_name']} (output tensor {t['name']!r}) is not "
                                         "one a lightnets graph converts to; the int8 locator maps the ops of "
                                         f"{', '.join(sorted(KNOWN_OPS)[:6])}, ... onto graph nodes")
        for index in op["inputs"]:
            t = details.get(index)
            if t is not None and np.dtype(t["dtype"]) == np.float16:
                raise LightnetsError(f"{where}: weight {t['name']!r} (read by {op['op_name']}) is float16: a "
                                     "float16-quantized file, not an int8 one; export it with quantize='int8' "
                                     "(full-integer)")
    if not quantized:
        raise LightnetsError(f"{where} has no int8 tensor: not an int8 model; the locator compares int8 tensors with "
                             "the float64 reference: export one with lightnets.export(..., quantize='int8')")


def is_int8(flat_buffer: bytes) -> bool:
    """Whether a flat buffer holds quantized integer op outputs (an int8 model)."""
    cls, _ = interpreter_class()
    it = cls(model_content=bytes(flat_buffer))
    details = {t["index"]: t for t in it.get_tensor_details()}
    return any(np.dtype(details[i]["dtype"]).kind in "iu" and details[i]["quantization"][0]
               for op in it._get_ops_details() for i in op["outputs"])


def _quantized_outputs(it, graph: Graph) -> list[_Quantized]:
    """The quantized op outputs of interpreter ``it`` that hold a graph node's output (``input``: the input's
    quantize op), in op order; a later op's tensor replaces an earlier one's for the same node."""
    layers = {layer_name(n.name): n.name for n in graph.nodes}
    order = {INPUT: -1, **{n.name: i for i, n in enumerate(graph.nodes)}}
    details = {t["index"]: t for t in it.get_tensor_details()}
    found: dict[str, _Quantized] = {}
    for op in it._get_ops_details():
        for index in op["outputs"]:
            t = details[index]
            scale, zero_point = t["quantization"]
            if t["dtype"] not in (np.int8, np.uint8) or not scale:
                continue
            fused = [INPUT] if op["op_name"] == "QUANTIZE" and not found else _nodes_named(t["name"], layers)
            if fused:
                node = max(fused, key=order.get)
                if node in found:  # the earlier op's tensor is no node's output: its nodes are this tensor's too
                    fused = list(dict.fromkeys([*found[node].fused, *fused]))
                found[node] = _Quantized(node, tuple(sorted(fused, key=order.get)), op["op_name"], index, float(scale),
                                         int(zero_point), t["dtype"])
    return list(found.values())


def graph_ranges(flat_buffer: bytes, graph: Graph) -> dict[str, list[float]]:
    """``{node: [lo, hi]}``: the float range each quantized node output represents (from its scale and zero point,
    as calibration set them)."""
    cls, _ = interpreter_class()
    it = cls(model_content=bytes(flat_buffer))
    out = {}
    for q in _quantized_outputs(it, graph):
        info = np.iinfo(q.dtype)
        out[q.node] = [round((info.min - q.zero_point) * q.scale, 6), round((info.max - q.zero_point) * q.scale, 6)]
    return out


def _builtin_kernels(cls) -> dict:
    """The interpreter option that runs the builtin kernels without the default XNNPack delegate: a delegated
    partition keeps only its outputs (its ops show as one DELEGATE op), so the tensors inside it are not kept."""
    import importlib

    module = importlib.import_module(cls.__module__)
    resolver = getattr(module, "OpResolverType", None)
    if resolver is None or not hasattr(resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES"):
        return {}
    return {"experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES}


def node_tensors(flat_buffer: bytes, graph: Graph, x_nchw: np.ndarray, xnnpack: bool = False
                 ) -> dict[str, QuantTensor]:
    """Run the int8 flat buffer on the NCHW batch ``x_nchw`` with every tensor kept: ``{node: QuantTensor}`` for
    every graph node (and ``input``) whose output a quantized tensor holds. The builtin kernels run (``xnnpack``:
    LiteRT's default XNNPack delegate instead, whose int8 requantization rounds otherwise - docs/design.md §6 - and
    whose partitions keep only their outputs)."""
    cls, _ = interpreter_class()
    it = cls(model_content=bytes(flat_buffer), experimental_preserve_all_tensors=True,
             **({} if xnnpack else _builtin_kernels(cls)))
    inp = it.get_input_details()[0]
    x = to_nhwc(x_nchw, np.float32)
    if tuple(inp["shape"]) != x.shape:
        it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    if inp["dtype"] != np.float32:
        raise LightnetsError(f"the int8 locator feeds float32 images; this file takes {np.dtype(inp['dtype']).name} "
                             "input (export it with float32 input/output, as lightnets.export(..., quantize='int8'))")
    check_int8(it)
    it.set_tensor(inp["index"], x)
    it.invoke()
    out: dict[str, QuantTensor] = {}
    for q in _quantized_outputs(it, graph):
        values = to_nchw((it.get_tensor(q.index).astype(np.float64) - q.zero_point) * q.scale)
        info = np.iinfo(q.dtype)
        out[q.node] = QuantTensor(q.node, q.fused, q.op, values, q.scale, q.zero_point, int(info.min), int(info.max))
    return out


def locate_model(model, x: np.ndarray) -> dict:
    """:func:`lightnets.int8.locate` on a lightnets int8 ``TFLiteModel`` (``lightnets.export.to_tflite(...,
    quantize="int8")``) and the NCHW images ``x``: its graph, the weights it was converted from, its tensors."""
    from lightnets import int8

    if not getattr(model, "quantize", None):
        raise LightnetsError(f"{model!r} is not an int8 model; the locator compares int8 tensors with the float64 "
                             "reference: make one with lightnets.export.to_tflite(source, quantize='int8')")
    return int8.locate(model.graph, model.weights, x, node_tensors(model.flat_buffer(), model.graph, x))
