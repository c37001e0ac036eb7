"""Helpers shared by the family builders."""

from __future__ import annotations

from typing import NamedTuple

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


def pads_for(padding: str, kernel: int, stride: int, kind: str = "same"):
    """Padding of one conv under a padding flavour: 4 explicit pads, or ``"same"`` (TF "same", resolved by
    shape inference for the actual input size, see ``ops.effective_pads``).

    ``padding="symmetric"``: k//2 on every side (torch/paddle ``padding=k//2``). ``padding="keras"``:
    ``kind`` says what keras.applications does there: 'same' (TF same) and 'correct_pad'
    (ZeroPadding2D(correct_pad) + valid, which is TF same for stride 2 at the size keras builds for)
    both give ``"same"``; 'pad01' is ZeroPadding2D(((0, 1), (0, 1))) + valid, keras MobileNet V1's
    strided depthwise convs, whatever the input size.
    """
    if padding == "symmetric":
        return (kernel // 2,) * 4
    if padding != "keras":
        raise SpecError(f"padding must be 'symmetric' or 'keras', got {padding!r}")
    if kind in ("same", "correct_pad") or stride == 1:
        return "same"
    if kind == "pad01":
        return (0, 1, 0, 1)
    raise SpecError(f"unknown keras padding kind {kind!r}")


class FeaturePoint(NamedTuple):
    """One feature map a family offers as a backbone output (``lightnets.features``).

    ``module``: the stage's name (timm's module name for the families timm has, else the zoo twin's or
    the paper's); ``node``: the IR node whose output it is, or a node-name prefix (a block) whose last
    node is; ``stage``: the stage number (timm's where timm reports one; 0 is the stem).
    """

    module: str
    node: str
    stage: int


def squeeze_excite(g, name: str, x: str, squeeze: int, act: str = "relu", gate: str = "hardsigmoid") -> str:
    """SE: global pool -> 1x1 conv (bias) to ``squeeze`` -> ``act`` -> 1x1 conv (bias) back -> ``gate`` -> scale
    ``x``, as ``name.pool .fc1 .act .fc2 .gate .scale`` (the squeeze rule is the family's)."""
    c = g.channels(x)
    s = g.add(f"{name}.pool", "global_avg_pool", x)
    s = g.add(f"{name}.fc1", "conv2d", s, out_channels=squeeze, kernel=1, bias=True)
    s = g.add(f"{name}.act", "activation", s, kind=act)
    s = g.add(f"{name}.fc2", "conv2d", s, out_channels=c, kernel=1, bias=True)
    s = g.add(f"{name}.gate", "activation", s, kind=gate)
    return g.add(f"{name}.scale", "mul", [x, s])


def residual(g, name: str, inp: str, x: str) -> str:
    """``inp + x`` as ``name`` where the block kept the shape of its input (an inverted residual's shortcut), else
    ``x``."""
    return g.add(name, "add", [inp, x]) if g.shape(x) == g.shape(inp) else x
