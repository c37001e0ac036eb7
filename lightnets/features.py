"""Backbones: the feature maps at the end of each resolution stage, as outputs of the graph.

Each family marks where its stages end (``FEATURES`` / ``features(meta)`` in its ``lightnets.archs`` module,
timm's ``features_only`` taps for the families timm has). :func:`feature_info` describes them framework-free
(timm's keys: ``module``, ``num_chs``, ``reduction``, ``index``, ``stage``; plus ``node``, the IR node whose
output the map is); :func:`feature_graph` prunes a classifier graph to the nodes those maps need and makes
them its ``outputs``, so every backend and the float64 reference return them as a list, in feature order.
Parameters keep their names: a feature graph's weights are the classifier's minus the head.

``out_indices`` index the family's feature list (negative from the end, any order, no repeats); the default
is the last map at each reduction (for timm's families: all five, strides 2/4/8/16/32).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .archs import FAMILIES
from .archs.common import FeaturePoint
from .errors import SpecError
from .graph import INPUT, Graph

STRIDED = ("conv2d", "max_pool2d", "avg_pool2d")
META_KEY = "features"  # a feature graph's meta: the dicts of its outputs (feature_info of that graph)


def _family_points(graph: Graph) -> tuple[FeaturePoint, ...]:
    family = graph.meta.get("family")
    for module in FAMILIES:
        if module.FAMILY == family:
            return tuple(module.features(graph.meta) if hasattr(module, "features") else module.FEATURES)
    raise SpecError(f"graph {graph.name!r} has no feature maps: its meta names no lightnets family "
                    f"(family={family!r}); build features from a model id (lightnets.list_models()) or a graph "
                    "an arch builder made")


def reductions(graph: Graph) -> dict[str, int | tuple[int, int] | None]:
    """Per value (input and every node), its stride w.r.t. the input: the product of the strides of the
    conv/pool nodes on the way (the max over branches); None after a global pool / flatten."""
    red: dict[str, tuple[int, int] | None] = {INPUT: (1, 1)}
    for n in graph.nodes:
        if n.op == "resize_nearest":  # at its second input's size, whatever strides made the first
            red[n.name] = red[n.inputs[1]]
            continue
        ins = [red[i] for i in n.inputs if red[i] is not None]  # an SE gate (pooled) scales a map: skip it
        if not ins or n.op in ("global_avg_pool", "flatten", "linear"):
            red[n.name] = None
            continue
        h, w = max(r[0] for r in ins), max(r[1] for r in ins)
        if n.op in STRIDED:
            sh, sw = n.attrs["stride"]
            h, w = h * sh, w * sw
        red[n.name] = (h, w)
    return {k: (v[0] if v is not None and v[0] == v[1] else v) for k, v in red.items()}


def _resolve(graph: Graph, node: str) -> str:
    """A node name, or the last node under the prefix ``node.`` (a block's output)."""
    names = [n.name for n in graph.nodes]
    if node in names:
        return node
    under = [n for n in names if n.startswith(node + ".")]
    if not under:
        raise SpecError(f"graph {graph.name!r} has no node or block {node!r} that its family marks as a stage end")
    return under[-1]


def feature_points(graph: Graph) -> list[dict]:
    """Every feature map ``graph`` offers, as timm-style dicts (``index`` = position in this list).

    A feature graph (one :func:`feature_graph` made) offers exactly its outputs.
    """
    if META_KEY in graph.meta:
        return [dict(d) for d in graph.meta[META_KEY]]
    red = reductions(graph)
    out = []
    for i, p in enumerate(_family_points(graph)):
        node = _resolve(graph, p.node)
        out.append({"module": p.module, "num_chs": graph.shapes[node][0], "reduction": red[node], "index": i,
                    "stage": p.stage, "node": node})
    return out


def default_indices(points: Sequence[dict]) -> tuple[int, ...]:
    """Positions of the last feature map at each reduction."""
    last = {d["reduction"]: i for i, d in enumerate(points)}
    return tuple(sorted(last.values()))


def select(points: Sequence[dict], out_indices: Iterable[int] | None) -> list[dict]:
    """The dicts ``out_indices`` picks (default :func:`default_indices`), in feature order."""
    n = len(points)
    if out_indices is None:
        chosen = default_indices(points)
    else:
        if isinstance(out_indices, (int, str)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                          for i in out_indices):
            raise SpecError(f"out_indices must be a sequence of ints (feature indices 0..{n - 1}), got "
                            f"{out_indices!r}")
        idx = list(out_indices)
        bad = [i for i in idx if not -n <= i < n]
        if not idx or bad:
            raise SpecError(f"out_indices {tuple(idx)} must be a non-empty selection of the {n} feature maps "
                            f"(0..{n - 1}, or negative from the end); lightnets.feature_info(arch, out_indices=None) "
                            "lists them")
        norm = [i % n for i in idx]
        if len(set(norm)) != len(norm):
            raise SpecError(f"out_indices {tuple(idx)} name a feature map twice; list each once")
        chosen = tuple(sorted(norm))
    return [dict(points[i]) for i in chosen]


def feature_graph(graph: Graph, out_indices: Iterable[int] | None = None) -> Graph:
    """``graph`` pruned to the nodes the selected feature maps need, with those maps as its ``outputs``
    (a list even of one) and their dicts in ``meta["features"]``. Node and parameter names are kept."""
    if graph.multi_output or META_KEY in graph.meta:
        if out_indices is None and META_KEY in graph.meta:
            return graph
        raise SpecError(f"graph {graph.name!r} already has outputs {list(graph.output_names)}; build features "
                        "from the classifier graph (the model id or its weights file)")
    chosen = select(feature_points(graph), out_indices)
    outputs = tuple(d["node"] for d in chosen)
    needed = set(outputs)
    for n in reversed(graph.nodes):
        if n.name in needed:
            needed.update(n.inputs)
    nodes = tuple(n for n in graph.nodes if n.name in needed)
    return graph.replace(nodes=nodes, outputs=outputs, meta={**graph.meta, META_KEY: chosen})


class FeatureInfo(list):
    """The feature maps of a backbone, as a list of dicts with timm's ``FeatureInfo`` accessors."""

    def get_dicts(self, keys: Sequence[str] | None = None) -> list[dict]:
        return [dict(d) if keys is None else {k: d[k] for k in keys} for d in self]

    def channels(self) -> list[int]:
        return [d["num_chs"] for d in self]

    def reduction(self) -> list:
        return [d["reduction"] for d in self]

    def module_name(self) -> list[str]:
        return [d["module"] for d in self]

    def nodes(self) -> list[str]:
        return [d["node"] for d in self]

    @property
    def out_indices(self) -> tuple[int, ...]:
        return tuple(d["index"] for d in self)
