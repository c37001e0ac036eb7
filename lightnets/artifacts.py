"""Importing deployment artifacts (``.onnx``, ``.tflite``) that lightnets did not write.

A backend's ``read_artifact(path)`` turns a file into an :class:`Artifact`: its weight-carrying operators
as :class:`Layer` s in the file's order, tensors already canonical (dequantized, laid out through
:mod:`lightnets.layouts`), plus what the file says about its input (layout, size, in-model rescaling)
and output (softmax). This module (numpy only) maps an artifact onto a lightnets graph:

- **units.** A conv and the BatchNormalization that alone consumes its output are one unit, as in the
  graph. A conv with a bias and no BN where the graph has conv + BN is a *folded* unit (torch.onnx
  export in eval mode and every TFLite converter fold BN into the conv): the graph's BN becomes the
  identity carrying the bias - gamma 1, beta = bias, mean 0, var = 1 - eps (``sqrt(var + eps)`` is 1
  to the last bit in float64, checked) - so the imported weights run on the id's own graph, in every
  backend and format, and the graph stays the one users build by name.
- **matching.** Graph units in node order take the first unused file unit of the same kind whose
  canonical shapes, stride and groups agree (file order may interleave parallel branches differently
  from the graph's) and, where the reader gives the file's data flow (``Artifact.producers``), that is fed by
  the file units its own feeders took: onnxruntime's basic offline optimization writes ShuffleNet's two
  branches in the other order, with equal shapes (matched in file order, the probe refused them at 0.97
  relative, measured); every file unit must be used. Pads are then compared node by node at the file's
  input size: a file padded TF "same" (``auto_pad``/``SAME``, or zero ``Pad`` + valid) fits only a
  graph padded "same" (the ``_keras`` ids), symmetric pads only "explicit" graphs.
- **which id.** Without ``arch``, every registered id is tried at the file's class count; exactly one
  must fit (ids that differ only in BN eps are told apart by a BN-carrying file's eps; a folded file
  cannot tell them apart and needs ``arch``).
- **the probe.** The file's own runtime (ONNX Runtime / LiteRT) runs a fixed random batch beside the
  float64 reference of the imported graph (a file whose batch is fixed - ``torch.onnx.export`` without
  ``dynamic_axes``, every TF1 converter's file - is fed its own batch at a time, :func:`in_batches`, and the
  card says so; a file with several outputs - a backbone - has each output paired with a graph output by
  shape and probed; the runtime's own errors are re-raised as ``RuntimeFailure`` naming the file, the
  runtime, the input tensor and the fix); the bound is the float32 noise of the same graph in that
  runtime (``Backend.float32_output``; LiteRT: the keras model a flat buffer is converted from) times
  :data:`FLOAT32_NOISE_FACTOR`. Quantized files are probed inside their quantized input range
  and judged by top-1 agreement or a loose relative bound instead (:data:`QUANTIZED_TOP1`,
  :data:`QUANTIZED_REL`: a coarse check, a mapping error below the quantization noise passes it).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from . import features as FT
from . import ops, reference, registry
from . import provenance as PV
from . import weights as W
from .errors import FileFormatError, LightnetsError, WeightsError, runtime_failure
from .frameworks import load_backend
from .graph import Graph, Node
from .numerics import rel_error, softmax

KINDS = ("conv", "bn", "linear")


class Layer(NamedTuple):
    """One weight-carrying operator of a foreign file (in the file's order).

    ``tensors`` are canonical: conv ``weight`` (O, I/groups, kh, kw) and optional ``bias``; bn
    ``gamma``, ``beta``, ``mean``, ``var``; linear ``weight`` (out, in) and optional ``bias``.
    ``attrs``: conv ``stride`` (sh, sw), ``groups``, ``padding`` ("same" | "valid" | "explicit") and
    ``pads`` (top, bottom, left, right; a zero Pad op in front of the conv is folded into them);
    bn ``eps``. ``inputs``/``output`` are the file's tensor names (a BN pairs with the conv whose
    output is its input)."""

    name: str
    op: str
    kind: str
    tensors: dict[str, np.ndarray]
    attrs: dict[str, Any]
    inputs: tuple[str, ...]
    output: str


class Artifact(NamedTuple):
    """What a foreign ``.onnx``/``.tflite`` file holds, as a backend's ``read_artifact`` reads it."""

    path: str
    format: str  # "onnx" | "tflite"
    layers: tuple[Layer, ...]
    input_layout: str  # "NCHW" | "NHWC"
    input_hw: tuple[int, int] | None  # None: height/width are dynamic
    rescaling: tuple[float, float] | None  # the file computes x * scale + offset on its input first
    output_activation: str  # "linear" | "softmax"
    quantized: str | None  # e.g. "int8 weights dequantized (per-channel scales)", else None
    notes: tuple[str, ...]
    run: Any  # run(x: float32 array in input_layout) -> float32 output (a list: one per file output), any batch
    input_range: tuple[float, float] | None = None  # a quantized input's representable range (the probe's inputs)
    batch: int | None = None  # the file's fixed batch (None: dynamic); ``run`` feeds it that many images at a time
    outputs: int = 1  # how many outputs the file has (a backbone: one per feature map)
    # tensor -> the non-constant input tensors of the op that makes it (the image input -> None; None: not read);
    # the matcher follows the data flow where shapes alone are ambiguous (onnxruntime reorders parallel branches)
    producers: dict | None = None


