"""What a backend's ``read_artifact`` gives for a foreign ``.onnx``/``.tflite`` file: its weight-carrying operators
(:class:`Layer`, tensors canonical) and what it says about its input and output (:class:`Artifact`), plus the
helpers the readers share (fixed-batch runs, folding leading scalar steps into the input rescaling)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..ops import WEIGHT_KINDS

KINDS = WEIGHT_KINDS


class Layer(NamedTuple):
    """One weight-carrying operator of a foreign file (in the file's order).

    ``tensors`` are canonical: conv ``weight`` (O, I/groups, kh, kw) and optional ``bias``; bn
    ``gamma``, ``beta``, ``mean``, ``var``; linear ``weight`` (out, in) and optional ``bias``.
    ``attrs``: conv ``stride`` (sh, sw), ``groups``, ``padding`` ("same" | "valid" | "explicit") and
    ``pads`` (top, bottom, left, right; a zero Pad op in front of the conv is folded into them);
    bn ``eps``. ``inputs``/``output`` are the file's tensor names (a BN pairs with the conv whose
    output is its input)."""

    name: str
    op: str
    kind: str
    tensors: dict[str, np.ndarray]
    attrs: dict[str, Any]
    inputs: tuple[str, ...]
    output: str


class Artifact(NamedTuple):
    """What a foreign ``.onnx``/``.tflite`` file holds, as a backend's ``read_artifact`` reads it."""

    path: str
    format: str  # "onnx" | "tflite"
    layers: tuple[Layer, ...]
    input_layout: str  # "NCHW" | "NHWC"
    input_hw: tuple[int, int] | None  # None: height/width are dynamic
    rescaling: tuple[float, float] | None  # the file computes x * scale + offset on its input first
    output_activation: str  # "linear" | "softmax"
    quantized: str | None  # e.g. "int8 weights dequantized (per-channel scales)", else None
    notes: tuple[str, ...]
    run: Any  # run(x: float32 array in input_layout) -> float32 output (a list: one per file output), any batch
    input_range: tuple[float, float] | None = None  # a quantized input's representable range (the probe's inputs)
    batch: int | None = None  # the file's fixed batch (None: dynamic); ``run`` feeds it that many images at a time
    outputs: int = 1  # how many outputs the file has (a backbone: one per feature map)
    # tensor -> the non-constant input tensors of the op that makes it (the image input -> None; None: not read);
    # the matcher follows the data flow where shapes alone are ambiguous (onnxruntime reorders parallel branches)
    producers: dict | None = None


def in_batches(run, x: np.ndarray, batch: int | None):
    """``run(x)`` for a file whose batch is fixed to ``batch`` (None: dynamic, one call): ``x`` in chunks of
    ``batch`` images, the last one padded with copies of its last image, outputs (an array or a list of
    arrays) cut back and concatenated."""
    if batch is None or len(x) == batch:
        return run(x)
    parts = []
    for i in range(0, len(x), batch):
        chunk = x[i: i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, 0)])
        y = run(chunk)
        parts.append([v[:n] for v in y] if isinstance(y, list) else y[:n])
    if isinstance(parts[0], list):
        return [np.concatenate(vs) for vs in zip(*parts, strict=True)]
    return np.concatenate(parts)


RESCALING_OPS = ("mul", "div", "add", "sub")


def then_rescale(rescaling: tuple[float, float], op: str, c: float) -> tuple[float, float]:
    """``(scale, offset)`` of ``x * scale + offset`` followed by ``op`` (one of ``RESCALING_OPS``, the input
    first) with the scalar ``c``: how the importers fold a file's leading scalar steps into
    ``Artifact.rescaling``."""
    scale, offset = rescaling
    if op == "mul":
        return scale * c, offset * c
    if op == "div":
        return scale / c, offset / c
    return scale, offset + (c if op == "add" else -c)
