"""The user-facing API: build a native model from an id or a graph, move canonical weights in and out."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from . import registry
from . import weights as W
from .errors import LightnetsError
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


def _as_weights(weights) -> Mapping[str, np.ndarray]:
    if isinstance(weights, (str, os.PathLike)):
        return W.load(weights)
    return weights


def build(arch: str | Graph, backend: str = "torch", weights=None, num_classes: int = 1000,
          input_size: int = 224, include_top: bool = True, dtype: str = "float32", seed: int = 0,
          mode: str = "train"):
    """Build the native model of ``arch`` in ``backend``.

    ``weights``: canonical dict or a ``.safetensors``/``.npz`` path; ``None`` gives the deterministic
    random init of ``seed``. Weights are checked against the spec before the framework is touched.
    ``mode="train"`` builds the graph as it is; ``mode="inference"`` builds it with every batch norm
    that follows a conv/linear folded into that layer (``lightnets.transforms.fold_batch_norm``, done
    in float64 before casting to ``dtype``): the same eval function, fewer ops, no train-mode BN.
    """
    if dtype not in DTYPES:
        raise LightnetsError(f"dtype {dtype!r} is not supported; use one of {DTYPES}")
    if mode not in ("train", "inference"):
        raise LightnetsError(f"mode {mode!r} is not supported; use 'train' (the graph as written, trainable "
                             "batch norms) or 'inference' (batch norms folded into the convs)")
    graph = spec(arch, num_classes, input_size, include_top)
    w = W.init_weights(graph, seed) if weights is None else W.check_weights(graph, _as_weights(weights))
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


def load_weights(model, weights, format: str | None = None) -> None:
    """Assign weights to ``model``: a canonical dict or a file of any format (``lightnets.port``
    formats: canonical .safetensors/.npz, torch .pt/.pth/.safetensors, keras .weights.h5/.keras,
    paddle .pdparams); checked in full before any assignment."""
    from .port import load_weights as load

    load(model, weights, format)


def save_weights(model, path, format: str | None = None, overwrite: bool = False):
    """Save a model's weights by suffix (or ``format``), atomically: canonical ``.safetensors``/``.npz``
    or any native format of any backend (see ``lightnets.port``); ``overwrite`` to replace a file."""
    from .port import save_weights as save

    return save(model, path, format, overwrite)


def run(model, x: np.ndarray, return_all: bool = False):
    """Eval forward of a lightnets model of any backend on an NCHW numpy batch."""
    return backend_of(model).run(model, x, return_all=return_all)
