"""Zoo import / export, the import probe, checkpoint files and source detection.

Every framework step goes through the backend object of the zoo's framework
(``lightnets.frameworks.load_backend(entry.framework)``: ``state_dict``, ``load_state_dict``,
``forward``, ``cast``, ``bn_eps``, ``in_model_preprocessing``, ``classifier_activation``,
``read_state_dict``, ``load_file``); this module imports no framework and never asks which one it has.

The probe (:func:`probe`) runs the zoo model itself, cast to float64, and the float64 reference
executor of the imported graph on a fixed random batch: in float64 both sides compute the same
function up to summation order, so the probe judges the mapping, not float32 rounding (a zoo model
with BN variances ~1e-3 amplifies float32 noise to ~1e-3 relative, more than a float32 bound could
tell from a wrong mapping). Only a model that cannot compute in float64 is probed in float32, against
a bound derived from the float32 noise of the same graph in the same framework.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts, formats, provenance, reference
from .. import layouts as L
from .. import weights as W
from ..errors import LightnetsError, WeightsError
from ..frameworks import load_backend
from ..graph import Graph
from ..numerics import rel_error, softmax
from .entries import FRAMEWORKS, ZOO, ZooEntry, entry
from .matcher import classifier_param, in_channels, match, zoo_graph
from .matcher import template as _template

# --- THE probe tolerances (relative to max |output|) -------------------------------------------------
# float64 zoo model vs the float64 reference: summation order only. Measured over every torchvision, timm
# and keras.applications entry (64 px; keras 96/99 px) <= 2.3e-14 with random weights and randomised BN
# statistics, and <= 1.9e-11 with BN statistics calibrated on 0.05*randn images (running variances ~1e-3;
# timm mobilenetv3_large_100 at 1000 classes). A planted mapping error (two same-shape conv weights
# swapped) measured 9.8e-5 (torchvision shufflenet_v2_x0_5), 3.2e-5 (paddle mobilenet_v2_x0_5): under the
# old float32 bound of 1e-4, four orders of magnitude over this one.
PROBE_FLOAT64 = 1e-9
# float32 (a model that cannot compute in float64) and float64 of zoos whose float64 kernels are not
# exact (ZooEntry.float64_exact=False: paddle.vision) are bounded by the float32 noise of the same graph
# in the same framework (the lightnets model in float32 vs the reference) times a factor:
# - float32: the zoo model's float32 error / that noise, measured 0.25..2.3 over every entry (torch
#   entries 1.00: same kernels), random and calibrated BN -> factor 10;
# - inexact float64: paddle.vision float64 error / that noise, measured <= 0.055 (calibrated BN: 1.2e-5
#   vs 8.8e-4 on mobilenet_v3_small_x0_75) -> factor 1.
# Neither bound goes below FLOAT32_FLOOR (or PROBE_FLOAT64).
FLOAT32_NOISE_FACTOR = 10.0
INEXACT_FLOAT64_FACTOR = 1.0
FLOAT32_FLOOR = 1e-6
PROBE_SIZE = 64
PROBE_SEED = 0


def _backend(e: ZooEntry):
    return load_backend(e.framework)


def _optional(be, key: str) -> bool:
    return key.endswith(tuple(getattr(be, "OPTIONAL_KEYS", ())))


# --- state dicts ---------------------------------------------------------------------------------
def _state_dict_of(be, source, zoo: str, name: str) -> tuple[dict[str, np.ndarray], Any]:
    """(numpy state dict, the model or None) of a zoo model object or a state dict."""
    if isinstance(source, Mapping):
        return {str(k): be.to_numpy(v) for k, v in source.items()}, None
    try:
        return be.state_dict(source), source
    except LightnetsError as ex:
        raise WeightsError(f"source must be a {zoo} {name} model or its state dict, got "
                           f"{type(source).__name__} ({ex})") from None


def keras_state_dict(model) -> dict[str, np.ndarray]:
    """``{f"{layer.name}.{leaf}": array}`` of a keras model, in ``model.layers`` order."""
    return load_backend("keras").state_dict(model)


def _num_classes(template: Mapping[str, tuple], shapes: Mapping[str, tuple], classes: int = 1000) -> int | None:
    """The class count of ``shapes``, given ``template`` (the same model at ``classes`` classes).

    Keys both hold may differ only in dims where the template has ``classes``, and those dims must
    agree: their value is the count. None if the shapes differ otherwise (another model)."""
    found = set()
    for k, t in template.items():
        if k not in shapes:
            continue
        s = tuple(shapes[k])
        if len(s) != len(t):
            return None
        for a, b in zip(t, s, strict=True):
            if a != b:
                if a != classes:
                    return None
                found.add(int(b))
    if len(found) > 1:
        return None
    return found.pop() if found else classes


def _fit(zoo: str, name: str, shapes: Mapping[str, tuple], fmt: str | None = None) -> int | None:
    """The class count if ``shapes`` are exactly a ``(zoo, name)`` model's (``fmt``: as read from a
    file of that native format), else None."""
    be = _backend(entry(zoo, name))
    t1000, _ = _template(zoo, name, 1000, fmt)
    keys = {k for k in t1000 if not _optional(be, k)}
    if keys - set(shapes) or set(shapes) - set(t1000):
        return None
    nc = _num_classes(t1000, shapes)
    if nc is None or nc < 1:
        return None
    t, _ = _template(zoo, name, nc, fmt)
    return nc if all(tuple(shapes[k]) == t[k] for k in shapes) else None


def _check_fit(be, zoo: str, name: str, sd: Mapping[str, np.ndarray]) -> int:
    """The class count of a state dict of a ``(zoo, name)`` model; WeightsError naming every missing,
    unexpected and mis-shaped key otherwise."""
    shapes = {k: tuple(np.shape(v)) for k, v in sd.items()}
    t1000, _ = _template(zoo, name, 1000)
    nc = _num_classes(t1000, shapes) or 1000
    want, _ = _template(zoo, name, nc)
    be.check_state_dict(want, sd, f"{zoo} {name} model")
    return nc


# --- the probe -----------------------------------------------------------------------------------
def _float64_copy(be, model):
    """(the model in float64, None) or (None, why it cannot compute in float64)."""
    try:
        return be.cast(model, "float64"), None
    except (LightnetsError, NotImplementedError, TypeError, ValueError, RuntimeError) as ex:
        return None, f"cast to float64 failed ({type(ex).__name__}: {str(ex)[:200]})"


def _run(be, model, x: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.asarray(be.forward(model, x))
    except LightnetsError:
        raise
    except Exception as ex:  # noqa: BLE001 -- the zoo model refused the probe batch
        raise WeightsError(f"{what}: the zoo model failed on a probe batch of shape {x.shape} "
                           f"({type(ex).__name__}: {str(ex)[:300]}); models built for one input size need "
                           "input_size= (and probe_size=) equal to that size") from None


def _float32_noise(be, graph: Graph, canonical, x: np.ndarray, want: np.ndarray, head) -> float:
    """The float32 noise of ``graph`` in ``be``'s framework: the lightnets model in float32 vs the reference."""
    model = be.build(graph, "float32")
    be.set_weights(model, canonical)
    return rel_error(head(np.asarray(be.run(model, x.astype(np.float32)), np.float64)), want)


