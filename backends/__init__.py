"""Backends: one module per framework, each lowering the op vocabulary generically.

Every backend module (``torch``, ``keras``, ``paddle``) provides the same functions and knows ops,
never model names. Canonical weights are validated by ``lightnets`` before they reach a backend.

- ``FRAMEWORK``: the import name of the framework (checked before the backend is imported).
- ``build(graph, dtype) -> model``: the native model (``torch.nn.Module``, ``keras.Model`` taking
  NHWC, ``paddle.nn.Layer``) in eval mode, carrying ``graph`` (see ``graph_of``).
- ``owns(model) -> bool``: whether ``model`` is a lightnets model of this backend.
- ``graph_of(model) -> Graph``.
- ``set_weights(model, weights)``: assign canonical weights (the one canonical -> native mapping).
- ``get_weights(model) -> dict``: the one native -> canonical mapping; arrays in the model's dtype.
- ``run(model, x, return_all=False) -> np.ndarray | dict``: eval forward of the NCHW numpy batch
  ``x``; with ``return_all`` every node's output, by node name, in NCHW.
- ``train_forward(model, x) -> (output, stats)``: one training-mode forward (BN on batch
  statistics, running statistics updated with the IR momentum mapped to the framework's convention,
  dropout off); ``stats`` are the updated ``{"<bn>.mean": ..., "<bn>.var": ...}``. Leaves eval mode.
- ``gradients(model, x, probe) -> dict``: eval-mode gradients of ``sum(output * probe)`` w.r.t.
  every trainable canonical parameter (canonical name and layout) and ``"input"`` (NCHW).
"""

NAMES = ("torch", "keras", "paddle")
