"""Which id a foreign file is, and the probe: the file's own runtime against the float64 reference of the imported
graph, bounded by the same graph's float32 noise there (quantized files: top-1 agreement, a loose relative bound or,
for backbones, correlation); :func:`import_artifact` returns the graph, canonical weights and provenance card."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .. import features as FT
from .. import provenance as PV
from .. import reference, registry
from .. import weights as W
from ..errors import FileFormatError, LightnetsError, WeightsError, runtime_failure
from ..frameworks import load_backend
from ..graph import Graph
from ..layouts import to_nchw, to_nhwc
from ..numerics import rel_error, softmax
from .artifact import Artifact
from .matching import Match, Unit, file_units, graph_units, match

FLOAT32_NOISE_FACTOR = 10.0  # file runtime vs float64 reference, over the same graph's float32 noise there
FLOAT32_FLOOR = 1e-6
PROBE_SEED = 0
PROBE_BATCH = 4
# quantized files: top-1 of the file vs the float64 reference of the dequantized weights on 16 inputs. Measured:
# 64 of 64 agree for int8 TFLite files of keras.applications MobileNet/V2/V3Small/V3Large (BN statistics drawn,
# rel error 0.9-4.3 %), but random-init lightnets nets agree on ~50 % (parity/tolerances.py INT8_TOP1_FLOOR: int8
# rounding grows with depth, 1000 random logits have small margins); a net that is not the file's agrees on
# ~1/classes. Random keras nets are the other way round: logits nearly input-independent, so top-1 is a coin
# toss, while the rel error stays small. A file passes on either: 4 of 16 top-1 agree, or rel error <= 15 %;
# a wrong mapping fails both (top-1 ~1/classes, rel error O(1)).
PROBE_BATCH_QUANTIZED = 16
QUANTIZED_TOP1 = 0.25
QUANTIZED_REL = 0.15
# quantized backbones (several outputs, no classes): the lowest per-image correlation of any feature map with the
# reference, on N(0, 1) inputs clipped to the input range. Measured, int8 ghostnet_050 backbone exported by lightnets
# (64 px): >= 0.957 mapped right (rel error up to 0.22: int8 noise of a random net), <= 0.18 with two same-shape
# depthwise kernels swapped (uniform inputs over the whole range saturate: 0.37 mapped right, so not those)
QUANTIZED_CORR = 0.8


def _correlation(y: np.ndarray, ref: np.ndarray) -> float:
    """The lowest Pearson correlation over the batch of ``y`` with ``ref`` (per image, flattened)."""
    a = y.reshape(len(y), -1) - y.reshape(len(y), -1).mean(1, keepdims=True)
    b = ref.reshape(len(ref), -1) - ref.reshape(len(ref), -1).mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return float(np.min(np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), 1.0)))


class Imported(NamedTuple):
    graph: Graph  # the id's graph (BN eps of a BN-carrying file), provenance card in meta
    weights: dict[str, np.ndarray]
    notes: tuple[str, ...]
    probe: dict


def _has_top(fu: list[Unit]) -> bool:
    last = fu[-1] if fu else None
    return last is not None and last.bn is None and (
        last.kind == "linear" or last.main.tensors["weight"].shape[2:] == (1, 1))


def classes_of(art: Artifact) -> int | None:
    """The file's class count (its last weight op, a linear or a 1x1 conv without BN), None without a head."""
    fu = file_units(art)
    return int(fu[-1].main.tensors["weight"].shape[0]) if _has_top(fu) else None


def _size(art: Artifact, input_size: int | None) -> tuple[int, int]:
    if art.input_hw is None:
        return (input_size or 224,) * 2
    if input_size is not None and (input_size, input_size) != tuple(art.input_hw):
        raise WeightsError(f"{art.path} is fixed to {art.input_hw[0]}x{art.input_hw[1]} inputs, not input_size="
                           f"{input_size}; drop input_size (or re-export the file with dynamic height/width)")
    return tuple(art.input_hw)


