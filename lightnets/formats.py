"""Weight files of every format: ONE table, and reading/writing through it.

==================== ===================== ========= ===========================================
format               suffixes              backend   graph + provenance card
==================== ===================== ========= ===========================================
``safetensors``      ``.safetensors``      canonical inside: metadata ``lightnets.graph``/``lightnets.card``
``npz``              ``.npz``              canonical inside: the ``__lightnets__`` JSON entry
``torch``            ``.pt`` / ``.pth``    torch     sidecar ``<file>.lightnets.json``
``torch-safetensors````.safetensors``      torch     sidecar
``keras-weights``    ``.weights.h5``       keras     sidecar
``keras-model``      ``.keras``            keras     sidecar
``paddle``           ``.pdparams``         paddle    sidecar
``onnx``             ``.onnx``             onnxrt    sidecar (the initializers are the canonical weights)
``tflite``           ``.tflite``           tflite    sidecar (BN folded into the convs by the converter)
==================== ===================== ========= ===========================================

Deployment files (rows with ``imports``: ``.onnx``, ``.tflite``) that lightnets did not write, or whose
sidecar is gone, are imported by :mod:`lightnets.artifacts` (weight ops matched onto the id, found when not
given, and probed in the file's own runtime); a ``.tflite`` file always reads that way.

Adding a format is adding a row to :data:`FORMATS` (native rows are read and written by their
backend's native I/O: ``read_state_dict``/``load_file``/``save_file``; this module imports no
framework and never branches on one).

A weights file never loses its graph: canonical files carry the whole graph JSON and the provenance
card (:mod:`lightnets.provenance`) in their metadata; native files get a ``<file>.lightnets.json``
sidecar ``{"graph", "card", "file_sha256", ...}`` written atomically together with the file. Reading
uses the FILE's graph; a caller's id or arguments that disagree with it are a WeightsError naming
the node and attribute, never a different graph. Files without a graph (older or foreign files, or
a sidecar that is absent or was written for other bytes) load by the caller's id, and
:attr:`Loaded.graph_from` says so (which graph: :mod:`lightnets.file_graph`).

A ``.safetensors`` file without lightnets metadata is torch if its keys are torch BN names
(``running_mean``/``running_var``), canonical otherwise. Canonical files record a sha256 of the
tensors, checked on read.

Pickle: ``paddle.load`` unpickles; it is called only for a file the user names as a native paddle
checkpoint (suffix ``.pdparams`` or ``format="paddle"``) - never to sniff a file, never for ``.npz``
(``allow_pickle=False``) or torch files (``weights_only=True``). Only load ``.pdparams`` you trust.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import provenance as PV
from . import registry
from . import weights as W
from .errors import FileFormatError, LightnetsError, SpecError
from .file_graph import GraphFor, fc_weight, infer_classes, resolve_graph
from .frameworks import backend_of, load_backend
from .graph import Graph

SIDECAR = ".lightnets.json"  # native files: <file>.lightnets.json holds their graph and card
SIDECAR_FORMAT = "lightnets.sidecar"
GRAPH_KEY, CARD_KEY = "lightnets.graph", "lightnets.card"


class Format(NamedTuple):
    """One row of the format table."""

    name: str
    suffixes: tuple[str, ...]  # the first is the one written
    backend: str | None  # None: canonical (numpy only)
    holds_card: bool  # graph + card inside the file (else in the sidecar)
    read_meta: Callable[[Path, str], dict]  # lightnets metadata stored inside the file ({} if none)
    read: Callable  # (path, fmt, graph_for, dtype) -> (canonical weights, graph, native model | None)
    write: Callable  # (tmp, fmt, saving: _Saving) -> None
    imports: bool = False  # a file lightnets did not write is imported (lightnets.artifacts), its id found


class Loaded(NamedTuple):
    """A weights file read: canonical weights, the graph they run on (card in ``meta``) and where it came from."""

    weights: W.Weights
    graph: Graph
    card: dict
    format: str
    graph_from: str  # "file metadata" | "sidecar <name>" | "id '<arch>' (...)"
    notes: tuple[str, ...]
    model: Any  # the native model holding the weights (native formats), else None
    backend: Any  # its backend object, else None


# --- canonical rows -------------------------------------------------------------------------------
def _canonical_meta(path: Path, fmt: str) -> dict:
    return W.read_metadata(path)


def _read_canonical(path: Path, fmt: str, graph_for, dtype: str):
    arrays = W.read_canonical(path)[0]
    template = graph_for(None)
    graph = graph_for(_canonical_classes(template, arrays)) if graph_for.infer_classes else template
    return W.check_weights(graph, arrays), graph, None


def _canonical_classes(graph: Graph, arrays: Mapping[str, np.ndarray]) -> int | None:
    fc = fc_weight(graph)
    v = arrays.get(fc) if fc else None
    return int(np.shape(v)[0]) if v is not None and np.ndim(v) == 2 else None


def _canonical_writer(write_arrays):
    """A canonical row's writer: ``write_arrays(arrays, tmp, metadata)`` with the graph, card and sha256."""
    def write(tmp: str, fmt: str, saving: _Saving) -> None:
        arrays = {k: np.ascontiguousarray(v) for k, v in saving.weights.items()}
        # looked up at call time (W.<name>), so a test can replace the low-level writer
        getattr(W, write_arrays)(arrays, tmp, {"format": "lightnets.canonical", **saving.metadata(),
                                               "sha256": W.digest(arrays)})
    return write