def in_batches(run, x: np.ndarray, batch: int | None):
    """``run(x)`` for a file whose batch is fixed to ``batch`` (None: dynamic, one call): ``x`` in chunks of
    ``batch`` images, the last one padded with copies of its last image, outputs (an array or a list of
    arrays) cut back and concatenated."""
    if batch is None or len(x) == batch:
        return run(x)
    parts = []
    for i in range(0, len(x), batch):
        chunk = x[i: i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, 0)])
        y = run(chunk)
        parts.append([v[:n] for v in y] if isinstance(y, list) else y[:n])
    if isinstance(parts[0], list):
        return [np.concatenate(vs) for vs in zip(*parts, strict=True)]
    return np.concatenate(parts)


RESCALING_OPS = ("mul", "div", "add", "sub")


def then_rescale(rescaling: tuple[float, float], op: str, c: float) -> tuple[float, float]:
    """``(scale, offset)`` of ``x * scale + offset`` followed by ``op`` (one of ``RESCALING_OPS``, the input
    first) with the scalar ``c``: how the importers fold a file's leading scalar steps into
    ``Artifact.rescaling``."""
    scale, offset = rescaling
    if op == "mul":
        return scale * c, offset * c
    if op == "div":
        return scale / c, offset / c
    return scale, offset + (c if op == "add" else -c)


# --- units: a conv with its BN, or a linear ---------------------------------------------------------
class Unit(NamedTuple):
    """A conv and its BN (``bn`` None: no BN - folded into the conv, or none in the net), or a linear."""

    kind: str  # "conv" | "linear"
    main: Any  # a Layer (file) or a Node (graph)
    bn: Any  # the BN Layer/Node consuming ``main``'s output alone, or None


def file_units(art: Artifact) -> list[Unit]:
    """The file's units in file order; FileFormatError for a BN that follows no conv."""
    bn_of = {}
    for layer in art.layers:
        if layer.kind == "bn":
            bn_of.setdefault(layer.inputs[0], []).append(layer)
    convs = {la.output for la in art.layers if la.kind == "conv"}
    stray = [la for la in art.layers if la.kind == "bn" and (la.inputs[0] not in convs or len(bn_of[la.inputs[0]]) > 1)]
    if stray:
        raise FileFormatError(f"{art.path}: BatchNormalization {stray[0].name!r} does not follow a conv alone; "
                              "lightnets imports nets whose batch norms each follow one conv")
    return [Unit(la.kind, la, (bn_of.get(la.output) or [None])[0]) for la in art.layers if la.kind != "bn"]


