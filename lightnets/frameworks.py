"""Which backends exist and how to load them: a leaf module (numpy-free, imports no framework).

``load_backend(name)`` checks that the framework is importable *before* importing the backend
module, so a missing framework is a clear :class:`BackendNotInstalledError`, never an ImportError
from deep inside. It returns the backend object (``lightnets.backends.<name>.BACKEND``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from .errors import BackendNotInstalledError, LightnetsError, UnknownBackendError

# backend name -> (framework import name, pip extra)
BACKENDS: dict[str, tuple[str, str]] = {"torch": ("torch", "torch"), "keras": ("keras", "keras"),
                                        "paddle": ("paddle", "paddle"), "onnxruntime": ("onnxruntime", "onnx"),
                                        # keras models converted by tensorflow's TFLite converter, run by LiteRT
                                        "tflite": ("tensorflow", "tflite")}
# backend name -> its module under lightnets.backends, where the two differ (backends/onnx.py also exports ONNX)
MODULES: dict[str, str] = {"onnxruntime": "onnx"}


def module_of(name: str) -> str:
    """The import name of backend ``name``'s module."""
    return f"lightnets.backends.{MODULES.get(name, name)}"


def load_backend(name: str):
    """The backend object of ``name``; raises a clear error if it or its framework is missing."""
    if name not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    framework, extra = BACKENDS[name]
    module = module_of(name)
    if module not in sys.modules and importlib.util.find_spec(framework) is None:
        raise BackendNotInstalledError(f"backend {name!r} needs the {framework!r} package, which is not "
                                       f"installed; run: pip install 'lightnets[{extra}]'")
    mod = importlib.import_module(module)
    return getattr(mod, "BACKEND", mod)


def loaded_backends():
    """The backend objects already imported in this process (never imports a framework)."""
    out = []
    for name in BACKENDS:
        mod = sys.modules.get(module_of(name))
        if mod is not None:
            out.append(getattr(mod, "BACKEND", mod))
    return out


def backend_of(model):
    """The backend that built ``model`` (a lightnets model of any backend)."""
    for be in loaded_backends():
        if be.owns(model):
            return be
    raise LightnetsError(f"{type(model).__name__} is not a lightnets model; build one with lightnets.build()")
