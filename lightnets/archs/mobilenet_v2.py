"""MobileNetV2 (Sandler et al. 2018, table 2): inverted residuals with linear bottlenecks."""

from __future__ import annotations

from typing import NamedTuple

from ..graph import Graph, GraphBuilder
from .common import FeaturePoint, make_divisible, pads_for, residual


class Stage(NamedTuple):
    """A row of table 2: expansion t, output channels c, repeats n, first stride s."""

    t: int
    c: int
    n: int
    s: int


STEM = 32
HEAD = 1280
STAGES = (
    Stage(1, 16, 1, 1),
    Stage(6, 24, 2, 2),
    Stage(6, 32, 3, 2),
    Stage(6, 64, 4, 2),
    Stage(6, 96, 3, 1),
    Stage(6, 160, 3, 2),
    Stage(6, 320, 1, 1),
)


def build(name: str, width: float, num_classes: int, input_size: int, include_top: bool,
          dropout: float = 0.2, eps: float = 1e-5, momentum: float = 0.1, padding: str = "symmetric") -> Graph:
    """MobileNetV2 as torchvision/timm/keras: ``make_divisible(c * width, 8)``, head widens only above 1.0.

    ``padding="keras"`` (the ``_keras`` ids, keras.applications.MobileNetV2): TF 'same' stem and
    stride-1 convs, ZeroPadding2D(correct_pad) + 'valid' before each strided depthwise conv, block
    widths ``make_divisible(int(c * width))`` as keras writes them.
    """
    g = GraphBuilder(name, (3, input_size, input_size), family="mobilenet_v2", width=width,
                     **({} if padding == "symmetric" else {"padding": padding}))
    bn = dict(eps=eps, momentum=momentum)


    x = g.conv_bn_act("stem", "input", make_divisible(STEM * width), 3, stride=2, act="relu6",
                      pads=pads_for(padding, 3, 2), **bn)
    i = 0
    for st in STAGES:
        out = make_divisible(int(st.c * width) if padding == "keras" else st.c * width)
        for r in range(st.n):
            block, inp = f"blocks.{i}", x
            c = g.channels(x)
            if st.t != 1:
                x = g.conv_bn_act(f"{block}.expand", x, c * st.t, 1, act="relu6", **bn)
            hidden = g.channels(x)
            s = st.s if r == 0 else 1
            x = g.conv_bn_act(f"{block}.dw", x, hidden, 3, stride=s, groups=hidden, act="relu6",
                              pads=pads_for(padding, 3, s, "correct_pad"), **bn)
            x = g.conv_bn_act(f"{block}.project", x, out, 1, act=None, **bn)
            x = residual(g, f"{block}.add", inp, x)
            i += 1
    x = g.conv_bn_act("head.conv", x, make_divisible(HEAD * max(1.0, width)), 1, act="relu6", **bn)
    g.classifier(x, num_classes, dropout=dropout, include_top=include_top)
    return g.build()


# keras.applications.MobileNetV2: TF padding, BN eps 1e-3 / momentum 0.999 (IR 0.001), no dropout
# before the Dense classifier; keras also offers alpha 1.3
KERAS = dict(padding="keras", eps=1e-3, momentum=0.001, dropout=0.0)
FAMILY = "mobilenet_v2"
# model id -> the keyword arguments of build() that pick the variant
VARIANTS = {
    "mobilenet_v2_035": dict(width=0.35),
    "mobilenet_v2_050": dict(width=0.5),
    "mobilenet_v2_075": dict(width=0.75),
    "mobilenet_v2_100": dict(width=1.0),
    "mobilenet_v2_140": dict(width=1.4),
    "mobilenet_v2_035_keras": dict(width=0.35, **KERAS),
    "mobilenet_v2_050_keras": dict(width=0.5, **KERAS),
    "mobilenet_v2_075_keras": dict(width=0.75, **KERAS),
    "mobilenet_v2_100_keras": dict(width=1.0, **KERAS),
    "mobilenet_v2_130_keras": dict(width=1.3, **KERAS),
    "mobilenet_v2_140_keras": dict(width=1.4, **KERAS),
}

# Backbone outputs: timm mobilenetv2_* (features_only) has one stage blocks.<row> per row of STAGES and taps the
# last row at each stride 2/4/8/16/32: rows 0, 1, 2, 4, 6 (the 1280 head conv is not one).
FEATURE_ROWS = (0, 1, 2, 4, 6)
FEATURES = tuple(FeaturePoint(f"blocks.{r}", f"blocks.{sum(st.n for st in STAGES[:r + 1]) - 1}", r + 1)
                 for r in FEATURE_ROWS)
