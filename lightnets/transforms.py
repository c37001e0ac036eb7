"""Graph transforms: rewrite a (graph, weights) pair into an equivalent one.

``reparameterize`` collapses the parallel conv + BN / BN branches of reparameterisable nets (MobileOne,
RepGhost) into one conv with bias, for inference (see its docstring).

``fold_batch_norm`` folds every eval-mode BatchNorm that directly follows a conv2d
into that conv's weight and bias, for inference: ``y = ((W*x + b) - mean) / sqrt(var + eps) * gamma + beta``
becomes ``W' * x + b'`` with ``s = gamma / sqrt(var + eps)``, ``W' = W * s`` per output channel and
``b' = (b - mean) * s + beta``. The folded graph computes the same function as the original one in
eval mode (train-mode BN, with batch statistics, has no folded form).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from . import ops
from . import weights as W
from .errors import SpecError
from .graph import INPUT, Graph, Node

FOLDABLE = ("conv2d",)  # batch_norm takes feature maps only, so a linear is never followed by one


def foldable_batch_norms(graph: Graph) -> dict[str, str]:
    """``{bn_name: producer_name}`` for every batch_norm that ``fold_batch_norm`` folds.

    A BN folds when its single input is a conv2d node that nothing else reads (a graph output is read).
    """
    reads = Counter(i for n in graph.nodes for i in n.inputs)
    reads.update(graph.output_names if graph.multi_output else ())
    ops = {n.name: n.op for n in graph.nodes}
    return {n.name: n.inputs[0] for n in graph.nodes
            if n.op == "batch_norm" and n.inputs[0] != INPUT and ops[n.inputs[0]] in FOLDABLE
            and reads[n.inputs[0]] == 1}


def fold_batch_norm(graph: Graph, weights: Mapping[str, np.ndarray]) -> tuple[Graph, W.Weights]:
    """Fold every foldable batch_norm of ``graph`` into the conv2d before it.

    Returns a new valid graph and its canonical weights. A folded producer keeps its name and every
    attribute except ``bias`` (now True) and takes the BN's place in the node order, so the BN's
    readers read it instead and a BN that was the graph output leaves the folded layer as the output.
    BNs that cannot fold (input not a conv2d, or that input also read elsewhere) stay.
    ``graph.meta`` gains ``"bn_folded": True`` and ``"bn_folded_into": {bn: layer}``.

    Folded parameters are computed in float64 and returned in the dtype of the layer's weight (pass
    float64 weights to get exact float64 folding); the other weights are returned unchanged.
    """
    w = W.check_weights(graph, weights)
    folds = foldable_batch_norms(graph)
    into = set(folds.values())
    by_name = {n.name: n for n in graph.nodes}
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.name in into:
            continue  # re-emitted, folded, at its BN's position
        if node.name in folds:
            layer = by_name[folds[node.name]]
            _fold_params(layer, node, w)
            node, attrs = layer, {**layer.attrs, "bias": True}
        else:
            attrs = node.attrs
        inputs = tuple(folds.get(i, i) for i in node.inputs)
        changed = inputs != node.inputs or attrs is not node.attrs
        nodes.append(Node(node.name, node.op, inputs, attrs) if changed else node)
    meta = {**graph.meta, "bn_folded": True,
            "bn_folded_into": {**graph.meta.get("bn_folded_into", {}), **folds}}
    outputs = None if graph.outputs is None else tuple(folds.get(o, o) for o in graph.outputs)
    folded = graph.replace(nodes=tuple(nodes), meta=meta, outputs=outputs)
    return folded, {p.name: w[p.name] for p in folded.params}


def _fold_params(layer: Node, bn: Node, w: W.Weights) -> None:
    """Replace ``layer``'s weight/bias by the folded ones and drop ``bn``'s parameters (in place)."""
    weight = w[f"{layer.name}.weight"]
    dtype = weight.dtype
    f64 = np.float64
    gamma, beta, mean, var = (w.pop(f"{bn.name}.{k}").astype(f64) for k in ("gamma", "beta", "mean", "var"))
    scale = gamma / np.sqrt(var + bn.attrs["eps"])
    bias = w.get(f"{layer.name}.bias")
    bias = np.zeros_like(scale) if bias is None else bias.astype(f64)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    w[f"{layer.name}.weight"] = (weight.astype(f64) * scale.reshape(shape)).astype(dtype)
    w[f"{layer.name}.bias"] = ((bias - mean) * scale + beta).astype(dtype)


# --- reparameterisation (issue 23: MobileOne, RepGhost) ---------------------------------------------------
class RepSum(NamedTuple):
    """A sum ``reparameterize`` collapses: its root add, the adds under it, the ``(conv, bn)`` branches, the
    identity BNs (``batch_norm(x)``), the common input ``x`` and the fused conv's attributes."""

    root: str
    adds: tuple[str, ...]
    branches: tuple[tuple[str, str], ...]
    identities: tuple[str, ...]
    x: str
    attrs: dict

    @property
    def removed(self) -> tuple[str, ...]:
        """The nodes that go (the root becomes the fused conv)."""
        return (*self.adds, *(n for b in self.branches for n in b), *self.identities)