# --- native rows (the format's backend does the framework work) -------------------------------------
def _no_meta(path: Path, fmt: str) -> dict:
    return {}


def _read_native(path: Path, fmt: str, graph_for, dtype: str):
    be = load_backend(FORMATS[fmt].backend)  # paddle: BackendConflictError if tensorflow came first
    graph = graph_for(None)
    model = be.build(graph, dtype)
    if graph_for.infer_classes:
        have = {k: tuple(np.shape(v)) for k, v in be.read_state_dict(path, fmt).items()}
        want = {k: tuple(np.shape(v)) for k, v in be.state_dict(model).items()}
        n = infer_classes(want, have, PV.num_classes_of(graph))
        if n is not None and n != PV.num_classes_of(graph):
            graph = graph_for(n)
            model = be.build(graph, dtype)
    be.load_file(model, path, fmt)
    return be.get_weights(model), graph, model


def _read_artifact(path: Path, fmt: str, graph_for, dtype: str):
    """A deployment file (.onnx/.tflite): its weight ops matched onto the id (found, or ``graph_for``'s)."""
    from . import artifacts

    arch = graph_for.fixed if graph_for.fixed is not None else graph_for.arch
    imp = artifacts.read(path, fmt, FORMATS[fmt].backend, arch, graph_for.num_classes, graph_for.input_size)
    return imp.weights, imp.graph, None


def _read_onnx(path: Path, fmt: str, graph_for, dtype: str):
    """A lightnets .onnx file (its graph known) holds canonical initializers; any other, and a lightnets QDQ int8 file
    (its card records ``int8``: quantized initializers), is imported (dequantized) onto the graph."""
    native = graph_for.fixed is not None and not (PV.card_of(graph_for.fixed) or {}).get("int8")
    return (_read_native if native else _read_artifact)(path, fmt, graph_for, dtype)


def _write_native(tmp: str, fmt: str, saving: _Saving) -> None:
    be = load_backend(FORMATS[fmt].backend)
    be.save_file(saving.native(be), tmp, fmt)


