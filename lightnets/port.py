"""Weight files of every format, and porting a model between torch, keras and paddle.

Formats (chosen by file suffix, or by an explicit format name):

==================== ===================== ==================================================
format               suffix                reader / writer
==================== ===================== ==================================================
``safetensors``      ``.safetensors``      canonical; metadata ``{"format": "lightnets.canonical"}``
``npz``              ``.npz``              canonical; ``np.load(allow_pickle=False)``
``torch``            ``.pt`` / ``.pth``    torch state_dict; ``torch.load(weights_only=True)``
``torch-safetensors````.safetensors``      torch state_dict; metadata ``{"format": "torch"}``
``keras-weights``    ``.weights.h5``       ``model.save_weights`` / ``model.load_weights``
``keras-model``      ``.keras``            ``model.save`` / ``keras.saving.load_model`` (safe mode)
``paddle``           ``.pdparams``         ``paddle.save`` / ``paddle.load`` of the state_dict
==================== ===================== ==================================================

A ``.safetensors`` file without lightnets metadata is torch if its keys are torch BN names
(``running_mean``/``running_var``), canonical otherwise. lightnets writes a sha256 of the tensors
into safetensors metadata and checks it on read, so tampered bytes are an error, not silent.

Pickle: ``paddle.load`` unpickles. lightnets calls it only for a file the user names as a native
paddle checkpoint (suffix ``.pdparams`` or ``format="paddle"``) - never to sniff a file, never for
``.npz`` (read with ``allow_pickle=False``) or torch files (``weights_only=True``). Only load
``.pdparams`` files you trust.

Every write is atomic (temp file in the target directory, then rename); native readers and writers
go through the backends' one canonical <-> native mapping (a model of the format's backend is built
to read or write the file).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import weights as W
from .errors import FileFormatError, LightnetsError, UnknownBackendError, WeightsError
from .graph import Graph

CANONICAL = ("safetensors", "npz")
FORMAT_BACKEND = {"torch": "torch", "torch-safetensors": "torch", "keras-weights": "keras",
                  "keras-model": "keras", "paddle": "paddle"}
FORMATS = CANONICAL + tuple(FORMAT_BACKEND)
ZOO_PREFIXES = ("torchvision", "timm", "paddle")
PROBE_TOLERANCE = 1e-4  # float32 target vs source, relative to max |logit|
PROBE_SEED = 0


# --- formats --------------------------------------------------------------------------------------
def format_of(path, format: str | None = None, reading: bool = True) -> str:
    """The format of ``path``: ``format`` if given (checked), else from the suffix (and, for a
    ``.safetensors`` being read, its metadata or key names)."""
    name = Path(path).name
    if format is not None:
        if format in ("canonical",):
            format = "npz" if name.endswith(".npz") else "safetensors"
        if format == "torch" and name.endswith(".safetensors"):
            format = "torch-safetensors"
        if format == "keras":
            format = "keras-model" if name.endswith(".keras") else "keras-weights"
        if format not in FORMATS:
            raise FileFormatError(f"unknown weights format {format!r}; choose one of {', '.join(FORMATS)}")
        return format
    if name.endswith(".weights.h5"):
        return "keras-weights"
    suffix = Path(path).suffix
    if suffix == ".safetensors":
        return _safetensors_kind(path) if reading and Path(path).is_file() else "safetensors"
    by_suffix = {".npz": "npz", ".pt": "torch", ".pth": "torch", ".keras": "keras-model", ".pdparams": "paddle"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    raise FileFormatError(f"cannot tell the weights format of {name!r} from its suffix; use .safetensors, "
                          ".npz, .pt/.pth, .weights.h5, .keras or .pdparams, or name the format "
                          f"({', '.join(FORMATS)})")


def _safetensors_kind(path) -> str:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta, keys = f.metadata() or {}, list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise FileFormatError(f"{path} is not a readable .safetensors file ({e}); it may be truncated or "
                              "corrupt - re-export it") from None
    if meta.get("format") == "lightnets.canonical":
        return "safetensors"
    if meta.get("format") in ("torch", "pt"):
        return "torch-safetensors"
    return "torch-safetensors" if any(k.endswith((".running_mean", ".running_var")) for k in keys) \
        else "safetensors"


def _unreadable(path, fmt: str, e: BaseException) -> FileFormatError:
    return FileFormatError(f"{path} is not a readable {fmt} file ({type(e).__name__}: {str(e)[:200]}); it may "
                           "be truncated, corrupt or of another format - re-export it")


# --- reading ------------------------------------------------------------------------------------
def read_canonical(path, format: str | None = None) -> W.Weights:
    """Canonical weights from a ``.safetensors``/``.npz`` file (checksum verified when present)."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"weights file {path} does not exist")
    fmt = format_of(path, format)
    if fmt in CANONICAL:
        return W.load(path)
    raise FileFormatError(f"{path} is a native {fmt} file, not canonical weights; load it with "
                          "lightnets.load_weights(model, path) or lightnets.port(path, arch=...)")


