"""The user-facing API: build a native model from an id or a graph, move canonical weights in and out."""

from __future__ import annotations

import os

import numpy as np

from . import formats, registry
from . import provenance as PV
from . import weights as W
from .errors import LightnetsError
from .formats import load_weights, save_weights  # noqa: F401 -- public API (any format, see lightnets.formats)
from .frameworks import BACKENDS, backend_of, load_backend  # noqa: F401 -- re-exported
from .graph import Graph

DTYPES = ("float32", "float64")


def spec(arch: str | Graph, num_classes: int = 1000, input_size: int = 224, include_top: bool = True) -> Graph:
    """The graph for a model id (or the graph itself)."""
    if isinstance(arch, Graph):
        return arch
    if not isinstance(arch, str):
        raise LightnetsError(f"arch must be a model id or a Graph, got {type(arch).__name__}")
    return registry.get_spec(arch, num_classes=num_classes, input_size=input_size, include_top=include_top)


def is_weights_file(arch) -> bool:
    """Whether ``arch`` names a weights file rather than a model id (ids have no dots or slashes)."""
    return isinstance(arch, os.PathLike) or (isinstance(arch, str) and any(c in arch for c in "./\\"))


def graph_and_weights(arch, weights=None, num_classes: int | None = None, input_size: int | None = None,
                      include_top: bool | None = None, seed: int = 0, dtype: str = "float32"):
    """The graph (with its provenance card in ``meta``) and checked canonical weights :func:`build` uses."""
    if is_weights_file(arch):
        if weights is not None:
            raise LightnetsError(f"build({str(arch)!r}) takes the graph and weights from that file; do not also "
                                 "pass weights=")
        arch, weights = None, arch
    if isinstance(weights, (str, os.PathLike)):
        loaded = formats.read(weights, arch=arch, num_classes=num_classes, input_size=input_size,
                              include_top=include_top, dtype=dtype)
        return loaded.graph, loaded.weights
    if arch is None:
        raise LightnetsError("build() needs a model id, a Graph or a weights file; run `lightnets list` for ids")
    graph = spec(arch, 1000 if num_classes is None else num_classes, 224 if input_size is None else input_size,
                 True if include_top is None else include_top)
    if weights is None:
        return PV.with_card(graph, PV.init_card(graph, seed)), W.init_weights(graph, seed)
    w = W.check_weights(graph, weights)
    return PV.with_card(graph, PV.card_of(graph) or PV.dict_card(graph)), w


def build(arch: str | Graph | os.PathLike | None = None, backend: str = "torch", weights=None,
          num_classes: int | None = None, input_size: int | None = None, include_top: bool | None = None,
          dtype: str = "float32", seed: int = 0, mode: str = "train"):
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
    in float64 before casting to ``dtype``): the same eval function, fewer ops, no train-mode BN.
    """
    if dtype not in DTYPES:
        raise LightnetsError(f"dtype {dtype!r} is not supported; use one of {DTYPES}")
    if mode not in ("train", "inference"):
        raise LightnetsError(f"mode {mode!r} is not supported; use 'train' (the graph as written, trainable "
                             "batch norms) or 'inference' (batch norms folded into the convs)")
    graph, w = graph_and_weights(arch, weights, num_classes, input_size, include_top, seed, dtype)
    if mode == "inference":
        from .transforms import fold_batch_norm

        graph, w = fold_batch_norm(graph, {k: np.asarray(v, np.float64) for k, v in w.items()})
    be = load_backend(backend)
    model = be.build(graph, dtype)
    be.set_weights(model, w)
    return model


def export_weights(model) -> W.Weights:
    """The canonical weights of a lightnets model of any backend."""
    return backend_of(model).get_weights(model)


def run(model, x: np.ndarray, return_all: bool = False):
    """Eval forward of a lightnets model of any backend on an NCHW numpy batch."""
    return backend_of(model).run(model, x, return_all=return_all)
