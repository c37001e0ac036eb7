"""MobileNetV3 (Howard et al. 2019, tables 1 and 2): inverted residuals with SE and hard-swish.

Rows are torchvision's ``InvertedResidualConfig`` (input, kernel, expanded, output, SE, NL, stride).
SE: global pool -> 1x1 conv (bias) -> relu -> 1x1 conv (bias) -> hardsigmoid -> scale, with
``make_divisible(expanded // 4, 8)`` squeeze channels. BN eps 1e-3 and momentum 0.01 as torchvision.

Width rounding differs between zoos below 1.0 (all agree at 1.0):

- ``rounding="ratio"`` (timm, keras.applications; the default ids): the expanded width is
  ``make_divisible(rounded_input * expanded / input)``, i.e. the table's expansion *ratio* applied
  to the already rounded input, and the 1280/1024 head is only widened above 1.0.
- ``rounding="table"`` (paddle.vision, and torchvision's ``width_mult``; the ``_paddle`` ids): every
  width of the table is rounded on its own, ``make_divisible(c * width)``, the head included.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import SpecError
from ..graph import Graph, GraphBuilder
from .common import FeaturePoint, make_divisible, pads_for, residual


class Bneck(NamedTuple):
    """A row of table 1/2: input, kernel, expanded and output channels, SE, nonlinearity, stride."""

    inp: int
    kernel: int
    exp: int
    out: int
    se: bool
    act: str  # "RE" relu, "HS" hardswish
    stride: int


LARGE = (
    Bneck(16, 3, 16, 16, False, "RE", 1),
    Bneck(16, 3, 64, 24, False, "RE", 2),
    Bneck(24, 3, 72, 24, False, "RE", 1),
    Bneck(24, 5, 72, 40, True, "RE", 2),
    Bneck(40, 5, 120, 40, True, "RE", 1),
    Bneck(40, 5, 120, 40, True, "RE", 1),
    Bneck(40, 3, 240, 80, False, "HS", 2),
    Bneck(80, 3, 200, 80, False, "HS", 1),
    Bneck(80, 3, 184, 80, False, "HS", 1),
    Bneck(80, 3, 184, 80, False, "HS", 1),
    Bneck(80, 3, 480, 112, True, "HS", 1),
    Bneck(112, 3, 672, 112, True, "HS", 1),
    Bneck(112, 5, 672, 160, True, "HS", 2),
    Bneck(160, 5, 960, 160, True, "HS", 1),
    Bneck(160, 5, 960, 160, True, "HS", 1),
)
SMALL = (
    Bneck(16, 3, 16, 16, True, "RE", 2),
    Bneck(16, 3, 72, 24, False, "RE", 2),
    Bneck(24, 3, 88, 24, False, "RE", 1),
    Bneck(24, 5, 96, 40, True, "HS", 2),
    Bneck(40, 5, 240, 40, True, "HS", 1),
    Bneck(40, 5, 240, 40, True, "HS", 1),
    Bneck(40, 5, 120, 48, True, "HS", 1),
    Bneck(48, 5, 144, 48, True, "HS", 1),
    Bneck(48, 5, 288, 96, True, "HS", 2),
    Bneck(96, 5, 576, 96, True, "HS", 1),
    Bneck(96, 5, 576, 96, True, "HS", 1),
)
TABLES = {"large": LARGE, "small": SMALL}
HEAD = {"large": 1280, "small": 1024}  # hidden linear of the classifier
LAST_CONV_EXPANSION = 6
ACT = {"RE": "relu", "HS": "hardswish"}


def _se(g: GraphBuilder, name: str, x: str, squeeze: int) -> str:
    c = g.channels(x)
    s = g.add(f"{name}.pool", "global_avg_pool", x)
    s = g.add(f"{name}.fc1", "conv2d", s, out_channels=squeeze, kernel=1, bias=True)
    s = g.add(f"{name}.act", "activation", s, kind="relu")
    s = g.add(f"{name}.fc2", "conv2d", s, out_channels=c, kernel=1, bias=True)
    s = g.add(f"{name}.gate", "activation", s, kind="hardsigmoid")
    return g.add(f"{name}.scale", "mul", [x, s])


def build(name: str, size: str, width: float, num_classes: int, input_size: int, include_top: bool,
          rounding: str = "ratio", dropout: float = 0.2, eps: float = 1e-3, momentum: float = 0.01,
          padding: str = "symmetric") -> Graph:
    """MobileNetV3-``size`` (large or small) at ``width``; ``rounding`` is 'ratio' or 'table' (see above).

    ``padding="keras"`` (the ``_keras`` ids, keras.applications.MobileNetV3*): TF 'same' stem and
    stride-1 convs, ZeroPadding2D(correct_pad) + 'valid' before each strided depthwise conv.
    """
    if size not in TABLES or rounding not in ("ratio", "table"):
        raise SpecError(f"size must be one of {sorted(TABLES)} and rounding 'ratio' or 'table', "
                        f"got {size!r}, {rounding!r}")
    table = TABLES[size]
    bn = dict(eps=eps, momentum=momentum)
    g = GraphBuilder(name, (3, input_size, input_size), family="mobilenet_v3", size=size, width=width,
                     rounding=rounding, **({} if padding == "symmetric" else {"padding": padding}))


    stem = make_divisible(table[0].inp * width)
    x = g.conv_bn_act("stem", "input", stem, 3, stride=2, act="hardswish", pads=pads_for(padding, 3, 2), **bn)
    for i, row in enumerate(table):
        block, inp = f"blocks.{i}", x
        c = g.channels(x)
        if rounding == "ratio":
            exp = make_divisible(c * row.exp / row.inp)
        else:
            exp = make_divisible(row.exp * width)
        act = ACT[row.act]
        if exp != c:
            x = g.conv_bn_act(f"{block}.expand", x, exp, 1, act=act, **bn)
        x = g.conv_bn_act(f"{block}.dw", x, exp, row.kernel, stride=row.stride, groups=exp, act=act,
                          pads=pads_for(padding, row.kernel, row.stride, "correct_pad"), **bn)
        if row.se:
            x = _se(g, f"{block}.se", x, make_divisible(exp // 4, 8))
        x = g.conv_bn_act(f"{block}.project", x, make_divisible(row.out * width), 1, act=None, **bn)
        x = residual(g, f"{block}.add", inp, x)
    x = g.conv_bn_act("head.conv", x, LAST_CONV_EXPANSION * g.channels(x), 1, act="hardswish", **bn)
    hidden = make_divisible(HEAD[size] * (max(1.0, width) if rounding == "ratio" else width))
    g.classifier(x, num_classes, dropout=dropout, hidden=hidden, hidden_act="hardswish",
                 include_top=include_top)
    return g.build()


# keras.applications.MobileNetV3*: TF padding, BN momentum 0.999 (IR 0.001); the head (GAP keepdims ->
# 1x1 conv with bias, no BN -> hardswish -> dropout -> 1x1 conv) is the same graph
KERAS = dict(padding="keras", momentum=0.001)
FAMILY = "mobilenet_v3"
# model id -> the keyword arguments of build() that pick the variant
VARIANTS = {
    "mobilenet_v3_large_075": dict(size="large", width=0.75),
    "mobilenet_v3_large_100": dict(size="large", width=1.0),
    "mobilenet_v3_large_075_paddle": dict(size="large", width=0.75, rounding="table"),
    "mobilenet_v3_large_075_keras": dict(size="large", width=0.75, **KERAS),
    "mobilenet_v3_large_100_keras": dict(size="large", width=1.0, **KERAS),
    "mobilenet_v3_small_075": dict(size="small", width=0.75),
    "mobilenet_v3_small_100": dict(size="small", width=1.0),
    "mobilenet_v3_small_075_paddle": dict(size="small", width=0.75, rounding="table"),
    "mobilenet_v3_small_075_keras": dict(size="small", width=0.75, **KERAS),
    "mobilenet_v3_small_100_keras": dict(size="small", width=1.0, **KERAS),
}

# Backbone outputs: timm mobilenetv3_* (features_only) groups the rows into stages blocks.0..5 (its arch_def) and
# makes the last 1x1 conv (head.conv here) stage blocks.6 (large) / blocks.5 (small); it taps the last stage at
# each stride 2/4/8/16/32, the stem ("bn1": conv + BN + hardswish) where the first row already has stride 2.
# Stage ends as rows of LARGE / SMALL:  large [0] [1-2] [3-5] [6-9] [10-11] [12-14];  small [0] [1-2] [3-5]
# [6-7] [8-10].
FEATURES = {
    "large": (
        FeaturePoint("blocks.0", "blocks.0", 1),
        FeaturePoint("blocks.1", "blocks.2", 2),
        FeaturePoint("blocks.2", "blocks.5", 3),
        FeaturePoint("blocks.4", "blocks.11", 5),
        FeaturePoint("blocks.6", "head.conv", 7),
    ),
    "small": (
        FeaturePoint("bn1", "stem", 0),
        FeaturePoint("blocks.0", "blocks.0", 1),
        FeaturePoint("blocks.1", "blocks.2", 2),
        FeaturePoint("blocks.3", "blocks.7", 4),
        FeaturePoint("blocks.5", "head.conv", 6),
    ),
}


def features(meta) -> tuple[FeaturePoint, ...]:
    return FEATURES[meta["size"]]