def _num_classes_hint(graph_fc: str, arrays: Mapping[str, np.ndarray], fmt: str) -> int | None:
    """The class count stored in a file whose classifier weight is ``graph_fc`` (canonical name)."""
    v = arrays.get(graph_fc)
    if v is None or np.ndim(v) != 2:
        return None
    return int(np.shape(v)[1] if fmt == "paddle" else np.shape(v)[0])


def _fc_name(graph: Graph) -> str:
    return [p.name for p in graph.params if p.role == "weight"][-1]


def _check_native(graph: Graph, want: Mapping[str, tuple], got: Mapping[str, np.ndarray], fmt: str,
                  skip=("num_batches_tracked",)) -> None:
    missing = [k for k in want if k not in got and not k.endswith(skip)]
    extra = sorted(k for k in got if k not in want)
    bad = [f"{k} has shape {tuple(np.shape(got[k]))}, expected {tuple(want[k])}" for k in want
           if k in got and tuple(np.shape(got[k])) != tuple(want[k])]
    nonfloat = [k for k in want if k in got and not k.endswith(skip) and np.asarray(got[k]).dtype.kind != "f"]
    problems = []
    if missing:
        problems.append(f"missing keys {W._few(missing)}")
    if extra:
        problems.append(f"unexpected keys {W._few(extra)}")
    if bad:
        problems.append("; ".join(bad[:8]) + (f" ... ({len(bad) - 8} more)" if len(bad) > 8 else ""))
    if nonfloat:
        problems.append(f"non-float tensors {W._few(nonfloat)}")
    if problems:
        raise WeightsError(f"{fmt} state dict does not fit graph {graph.name!r}: " + "; ".join(problems)
                           + ". Check the model id, --num-classes and that the file was saved from it.")


def _numpy(v) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "detach"):
        return v.detach().cpu().numpy()
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v)


def read_native(path, graph_for, fmt: str, dtype: str = "float32"):
    """Read a native file -> ``(source_model, canonical_weights)``.

    ``graph_for(num_classes_or_None)`` gives the graph to read into (the class count is taken from the
    file where the format allows). The source model is the format's backend model holding the file's
    weights, so the port can run it.
    """
    from .api import load_backend

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"weights file {path} does not exist")
    if fmt in ("torch", "torch-safetensors"):
        be = load_backend("torch")
        import torch

        if fmt == "torch":
            try:
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001
                raise _unreadable(path, "torch .pt", e) from None
            if not isinstance(sd, Mapping) or not all(hasattr(v, "shape") for v in sd.values()):
                raise FileFormatError(f"{path} holds a {type(sd).__name__}, not a torch state_dict of tensors; "
                                      "save model.state_dict()")
            sd = {k: _numpy(v) for k, v in sd.items()}
        else:
            sd = W.read_safetensors(path)[0]
        probe = graph_for(None)
        graph = graph_for(_num_classes_hint(_fc_name(probe), sd, fmt))
        model = be.build(graph, dtype)
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        _check_native(graph, want, sd, fmt)
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=False)
        return model, be.get_weights(model)
    if fmt == "paddle":
        be = load_backend("paddle")  # raises BackendConflictError if tensorflow came first
        import paddle

        try:  # pickle: only for a file the user passed explicitly as a native paddle checkpoint
            sd = paddle.load(str(path), return_numpy=True)
        except Exception as e:  # noqa: BLE001
            raise _unreadable(path, "paddle .pdparams", e) from None
        if not isinstance(sd, Mapping):
            raise FileFormatError(f"{path} holds a {type(sd).__name__}, not a paddle state_dict")
        sd = {k: _numpy(v) for k, v in sd.items()}
        graph = graph_for(_num_classes_hint(_fc_name(graph_for(None)), sd, fmt))
        model = be.build(graph, dtype)
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        _check_native(graph, want, sd, fmt)
        model.set_state_dict(sd)
        return model, be.get_weights(model)
    if fmt in ("keras-weights", "keras-model"):
        be = load_backend("keras")
        return _read_keras(path, graph_for, fmt, be, dtype)
    raise FileFormatError(f"{fmt!r} is not a native format")


