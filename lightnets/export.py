"""Export a lightnets model to a deployment format: ONNX (written from the graph IR itself) or TFLite.

``lightnets.export(source, to="onnx", path="m.onnx")`` takes

- a lightnets model of any backend (its graph and canonical weights: ``backend_of(model)``),
- a weights file of any format (read with its own graph, as ``lightnets.build(file)`` does),
- a ``(graph, weights)`` pair, or
- a model id (its deterministic initial weights, ``seed``),

and writes one ``.onnx`` file atomically (refusing an existing file unless ``overwrite=True``). The ONNX
graph is emitted node by node from the IR (``lightnets.backends.onnx_export``; nothing is traced), its
initializers named after the canonical weights, and the file carries the graph JSON and provenance card
(graph ``doc_string`` and ``metadata_props``). The export is checked before it is written:
``onnx.checker.check_model(full_check=True)`` and, when onnxruntime is installed, one probe image run
against the float64 numpy reference (``PROBE_REL``). A backbone (``build(id, features=True)``) exports with
one output per feature map, named after its node; the probe compares every map (:func:`outputs_rel_error`),
and an int8 TFLite backbone reports its largest feature-map error instead of a top-1 agreement.

``to="tflite"`` goes through the keras backend: the keras model of the graph is converted by
``tf.lite.TFLiteConverter.from_keras_model`` (``lightnets.backends.tflite``), float32, input NHWC with a
dynamic batch, height and width (``dynamic_hw=False``: fixed to the build size). ``quantize="int8"`` is
post-training full-integer quantization: int8 weights and activations, every op an int8 TFLite builtin, and
float32 input/output (the interpreter quantizes the image and dequantizes the logits, so the file takes the
same input as the float one). Its representative dataset is ``calibration`` (NCHW images, preprocessed as the
model expects) or, by default, ``CALIBRATION_IMAGES`` N(0, 1) images drawn like the parity inputs
(``numpy.random.default_rng(CALIBRATION_SEED)``). The check is then the top-1 agreement with the float64
reference on ``AGREEMENT_IMAGES`` other seeded images (no error bound: int8 logits are not float logits), written
into the card's notes. The flat buffer has no field the TFLite converter fills with the graph and the
provenance card, so they go in the ``<file>.lightnets.json`` sidecar that ``lightnets.formats`` writes beside
native files (``lightnets info model.tflite`` reads it); the file and the sidecar are written atomically
together.

``to="onnx", quantize="int8"`` writes a QDQ int8 ONNX file: the float ONNX export, batch norms folded, quantized by
``onnxruntime.quantization.quantize_static`` (QuantFormat.QDQ, per-channel symmetric int8 weights, per-tensor int8
activations; ``lightnets.backends.onnx_int8``) on the SAME calibration images as the TFLite int8 export of the same
source and ``calibration`` (:func:`calibration_images`), static height/width, dynamic batch. The check is the top-1
agreement as for TFLite, in ONNX Runtime; the card (in the sidecar, as for TFLite) records the calibration and
ranges the same way (``int8``).

This module imports no framework: ``onnx`` / ``tensorflow`` are imported when an export runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import provenance as PV
from . import weights as W
from .errors import BackendNotInstalledError, LightnetsError
from .graph import Graph
from .numerics import check_dtype

TARGETS = {"onnx": ".onnx", "tflite": ".tflite"}  # export target -> suffix
# the probe's bound: parity's float32 whole-network bound (parity/tolerances.py MODEL_REL); a float64 ONNX
# graph runs its convs in float32 in onnxruntime (no double Conv kernel), so the same bound applies
PROBE_REL = 1e-4
QUANTIZE = ("int8",)  # post-training quantization schemes (TFLite full-integer, ONNX QDQ)
# int8: the default representative dataset and the top-1 agreement set (N(0, 1) NCHW images, as parity's inputs)
CALIBRATION_IMAGES, CALIBRATION_SEED = 32, 1
AGREEMENT_IMAGES, AGREEMENT_SEED = 64, 2


def onnx_module():
    """``lightnets.backends.onnx`` (needs the ``onnx`` package; ``onnxruntime`` only to run models)."""
    if importlib.util.find_spec("onnx") is None:
        raise BackendNotInstalledError("exporting to ONNX needs the 'onnx' package, which is not installed; "
                                       "run: pip install 'lightnets[onnx]'")
    return importlib.import_module("lightnets.backends.onnx")


def source_graph_and_weights(source, input_size: int | None = None, seed: int = 0, dtype: str = "float32"):
    """The graph (card in ``meta``) and canonical weights of an export source (see the module doc)."""
    from . import api
    from .file_graph import at_size

    if isinstance(source, tuple):
        if len(source) != 2 or not isinstance(source[0], Graph) or not isinstance(source[1], Mapping):
            raise LightnetsError("a (graph, weights) source must be a lightnets Graph and a mapping of canonical "
                                 "name -> array, e.g. (lightnets.get_spec(id), lightnets.export_weights(model))")
        graph, weights = source
        graph = at_size(graph, input_size)
        return PV.with_card(graph, PV.card_of(graph) or PV.dict_card(graph)), W.check_weights(graph, weights)
    if isinstance(source, (str, os.PathLike)):
        if api.is_weights_file(source):
            return api.graph_and_weights(source, input_size=input_size, dtype=dtype)
        return api.graph_and_weights(source, input_size=input_size, seed=seed)
    if isinstance(source, Graph):
        raise LightnetsError("export needs weights too: pass (graph, weights), a model or a weights file")
    from .frameworks import backend_of

    be = backend_of(source)  # LightnetsError for anything that is not a lightnets model
    graph = at_size(be.graph_of(source), input_size)
    return PV.with_card(graph, PV.card_of(graph) or PV.dict_card(graph)), be.get_weights(source)


def to_onnx(source, dtype: str = "float32", dynamic_hw: bool | None = None, input_size: int | None = None,
            seed: int = 0, lean: bool = False):
    """The checked ``onnx.ModelProto`` of ``source`` (nothing written; ``lean``: see :func:`export`)."""
    check_dtype(dtype)
    onnx_module()
    O = importlib.import_module("lightnets.backends.onnx_export")  # noqa: N806 -- the exporter
    graph, weights = source_graph_and_weights(source, input_size, seed, dtype)
    return O.checked(O.to_onnx(graph, weights, dtype, dynamic_hw, lean=lean)), graph, weights


def outputs_rel_error(got, want) -> float:
    """The largest relative error over a graph's outputs (one array, or a list: a backbone's feature maps)."""
    from .numerics import rel_error

    got, want = (got, want) if isinstance(want, list) else ([got], [want])
    if not isinstance(got, list) or len(got) != len(want):
        raise LightnetsError(f"the export gives {len(got) if isinstance(got, list) else 1} output(s), the graph "
                             f"{len(want)}; please report it with the model id")
    return max(rel_error(g, w) for g, w in zip(got, want, strict=True))


def probe(model, graph: Graph, weights, seed: int = 0) -> float | None:
    """Relative error of one random image through ``model`` in onnxruntime against the float64 reference, the
    largest over the graph's outputs (None without onnxruntime)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    from .reference import run

    x = np.random.default_rng(seed).standard_normal((1, *graph.input_shape))
    return outputs_rel_error(onnx_module().BACKEND.forward(model, x), run(graph, weights, x))