def probe(e: ZooEntry, model, graph: Graph, canonical: Mapping[str, np.ndarray], size: int = PROBE_SIZE,
          seed: int = PROBE_SEED, what: str = "zoo model") -> dict:
    """Run the zoo ``model`` and the float64 reference of ``graph`` with ``canonical`` on one fixed
    random ``(1, 3, size, size)`` batch; WeightsError unless they agree (see the module doc).

    The model's in-model rescaling is undone on its input and a softmax head is compared as
    probabilities. Returns ``{"dtype", "rel_error", "tolerance", "shape", "float32_rel_error", "notes"}``.
    """
    be = _backend(e)
    x = np.random.default_rng(seed).standard_normal((1, 3, size, size))
    want = reference.run(graph, canonical, x)
    act = be.classifier_activation(model)
    if act not in ("linear", "softmax"):
        raise WeightsError(f"{what}: the model's classifier activation is {act!r}; build it with logits "
                           "(classifier_activation=None) or softmax")

    def head(y):
        return softmax(y) if act == "softmax" else y
    want = head(want)
    feed = undo_in_model(be.in_model_preprocessing(model), x)  # raw pixels that the model's rescaling maps onto x
    got32 = _run(be, model, feed.astype(np.float32), what)
    if got32.shape != want.shape:
        raise WeightsError(f"{what}: zoo output shape {got32.shape} != the imported graph's {want.shape}; "
                           "the arch id or the class count is wrong")
    err32 = rel_error(got32, want)
    notes = []
    m64, why = _float64_copy(be, model)
    if m64 is not None:
        got64 = _run(be, m64, feed, what)
        if got64.dtype == np.float64:
            dtype, err, tol = "float64", rel_error(got64, want), PROBE_FLOAT64
        else:
            why = f"the float64 copy computes in {got64.dtype}"
    if why or not e.float64_exact:
        noise = _float32_noise(be, graph, canonical, x, want, head)
        if why:
            dtype, err, tol = "float32", err32, max(FLOAT32_NOISE_FACTOR * noise, FLOAT32_FLOOR)
            notes.append(f"probe in float32: {why}; bound {FLOAT32_NOISE_FACTOR:g} x the graph's float32 noise "
                         f"{noise:.1e} in {be.name}")
        else:
            tol = max(INEXACT_FLOAT64_FACTOR * noise, PROBE_FLOAT64)
            notes.append(f"the zoo's float64 kernels are not exact (float32 constants): bound "
                         f"{INEXACT_FLOAT64_FACTOR:g} x the graph's float32 noise {noise:.1e} in {be.name}")
    if not err <= tol:
        raise WeightsError(f"{what}: probe output of the imported weights differs from the zoo model by "
                           f"{err:.2e} relative in {dtype} (> {tol:.1e}); the mapping or the arch id is wrong")
    return {"dtype": dtype, "rel_error": err, "tolerance": tol, "shape": [1, 3, size, size],
            "float32_rel_error": err32, "notes": notes}


