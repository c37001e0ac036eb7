"""RepGhostNet (Chen et al. 2022, "RepGhost: A Hardware-Efficient Ghost Module via Re-parameterization", table 8).

GhostNet's bottleneck (``lightnets.archs.ghostnet``) with the RepGhost module instead of the ghost module: a
primary 1x1 conv + BN [+ relu] to ``out`` channels, then the sum of a 3x3 depthwise conv + BN on it (``cheap``)
and a BN of it (``fusion_bn``, the identity branch), [+ relu] - no concat: the module outputs ``out`` channels,
and the sum (``<module>.reparam_conv``) collapses into one 3x3 depthwise conv with bias. Bottleneck: module
(relu) -> [kxk depthwise stride 2 + BN] -> [SE] -> module (no relu), plus the shortcut (identity, or kxk
depthwise + BN + 1x1 + BN when the shape changes). SE as timm's ``_SE_LAYER``: squeeze
``make_divisible(c * 0.25, 4)``, relu, hardsigmoid gate. The table's rows are GhostNet's with smaller expansions.

Twins: timm ``repghostnet_050 .. repghostnet_200`` (``timm/models/repghost.py``, the official code): widths
``make_divisible(c * width, 4)``, stem 3x3 stride 2 conv + BN + relu to ``16 * width``, head 1x1 conv to
``960 * width`` + BN + relu, global pool, 1x1 conv to 1280 with bias + relu (here a linear), dropout 0.2, linear.
BN eps 1e-5, momentum 0.1; pads k//2. Params equal timm's in the train form (the ids); ``reparameterize`` gives
timm's ``reparameterize_model(m)`` (its ``switch_to_deploy``: the other BNs stay), params equal (measured).
"""

from __future__ import annotations

from typing import NamedTuple

from ..graph import Graph, GraphBuilder
from .common import FeaturePoint, make_divisible, squeeze_excite


class Bneck(NamedTuple):
    """A row of the table (timm's cfgs): timm stage, depthwise kernel, expanded and output channels, SE ratio,
    stride."""

    stage: int
    kernel: int
    exp: int
    out: int
    se: float
    stride: int


STEM = 16
BLOCKS = (
    Bneck(0, 3, 8, 16, 0, 1),
    Bneck(1, 3, 24, 24, 0, 2),
    Bneck(2, 3, 36, 24, 0, 1),
    Bneck(3, 5, 36, 40, 0.25, 2),
    Bneck(4, 5, 60, 40, 0.25, 1),
    Bneck(5, 3, 120, 80, 0, 2),
    Bneck(6, 3, 100, 80, 0, 1),
    Bneck(6, 3, 120, 80, 0, 1),
    Bneck(6, 3, 120, 80, 0, 1),
    Bneck(6, 3, 240, 112, 0.25, 1),
    Bneck(6, 3, 336, 112, 0.25, 1),
    Bneck(7, 5, 336, 160, 0.25, 2),
    Bneck(8, 5, 480, 160, 0, 1),
    Bneck(8, 5, 480, 160, 0.25, 1),
    Bneck(8, 5, 480, 160, 0, 1),
    Bneck(8, 5, 480, 160, 0.25, 1),
)
LAST_CONV = 960  # timm: make_divisible(last exp * width * 2, 4)
HEAD = 1280
DIVISOR = 4


def _module(g: GraphBuilder, name: str, x: str, out: int, relu: bool, bn: dict) -> str:
    """RepGhostModule: primary 1x1 conv+BN [+relu]; cheap 3x3 depthwise conv+BN on it + fusion BN of it; [relu]."""
    act = "relu" if relu else None
    x1 = g.conv_bn_act(f"{name}.primary", x, out, 1, act=act, **bn)
    fusion = g.add(f"{name}.fusion_bn", "batch_norm", x1, **bn)
    cheap = g.conv_bn_act(f"{name}.cheap", x1, out, 3, groups=out, act=None, **bn)
    y = g.add(f"{name}.reparam_conv", "add", [cheap, fusion])
    return g.add(f"{name}.act", "activation", y, kind="relu") if relu else y


def build(name: str, width: float, num_classes: int, input_size: int, include_top: bool,
          dropout: float = 0.2, eps: float = 1e-5, momentum: float = 0.1) -> Graph:
    """RepGhostNet at ``width`` in its train form, as timm ``repghostnet_<width>``."""
    bn = dict(eps=eps, momentum=momentum)
    g = GraphBuilder(name, (3, input_size, input_size), family="repghost", width=width)
    x = g.conv_bn_act("stem", "input", make_divisible(STEM * width, DIVISOR), 3, stride=2, **bn)
    for i, row in enumerate(BLOCKS):
        block, inp, c_in = f"blocks.{i}", x, g.channels(x)
        mid, out = make_divisible(row.exp * width, DIVISOR), make_divisible(row.out * width, DIVISOR)
        x = _module(g, f"{block}.ghost1", x, mid, True, bn)
        if row.stride > 1:
            x = g.conv_bn_act(f"{block}.dw", x, mid, row.kernel, stride=row.stride, groups=mid, act=None, **bn)
        if row.se:
            x = squeeze_excite(g, f"{block}.se", x, make_divisible(mid * row.se, DIVISOR), act="relu",
                               gate="hardsigmoid")
        x = _module(g, f"{block}.ghost2", x, out, False, bn)
        if c_in == out and row.stride == 1:
            short = inp
        else:
            short = g.conv_bn_act(f"{block}.shortcut.dw", inp, c_in, row.kernel, stride=row.stride, groups=c_in,
                                  act=None, **bn)
            short = g.conv_bn_act(f"{block}.shortcut.pw", short, out, 1, act=None, **bn)
        x = g.add(f"{block}.add", "add", [x, short])
    x = g.conv_bn_act("head.conv", x, make_divisible(LAST_CONV * width, DIVISOR), 1, **bn)
    g.classifier(x, num_classes, dropout=dropout, hidden=HEAD, hidden_act="relu", include_top=include_top)
    return g.build()


FAMILY = "repghost"
WIDTHS = (0.5, 0.58, 0.8, 1.0, 1.11, 1.3, 1.5, 2.0)
# model id -> the keyword arguments of build() that pick the variant (the train form; the inference form is
# lightnets.transforms.reparameterize, build(..., mode="inference") also folds the remaining BNs)
VARIANTS = {f"repghostnet_{round(w * 100):03d}": dict(width=w) for w in WIDTHS}

# Backbone outputs, as timm repghostnet_* (features_only): like GhostNet, the stem conv BEFORE its BN ("conv_stem")
# and the stages holding a stride-2 row (timm blocks.1/3/5/7 = rows 1, 3, 5, 11).
FEATURES = (FeaturePoint("conv_stem", "stem.conv", 0),
            *(FeaturePoint(f"blocks.{s}", f"blocks.{next(i for i, b in enumerate(BLOCKS) if b.stage == s)}", s + 1)
              for s in (1, 3, 5, 7)))
