"""The backend contract, written once: every backend module defines ``BACKEND = XBackend()``.

Modelled on einops' ``AbstractBackend``: a small class whose methods are the whole surface that
the rest of lightnets (api, formats/port, zoo, bench, parity) uses, so those modules import no
framework and never branch on one. A subclass supplies the framework parts; this module imports
numpy only.

Contract (lightnets models): ``build``, ``owns``, ``graph_of``, ``set_weights``, ``get_weights``,
``run``, ``train_forward``, ``gradients``.

Native I/O (any model of the framework: lightnets models and zoo models alike):
``FORMATS``, ``read_state_dict``, ``load_file``, ``save_file``, ``state_dict``, ``load_state_dict``,
``forward``, ``cast``, ``bn_eps``, ``NATIVE_NAMES``, ``in_model_preprocessing``,
``classifier_activation``; bench: ``set_threads``, ``timed_call``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lightnets.errors import FileFormatError, LightnetsError, WeightsError
from lightnets.frameworks import BACKENDS
from lightnets.weights import _few, atomic_write

DTYPES = ("float32", "float64")


def unreadable(path, what: str, e: BaseException) -> FileFormatError:
    """The error for a native file its framework cannot parse."""
    return FileFormatError(f"{path} is not a readable {what} file ({type(e).__name__}: {str(e)[:200]}); it may "
                           "be truncated, corrupt or of another format - re-export it")


class Backend:
    """One framework. Subclasses set ``name``, ``FORMATS`` and ``NATIVE_NAMES`` and implement the hooks."""

    name: str = ""
    # native format name -> the suffix its files carry
    FORMATS: dict[str, str] = {}
    # {op: {canonical suffix: native leaf}}; "depthwise_conv2d" is a conv2d with groups == in_channels
    # (keras stores it as a DepthwiseConv2D, whose kernel leaf is "depthwise_kernel")
    NATIVE_NAMES: dict[str, dict[str, str]] = {}
    # state-dict leaves that may be absent from a file (torch BN's num_batches_tracked)
    OPTIONAL_KEYS: tuple[str, ...] = ()

    @property
    def framework(self) -> str:
        """The import name of the framework (``lightnets.frameworks.BACKENDS`` says it once)."""
        return BACKENDS[self.name][0]

    def __repr__(self) -> str:
        return f"<lightnets backend {self.name!r}>"

    # --- contract: lightnets models ---------------------------------------------------------------
    def build(self, graph, dtype: str = "float32"):
        raise NotImplementedError

    def owns(self, model) -> bool:
        raise NotImplementedError

    def graph_of(self, model):
        raise NotImplementedError

    def set_weights(self, model, weights) -> None:
        raise NotImplementedError

    def get_weights(self, model) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def run(self, model, x, return_all: bool = False):
        raise NotImplementedError

    def train_forward(self, model, x):
        raise NotImplementedError

    def gradients(self, model, x, probe) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # --- native I/O ----------------------------------------------------------------------------
    def check_format(self, fmt: str) -> str:
        if fmt not in self.FORMATS:
            raise FileFormatError(f"{fmt!r} is not a {self.name} format; {self.name} formats are "
                                  f"{', '.join(self.FORMATS)}")
        return fmt

    @staticmethod
    def existing(path) -> Path:
        path = Path(path)
        if not path.is_file():
            raise FileFormatError(f"weights file {path} does not exist; check the path")
        return path

    def read_state_dict(self, path, fmt: str) -> dict[str, np.ndarray]:
        """The native state dict (native keys and layouts, numpy values) stored in ``path``."""
        self.check_format(fmt)
        sd = self._read(self.existing(path), fmt)
        if not isinstance(sd, Mapping) or not all(hasattr(v, "shape") for v in sd.values()):
            raise FileFormatError(f"{path} holds a {type(sd).__name__}, not a {self.name} state dict of "
                                  "tensors; save the model's state dict")
        return {str(k): self.to_numpy(v) for k, v in sd.items()}

    def load_file(self, model, path, fmt: str) -> None:
        """Load the native file ``path`` into ``model`` (any model of this framework), strictly."""
        self.check_format(fmt)
        self.load_state_dict(model, self.read_state_dict(path, fmt))

    def save_file(self, model, path, fmt: str) -> Path:
        """Write ``model``'s weights as a native ``fmt`` file at exactly ``path``, atomically."""
        self.check_format(fmt)
        suffix = self.FORMATS[fmt]

        def write(tmp):
            if tmp.endswith(suffix):
                self._write(model, tmp, fmt)
                return
            # libraries that insist on a suffix: write tmp + suffix, then rename onto tmp
            t2 = tmp + suffix
            try:
                self._write(model, t2, fmt)
                os.replace(t2, tmp)
            finally:
                Path(t2).unlink(missing_ok=True)
        return atomic_write(path, write)

    def state_dict(self, model) -> dict[str, np.ndarray]:
        """The native state dict of any model of this framework, as numpy arrays."""
        raise NotImplementedError

    def load_state_dict(self, model, sd: Mapping[str, np.ndarray]) -> None:
        """Assign a native state dict strictly: every key, shape and float-ness checked first."""
        self.check_state_dict(self._shapes(model), sd, type(model).__name__)
        self._assign(model, sd)

    def check_state_dict(self, want: Mapping[str, tuple], got: Mapping, what: str) -> None:
        """WeightsError naming missing, unexpected, mis-shaped and non-float entries of ``got``."""
        optional = self.OPTIONAL_KEYS
        missing = [k for k in want if k not in got and not k.endswith(optional)]
        extra = sorted(k for k in got if k not in want)
        bad = [f"{k} has shape {tuple(np.shape(got[k]))}, expected {tuple(want[k])}" for k in want
               if k in got and tuple(np.shape(got[k])) != tuple(want[k])]
        nonfloat = [k for k in want if k in got and not k.endswith(optional)
                    and np.asarray(self.to_numpy(got[k])).dtype.kind != "f"]
        problems = []
        if missing:
            problems.append(f"missing keys {_few(missing)}")
        if extra:
            problems.append(f"unexpected keys {_few(extra)}")
        if bad:
            problems.append("; ".join(bad[:8]) + (f" ... ({len(bad) - 8} more)" if len(bad) > 8 else ""))
        if nonfloat:
            problems.append(f"non-float tensors {_few(nonfloat)}")
        if problems:
            raise WeightsError(f"{self.name} state dict does not fit the {what}: " + "; ".join(problems)
                               + ". Check the model id, the class count and that the weights were saved "
                                 "from this model.")

    def forward(self, model, x) -> np.ndarray:
        """Eval forward of any model of this framework on the NCHW numpy batch ``x`` (no grad)."""
        raise NotImplementedError

    def cast(self, model, dtype: str):
        """The same model (a copy) with every weight in ``dtype``."""
        if dtype not in DTYPES:
            raise LightnetsError(f"dtype {dtype!r} is not supported; use one of {DTYPES}")
        if self.owns(model):
            copy = self.build(self.graph_of(model), dtype)
            self.set_weights(copy, self.get_weights(model))
            return copy
        return self._cast_native(model, dtype)

    def bn_eps(self, model) -> set[float]:
        """The eps of every batch-norm layer of ``model``."""
        raise NotImplementedError

    def in_model_preprocessing(self, model):
        """``(scale, offset)`` of a rescaling layer inside ``model`` (keras), else None."""
        return None

    def classifier_activation(self, model) -> str:
        """The activation of the model's last layer ("linear" for logits)."""
        return "linear"

    # --- bench ---------------------------------------------------------------------------------
    def set_threads(self, n: int) -> None:
        """Pin the framework's intra-op threads to ``n`` (inter-op to 1) where it allows."""

    def timed_call(self, model):
        """``(to_input, call)``: ``to_input(x_nchw)`` makes the native input once; ``call(native_x)``
        runs the framework's fast eval path and materialises the output."""
        raise NotImplementedError

    # --- hooks -----------------------------------------------------------------------------------
    @staticmethod
    def to_numpy(v) -> np.ndarray:
        """A framework tensor (or array) as numpy."""
        if isinstance(v, np.ndarray):
            return v
        if hasattr(v, "detach"):
            return v.detach().cpu().numpy()
        return np.asarray(v.numpy() if hasattr(v, "numpy") else v)

    def _read(self, path: Path, fmt: str):
        raise NotImplementedError

    def _write(self, model, path: str, fmt: str) -> None:
        raise NotImplementedError

    def _shapes(self, model) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in self.state_dict(model).items()}

    def _assign(self, model, sd: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _cast_native(self, model, dtype: str):
        raise NotImplementedError