def _read_keras(path, graph_for, fmt, be, dtype):
    import keras

    if fmt == "keras-model":
        try:
            loaded = keras.saving.load_model(str(path), custom_objects=be.custom_objects(), compile=False,
                                             safe_mode=True)
        except Exception as e:  # noqa: BLE001
            raise _unreadable(path, "keras .keras", e) from None
        graph = graph_for(int(loaded.output_shape[-1]))
        model = be.build(graph, dtype)
        names = {layer.name for layer in loaded.layers}
        problems = []
        for layer in model.layers:
            if not layer.weights:
                continue
            if layer.name not in names:
                problems.append(f"missing layer {layer.name!r}")
                continue
            got = loaded.get_layer(layer.name).get_weights()
            want = [tuple(v.shape) for v in layer.get_weights()]
            if [tuple(g.shape) for g in got] != want:
                problems.append(f"layer {layer.name!r} has shapes {[tuple(g.shape) for g in got]}, expected {want}")
                continue
            layer.set_weights(got)
        extra = sorted(n for n in names if n not in {la.name for la in model.layers})
        if extra:
            problems.append(f"unexpected layers {W._few(extra)}")
        if problems:
            raise WeightsError(f"keras model {path} does not fit graph {graph.name!r}: " + "; ".join(problems[:8]))
        return loaded, be.get_weights(model)
    nc = _h5_num_classes(path, graph_for, be)
    graph = graph_for(nc)
    model = be.build(graph, dtype)
    try:
        model.load_weights(str(path))
    except Exception as e:  # noqa: BLE001 -- keras raises ValueError on mismatch, OSError on a bad file
        kind = WeightsError if isinstance(e, ValueError) and "h5" not in type(e).__module__ else FileFormatError
        raise kind(f"cannot load {path} into graph {graph.name!r} ({type(e).__name__}: {str(e)[:300]}); it "
                   "is truncated, corrupt, or not saved from this model id / class count") from None
    return model, be.get_weights(model)


def _h5_num_classes(path, graph_for, be) -> int | None:
    """The class count in a Keras 3 ``.weights.h5``: the Dense output width not used by the graph's
    other linear layers (None if it cannot be told; the keras load then reports the mismatch)."""
    try:
        import h5py

        g = graph_for(None)
        fc = _fc_name(g)
        others = [p.shape[0] for p in g.params if p.role == "weight" and len(p.shape) == 2 and p.name != fc]
        widths = []
        with h5py.File(path, "r") as f:
            for name in f.get("layers", {}):
                v = f["layers"][name].get("vars", {}).get("0")
                if name.startswith("dense") and v is not None and len(v.shape) == 2:
                    widths.append(int(v.shape[1]))
        for w in others:
            if w in widths:
                widths.remove(w)
        return widths[0] if len(widths) == 1 else None
    except Exception:  # noqa: BLE001 -- the keras load below reports a bad file
        return None


# --- writing ------------------------------------------------------------------------------------
def _suffixed(write, suffix: str):
    """A writer for libraries that insist on a suffix: write ``tmp + suffix`` then rename onto ``tmp``."""
    def run(tmp):
        t2 = tmp + suffix
        try:
            write(t2)
            os.replace(t2, tmp)
        finally:
            Path(t2).unlink(missing_ok=True)
    return run


def _write_torch(model, tmp):
    import torch

    torch.save(model.state_dict(), tmp)


def _write_torch_safetensors(model, tmp):
    arrays = {k: np.array(v.detach().cpu().numpy(), order="C") for k, v in model.state_dict().items()}
    W._write_safetensors(arrays, tmp, {"format": "torch", "lightnets.graph": model.graph.name,
                                       "sha256": W.digest(arrays)})


def _write_keras_weights(model, tmp):
    model.save_weights(tmp)


def _write_keras_model(model, tmp):
    model.save(tmp)


def _write_paddle(model, tmp):
    import paddle

    paddle.save(model.state_dict(), tmp)


WRITERS = {"torch": _write_torch, "torch-safetensors": _write_torch_safetensors,
           "keras-weights": _write_keras_weights, "keras-model": _write_keras_model, "paddle": _write_paddle}
SUFFIX = {"keras-weights": ".weights.h5", "keras-model": ".keras"}


