"""Which backends exist, what each can do and how to load one: a leaf module (imports no framework).

``FRAMEWORKS`` is the one capability table: a row per backend. The CLI's choices, the parity and bench targets,
the training targets, port's import order and the contract tests' parametrisation are all derived from it, so a
new backend is its module under ``backends/`` plus one row here (docs/design.md, "Add a backend").

``load_backend(name)`` checks that the framework is importable *before* importing the backend
module, so a missing framework is a clear :class:`BackendNotInstalledError`, never an ImportError
from deep inside. It returns the backend object (``lightnets.backends.<name>.BACKEND``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import BackendNotInstalledError, LightnetsError, UnknownBackendError


class Target(NamedTuple):
    """One parity target: a backend run in a worker with ``env`` (keras runs on three keras backends)."""

    name: str
    env: dict[str, str]
    optimizer_steps: bool = True  # runs parity/train.py's optimizer steps (if its backend trains)
    float64: bool = True  # computes float64 in float64 (else float32 kernels inside: float32 bounds apply)


@dataclass(frozen=True)
class Framework:
    """A backend's row: the package it needs, where its module is, and what it can do."""

    name: str
    package: str  # the framework's import name, checked before the backend module is imported
    extra: str  # pip extra that installs it
    module: str  # its module under lightnets.backends
    trains: bool  # train-mode BN, gradients, optimizer steps; else an inference-only runtime
    native_files: bool  # its own weight files and state dicts (lightnets.formats, the contract tests)
    tensorflow: bool = False  # imports tensorflow: loaded after paddle (the reverse segfaults, docs/design.md §2)
    runs_exports_of: str | None = None  # an inference runtime: the framework whose zoo twins it runs, exported
    lowered_by: str | None = None  # the backend whose op converters (``CONVERTERS``) build its models; default: its own
    default_parity: bool = True  # in `lightnets parity`'s default targets (else asked for by name)
    targets: tuple[Target, ...] = field(default=())  # its parity targets (default: one, its name, no env)

    @property
    def parity_targets(self) -> tuple[Target, ...]:
        return self.targets or (Target(self.name, {}),)


_KERAS_ON_TF = {"KERAS_BACKEND": "tensorflow"}
FRAMEWORKS: tuple[Framework, ...] = (
    Framework("torch", "torch", "torch", "torch", trains=True, native_files=True),
    Framework("keras", "keras", "keras", "keras", trains=True, native_files=True, tensorflow=True, targets=(
        Target("keras", _KERAS_ON_TF),
        # keras 3.15 on torch / jax demotes float64 to float32 inside BatchNormalization, ops.mean and Dense
        Target("keras-torch", {"KERAS_BACKEND": "torch"}, float64=False),
        # keras on jax (CPU): float64 needs jax_enable_x64; XLA's CPU pool pinned to one thread like the others;
        # its train mode is judged (BN statistics, gradients), optimizer steps are not written for jax
        Target("keras-jax", {"KERAS_BACKEND": "jax", "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu",
                             "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"},
               optimizer_steps=False, float64=False))),
    Framework("paddle", "paddle", "paddle", "paddle", trains=True, native_files=True),
    # ONNX emitted from the IR (the exporter: backends/onnx_export.py), run by onnxruntime's CPU provider
    Framework("onnxruntime", "onnxruntime", "onnx", "onnx", trains=False, native_files=False,
              runs_exports_of="torch", targets=(Target("onnxruntime", {}, float64=False),)),  # no double Conv
    # the keras lowering converted by tf.lite.TFLiteConverter, run by the LiteRT interpreter; float32 only. Not a
    # default parity target: a conversion per model (~5-30 s); the worker keeps its flat buffers so that the
    # float64 pass reuses the float32 pass's conversions
    Framework("tflite", "tensorflow", "tflite", "tflite", trains=False, native_files=False, tensorflow=True,
              runs_exports_of="keras", lowered_by="keras", default_parity=False,
              targets=(Target("tflite", {**_KERAS_ON_TF, "LIGHTNETS_TFLITE_CACHE_MB": "4096"}, float64=False),)),
)
BACKENDS: dict[str, Framework] = {f.name: f for f in FRAMEWORKS}
# paddle before any backend that imports tensorflow (port and the tests load backends in this order)
IMPORT_ORDER: tuple[str, ...] = tuple(f.name for f in sorted(FRAMEWORKS, key=lambda f: f.tensorflow))
# parity target -> (backend, worker env)
PARITY_TARGETS: dict[str, tuple[str, dict[str, str]]] = {
    t.name: (f.name, t.env) for f in FRAMEWORKS for t in f.parity_targets}
DEFAULT_PARITY_TARGETS = tuple(t.name for f in FRAMEWORKS if f.default_parity for t in f.parity_targets)
# targets without train-mode BN or gradients: parity asks them for eval outputs only
INFERENCE_ONLY = frozenset(t.name for f in FRAMEWORKS if not f.trains for t in f.parity_targets)
# the backends that train (the others refuse training by name, pointing here)
TRAINERS = tuple(f.name for f in FRAMEWORKS if f.trains)
# targets whose float64 cases compute in float32 inside
FLOAT32_INSIDE = frozenset(t.name for f in FRAMEWORKS for t in f.parity_targets if not t.float64)
# targets that run optimizer steps (parity/train.py)
TRAIN_STEP_TARGETS = tuple(t.name for f in FRAMEWORKS if f.trains for t in f.parity_targets if t.optimizer_steps)
# the frameworks with their own files and state dicts, in import order (the contract tests' parametrisation)
NATIVE = tuple(n for n in IMPORT_ORDER if BACKENDS[n].native_files)


def module_of(name: str) -> str:
    """The import name of backend ``name``'s module."""
    return f"lightnets.backends.{BACKENDS[name].module}"


def installed(names=None) -> list[str]:
    """The backends (of ``names``, default all) whose framework is installed, in import order."""
    return [n for n in IMPORT_ORDER if (names is None or n in names)
            and importlib.util.find_spec(BACKENDS[n].package) is not None]


def load_backend(name: str):
    """The backend object of ``name``; raises a clear error if it or its framework is missing."""
    if name not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    row = BACKENDS[name]
    module = module_of(name)
    if module not in sys.modules and importlib.util.find_spec(row.package) is None:
        raise BackendNotInstalledError(f"backend {name!r} needs the {row.package!r} package, which is not "
                                       f"installed; run: pip install 'lightnets[{row.extra}]'")
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
