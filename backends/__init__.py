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
"""

NAMES = ("torch", "keras", "paddle")
