"""Provenance cards: where a model's weights came from and what the numbers mean.

A card is a plain JSON-able dict kept in ``graph.meta["provenance"]``, so it follows a model through
every backend (each backend keeps the graph it built) and every weights file (canonical files hold the
graph JSON with its meta; native files get a ``<file>.lightnets.json`` sidecar)::

    {"lightnets_version": "0.1.0", "arch": "mobilenet_v3_large_100",
     "source": {"kind": "zoo", "zoo": "timm", "name": "mobilenetv3_large_100"}
               | {"kind": "file", "path": ..., "sha256": ..., "format": ...}
               | {"kind": "init", "seed": 0} | {"kind": "dict"},
     "preprocessing": {"mean": [...], "std": [...], "scale": ..., "channels": "RGB", ...} | None,
     "num_classes": 1000, "classifier_activation": "linear", "bn_eps": 1e-05, "bn_momentum": 0.1,
     "padding": "explicit (symmetric)", "notes": [...]}

This module also compares two graphs (:func:`graph_diff`): a file's graph against the graph the
caller's id and arguments build, naming the first node and attribute that differ.
numpy-free; imports no framework.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .errors import WeightsError
from .graph import Graph

KEY = "provenance"  # graph.meta key of the card
SOURCE_KINDS = ("zoo", "file", "init", "dict")


def lightnets_version() -> str:
    try:
        return version("lightnets")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def plain(value):
    """``value`` as JSON would give it back (tuples -> lists), so that a card equals its round trip."""
    return json.loads(json.dumps(value))


def _one_or_sorted(values: set):
    if not values:
        return None
    return next(iter(values)) if len(values) == 1 else sorted(values)


def bn_conventions(graph: Graph) -> tuple[Any, Any]:
    """The graph's BatchNorm eps and momentum: one value, a sorted list if they vary, None without BN."""
    bns = [n for n in graph.nodes if n.op == "batch_norm"]
    return (_one_or_sorted({float(n.attrs["eps"]) for n in bns}),
            _one_or_sorted({float(n.attrs["momentum"]) for n in bns}))


def padding_of(graph: Graph) -> str:
    """How the graph pads its convs and pools: "same" (TF/Keras, resolved per input size), explicit
    symmetric pads (torch/paddle ``padding=k//2``), or explicit asymmetric pads."""
    modes, symmetric = set(), True
    for n in graph.nodes:
        if "pads" not in n.attrs:
            continue
        modes.add(n.attrs.get("padding", "explicit"))
        t, b, left, r = n.attrs["pads"]
        symmetric &= t == b and left == r
    if not modes:
        return "none"
    parts = []
    if "explicit" in modes:
        parts.append("explicit (symmetric)" if symmetric else "explicit (asymmetric)")
    if "same" in modes:
        parts.append("same (TF/Keras, resolved for the input size)")
    return " + ".join(parts)


def num_classes_of(graph: Graph) -> int | None:
    """The class count if the graph ends in a classifier (a linear layer), else None (include_top=False)."""
    last = graph.nodes[-1]
    return int(last.attrs["out_features"]) if last.op == "linear" else None


def make_card(graph: Graph, source: Mapping[str, Any], preprocessing: Mapping[str, Any] | None = None,
              classifier_activation: str = "linear", padding: str | None = None,
              notes: list[str] | tuple[str, ...] = ()) -> dict:
    """A provenance card for weights of ``graph`` that came from ``source`` (see the module doc)."""
    kind = source.get("kind") if isinstance(source, Mapping) else None
    if kind not in SOURCE_KINDS:
        raise WeightsError(f"provenance source must be a mapping with kind in {SOURCE_KINDS}, got {source!r}")
    eps, momentum = bn_conventions(graph)
    return plain({"lightnets_version": lightnets_version(), "arch": graph.name, "source": dict(source),
                   "preprocessing": dict(preprocessing) if preprocessing is not None else None,
                   "num_classes": num_classes_of(graph), "classifier_activation": classifier_activation,
                   "bn_eps": eps, "bn_momentum": momentum, "padding": padding or padding_of(graph),
                   "notes": list(notes)})


def init_card(graph: Graph, seed: int) -> dict:
    return make_card(graph, {"kind": "init", "seed": seed},
                     notes=["deterministic random init (lightnets.weights.init_weights), not trained"])


def dict_card(graph: Graph) -> dict:
    return make_card(graph, {"kind": "dict"}, notes=["weights passed as a canonical dict; their origin was not "
                                                     "recorded (import them with lightnets.import_zoo or load a "
                                                     "file to keep a card)"])