def graph_units(graph: Graph) -> list[Unit]:
    """The graph's units in node order (a batch_norm joins the conv it alone consumes)."""
    users: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n)
    out, taken = [], set()
    for n in graph.nodes:
        if n.op == "conv2d":
            after = users.get(n.name, [])
            bn = after[0] if len(after) == 1 and after[0].op == "batch_norm" else None
            out.append(Unit("conv", n, bn))
            taken |= {bn.name} if bn is not None else set()
        elif n.op == "linear":
            out.append(Unit("linear", n, None))
        elif n.op == "batch_norm" and n.name not in taken:
            raise WeightsError(f"graph {graph.name!r}: batch_norm {n.name!r} follows no conv; a foreign file "
                               "cannot be mapped onto it")
    return out


# --- matching ---------------------------------------------------------------------------------------
def identity_var(eps: float) -> float:
    """The variance that makes a BN with gamma 1 and mean 0 the identity: ``sqrt(var + eps) == 1`` in float64."""
    var = 1.0 - eps
    for _ in range(8):
        s = np.sqrt(np.float64(var) + np.float64(eps))
        if s == 1.0:
            return float(var)
        var = float(np.nextafter(var, -np.inf if s > 1 else np.inf))
    raise WeightsError(f"no float64 variance makes a batch norm with eps {eps} the identity")


