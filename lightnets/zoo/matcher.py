"""The one mapping mechanism: a zoo state dict's keys -> the imported graph's canonical parameters.

The zoo model's parameters grouped by module in state-dict order are matched positionally to the
graph's parameters grouped by node in order. A module's leaves are read through the backend's
``NATIVE_NAMES`` (e.g. torch BN ``running_var`` = canonical ``var``), its kind (conv / bn / linear)
and every shape are checked (a 1x1 conv in the zoo may be a linear in the graph), and the weight
layout comes from the zoo entry's ``layouts`` (a name of :mod:`lightnets.layouts`). The result is an
explicit ``{canonical_name: (zoo_key, layout)}`` map, checked to use every zoo key once and to fill
every canonical key. numpy only; the zoo framework is touched only to build a template zoo model.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .. import layouts as L
from .. import registry
from .. import transforms as T
from .. import weights as W
from ..errors import WeightsError
from ..frameworks import load_backend
from ..graph import Graph, Node
from ..ops import OPS
from .entries import ZOO, entry


def is_weight_key(key: str, be) -> bool:
    """Whether ``key`` holds a weight (not one of the backend's optional non-weight entries, like torch
    BN's ``num_batches_tracked``, which the matcher skips and export writes back as zeros)."""
    return not key.endswith(tuple(be.OPTIONAL_KEYS))


# --- graph with the zoo's BN conventions ----------------------------------------------------------
def with_bn(graph: Graph, eps: float, momentum: float) -> Graph:
    """``graph`` with every batch_norm's eps and momentum replaced (recorded in ``meta``)."""
    nodes = [Node(n.name, n.op, n.inputs, {**n.attrs, "eps": eps, "momentum": momentum})
             if n.op == "batch_norm" else n for n in graph.nodes]
    meta = {**graph.meta, "bn_eps": eps, "bn_momentum": momentum}
    return Graph(graph.name, graph.input_shape, tuple(nodes), meta)


def zoo_graph(zoo: str, name: str, num_classes: int = 1000, input_size: int = 224) -> Graph:
    """The graph of the lightnets id of ``(zoo, name)`` with the zoo's BN eps/momentum."""
    e = entry(zoo, name)
    g = registry.get_spec(e.arch, num_classes=num_classes, input_size=input_size)
    g = with_bn(form_graph(g, e.form), e.bn_eps, e.bn_momentum)
    return Graph(g.name, g.input_shape, g.nodes, {**g.meta, "zoo": zoo, "zoo_name": name})


def form_graph(graph: Graph, form: str) -> Graph:
    """``graph`` in a zoo entry's ``form``: "train" as it is, "reparameterize" (``transforms.reparameterize``) or
    "inference" (then ``fold_batch_norm`` too); the graph only (the BNs' values do not change it)."""
    if form == "train":
        return graph
    graph = T.reparameterize(graph, None)[0]
    if form == "inference":
        graph = T.fold_batch_norm(graph, {p.name: np.ones(p.shape) for p in graph.params})[0]
    return graph


def classifier_param(zoo: str, name: str) -> str:
    """The canonical name of the classifier weight (the graph's last parameter that is a weight)."""
    return [p.name for p in zoo_graph(zoo, name, 1000).params if p.role == "weight"][-1]



# --- grouping -------------------------------------------------------------------------------------
def _roles(native_names: Mapping[str, Mapping[str, str]], *ops: str) -> dict[str, str]:
    """native leaf -> canonical suffix (role) for ``ops``."""
    return {leaf: role for op in ops for role, leaf in native_names.get(op, {}).items()}


def _zoo_groups(shapes: Mapping[str, tuple], be) -> list[tuple[str, str, dict]]:
    """[(module, kind, {role: (key, shape)})] in state-dict order."""
    groups: dict[str, dict[str, tuple[str, tuple]]] = {}
    for key, shape in shapes.items():
        if is_weight_key(key, be):
            module, _, leaf = key.rpartition(".")
            groups.setdefault(module, {})[leaf] = (key, tuple(shape))
    for module in [m for m in groups if m.endswith(".reparam_conv")]:  # timm's reparameterize() registers the
        parent = module[: -len("reparam_conv")]                       # fused conv last in its block: put it first
        at = next(i for i, m in enumerate(groups) if m.startswith(parent))
        order = [m for m in groups if m != module]
        groups = {m: groups[m] for m in [*order[:at], module, *order[at:]]}
    names = be.NATIVE_NAMES
    bn, conv, linear = _roles(names, "batch_norm"), _roles(names, "conv2d", "depthwise_conv2d"), _roles(names, "linear")
    out = []
    for module, leaves in groups.items():
        if any(bn.get(leaf) == "mean" for leaf in leaves):
            out.append((module, "bn", {bn.get(k, k): v for k, v in leaves.items()}))
            continue
        weight = [v for k, v in leaves.items() if conv.get(k) == "weight" or linear.get(k) == "weight"]
        ndim = len(weight[0][1]) if weight else 0
        kind = {4: "conv", 2: "linear"}.get(ndim, f"unknown (leaves {sorted(leaves)})")
        table = conv if kind == "conv" else linear
        out.append((module, kind, {table.get(k, k): v for k, v in leaves.items()}))
    return out


def _graph_groups(graph: Graph) -> list[tuple[Node, str, dict]]:
    groups: dict[str, dict] = {}
    for p in graph.params:
        node = p.name[: -len(p.name.rsplit(".", 1)[1]) - 1]
        groups.setdefault(node, {})[p.role] = (p.name, tuple(p.shape))
    return [(graph.node(n), OPS[graph.node(n).op].weight_kind, roles) for n, roles in groups.items()]


def _is_depthwise(graph: Graph, node: Node) -> bool:
    c = graph.in_shapes(node)[0][0]
    return node.op == "conv2d" and node.attrs["groups"] == c > 1


def in_channels(graph: Graph, cname: str) -> int:
    """Input channels of the node that owns canonical parameter ``cname`` (the ``khwcm`` layout needs it)."""
    return graph.in_shapes(graph.node(cname.rsplit(".", 1)[0]))[0][0]


def _layout(layouts: Mapping[str, str], role: str, zkind: str, gkind: str, depthwise: bool) -> str:
    if role != "weight":
        return "id"
    if gkind == "linear":
        return layouts["conv_as_linear"] if zkind == "conv" else layouts["linear"]
    return layouts["depthwise"] if depthwise else layouts["conv"]


def framework_layouts(framework: str) -> Mapping[str, str]:
    """The layouts every zoo entry of ``framework`` uses (one convention per framework in the table)."""
    found = {tuple(sorted(e.layouts.items())) for e in ZOO.values() if e.framework == framework}
    if len(found) != 1:
        raise WeightsError(f"no single layout convention for {framework!r} zoo models ({len(found)} found); "
                           "pass layouts= explicitly")
    return dict(found.pop())


def match(graph: Graph, zoo_shapes: Mapping[str, tuple], framework: str,
          layouts: Mapping[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """The explicit map ``{canonical_name: (zoo_key, layout)}`` (layouts of :mod:`lightnets.layouts`).

    Positional over (zoo modules in state-dict order, graph nodes in order); every kind and shape is
    checked, then every zoo key must be used once and every canonical key filled. ``framework`` says
    whose native leaf names the keys use; ``layouts`` how the zoo stores weights (default: that
    framework's zoo convention). Raises WeightsError naming the unmatched or mis-shaped keys.
    """
    layouts = layouts if layouts is not None else framework_layouts(framework)
    be = load_backend(framework)
    zg, gg = _zoo_groups(zoo_shapes, be), _graph_groups(graph)
    problems: list[str] = []
    out: dict[str, tuple[str, str]] = {}
    for (module, zkind, zroles), (node, gkind, groles) in zip(zg, gg, strict=False):
        ok_kind = zkind == gkind or (zkind == "conv" and gkind == "linear")
        if not ok_kind or set(zroles) != set(groles):
            problems.append(f"zoo module {module!r} ({zkind}: {sorted(zroles)}) does not match graph node "
                            f"{node.name!r} ({gkind}: {sorted(groles)})")
            break
        depthwise = _is_depthwise(graph, node)
        for role, (cname, cshape) in groles.items():
            zkey, zshape = zroles[role]
            layout = _layout(layouts, role, zkind, gkind, depthwise)
            need = L.native_shape(cshape, layout, graph.in_shapes(node)[0][0])
            if need != zshape:
                problems.append(f"zoo key {zkey!r} has shape {zshape}, canonical {cname!r} needs {need} ({layout})")
            out[cname] = (zkey, layout)
        if problems:
            break
    used = {k for k, _ in out.values()}
    unmapped_zoo = [k for k in zoo_shapes if is_weight_key(k, be) and k not in used]
    unfilled = [p.name for p in graph.params if p.name not in out]
    if len(used) != len(out):
        problems.append("a zoo key was mapped twice")
    if not problems and (unmapped_zoo or unfilled):
        problems.append(f"zoo keys left unmapped {W.few(unmapped_zoo)}, canonical keys left unfilled "
                        f"{W.few(unfilled)}")
    if problems:
        extra = "" if not (unmapped_zoo or unfilled) else (
            f" (unmapped zoo keys {W.few(unmapped_zoo, 4)}; unfilled canonical keys {W.few(unfilled, 4)})")
        raise WeightsError(f"cannot map the zoo state dict onto graph {graph.name!r}: " + "; ".join(problems)
                           + extra + ". Is it the zoo model this importer names?")
    return out


# --- templates: what a fresh zoo model's state dict looks like ---------------------------------------
@functools.lru_cache(maxsize=128)
def template(zoo: str, name: str, num_classes: int = 1000,
             fmt: str | None = None) -> tuple[dict[str, tuple], dict[str, str]]:
    """Shapes and dtypes of a freshly built zoo model's state dict (the keys an import must see).

    With ``fmt`` (a native format of the zoo's framework): of what the backend reads back from an
    ``fmt`` file it wrote for that model (keras ``.weights.h5`` keys are not the state dict's)."""
    e = entry(zoo, name)
    be = load_backend(e.framework)
    model = e.make(num_classes)
    if fmt is None:
        sd = be.state_dict(model)
    else:
        with tempfile.TemporaryDirectory(prefix="lightnets-zoo-") as tmp:
            path = Path(tmp) / f"template{be.FORMATS[be.check_format(fmt)]}"
            be.save_file(model, path, fmt)
            sd = be.read_state_dict(path, fmt)
    return {k: tuple(np.shape(v)) for k, v in sd.items()}, {k: str(np.asarray(v).dtype) for k, v in sd.items()}



def name_map(zoo: str, name: str, num_classes: int = 1000) -> dict[str, tuple[str, str]]:
    """``{canonical_name: (zoo_key, layout)}`` for a zoo model, generated from a fresh zoo model."""
    e = entry(zoo, name)
    return match(zoo_graph(zoo, name, num_classes), template(zoo, name, num_classes)[0], e.framework, e.layouts)