# --- import / export -----------------------------------------------------------------------------
def _import(zoo: str, name: str, sd: dict, model, nc: int, input_size: int, probe_size: int, probe_seed: int,
            source: Mapping[str, Any], notes=(), fixed_size: bool = False) -> tuple[Graph, W.Weights, dict, Any]:
    e, be = entry(zoo, name), _backend(entry(zoo, name))
    shapes = {k: tuple(np.shape(v)) for k, v in sd.items()}
    nmap = match(zoo_graph(zoo, name, nc), shapes, e.framework, e.layouts)
    graph = zoo_graph(zoo, name, nc, input_size)
    if fixed_size:
        graph = graph.replace(meta={**graph.meta, "fixed_size": True})
    canonical = W.check_weights(graph, {c: np.ascontiguousarray(L.to_canonical(sd[k], layout))
                                        for c, (k, layout) in nmap.items()})
    size = input_size if e.fixed_input else probe_size
    if model is None:
        model = e.make(nc, size)
        be.load_state_dict(model, sd)
        if e.preprocessing.get("in_model_mean_std"):
            notes = [*notes, "a state dict holds no in-model Normalization state: the card's mean/std are the zoo "
                             "twin's (import the model or its file for its own)"]
    eps = {round(float(v), 12) for v in be.bn_eps(model)}
    if eps and eps != {round(e.bn_eps, 12)}:
        raise WeightsError(f"{zoo} {name}: the model's BatchNorm eps {sorted(eps)} differ from the importer's "
                           f"{e.bn_eps}; the imported graph would compute different outputs")
    result = probe(e, model, graph, canonical, size, probe_seed, f"{zoo} {name}")
    pre = be.in_model_preprocessing(model)
    act = be.classifier_activation(model)
    card_notes = [f"imported from {zoo} {name}; probe {result['dtype']} rel error {result['rel_error']:.1e} "
                  f"(<= {result['tolerance']:.0e}) vs the float64 reference, float32 "
                  f"{result['float32_rel_error']:.1e}", *result["notes"], *notes]
    if pre is not None:
        card_notes.append(f"the zoo model rescales its input inside the model ({in_model_note(pre)}: x * scale + "
                          "offset); the graph does not: apply it before the graph")
    if act != "linear":
        card_notes.append(f"the zoo model ends in {act}; the graph outputs logits")
    card = provenance.make_card(graph, source, preprocessing=preprocessing_of(e, pre), classifier_activation=act,
                                padding=e.padding, notes=card_notes)
    card["probe"] = provenance.plain({k: v for k, v in result.items() if k != "notes"})
    card["zoo"] = {"zoo": zoo, "name": name, "framework": e.framework, "default_classifier_activation":
                   e.classifier_activation, "model_rescaling": list(pre) if pre is not None else None}
    graph = provenance.with_card(graph, card)
    info = {**card, "name_map": nmap, "probe_rel_error": result["rel_error"]}
    return graph, canonical, info, model


