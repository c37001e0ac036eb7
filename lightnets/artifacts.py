"""Importing deployment artifacts (``.onnx``, ``.tflite``) that lightnets did not write.

A backend's ``read_artifact(path)`` turns a file into an :class:`Artifact`: its weight-carrying operators
as :class:`Layer` s in the file's order, tensors already canonical (dequantized, laid out through
:mod:`lightnets.layouts`), plus what the file says about its input (layout, size, in-model rescaling)
and output (softmax). This module (numpy only) maps an artifact onto a lightnets graph:

- **units.** A conv and the BatchNormalization that alone consumes its output are one unit, as in the
  graph. A conv with a bias and no BN where the graph has conv + BN is a *folded* unit (torch.onnx
  export in eval mode and every TFLite converter fold BN into the conv): the graph's BN becomes the
  identity carrying the bias - gamma 1, beta = bias, mean 0, var = 1 - eps (``sqrt(var + eps)`` is 1
  to the last bit in float64, checked) - so the imported weights run on the id's own graph, in every
  backend and format, and the graph stays the one users build by name.
- **matching.** Graph units in node order take the first unused file unit of the same kind whose
  canonical shapes, stride and groups agree (file order may interleave parallel branches differently
  from the graph's); every file unit must be used. Pads are then compared node by node at the file's
  input size: a file padded TF "same" (``auto_pad``/``SAME``, or zero ``Pad`` + valid) fits only a
  graph padded "same" (the ``_keras`` ids), symmetric pads only "explicit" graphs.
- **which id.** Without ``arch``, every registered id is tried at the file's class count; exactly one
  must fit (ids that differ only in BN eps are told apart by a BN-carrying file's eps; a folded file
  cannot tell them apart and needs ``arch``).
- **the probe.** The file's own runtime (ONNX Runtime / LiteRT) runs a fixed random batch beside the
  float64 reference of the imported graph; the bound is the float32 noise of the same graph in that
  runtime times :data:`FLOAT32_NOISE_FACTOR`. Quantized files are judged by top-1 agreement instead.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

KINDS = ("conv", "bn", "linear")


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
    run: Any  # run(x: float32 array in input_layout) -> float32 outputs, the file's own runtime
