"""GhostNet (Han et al. 2020, table 7): ghost modules in MobileNetV3-like bottlenecks.

Ghost module (ratio 2): a primary 1x1 conv makes ``ceil(out / 2)`` channels, a cheap 3x3 depthwise
conv makes as many again from them; concat, keep the first ``out``. Ghost bottleneck: ghost module
(relu) -> [3x3/5x5 depthwise stride 2 + BN] -> [SE] -> ghost module (no activation), plus a shortcut
(identity, or depthwise + BN + 1x1 + BN when the shape changes).

Conventions of timm's ``ghostnet_050/100/130`` (GhostNet v1, the official huawei-noah code): widths
``make_divisible(c * width, 4)``; SE reduce ``make_divisible(expanded * 0.25, 4)`` with relu and a
hardsigmoid gate; head: 1x1 conv to ``960 * width`` + BN + relu, global pool, 1x1 conv to 1280 with
bias + relu (written here as flatten + linear: same math and parameters), dropout 0.2, linear.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ..graph import Graph, GraphBuilder
from .common import FeaturePoint, make_divisible


class Bneck(NamedTuple):
    """A row of table 7: kernel of the depthwise conv, expanded and output channels, SE ratio, stride."""

    kernel: int
    exp: int
    out: int
    se: float
    stride: int


STEM = 16
BLOCKS = (
    Bneck(3, 16, 16, 0, 1),
    Bneck(3, 48, 24, 0, 2),
    Bneck(3, 72, 24, 0, 1),
    Bneck(5, 72, 40, 0.25, 2),
    Bneck(5, 120, 40, 0.25, 1),
    Bneck(3, 240, 80, 0, 2),
    Bneck(3, 200, 80, 0, 1),
    Bneck(3, 184, 80, 0, 1),
    Bneck(3, 184, 80, 0, 1),
    Bneck(3, 480, 112, 0.25, 1),
    Bneck(3, 672, 112, 0.25, 1),
    Bneck(5, 672, 160, 0.25, 2),
    Bneck(5, 960, 160, 0, 1),
    Bneck(5, 960, 160, 0.25, 1),
    Bneck(5, 960, 160, 0, 1),
    Bneck(5, 960, 160, 0.25, 1),
)
LAST_CONV = 960
HEAD = 1280
DIVISOR = 4
RATIO = 2
DFC_KERNEL = 5  # GhostNetV2's 1xK / Kx1 depthwise pair


def _ghost(g: GraphBuilder, name: str, x: str, out: int, act: str | None, eps: float, dfc: bool = False) -> str:
    init = math.ceil(out / RATIO)
    primary = g.conv_bn_act(f"{name}.primary", x, init, 1, act=act, eps=eps)
    cheap = g.conv_bn_act(f"{name}.cheap", primary, init * (RATIO - 1), 3, groups=init, act=act, eps=eps)
    y = g.add(f"{name}.concat", "concat", [primary, cheap])
    if g.channels(y) != out:
        y = g.add(f"{name}.slice", "slice_channels", y, start=0, stop=out)
    if dfc:  # GhostNetV2: gate the module's output with DFC attention of its input (after primary/cheap: timm's order)
        y = g.add(f"{name}.scale", "mul", [y, _dfc_gate(g, f"{name}.dfc", x, y, eps)])
    return y


def _dfc_gate(g: GraphBuilder, name: str, x: str, like: str, eps: float) -> str:
    """GhostNetV2's decoupled fully connected attention (timm GhostModuleV2 'attn'): 2x2 average pool (stride 2,
    floor) -> 1x1 conv + BN -> 1x5 depthwise + BN -> 5x1 depthwise + BN (no activations) -> sigmoid -> nearest
    back to ``like``'s size (an odd size too: 7 -> 3 -> 7)."""
    out, k = g.channels(like), DFC_KERNEL
    a = g.add(f"{name}.pool", "avg_pool2d", x, kernel=2, stride=2, count_include_pad=False)
    a = g.conv_bn_act(f"{name}.reduce", a, out, 1, act=None, eps=eps)
    a = g.conv_bn_act(f"{name}.horizontal", a, out, (1, k), groups=out, act=None, eps=eps, pads=(0, 0, k // 2, k // 2))
    a = g.conv_bn_act(f"{name}.vertical", a, out, (k, 1), groups=out, act=None, eps=eps, pads=(k // 2, k // 2, 0, 0))
    a = g.add(f"{name}.gate", "activation", a, kind="sigmoid")
    return g.add(f"{name}.resize", "resize_nearest", [a, like])


def _se(g: GraphBuilder, name: str, x: str, ratio: float) -> str:
    c = g.channels(x)
    s = g.add(f"{name}.pool", "global_avg_pool", x)
    squeeze = make_divisible(c * ratio, DIVISOR)
    s = g.add(f"{name}.fc1", "conv2d", s, out_channels=squeeze, kernel=1, bias=True)
    s = g.add(f"{name}.act", "activation", s, kind="relu")
    s = g.add(f"{name}.fc2", "conv2d", s, out_channels=c, kernel=1, bias=True)
    s = g.add(f"{name}.gate", "activation", s, kind="hardsigmoid")
    return g.add(f"{name}.scale", "mul", [x, s])


def build(name: str, width: float, num_classes: int, input_size: int, include_top: bool,
          dropout: float = 0.2, eps: float = 1e-5, dfc_from: int | None = None, family: str = "ghostnet") -> Graph:
    """GhostNet at ``width`` as timm ``ghostnet_<width>``; with ``dfc_from`` (GhostNetV2, ``ghostnet_v2``) the
    first ghost module of every block from that row on is gated by DFC attention."""
    g = GraphBuilder(name, (3, input_size, input_size), family=family, width=width)
    x = g.conv_bn_act("stem", "input", make_divisible(STEM * width, DIVISOR), 3, stride=2, eps=eps)
    for i, row in enumerate(BLOCKS):
        block, inp = f"blocks.{i}", x
        c_in = g.channels(x)
        mid, out = make_divisible(row.exp * width, DIVISOR), make_divisible(row.out * width, DIVISOR)
        x = _ghost(g, f"{block}.ghost1", x, mid, "relu", eps, dfc=dfc_from is not None and i >= dfc_from)
        if row.stride > 1:
            x = g.conv_bn_act(f"{block}.dw", x, mid, row.kernel, stride=row.stride, groups=mid, act=None,
                              eps=eps)
        if row.se:
            x = _se(g, f"{block}.se", x, row.se)
        x = _ghost(g, f"{block}.ghost2", x, out, None, eps)
        if c_in == out and row.stride == 1:
            short = inp
        else:
            short = g.conv_bn_act(f"{block}.shortcut.dw", inp, c_in, row.kernel, stride=row.stride,
                                  groups=c_in, act=None, eps=eps)
            short = g.conv_bn_act(f"{block}.shortcut.pw", short, out, 1, act=None, eps=eps)
        x = g.add(f"{block}.add", "add", [x, short])
    x = g.conv_bn_act("head.conv", x, make_divisible(LAST_CONV * width, DIVISOR), 1, eps=eps)
    g.classifier(x, num_classes, dropout=dropout, hidden=HEAD, hidden_act="relu", include_top=include_top)
    return g.build()


FAMILY = "ghostnet"
# model id -> the keyword arguments of build() that pick the variant
VARIANTS = {
    "ghostnet_050": dict(width=0.5),
    "ghostnet_100": dict(width=1.0),
    "ghostnet_130": dict(width=1.3),
}

# Backbone outputs, as timm ghostnet_* (features_only; GhostNet v1): its stages are BLOCKS rows 0, 1, 2, 3, 4, 5,
# 6-10, 11, 12-15 (blocks.0..8) and it taps the stem conv BEFORE its BN ("conv_stem") and the output of each stage
# that holds a stride-2 row (blocks.1/3/5/7 = rows 1, 3, 5, 11): the first block at each stride, not the last.
FEATURES = (
    FeaturePoint("conv_stem", "stem.conv", 0),
    FeaturePoint("blocks.1", "blocks.1", 2),
    FeaturePoint("blocks.3", "blocks.3", 4),
    FeaturePoint("blocks.5", "blocks.5", 6),
    FeaturePoint("blocks.7", "blocks.11", 8),
)
