"""Numeric helpers shared by the library and the parity suite: how far one output is from another."""

from __future__ import annotations

import numpy as np

from .errors import DTypeError

DTYPES = ("float32", "float64")  # the dtypes a lightnets model computes in


def check_dtype(dtype, supported=DTYPES) -> None:
    """Raise a :class:`DTypeError` naming the choices unless ``dtype`` is one of ``supported``."""
    if dtype not in supported:
        raise DTypeError(f"dtype {dtype!r} is not supported; use one of {tuple(supported)}")


def rel_error(y, ref) -> float:
    """max |y - ref| / max |ref| (0/0 counts as 0); shapes must agree."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    if y.shape != ref.shape:
        raise ValueError(f"shape {y.shape} differs from the reference shape {ref.shape}")
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = float(np.max(np.abs(y - ref))) if ref.size else 0.0
    return err / scale if scale > 0 else err


def abs_error(y, ref) -> float:
    """max |y - ref|."""
    return float(np.max(np.abs(np.asarray(y, np.float64) - np.asarray(ref, np.float64))))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (for comparing a probability head with logits)."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
