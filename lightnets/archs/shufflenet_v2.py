"""ShuffleNetV2 (Ma et al. 2018, table 5): channel split, two branches, concat, channel shuffle.

Unit (stride 1): split the channels in halves, keep the first, run the second through
1x1 + BN + act, 3x3 depthwise + BN, 1x1 + BN + act; concat; shuffle with 2 groups.
Unit (stride 2, first of a stage): both branches see the whole input; the left one is 3x3 depthwise
(stride 2) + BN, 1x1 + BN + act. Layout and module order follow torchvision's ``shufflenetv2.py``.

paddle.vision's ShuffleNetV2 is the same network except for its width table: its 2.0x has 224
(not 244) stage-2 channels, and it adds 0.25x and 0.33x and a swish flavour of 1.0x; those get the
``_paddle`` suffix. Its 0.5/1.0/1.5x equal torchvision's.
"""

from __future__ import annotations

from typing import NamedTuple

from ..graph import Graph, GraphBuilder
from . import shufflenet_v1
from .common import FeaturePoint


class Widths(NamedTuple):
    """A column of table 5: stem, stage 2/3/4 and conv5 output channels."""

    stem: int
    stages: tuple[int, int, int]
    conv5: int


REPEATS = (4, 8, 4)  # stages 2, 3, 4; the first unit of each has stride 2
WIDTHS = {
    0.5: Widths(24, (48, 96, 192), 1024),
    1.0: Widths(24, (116, 232, 464), 1024),
    1.5: Widths(24, (176, 352, 704), 1024),
    2.0: Widths(24, (244, 488, 976), 2048),
}
PADDLE_WIDTHS = {
    0.25: Widths(24, (24, 48, 96), 512),
    0.33: Widths(24, (32, 64, 128), 512),
    2.0: Widths(24, (224, 488, 976), 2048),
}


def build(name: str, widths: Widths, num_classes: int, input_size: int, include_top: bool,
          act: str = "relu", eps: float = 1e-5) -> Graph:
    """ShuffleNetV2 with the channel table ``widths`` and activation ``act`` (relu or swish)."""
    g = GraphBuilder(name, (3, input_size, input_size), family="shufflenet_v2", widths=list(widths), act=act)
    x = g.conv_bn_act("stem", "input", widths.stem, 3, stride=2, act=act, eps=eps)
    x = g.add("stem.pool", "max_pool2d", x, kernel=3, stride=2, pads=1)
    for s, (repeats, out) in enumerate(zip(REPEATS, widths.stages, strict=True), start=2):
        half = out // 2
        for i in range(repeats):
            unit = f"stages.{s}.{i}"
            c = g.channels(x)
            if i == 0:
                left = g.conv_bn_act(f"{unit}.branch1.dw", x, c, 3, stride=2, groups=c, act=None, eps=eps)
                left = g.conv_bn_act(f"{unit}.branch1.pw", left, half, 1, act=act, eps=eps)
                right, stride = x, 2
            else:
                left = g.add(f"{unit}.split1", "slice_channels", x, start=0, stop=c // 2)
                right = g.add(f"{unit}.split2", "slice_channels", x, start=c // 2, stop=c)
                stride = 1
            right = g.conv_bn_act(f"{unit}.branch2.pw1", right, half, 1, act=act, eps=eps)
            right = g.conv_bn_act(f"{unit}.branch2.dw", right, half, 3, stride=stride, groups=half, act=None,
                                  eps=eps)
            right = g.conv_bn_act(f"{unit}.branch2.pw2", right, half, 1, act=act, eps=eps)
            x = g.add(f"{unit}.concat", "concat", [left, right])
            x = g.add(f"{unit}.shuffle", "channel_shuffle", x, groups=2)
    x = g.conv_bn_act("head.conv", x, widths.conv5, 1, act=act, eps=eps)
    g.classifier(x, num_classes, include_top=include_top)
    return g.build()


FAMILY = "shufflenet_v2"
# model id -> the keyword arguments of build() that pick the variant
VARIANTS = {
    "shufflenet_v2_050": dict(widths=WIDTHS[0.5]),
    "shufflenet_v2_100": dict(widths=WIDTHS[1.0]),
    "shufflenet_v2_150": dict(widths=WIDTHS[1.5]),
    "shufflenet_v2_200": dict(widths=WIDTHS[2.0]),
    "shufflenet_v2_025_paddle": dict(widths=PADDLE_WIDTHS[0.25]),
    "shufflenet_v2_033_paddle": dict(widths=PADDLE_WIDTHS[0.33]),
    "shufflenet_v2_200_paddle": dict(widths=PADDLE_WIDTHS[2.0]),
    "shufflenet_v2_swish_100_paddle": dict(act="swish", widths=WIDTHS[1.0]),
}

# Backbone outputs (timm has no ShuffleNet; rule of lightnets, torchvision's module names): ShuffleNetV1's conv1
# (stem conv + BN + act, stride 2), maxpool (stride 4), stage2/3/4 (strides 8/16/32), and conv5 (the 1x1 conv +
# BN + act after stage4, stride 32). The default selection is the last map at each stride, so conv5, not stage4,
# at 32 (out_indices=(2, 3, 4) gives the three stages).
FEATURES = (*shufflenet_v1.FEATURES, FeaturePoint("conv5", "head.conv", 5))