_CANONICAL = dict(backend=None, holds_card=True, read_meta=_canonical_meta, read=_read_canonical)
_NATIVE = dict(holds_card=False, read_meta=_no_meta, read=_read_native, write=_write_native)
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("safetensors", (".safetensors",), write=_canonical_writer("write_safetensors"), **_CANONICAL),
    Format("npz", (".npz",), write=_canonical_writer("write_npz"), **_CANONICAL),
    Format("torch", (".pt", ".pth"), "torch", **_NATIVE),
    Format("torch-safetensors", (".safetensors",), "torch", **_NATIVE),
    Format("keras-weights", (".weights.h5",), "keras", **_NATIVE),
    Format("keras-model", (".keras",), "keras", **_NATIVE),
    Format("paddle", (".pdparams",), "paddle", **_NATIVE),
    Format("onnx", (".onnx",), "onnxruntime", **{**_NATIVE, "read": _read_onnx, "imports": True}),
    Format("tflite", (".tflite",), "tflite", **{**_NATIVE, "read": _read_artifact, "imports": True}),
)}
CANONICAL = tuple(n for n, f in FORMATS.items() if f.backend is None)
# short names accepted for ``format=``: resolved by the file's suffix
ALIASES = {"canonical": CANONICAL, "torch": ("torch", "torch-safetensors"), "keras": ("keras-weights", "keras-model")}


def backend_formats(backend: str) -> tuple[str, ...]:
    return tuple(n for n, f in FORMATS.items() if f.backend == backend)


# --- which format a path is -------------------------------------------------------------------------
def _by_suffix(name: str, candidates) -> list[str]:
    return [n for n in candidates if any(name.endswith(s) for s in FORMATS[n].suffixes)]


def format_of(path, format: str | None = None, reading: bool = True) -> str:
    """The format of ``path``: ``format`` if given (checked; an alias is resolved by the suffix), else
    from the suffix (and, for a ``.safetensors`` being read, its metadata or key names)."""
    name = Path(path).name
    if format is not None:
        if format in ALIASES:
            hits = _by_suffix(name, ALIASES[format])
            format = hits[0] if hits else ALIASES[format][0]
        if format not in FORMATS:
            raise FileFormatError(f"unknown weights format {format!r}; choose one of {', '.join(FORMATS)}")
        return format
    hits = _by_suffix(name, FORMATS)
    if len(hits) > 1:  # .safetensors: canonical or torch
        return _safetensors_kind(path) if reading and Path(path).is_file() else hits[0]
    if hits:
        return hits[0]
    suffixes = ", ".join(dict.fromkeys(s for f in FORMATS.values() for s in f.suffixes))
    raise FileFormatError(f"cannot tell the weights format of {name!r} from its suffix; use {suffixes}, or name "
                          f"the format ({', '.join(FORMATS)})")


def _safetensors_kind(path) -> str:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta, keys = f.metadata() or {}, list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise FileFormatError(f"{path} is not a readable .safetensors file ({e}); it may be truncated or "
                              "corrupt - re-export it") from None
    if meta.get("format") == "lightnets.canonical":
        return "safetensors"
    if meta.get("format") in ("torch", "pt"):
        return "torch-safetensors"
    return "torch-safetensors" if any(k.endswith((".running_mean", ".running_var")) for k in keys) \
        else "safetensors"


def sidecar_of(path) -> Path:
    return Path(str(path) + SIDECAR)


# --- the graph and card a file holds -------------------------------------------------------------
class FileMeta(NamedTuple):
    graph: Graph | None
    card: dict | None
    where: str  # "file metadata" | "sidecar <name>" | "" (none)
    id_hint: str | None  # an older file's recorded model id (no graph JSON)
    notes: tuple[str, ...]


def _parse(path, graph_text, card_text, where: str) -> tuple[Graph | None, dict | None]:
    try:
        graph = Graph.from_json(graph_text if isinstance(graph_text, str) else json.dumps(graph_text))
        card = json.loads(card_text) if isinstance(card_text, str) else card_text
    except (SpecError, json.JSONDecodeError, TypeError) as e:
        raise FileFormatError(f"{path}: the graph/card in its {where} are unreadable ({str(e)[:200]}); the "
                              "file is corrupt or was written by another tool - re-export it") from None
    if card is not None and not isinstance(card, dict):
        raise FileFormatError(f"{path}: the provenance card in its {where} is not a JSON object; re-export it")
    card = card or PV.card_of(graph)
    return PV.with_card(graph, card), card