def preprocessing_of(e: ZooEntry, pre) -> Mapping[str, Any]:
    """The card's preprocessing: the entry's, and for a zoo model that normalises per channel inside the model
    (keras.applications EfficientNet: ``e.preprocessing["in_model_mean_std"]``) the mean and std that the model's own
    layers hold, ``x * scale + offset = (x * e.preprocessing["scale"] - mean) / std`` (keras multiplies by that scale
    rounded to float32), to 7 digits; the exact composite is ``model_scale_offset``."""
    if pre is None or not e.preprocessing.get("in_model_mean_std"):
        return e.preprocessing
    scale, offset = (np.broadcast_to(np.asarray(v, np.float64), (3,)) for v in pre)
    std = float(np.float32(e.preprocessing["scale"])) / scale  # keras rescales by float32(1/255)
    return {**e.preprocessing, "mean": tuple(float(f"{v:.7g}") + 0.0 for v in -offset * std),
            "std": tuple(float(f"{v:.7g}") for v in std), "model_scale_offset": [list(scale), list(offset)]}


def _input_size(be, e: ZooEntry, model, input_size: int | None, what: str) -> tuple[int, bool, list[str]]:
    """``(size, fixed, notes)``: the size to import a zoo model at - the one it is built for (keras.applications
    states it; ``input_size``, if given, must equal it), else ``input_size`` (default 224) - and whether the graph
    must be fixed to that size (a size-free model of a zoo whose pads depend on the size)."""
    hw = be.input_hw(model) if model is not None else None
    if hw is not None:
        if hw[0] != hw[1]:
            raise WeightsError(f"{what}: the model is built for {hw[0]}x{hw[1]} inputs; lightnets graphs of zoo "
                               "models are square: rebuild it with a square input_shape")
        if input_size is not None and input_size != hw[0]:
            raise WeightsError(f"{what}: input_size={input_size}, but the model is built for {hw[0]}x{hw[1]} "
                               f"inputs; omit input_size (the model's own size is used) or rebuild the model at "
                               f"{input_size}x{input_size}")
        return hw[0], False, []
    if model is None or not e.fixed_input:
        return 224 if input_size is None else input_size, False, []
    if input_size is None:
        raise WeightsError(f"{what}: the model takes any input size (built with input_shape=None), and its pads "
                           "(keras.applications' correct_pad) match the graph's at one size only; pass input_size= "
                           "the size you run it at, or rebuild the model with input_shape=(n, n, 3)")
    return input_size, True, [f"the {what} model takes any input size, but its correct_pad pads (k//2-1, k//2) at "
                              f"every size; the graph is fixed to the {input_size}x{input_size} it was probed at"]


def import_zoo(zoo: str, name: str, source, input_size: int | None = None, probe_size: int = PROBE_SIZE,
               probe_seed: int = PROBE_SEED) -> tuple[Graph, W.Weights, dict]:
    """Import a zoo model (object or state dict) -> ``(graph, canonical_weights, info)``.

    The graph carries the zoo's BN eps/momentum and its provenance card in ``meta["provenance"]``;
    ``info`` is that card (source, preprocessing, padding, BN conventions, probe result under
    ``"probe"``, zoo details under ``"zoo"``) plus the explicit ``"name_map"`` and ``"probe_rel_error"``.
    Every key and shape is checked; then the zoo model (the given one, or a fresh one loaded strictly
    with the given state dict) and the float64 reference run on a probe batch (:func:`probe`).
    ``input_size`` (default 224): the graph's build size. A model built for one input size (keras.applications
    with ``input_shape``) is imported and probed at its own size; one that takes any size but whose pads depend
    on it (a keras.applications model with ``input_shape=None``) needs ``input_size`` and gives a graph fixed to it.
    """
    if isinstance(source, (str, os.PathLike)) and formats.FORMATS[formats.format_of(source)].imports:
        return _import_artifact(zoo, name, Path(source), 224 if input_size is None else input_size)
    e = entry(zoo, name)
    be = _backend(e)
    sd, model = _state_dict_of(be, source, zoo, name)
    name = _reparameterized(zoo, name, sd)
    nc = _check_fit(be, zoo, name, sd)
    size, fixed, notes = _input_size(be, e, model, input_size, f"{zoo} {name}")
    graph, canonical, info, _ = _import(zoo, name, sd, model, nc, size, probe_size, probe_seed,
                                        {"kind": "zoo", "zoo": zoo, "name": name}, notes, fixed)
    return graph, canonical, info


