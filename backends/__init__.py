"""Backends: one module per framework, each lowering the op vocabulary generically.

Every backend module defines ``BACKEND``, an instance of a :class:`lightnets.backends.base.Backend`
subclass; it knows ops, never model names. Which backends exist, the framework each needs (checked
before the module is imported) and how to load one: ``lightnets.frameworks`` (``BACKENDS``,
``load_backend``, ``backend_of``). Canonical weights are validated by ``lightnets`` before they reach
a backend.

Contract on lightnets models (written once in ``Backend`` over per-framework hooks):
``build(graph, dtype)``, ``owns``, ``graph_of``, ``set_weights``, ``get_weights``,
``run(model, x, return_all=False)``, ``train_forward(model, x) -> (output, stats)``,
``gradients(model, x, probe)``; ``params(model)`` is the one canonical <-> native mapping
(``NATIVE_NAMES`` + ``NATIVE_LAYOUTS``).

Native I/O on any model of the framework (so formats, port, zoo and bench import no framework):
``FORMATS``, ``read_state_dict``, ``load_file``, ``save_file``, ``state_dict``, ``load_state_dict``,
``forward``, ``cast``, ``bn_eps``, ``in_model_preprocessing``, ``classifier_activation``,
``set_threads``, ``timed_call``.
"""