def read_file_meta(path, fmt: str) -> FileMeta:
    """The graph and card recorded with ``path`` (inside it, or in its sidecar), without reading weights."""
    path = Path(path)
    row = FORMATS[fmt]
    if row.holds_card:
        meta = row.read_meta(path, fmt)
        text = meta.get(GRAPH_KEY)
        if text and text.lstrip().startswith("{"):
            graph, card = _parse(path, text, meta.get(CARD_KEY), "metadata")
            return FileMeta(graph, card, "file metadata", None, ())
        note = "the file holds no graph (written by an older lightnets or another tool)"
        return FileMeta(None, None, "", text or None, (note,))
    side = sidecar_of(path)
    if not side.is_file():
        return FileMeta(None, None, "", None, (f"no sidecar {side.name} (the file was not written by lightnets, "
                                               "or the sidecar was not copied with it)",))
    try:
        d = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileFormatError(f"sidecar {side} is unreadable ({str(e)[:200]}); delete it (the file then loads "
                              "by --arch) or re-export the weights") from None
    if not isinstance(d, dict) or d.get("format") != SIDECAR_FORMAT:
        raise FileFormatError(f"{side} is not a lightnets sidecar (no \"format\": \"{SIDECAR_FORMAT}\"); delete "
                              "it or re-export the weights")
    if d.get("file_sha256") != PV.sha256_file(path):
        return FileMeta(None, None, "", (d.get("card") or {}).get("arch"),
                        (f"sidecar {side.name} was written for other bytes (the file changed since); ignored",))
    graph, card = _parse(path, d.get("graph"), d.get("card"), f"sidecar {side.name}")
    return FileMeta(graph, card, f"sidecar {side.name}", None, ())


# --- reading --------------------------------------------------------------------------------------
def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"weights file {path} does not exist; check the path (or save the weights first)")
    return path


def read(path, format: str | None = None, arch: str | Graph | None = None, num_classes: int | None = None,
         input_size: int | None = None, include_top: bool | None = None, dtype: str = "float32") -> Loaded:
    """Read a weights file of any format -> :class:`Loaded` (canonical weights checked against the graph).

    The graph is the file's own (checked against ``arch`` and the arguments given, see
    :func:`lightnets.file_graph.resolve_graph`); a file without one is read into ``arch``'s graph, the class count taken
    from the file unless ``num_classes`` is given. Native formats build a model of their backend.
    """
    path = _existing(path)
    fmt = format_of(path, format)
    row = FORMATS[fmt]
    meta = read_file_meta(path, fmt)
    notes = list(meta.notes)
    if meta.graph is not None:
        graph_for = GraphFor(fixed=resolve_graph(path, meta.graph, arch, num_classes, input_size, include_top))
        graph_from = meta.where
    else:
        if arch is None and meta.id_hint and meta.id_hint in registry.list_models():
            arch = meta.id_hint
            notes.append(f"model id {arch!r} recorded by the file")
        if arch is None and not row.imports:
            raise LightnetsError(f"{path} holds no graph ({notes[0] if notes else 'none recorded'}); pass the "
                                 "lightnets model id it belongs to (arch=..., CLI: --arch)")
        if isinstance(arch, Graph):
            graph_for = GraphFor(fixed=arch)
        else:
            graph_for = GraphFor(arch=arch, num_classes=num_classes, input_size=input_size, include_top=include_top)
        name = arch.name if isinstance(arch, Graph) else arch
        graph_from = f"id {name!r} ({notes[0] if notes else 'the file holds no graph'})"
    weights, graph, model = row.read(path, fmt, graph_for, dtype)
    card = PV.card_of(graph)
    if meta.graph is None and row.imports and model is None:
        graph_from = f"imported from the file's weight ops: {card['notes'][0]}"
    elif meta.graph is None:
        card = PV.file_card(graph, path, fmt, notes=notes)
        graph = PV.with_card(graph, card)
    backend = load_backend(row.backend) if row.backend else None
    return Loaded(weights, graph, card, fmt, graph_from, tuple(notes), model, backend)