def _weight_fits(g: Unit, f: Unit, graph: Graph) -> str | None:
    """Why file unit ``f`` cannot fill graph unit ``g`` (None: it can)."""
    node, layer = g.main, f.main
    w = layer.tensors["weight"]
    if g.kind == "linear":
        if f.kind == "conv":
            if f.bn is not None or w.shape[2:] != (1, 1) or layer.attrs.get("groups", 1) != 1:
                return "a linear needs a linear or an ungrouped 1x1 conv without BN"
            w = w.reshape(w.shape[:2])
        want = (node.attrs["out_features"], graph.in_shapes(node)[0][0])
        if w.shape != want:
            return f"weight {w.shape} != {want}"
        if "bias" in layer.tensors and not node.attrs["bias"]:
            return "the file's linear has a bias, the graph's none"
        return None
    if f.kind != "conv":
        return f"a {f.kind} cannot fill a conv"
    c = graph.in_shapes(node)[0][0]
    a = node.attrs
    want = (a["out_channels"], c // a["groups"], *a["kernel"])
    if w.shape != want:
        return f"weight {w.shape} != {want}"
    if layer.attrs["groups"] != a["groups"] or tuple(layer.attrs["stride"]) != tuple(a["stride"]):
        return f"groups/stride {layer.attrs['groups']}/{tuple(layer.attrs['stride'])} != {a['groups']}/{a['stride']}"
    has_bias = "bias" in layer.tensors
    if g.bn is None and (f.bn is not None or (has_bias and not a["bias"])):
        return "the graph's conv has no BN" + (" and no bias" if not a["bias"] else "")
    if g.bn is not None and f.bn is None and not has_bias:
        return "the graph's conv has a BN, the file's conv neither a BN nor a folded bias"
    return None


def _file_pads(layer: Layer, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    a = layer.attrs
    if a["padding"] == "same":
        kh, kw = layer.tensors["weight"].shape[2:]
        return ops.effective_pads({"padding": "same", "kernel": (kh, kw), "stride": a["stride"]}, hw)
    return tuple(a["pads"]) if a["padding"] == "explicit" else (0, 0, 0, 0)


def _pad_problem(graph: Graph, node: Node, layer: Layer, shapes) -> str | None:
    hw = tuple(shapes[node.inputs[0]][1:])
    want, got = ops.effective_pads(dict(node.attrs), hw), _file_pads(layer, hw)
    if want == got:
        return None
    flavour = "TF 'same'" if node.attrs.get("padding") == "same" else "symmetric (explicit)"
    return (f"node {node.name!r} pads {want} (top, bottom, left, right; {flavour}) at {hw[0]}x{hw[1]}, the file's "
            f"{layer.op} {layer.name!r} pads {got}")


class Match(NamedTuple):
    weights: dict[str, np.ndarray]
    graph: Graph  # BN eps taken from a BN-carrying file
    folded: int  # units whose BN was folded into the conv
    problem: str | None  # None: every unit matched and every pad agrees
    matched: int  # units matched before the first problem
    layers: dict | None = None  # graph conv/linear node -> the file Layer matched onto it (a fit only)


def _upstream(units: list[Unit], first_input, producers_of, out_names) -> list[frozenset]:
    """Per unit, the units (indices; -1: the image input) that feed it through weightless ops only."""
    owner = {}
    for k, u in enumerate(units):
        for t in out_names(u):
            owner[t] = k
    memo: dict = {}

    def up(t) -> frozenset:
        if t in owner:
            return frozenset([owner[t]])
        if t not in memo:
            memo[t] = frozenset()  # a cycle guard; constants and unknown tensors feed nothing
            ins = producers_of(t)
            memo[t] = frozenset([-1]) if ins is None else frozenset().union(*(up(i) for i in ins))
        return memo[t]

    return [up(first_input(u)) for u in units]


def _graph_upstream(graph: Graph, gu: list[Unit]) -> list[frozenset]:
    nodes = {n.name: n for n in graph.nodes}
    return _upstream(gu, lambda u: u.main.inputs[0], lambda t: nodes[t].inputs if t in nodes else None,
                     lambda u: [u.main.name] + ([u.bn.name] if u.bn is not None else []))


def _file_upstream(art: Artifact, fu: list[Unit]) -> list[frozenset] | None:
    if art.producers is None:
        return None
    prod = art.producers
    return _upstream(fu, lambda u: u.main.inputs[0], lambda t: prod.get(t, ()),
                     lambda u: [u.main.output] + ([u.bn.output] if u.bn is not None else []))


def match(graph: Graph, art: Artifact, hw: tuple[int, int]) -> Match:
    """Map the file's units onto ``graph`` at input size ``hw`` (see the module doc); never raises on a misfit:
    :attr:`Match.problem` says why it does not fit.

    With the file's data flow (``Artifact.producers``), a graph unit takes the first fitting file unit that is fed
    by the file units its own feeders took (parallel branches of equal shapes in another order, as onnxruntime's
    optimizer writes them), else the first fitting one."""
    gu, fu = graph_units(graph), file_units(art)
    shapes = graph.shapes_at(*hw)
    g_up, f_up = _graph_upstream(graph, gu), _file_upstream(art, fu)
    took: dict[int, int] = {-1: -1}  # graph unit -> file unit
    used: set[int] = set()
    weights: dict[str, np.ndarray] = {}
    eps: dict[str, float] = {}
    pairs: dict[str, Layer] = {}
    folded = 0
    for k, g in enumerate(gu):
        why, flow = {}, None
        if f_up is not None and all(j in took for j in g_up[k]):
            want_up = frozenset(took[j] for j in g_up[k])
            flow = next((i for i, f in enumerate(fu) if i not in used and f_up[i] == want_up
                         and _weight_fits(g, f, graph) is None), None)
        i = flow
        if i is None:  # the first unused file unit that fits
            for j, f in enumerate(fu):
                if j not in used:
                    why[j] = _weight_fits(g, f, graph)
                    if why[j] is None:
                        i = j
                        break
        if i is None:
            first = next(iter(why.items()), None)
            detail = f"; the next unused file op {fu[first[0]].main.op} {fu[first[0]].main.name!r}: {first[1]}" \
                if first else "; the file has no op left"
            return Match({}, graph, folded, f"nothing in the file fits graph {g.kind} {g.main.name!r}{detail}", k)
        used.add(i)
        took[k] = i
        f, node = fu[i], g.main
        pairs[node.name] = f.main
        if g.kind == "conv":
            problem = _pad_problem(graph, node, f.main, shapes)
            if problem:
                return Match({}, graph, folded, problem, k)
        w = f.main.tensors["weight"]
        weights[f"{node.name}.weight"] = w.reshape(w.shape[:2]) if g.kind == "linear" else w
        bias = f.main.tensors.get("bias")
        if g.bn is None:
            if node.attrs["bias"]:  # a zero bias may be left out of a file
                weights[f"{node.name}.bias"] = bias if bias is not None else np.zeros(w.shape[0], w.dtype)
            continue
        n = g.bn.name
        if f.bn is not None:
            t = f.bn.tensors
            if f.bn.attrs.get("affine"):  # a per-channel scale and shift (an unfolded TFLite BN): mean 0, var 1 - eps
                t = {"gamma": t["scale"], "beta": t["shift"], "mean": np.zeros_like(t["scale"]),
                     "var": np.full_like(t["scale"], identity_var(float(g.bn.attrs["eps"])))}
            mean = t["mean"] - bias if bias is not None else t["mean"]  # a conv bias before the BN shifts its mean
            weights.update({f"{n}.gamma": t["gamma"], f"{n}.beta": t["beta"], f"{n}.mean": mean, f"{n}.var": t["var"]})
            file_eps = f.bn.attrs["eps"]  # ONNX's epsilon is a float32 attribute: 1e-3 -> 1.0000000475e-3
            if file_eps is not None and np.float32(file_eps) != np.float32(g.bn.attrs["eps"]):
                eps[n] = float(file_eps)
        else:
            folded += 1
            var = identity_var(float(g.bn.attrs["eps"]))
            weights.update({f"{n}.gamma": np.ones_like(bias), f"{n}.beta": bias, f"{n}.mean": np.zeros_like(bias),
                            f"{n}.var": np.full_like(bias, var)})
    left = [fu[i].main for i in range(len(fu)) if i not in used]
    if left:
        return Match({}, graph, folded, f"the file has {len(left)} weight op(s) the graph does not: "
                     f"{', '.join(f'{la.op} {la.name!r}' for la in left[:3])}", len(gu))
    if eps:
        nodes = tuple(Node(nd.name, nd.op, nd.inputs, {**nd.attrs, "eps": eps[nd.name]}) if nd.name in eps else nd
                      for nd in graph.nodes)
        graph = graph.replace(nodes=nodes)
    return Match(weights, graph, folded, None, len(gu), pairs)


# --- which id, and the probe -----------------------------------------------------------------------------
FLOAT32_NOISE_FACTOR = 10.0  # file runtime vs float64 reference, over the same graph's float32 noise there
FLOAT32_FLOOR = 1e-6
PROBE_SEED = 0
PROBE_BATCH = 4
# quantized files: top-1 of the file vs the float64 reference of the dequantized weights on 16 inputs. Measured:
# 64 of 64 agree for int8 TFLite files of keras.applications MobileNet/V2/V3Small/V3Large (BN statistics drawn,
# rel error 0.9-4.3 %), but random-init lightnets nets agree on ~50 % (parity/tolerances.py INT8_TOP1_FLOOR: int8
# rounding grows with depth, 1000 random logits have small margins); a net that is not the file's agrees on
# ~1/classes. Random keras nets are the other way round: logits nearly input-independent, so top-1 is a coin
# toss, while the rel error stays small. A file passes on either: 4 of 16 top-1 agree, or rel error <= 15 %;
# a wrong mapping fails both (top-1 ~1/classes, rel error O(1)).
PROBE_BATCH_QUANTIZED = 16
QUANTIZED_TOP1 = 0.25
QUANTIZED_REL = 0.15
# quantized backbones (several outputs, no classes): the lowest per-image correlation of any feature map with the
# reference, on N(0, 1) inputs clipped to the input range. Measured, int8 ghostnet_050 backbone exported by lightnets
# (64 px): >= 0.957 mapped right (rel error up to 0.22: int8 noise of a random net), <= 0.18 with two same-shape
# depthwise kernels swapped (uniform inputs over the whole range saturate: 0.37 mapped right, so not those)
QUANTIZED_CORR = 0.8


def _correlation(y: np.ndarray, ref: np.ndarray) -> float:
    """The lowest Pearson correlation over the batch of ``y`` with ``ref`` (per image, flattened)."""
    a = y.reshape(len(y), -1) - y.reshape(len(y), -1).mean(1, keepdims=True)
    b = ref.reshape(len(ref), -1) - ref.reshape(len(ref), -1).mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return float(np.min(np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), 1.0)))