def check_writable(path, overwrite: bool = False) -> Path:
    """Refuse a missing/read-only directory or (without ``overwrite``) an existing file, before any work."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileFormatError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
    if path.is_dir():
        raise FileFormatError(f"{path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise LightnetsError(f"cannot write {path}: directory {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise LightnetsError(f"cannot write {path}: directory {path.parent} is not writable")
    return path


def save_weights(model, path, format: str | None = None, overwrite: bool = False) -> Path:
    """Save a lightnets model's weights in any format (by suffix or ``format``), atomically.

    An existing file is replaced only with ``overwrite=True``. A native format of another backend
    builds that backend's model of the same graph first.
    """
    from .api import backend_of, build

    check_writable(path, overwrite)
    be = backend_of(model)
    graph = be.graph_of(model)
    fmt = format_of(path, format, reading=False)
    canonical = be.get_weights(model)
    if fmt in CANONICAL:
        return W.save(canonical, path, {"lightnets.graph": graph.name}, overwrite=True)
    target = FORMAT_BACKEND[fmt]
    native = model if be.name == target else build(graph, target, weights=canonical,
                                                                   dtype=_dtype_name(canonical))
    write = WRITERS[fmt]

    def writer(tmp):
        write(native, tmp)
    if fmt in SUFFIX:
        writer = _suffixed(writer, SUFFIX[fmt])
    return W.atomic_write(path, writer)


def _dtype_name(weights: Mapping[str, np.ndarray]) -> str:
    kinds = {np.asarray(v).dtype for v in weights.values()}
    return "float64" if np.dtype("float64") in kinds else "float32"


def load_weights(model, weights, format: str | None = None) -> None:
    """Assign weights (canonical dict, or a file of any format) to ``model``; checked before assignment."""
    from .api import backend_of

    be = backend_of(model)
    graph = be.graph_of(model)
    if isinstance(weights, (str, os.PathLike)):
        fmt = format_of(weights, format)
        if fmt in CANONICAL:
            weights = read_canonical(weights, fmt)
        else:
            _, weights = read_native(weights, lambda nc: graph, fmt, _model_dtype(be, model))
    be.set_weights(model, W.check_weights(graph, weights))


def _model_dtype(be, model) -> str:
    return _dtype_name(be.get_weights(model))


# --- port ---------------------------------------------------------------------------------------
def _zoo_format(fmt: str | None):
    if fmt and ":" in fmt:
        zoo, name = fmt.split(":", 1)
        if zoo not in ZOO_PREFIXES:
            raise FileFormatError(f"unknown zoo {zoo!r} in {fmt!r}; zoos are {', '.join(ZOO_PREFIXES)}")
        return zoo, name
    return None


def _order_imports(*backends: str) -> None:
    """paddle must be imported before tensorflow (the reverse segfaults): import it first if needed."""
    if "paddle" in backends and "keras" in backends and "tensorflow" not in sys.modules:
        from .api import load_backend

        load_backend("paddle")


def _source_backend(source, fmt: str | None) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        z = _zoo_format(fmt)
        if z:
            return "paddle" if z[0] == "paddle" else "torch"
        f = format_of(source, fmt) if Path(source).is_file() else None
        return FORMAT_BACKEND.get(f)
    return None


def port(model_or_file, to: str = "keras", arch: str | None = None, from_format: str | None = None,
         num_classes: int | None = None, input_size: int = 224, dtype: str = "float32",
         return_info: bool = False):
    """Port a lightnets model, or a weights file of any format, to the ``to`` backend.

    - From a model: canonical export -> build in ``to``.
    - From a file: read it (``from_format`` or the suffix; a zoo checkpoint with ``from_format`` like
      ``"torchvision:mobilenet_v2"`` goes through :func:`lightnets.import_zoo`), check it against
      ``arch`` (every missing/extra/mis-shaped key named), build in ``to``.

    Before returning, the output shape and a probe output (fixed random input) of the target are
    compared with the source model (or, for canonical files, the float64 numpy reference): relative
    error <= 1e-4, else WeightsError. ``return_info`` also returns a summary dict.
    """
    from . import api, reference
    from . import zoo as Z

    if to not in api.BACKENDS:
        raise UnknownBackendError(f"unknown backend {to!r}; choose one of {', '.join(api.BACKENDS)}")
    source_fmt: str
    if isinstance(model_or_file, (str, os.PathLike)):
        path = Path(model_or_file)
        if arch is None:
            raise LightnetsError("porting a file needs arch= (the lightnets model id the weights belong to)")
        if not path.is_file():
            raise FileFormatError(f"weights file {path} does not exist")
        _order_imports(to, _source_backend(path, from_format) or "")
        zoo = _zoo_format(from_format)
        if zoo:
            source_model, graph, canonical, source_fmt = _read_zoo(path, zoo, arch, input_size)
            framework = Z.entry(*zoo).framework

            def run_source(x, m=source_model):
                return Z._forward(m, x, framework)
        else:
            fmt = format_of(path, from_format)
            source_fmt = fmt

            def graph_for(nc):
                return api.spec(arch, num_classes=num_classes or nc or 1000, input_size=input_size)
            if fmt in CANONICAL:
                raw = read_canonical(path, fmt)
                graph = graph_for(_num_classes_hint(_fc_name(graph_for(None)), raw, fmt))
                canonical = W.check_weights(graph, raw)
                run_source = None
            else:
                source_model, canonical = read_native(path, graph_for, fmt, dtype)
                if fmt == "keras-model":
                    graph = graph_for(int(source_model.output_shape[-1]))

                    def run_source(x, m=source_model):
                        return _run_keras_loaded(m, x)
                else:
                    graph = api.backend_of(source_model).graph_of(source_model)

                    def run_source(x, m=source_model):
                        return api.run(m, x)
                canonical = W.check_weights(graph, canonical)
    else:
        be = api.backend_of(model_or_file)
        _order_imports(to, be.name)
        graph = be.graph_of(model_or_file)
        canonical = W.check_weights(graph, be.get_weights(model_or_file))
        source_fmt = f"{be.name} model"

        def run_source(x, m=model_or_file):
            return api.run(m, x)
        if arch is not None and graph.name != arch:
            raise WeightsError(f"the model is {graph.name!r}, not {arch!r}")

    target = api.build(graph, to, weights=canonical, dtype=dtype)
    x = np.random.default_rng(PROBE_SEED).standard_normal((2, *graph.input_shape)).astype(np.float32)
    got = np.asarray(api.run(target, x.astype(dtype)), np.float64)
    if run_source is not None:
        want, against = np.asarray(run_source(x.astype(dtype)), np.float64), "source"
    else:
        want, against = reference.run(graph, canonical, x.astype(np.float64)), "float64 reference"
    if got.shape != want.shape or got.shape[1:] != tuple(graph.output_shape):
        raise WeightsError(f"port to {to}: output shape {got.shape} differs from the {against}'s {want.shape} "
                           f"(graph output {graph.output_shape}); the port is wrong")
    from .parity.tolerances import rel_error

    abs_err, rel = float(np.max(np.abs(got - want))), rel_error(got, want)
    if not rel <= PROBE_TOLERANCE:
        raise WeightsError(f"port to {to}: probe output differs from the {against} by {rel:.2e} relative "
                           f"(> {PROBE_TOLERANCE}); not returning a wrong model")
    if not return_info:
        return target
    info = {"arch": graph.name, "source_format": source_fmt, "target": to, "tensors": len(canonical),
            "params": int(sum(np.asarray(v).size for v in canonical.values())), "probe_against": against,
            "probe_shape": tuple(x.shape), "max_abs_diff": abs_err, "max_rel_diff": rel}
    return target, info


def _run_keras_loaded(model, x: np.ndarray) -> np.ndarray:
    y = np.asarray(model(x.transpose(0, 2, 3, 1), training=False))
    return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y


def _read_zoo(path: Path, zoo: tuple[str, str], arch: str, input_size: int):
    from . import zoo as Z

    e = Z.entry(*zoo)
    if e.arch != arch:
        raise WeightsError(f"{zoo[0]}:{zoo[1]} checkpoints are lightnets {e.arch!r}, not {arch!r}; "
                           f"pass --arch {e.arch}")
    fmt = "paddle" if e.framework == "paddle" else ("torch-safetensors" if path.suffix == ".safetensors"
                                                     else "torch")
    if e.framework == "paddle":
        from .api import load_backend

        load_backend("paddle")
        import paddle

        try:  # pickle: the user named this file as a paddle checkpoint
            sd = paddle.load(str(path), return_numpy=True)
        except Exception as ex:  # noqa: BLE001
            raise _unreadable(path, "paddle .pdparams", ex) from None
    elif fmt == "torch":
        import torch

        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as ex:  # noqa: BLE001
            raise _unreadable(path, "torch .pt", ex) from None
    else:
        sd = W.read_safetensors(path)[0]
    if not isinstance(sd, Mapping):
        raise FileFormatError(f"{path} holds a {type(sd).__name__}, not a state dict")
    sd = {k: _numpy(v) for k, v in sd.items()}
    graph, canonical, info = Z.import_zoo(zoo[0], zoo[1], sd, input_size=input_size)
    model = e.make(info["num_classes"])
    Z._load_native(model, Z._native_values(sd, e.framework, model), e.framework)
    return model, graph, canonical, f"{zoo[0]}:{zoo[1]} ({fmt})"
