"""The ONNX exporter: the op vocabulary lowered to an ``onnx.ModelProto`` (emitter and ``CONVERTERS``).

The ONNX graph is written from the IR itself with ``onnx.helper`` / ``onnx.numpy_helper`` (nothing is
traced): one converter per op, tensors named after IR nodes, initializers named after the canonical
weights (``blocks.3.dw.conv.weight``), internal constants under ``<node>/...`` or ``const/...``.
Opset 17, IR version 8. The batch axis is dynamic; height and width are dynamic unless the graph is
fixed to its build size (``meta["fixed_size"]``): explicit pads hold at any size and strided TF "same"
nodes become ``auto_pad="SAME_UPPER"`` (ONNX's SAME_UPPER is TF "same": the odd pixel goes to the end).
With static height/width, "same" pads are written out for the build size.

The graph's ``doc_string`` holds ``{"format": "lightnets.onnx", "card": <provenance card>, "graph": <graph
JSON>}`` and the model's ``metadata_props`` hold ``lightnets.graph`` / ``lightnets.card`` (the keys of
canonical .safetensors files), so a lightnets .onnx file carries its graph: :func:`read_onnx`.

Lowering (float32): conv2d -> Conv (pads [top, left, bottom, right], group, dilations); batch_norm ->
BatchNormalization (eval); relu -> Relu; relu6 -> Clip(0, 6); hardsigmoid -> Div(Clip(Add(x, 3), 0, 6), 6)
written out (``HardSigmoid``'s alpha is a float32 attribute: 1/6 -> 0.16666667163, so it is not exactly relu6(x
+ 3) / 6); hardswish -> x * that; sigmoid -> Sigmoid; swish -> Mul(x, Sigmoid(x)); add/mul -> Add/Mul (numpy
broadcast); concat -> Concat(axis 1); resize_nearest -> Gather of rows then columns at int64 floor(i * in / out)
from Shape(x), Shape(like) (CumSum of ConstantOfShape ones, Mul, Div); slice_channels -> Slice; channel_shuffle
-> Reshape(x, [0, g, C/g, -1]) -> Transpose(0, 2, 1, 3) -> Reshape(., Shape(x)) (batch, height and width stay
dynamic); max_pool2d -> MaxPool (pads are ignored elements: the IR's -inf); avg_pool2d -> AveragePool
(count_include_pad); global_avg_pool -> GlobalAveragePool; flatten -> Flatten(axis 1); linear -> Gemm (transB=1,
canonical (out, in) weight); dropout, drop_path -> Identity. A lean export (``to_onnx(lean=True)``, the default for
a float32 inference-form graph) writes no node for them and keeps concats as their pieces (``split_concats``).

float64 (measured on onnxruntime 1.32 CPU): Conv, AveragePool, GlobalAveragePool, HardSigmoid and
HardSwish have no double kernel (NOT_IMPLEMENTED); BatchNormalization, Relu, Clip, Sigmoid, Add/Sub/Mul/Div,
Concat, Slice, Reshape, Transpose, MaxPool, ReduceMean, Flatten and Gemm do. A float64 graph therefore runs
Conv and AveragePool in float32 between Casts (their weights are float32 initializers), writes
global_avg_pool as ReduceMean and batch_norm as (x - mean) * (gamma / sqrt(var + eps)) + beta (the
BatchNormalization epsilon is a float32 attribute: 1e-3 -> 1.0000000475e-3); everything else is double.
Any graph with a conv or an avg pool is thus float32-accurate in float64 (parity's EFFECTIVE_DTYPE).

The onnxruntime backend (``BACKEND``, :mod:`lightnets.backends.onnx`) runs these graphs; this module needs
``onnx`` only. Reading foreign .onnx files: :mod:`lightnets.backends.onnx_file` (``read_artifact``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from lightnets import ops
from lightnets import provenance as PV
from lightnets import transforms as T
from lightnets import weights as W
from lightnets.errors import BackendNotInstalledError, FileFormatError, LightnetsError
from lightnets.graph import INPUT, Graph, Node
from lightnets.numerics import check_dtype

from .base import Lowering, unreadable

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as e:  # onnxruntime without onnx
    raise BackendNotInstalledError(f"the onnx backend needs the 'onnx' package ({e}); run: "
                                   "pip install 'lightnets[onnx]'") from None

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17: readable by any runtime that knows the opset
DOC_FORMAT = "lightnets.onnx"
GRAPH_KEY, CARD_KEY, DTYPE_KEY = "lightnets.graph", "lightnets.card", "lightnets.dtype"
DTYPES = {"float32": (np.float32, TensorProto.FLOAT), "float64": (np.float64, TensorProto.DOUBLE)}
BATCH, HEIGHT, WIDTH = "batch", "height", "width"  # names of the dynamic input dims

# ops whose onnxruntime CPU kernel is float32 only: a float64 graph runs them in float32 between Casts
FLOAT32_ONLY = ("conv2d", "avg_pool2d")

# canonical suffix -> initializer leaf: ONNX initializers carry the canonical names
NATIVE_NAMES = {"conv2d": {"weight": "weight", "bias": "bias"},
                "depthwise_conv2d": {"weight": "weight", "bias": "bias"},
                "linear": {"weight": "weight", "bias": "bias"},
                "batch_norm": {"gamma": "gamma", "beta": "beta", "mean": "mean", "var": "var"}}


# --- emitting -------------------------------------------------------------------------------------
class _Emitter:
    """Collects nodes and initializers of one ONNX graph in ``dtype``."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray], dtype: str, dynamic_hw: bool):
        self.graph, self.weights, self.dtype, self.dynamic_hw = graph, weights, dtype, dynamic_hw
        self.np, self.elem = DTYPES[dtype]
        self.f64 = dtype == "float64"
        self.nodes: list = []
        self.inits: dict[str, object] = {}
        self.sources: dict = {}  # part parameter -> its slice of a canonical weight (transforms.split_concats)
        self.outputs: set[str] = set()  # the IR names the graph outputs (a node of its own each)
        self.alias: dict[str, str] = {}  # IR name -> the tensor that holds it (an identity written as no node)
        self.lean = False  # to_onnx(lean=True): identities as no node

    def init(self, name: str, value, dtype=None) -> str:
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(np.asarray(value, dtype or self.np)), name)
        return name

    def const(self, value: float) -> str:
        """A shared scalar constant of the graph's dtype."""
        return self.init(f"const/{value:g}", np.array(value, self.np))

    def ints(self, name: str, values) -> str:
        return self.init(name, np.array(values, np.int64), np.int64)

    def param(self, node: Node, suffix: str, float32: bool = False) -> str:
        name = f"{node.name}.{suffix}"
        if name in self.sources:  # a part of a canonical weight (split_concats): sliced, folded by the runtime
            src, out, inp = self.sources[name]
            axes = [0, 1] if inp else [0]
            return self.add("Slice", [self.init(src, self.weights[src], np.float32 if float32 else self.np),
                                      self.ints(f"{node.name}/{suffix}_starts", [out[0], *(inp or ())[:1]]),
                                      self.ints(f"{node.name}/{suffix}_ends", [out[1], *(inp or ())[1:]]),
                                      self.ints(f"const/axes{len(axes)}", axes)], f"{node.name}/{suffix}")
        return self.init(name, self.weights[name], np.float32 if float32 else self.np)

    def add(self, op: str, inputs: list[str], output: str, name: str | None = None, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=name or output, **attrs))
        return output

    def pads(self, node: Node, hw: tuple[int, int]) -> dict:
        """``pads`` [top, left, bottom, right] (ONNX order) or ``auto_pad`` of a conv/pool node."""
        a = node.attrs
        fixed = ops.static_pads(a)
        if fixed is None:  # strided "same": depends on the input size
            if self.dynamic_hw:
                return {"auto_pad": "SAME_UPPER"}
            fixed = ops.effective_pads(a, hw)
        t, b, l, r = fixed
        return {"pads": [t, l, b, r]}

    def float32_op(self, node: Node, x: str, out: str, emit) -> str:
        """``emit(x, out)`` as is, or (float64 graph, float32-only op) between Casts to float32 and back."""
        if not (self.f64 and node.op in FLOAT32_ONLY):
            return emit(x, out)
        x32 = self.add("Cast", [x], f"{node.name}/float32_in", to=TensorProto.FLOAT)
        y32 = emit(x32, f"{node.name}/float32_out")
        return self.add("Cast", [y32], out, name=f"{node.name}/float64_out", to=TensorProto.DOUBLE)