class Imported(NamedTuple):
    graph: Graph  # the id's graph (BN eps of a BN-carrying file), provenance card in meta
    weights: dict[str, np.ndarray]
    notes: tuple[str, ...]
    probe: dict


def _has_top(fu: list[Unit]) -> bool:
    last = fu[-1] if fu else None
    return last is not None and last.bn is None and (
        last.kind == "linear" or last.main.tensors["weight"].shape[2:] == (1, 1))


def classes_of(art: Artifact) -> int | None:
    """The file's class count (its last weight op, a linear or a 1x1 conv without BN), None without a head."""
    fu = file_units(art)
    return int(fu[-1].main.tensors["weight"].shape[0]) if _has_top(fu) else None


def _size(art: Artifact, input_size: int | None) -> tuple[int, int]:
    if art.input_hw is None:
        return (input_size or 224,) * 2
    if input_size is not None and (input_size, input_size) != tuple(art.input_hw):
        raise WeightsError(f"{art.path} is fixed to {art.input_hw[0]}x{art.input_hw[1]} inputs, not input_size="
                           f"{input_size}; drop input_size (or re-export the file with dynamic height/width)")
    return tuple(art.input_hw)


def fitting(art: Artifact, arch: str | Graph | None = None, num_classes: int | None = None,
            input_size: int | None = None) -> tuple[list[tuple[str, Match]], tuple[int, int], Match | None]:
    """The ids (``arch`` alone if given) whose graph the file's weights fit, the input size used, and the
    closest misfit (for the error message)."""
    fu = file_units(art)
    if not fu:
        raise FileFormatError(f"{art.path} holds no conv or linear weights; it is not one of the light CNNs")
    if input_size is None and isinstance(arch, Graph) and arch.input_shape[1] == arch.input_shape[2]:
        input_size = arch.input_shape[1]  # a recorded graph: a dynamic-size file at the graph's own size
    hw = _size(art, input_size)
    top = _has_top(fu)
    n = num_classes or classes_of(art) or 1000
    if isinstance(arch, Graph):  # a file's recorded graph (a lightnets export's sidecar)
        graphs = {arch.name: lambda: arch.replace(input_shape=(arch.input_shape[0], *hw))}
    elif art.outputs > 1:  # a backbone file (one output per feature map): the ids' feature graphs
        graphs = {mid: functools.partial(_feature_spec, mid, hw[0])
                  for mid in ([arch] if arch is not None else registry.list_models())}
    else:
        graphs = {mid: functools.partial(registry.get_spec, mid, num_classes=n, input_size=hw[0], include_top=top)
                  for mid in ([arch] if arch is not None else registry.list_models())}
    fits, closest = [], None
    for mid, make in graphs.items():
        try:
            graph = make()
        except LightnetsError:
            if arch is not None:
                raise
            continue  # an id without feature maps (a family that marks none) cannot be a backbone file's
        if arch is None:
            try:
                if len(graph_units(graph)) != len(fu):
                    continue
            except WeightsError:  # an id whose graph no file maps onto (a batch norm after a split conv)
                continue
        m = match(graph, art, hw)
        if m.problem is None:
            fits.append((mid, m))
        elif closest is None or m.matched > closest[1].matched:
            closest = (mid, m)
    return fits, hw, closest