def _reparameterized(zoo: str, name: str, sd: Mapping[str, np.ndarray]) -> str:
    """``<name>_reparam`` when ``sd`` is not a ``name`` model's but that entry's (a timm twin after
    ``reparameterize_model``), else ``name``: either form of a reparameterisable twin imports under its name."""
    if (zoo, f"{name}_reparam") not in ZOO:
        return name
    shapes = {k: tuple(np.shape(v)) for k, v in sd.items()}
    if _fit(zoo, name, shapes) is None and _fit(zoo, f"{name}_reparam", shapes) is not None:
        return f"{name}_reparam"
    return name


def _import_artifact(zoo: str, name: str, path: Path, input_size: int) -> tuple[Graph, W.Weights, dict]:
    """A zoo model's .onnx/.tflite export: its weight ops onto the zoo's graph (the zoo's BN eps; see
    :mod:`lightnets.artifacts`), probed against the file's own runtime."""
    e = entry(zoo, name)
    runtime = load_backend(formats.FORMATS[formats.format_of(path)].backend)
    art = runtime.read_artifact(path)
    size = art.input_hw[0] if art.input_hw else input_size
    graph = zoo_graph(zoo, name, artifacts.classes_of(art) or 1000, size)
    source = {"kind": "zoo", "zoo": zoo, "name": name, "file": str(path), "sha256": provenance.sha256_file(path),
              "format": art.format}
    imp = artifacts.import_artifact(art, runtime, graph, source=source, preprocessing=e.preprocessing)
    info = {**provenance.card_of(imp.graph), "probe": provenance.plain(imp.probe),
            "probe_rel_error": imp.probe["rel_error"]}
    return imp.graph, imp.weights, info


