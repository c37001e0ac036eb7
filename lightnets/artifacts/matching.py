"""A file's weight ops mapped onto a lightnets graph (numpy only): units (a conv with the BN that alone consumes
its output, or a linear) matched in node order by shapes, stride, groups and data flow, then pads compared at the
file's input size; a BN folded into its conv becomes the identity BN carrying the bias (the package doc)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import ops
from ..errors import FileFormatError, WeightsError
from ..graph import Graph, Node
from .artifact import Artifact, Layer


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
