"""Helpers shared by the family builders."""

from __future__ import annotations

from ..errors import SpecError


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never going down by more than 10%.

    The rounding of the TF-slim MobileNet code, used by torchvision, timm, keras and paddle.
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def width_id(width: float) -> str:
    """0.75 -> '075', 1.0 -> '100', 1.3 -> '130'."""
    return f"{round(width * 100):03d}"


def _hw(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def tf_same_pads(size, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of TF/Keras ``padding="same"`` on an input of ``size`` (int or (h, w)).

    TF pads ``max((ceil(n/s) - 1)*s + k_eff - n, 0)`` in total and puts the odd pixel at the
    bottom/right, so stride 2 on an even input pads (0, 1) for k=3 (DESIGN §1).
    """
    k = (kernel - 1) * dilation + 1
    out = []
    for n in _hw(size):
        total = max((-(-n // stride) - 1) * stride + k - n, 0)
        out += [total // 2, total - total // 2]
    return tuple(out)


def keras_correct_pads(size, kernel: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of keras.applications ``imagenet_utils.correct_pad`` (then 'valid').

    ``((k//2 - adjust, k//2), ...)`` with ``adjust = 1 - n % 2``: one pixel less at the top/left on
    even inputs.
    """
    out = []
    for n in _hw(size):
        out += [kernel // 2 - (1 - n % 2), kernel // 2]
    return tuple(out)


def pads_for(padding: str, size, kernel: int, stride: int, kind: str = "same") -> tuple[int, int, int, int]:
    """Pads of one conv under a padding flavour.

    ``padding="symmetric"``: k//2 on every side (torch/paddle ``padding=k//2``). ``padding="keras"``:
    ``kind`` says what keras.applications does there: 'same' (TF same), 'correct_pad'
    (ZeroPadding2D(correct_pad) + valid) or 'pad01' (ZeroPadding2D(((0, 1), (0, 1))) + valid, keras
    MobileNet V1's strided depthwise convs, whatever the input size).
    """
    if padding == "symmetric":
        return (kernel // 2,) * 4
    if padding != "keras":
        raise SpecError(f"padding must be 'symmetric' or 'keras', got {padding!r}")
    if kind == "same" or stride == 1:
        return tf_same_pads(size, kernel, stride)
    if kind == "correct_pad":
        return keras_correct_pads(size, kernel)
    if kind == "pad01":
        return (0, 1, 0, 1)
    raise SpecError(f"unknown keras padding kind {kind!r}")