def describe(path, format: str | None = None) -> dict:
    """What ``lightnets info`` prints: the format, the card and graph summary recorded with the file
    (no weights are read and no framework is imported)."""
    path = _existing(path)
    fmt = format_of(path, format)
    meta = read_file_meta(path, fmt)
    return {"path": str(path), "format": fmt, "bytes": path.stat().st_size,
            "graph_from": meta.where or "none", "card": meta.card,
            "graph": PV.summary(meta.graph) if meta.graph is not None else None,
            "id_hint": meta.id_hint, "notes": list(meta.notes)}


# --- writing --------------------------------------------------------------------------------------
class _Saving:
    """What a writer needs: the graph (card in meta), canonical weights, and native models on demand."""

    def __init__(self, model, be, graph: Graph, weights: W.Weights):
        self.model, self.be, self.graph, self.weights = model, be, graph, weights
        self.card = PV.card_of(graph) or PV.make_card(graph, {"kind": "dict"}, notes=[
            f"saved from a {be.name} model built without a provenance card (not by lightnets.build)"])
        self.graph = PV.with_card(graph, self.card)

    def metadata(self) -> dict[str, str]:
        return {GRAPH_KEY: self.graph.to_json(), CARD_KEY: json.dumps(self.card)}

    def native(self, be):
        """A model of backend ``be`` holding the weights: the model itself, or one built for the format."""
        if be.name == self.be.name:
            return self.model
        model = be.build(self.graph, dtype_of(self.weights))
        be.set_weights(model, self.weights)
        return model

    def sidecar(self, file_tmp: str, fmt: str) -> str:
        return json.dumps({"format": SIDECAR_FORMAT, "file_format": fmt, "file_sha256": PV.sha256_file(file_tmp),
                           "graph": json.loads(self.graph.to_json()), "card": self.card}, indent=1)


def check_writable(path, overwrite: bool = False) -> Path:
    """Refuse a missing/read-only directory or (without ``overwrite``) an existing file, before any work."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileFormatError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
    if path.is_dir():
        raise FileFormatError(f"{path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise LightnetsError(f"cannot write {path}: directory {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise LightnetsError(f"cannot write {path}: directory {path.parent} is not writable")
    return path


def dtype_of(weights: Mapping[str, np.ndarray]) -> str:
    kinds = {np.asarray(v).dtype for v in weights.values()}
    return "float64" if np.dtype("float64") in kinds else "float32"


def save_weights(model, path, format: str | None = None, overwrite: bool = False) -> Path:
    """Save a lightnets model's weights in any format (by suffix or ``format``), atomically, with its
    graph and provenance card (inside canonical files, in a sidecar beside native ones).

    An existing file is replaced only with ``overwrite=True``. A native format of another backend
    builds that backend's model of the same graph first. Files get the mode a plain open() would.
    """
    check_writable(path, overwrite)
    fmt = format_of(path, format, reading=False)
    row = FORMATS[fmt]
    be = backend_of(model)
    saving = _Saving(model, be, be.graph_of(model), be.get_weights(model))
    if row.holds_card:
        W.atomic_write(path, lambda tmp: row.write(tmp, fmt, saving))
        return Path(path)
    written = {}

    def write_file(tmp):
        row.write(tmp, fmt, saving)
        written["tmp"] = tmp

    def write_sidecar(tmp):
        Path(tmp).write_text(saving.sidecar(written["tmp"], fmt))
    # the file is written first (the sidecar records its sha256) and renamed last: a failure between the
    # renames leaves a sidecar whose sha256 does not match the old file, which readers ignore
    W.atomic_write_all([(path, write_file), (sidecar_of(path), write_sidecar)])
    return Path(path)


def load_weights(model, weights, format: str | None = None) -> None:
    """Assign weights (canonical dict, or a file of any format) to ``model``; checked before assignment.

    A file's own graph must agree with the model's (WeightsError naming the node and attribute).
    """
    be = backend_of(model)
    graph = be.graph_of(model)
    if isinstance(weights, (str, os.PathLike)):
        weights = read(weights, format, arch=graph, dtype=dtype_of(be.get_weights(model))).weights
    be.set_weights(model, W.check_weights(graph, weights))
