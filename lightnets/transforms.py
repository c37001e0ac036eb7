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


# --- concats in pieces (issue 25: GhostNet's ghost concat) ------------------------------------------------
# ops that act on each channel alone (one input, per-channel parameters or none): a tensor in pieces goes through
# them piece by piece
PER_CHANNEL = ("activation", "batch_norm", "dropout", "drop_path", "max_pool2d", "avg_pool2d", "global_avg_pool")
# a groups=1 conv reading a tensor in pieces becomes one conv per piece and a sum when its output has at most this
# many times the input's channels (the sum passes over the output; a concat would pass over the input)
SUM_GROWTH = 2


class _Pieces:
    """The rewrite state of :func:`split_concats`: the nodes so far (a node's slot may be re-cut later), the weights
    (part weights added) and where each part weight comes from, the tensors held in pieces."""

    def __init__(self, graph: Graph, w: W.Weights):
        self.graph, self.w, self.shapes = graph, w, graph.shapes
        self.slots: dict[str, list[Node]] = {}  # original node -> its nodes in the rewrite (in order)
        self.order: list[str] = []
        self.pieces: dict[str, list[tuple[str, int]]] = {}  # tensor -> [(piece, channels)], not materialized
        self.alias: dict[str, str] = {}  # tensor -> the one piece it is (a slice that is exactly a piece)
        # part param -> (canonical param, its [start, stop) on axis 0, on axis 1 or None)
        self.sources: dict[str, tuple[str, tuple[int, int], tuple[int, int] | None]] = {}
        self.sums: dict[str, tuple[Node, list]] = {}  # a conv summed over pieces: (the conv, its input pieces)
        self.reads = Counter(i for n in graph.nodes for i in n.inputs)
        self.reads.update(graph.output_names)
        self.names = {n.name for n in graph.nodes}

    def emit(self, slot: str, node: Node) -> str:
        if slot not in self.slots:
            self.slots[slot] = []
            self.order.append(slot)
        self.slots[slot].append(node)
        return node.name

    def fresh(self, base: str, tag: str) -> str:
        name = f"{base}_{tag}"
        while name in self.names:
            name += "_"
        self.names.add(name)
        return name

    def part_param(self, node: Node, part: str, suffix: str, start: int, stop: int) -> None:
        """``part``'s ``suffix`` parameter: ``node``'s channels [start, stop) (axis 0)."""
        src = f"{node.name}.{suffix}"
        self.w[f"{part}.{suffix}"] = self.w[src][start:stop]
        self.sources[f"{part}.{suffix}"] = (src, (start, stop), None)

    def materialize(self, t: str) -> str:
        """``t`` as one tensor: the concat of its pieces, named ``t``, emitted now (once)."""
        if t in self.alias:
            return self.alias[t]
        if t in self.pieces:
            parts = self.pieces.pop(t)
            self.emit(t, Node(t, "concat", tuple(p for p, _ in parts)))
        return t

    def bounds(self, t: str) -> tuple[int, ...] | None:
        return None if t not in self.pieces else tuple(c for _, c in self.pieces[t])

    # per-channel rewrites -------------------------------------------------------------------------------
    def per_channel(self, node: Node, parts: list[tuple[str, int]], extra=(), slot: str | None = None,
                    out_multiplier: int = 1) -> list[tuple[str, int]]:
        """``node`` applied piece by piece (per-channel parameters sliced); ``extra[k]``: more inputs of part k."""
        out, off = [], 0
        for k, (p, c) in enumerate(parts):
            name = self.fresh(node.name, f"part{k}")
            attrs = dict(node.attrs)
            if node.op == "conv2d":  # depthwise: groups = channels, out = channels * multiplier
                attrs.update(groups=c, out_channels=c * out_multiplier)
                self.part_param(node, name, "weight", off * out_multiplier, (off + c) * out_multiplier)
                if attrs["bias"]:
                    self.part_param(node, name, "bias", off * out_multiplier, (off + c) * out_multiplier)
            elif node.op == "batch_norm":
                for s in ("gamma", "beta", "mean", "var"):
                    self.part_param(node, name, s, off, off + c)
            self.emit(slot or node.name, Node(name, node.op, (p, *(extra[k] if extra else ())), attrs))
            out.append((name, c * out_multiplier))
            off += c
        return out

    def cut(self, t: str, bounds: tuple[int, ...]) -> bool:
        """Re-emit the producer of ``t`` (read once, not an output) in channel pieces ``bounds``: a groups=1 conv
        (its output channels cut; a conv already summed over pieces: each part cut) under per-channel ops. False
        (nothing changed) where it cannot."""
        chain, name = [], t
        while True:
            if name == INPUT or self.reads[name] != 1 or name in self.graph.output_names or name in self.pieces:
                return False
            if name in self.sums:
                break
            if len(self.slots.get(name, ())) != 1 or self.slots[name][0].name != name:
                return False
            node = self.slots[name][0]
            chain.append(node)
            if node.op == "conv2d" and node.attrs["groups"] == 1:
                break
            if node.op not in PER_CHANNEL or node.op == "global_avg_pool":
                return False
            name = node.inputs[0]
        if name in self.sums:
            conv, in_parts = self.sums.pop(name)
        else:
            conv = chain.pop()
            in_parts = [(conv.inputs[0], None)]
        self.slots[conv.name] = []
        parts, off = [], 0
        for k, c in enumerate(bounds):
            parts.append((self.conv_sum(conv, in_parts, (off, off + c), self.fresh(conv.name, f"part{k}")), c))
            off += c
        for node in reversed(chain):
            self.slots[node.name] = []
            parts = self.per_channel(node, parts)
        self.pieces[t] = parts
        return True

    def conv_sum(self, node: Node, parts: list, out: tuple[int, int] | None = None, name: str | None = None) -> str:
        """A groups=1 conv over a tensor in pieces ``parts`` (``[(x, None)]``: one whole tensor): one conv per piece
        (input channels cut, the bias on the first), summed, the last add named ``name`` (default: the conv's);
        ``out``: output channels [start, stop) only. Returns the output's name."""
        name = name or node.name
        lo, hi = out or (0, node.attrs["out_channels"])
        total, off = None, 0
        for k, (p, c) in enumerate(parts):
            part = name if len(parts) == 1 else self.fresh(name, f"in{k}")
            attrs = {**node.attrs, "bias": bool(node.attrs["bias"] and k == 0), "out_channels": hi - lo}
            self._conv_part(node, part, (lo, hi), None if c is None else (off, off + c), attrs["bias"])
            self.emit(node.name, Node(part, "conv2d", (p,), attrs))
            if total is not None:
                last = k == len(parts) - 1
                part = self.emit(node.name, Node(name if last else self.fresh(name, f"sum{k}"), "add", (total, part)))
            total, off = part, off + (c or 0)
        if out is None and len(parts) > 1:
            self.sums[name] = (node, parts)
        return total

    def _conv_part(self, node: Node, part: str, out: tuple[int, int], inp: tuple[int, int] | None, bias: bool) -> None:
        """``part``'s weight: ``node``'s output channels ``out`` and input channels ``inp`` (None: all)."""
        src = f"{node.name}.weight"
        wt = self.w[src][out[0]:out[1]]
        if inp is not None:
            wt = wt[:, inp[0]:inp[1]]
        self.w[f"{part}.weight"] = np.ascontiguousarray(wt)
        self.sources[f"{part}.weight"] = (src, out, inp)
        if bias:
            self.w[f"{part}.bias"] = self.w[f"{node.name}.bias"][out[0]:out[1]]
            self.sources[f"{part}.bias"] = (f"{node.name}.bias", out, None)


