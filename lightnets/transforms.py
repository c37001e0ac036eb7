"""Graph transforms: rewrite a (graph, weights) pair into an equivalent one.

``fold_batch_norm`` folds every eval-mode BatchNorm that directly follows a conv2d
into that conv's weight and bias, for inference: ``y = ((W*x + b) - mean) / sqrt(var + eps) * gamma + beta``
becomes ``W' * x + b'`` with ``s = gamma / sqrt(var + eps)``, ``W' = W * s`` per output channel and
``b' = (b - mean) * s + beta``. The folded graph computes the same function as the original one in
eval mode (train-mode BN, with batch statistics, has no folded form).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np

from . import weights as W
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
