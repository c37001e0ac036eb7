"""The lightnets exception hierarchy: every error names the problem and the fix."""

from __future__ import annotations

import difflib


class LightnetsError(Exception):
    """Base class of every error lightnets raises on bad input or environment."""


class SpecError(LightnetsError, ValueError):
    """An op, its attributes or a graph is invalid."""


class UnknownModelError(LightnetsError, KeyError):
    """A model id is not registered."""

    def __init__(self, name: str, known: list[str]):
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(
            f"unknown model id {name!r}.{hint} Run `lightnets list` or lightnets.list_models() "
            f"to see the {len(known)} registered ids."
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class UnknownBackendError(LightnetsError, ValueError):
    """A backend name is not one of the supported backends."""


class BackendNotInstalledError(LightnetsError, ImportError):
    """The framework a backend needs is not importable."""


class BackendConflictError(LightnetsError, RuntimeError):
    """Two frameworks cannot share this process (tensorflow before paddle segfaults)."""


class DTypeError(LightnetsError, ValueError):
    """A dtype a model or runtime does not compute in."""


class WeightsError(LightnetsError, ValueError):
    """Weights do not match the graph: missing, extra, mis-shaped or non-finite entries."""


class InputShapeError(LightnetsError, ValueError):
    """An input tensor has the wrong rank, channels, size or dtype."""


class FileFormatError(LightnetsError, ValueError):
    """A weights or graph file is unreadable, truncated, of the wrong format or of another arch."""


class RuntimeFailure(LightnetsError, RuntimeError):
    """A file's own runtime (ONNX Runtime, LiteRT) failed to load or run it during an import or an export."""


def runtime_failure(path, runtime: str, tensor: str, shape, error: BaseException, fix: str) -> RuntimeFailure:
    """A :class:`RuntimeFailure` naming the file, the runtime, the tensor fed (name and shape), the runtime's own
    message (its first line) and the fix."""
    name = getattr(path, "name", None) or str(path)
    first = (str(error).strip().splitlines() or [""])[0][:300]
    return RuntimeFailure(f"{name}: {runtime} failed on input tensor {tensor!r} of shape {tuple(shape)} "
                          f"({type(error).__name__}: {first}); {fix}")