def _sum_leaves(graph: Graph, root: str, by_name, reads) -> tuple[list[str], list[str]]:
    """(adds, leaves) of the tree of add nodes under ``root``: an add below the root joins the tree when the
    tree is its only reader."""
    adds, leaves, todo = [], [], [root]
    while todo:
        name = todo.pop()
        adds.append(name)
        for i in by_name[name].inputs:
            if i != INPUT and by_name[i].op == "add" and reads[i] == 1:
                todo.append(i)
            else:
                leaves.append(i)
    return adds, leaves


def _plan(graph: Graph, root: str, by_name, reads) -> RepSum | str:
    """The :class:`RepSum` of the add ``root``, or why it does not collapse into one conv."""
    adds, leaves = _sum_leaves(graph, root, by_name, reads)
    branches, identities, inputs = [], [], set()
    for leaf in leaves:
        bn = by_name.get(leaf)
        if bn is None or bn.op != "batch_norm":
            return f"its term {leaf!r} is not a batch_norm (of a conv2d or of the common input)"
        if reads[leaf] != 1:
            return f"its term {leaf!r} is also read elsewhere (or is a graph output)"
        src = bn.inputs[0]
        if src != INPUT and by_name[src].op == "conv2d" and reads[src] == 1:
            branches.append((src, leaf))
            inputs.add(by_name[src].inputs[0])
        else:
            identities.append(leaf)
            inputs.add(src)
    if not branches:
        return "no term is batch_norm(conv2d(x))"
    if len(inputs) != 1:
        return f"its terms read different inputs {sorted(inputs)}"
    convs = [by_name[c].attrs for c, _ in branches]
    for key in ("stride", "groups", "dilation"):
        if len({a[key] for a in convs}) != 1:
            return f"its convs differ in {key} ({sorted({str(a[key]) for a in convs})})"
    if convs[0]["dilation"] != (1, 1):
        return "its convs are dilated"
    pads = [ops.static_pads(a) for a in convs]
    if any(p is None for p in pads):
        return "a conv has strided TF 'same' padding (its pads depend on the input size)"
    big = max(range(len(convs)), key=lambda i: convs[i]["kernel"][0] * convs[i]["kernel"][1])
    (kh, kw), (t, b, l, r) = convs[big]["kernel"], pads[big]
    terms = [(a["kernel"], p) for a, p in zip(convs, pads, strict=True)]
    if identities:
        if convs[0]["stride"] != (1, 1) or graph.shapes[root][0] != graph.shapes[next(iter(inputs))][0]:
            return "an identity term needs stride 1 and as many output as input channels"
        terms.append(((1, 1), (0, 0, 0, 0)))
    for (h, w), (pt, _, pl, _) in terms:
        if not (0 <= t - pt and t - pt + h <= kh and 0 <= l - pl and l - pl + w <= kw):
            return f"a {h}x{w} term does not sit inside the {kh}x{kw} conv's window (pads {pads[big]})"
    attrs = {**convs[big], "pads": (t, b, l, r), "padding": "explicit", "bias": True,
             "out_channels": graph.shapes[root][0]}
    return RepSum(root, tuple(adds), tuple(branches), tuple(identities), next(iter(inputs)), attrs)


def reparameterizable_sums(graph: Graph) -> dict[str, RepSum | str]:
    """``{root_add: RepSum or the reason it does not collapse}`` for every sum of ``graph`` (a tree of adds
    no other node reads inside) whose terms are all batch norms: what :func:`reparameterize` would do."""
    reads = Counter(i for n in graph.nodes for i in n.inputs)
    reads.update(graph.output_names)
    by_name = {n.name: n for n in graph.nodes}
    out: dict[str, RepSum | str] = {}
    taken: set[str] = set()
    for node in reversed(graph.nodes):
        if node.op != "add" or node.name in taken:
            continue
        _, leaves = _sum_leaves(graph, node.name, by_name, reads)
        if not all(i != INPUT and by_name[i].op == "batch_norm" for i in leaves):
            continue  # a residual or another sum: not a reparameterisable block
        plan = _plan(graph, node.name, by_name, reads)
        out[node.name] = plan
        if isinstance(plan, RepSum):
            taken.update(plan.adds)
    return dict(reversed(out.items()))