def _window(node: Node) -> dict:
    a = node.attrs
    return {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"])}


def _conv2d(c: Lowering):
    em, node, xs, hw = c.native, c.node, c.inputs, c.in_shapes[0][1:]
    a = node.attrs
    f32 = em.f64
    inputs = [em.param(node, "weight", f32)] + ([em.param(node, "bias", f32)] if a["bias"] else [])
    attrs = {**_window(node), "dilations": list(a["dilation"]), "group": a["groups"], **em.pads(node, hw)}
    return em.float32_op(node, xs[0], node.name,
                         lambda x, out: em.add("Conv", [x, *inputs], out, name=node.name + "/Conv", **attrs))


def _batch_norm(c: Lowering):
    em, node, xs = c.native, c.node, c.inputs
    g, b, m, v = (em.param(node, s) for s in ("gamma", "beta", "mean", "var"))
    if not em.f64:
        return em.add("BatchNormalization", [xs[0], g, b, m, v], node.name, name=node.name + "/BatchNormalization",
                      epsilon=float(node.attrs["eps"]))
    # float64: eps as a double constant (the BatchNormalization attribute is float32); same order as the reference
    n = node.name
    to_map = em.ints("const/to_map", [-1, 1, 1])
    var_eps = em.add("Add", [v, em.init(f"{n}/eps", np.array(node.attrs["eps"], np.float64))], f"{n}/var_eps")
    scale = em.add("Div", [g, em.add("Sqrt", [var_eps], f"{n}/std")], f"{n}/scale")
    centred = em.add("Sub", [xs[0], em.add("Reshape", [m, to_map], f"{n}/mean_map")], f"{n}/centred")
    scaled = em.add("Mul", [centred, em.add("Reshape", [scale, to_map], f"{n}/scale_map")], f"{n}/scaled")
    return em.add("Add", [scaled, em.add("Reshape", [b, to_map], f"{n}/beta_map")], n)


def _hardsigmoid(em: _Emitter, x: str, out: str, n: str) -> str:
    """relu6(x + 3) / 6, exactly as the IR pins it."""
    shifted = em.add("Add", [x, em.const(3.0)], f"{n}/plus3")
    clipped = em.add("Clip", [shifted, em.const(0.0), em.const(6.0)], f"{n}/relu6")
    return em.add("Div", [clipped, em.const(6.0)], out)


def _activation(c: Lowering):
    em, node, xs = c.native, c.node, c.inputs
    x, n, kind = xs[0], node.name, node.attrs["kind"]
    if kind == "relu":
        return em.add("Relu", [x], n)
    if kind == "relu6":
        return em.add("Clip", [x, em.const(0.0), em.const(6.0)], n)
    # float32: ONNX's own HardSigmoid/HardSwish (alpha 1/6, beta 1/2: relu6(x + 3) / 6 up to float32 rounding), one
    # fused kernel each in ONNX Runtime instead of four elementwise passes (a net of 21 hard-swishes, bs16: 425 -> 287
    # ms, measured interleaved); float64 keeps the exact formula (ONNX Runtime has no double kernel for them)
    if kind == "hardsigmoid":
        return _hardsigmoid(em, x, n, n) if em.f64 else em.add("HardSigmoid", [x], n, alpha=1 / 6, beta=0.5)
    if kind == "hardswish":
        if not em.f64:
            return em.add("HardSwish", [x], n)
        return em.add("Mul", [x, _hardsigmoid(em, x, f"{n}/hardsigmoid", n)], n, name=n + "/Mul")
    if kind == "sigmoid":
        return em.add("Sigmoid", [x], n)
    if kind == "swish":
        return em.add("Mul", [x, em.add("Sigmoid", [x], f"{n}/sigmoid")], n, name=n + "/Mul")
    raise AssertionError(kind)  # unreachable: the schema checks kinds


def _slice(c: Lowering):
    em, node, xs = c.native, c.node, c.inputs
    n = node.name
    return em.add("Slice", [xs[0], em.ints(f"{n}/starts", [node.attrs["start"]]),
                            em.ints(f"{n}/ends", [node.attrs["stop"]]), em.ints("const/axis1", [1])], n)


def _channel_shuffle(c: Lowering):
    """view (N, g, C/g, H*W), swap the group axes, back to the input's shape (N, H, W from Shape(x))."""
    em, node, xs = c.native, c.node, c.inputs
    n, g = node.name, node.attrs["groups"]
    c = em.graph.shapes[node.inputs[0]][0]
    grouped = em.add("Reshape", [xs[0], em.ints(f"{n}/grouped_shape", [0, g, c // g, -1])], f"{n}/grouped")
    swapped = em.add("Transpose", [grouped], f"{n}/swapped", perm=[0, 2, 1, 3])
    return em.add("Reshape", [swapped, em.add("Shape", [xs[0]], f"{n}/input_shape")], n)


def _resize_nearest(c: Lowering):
    """Gather rows then columns at floor(i * in / out), the sizes read from Shape(x) and Shape(like) (Resize's
    float scale lands one index low at some size pairs); all int64, exact, any input size. The positions 0..out-1
    are an exclusive CumSum of ConstantOfShape(out) ones, not a Range: onnx shape inference (data propagation)
    follows ConstantOfShape to a static length, a Range of a computed limit it leaves unknown."""
    em, node, xs = c.native, c.node, c.inputs
    n, x = node.name, xs[0]
    shape_x = em.add("Shape", [x], f"{n}/x_shape")
    shape_like = em.add("Shape", [xs[1]], f"{n}/like_shape")
    axis0 = em.ints("const/int0", 0)
    one = numpy_helper.from_array(np.array([1], np.int64), "value")
    for axis in (2, 3):
        begin, end = em.ints(f"const/at{axis}", [axis]), em.ints(f"const/at{axis + 1}", [axis + 1])
        size_in = em.add("Slice", [shape_x, begin, end], f"{n}/in{axis}")
        size_out = em.add("Slice", [shape_like, begin, end], f"{n}/out{axis}")
        ones = em.add("ConstantOfShape", [size_out], f"{n}/ones{axis}", value=one)
        steps = em.add("CumSum", [ones, axis0], f"{n}/steps{axis}", exclusive=1)
        index = em.add("Div", [em.add("Mul", [steps, size_in], f"{n}/scaled{axis}"), size_out], f"{n}/index{axis}")
        x = em.add("Gather", [x, index], n if axis == 3 else f"{n}/rows", axis=axis)
    return x


def _max_pool(c: Lowering):
    em, node, xs, hw = c.native, c.node, c.inputs, c.in_shapes[0][1:]
    return em.add("MaxPool", [xs[0]], node.name, name=node.name + "/MaxPool", **_window(node), **em.pads(node, hw))


def _avg_pool(c: Lowering):
    em, node, xs, hw = c.native, c.node, c.inputs, c.in_shapes[0][1:]
    attrs = {**_window(node), **em.pads(node, hw), "count_include_pad": int(node.attrs["count_include_pad"])}
    return em.float32_op(node, xs[0], node.name,
                         lambda x, out: em.add("AveragePool", [x], out, name=node.name + "/AveragePool", **attrs))


def _global_avg_pool(c: Lowering):
    em, node, xs = c.native, c.node, c.inputs
    if em.f64:  # GlobalAveragePool has no double kernel; ReduceMean has
        return em.add("ReduceMean", [xs[0]], node.name, axes=[2, 3], keepdims=1)
    return em.add("GlobalAveragePool", [xs[0]], node.name)


def _linear(c: Lowering):
    em, node, xs = c.native, c.node, c.inputs
    inputs = [xs[0], em.param(node, "weight")] + ([em.param(node, "bias")] if node.attrs["bias"] else [])
    return em.add("Gemm", inputs, node.name, transB=1)


def _identity(c: Lowering):
    """dropout / drop_path at inference: an Identity; in a lean export no node (readers read the input) unless the
    graph outputs it."""
    em = c.native
    if c.name in em.outputs or not em.lean:
        return em.add("Identity", [c.inputs[0]], c.name)
    em.alias[c.name] = c.inputs[0]
    return c.inputs[0]


CONVERTERS = {
    "conv2d": _conv2d,
    "batch_norm": _batch_norm,
    "activation": _activation,
    "add": lambda c: c.native.add("Add", list(c.inputs), c.name),
    "mul": lambda c: c.native.add("Mul", list(c.inputs), c.name),
    "concat": lambda c: c.native.add("Concat", list(c.inputs), c.name, axis=1),
    "slice_channels": _slice,
    "channel_shuffle": _channel_shuffle,
    "resize_nearest": _resize_nearest,
    "max_pool2d": _max_pool,
    "avg_pool2d": _avg_pool,
    "global_avg_pool": _global_avg_pool,
    "flatten": lambda c: c.native.add("Flatten", [c.inputs[0]], c.name, axis=1),
    "linear": _linear,
    "dropout": _identity,
    "drop_path": _identity,  # inference: the identity
}


def doc_of(graph: Graph) -> str:
    """The graph doc_string: the provenance card and the graph JSON."""
    return json.dumps({"format": DOC_FORMAT, "card": PV.card_of(graph), "graph": json.loads(graph.to_json())})


def to_onnx(graph: Graph, weights: Mapping[str, np.ndarray], dtype: str = "float32", dynamic_hw: bool | None = None,
            return_all: bool = False, lean: bool | None = None):
    """The ``onnx.ModelProto`` of ``graph`` with ``weights`` (canonical, checked) in ``dtype``.

    ``dynamic_hw`` (default: unless the graph is fixed to its size) makes height and width symbolic;
    ``return_all`` makes every node's output a graph output (the divergence locator reads them). ``lean``
    (default: a float32 inference-form graph - batch norms folded, ``lightnets.optimize`` / ``build(...,
    mode="inference")`` - without ``return_all``) writes channel concats as their pieces where the readers take
    pieces (``lightnets.transforms.split_concats``: the part convs' weights are Slices of the canonical
    initializers, which ONNX Runtime folds when it loads the file) and dropouts as no node (unless an output).
    Otherwise every IR node is a tensor of its name and every weight an initializer (the file imports back
    without its metadata).
    """
    check_dtype(dtype, DTYPES)
    if dynamic_hw is None:
        dynamic_hw = not graph.fixed_size
    if dynamic_hw and graph.fixed_size:
        raise LightnetsError(f"graph {graph.name!r} is fixed to its {graph.input_shape[1]}x{graph.input_shape[2]} "
                             "input (meta fixed_size); export it with static height/width (dynamic_hw=False)")
    weights = W.check_weights(graph, weights)
    if lean is None:
        lean = dtype == "float32" and not return_all and bool(graph.meta.get("bn_folded"))
    emitted, sources = graph, {}
    if lean:
        emitted, parts, sources = T.split_concats(graph, weights)
        weights = {**parts, **weights}
    em = _Emitter(emitted, weights, dtype, dynamic_hw)
    em.sources, em.lean = sources, lean
    em.outputs = {n.name for n in graph.nodes} if return_all else set(graph.output_names)
    for node in emitted.nodes:
        CONVERTERS[node.op](Lowering(node, emitted.in_shapes(node), [em.alias.get(i, i) for i in node.inputs], dtype,
                                     node.name, em))
    c, h, w = graph.input_shape
    hw = [HEIGHT, WIDTH] if dynamic_hw else [h, w]

    def info(name: str):
        shape = graph.shapes[name]
        dims = [BATCH, shape[0], *(([None, None] if dynamic_hw else list(shape[1:])) if len(shape) == 3 else [])]
        return helper.make_tensor_value_info(name, em.elem, dims)

    outputs = [n.name for n in graph.nodes] if return_all else list(graph.output_names)
    og = helper.make_graph(em.nodes, graph.name, [helper.make_tensor_value_info(INPUT, em.elem, [BATCH, c, *hw])],
                           [info(o) for o in outputs], list(em.inits.values()), doc_string=doc_of(graph))
    model = helper.make_model(og, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="lightnets", producer_version=PV.lightnets_version(),
                              doc_string=f"lightnets {graph.name}: written from the lightnets graph IR (not traced)")
    card = PV.card_of(graph)
    helper.set_model_props(model, {GRAPH_KEY: graph.to_json(), CARD_KEY: json.dumps(card), DTYPE_KEY: dtype})
    return model


def checked(model):
    """``model`` (an emitted ``onnx.ModelProto``) after the full onnx checker: a failure is a lowering bug."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise LightnetsError(f"the ONNX export of {model.graph.name!r} fails the onnx checker ({str(e)[:300]}); "
                             "please report it with the model id") from None
    return model


def read_onnx(path_or_model) -> tuple[Graph, dict[str, np.ndarray]]:
    """The lightnets graph (card in ``meta``) and canonical weights an exported .onnx file carries."""
    model = path_or_model
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(path_or_model))
        except Exception as e:  # noqa: BLE001 -- protobuf raises its own errors on bad bytes
            raise unreadable(path_or_model, ".onnx", e) from None
    props = {p.key: p.value for p in model.metadata_props}
    if GRAPH_KEY not in props:
        raise FileFormatError(f"{path_or_model} carries no lightnets graph (metadata_props has no {GRAPH_KEY!r}); "
                              "it was not exported by lightnets - build the model from its id instead")
    graph = Graph.from_json(props[GRAPH_KEY])
    card = json.loads(props.get(CARD_KEY) or "null")
    return PV.with_card(graph, card), initializers(model, graph)


def input_dims(path) -> list:
    """The input's dims of an .onnx file: ints, or names of dynamic dims."""
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def initializers(model, graph: Graph | None = None) -> dict[str, np.ndarray]:
    """The canonical weights among a model's initializers (internal constants carry a '/')."""
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if "/" not in i.name}
    return out if graph is None else {p.name: out[p.name] for p in graph.params if p.name in out}
