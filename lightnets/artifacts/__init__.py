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
  from the graph's) and, where the reader gives the file's data flow (``Artifact.producers``), that is fed by
  the file units its own feeders took: onnxruntime's basic offline optimization writes ShuffleNet's two
  branches in the other order, with equal shapes (matched in file order, the probe refused them at 0.97
  relative, measured); every file unit must be used. Pads are then compared node by node at the file's
  input size: a file padded TF "same" (``auto_pad``/``SAME``, or zero ``Pad`` + valid) fits only a
  graph padded "same" (the ``_keras`` ids), symmetric pads only "explicit" graphs.
- **which id.** Without ``arch``, every registered id is tried at the file's class count; exactly one
  must fit (ids that differ only in BN eps are told apart by a BN-carrying file's eps; a folded file
  cannot tell them apart and needs ``arch``).
- **the probe.** The file's own runtime (ONNX Runtime / LiteRT) runs a fixed random batch beside the
  float64 reference of the imported graph (a file whose batch is fixed - ``torch.onnx.export`` without
  ``dynamic_axes``, every TF1 converter's file - is fed its own batch at a time, :func:`in_batches`, and the
  card says so; a file with several outputs - a backbone - has each output paired with a graph output by
  shape and probed; the runtime's own errors are re-raised as ``RuntimeFailure`` naming the file, the
  runtime, the input tensor and the fix); the bound is the float32 noise of the same graph in that
  runtime (``Backend.float32_output``; LiteRT: the keras model a flat buffer is converted from) times
  :data:`FLOAT32_NOISE_FACTOR`. Quantized files are probed inside their quantized input range
  and judged by top-1 agreement or a loose relative bound instead (:data:`QUANTIZED_TOP1`,
  :data:`QUANTIZED_REL`: a coarse check, a mapping error below the quantization noise passes it).

The package: ``artifact`` (:class:`Artifact`, :class:`Layer`: what a backend's reader gives), ``matching`` (units and
:func:`match`: a file's weight ops onto a graph) and ``probe`` (which id, the probe, :func:`import_artifact`,
:func:`read`).
"""

from .artifact import KINDS, RESCALING_OPS, Artifact, Layer, in_batches, then_rescale
from .matching import Match, Unit, file_units, graph_units, identity_var, match
from .probe import (
    FLOAT32_FLOOR,
    FLOAT32_NOISE_FACTOR,
    PROBE_BATCH,
    PROBE_BATCH_QUANTIZED,
    PROBE_SEED,
    QUANTIZED_CORR,
    QUANTIZED_REL,
    QUANTIZED_TOP1,
    Imported,
    classes_of,
    fitting,
    import_artifact,
    read,
)

__all__ = ["FLOAT32_FLOOR", "FLOAT32_NOISE_FACTOR", "KINDS", "PROBE_BATCH", "PROBE_BATCH_QUANTIZED", "PROBE_SEED",
           "QUANTIZED_CORR", "QUANTIZED_REL", "QUANTIZED_TOP1", "RESCALING_OPS", "Artifact", "Imported", "Layer",
           "Match", "Unit", "classes_of", "file_units", "fitting", "graph_units", "identity_var", "import_artifact",
           "in_batches", "match", "read", "then_rescale"]