def _feature_spec(mid: str, size: int) -> Graph:
    """The backbone graph of id ``mid`` (default feature maps), as ``lightnets.build(mid, features=True)``."""
    return FT.feature_graph(registry.get_spec(mid, input_size=size), None)


def _paired(got: list[np.ndarray], want: list[np.ndarray], path: str, mid: str) -> list[np.ndarray]:
    """The file's outputs in the order of the graph's (the same shapes in order, else each graph output takes the
    first unused file output of its shape); WeightsError when the outputs do not correspond."""
    shapes = [tuple(v.shape) for v in want]
    if [tuple(v.shape) for v in got] == shapes:
        return got
    left, out = list(range(len(got))), []
    for w in shapes:
        k = next((i for i in left if tuple(got[i].shape) == w), None) if len(got) == len(want) else None
        if k is None:
            raise WeightsError(f"{path}: the file's output shapes {[tuple(v.shape) for v in got]} != the {mid} "
                               f"graph's {shapes} (NCHW); is it a file of that net (features=True for a backbone)?")
        left.remove(k)
        out.append(got[k])
    return out


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if layout == "NHWC" else x)


def _from_layout(y: np.ndarray, layout: str) -> np.ndarray:
    y = np.asarray(y, np.float64)
    return y.transpose(0, 3, 1, 2) if layout == "NHWC" and y.ndim == 4 else y


