"""A ``.tflite`` file holds converted weights (batch norms folded into the convs, OHWI/1HWC kernels,
maybe int8), so it has no state dict (``read_state_dict`` refuses). ``read_artifact`` parses the flat buffer
with the TFLite schema (``schema_py_generated``) into a :class:`lightnets.artifacts.Artifact` - CONV_2D,
DEPTHWISE_CONV_2D and FULLY_CONNECTED in file order with their strides, groups, SAME/VALID padding (a zero PAD
in front folded into explicit pads), constants dequantized (scale, zero point per channel; int32 biases by their
own scale), the leading scalar MUL/ADD of an in-model rescaling, a SOFTMAX head - and ``lightnets.artifacts``
matches it onto the id and probes it in LiteRT. One converter rewrite is undone: hard sigmoid's ``+ 3`` folded
into the bias of the conv before it (conv with fused RELU6, then ``* 1/6``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightnets import layouts
from lightnets.artifacts import RESCALING_OPS, Artifact, Layer, in_batches, then_rescale
from lightnets.errors import BackendNotInstalledError, FileFormatError, InputShapeError, LightnetsError, runtime_failure

from .base import Backend, unreadable


def _schema():
    """The TFLite flat-buffer schema (``schema_py_generated``): LiteRT's, else tensorflow's."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated as schema
        except ImportError:
            raise BackendNotInstalledError("reading .tflite files needs the TFLite schema of ai-edge-litert or "
                                           "tensorflow; run: pip install 'lightnets[tflite]'") from None
    return schema


_NP_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8,
             10: np.float64}
# ops carrying no weights of their own (a constant operand of ADD/MUL/SUB/DIV must be a scalar)
WEIGHTLESS = frozenset("""ADD MUL SUB DIV RELU RELU6 RELU_N1_TO_1 HARD_SWISH LOGISTIC TANH MEAN SUM AVERAGE_POOL_2D
    MAX_POOL_2D RESHAPE SQUEEZE EXPAND_DIMS TRANSPOSE CONCATENATION SPLIT SPLIT_V STRIDED_SLICE SLICE GATHER PACK
    UNPACK SHAPE SOFTMAX QUANTIZE DEQUANTIZE CAST MINIMUM MAXIMUM PAD PADV2
    RANGE FLOOR_DIV LESS SELECT SELECT_V2 RESIZE_NEAREST_NEIGHBOR""".split())  # the last 6: nearest upsamples
_WEIGHT_OPS = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "conv", "FULLY_CONNECTED": "linear"}


