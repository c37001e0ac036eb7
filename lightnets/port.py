"""Porting a model, or a weights file of any format, between torch, keras and paddle.

A port is: read the source (a lightnets model, a weights file through :mod:`lightnets.formats`, or a
zoo checkpoint through :mod:`lightnets.zoo`) -> canonical weights + the graph they run on -> build
the target backend's model of that graph -> check the target against the source on a probe batch.
The graph is the source's own (a file's recorded graph, checked against ``arch``); the provenance
card in ``graph.meta`` travels with it. This module imports no framework and never branches on one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import formats as F
from . import provenance as PV
from . import reference
from . import weights as W
from . import zoo as Z
from .errors import FileFormatError, LightnetsError, UnknownBackendError, WeightsError
from .frameworks import BACKENDS, IMPORT_ORDER, backend_of, load_backend
from .graph import Graph
from .numerics import rel_error

PROBE_TOLERANCE = 1e-4  # float32-only target vs source, relative to max |logit|
PROBE_FLOAT64 = 1e-9  # float64 target (and source model) vs the float64 reference: summation order only
PROBE_SEED = 0


class Source(NamedTuple):
    """What a port starts from: the graph (card in meta), canonical weights and the model to probe."""

    graph: Graph
    weights: W.Weights
    model: Any  # a model of ``backend`` to run on the probe; None: the float64 reference is the source
    backend: Any
    label: str  # e.g. "torch model", "paddle", "timm:mobilenetv3_large_100 (torch)"
    graph_from: str
    notes: tuple[str, ...] = ()


def outputs_of(graph: Graph, y) -> list[np.ndarray]:
    """A forward's result as a list of float64 arrays, one per graph output."""
    return [np.asarray(v, np.float64) for v in (y if graph.multi_output else [y])]


def run_source(source: Source, x: np.ndarray) -> tuple[list[np.ndarray], str]:
    """The source's outputs on the probe batch ``x`` and what they came from (the source model, or the
    float64 reference for a canonical file)."""
    if source.model is None:
        return outputs_of(source.graph, reference.run(source.graph, source.weights, x.astype(np.float64))), \
            "float64 reference"
    be, model = source.backend, source.model
    if be.owns(model):
        y = be.run(model, x)
    else:  # a zoo model: fed what its in-model preprocessing (keras.applications EfficientNet's) maps onto x
        y = be.forward(model, Z.convert.undo_in_model(be.in_model_preprocessing(model), x).astype(x.dtype))
    return outputs_of(source.graph, y), "source"


def load_in_safe_order(*names: str | None) -> None:
    """Load the backends a port needs, paddle before tensorflow (the reverse segfaults)."""
    for name in IMPORT_ORDER:
        if name in names:
            load_backend(name)


def zoo_format(fmt: str | None) -> tuple[str, str] | None:
    """``"timm:ghostnet_100"`` -> ``("timm", "ghostnet_100")``; None for a plain format name."""
    if fmt and ":" in fmt:
        zoo, name = fmt.split(":", 1)
        if zoo not in Z.ZOOS:
            raise FileFormatError(f"unknown zoo {zoo!r} in {fmt!r}; zoos are {', '.join(Z.ZOOS)}")
        return zoo, name
    return None


def _detect_zoo(path: Path, fmt: str, arch: str | None) -> tuple[str, str] | None:
    """The zoo entry that wrote a native file carrying no lightnets graph, when exactly one fits its keys and
    shapes (and ``arch``); several fitting entries are an error naming them. None: not a zoo file (deployment
    files, the ``imports`` rows, are matched by their weight ops instead)."""
    backend = F.FORMATS[fmt].backend
    if backend is None or F.FORMATS[fmt].imports or F.read_file_meta(path, fmt).graph is not None:
        return None
    found = Z.detect_file(path, backend, fmt, arch)
    if len(found) > 1:
        raise WeightsError(f"{path.name} fits several zoo models: {', '.join(f'{z}:{n}' for z, n in found)}; pass "
                           "one as from_format (CLI --from-format)")
    return found[0] if found else None


def _from_zoo(path: Path, zoo: tuple[str, str], arch: str | None, input_size: int | None,
              detected: bool = False) -> Source:
    e = Z.entry(*zoo)
    if arch is not None and e.arch != arch:
        raise WeightsError(f"{zoo[0]}:{zoo[1]} checkpoints are lightnets {e.arch!r}, not {arch!r}; "
                           f"pass --arch {e.arch} (or omit it)")
    be = load_backend(e.framework)
    label = f"{zoo[0]}:{zoo[1]}"
    model, graph, canonical, card = Z.read_checkpoint(path, zoo[0], zoo[1], input_size or 224)
    notes = (f"detected {label} from the file's keys and shapes (from_format={label!r})",) if detected else ()
    return Source(PV.with_card(graph, PV.card_of(graph) or card), canonical, model, be, f"{label} ({be.name})",
                  f"zoo importer {label}", notes)


def _from_file(path, arch, from_format, num_classes, input_size, dtype) -> Source:
    loaded = F.read(path, from_format, arch=arch, num_classes=num_classes, input_size=input_size, dtype=dtype)
    return Source(loaded.graph, loaded.weights, loaded.model, loaded.backend, loaded.format, loaded.graph_from,
                  loaded.notes)


def _from_model(model, arch) -> Source:
    be = backend_of(model)
    graph = be.graph_of(model)
    if arch is not None and graph.name != (arch.name if isinstance(arch, Graph) else arch):
        raise WeightsError(f"the model is {graph.name!r}, not {arch!r}")
    return Source(graph, W.check_weights(graph, be.get_weights(model)), model, be, f"{be.name} model", "model")


