"""THE table of weight layouts: canonical <-> native, for every backend and zoo.

Canonical layouts: conv OIHW (depthwise ``(C*m, 1, kh, kw)``), linear ``(out, in)``, vectors as is.
A native layout is named here once, with its two directions and its shape rule; backends and zoo
importers name a layout, they never write a transpose of their own.

========== ==================================================== =============================
layout     native array                                         used by
========== ==================================================== =============================
``id``     same as canonical                                    torch, paddle convs, vectors
``T``      linear as ``(in, out)``                              paddle Linear, keras Dense
``conv1x1``linear stored as a 1x1 conv ``(O, I, 1, 1)``         timm ``conv_head``
``khwio``  conv ``(kh, kw, I/g, O)``                            keras Conv2D
``khwcm``  depthwise ``(kh, kw, C, m)`` (canonical ``(C*m, 1, kh, kw)``) keras DepthwiseConv2D
``k11io``  linear stored as a keras 1x1 conv ``(1, 1, I, O)``   keras.applications MobileNet heads
``ohwi``   conv ``(O, kh, kw, I/g)``                            TFLite CONV_2D
``1hwc``   depthwise ``(1, kh, kw, C*m)``                       TFLite DEPTHWISE_CONV_2D
========== ==================================================== =============================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .errors import SpecError


class Layout(NamedTuple):
    """One native layout: ``to_native(v, c)``, ``to_canonical(v, c)`` and ``native_shape(shape, c)``,
    where ``c`` is the node's input channel count (only ``khwcm`` needs it, for the multiplier)."""

    to_native: Callable[[np.ndarray, int], np.ndarray]
    to_canonical: Callable[[np.ndarray, int], np.ndarray]
    native_shape: Callable[[tuple, int], tuple]


LAYOUTS: dict[str, Layout] = {
    "id": Layout(lambda v, c: v, lambda v, c: v, lambda s, c: tuple(s)),
    "T": Layout(lambda v, c: v.T, lambda v, c: v.T, lambda s, c: tuple(reversed(s))),
    "conv1x1": Layout(lambda v, c: v.reshape(*v.shape, 1, 1), lambda v, c: v.reshape(v.shape[:2]),
                      lambda s, c: (*s, 1, 1)),
    "khwio": Layout(lambda v, c: v.transpose(2, 3, 1, 0), lambda v, c: v.transpose(3, 2, 0, 1),
                    lambda s, c: (s[2], s[3], s[1], s[0])),
    "khwcm": Layout(lambda v, c: v.reshape(c, -1, *v.shape[2:]).transpose(2, 3, 0, 1),
                    lambda v, c: v.transpose(2, 3, 0, 1).reshape(-1, 1, *v.shape[:2]),
                    lambda s, c: (s[2], s[3], c, s[0] // c)),
    "k11io": Layout(lambda v, c: v.T[None, None], lambda v, c: v[0, 0].T, lambda s, c: (1, 1, s[1], s[0])),
    "ohwi": Layout(lambda v, c: v.transpose(0, 2, 3, 1), lambda v, c: v.transpose(0, 3, 1, 2),
                   lambda s, c: (s[0], s[2], s[3], s[1])),
    "1hwc": Layout(lambda v, c: v.transpose(1, 2, 3, 0), lambda v, c: v.transpose(3, 0, 1, 2),
                   lambda s, c: (1, s[2], s[3], s[0])),
}


# Activations: lightnets' arrays are NCHW; keras, LiteRT and NHWC files hold (N, H, W, C). The one pair of transposes.
TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def to_nhwc(x, dtype=None) -> np.ndarray:
    """An NCHW batch as a contiguous NHWC array (in ``dtype``); other ranks are only cast."""
    x = np.asarray(x)
    return np.ascontiguousarray(x.transpose(TO_NHWC) if x.ndim == 4 else x, dtype=dtype)


def to_nchw(y, dtype=None) -> np.ndarray:
    """A native NHWC map as a contiguous NCHW array (in ``dtype``); other ranks (logits) are only cast."""
    y = np.asarray(y, dtype)
    return np.ascontiguousarray(y.transpose(TO_NCHW)) if y.ndim == 4 else y


def _get(layout: str) -> Layout:
    if layout not in LAYOUTS:
        raise SpecError(f"unknown weight layout {layout!r}; layouts are {', '.join(LAYOUTS)}")
    return LAYOUTS[layout]


def to_native(v, layout: str, in_channels: int | None = None) -> np.ndarray:
    """A canonical array in the native ``layout``."""
    v = np.asarray(v)
    return _get(layout).to_native(v, in_channels if in_channels is not None else v.shape[0])


def to_canonical(v, layout: str, in_channels: int | None = None) -> np.ndarray:
    """A native array in ``layout`` -> canonical (inverse of :func:`to_native`)."""
    v = np.asarray(v)
    c = in_channels if in_channels is not None else (v.shape[2] if v.ndim == 4 else 0)
    return _get(layout).to_canonical(v, c)


def native_shape(shape, layout: str, in_channels: int | None = None) -> tuple:
    """The native shape of a canonical ``shape`` in ``layout``."""
    return _get(layout).native_shape(tuple(shape), in_channels if in_channels is not None else shape[0])