def reparameterize(graph: Graph, weights: Mapping[str, np.ndarray] | None,
                   sums=None) -> tuple[Graph, W.Weights | None]:
    """Collapse every reparameterisable sum of ``graph`` into one conv2d with bias (RepVGG / MobileOne /
    RepGhost): a tree of adds whose terms are ``batch_norm(conv2d(x))`` with one input ``x``, stride, groups
    (any kernel sizes that sit inside the largest one's window, e.g. a kxk and a 1x1 padded into its centre)
    and ``batch_norm(x)`` (the identity branch: a kernel of ones at the centre of each channel's own input).

    The fused conv takes the root add's name and place (its readers read it), the largest conv's kernel,
    stride, groups and pads, ``bias=True``; the branch convs, BNs and adds go. Its kernel and bias are
    ``sum(W_i * s_i)`` and ``sum((b_i - mean_i) * s_i + beta_i)`` with ``s_i = gamma_i / sqrt(var_i + eps_i)``,
    computed in float64 and returned in the dtype of the first branch conv's weight: the eval-mode function
    (train-mode BN has no reparameterised form). Batch norms outside such sums stay (``fold_batch_norm`` folds
    them). ``graph.meta`` gains ``"reparameterized": {fused: [removed nodes]}``.

    ``sums=None`` collapses every sum that can and leaves the others alone; ``sums`` (root add names) collapses
    exactly those and raises SpecError naming any that cannot collapse and why. ``weights=None`` rewrites the
    graph only (``(graph, None)``: the shape of a reparameterised checkpoint).
    """
    plans = reparameterizable_sums(graph)
    if sums is None:
        chosen = {k: p for k, p in plans.items() if isinstance(p, RepSum)}
    else:
        sums = [sums] if isinstance(sums, str) else list(sums)
        bad = {s: plans.get(s, "it is not the root add of a sum of batch norms") for s in sums
               if not isinstance(plans.get(s), RepSum)}
        if bad:
            raise SpecError(f"graph {graph.name!r}: cannot reparameterize " + "; ".join(
                f"{s!r}: {why}" for s, why in bad.items()) + ". Leave sums=None to collapse only the sums that can")
        chosen = {s: plans[s] for s in sums}
    w = None if weights is None else W.check_weights(graph, weights)
    gone = {n for p in chosen.values() for n in p.removed}
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.name in chosen:
            plan = chosen[node.name]
            nodes.append(Node(node.name, "conv2d", (plan.x,), plan.attrs))
            if w is not None:
                _fuse_params(graph, plan, w)
        elif node.name not in gone:
            nodes.append(node)
    removed = {root: sorted(n for n in (*p.adds, *(x for b in p.branches for x in b), *p.identities) if n != root)
               for root, p in chosen.items()}
    meta = {**graph.meta, "reparameterized": {**graph.meta.get("reparameterized", {}), **removed}}
    rep = graph.replace(nodes=tuple(nodes), meta=meta)
    return rep, None if w is None else {p.name: w[p.name] for p in rep.params}


def _fuse_params(graph: Graph, plan: RepSum, w: W.Weights) -> None:
    """Add the fused conv's weight and bias to ``w`` and drop the branches' parameters (in place)."""
    f64 = np.float64
    (kh, kw), (t, _, l, _) = plan.attrs["kernel"], plan.attrs["pads"]
    c_out, groups = plan.attrs["out_channels"], plan.attrs["groups"]
    cin_g = graph.shapes[plan.x][0] // groups
    dtype = w[f"{plan.branches[0][0]}.weight"].dtype
    kernel, bias = np.zeros((c_out, cin_g, kh, kw)), np.zeros(c_out)

    def bn_scale(bn: str):
        gamma, beta, mean, var = (w.pop(f"{bn}.{k}").astype(f64) for k in ("gamma", "beta", "mean", "var"))
        s = gamma / np.sqrt(var + graph.node(bn).attrs["eps"])
        return s, beta - mean * s

    for conv, bn in plan.branches:
        a = graph.node(conv).attrs
        (h, wd), (pt, _, pl, _) = a["kernel"], ops.static_pads(a)
        s, shift = bn_scale(bn)
        branch = w.pop(f"{conv}.weight").astype(f64) * s[:, None, None, None]
        kernel[:, :, t - pt:t - pt + h, l - pl:l - pl + wd] += branch
        bias += shift + (w.pop(f"{conv}.bias").astype(f64) * s if a["bias"] else 0.0)
    for bn in plan.identities:
        s, shift = bn_scale(bn)
        kernel[np.arange(c_out), np.arange(c_out) % cin_g, t, l] += s
        bias += shift
    w[f"{plan.root}.weight"] = kernel.astype(dtype)
    w[f"{plan.root}.bias"] = bias.astype(dtype)


def inference_form(graph: Graph, weights: Mapping[str, np.ndarray]) -> tuple[Graph, W.Weights]:
    """The inference form of ``(graph, weights)``: :func:`reparameterize` (every sum that collapses), then
    :func:`fold_batch_norm`, in float64 (``build(..., mode="inference")`` and ``lightnets.optimize``)."""
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    if any(isinstance(p, RepSum) for p in reparameterizable_sums(graph).values()):
        graph, w = reparameterize(graph, w)
    return fold_batch_norm(graph, w)
