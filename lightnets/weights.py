"""Canonical weights: ``{param_name: np.ndarray}`` in one layout for every backend.

Layout: conv OIHW (depthwise (C, 1, kh, kw)), linear (out, in), BN as gamma/beta/mean/var.
Files are ``.safetensors`` (or ``.npz`` read with ``allow_pickle=False``) with metadata (the graph and
provenance card, see :mod:`lightnets.formats`) and a sha256 of the tensors; writes are atomic and give
the file the mode a plain ``open()`` would.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import FileFormatError, LightnetsError, WeightsError
from .graph import INPUT, Graph

Weights = dict[str, np.ndarray]


def init_weights(graph: Graph, seed: int = 0, dtype=np.float64, calibrate: bool = True) -> Weights:
    """Deterministic random weights. BN statistics are random too, so BN is never the identity.

    Conv/linear weights are He-normal on the fan-in; biases and beta ~ N(0, 0.1); gamma in [0.5, 1.5].
    With ``calibrate`` each BN's running mean/var are set near the statistics its input really has
    on a N(0, 1) batch (mean jittered by 0.1 std, var scaled by U(0.5, 1.5)), so activations stay
    O(1) at any depth as in a trained net; otherwise mean ~ N(0, 0.1), var in [0.5, 1.5].
    The same seed gives the same weights on every machine.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise WeightsError(f"seed must be a non-negative int, got {seed!r}")
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
        out[p.name] = v
    if calibrate:
        _calibrate_batch_norms(graph, out, rng)
    return {k: v.astype(dtype) for k, v in out.items()}


def _calibrate_batch_norms(graph: Graph, w: Weights, rng: np.random.Generator) -> None:
    """Set BN running statistics near their inputs' statistics on a random batch (in place)."""
    from .reference import run_node

    # enough samples per channel at the smallest BN map (1x1 at small input sizes)
    smallest = min((graph.shapes[n.inputs[0]][1] * graph.shapes[n.inputs[0]][2] for n in graph.nodes
                    if n.op == "batch_norm"), default=64)
    batch = int(np.clip(np.ceil(64 / smallest), 2, 32))
    values = {INPUT: rng.standard_normal((batch, *graph.input_shape))}
    for node in graph.nodes:
        inputs = [values[i] for i in node.inputs]
        if node.op == "batch_norm":
            mean, std = inputs[0].mean(axis=(0, 2, 3)), inputs[0].std(axis=(0, 2, 3))
            w[f"{node.name}.mean"] = mean + 0.1 * std * rng.standard_normal(mean.shape)
            # a floor of 10% of the layer's mean variance keeps dead or near-constant channels finite
            var = std**2 + 0.1 * np.mean(std**2) + 1e-6
            w[f"{node.name}.var"] = var * rng.uniform(0.5, 1.5, mean.shape)
        values[node.name] = run_node(node, inputs, w, graph.shapes[node.name])
        for i in graph.released[node.name]:
            del values[i]


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
        problems.append(f"missing keys {few(missing)}")
    if extra:
        problems.append(f"unexpected keys {few(extra)}")
    out: Weights = {}
    for name, shape in want.items():
        if name not in weights:
            continue
        try:
            v = np.asarray(weights[name])
        except (ValueError, TypeError) as e:
            problems.append(f"{name} is not an array ({type(weights[name]).__name__}: {e})")
            continue
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


def few(keys: list[str], n: int = 8) -> str:
    """``['a', 'b', ... (5 more)]``: a short list of names for error messages."""
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"[{shown}{f', ... ({len(keys) - n} more)' if len(keys) > n else ''}]"


def umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(path) -> int:
    """The permission bits ``open(path, "w")`` would leave: an existing file keeps its mode, a new file
    gets ``0o666 & ~umask`` (a temp file from mkstemp is 0600, so atomic writes set this explicitly)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~umask()


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``; nothing is left behind on failure.

    The file gets the mode a plain ``open()`` would give it (the umask is respected).
    """
    return atomic_write_all([(path, write)])[0]


def atomic_write_all(items) -> list[Path]:
    """Write several files together: ``items`` is ``[(path, write), ...]``; every ``write(tmp)`` runs (in
    order) into a temp file beside its target, and only when all succeeded are the temps renamed onto
    their targets, in reverse order (the first item, the main file, appears last). On a failure before
    the renames every temp is removed and no target is touched."""
    paths = [Path(p) for p, _ in items]
    for path in paths:
        if not path.parent.is_dir():
            raise LightnetsError(f"cannot write {path}: directory {path.parent} does not exist; create it first")
        if path.is_dir():
            raise LightnetsError(f"cannot write {path}: it is a directory; pass a file path")
    tmps: list[str] = []
    try:
        for path in paths:
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            except OSError as e:
                raise LightnetsError(f"cannot write {path}: directory {path.parent} is not writable "
                                     f"({e.strerror}); choose a writable directory or fix its permissions") from None
            os.close(fd)
            tmps.append(tmp)
        for (_, write), tmp in zip(items, tmps, strict=True):
            write(tmp)
        for path, tmp in zip(paths, tmps, strict=True):
            os.chmod(tmp, plain_mode(path))
        for path, tmp in reversed(list(zip(paths, tmps, strict=True))):
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            Path(tmp).unlink(missing_ok=True)
        raise
    return paths


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes: written into canonical file metadata, checked on read."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        v = np.asarray(arrays[k])
        h.update(f"{k}|{v.dtype.str}|{v.shape}|".encode())
        h.update(v.tobytes())
    return h.hexdigest()