def split_concats(graph: Graph, weights: Mapping[str, np.ndarray]):
    """Keep channel concats as their pieces where the readers can take pieces, so that no concat copies them:
    ``(graph, weights, sources)``, the same function (float64: up to the order of a conv's sum).

    A concat's result stays a list of pieces through per-channel ops (activations, batch norms, pools, dropouts:
    one node per piece, parameters sliced), depthwise convs (one per piece), adds of two tensors in the same pieces
    (or whose other term is a groups=1 conv under per-channel ops read only there: that conv is cut into the same
    pieces by output channel, free), SE scales (the gate cut or sliced), channel slices (pieces picked) and concats;
    a groups=1 conv over pieces becomes one conv per piece (input channels cut) and a sum (when its output has at
    most ``SUM_GROWTH`` times its input's channels). Anywhere else (a channel shuffle, a flatten, a graph output) the
    pieces are concatenated, under the concat's name, where first read. Part nodes are named
    ``<node>_part<k>`` / ``<node>_in<k>`` / ``<node>_sum<k>``; each part's parameters
    ``sources[<part>.<suffix>] = (canonical name, (start, stop) on axis 0, (start, stop) on axis 1 or None)`` (so
    that an exporter can slice the canonical weight instead of storing a copy). A graph without concats comes back
    unchanged.

    GhostNet: the ghost module concatenates its primary and cheap convs' outputs; in ONNX Runtime the concat and
    the layout reorders around it took 28 % of ghostnet_100's time (bs16, 224 px, 2 threads).
    """
    if not any(n.op == "concat" for n in graph.nodes):
        return graph, dict(W.check_weights(graph, weights)), {}
    st = _Pieces(graph, dict(W.check_weights(graph, weights)))
    for node in graph.nodes:
        ins = [st.alias.get(i, i) for i in node.inputs]
        split = [i for i in ins if i in st.pieces]
        op, name = node.op, node.name
        if not split:
            if op == "concat":
                st.pieces[name] = [(i, st.shapes[i0][0]) for i, i0 in zip(ins, node.inputs, strict=True)]
                if name in graph.output_names:
                    st.materialize(name)
                continue
            st.emit(name, Node(name, op, tuple(ins), node.attrs))
            continue
        x = ins[0]
        cin = st.shapes[node.inputs[0]][0]
        done = True
        if op == "concat":
            st.pieces[name] = [pc for i, i0 in zip(ins, node.inputs, strict=True)
                               for pc in (st.pieces.pop(i) if i in st.pieces and st.reads[i0] == 1
                                          else list(st.pieces[i]) if i in st.pieces else [(i, st.shapes[i0][0])])]
        elif op in PER_CHANNEL and x in st.pieces:
            st.pieces[name] = st.per_channel(node, st.pieces[x])
        elif op == "conv2d" and x in st.pieces and node.attrs["groups"] == cin:
            st.pieces[name] = st.per_channel(node, st.pieces[x], out_multiplier=node.attrs["out_channels"] // cin)
        elif op == "conv2d" and x in st.pieces and node.attrs["groups"] == 1 \
                and node.attrs["out_channels"] <= SUM_GROWTH * cin:
            st.conv_sum(node, st.pieces[x])
        elif op == "add":
            a, b = ins
            if st.bounds(a) is None:
                st.cut(a, st.bounds(b))
            elif st.bounds(b) is None:
                st.cut(b, st.bounds(a))
            if st.bounds(a) is not None and st.bounds(a) == st.bounds(b):
                st.pieces[name] = st.per_channel(node, st.pieces[a], extra=[(q,) for q, _ in st.pieces[b]])
            else:
                done = False
        elif op == "mul" and x in st.pieces and ins[1] not in st.pieces and st.shapes[node.inputs[1]][1:] == (1, 1):
            bounds = st.bounds(x)
            if not st.cut(ins[1], bounds):
                gates, off = [], 0
                for k, c in enumerate(bounds):
                    gates.append((st.emit(name, Node(st.fresh(name, f"gate{k}"), "slice_channels", (ins[1],),
                                                     {"start": off, "stop": off + c})),))
                    off += c
            else:
                gates = [(q,) for q, _ in st.pieces[ins[1]]]
            st.pieces[name] = st.per_channel(node, st.pieces[x], extra=gates)
        elif op == "slice_channels" and x in st.pieces:
            start, stop, off, parts = node.attrs["start"], node.attrs["stop"], 0, []
            for p, c in st.pieces[x]:
                lo, hi = max(start, off), min(stop, off + c)
                if lo < hi:
                    parts.append((p, c) if (lo, hi) == (off, off + c) else (st.emit(name, Node(
                        st.fresh(name, f"part{len(parts)}"), "slice_channels", (p,),
                        {"start": lo - off, "stop": hi - off})), hi - lo))
                off += c
            if len(parts) == 1 and name not in graph.output_names:
                st.alias[name] = parts[0][0]
            else:
                st.pieces[name] = parts
        else:
            done = False
        if not done:
            ins = [st.materialize(i) for i in ins]
            st.emit(name, Node(name, op, tuple(ins), node.attrs))
        elif name in graph.output_names:
            st.materialize(name)
    nodes = tuple(n for slot in st.order for n in st.slots[slot])
    # a materialized concat is emitted in its first reader's slot order: put every node after its inputs
    nodes = _topological(nodes)
    out = graph.replace(nodes=nodes, meta={**graph.meta, "split_concats": True})
    return out, {p.name: st.w[p.name] for p in out.params}, {k: v for k, v in st.sources.items()
                                                               if k.rsplit(".", 1)[0] in {n.name for n in nodes}}


def _topological(nodes: tuple[Node, ...]) -> tuple[Node, ...]:
    """``nodes`` in an order where every node follows its inputs (stable: the given order where it already is)."""
    done, out, pending = {INPUT}, [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in done for i in n.inputs):
                out.append(n)
                done.add(n.name)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise SpecError(f"split_concats: nodes {[n.name for n in rest][:5]} read tensors never produced")
        pending = rest
    return tuple(out)