def export_zoo(zoo: str, name: str, canonical: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical weights -> the zoo model's native state dict (numpy arrays, native keys, layouts and dtypes).

    Holds every key of the zoo model's state dict (torch ``num_batches_tracked`` = 0), so it loads
    strictly with :func:`load_native` (the backend's ``load_state_dict``).
    """
    e = entry(zoo, name)
    fc = classifier_param(zoo, name)
    if fc not in canonical:
        raise WeightsError(f"canonical weights lack the classifier weight {fc!r}; they are not {e.arch} weights")
    num_classes = int(np.asarray(canonical[fc]).shape[0])
    graph = zoo_graph(zoo, name, num_classes)
    w = W.check_weights(graph, canonical)
    shapes, dtypes = _template(zoo, name, num_classes)
    nmap = match(graph, shapes, e.framework, e.layouts)
    out: dict[str, np.ndarray] = {}
    for cname, (zkey, layout) in nmap.items():
        v = L.to_native(w[cname], layout, in_channels(graph, cname))
        out[zkey] = np.ascontiguousarray(v.astype(dtypes[zkey]))
    return {k: out[k] if k in out else np.zeros(shapes[k], dtype=dtypes[k]) for k in shapes}


def load_native(model, native: Mapping[str, Any], zoo: str) -> None:
    """Load an :func:`export_zoo` result into a zoo model of ``zoo``, strictly."""
    if zoo not in FRAMEWORKS:
        raise LightnetsError(f"unknown zoo {zoo!r}; zoos are {', '.join(FRAMEWORKS)}")
    load_backend(FRAMEWORKS[zoo]).load_state_dict(model, native)


def zoo_forward(zoo: str, model, x: np.ndarray) -> np.ndarray:
    """Eval output of a zoo model on the NCHW batch ``x`` as the imported graph sees it: a rescaling
    inside the model is undone on the input (so the model sees ``x``)."""
    be = load_backend(FRAMEWORKS[zoo])
    pre = be.in_model_preprocessing(model)
    x = np.asarray(x)
    return np.asarray(be.forward(model, undo_in_model(pre, x).astype(x.dtype)))


def undo_in_model(pre, x: np.ndarray) -> np.ndarray:
    """The input that a model's in-model preprocessing ``pre`` (the backend's ``(scale, offset)``: floats, or
    per-channel sequences) maps onto the NCHW batch ``x``: ``(x - offset) / scale``."""
    if pre is None:
        return x
    scale, offset = (np.asarray(v, np.float64).reshape(1, -1, 1, 1) if np.ndim(v) else float(v) for v in pre)
    return (x - offset) / scale


def in_model_note(pre) -> str:
    """The card's words for a model's in-model preprocessing ``(scale, offset)``."""
    def fmt(v):
        return f"{v:.9g}" if not np.ndim(v) else "(" + ", ".join(f"{c:.9g}" for c in v) + ") per channel"
    return f"scale {fmt(pre[0])}, offset {fmt(pre[1])}"


# --- checkpoint files and detection --------------------------------------------------------------
def _format_of(be, path: Path, fmt: str | None) -> str:
    if fmt is not None:
        return be.check_format(fmt)
    by_suffix = sorted(((s, f) for f, s in be.FORMATS.items() if path.name.endswith(s)), key=lambda t: -len(t[0]))
    return by_suffix[0][1] if by_suffix else next(iter(be.FORMATS))


def detect(state_dict_shapes: Mapping[str, Any], framework: str, arch: str | None = None,
           fmt: str | None = None) -> list[tuple[str, str]]:
    """The ``(zoo, name)`` entries of ``framework`` (and of the lightnets id ``arch``) whose template
    keys and shapes equal ``state_dict_shapes`` (``{key: shape or array}``) at some class count.

    ``fmt``: the native format the keys were read from, for formats whose keys are not the state
    dict's (keras ``.weights.h5`` stores variables by layer class and position); state-dict keys are
    tried first. Builds (and caches) a template model of every candidate entry.
    """
    shapes = {str(k): tuple(np.shape(v)) if not isinstance(v, tuple) else v for k, v in state_dict_shapes.items()}
    candidates = [k for k, e in ZOO.items() if e.framework == framework and (arch is None or e.arch == arch)]
    found = [k for k in candidates if _fit(*k, shapes) is not None]
    if not found and fmt is not None:
        found = [k for k in candidates if _fit(*k, shapes, fmt) is not None]
    return found


def detect_file(path, framework: str, fmt: str | None = None, arch: str | None = None) -> list[tuple[str, str]]:
    """:func:`detect` on a native file of ``framework`` (``fmt`` by suffix as in :func:`read_checkpoint`):
    the zoo entries whose models wrote such a file; pass one as ``from_format="<zoo>:<name>"``."""
    be = load_backend(framework)
    path = Path(path)
    fmt = _format_of(be, path, fmt)
    return detect(be.read_state_dict(path, fmt), framework, arch=arch, fmt=fmt)


def read_checkpoint(path, zoo: str, name: str, input_size: int = 224, *, fmt: str | None = None,
                    state_dict: Mapping[str, Any] | None = None, probe_size: int = PROBE_SIZE):
    """A zoo checkpoint file -> ``(source_model, graph, canonical, card)``.

    ``fmt``: a native format of the zoo's framework (default: by the file's suffix among the backend's
    ``FORMATS``, else its first). ``state_dict``: the file's contents if the caller read them already.
    The file's keys must be the zoo model's (its state dict, or what that format stores, e.g. a keras
    ``.weights.h5`` written by a keras.applications model). ``source_model`` is a fresh zoo model of
    the file's class count holding its weights (float32, logits): it computes what ``graph``
    computes on what its in-model preprocessing maps onto ``x`` (keras.applications EfficientNet
    keeps its Rescaling + Normalization; ``zoo_forward`` / :func:`undo_in_model`), the port
    probe's source side. ``card`` (also in ``graph.meta["provenance"]``) has source kind "file" with the zoo.
    """
    e = entry(zoo, name)
    be = _backend(e)
    path = Path(path)
    fmt = _format_of(be, path, fmt)
    raw = dict(state_dict) if state_dict is not None else be.read_state_dict(path, fmt)
    raw = {str(k): be.to_numpy(v) for k, v in raw.items()}
    shapes = {k: tuple(np.shape(v)) for k, v in raw.items()}
    size = input_size if e.fixed_input else probe_size
    # the file holds the zoo model's state dict; a model normalising inside with state of its own (keras.applications
    # EfficientNet's Normalization, not in the state dict) is loaded from the file, which holds that state
    if _fit(zoo, name, shapes) is not None and not e.preprocessing.get("in_model_mean_std"):
        sd, model = raw, None
        nc = _check_fit(be, zoo, name, sd)
    else:
        nc = _fit(zoo, name, shapes, fmt)
        if nc is None:  # neither: name every key problem against the state dict
            _check_fit(be, zoo, name, raw)
            raise WeightsError(f"{path} does not hold a {zoo} {name} model")
        model = e.make(nc, size)
        be.load_file(model, path, fmt)
        sd = be.state_dict(model)
    source = {"kind": "file", "path": str(path), "sha256": provenance.sha256_file(path), "format": fmt,
              "zoo": zoo, "name": name}
    graph, canonical, card, model = _import(zoo, name, sd, model, nc, input_size, probe_size, PROBE_SEED, source,
                                            [f"read from the {fmt} file {path.name}"])
    card.pop("name_map")
    card.pop("probe_rel_error")
    return model, graph, canonical, card