# --- TFLite ------------------------------------------------------------------------------------------
def tflite_module():
    """``lightnets.backends.tflite`` (needs tensorflow with keras; ``ai-edge-litert`` runs the files, else
    ``tf.lite.Interpreter``)."""
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
        raise BackendNotInstalledError("exporting to TFLite needs tensorflow and keras (the TFLite converter "
                                       "converts the keras model), which are not installed; run: "
                                       "pip install 'lightnets[tflite]'")
    return importlib.import_module("lightnets.backends.tflite")


def seeded_images(graph: Graph, n: int, seed: int) -> np.ndarray:
    """``n`` N(0, 1) NCHW images for ``graph`` from ``default_rng(seed)`` (how parity draws its inputs)."""
    return np.random.default_rng(seed).standard_normal((n, *graph.input_shape))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def folder_images(folder, graph: Graph, n: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """``n`` NCHW float32 images for ``graph`` from a folder of image files (a seeded sample of its sorted files when
    it has more): RGB, the shorter side resized to the graph's size and center-cropped, then normalised as the graph's
    card says (``preprocessing``: pixels x scale, minus mean, over std), else with ImageNet's mean/std."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LightnetsError(f"calibration folder {folder} does not exist or is not a folder; pass a folder of image "
                             f"files ({', '.join(IMAGE_SUFFIXES)})")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise LightnetsError(f"calibration folder {folder} has no image files ({', '.join(IMAGE_SUFFIXES)}); put the "
                             "images the model will see there")
    if importlib.util.find_spec("PIL") is None:
        raise BackendNotInstalledError("reading calibration images needs Pillow; run: pip install 'lightnets[tflite]'")
    from PIL import Image

    if len(files) > n:
        files = [files[i] for i in sorted(np.random.default_rng(seed).choice(len(files), n, replace=False))]
    from .zoo.entries import IMAGENET  # when the card names no preprocessing

    pre = (PV.card_of(graph) or {}).get("preprocessing") or IMAGENET
    mean, std = np.asarray(pre.get("mean", IMAGENET["mean"])), np.asarray(pre.get("std", IMAGENET["std"]))
    _, h, w = graph.input_shape
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                k = max(h / im.height, w / im.width)
                im = im.resize((max(w, round(im.width * k)), max(h, round(im.height * k))), Image.BILINEAR)
                left, top = (im.width - w) // 2, (im.height - h) // 2
                pixels = np.asarray(im.crop((left, top, left + w, top + h)), np.float64)
        except OSError as e:
            raise LightnetsError(f"calibration image {f} cannot be read ({e}); remove it or replace it") from None
        x = (pixels * float(pre.get("scale", IMAGENET["scale"])) - mean) / std
        images.append(x.transpose(2, 0, 1))
    return np.stack(images).astype(np.float32)


def to_tflite(source, quantize: str | None = None, calibration=None, dynamic_hw: bool | None = None,
              input_size: int | None = None, seed: int = 0, lean: bool = False):
    """The TFLite model of ``source`` (``lightnets.backends.tflite.TFLiteModel``, converted on first use), its
    graph and canonical weights (nothing written). int8 ``calibration``: NCHW images, a count of seeded N(0, 1) images
    (default :data:`CALIBRATION_IMAGES`) or a folder of image files (:func:`folder_images`)."""
    if quantize is not None and quantize not in QUANTIZE:
        raise LightnetsError(f"quantize={quantize!r} is not supported; use None (float32) or one of {QUANTIZE}")
    TL = tflite_module()  # noqa: N806
    graph, weights = source_graph_and_weights(source, input_size, seed, "float32")
    if dynamic_hw and graph.fixed_size:
        raise LightnetsError(f"graph {graph.name!r} is fixed to its {graph.input_shape[1]}x{graph.input_shape[2]} "
                             "input (meta fixed_size); export it with static height/width (dynamic_hw=False)")
    model = TL.TFLiteModel(graph, "float32", static_hw=dynamic_hw is False, lean=lean)  # False: the file builds back
    TL.BACKEND.set_weights(model, weights)
    if quantize == "int8":
        model = TL.quantize_int8(model, calibration_images(graph, calibration))
    return model, graph, weights


def calibration_images(graph: Graph, calibration=None) -> np.ndarray:
    """The NCHW images an int8 export (TFLite or QDQ ONNX) calibrates on: ``calibration`` as given (NCHW images), a
    count of seeded N(0, 1) images (None: :data:`CALIBRATION_IMAGES`, seed :data:`CALIBRATION_SEED`) or a folder of
    image files (:func:`folder_images`)."""
    if calibration is None or isinstance(calibration, int):  # a count of seeded images
        return seeded_images(graph, calibration or CALIBRATION_IMAGES, CALIBRATION_SEED)
    if isinstance(calibration, (str, os.PathLike)):
        return folder_images(calibration, graph)
    return np.asarray(calibration)


def calibration_record(calibration, images: int) -> str:
    """How an int8 export was calibrated (the check's report and the card's ``int8.calibration``)."""
    if isinstance(calibration, (str, os.PathLike)):
        return (f"{images} images of the folder {Path(calibration).resolve()} (a seeded sample, seed "
                f"{CALIBRATION_SEED}, of at most {CALIBRATION_IMAGES}; resized, center-cropped, normalised as the "
                "card's preprocessing or ImageNet's)")
    if calibration is None or isinstance(calibration, int):
        return f"{images} N(0, 1) NCHW images, seed {CALIBRATION_SEED}"
    return f"{images} images (the caller's)"


def int8_card(card: dict, calibration, images: int, ranges: dict) -> dict:
    """``card`` with its ``int8`` record: how to reproduce the calibration and the float range it gave every quantized
    node output."""
    seeded = calibration is None or isinstance(calibration, (int, str, os.PathLike))  # seeded images or sample
    return {**card, "int8": {"calibration": calibration_record(calibration, images), "calibration_images": images,
                             "calibration_seed": CALIBRATION_SEED if seeded else None, "ranges": ranges}}


def onnx_int8_module():
    """``lightnets.backends.onnx_int8`` (needs onnx and onnxruntime: its quantizer calibrates in ONNX Runtime)."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise BackendNotInstalledError("QDQ int8 ONNX export needs onnxruntime (onnxruntime.quantization calibrates in "
                                       "it), which is not installed; run: pip install 'lightnets[onnx]'")
    onnx_module()
    return importlib.import_module("lightnets.backends.onnx_int8")


def to_onnx_int8(source, calibration=None, input_size: int | None = None, seed: int = 0):
    """The QDQ int8 ONNX model of ``source`` (``lightnets.backends.onnx_int8.QDQModel``: quantized by
    ``onnxruntime.quantization.quantize_static`` on first use), its graph and canonical weights (nothing written);
    ``calibration`` as :func:`to_tflite`'s, so both int8 exports of one source see the same images."""
    OI = onnx_int8_module()  # noqa: N806
    graph, weights = source_graph_and_weights(source, input_size, seed, "float32")
    model = OI.QDQModel(graph, calibration_images(graph, calibration))
    onnx_module().BACKEND.set_weights(model, weights)
    return model, graph, weights


def _runtime_of(model):
    """The backend that runs ``model`` (a TFLiteModel, or an onnxruntime model: a QDQModel)."""
    return onnx_module().BACKEND if type(model).__module__.startswith("lightnets.backends.onnx") else \
        tflite_module().BACKEND


def top1_agreement(model, graph: Graph, weights, images: np.ndarray, chunk: int = 8) -> tuple[int, int]:
    """``(agreeing, total)``: images whose top-1 class in ``model`` (a TFLiteModel or QDQModel) is the float64
    reference's."""
    from .reference import run

    be = _runtime_of(model)
    agree = 0
    for i in range(0, len(images), chunk):
        x = images[i: i + chunk]
        agree += int(np.sum(be.run(model, x).argmax(1) == run(graph, weights, x).argmax(1)))
    return agree, len(images)


def feature_rel_error(model, graph: Graph, weights, images: np.ndarray, chunk: int = 8) -> float:
    """The largest relative error of any feature map of the backbone ``model`` (a TFLiteModel or QDQModel) against
    the float64 reference on ``images`` (an int8 backbone has no classes to agree on)."""
    from .reference import run

    be = _runtime_of(model)
    return max(outputs_rel_error(be.run(model, images[i: i + chunk]), run(graph, weights, images[i: i + chunk]))
               for i in range(0, len(images), chunk))


def _int8_check(model, graph: Graph, weights, report: dict) -> str:
    """The int8 export's check (top-1 agreement, or a backbone's largest feature-map error) into ``report``; the
    card note's sentence."""
    images = seeded_images(graph, AGREEMENT_IMAGES, AGREEMENT_SEED)
    if graph.multi_output:
        rel = feature_rel_error(model, graph, weights, images)
        report.update(feature_rel_error=rel, images=len(images), agreement_seed=AGREEMENT_SEED)
        return (f"; {len(graph.output_names)} feature maps: largest rel error against the float64 reference "
                f"{rel:.1%} on {len(images)} N(0, 1) images, seed {AGREEMENT_SEED}")
    agree, n = top1_agreement(model, graph, weights, images)
    report.update(top1_agreement=agree / n, agreeing=agree, images=n, agreement_seed=AGREEMENT_SEED)
    return (f"; top-1 agreement with the float64 reference {agree}/{n} = {agree / n:.1%} on N(0, 1) images, seed "
            f"{AGREEMENT_SEED}")


def export_onnx_int8(source, path, overwrite: bool = False, calibration=None, input_size: int | None = None,
                     seed: int = 0, check: bool = True) -> TFLiteExport:
    """Write ``source`` as a QDQ int8 ``.onnx`` file (:func:`to_onnx_int8`; static height/width, dynamic batch) with
    its graph and card in the ``<path>.lightnets.json`` sidecar, the card recording the calibration as the int8
    TFLite card does; returns the path and the check's report (top-1 agreement in ONNX Runtime, as it runs the file:
    its fused integer kernels)."""
    from . import formats

    path = formats.check_writable(path, overwrite)
    model, graph, weights = to_onnx_int8(source, calibration, input_size, seed)
    OI = onnx_int8_module()  # noqa: N806
    model_bytes = model.model_bytes()  # quantizes: a quantizer failure leaves nothing written
    report = {"quantize": "int8", "format": "QDQ", "input": f"NCHW float32 (N, 3, {graph.input_shape[1]}, "
              f"{graph.input_shape[2]})", **OI.versions(),
              "calibration": calibration_record(calibration, len(model.calibration))}
    note = (f"QDQ int8 ONNX (onnxruntime.quantization.quantize_static, QuantFormat.QDQ, per-channel symmetric int8 "
            f"weights, per-tensor int8 activations, min/max calibration; batch norms folded first); calibration: "
            f"{report['calibration']}")
    if check:
        note += _int8_check(model, graph, weights, report)
    card = PV.card_of(graph) or PV.dict_card(graph)
    card = int8_card({**card, "notes": [*card.get("notes", []), note]}, calibration, len(model.calibration),
                     OI.graph_ranges(model_bytes, graph))
    model.graph = PV.with_card(graph, card)
    formats.save_weights(model, path, format="onnx", overwrite=overwrite)
    return TFLiteExport(Path(path), report)


class TFLiteExport(NamedTuple):
    """A written TFLite export: its path and what its check measured (also in the card's notes)."""

    path: Path
    report: dict


def export_tflite(source, path, overwrite: bool = False, quantize: str | None = None, calibration=None,
                  dynamic_hw: bool | None = None, input_size: int | None = None, seed: int = 0,
                  check: bool = True, lean: bool = False) -> TFLiteExport:
    """Write ``source`` as a ``.tflite`` file (float32, or int8 with ``quantize="int8"``) with its graph and card in
    the ``<path>.lightnets.json`` sidecar; returns the path and the check's report (see the module doc)."""
    from . import formats

    path = formats.check_writable(path, overwrite)
    model, graph, weights = to_tflite(source, quantize, calibration, dynamic_hw, input_size, seed, lean)
    TL = tflite_module()  # noqa: N806
    runner = model.runner()  # converts: a converter failure leaves nothing written
    dims = [name if d == -1 else str(d) for name, d in zip("NHWC", runner.signature, strict=True)]
    report = {"quantize": quantize or "none", "input": f"NHWC float32 ({', '.join(dims)})", **TL.versions()}
    if quantize == "int8":
        report["calibration"] = calibration_record(calibration, len(model.calibration))
        note = (f"TFLite int8 post-training full-integer quantization (int8 weights/activations, float32 "
                f"input/output); representative dataset: {report['calibration']}")
        if check:
            note += _int8_check(model, graph, weights, report)
    else:
        note = "TFLite float32 export (tf.lite.TFLiteConverter.from_keras_model)"
        if check:
            from .reference import run

            x = np.random.default_rng(seed).standard_normal((1, *graph.input_shape))
            rel = outputs_rel_error(TL.BACKEND.run(model, x), run(graph, weights, x))
            if not rel <= PROBE_REL:
                raise LightnetsError(f"the TFLite export of {graph.name!r} gives {rel:.2e} relative error against "
                                     f"the float64 reference on a probe image (bound {PROBE_REL:g}); nothing "
                                     "written. Please report it with the model id")
            report["probe_rel_error"] = rel
            note += f"; probe rel error {rel:.1e} against the float64 reference"
    card = PV.card_of(graph) or PV.dict_card(graph)
    card = {**card, "notes": [*card.get("notes", []), note]}
    if quantize == "int8":  # how to reproduce the calibration, and the ranges it gave every quantized node output
        ranges = importlib.import_module("lightnets.backends.tflite_int8").graph_ranges(model.flat_buffer(), graph)
        card = int8_card(card, calibration, len(model.calibration), ranges)
    model.graph = PV.with_card(graph, card)
    formats.save_weights(model, path, format="tflite", overwrite=overwrite)
    return TFLiteExport(Path(path), report)


def export(source, to: str = "onnx", path=None, overwrite: bool = False, dtype: str = "float32",
           dynamic_hw: bool | None = None, input_size: int | None = None, seed: int = 0,
           check: bool = True, quantize: str | None = None, calibration=None, lean: bool = False) -> Path:
    """Write ``source`` (a lightnets model of any backend, a weights file, ``(graph, weights)`` or a model id)
    as an ONNX or TFLite file at ``path``; returns the path.

    ``dtype``: the ONNX tensor type ("float32" default; "float64" keeps double where onnxruntime has
    kernels); TFLite is float32 only. ``dynamic_hw``: symbolic height/width (default: unless the graph is
    fixed to its size; the batch is always dynamic). ``input_size``: the graph's build size (static dims and
    doc). ``check``: probe the export (onnxruntime when installed / the LiteRT interpreter) against the float64
    reference before writing; int8: measure its top-1 agreement instead. ``quantize="int8"`` and
    ``calibration``: see the module doc (TFLite: full-integer; ONNX: QDQ); :func:`export_tflite` and
    :func:`export_onnx_int8` also return the check's report. ``lean=True`` (float only): the file of an inference-form
    source (batch norms folded: ``lightnets.optimize(model)``, ``build(..., mode="inference")``) as its runtime runs
    it - channel concats in pieces (``lightnets.transforms.split_concats``), no dropout node - faster, but it no longer
    builds back through the importer (it still runs anywhere); default: every IR node in the file.
    """
    from .formats import check_writable

    if to not in TARGETS:
        raise LightnetsError(f"unknown export target {to!r}; choose one of {', '.join(TARGETS)}")
    if path is None:
        raise LightnetsError(f"export needs path=, the {TARGETS[to]} file to write")
    if quantize is not None and quantize not in QUANTIZE:
        raise LightnetsError(f"quantize={quantize!r} is not supported; use None (float) or one of {QUANTIZE}")
    if calibration is not None and quantize is None:
        raise LightnetsError("calibration= calibrates an int8 export; add quantize='int8'")
    if to == "onnx" and quantize == "int8":
        if dtype != "float32" or dynamic_hw:
            raise LightnetsError("a QDQ int8 ONNX export takes float32 images at its build size: drop dtype= / "
                                 "dynamic_hw=True (the batch stays dynamic)")
        return export_onnx_int8(source, path, overwrite, calibration, input_size, seed, check).path
    if to == "tflite":
        if dtype != "float32":
            raise LightnetsError(f"TFLite export is float32 (the LiteRT interpreter has no float64 kernels), not "
                                 f"{dtype!r}; use dtype='float32', or quantize='int8'")
        return export_tflite(source, path, overwrite, quantize, calibration, dynamic_hw, input_size, seed,
                             check, lean).path
    path = check_writable(path, overwrite)
    model, graph, weights = to_onnx(source, dtype, dynamic_hw, input_size, seed, lean)
    if check:
        rel = probe(model, graph, weights, seed)
        if rel is not None and not rel <= PROBE_REL:
            raise LightnetsError(f"the ONNX export of {graph.name!r} gives {rel:.2e} relative error against the "
                                 f"float64 reference on a probe image (bound {PROBE_REL:g}); nothing written. "
                                 "Please report it with the model id")
    return onnx_module().BACKEND.save_file(model, path, "onnx")
