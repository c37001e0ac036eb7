"""The fast inference path: ``lightnets.optimize(model, compile=False)``, one call for every backend.

``optimize`` takes a lightnets model of any backend (``lightnets.build(...)``, either mode), collapses its
reparameterisable branches and folds its batch norms into the convs (``transforms.inference_form``:
``reparameterize`` + ``fold_batch_norm``, float64 math, from the model's current
weights), builds a fresh model of the folded graph in the model's dtype and hands it to the backend's
``optimize``, which returns the framework's fast eval form. The argument is not changed. The result is
a lightnets model that ``lightnets.run`` (and ``return_all=True``, ``export_weights``) accepts:

- torch: the folded ``GraphModule`` in channels_last memory format (channel shuffles as
  ``torch.channel_shuffle``); ``compile=True``: a :class:`~lightnets.backends.torch.CompiledGraphModule`
  running a frozen ``torch.jit.trace`` of it, traced on the first call at each input shape.
- keras: the folded functional ``keras.Model``, run by ``predict_on_batch`` / the bench's ``tf.function``;
  ``compile=True`` on tensorflow: by frozen-graph sessions of it (weights as constants, one session per input
  shape, :mod:`lightnets.backends.keras.frozen`; XLA measured 10-26x slower here and is not used).
- paddle: the folded ``GraphLayer`` with its forward as ``paddle.jit.to_static``; ``compile=True``: a
  :class:`~lightnets.backends.paddle.PredictorLayer` running a ``paddle.inference`` predictor (oneDNN on,
  IR optimisation on) of the folded graph saved with ``paddle.jit.save`` to a temporary directory.

The optimized model computes the float64 reference of the UNFOLDED graph within the float32 bounds of
``parity/tolerances.py`` (``lightnets parity --mode fast`` / ``--mode compiled``).

This module imports numpy only; the frameworks are used through the backend objects.
"""

from __future__ import annotations

from .errors import LightnetsError
from .frameworks import backend_of
from .transforms import foldable_batch_norms, inference_form, reparameterizable_sums


def folded_copy(model):
    """A fresh lightnets model of ``model``'s backend and dtype: its graph with the batch norms folded."""
    be = backend_of(model)
    graph, weights = be.graph_of(model), be.get_weights(model)
    dtype = next((v.dtype.name for v in weights.values() if v.dtype.kind == "f"), "float32")
    if foldable_batch_norms(graph) or reparameterizable_sums(graph):
        graph, weights = inference_form(graph, weights)
    fresh = be.build(graph, dtype)
    be.set_weights(fresh, weights)
    return fresh


def optimize(model, compile: bool = False):
    """The fast inference form of the lightnets ``model`` (see the module docstring per backend).

    ``compile=False``: the framework's eager fast path, ready at once. ``compile=True``: the
    compiled/frozen variant that measured fastest here, paying a one-time cost (torch: a trace per input
    shape on first use; paddle: save + predictor creation; keras: a frozen graph and session per input shape).
    """
    if not isinstance(compile, bool):
        raise LightnetsError(f"compile must be True or False, got {compile!r}")
    be = backend_of(model)
    return be.optimize(folded_copy(model), compile=compile)