def file_card(graph: Graph, path, fmt: str, notes=()) -> dict:
    """The card of weights read from a file that had none (a foreign or older file)."""
    return make_card(graph, {"kind": "file", "path": str(path), "sha256": sha256_file(path), "format": fmt},
                     notes=list(notes))


def zoo_card(graph: Graph, info: Mapping[str, Any]) -> dict:
    """The card of weights imported from a zoo: ``info`` is :func:`lightnets.import_zoo`'s info dict."""
    notes = [f"imported from {info['zoo']} {info['name']} (probe rel error {info.get('probe_rel_error', 0):.1e} "
             "vs the float64 reference)"]
    if info.get("model_rescaling"):
        notes.append(f"the zoo model rescales its input inside the model: {info['model_rescaling']}")
    return make_card(graph, {"kind": "zoo", "zoo": info["zoo"], "name": info["name"]},
                     preprocessing=info.get("preprocessing"),
                     classifier_activation=info.get("classifier_activation") or info.get("zoo_classifier_activation")
                     or "linear", padding=info.get("padding"), notes=notes)


def card_of(graph: Graph) -> dict | None:
    card = graph.meta.get(KEY)
    return dict(card) if isinstance(card, Mapping) else None


def with_card(graph: Graph, card: Mapping[str, Any] | None) -> Graph:
    """``graph`` with ``card`` in ``meta["provenance"]`` (the same graph if it already holds it)."""
    if card is None or graph.meta.get(KEY) == card:
        return graph
    return graph.replace(meta={**graph.meta, KEY: plain(dict(card))})


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- comparing a file's graph with the one the caller's id and arguments build --------------------------
def _fmt(v) -> str:
    return repr(list(v)) if isinstance(v, tuple) else repr(v)


def graph_diff(have: Graph, want: Graph, have_label: str = "file", want_label: str | None = None,
               compare_input: bool = True) -> str | None:
    """The first difference between two graphs' computations (meta is ignored), or None if they agree.

    E.g. "node 'stem.bn' attr eps: file 1e-05, mobilenet_v3_large_100 builds 0.001".
    ``compare_input=False`` ignores the input size (graphs whose nodes do not depend on it).
    """
    want_label = want_label or f"{want.name} builds"
    if have.name != want.name:
        return f"model id: {have_label} {have.name!r}, {want_label} {want.name!r}"
    if compare_input and have.input_shape != want.input_shape:
        return f"input shape: {have_label} {list(have.input_shape)}, {want_label} {list(want.input_shape)}"
    for i, (a, b) in enumerate(zip(have.nodes, want.nodes, strict=False)):
        if a.name != b.name:
            return f"node {i}: {have_label} {a.name!r} ({a.op}), {want_label} {b.name!r} ({b.op})"
        if a.op != b.op:
            return f"node {a.name!r} op: {have_label} {a.op}, {want_label} {b.op}"
        if a.inputs != b.inputs:
            return f"node {a.name!r} inputs: {have_label} {list(a.inputs)}, {want_label} {list(b.inputs)}"
        for k in sorted(set(a.attrs) | set(b.attrs)):
            if a.attrs.get(k) != b.attrs.get(k):
                return f"node {a.name!r} attr {k}: {have_label} {_fmt(a.attrs.get(k))}, {want_label} " \
                       f"{_fmt(b.attrs.get(k))}"
    if len(have.nodes) == len(want.nodes) and have.outputs != want.outputs:
        return f"outputs: {have_label} {_fmt(have.outputs)}, {want_label} {_fmt(want.outputs)}"
    if len(have.nodes) != len(want.nodes):
        longer = have if len(have.nodes) > len(want.nodes) else want
        extra = [n.name for n in longer.nodes[min(len(have.nodes), len(want.nodes)):]]
        return (f"node count: {have_label} {len(have.nodes)}, {want_label} {len(want.nodes)} (the longer one goes on "
                f"with {extra[:4]})")
    return None


def summary(graph: Graph) -> dict:
    """What `lightnets info` prints about a graph: id, params, input size, classes, BN and padding."""
    eps, momentum = bn_conventions(graph)
    return {"id": graph.name, "params": graph.num_params(), "params_incl_bn_stats": graph.num_params(False),
            "input_shape": list(graph.input_shape), "num_classes": num_classes_of(graph),
            "nodes": len(graph.nodes), "bn_eps": eps, "bn_momentum": momentum, "padding": padding_of(graph)}
