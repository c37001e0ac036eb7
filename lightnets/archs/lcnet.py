"""PP-LCNet (Cui et al. 2021, table 1): depthwise-separable blocks with hard-swish, 5x5 kernels and SE at the end.

Block: kxk depthwise + BN + hardswish -> [SE] -> 1x1 conv + BN + hardswish; no residual. SE (the last two
blocks): global pool -> 1x1 conv (bias) to ``channels // 4`` -> relu -> 1x1 conv (bias) -> hardsigmoid -> scale.
Stem: 3x3 stride 2 conv to 16 + BN + hardswish. Head: global pool -> 1x1 conv to 1280 -> hardswish -> dropout
0.2 -> linear (the 1x1 conv on the pooled map is written as a linear: same math and parameters). Every width
is ``make_divisible(c * width, 8)``; the 1280 head stays 1280.

Twins: timm ``lcnet_035/050/075/100/150`` (``_gen_lcnet``) = ``lcnet_035 .. lcnet_150`` with identical
parameter counts (measured): BN eps 1e-5, momentum 0.1, a bias on the 1280 head conv. PaddleClas
``PPLCNet_x0_25 .. PPLCNet_x2_5`` (``ppcls/arch/backbone/legendary_models/pp_lcnet.py``, the paper's code;
no local twin, paddle.vision has no LCNet) is the same graph but for its head: the 1280 conv has no bias
(1,280 parameters fewer) and its ``Dropout(mode="downscale_in_infer")`` multiplies by 0.8 at inference, so a
PaddleClas checkpoint is this graph with ``head.hidden.bias = 0`` and ``head.fc.weight`` scaled by 0.8. The
paper's params / FLOPs (M) are for the PaddleClas models.
"""

from __future__ import annotations

from typing import NamedTuple

from ..graph import Graph, GraphBuilder
from .common import FeaturePoint, make_divisible, squeeze_excite


class Block(NamedTuple):
    """A row of table 1 (PaddleClas ``NET_CONFIG``): timm's stage, depthwise kernel, output channels, stride, SE."""

    stage: int
    kernel: int
    out: int
    stride: int
    se: bool = False


STEM = 16
BLOCKS = (
    Block(0, 3, 32, 1),
    Block(1, 3, 64, 2),
    Block(1, 3, 64, 1),
    Block(2, 3, 128, 2),
    Block(2, 3, 128, 1),
    Block(3, 3, 256, 2),
    Block(3, 5, 256, 1),
    Block(4, 5, 256, 1),
    Block(4, 5, 256, 1),
    Block(4, 5, 256, 1),
    Block(4, 5, 256, 1),
    Block(5, 5, 512, 2, True),
    Block(5, 5, 512, 1, True),
)
HEAD = 1280
SE_REDUCTION = 4


def build(name: str, width: float, num_classes: int, input_size: int, include_top: bool,
          dropout: float = 0.2, eps: float = 1e-5, momentum: float = 0.1) -> Graph:
    """PP-LCNet at ``width`` as timm ``lcnet_<width>``."""
    bn = dict(eps=eps, momentum=momentum)
    g = GraphBuilder(name, (3, input_size, input_size), family="lcnet", width=width)
    x = g.conv_bn_act("stem", "input", make_divisible(STEM * width), 3, stride=2, act="hardswish", **bn)
    for i, row in enumerate(BLOCKS):
        block, c = f"blocks.{i}", g.channels(x)
        x = g.conv_bn_act(f"{block}.dw", x, c, row.kernel, stride=row.stride, groups=c, act="hardswish", **bn)
        if row.se:
            x = squeeze_excite(g, f"{block}.se", x, c // SE_REDUCTION, act="relu", gate="hardsigmoid")
        x = g.conv_bn_act(f"{block}.pw", x, make_divisible(row.out * width), 1, act="hardswish", **bn)
    g.classifier(x, num_classes, dropout=dropout, hidden=HEAD, hidden_act="hardswish", include_top=include_top)
    return g.build()


FAMILY = "lcnet"
WIDTHS = (0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5)
# model id -> the keyword arguments of build() that pick the variant
VARIANTS = {f"lcnet_{round(w * 100):03d}": dict(width=w) for w in WIDTHS}

# Backbone outputs, as timm lcnet_* (features_only): its stages blocks.0..5 are the ``stage`` column of BLOCKS and
# it taps the last block of the stage at each stride 2/4/8/16/32 (stages 0, 1, 2, 4, 5; timm's stage numbers are
# stage + 1); the 1280 head is not a stage.
FEATURE_STAGES = (0, 1, 2, 4, 5)
FEATURES = tuple(FeaturePoint(f"blocks.{s}", f"blocks.{max(i for i, b in enumerate(BLOCKS) if b.stage == s)}", s + 1)
                 for s in FEATURE_STAGES)
