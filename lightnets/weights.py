"""Canonical weights: ``{param_name: np.ndarray}`` in one layout for every backend.

Layout: conv OIHW (depthwise (C, 1, kh, kw)), linear (out, in), BN as gamma/beta/mean/var.
Files are ``.safetensors`` (or ``.npz`` read with ``allow_pickle=False``); writes are atomic.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import FileFormatError, LightnetsError, WeightsError
from .graph import Graph

Weights = dict[str, np.ndarray]


def init_weights(graph: Graph, seed: int = 0, dtype=np.float64) -> Weights:
    """Deterministic random weights. BN statistics are random too, so BN is never the identity.

    Conv/linear weights are He-normal on the fan-in; biases small; gamma in [0.5, 1.5], beta and mean
    ~ N(0, 0.1), var in [0.5, 1.5]. The same seed gives the same weights on every machine.
    """
    rng = np.random.default_rng(seed)
    out: Weights = {}
    for p in graph.params:
        if p.role == "weight":
            fan_in = int(np.prod(p.shape[1:]))
            v = rng.standard_normal(p.shape) * np.sqrt(2.0 / fan_in)
        elif p.role in ("gamma", "var"):
            v = rng.uniform(0.5, 1.5, p.shape)
        else:  # bias, beta, mean
            v = rng.standard_normal(p.shape) * 0.1
        out[p.name] = v.astype(dtype)
    return out


def check_weights(graph: Graph, weights: Mapping[str, np.ndarray]) -> Weights:
    """Validate ``weights`` against the graph's parameters; return them as a new dict of arrays.

    Raises WeightsError naming every missing, unexpected, mis-shaped, non-float or non-finite key.
    """
    if not isinstance(weights, Mapping):
        raise WeightsError(f"weights must be a mapping of name -> array, got {type(weights).__name__}; "
                           "pass lightnets.export_weights(model) or a loaded .safetensors dict")
    want = {p.name: p.shape for p in graph.params}
    missing = [k for k in want if k not in weights]
    extra = sorted(k for k in weights if k not in want)
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if extra:
        problems.append(f"unexpected keys {_few(extra)}")
    out: Weights = {}
    for name, shape in want.items():
        if name not in weights:
            continue
        v = np.asarray(weights[name])
        if v.dtype.kind != "f":
            problems.append(f"{name} has dtype {v.dtype}, expected a float dtype")
        elif tuple(v.shape) != tuple(shape):
            problems.append(f"{name} has shape {tuple(v.shape)}, expected {tuple(shape)}")
        elif not np.all(np.isfinite(v)):
            problems.append(f"{name} contains NaN or Inf")
        out[name] = v
    if problems:
        raise WeightsError(f"weights do not fit graph {graph.name!r}: " + "; ".join(problems)
                           + ". Check that the weights were exported from the same model id, num_classes "
                           "and include_top.")
    return out


def _few(keys: list[str], n: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"[{shown}{f', ... ({len(keys) - n} more)' if len(keys) > n else ''}]"


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``; nothing is left behind on failure."""
    path = Path(path)
    if not path.parent.is_dir():
        raise LightnetsError(f"cannot write {path}: directory {path.parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save(weights: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write canonical weights to ``.safetensors`` (or ``.npz``) atomically."""
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in weights.items()}
    suffix = Path(path).suffix
    if suffix == ".safetensors":
        return atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))
    if suffix == ".npz":
        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return atomic_write(path, write)
    raise FileFormatError(f"cannot save canonical weights as {suffix!r}; use .safetensors or .npz")


def load(path: str | os.PathLike) -> Weights:
    """Read canonical weights from ``.safetensors`` or ``.npz`` (never unpickles)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return dict(load_file(path))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    except (SafetensorError, ValueError, OSError, EOFError) as e:
        raise FileFormatError(f"{path} is not a readable {path.suffix} file ({e}); it may be truncated or "
                              "corrupt - re-export it") from None
    raise FileFormatError(f"unknown canonical weights suffix {path.suffix!r} for {path}; use .safetensors or .npz")
