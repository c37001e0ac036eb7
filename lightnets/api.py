"""The user-facing API: build a native model from an id or a graph, move canonical weights in and out."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np

from . import features as FT
from . import formats, registry
from . import provenance as PV
from . import weights as W
from .errors import LightnetsError
from .formats import load_weights, save_weights  # noqa: F401 -- public API (any format, see lightnets.formats)
from .frameworks import BACKENDS, backend_of, load_backend  # noqa: F401 -- re-exported
from .graph import Graph
from .numerics import check_dtype


def spec(arch: str | Graph, num_classes: int = 1000, input_size: int = 224, include_top: bool = True,
         features: bool = False, out_indices: Iterable[int] | None = None) -> Graph:
    """The graph for a model id (or the graph itself).

    ``features=True``: the backbone graph whose ``outputs`` are the feature maps at the end of each
    resolution stage (``out_indices`` picks some of :func:`feature_info`'s), see ``lightnets.features``.
    """
    _check_features(features, out_indices)
    if isinstance(arch, Graph):
        graph = arch
    elif not isinstance(arch, str):
        raise LightnetsError(f"arch must be a model id or a Graph, got {type(arch).__name__}")
    else:
        graph = registry.get_spec(arch, num_classes=num_classes, input_size=input_size, include_top=include_top)
    return FT.feature_graph(graph, out_indices) if features else graph


def _check_features(features, out_indices) -> None:
    if not isinstance(features, bool):
        raise LightnetsError(f"features must be True or False, got {features!r}")
    if out_indices is not None and not features:
        raise LightnetsError(f"out_indices={out_indices!r} selects feature maps: pass features=True with it")


def feature_info(arch, out_indices: Iterable[int] | None = None, input_size: int = 224) -> FT.FeatureInfo:
    """The feature maps ``build(arch, features=True, out_indices=...)`` returns, framework-free: a list of
    timm-style dicts (``module``, ``num_chs``, ``reduction``, ``index``, ``stage``, and ``node``: the IR node)
    with timm's accessors ``get_dicts()``, ``channels()``, ``reduction()``, ``module_name()``.

    ``arch``: a model id, a Graph or a lightnets model of any backend. ``out_indices=None`` gives the default
    selection (the last map at each reduction); a feature graph or model gives its own outputs.
    """
    if isinstance(arch, str):
        graph = registry.get_spec(arch, input_size=input_size)
    elif isinstance(arch, Graph):
        graph = arch
    else:
        graph = backend_of(arch).graph_of(arch)
    if FT.META_KEY in graph.meta:
        if out_indices is not None:
            raise LightnetsError(f"graph {graph.name!r} is already a feature graph; pass out_indices=None")
        return FT.FeatureInfo(FT.feature_points(graph))
    return FT.FeatureInfo(FT.select(FT.feature_points(graph), out_indices))


def is_weights_file(arch) -> bool:
    """Whether ``arch`` names a weights file rather than a model id (ids have no dots or slashes)."""
    return isinstance(arch, os.PathLike) or (isinstance(arch, str) and any(c in arch for c in "./\\"))


def graph_and_weights(arch, weights=None, num_classes: int | None = None, input_size: int | None = None,
                      include_top: bool | None = None, seed: int = 0, dtype: str = "float32",
                      features: bool = False, out_indices: Iterable[int] | None = None):
    """The graph (with its provenance card in ``meta``) and checked canonical weights :func:`build` uses.

    ``features``: the feature graph of that graph (``lightnets.features.feature_graph``) and its weights, the
    classifier's without the head (same names and values; a weights dict may hold the head or not).
    """
    _check_features(features, out_indices)
    if is_weights_file(arch):
        if weights is not None:
            raise LightnetsError(f"build({str(arch)!r}) takes the graph and weights from that file; do not also "
                                 "pass weights=")
        arch, weights = None, arch
    if isinstance(weights, (str, os.PathLike)):
        loaded = formats.read(weights, arch=arch, num_classes=num_classes, input_size=input_size,
                              include_top=include_top, dtype=dtype)
        return _features(loaded.graph, loaded.weights, features, out_indices)
    if arch is None:
        raise LightnetsError("build() needs a model id, a Graph or a weights file; run `lightnets list` for ids")
    graph = spec(arch, 1000 if num_classes is None else num_classes, 224 if input_size is None else input_size,
                 True if include_top is None else include_top)
    if weights is None:
        return _features(PV.with_card(graph, PV.init_card(graph, seed)), W.init_weights(graph, seed), features,
                         out_indices)
    graph = PV.with_card(graph, PV.card_of(graph) or PV.dict_card(graph))
    if features and isinstance(weights, Mapping):
        # the classifier's weights or the backbone's: keys of the full graph outside the feature graph are dropped,
        # any other key is reported by the check
        fg = FT.feature_graph(graph, out_indices)
        drop = {p.name for p in graph.params} - {p.name for p in fg.params}
        return fg, W.check_weights(fg, {k: v for k, v in weights.items() if k not in drop})
    return _features(graph, W.check_weights(graph, weights), features, out_indices)


def _features(graph: Graph, w, features: bool, out_indices):
    if not features:
        return graph, w
    fg = FT.feature_graph(graph, out_indices)
    return fg, {p.name: w[p.name] for p in fg.params}


def build(arch: str | Graph | os.PathLike | None = None, backend: str = "torch", weights=None,
          num_classes: int | None = None, input_size: int | None = None, include_top: bool | None = None,
          dtype: str = "float32", seed: int = 0, mode: str = "train", features: bool = False,
          out_indices: Iterable[int] | None = None):
    """Build the native model of ``arch`` in ``backend``.

    ``arch``: a model id, a Graph, or a weights file (then the model is the file's graph and weights:
    ``lightnets.build("x.safetensors")``). ``weights``: canonical dict or a file of any format; ``None``
    gives the deterministic random init of ``seed``. A file's own graph is used: ``arch``,
    ``num_classes``, ``include_top`` and ``input_size`` (where it changes a node), if given, must build
    exactly that graph, else WeightsError naming the node and attribute. Without a file the defaults
    are 1000 classes, 224x224, include_top=True. Weights are checked before the model is built; the
    graph's ``meta["provenance"]`` card says where they came from.
    ``mode="train"`` builds the graph as it is; ``mode="inference"`` builds it with every batch norm
    that follows a conv/linear folded into that layer (``lightnets.transforms.fold_batch_norm``, done
    in float64 before casting to ``dtype``), after collapsing the parallel branches of reparameterisable
    nets (MobileOne, RepGhost: ``lightnets.transforms.reparameterize``): the same eval function, fewer ops,
    no train-mode BN.
    ``features=True`` builds the backbone: its outputs are the feature maps of :func:`feature_info`
    (``out_indices`` picks some), a list of tensors in torch/paddle, a multi-output keras.Model (NHWC);
    :func:`run` returns a list of NCHW arrays. It shares the classifier's weights by name.
    """
    check_dtype(dtype)
    if mode not in ("train", "inference"):
        raise LightnetsError(f"mode {mode!r} is not supported; use 'train' (the graph as written, trainable "
                             "batch norms) or 'inference' (batch norms folded into the convs)")
    graph, w = graph_and_weights(arch, weights, num_classes, input_size, include_top, seed, dtype, features,
                                 out_indices)
    if mode == "inference":
        from .transforms import inference_form

        graph, w = inference_form(graph, w)
    be = load_backend(backend)
    model = be.build(graph, dtype)
    be.set_weights(model, w)
    return model


def export_weights(model) -> W.Weights:
    """The canonical weights of a lightnets model of any backend."""
    return backend_of(model).get_weights(model)


def run(model, x: np.ndarray, return_all: bool = False):
    """Eval forward of a lightnets model of any backend on an NCHW numpy batch: an array, or a list of NCHW
    arrays for a model whose graph has ``outputs`` (``build(..., features=True)``)."""
    return backend_of(model).run(model, x, return_all=return_all)
