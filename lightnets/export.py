"""Export a lightnets model to a deployment format: ONNX, written from the graph IR itself.

``lightnets.export(source, to="onnx", path="m.onnx")`` takes

- a lightnets model of any backend (its graph and canonical weights: ``backend_of(model)``),
- a weights file of any format (read with its own graph, as ``lightnets.build(file)`` does),
- a ``(graph, weights)`` pair, or
- a model id (its deterministic initial weights, ``seed``),

and writes one ``.onnx`` file atomically (refusing an existing file unless ``overwrite=True``). The ONNX
graph is emitted node by node from the IR (``lightnets.backends.onnx``; nothing is traced), its
initializers named after the canonical weights, and the file carries the graph JSON and provenance card
(graph ``doc_string`` and ``metadata_props``). The export is checked before it is written:
``onnx.checker.check_model(full_check=True)`` and, when onnxruntime is installed, one probe image run
against the float64 numpy reference (``PROBE_REL``).

This module imports no framework: ``onnx`` is imported when an export runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import provenance as PV
from . import weights as W
from .errors import BackendNotInstalledError, LightnetsError
from .graph import Graph

TARGETS = {"onnx": ".onnx"}  # export target -> suffix
DTYPES = ("float32", "float64")
# the probe's bound: parity's float32 whole-network bound (parity/tolerances.py MODEL_REL); a float64 ONNX
# graph runs its convs in float32 in onnxruntime (no double Conv kernel), so the same bound applies
PROBE_REL = 1e-4


def onnx_module():
    """``lightnets.backends.onnx`` (needs the ``onnx`` package; ``onnxruntime`` only to run models)."""
    if importlib.util.find_spec("onnx") is None:
        raise BackendNotInstalledError("exporting to ONNX needs the 'onnx' package, which is not installed; "
                                       "run: pip install 'lightnets[onnx]'")
    return importlib.import_module("lightnets.backends.onnx")


def source_graph_and_weights(source, input_size: int | None = None, seed: int = 0, dtype: str = "float32"):
    """The graph (card in ``meta``) and canonical weights of an export source (see the module doc)."""
    from . import api, formats

    if isinstance(source, tuple):
        if len(source) != 2 or not isinstance(source[0], Graph) or not isinstance(source[1], Mapping):
            raise LightnetsError("a (graph, weights) source must be a lightnets Graph and a mapping of canonical "
                                 "name -> array, e.g. (lightnets.get_spec(id), lightnets.export_weights(model))")
        graph, weights = source
        graph = formats.at_size(graph, input_size)
        return PV.with_card(graph, PV.card_of(graph) or PV.dict_card(graph)), W.check_weights(graph, weights)
    if isinstance(source, (str, os.PathLike)):
        if api.is_weights_file(source):
            return api.graph_and_weights(source, input_size=input_size, dtype=dtype)
        return api.graph_and_weights(source, input_size=input_size, seed=seed)
    if isinstance(source, Graph):
        raise LightnetsError("export needs weights too: pass (graph, weights), a model or a weights file")
    from .frameworks import backend_of

    be = backend_of(source)  # LightnetsError for anything that is not a lightnets model
    graph = formats.at_size(be.graph_of(source), input_size)
    return PV.with_card(graph, PV.card_of(graph) or PV.dict_card(graph)), be.get_weights(source)


def to_onnx(source, dtype: str = "float32", dynamic_hw: bool | None = None, input_size: int | None = None,
            seed: int = 0):
    """The checked ``onnx.ModelProto`` of ``source`` (nothing written)."""
    if dtype not in DTYPES:
        raise LightnetsError(f"dtype {dtype!r} is not supported; use one of {DTYPES}")
    O = onnx_module()  # noqa: N806
    graph, weights = source_graph_and_weights(source, input_size, seed, dtype)
    model = O.to_onnx(graph, weights, dtype, dynamic_hw)
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:  # a lowering bug, never the user's input
        raise LightnetsError(f"the ONNX export of {graph.name!r} fails the onnx checker ({str(e)[:300]}); "
                             "please report it with the model id") from None
    return model, graph, weights


def probe(model, graph: Graph, weights, seed: int = 0) -> float | None:
    """Relative error of one random image through ``model`` in onnxruntime against the float64 reference
    (None without onnxruntime)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    from .numerics import rel_error
    from .reference import run

    O = onnx_module()  # noqa: N806
    x = np.random.default_rng(seed).standard_normal((1, *graph.input_shape))
    elem = model.graph.input[0].type.tensor_type.elem_type
    sess = O.make_session(model.SerializeToString(), O._default_threads())
    got = sess.run(None, {"input": x.astype(np.float64 if elem == O.TensorProto.DOUBLE else np.float32)})[0]
    return rel_error(got, run(graph, weights, x))


def export(source, to: str = "onnx", path=None, overwrite: bool = False, dtype: str = "float32",
           dynamic_hw: bool | None = None, input_size: int | None = None, seed: int = 0,
           check: bool = True) -> Path:
    """Write ``source`` (a lightnets model of any backend, a weights file, ``(graph, weights)`` or a model id)
    as an ONNX file at ``path``; returns the path.

    ``dtype``: the ONNX tensor type ("float32" default; "float64" keeps double where onnxruntime has
    kernels). ``dynamic_hw``: symbolic height/width (default: unless the graph is fixed to its size; the
    batch is always dynamic). ``input_size``: the graph's build size (static dims and doc). ``check``:
    probe the export in onnxruntime against the float64 reference before writing (when installed).
    """
    from .formats import check_writable

    if to not in TARGETS:
        raise LightnetsError(f"unknown export target {to!r}; choose one of {', '.join(TARGETS)}")
    if path is None:
        raise LightnetsError(f"export needs path=, the {TARGETS[to]} file to write")
    path = check_writable(path, overwrite)
    model, graph, weights = to_onnx(source, dtype, dynamic_hw, input_size, seed)
    if check:
        rel = probe(model, graph, weights, seed)
        if rel is not None and not rel <= PROBE_REL:
            raise LightnetsError(f"the ONNX export of {graph.name!r} gives {rel:.2e} relative error against the "
                                 f"float64 reference on a probe image (bound {PROBE_REL:g}); nothing written. "
                                 "Please report it with the model id")
    import onnx

    return W.atomic_write(path, lambda tmp: onnx.save(model, tmp))