def fitting(art: Artifact, arch: str | Graph | None = None, num_classes: int | None = None,
            input_size: int | None = None) -> tuple[list[tuple[str, Match]], tuple[int, int], Match | None]:
    """The ids (``arch`` alone if given) whose graph the file's weights fit, the input size used, and the
    closest misfit (for the error message)."""
    fu = file_units(art)
    if not fu:
        raise FileFormatError(f"{art.path} holds no conv or linear weights; it is not one of the light CNNs")
    if input_size is None and isinstance(arch, Graph) and arch.input_shape[1] == arch.input_shape[2]:
        input_size = arch.input_shape[1]  # a recorded graph: a dynamic-size file at the graph's own size
    hw = _size(art, input_size)
    top = _has_top(fu)
    n = num_classes or classes_of(art) or 1000
    if isinstance(arch, Graph):  # a file's recorded graph (a lightnets export's sidecar)
        graphs = {arch.name: lambda: arch.replace(input_shape=(arch.input_shape[0], *hw))}
    elif art.outputs > 1:  # a backbone file (one output per feature map): the ids' feature graphs
        graphs = {mid: functools.partial(_feature_spec, mid, hw[0])
                  for mid in ([arch] if arch is not None else registry.list_models())}
    else:
        graphs = {mid: functools.partial(registry.get_spec, mid, num_classes=n, input_size=hw[0], include_top=top)
                  for mid in ([arch] if arch is not None else registry.list_models())}
    fits, closest = [], None
    for mid, make in graphs.items():
        try:
            graph = make()
        except LightnetsError:
            if arch is not None:
                raise
            continue  # an id without feature maps (a family that marks none) cannot be a backbone file's
        if arch is None:
            try:
                if len(graph_units(graph)) != len(fu):
                    continue
            except WeightsError:  # an id whose graph no file maps onto (a batch norm after a split conv)
                continue
        m = match(graph, art, hw)
        if m.problem is None:
            fits.append((mid, m))
        elif closest is None or m.matched > closest[1].matched:
            closest = (mid, m)
    return fits, hw, closest


def _feature_spec(mid: str, size: int) -> Graph:
    """The backbone graph of id ``mid`` (default feature maps), as ``lightnets.build(mid, features=True)``."""
    return FT.feature_graph(registry.get_spec(mid, input_size=size), None)


def _paired(got: list[np.ndarray], want: list[np.ndarray], path: str, mid: str) -> list[np.ndarray]:
    """The file's outputs in the order of the graph's (the same shapes in order, else each graph output takes the
    first unused file output of its shape); WeightsError when the outputs do not correspond."""
    shapes = [tuple(v.shape) for v in want]
    if [tuple(v.shape) for v in got] == shapes:
        return got
    left, out = list(range(len(got))), []
    for w in shapes:
        k = next((i for i in left if tuple(got[i].shape) == w), None) if len(got) == len(want) else None
        if k is None:
            raise WeightsError(f"{path}: the file's output shapes {[tuple(v.shape) for v in got]} != the {mid} "
                               f"graph's {shapes} (NCHW); is it a file of that net (features=True for a backbone)?")
        left.remove(k)
        out.append(got[k])
    return out


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return to_nhwc(x) if layout == "NHWC" else np.ascontiguousarray(x)


def _from_layout(y: np.ndarray, layout: str) -> np.ndarray:
    y = np.asarray(y, np.float64)
    return to_nchw(y) if layout == "NHWC" else y


