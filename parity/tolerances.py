"""Every parity tolerance, in one place, with its reason.

Errors are relative to the output's magnitude: ``max|y - ref| / max|ref|`` (``rel_error``).
Each bound states the value measured on this project's 2-core x86_64 machine it was set from.
"""

from __future__ import annotations

import numpy as np

# Single ops against the float64 numpy reference.
OP_REL = {
    # float64: only summation order differs (im2col vs direct/oneDNN); measured <= 2e-16.
    "float64": 1e-12,
    # float32: one rounding per accumulation step over <= 7*7*C terms; measured <= 4e-7.
    "float32": 1e-5,
}

# Whole networks (logits) against the float64 numpy reference, canonical random weights.
MODEL_REL = {
    # float64: depth ~50-150 ops of summation-order noise; measured <= 1e-14.
    "float64": 1e-10,
    # float32: rounding compounds with depth; measured <= 2e-6 on every id at 64x64.
    "float32": 1e-4,
}

# Gradients of sum(logits * R) w.r.t. every parameter and the input, backend against backend.
GRAD_REL = {
    "float64": 1e-9,  # the bound; summation order only.
    "float32": 1e-3,  # gradients sum over batch and space; rounding compounds twice the depth.
}

# Known divergences: (case, target, dtype) -> reason. A listed case that passes fails the run,
# so this list can only shrink.
EXPECTED_FAILURES: dict[tuple[str, str, str], str] = {}


def rel_error(y: np.ndarray, ref: np.ndarray) -> float:
    """max |y - ref| / max |ref| (0/0 counts as 0)."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    if y.shape != ref.shape:
        raise ValueError(f"shape {y.shape} differs from the reference shape {ref.shape}")
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = float(np.max(np.abs(y - ref))) if ref.size else 0.0
    return err / scale if scale > 0 else err


def abs_error(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(y, np.float64) - np.asarray(ref, np.float64))))