def import_artifact(art: Artifact, runtime, arch: str | Graph | None = None, num_classes: int | None = None,
                    input_size: int | None = None, source: dict | None = None,
                    preprocessing: dict | None = None) -> Imported:
    """Import a foreign file read by a backend: the id it fits, canonical weights, probe (see the module doc).

    ``runtime`` is the backend of the file's runtime (for the float32 noise bound); ``source`` and
    ``preprocessing`` go to the provenance card (default: the file and its sha256; the in-model rescaling)."""
    fits, hw, closest = fitting(art, arch, num_classes, input_size)
    if not fits:
        where = f"{closest[0]}: {closest[1].problem}" if closest else "no id has as many weight ops"
        asked = f" {arch.name if isinstance(arch, Graph) else arch!r}" if arch is not None else ""
        raise WeightsError(f"{art.path} fits no lightnets id{asked} ({where}); "
                           + ("is it a file of that architecture?" if arch else "pass arch= to see why an id misfits"))
    rng = np.random.default_rng(PROBE_SEED)
    shape = (PROBE_BATCH_QUANTIZED if art.quantized else PROBE_BATCH, art.layers[0].tensors["weight"].shape[1], *hw)
    if art.input_range is not None and art.outputs > 1:  # a quantized backbone: inputs like its calibration's
        feed = np.clip(rng.standard_normal(shape), *art.input_range)
        x = feed if art.rescaling is None else feed * art.rescaling[0] + art.rescaling[1]
    elif art.input_range is not None:  # a quantized input clips outside its range: probe inside it
        feed = rng.uniform(*art.input_range, shape)
        x = feed if art.rescaling is None else feed * art.rescaling[0] + art.rescaling[1]
    else:
        x = rng.standard_normal(shape)
        feed = x if art.rescaling is None else (x - art.rescaling[1]) / art.rescaling[0]
    fed = _to_layout(feed, art.input_layout).astype(np.float32)
    try:
        raw = art.run(fed)
    except LightnetsError:
        raise
    except Exception as e:  # noqa: BLE001 -- the runtimes raise their own exception types
        raise runtime_failure(art.path, runtime.name, "input", fed.shape, e,
                              f"the import probe fed {len(fed)} random {art.input_layout} images of the file's input "
                              "size; check the file runs in its runtime on such a batch, or pass input_size= for a "
                              "file with dynamic height/width") from None
    raw = raw if isinstance(raw, list) else [raw]
    raw = [_from_layout(y, art.input_layout) for y in raw]

    def outputs(y) -> list[np.ndarray]:
        if isinstance(y, list):
            return [np.asarray(v, np.float64) for v in y]
        return [softmax(y) if art.output_activation == "softmax" else np.asarray(y, np.float64)]

    errors = {}
    for mid, m in fits:
        want = outputs(reference.run(m.graph, m.weights, x))
        got_m = _paired(raw, want, art.path, mid)
        errors[mid] = (max(rel_error(g, w) for g, w in zip(got_m, want, strict=True)), want, got_m)
    best = min(errors, key=lambda k: errors[k][0])
    ties = [k for k in errors if errors[k][0] <= 10 * errors[best][0] + 1e-12 and k != best]
    if ties:
        raise WeightsError(f"{art.path} fits several ids that compute the same here: {', '.join([best, *ties])}; "
                           "pass arch= (CLI --arch)")
    m = dict(fits)[best]
    err, want, got = errors[best]
    probe = {"rel_error": err, "runtime": runtime.name, "shape": tuple(x.shape), "file_batch": art.batch}
    found = " found from the file" if arch is None else ""
    notes = [f"imported from {art.format} file {art.path} (id {best!r}{found})"]
    if art.batch is not None:
        notes.append(f"the file's batch is fixed to {art.batch}: lightnets runs it {art.batch} image(s) at a time "
                     f"(the import probe: {len(x)} images in {-(-len(x) // art.batch)} runs); the imported model "
                     "takes any batch")
    if len(got) > 1:
        notes.append(f"{len(got)} outputs (feature maps), each probed against the float64 reference")
    if art.quantized and len(got) > 1:  # a quantized backbone: no classes to agree on; each map's correlation
        corr = min(_correlation(g, w) for g, w in zip(got, want, strict=True))
        probe.update(tolerance=None, min_correlation=corr)
        notes.append(f"{art.quantized}; the probe compares each feature map by its correlation with the float64 "
                     f"reference (lowest {corr:.3f} on {len(x)} N(0, 1) inputs clipped to the input range, rel error "
                     f"{err:.1e}), a coarse check")
        ok = corr >= QUANTIZED_CORR or err <= QUANTIZED_REL
    elif art.quantized:
        got, want = got[0], want[0]
        if np.any(np.ptp(got.reshape(len(got), -1), -1) == 0):
            raise WeightsError(f"{art.path}: the quantized file gives one value for every class on random inputs "
                               f"(its {art.output_activation} output quantized flat), so its top-1 cannot be checked; "
                               "import the float file, or a quantized file with a linear (logits) head")
        agree = float(np.mean(np.argmax(got, -1) == np.argmax(want, -1)))
        probe.update(top1_agreement=agree, tolerance=None)
        notes.append(f"{art.quantized}; the probe compares top-1 (agreement {agree:.0%} on {len(x)} random inputs, "
                     f"rel error {err:.1e}), a coarse check: a mapping error smaller than the quantization noise "
                     "passes it")
        ok = agree >= QUANTIZED_TOP1 or err <= QUANTIZED_REL
    else:
        ours = outputs(runtime.float32_output(m.graph, m.weights, x))
        noise = max(rel_error(o, w) for o, w in zip(ours, want, strict=True))
        tol = max(FLOAT32_NOISE_FACTOR * noise, FLOAT32_FLOOR)
        probe.update(tolerance=tol, float32_noise=noise)
        ok = err <= tol
    if not ok:
        bound_q = (f"each map's correlation {QUANTIZED_CORR}" if art.outputs > 1 else  # (got: one array by now)
                   f"top-1 agreement {QUANTIZED_TOP1:.0%}, measured {probe.get('top1_agreement', 0):.0%},") + \
            f" or {QUANTIZED_REL:.0%} relative"
        raise WeightsError(f"{art.path}: the file's {runtime.name} output differs from the float64 reference of "
                           f"{best!r} with its weights by {err:.2e} relative (bound {probe['tolerance'] or bound_q}); "
                           "the file is not that net - not returning a wrong model")
    if m.folded:
        notes.append(f"{m.folded} batch norms were folded into their convs in the file: imported as identity batch "
                     "norms carrying the conv bias (gamma 1, mean 0, var 1 - eps)")
    nc = PV.num_classes_of(m.graph)
    if nc == 1001:
        notes.append("1001 classes: index 0 is the background class of TF-slim checkpoints (ImageNet class i is "
                     "index i + 1)")
    notes += list(art.notes)
    pre = None if art.rescaling is None else {"in_model_rescaling": {"scale": art.rescaling[0],
                                                                     "offset": art.rescaling[1]}}
    pre = preprocessing if preprocessing is not None else pre
    if art.rescaling is not None:
        notes.append(f"the file rescales its input inside (x * {art.rescaling[0]:g} + {art.rescaling[1]:g}); the "
                     "lightnets model takes the rescaled input")
    src = source or {"kind": "file", "path": str(art.path), "sha256": PV.sha256_file(art.path), "format": art.format}
    card = PV.make_card(m.graph, src, preprocessing=pre, classifier_activation=art.output_activation, notes=notes)
    dtype = np.float64 if any(v.dtype == np.float64 for v in m.weights.values()) else np.float32
    weights = W.check_weights(m.graph, {k: np.array(v, dtype) for k, v in m.weights.items()})  # writable copies
    return Imported(PV.with_card(m.graph, card), weights, tuple(notes), probe)


def read(path, fmt: str, runtime: str, arch: str | Graph | None = None, num_classes: int | None = None,
         input_size: int | None = None, source: dict | None = None) -> Imported:
    """Read and import a foreign ``fmt`` file with the backend ``runtime`` (see :func:`import_artifact`)."""
    be = load_backend(runtime)
    return import_artifact(be.read_artifact(path), be, arch, num_classes, input_size, source)