class _TfliteFile:
    """A flat buffer's first subgraph: operators (name, options, input/output tensor ids), tensors and the
    constant values (dequantized: int8/uint8 with their scales and zero points, float16, DEQUANTIZE of a
    constant), for :func:`read_artifact`."""

    def __init__(self, buf: bytes):
        s = self.schema = _schema()
        if len(buf) < 8 or not s.Model.ModelBufferHasIdentifier(buf, 0):
            raise ValueError("no TFL3 flat-buffer identifier")
        model = s.Model.GetRootAsModel(buf, 0)
        self.sg = sg = model.Subgraphs(0)
        names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
        self.ops = []
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
            if name == "CUSTOM":
                name = f"custom {code.CustomCode().decode()}"
            self.ops.append((name, op, list(op.InputsAsNumpy()), list(op.OutputsAsNumpy())))
        self.tensors = [sg.Tensors(i) for i in range(sg.TensorsLength())]
        self.const, self.quantized, self.notes = {}, set(), []
        for t, tensor in enumerate(self.tensors):
            b = model.Buffers(tensor.Buffer())
            raw = buf[b.Offset(): b.Offset() + b.Size()] if b.Offset() > 1 else (
                b.DataAsNumpy().tobytes() if b.DataLength() else b"")
            if raw:
                self.const[t] = self._dequantize(t, np.frombuffer(raw, _NP_TYPES.get(tensor.Type(), np.uint8))
                                                 .reshape(self.shape(t)))
        self.producer, self.users = {}, {}
        for k, (name, _, ins, outs) in enumerate(self.ops):
            for o in outs:
                self.producer[o] = k
            for i in ins:
                self.users.setdefault(i, []).append(k)
            if name == "DEQUANTIZE" and ins[0] in self.const:
                self.const[outs[0]] = self.const[ins[0]].astype(np.float32)

    def shape(self, t: int) -> tuple[int, ...]:
        tensor = self.tensors[t]
        return tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()

    def signature(self, t: int) -> tuple[int, ...]:
        tensor = self.tensors[t]
        return tuple(int(d) for d in tensor.ShapeSignatureAsNumpy()) if tensor.ShapeSignatureLength() else \
            self.shape(t)

    def _dequantize(self, t: int, q: np.ndarray) -> np.ndarray:
        """float32 values of tensor ``t``'s stored array (int8/uint8/int32 by its scales and zero points)."""
        quant = self.tensors[t].Quantization()
        if q.dtype.kind == "f":
            return q.astype(np.float32)
        if quant is None or not quant.ScaleLength():
            return q
        scale, zero = quant.ScaleAsNumpy().astype(np.float64), quant.ZeroPointAsNumpy().astype(np.float64)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[quant.QuantizedDimension()] = -1
        self.quantized.add(t)
        return ((q - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)

    def quantized_range(self, t: int) -> tuple[float, float] | None:
        """The float range an integer tensor ``t`` represents (per-tensor scale and zero point)."""
        quant, kind = self.tensors[t].Quantization(), _NP_TYPES.get(self.tensors[t].Type())
        if quant is None or quant.ScaleLength() != 1 or kind is None or np.dtype(kind).kind not in "iu":
            return None
        info, scale, zero = np.iinfo(kind), float(quant.Scale(0)), float(quant.ZeroPoint(0))
        return (info.min - zero) * scale, (info.max - zero) * scale

    def value(self, t: int, op: str, what: str) -> np.ndarray:
        if t not in self.const:
            raise FileFormatError(f"{op} op: its {what} (tensor {self.tensors[t].Name().decode()!r}) is not a "
                                  "constant; lightnets imports files whose weights are stored in the flat buffer")
        return self.const[t]

    def options(self, op, cls):
        table = op.BuiltinOptions()
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def name(self, t: int) -> str:
        return self.tensors[t].Name().decode()


def _tflite_conv(f: _TfliteFile, k: int) -> Layer:
    name, op, ins, outs = f.ops[k]
    s = f.schema
    depthwise = name == "DEPTHWISE_CONV_2D"
    o = f.options(op, s.DepthwiseConv2DOptions if depthwise else s.Conv2DOptions)
    if (o.DilationHFactor(), o.DilationWFactor()) != (1, 1):
        raise FileFormatError(f"{name} op {k} is dilated; the light CNNs have no dilated convs")
    w = f.value(ins[1], name, "filter")
    c_in = f.shape(ins[0])[3]
    weight = layouts.to_canonical(w, "1hwc" if depthwise else "ohwi")
    tensors = {"weight": weight}
    if len(ins) > 2 and ins[2] >= 0:
        tensors["bias"] = f.value(ins[2], name, "bias")
    x, pads = ins[0], (0, 0, 0, 0)
    src = f.producer.get(x)
    if o.Padding() == s.Padding.SAME:
        padding = "same"
    else:
        padding = "explicit"
        if src is not None and f.ops[src][0] in ("PAD", "PADV2") and len(f.users[x]) == 1:
            pads, x = _tflite_zero_pad(f, src), f.ops[src][2][0]
    groups = c_in if depthwise else c_in // w.shape[3]
    attrs = {"stride": (o.StrideH(), o.StrideW()), "groups": groups, "padding": padding, "pads": pads}
    if _hard_sigmoid_follows(f, o, outs[0]):
        tensors["bias"] = tensors.get("bias", np.zeros(weight.shape[0], np.float32)) - np.float32(3)
        f.notes.append(HARD_SIGMOID_NOTE)
    return Layer(f"{name}:{k}", name, "conv", tensors, attrs, (f.name(x),), f.name(outs[0]))


HARD_SIGMOID_NOTE = ("the converter folds hard sigmoid's + 3 into the bias of the conv before it (conv with fused "
                     "RELU6, then * 1/6): taken back out of those biases on import")


def _hard_sigmoid_follows(f: _TfliteFile, options, out: int) -> bool:
    """Whether a conv's output is hard sigmoid's ``relu6(conv + 3) / 6`` with the ``+ 3`` in its bias: the
    converter folds the add into the conv, fuses the RELU6, and leaves the MUL by 1/6 after it."""
    users = f.users.get(out, [])
    if options.FusedActivationFunction() != f.schema.ActivationFunctionType.RELU6 or len(users) != 1:
        return False
    name, _, ins, _ = f.ops[users[0]]
    scalars = [f.const[i] for i in ins if i != out and i in f.const and f.const[i].size == 1]
    return name == "MUL" and len(scalars) == 1 and abs(float(scalars[0].reshape(())) * 6 - 1) < 1e-2


def _tflite_zero_pad(f: _TfliteFile, k: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the zero PAD/PADV2 op ``k`` over height/width of an NHWC tensor."""
    name, _, ins, _ = f.ops[k]
    p = f.value(ins[1], name, "paddings").reshape(-1, 2)
    value = float(f.value(ins[2], name, "constant value").reshape(-1)[0]) if len(ins) > 2 else 0.0
    if p.shape != (4, 2) or value != 0 or p[0].any() or p[3].any():
        raise FileFormatError(f"{name} op {k} (paddings {p.tolist()}, value {value}) is not a zero pad of height/width "
                              "in front of a conv; lightnets imports zero padding only")
    return int(p[1, 0]), int(p[1, 1]), int(p[2, 0]), int(p[2, 1])


def _tflite_linear(f: _TfliteFile, k: int) -> Layer:
    name, op, ins, outs = f.ops[k]
    tensors = {"weight": f.value(ins[1], name, "weights")}  # (out, in): canonical
    if len(ins) > 2 and ins[2] >= 0:
        tensors["bias"] = f.value(ins[2], name, "bias")
    return Layer(f"{name}:{k}", name, "linear", tensors, {}, (f.name(ins[0]),), f.name(outs[0]))


def _tflite_rescaling(f: _TfliteFile, t: int) -> tuple[float, float] | None:
    """Leading MUL/DIV/ADD/SUB of the input by scalar constants (through QUANTIZE): (scale, offset)."""
    rescaling = (1.0, 0.0)
    while len(f.users.get(t, [])) == 1:
        name, _, ins, outs = f.ops[f.users[t][0]]
        if name == "QUANTIZE":
            t = outs[0]
            continue
        other = [i for i in ins if i != t]
        if name.lower() not in RESCALING_OPS or len(other) != 1 or other[0] not in f.const \
                or f.const[other[0]].size != 1 or (name in ("SUB", "DIV") and ins[0] != t):
            break
        rescaling = then_rescale(rescaling, name.lower(), float(f.const[other[0]].reshape(())))
        t = outs[0]
    return rescaling if rescaling != (1.0, 0.0) else None


def _affine_bns(f: _TfliteFile) -> dict[int, Layer]:
    """The batch norms the converter could not fold (the conv's own output is also a model output: a backbone's
    feature map before its BN), kept as MUL by a per-channel scale then ADD of a per-channel shift right after a
    conv: {MUL op index: a "bn" Layer with ``scale``/``shift`` (``affine``; the matcher makes it a BN with mean 0 and
    the graph's eps)}, the ADD op's index also a key (None)."""
    out: dict = {}
    for k, (name, op, ins, outs) in enumerate(f.ops):
        if name != "MUL" or len(ins) != 2 or f.options(op, f.schema.MulOptions).FusedActivationFunction():
            continue
        src = f.producer.get(ins[0])
        if src is None or f.ops[src][0] not in ("CONV_2D", "DEPTHWISE_CONV_2D") or ins[1] not in f.const:
            continue
        c = f.shape(ins[0])[-1]
        users = f.users.get(outs[0], [])
        if len(users) != 1 or f.ops[users[0]][0] != "ADD":
            continue
        add = users[0]
        shift = [i for i in f.ops[add][2] if i != outs[0]]
        if len(shift) != 1 or shift[0] not in f.const or f.const[shift[0]].size != c or f.const[ins[1]].size != c:
            continue
        tensors = {"scale": f.const[ins[1]].reshape(c), "shift": f.const[shift[0]].reshape(c)}
        out[k] = Layer(f"MUL+ADD:{k}", "MUL+ADD", "bn", tensors, {"affine": True, "eps": None},
                       (f.name(ins[0]),), f.name(f.ops[add][3][0]))
        out[add] = None
    return out


def _check_ops(f: _TfliteFile, path: Path, affine: dict | None = None) -> None:
    """FileFormatError for an op lightnets cannot import (named with its index), or a per-channel constant
    ADD/MUL the converter left unfused (a batch norm not folded into its conv) but for ``affine``'s."""
    for k, (name, _, ins, _) in enumerate(f.ops):
        if k in (affine or {}):
            continue
        if name not in WEIGHTLESS and name not in _WEIGHT_OPS:
            raise FileFormatError(f"{path.name}: unsupported TFLite op {name} (op {k}); lightnets imports the light "
                                  "CNNs' ops (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and weightless "
                                  "activations, pools, shape ops)")
        if name in ("ADD", "MUL", "SUB", "DIV") and any(i in f.const and f.const[i].size > 1 for i in ins):
            raise FileFormatError(f"{path.name}: {name} op {k} applies a per-channel constant (a batch norm the "
                                  "converter did not fold into its conv); lightnets imports files whose batch norms "
                                  "are folded")


def read_artifact(path, interpreter_of) -> Artifact:
    """A foreign .tflite file as a :class:`lightnets.artifacts.Artifact` (weights canonical, file order);
    ``interpreter_of(flat_buffer)`` is the LiteRT interpreter that runs the file (``Artifact.run``)."""
    path = Path(path)
    buf = Backend.existing(path).read_bytes()
    try:
        f = _TfliteFile(buf)
        interpreter = interpreter_of(buf)
    except Exception as e:  # noqa: BLE001 -- flatbuffers (struct.error...) and the interpreter raise their own
        raise unreadable(path, ".tflite", e) from None
    affine = _affine_bns(f)
    _check_ops(f, path, affine)
    sg = f.sg
    if sg.InputsLength() != 1:
        raise FileFormatError(f"{path.name} has {sg.InputsLength()} inputs; lightnets imports single-image-input nets")
    t_in = int(sg.Inputs(0))
    dims = [d if d > 0 else None for d in f.signature(t_in)]
    if len(dims) != 4:
        raise FileFormatError(f"{path.name}: input {f.name(t_in)!r} has {len(dims)} dims, not 4 (an image batch)")
    layout = "NCHW" if dims[1] in (1, 3) and dims[3] not in (1, 3) else "NHWC"
    hw = tuple(dims[1:3]) if layout == "NHWC" else tuple(dims[2:4])
    readers = {"conv": _tflite_conv, "linear": _tflite_linear}
    layers = tuple(affine[k] if k in affine else readers[_WEIGHT_OPS[name]](f, k) for k, (name, *_) in enumerate(f.ops)
                   if name in _WEIGHT_OPS or affine.get(k) is not None)
    t_out = int(sg.Outputs(0))
    last = f.producer.get(t_out)
    while last is not None and f.ops[last][0] in ("DEQUANTIZE", "RESHAPE"):
        last = f.producer.get(f.ops[last][2][0])
    activation = "softmax" if last is not None and f.ops[last][0] == "SOFTMAX" else "linear"
    weight_ids = {i for _, _, ins, _ in f.ops for i in ins[1:3]}
    quantized = None
    if f.quantized & weight_ids:
        io = np.dtype(_NP_TYPES.get(f.tensors[t_in].Type(), np.uint8)).name
        quantized = (f"integer-quantized weights dequantized on import (scale, zero point; int32 bias scale = input "
                     f"scale x weight scale), {io} input")
    inp = interpreter.get_input_details()[0]
    first = f.users.get(t_in, [])
    quantized_input = t_in if np.dtype(inp["dtype"]).kind in "iu" else \
        (f.ops[first[0]][3][0] if len(first) == 1 and f.ops[first[0]][0] == "QUANTIZE" else None)
    run_file = file_runner(interpreter, path, dims[0])
    return Artifact(str(path), "tflite", layers, layout, hw if None not in hw else None,
                    _tflite_rescaling(f, t_in), activation, quantized, tuple(dict.fromkeys(f.notes)), run_file,
                    None if quantized_input is None else f.quantized_range(quantized_input), batch=dims[0],
                    outputs=sg.OutputsLength(), producers=_producers(f, t_in))


def _producers(f: _TfliteFile, t_in: int) -> dict:
    """tensor name -> the names of the non-constant inputs of the op that makes it; the image input -> None."""
    out = {f.name(o): tuple(f.name(i) for i in ins if i >= 0 and i not in f.const) for _, _, ins, outs in f.ops
           for o in outs}
    return {**out, f.name(t_in): None}


def file_runner(interpreter, path, batch: int | None):
    """``run(x)``: a LiteRT interpreter of a file on the float32 NHWC batch ``x`` -> its float32 output (a list for
    several), integer inputs quantized and integer outputs dequantized by their scale and zero point, a file whose
    batch is fixed to ``batch`` fed that many images at a time (resizing a fixed-batch file's input fails in XNNPack:
    "failed to reshape runtime"), any other batch by resizing the input. The interpreter's errors are re-raised as a
    RuntimeFailure naming the file, the input tensor and the fix."""
    inp, outs = interpreter.get_input_details()[0], interpreter.get_output_details()
    shown = "x".join(str(d) if d > 0 else "?" for d in inp.get("shape_signature", inp["shape"]))

    sig = tuple(int(d) for d in inp.get("shape_signature", inp["shape"]))

    def once(x):
        if len(sig) != x.ndim or any(0 < s != n for s, n in zip(sig[1:], x.shape[1:], strict=False)):
            raise InputShapeError(f"input of NHWC shape {tuple(x.shape)} does not fit the input {shown} of {path} "
                                  "(converted for a fixed height/width); resize the input or build/export the model "
                                  "at that input_size")
        try:
            if tuple(inp["shape"]) != x.shape:
                interpreter.resize_tensor_input(inp["index"], x.shape)
                inp["shape"] = np.array(x.shape)
            interpreter.allocate_tensors()
            scale, zero = inp["quantization"]
            if np.dtype(inp["dtype"]).kind in "iu":  # an integer-input file: quantize as the converter's input would
                info = np.iinfo(inp["dtype"])
                x = np.clip(np.round(x / scale + zero), info.min, info.max)
            interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
            interpreter.invoke()
            ys = []
            for out in outs:
                y = interpreter.get_tensor(out["index"])
                scale, zero = out["quantization"]
                ys.append((y.astype(np.float32) - zero) * scale if np.dtype(out["dtype"]).kind in "iu" else y)
        except LightnetsError:
            raise
        except Exception as e:  # noqa: BLE001 -- the interpreter raises RuntimeError/ValueError of its own
            raise runtime_failure(path, "LiteRT", inp["name"], x.shape, e,
                                  f"the file's input is NHWC {shown}: feed float32 images of that shape (a fixed "
                                  "batch one chunk at a time), or convert the model with a dynamic batch") from None
        return ys[0] if len(ys) == 1 else ys

    return lambda x: in_batches(once, np.asarray(x, np.float32), batch)