def write_safetensors(arrays, tmp, metadata):
    from safetensors.numpy import save_file

    save_file(arrays, tmp, metadata=metadata)


NPZ_META = "__lightnets__"  # the .npz entry (a 0-d str array of JSON) holding a canonical file's metadata


def write_npz(arrays, tmp, metadata=None):
    extra = {NPZ_META: np.array(json.dumps(metadata))} if metadata else {}
    with open(tmp, "wb") as f:
        np.savez(f, **arrays, **extra)


def save(weights: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None,
         overwrite: bool = False) -> Path:
    """Write canonical weights to ``.safetensors`` or ``.npz`` atomically, with ``metadata`` (str -> str)
    and a sha256 of the tensors: safetensors metadata, or the ``__lightnets__`` JSON entry of an .npz.

    An existing file is replaced only with ``overwrite=True``.
    """
    suffix = Path(path).suffix
    if suffix not in (".safetensors", ".npz"):
        raise FileFormatError(f"cannot save canonical weights as {suffix!r}; use .safetensors or .npz")
    if not overwrite and Path(path).exists():
        raise LightnetsError(f"{path} already exists; pass overwrite=True to replace it, or choose another path")
    if not isinstance(weights, Mapping):
        raise WeightsError(f"weights must be a mapping of name -> array, got {type(weights).__name__}")
    if NPZ_META in weights:
        raise WeightsError(f"{NPZ_META!r} is reserved for lightnets metadata and cannot be a weight name")
    arrays = {k: np.ascontiguousarray(v) for k, v in weights.items()}
    meta = {"format": "lightnets.canonical", **(metadata or {}), "sha256": digest(arrays)}
    if suffix == ".safetensors":
        return atomic_write(path, lambda tmp: write_safetensors(arrays, tmp, meta))
    return atomic_write(path, lambda tmp: write_npz(arrays, tmp, meta))


def _check_digest(path, arrays, meta) -> None:
    if "sha256" in meta and meta["sha256"] != digest(arrays):
        raise FileFormatError(f"{path}: tensor bytes do not match the sha256 recorded when lightnets wrote it; "
                              "the file was modified or corrupted - re-export it")


def read_safetensors(path) -> tuple[Weights, dict[str, str]]:
    """Arrays and metadata of a ``.safetensors`` file; a recorded sha256 must match the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 -- any parse failure is a bad file
        raise FileFormatError(f"{path} is not a readable .safetensors file ({type(e).__name__}: {str(e)[:200]}); "
                              "it may be truncated or corrupt, or of another format - re-export it") from None
    _check_digest(path, arrays, meta)
    return arrays, meta


def _read_npz(path: Path) -> tuple[Weights, dict[str, str]]:
    if not zipfile.is_zipfile(path):
        raise FileFormatError(f"{path} is not an .npz (zip) archive; it may be truncated, corrupt or a renamed "
                              ".npy/pickle - re-export it with lightnets.weights.save")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, ValueError) and "Object arrays" in str(e):
            raise FileFormatError(f"{path} holds pickled object arrays, which lightnets never loads (unpickling "
                                  "can run code); re-export it with plain float arrays") from None
        raise FileFormatError(f"{path} is not a readable {path.suffix} file ({e}); it may be truncated or "
                              "corrupt - re-export it") from None
    meta = _npz_meta(path, arrays.pop(NPZ_META)) if NPZ_META in arrays else {}
    _check_digest(path, arrays, meta)
    return arrays, meta


def _npz_meta(path, raw: np.ndarray) -> dict[str, str]:
    try:
        meta = json.loads(str(raw[()])) if raw.dtype.kind == "U" and raw.ndim == 0 else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise FileFormatError(f"{path}: its {NPZ_META!r} entry is not lightnets metadata (a JSON object); "
                              "the file is corrupt or not written by lightnets - re-export it")
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Only the metadata of a canonical file (the safetensors header, or the .npz ``__lightnets__`` entry)."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"weights file {path} does not exist; check the path (or save the weights first)")
    if path.suffix == ".npz":
        if not zipfile.is_zipfile(path):
            return _read_npz(path)[1]  # raises the not-a-zip error
        try:
            with np.load(path, allow_pickle=False) as z:
                if NPZ_META not in z.files:
                    return {}
                raw = z[NPZ_META]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            return _read_npz(path)[1]  # raises the precise error
        return _npz_meta(path, raw)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 -- any parse failure is a bad file
        raise FileFormatError(f"{path} is not a readable .safetensors file ({type(e).__name__}: {str(e)[:200]}); "
                              "it may be truncated or corrupt, or of another format - re-export it") from None


def read_canonical(path: str | os.PathLike) -> tuple[Weights, dict[str, str]]:
    """Arrays and metadata of a canonical ``.safetensors`` (sha256 checked) or ``.npz`` (never unpickles)."""
    path = Path(path)
    if path.suffix in (".pkl", ".pickle"):
        raise FileFormatError(f"{path} is a pickle; lightnets never unpickles (a pickle can run arbitrary code). "
                              "Re-export the weights as .safetensors or .npz")
    if not path.is_file():
        raise FileFormatError(f"weights file {path} does not exist; check the path (or save the weights first)")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix == ".npz":
        return _read_npz(path)
    raise FileFormatError(f"unknown canonical weights suffix {path.suffix!r} for {path}; use .safetensors or .npz")


def load(path: str | os.PathLike) -> Weights:
    """Read canonical weights from ``.safetensors`` (sha256 checked) or ``.npz`` (never unpickles)."""
    return read_canonical(path)[0]