def port(model_or_file, to: str = "keras", arch: str | None = None, from_format: str | None = None,
         num_classes: int | None = None, input_size: int | None = None, dtype: str = "float32",
         return_info: bool = False):
    """Port a lightnets model, or a weights file of any format, to the ``to`` backend.

    - From a model: canonical export -> build in ``to``.
    - From a file: read it (``from_format`` or the suffix) with the graph recorded in it (``arch`` and
      the arguments, if given, must agree with it; a file without a graph needs ``arch``). A zoo
      checkpoint with ``from_format`` like ``"torchvision:mobilenet_v2"`` goes through the zoo importer.

    Before returning, the output shape and a probe output (fixed random input) of the target are
    compared with the source model (or, for canonical files, the float64 numpy reference): relative
    error <= ``PROBE_TOLERANCE``, else WeightsError. ``return_info`` also returns a summary dict
    (including ``graph_from``: where the graph came from, and the provenance ``card``).
    """
    if to not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {to!r}; choose one of {', '.join(BACKENDS)}")
    if isinstance(model_or_file, (str, os.PathLike)):
        path = Path(model_or_file)
        if not path.is_file():
            raise FileFormatError(f"weights file {path} does not exist")
        zoo = zoo_format(from_format)
        if zoo:
            load_in_safe_order(to, Z.entry(*zoo).framework)
            source = _from_zoo(path, zoo, arch, input_size)
        else:
            fmt = F.format_of(path, from_format)
            load_in_safe_order(to, F.FORMATS[fmt].backend)
            zoo = _detect_zoo(path, fmt, arch)
            source = _from_zoo(path, zoo, arch, input_size, detected=True) if zoo else \
                _from_file(path, arch, from_format, num_classes, input_size, dtype)
    else:
        load_in_safe_order(to, backend_of(model_or_file).name)
        source = _from_model(model_or_file, arch)

    graph = source.graph
    be = load_backend(to)
    target = be.build(graph, dtype)
    be.set_weights(target, source.weights)
    x = np.random.default_rng(PROBE_SEED).standard_normal((2, *graph.input_shape))
    probe = _probe(source, be, target, dtype, graph, x, to)
    if not return_info:
        return target
    info = {"arch": graph.name, "source_format": source.label, "target": to, "tensors": len(source.weights),
            "params": int(sum(np.asarray(v).size for v in source.weights.values())), **probe,
            "probe_shape": tuple(x.shape),
            "graph_from": source.graph_from, "card": PV.card_of(graph), "notes": list(source.notes)}
    return target, info


def _probe(source: Source, be, target, built: str, graph: Graph, x: np.ndarray, to: str) -> dict:
    """Check the ported model (built in ``built``) on the probe batch ``x``; WeightsError if it is not the
    source's net.

    The mapping is judged in float64 where the target computes float64: the target (cast to float64) against
    the float64 reference of the source's graph and weights, <= ``PROBE_FLOAT64`` - float32 noise of a deep
    net with BN statistics from data can exceed 1e-4 on its own. (The source's own native -> canonical
    mapping is its backend's, checked by the parity suite; a zoo source was probed in float64 on import.)
    A float32-only target (onnxruntime, tflite, keras off tensorflow) is compared in float32 with the
    source, <= ``PROBE_TOLERANCE``.
    """
    if be.computes_float64:
        want = outputs_of(graph, reference.run(graph, source.weights, x))
        runs = {"target": (target if built == "float64" else be.cast(target, "float64"), be)}
        dtype, bound, against = "float64", PROBE_FLOAT64, "float64 reference"
    else:
        want, against = run_source(source, x.astype(np.float32))
        runs = {"target": (target, be)}
        dtype, bound = "float32", PROBE_TOLERANCE
    worst = {"max_abs_diff": 0.0, "max_rel_diff": 0.0}
    for side, (model, backend) in runs.items():
        got = outputs_of(graph, backend.run(model, x.astype(dtype)))
        shapes = [tuple(v.shape) for v in got]
        if shapes != [tuple(v.shape) for v in want] or [s[1:] for s in shapes] != [tuple(s) for s in
                                                                                   graph.output_shapes]:
            raise WeightsError(f"port to {to}: {side} output shapes {shapes} differ from the {against}'s "
                               f"{[tuple(v.shape) for v in want]} (graph outputs {graph.output_shapes}); the port "
                               "is wrong")
        rel = max(rel_error(g, w) for g, w in zip(got, want, strict=True))
        if not rel <= bound:
            raise WeightsError(f"port to {to}: the {side}'s {dtype} probe output differs from the {against} by "
                               f"{rel:.2e} relative (> {bound:.0e}); not returning a wrong model")
        worst["max_rel_diff"] = max(worst["max_rel_diff"], rel)
        worst["max_abs_diff"] = max(worst["max_abs_diff"], max(float(np.max(np.abs(g - w)))
                                                              for g, w in zip(got, want, strict=True)))
    return {**worst, "probe_against": against, "probe_dtype": dtype, "probe_checked": sorted(runs)}


def check_port_target(out, to: str, format: str | None = None) -> str:
    """The format ``out`` will be written in, refused (before any work) if it is another backend's."""
    fmt = F.format_of(out, format, reading=False)
    backend = F.FORMATS[fmt].backend
    if backend is not None and backend != to:
        raise LightnetsError(f"--out {Path(out).name} is a {fmt} file, not a {to} format; use a {to} suffix "
                             f"({', '.join(F.backend_formats(to))}) or canonical .safetensors/.npz")
    return fmt