def import_artifact(art: Artifact, runtime, arch: str | Graph | None = None, num_classes: int | None = None,
                    input_size: int | None = None, source: dict | None = None,
                    preprocessing: dict | None = None) -> Imported:
    """Import a foreign file read by a backend: the id it fits, canonical weights, probe (see the module doc).

    ``runtime`` is the backend of the file's runtime (for the float32 noise bound); ``source`` and
    ``preprocessing`` go to the provenance card (default: the file and its sha256; the in-model rescaling)."""
    fits, hw, closest = fitting(art, arch, num_classes, input_size)
    if not fits:
        where = f"{closest[0]}: {closest[1].problem}" if closest else "no id has as many weight ops"
        asked = f" {arch.name if isinstance(arch, Graph) else arch!r}" if arch is not None else ""
        raise WeightsError(f"{art.path} fits no lightnets id{asked} ({where}); "
                           + ("is it a file of that architecture?" if arch else "pass arch= to see why an id misfits"))
    rng = np.random.default_rng(PROBE_SEED)
    shape = (PROBE_BATCH_QUANTIZED if art.quantized else PROBE_BATCH, art.layers[0].tensors["weight"].shape[1], *hw)
    if art.input_range is not None and art.outputs > 1:  # a quantized backbone: inputs like its calibration's
        feed = np.clip(rng.standard_normal(shape), *art.input_range)
        x = feed if art.rescaling is None else feed * art.rescaling[0] + art.rescaling[1]
    elif art.input_range is not None:  # a quantized input clips outside its range: probe inside it
        feed = rng.uniform(*art.input_range, shape)
        x = feed if art.rescaling is None else feed * art.rescaling[0] + art.rescaling[1]
    else:
        x = rng.standard_normal(shape)
        feed = x if art.rescaling is None else (x - art.rescaling[1]) / art.rescaling[0]
    fed = _to_layout(feed, art.input_layout).astype(np.float32)
    try:
        raw = art.run(fed)
    except LightnetsError:
        raise
    except Exception as e:  # noqa: BLE001 -- the runtimes raise their own exception types
        raise runtime_failure(art.path, runtime.name, "input", fed.shape, e,
                              f"the import probe fed {len(fed)} random {art.input_layout} images of the file's input "
                              "size; check the file runs in its runtime on such a batch, or pass input_size= for a "
                              "file with dynamic height/width") from None
    raw = raw if isinstance(raw, list) else [raw]
    raw = [_from_layout(y, art.input_layout) for y in raw]

    def outputs(y) -> list[np.ndarray]:
        if isinstance(y, list):
            return [np.asarray(v, np.float64) for v in y]
        return [softmax(y) if art.output_activation == "softmax" else np.asarray(y, np.float64)]

    errors = {}
    for mid, m in fits:
        want = outputs(reference.run(m.graph, m.weights, x))
        got_m = _paired(raw, want, art.path, mid)
        errors[mid] = (max(rel_error(g, w) for g, w in zip(got_m, want, strict=True)), want, got_m)
    best = min(errors, key=lambda k: errors[k][0])
    ties = [k for k in errors if errors[k][0] <= 10 * errors[best][0] + 1e-12 and k != best]
    if ties:
        raise WeightsError(f"{art.path} fits several ids that compute the same here: {', '.join([best, *ties])}; "
                           "pass arch= (CLI --arch)")
    m = dict(fits)[best]
    err, want, got = errors[best]
    probe = {"rel_error": err, "runtime": runtime.name, "shape": tuple(x.shape), "file_batch": art.batch}
    found = " found from the file" if arch is None else ""
    notes = [f"imported from {art.format} file {art.path} (id {best!r}{found})"]
    if art.batch is not None:
        notes.append(f"the file's batch is fixed to {art.batch}: lightnets runs it {art.batch} image(s) at a time "
                     f"(the import probe: {len(x)} images in {-(-len(x) // art.batch)} runs); the imported model "
                     "takes any batch")
    if len(got) > 1:
        notes.append(f"{len(got)} outputs (feature maps), each probed against the float64 reference")
    if art.quantized and len(got) > 1:  # a quantized backbone: no classes to agree on; each map's correlation
        corr = min(_correlation(g, w) for g, w in zip(got, want, strict=True))
        probe.update(tolerance=None, min_correlation=corr)
        notes.append(f"{art.quantized}; the probe compares each feature map by its correlation with the float64 "
                     f"reference (lowest {corr:.3f} on {len(x)} N(0, 1) inputs clipped to the input range, rel error "
                     f"{err:.1e}), a coarse check")
        ok = corr >= QUANTIZED_CORR or err <= QUANTIZED_REL
    elif art.quantized:
        got, want = got[0], want[0]
        if np.any(np.ptp(got.reshape(len(got), -1), -1) == 0):
            raise WeightsError(f"{art.path}: the quantized file gives one value for every class on random inputs "
                               f"(its {art.output_activation} output quantized flat), so its top-1 cannot be checked; "
                               "import the float file, or a quantized file with a linear (logits) head")
        agree = float(np.mean(np.argmax(got, -1) == np.argmax(want, -1)))
        probe.update(top1_agreement=agree, tolerance=None)
        notes.append(f"{art.quantized}; the probe compares top-1 (agreement {agree:.0%} on {len(x)} random inputs, "
                     f"rel error {err:.1e}), a coarse check: a mapping error smaller than the quantization noise "
                     "passes it")
        ok = agree >= QUANTIZED_TOP1 or err <= QUANTIZED_REL
    else:
        ours = outputs(runtime.float32_output(m.graph, m.weights, x))
        noise = max(rel_error(o, w) for o, w in zip(ours, want, strict=True))
        tol = max(FLOAT32_NOISE_FACTOR * noise, FLOAT32_FLOOR)
        probe.update(tolerance=tol, float32_noise=noise)
        ok = err <= tol
    if not ok:
        bound_q = (f"each map's correlation {QUANTIZED_CORR}" if art.outputs > 1 else  # (got: one array by now)
                   f"top-1 agreement {QUANTIZED_TOP1:.0%}, measured {probe.get('top1_agreement', 0):.0%},") + \
            f" or {QUANTIZED_REL:.0%} relative"
        raise WeightsError(f"{art.path}: the file's {runtime.name} output differs from the float64 reference of "
                           f"{best!r} with its weights by {err:.2e} relative (bound {probe['tolerance'] or bound_q}); "
                           "the file is not that net - not returning a wrong model")
    if m.folded:
        notes.append(f"{m.folded} batch norms were folded into their convs in the file: imported as identity batch "
                     "norms carrying the conv bias (gamma 1, mean 0, var 1 - eps)")
    nc = PV.num_classes_of(m.graph)
    if nc == 1001:
        notes.append("1001 classes: index 0 is the background class of TF-slim checkpoints (ImageNet class i is "
                     "index i + 1)")
    notes += list(art.notes)
    pre = None if art.rescaling is None else {"in_model_rescaling": {"scale": art.rescaling[0],
                                                                     "offset": art.rescaling[1]}}
    pre = preprocessing if preprocessing is not None else pre
    if art.rescaling is not None:
        notes.append(f"the file rescales its input inside (x * {art.rescaling[0]:g} + {art.rescaling[1]:g}); the "
                     "lightnets model takes the rescaled input")
    src = source or {"kind": "file", "path": str(art.path), "sha256": PV.sha256_file(art.path), "format": art.format}
    card = PV.make_card(m.graph, src, preprocessing=pre, classifier_activation=art.output_activation, notes=notes)
    dtype = np.float64 if any(v.dtype == np.float64 for v in m.weights.values()) else np.float32
    weights = W.check_weights(m.graph, {k: np.array(v, dtype) for k, v in m.weights.items()})  # writable copies
    return Imported(PV.with_card(m.graph, card), weights, tuple(notes), probe)


def read(path, fmt: str, runtime: str, arch: str | Graph | None = None, num_classes: int | None = None,
         input_size: int | None = None, source: dict | None = None) -> Imported:
    """Read and import a foreign ``fmt`` file with the backend ``runtime`` (see :func:`import_artifact`)."""
    be = load_backend(runtime)
    return import_artifact(be.read_artifact(path), be, arch, num_classes, input_size, source)
