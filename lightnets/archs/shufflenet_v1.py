"""ShuffleNetV1 (Zhang et al. 2018, table 1): grouped 1x1 convs with channel shuffle.

Channel widths follow the official megvii-model/ShuffleNet-Series code, which gives the only public
checkpoints (groups 3 and 8): stage widths scale with the model size, the stem does not scale
linearly (12/24/24/48 channels at 0.5/1.0/1.5/2.0x, rounded up to a multiple of the groups: 16 for
g8 at 0.5x). The head is global average pooling and a linear layer WITHOUT bias, as in that code.

For groups 1, 2 and 4, where the official code has no table, the same rule is applied: stage widths
``make_divisible(c * width, 4 * groups)`` (the bottleneck ``out / 4`` must split into the groups),
which reproduces the official g3/g8 tables exactly and changes only g2/g4 at 0.5x/1.5x.

Channel shuffle: the paper order (torch's ``view(g, C/g).transpose``), right after the first
pointwise, is the default. The official megvii code differs in two ways that change nothing but the
weight layout: it shuffles after the depthwise conv + BN, and it reshapes to ``(C/g, g)`` - the
inverse permutation (seed 000's), which is the paper shuffle with ``C/g`` groups. The ``*_megvii``
ids do both, so the official g3/g8 checkpoints load without permuting any weight.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import SpecError
from ..graph import Graph, GraphBuilder
from .common import FeaturePoint, make_divisible


class Stage(NamedTuple):
    """A stage of table 1: paper stage number, repeats (the first unit has stride 2)."""

    index: int
    repeats: int


STAGES = (Stage(2, 4), Stage(3, 8), Stage(4, 4))
# Table 1 at 1.0x: groups -> output channels of stages 2, 3, 4.
STAGE_CHANNELS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088),
                  8: (384, 768, 1536)}
# Official megvii code: stem width per model size (before rounding up to a multiple of the groups).
STEM = {0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48}
BOTTLENECK = 4
WIDTHS = (0.5, 1.0, 1.5, 2.0)


def channels(groups: int, width: float) -> tuple[int, tuple[int, ...]]:
    """(stem, stage widths) for ``groups`` at model size ``width``."""
    if groups not in STAGE_CHANNELS or width not in STEM:
        raise SpecError(f"ShuffleNetV1 has groups {sorted(STAGE_CHANNELS)} and widths {sorted(STEM)}, "
                        f"got groups={groups}, width={width}")
    stem = -(-STEM[width] // groups) * groups
    return stem, tuple(make_divisible(c * width, BOTTLENECK * groups) for c in STAGE_CHANNELS[groups])


def build(name: str, groups: int, width: float, num_classes: int, input_size: int, include_top: bool,
          shuffle: str = "paper", eps: float = 1e-5) -> Graph:
    """ShuffleNetV1 with ``groups`` at model size ``width``; ``shuffle`` is 'paper' or 'megvii'."""
    if shuffle not in ("paper", "megvii"):
        raise SpecError(f"shuffle must be 'paper' or 'megvii', got {shuffle!r}")
    stem, outs = channels(groups, width)
    g = GraphBuilder(name, (3, input_size, input_size), family="shufflenet_v1", groups=groups, width=width,
                     shuffle=shuffle)
    x = g.conv_bn_act("stem", "input", stem, 3, stride=2, eps=eps)
    x = g.add("stem.pool", "max_pool2d", x, kernel=3, stride=2, pads=1)
    for st, out in zip(STAGES, outs, strict=True):
        for i in range(st.repeats):
            unit, inp = f"stages.{st.index}.{i}", x
            stride = 2 if i == 0 else 1
            c_in = g.channels(x)
            mid = out // BOTTLENECK
            branch_out = out - c_in if stride == 2 else out
            # No grouping on the first pointwise of stage 2: its input (the stem) is too narrow.
            first_groups = 1 if (st.index == 2 and i == 0) else groups
            x = g.conv_bn_act(f"{unit}.branch.pw1", x, mid, 1, groups=first_groups, eps=eps)
            if groups > 1 and shuffle == "paper":
                x = g.add(f"{unit}.branch.shuffle", "channel_shuffle", x, groups=groups)
            x = g.conv_bn_act(f"{unit}.branch.dw", x, mid, 3, stride=stride, groups=mid, act=None, eps=eps)
            if groups > 1 and shuffle == "megvii":
                x = g.add(f"{unit}.branch.shuffle", "channel_shuffle", x, groups=mid // groups)
            x = g.conv_bn_act(f"{unit}.branch.pw2", x, branch_out, 1, groups=groups, act=None, eps=eps)
            if stride == 2:
                short = g.add(f"{unit}.shortcut", "avg_pool2d", inp, kernel=3, stride=2, pads=1,
                              count_include_pad=True)
                x = g.add(f"{unit}.concat", "concat", [short, x])
            else:
                x = g.add(f"{unit}.add", "add", [inp, x])
            x = g.add(f"{unit}.act", "activation", x, kind="relu")
    x = g.add("head.pool", "global_avg_pool", x)
    x = g.add("head.flatten", "flatten", x)
    if include_top:
        g.add("head.fc", "linear", x, out_features=num_classes, bias=False)
    return g.build()


FAMILY = "shufflenet_v1"
# model id -> the keyword arguments of build() that pick the variant
VARIANTS = {
    "shufflenet_v1_g1_050": dict(groups=1, width=0.5),
    "shufflenet_v1_g1_100": dict(groups=1, width=1.0),
    "shufflenet_v1_g1_150": dict(groups=1, width=1.5),
    "shufflenet_v1_g1_200": dict(groups=1, width=2.0),
    "shufflenet_v1_g2_050": dict(groups=2, width=0.5),
    "shufflenet_v1_g2_100": dict(groups=2, width=1.0),
    "shufflenet_v1_g2_150": dict(groups=2, width=1.5),
    "shufflenet_v1_g2_200": dict(groups=2, width=2.0),
    "shufflenet_v1_g3_050": dict(groups=3, width=0.5),
    "shufflenet_v1_g3_100": dict(groups=3, width=1.0),
    "shufflenet_v1_g3_150": dict(groups=3, width=1.5),
    "shufflenet_v1_g3_200": dict(groups=3, width=2.0),
    "shufflenet_v1_g4_050": dict(groups=4, width=0.5),
    "shufflenet_v1_g4_100": dict(groups=4, width=1.0),
    "shufflenet_v1_g4_150": dict(groups=4, width=1.5),
    "shufflenet_v1_g4_200": dict(groups=4, width=2.0),
    "shufflenet_v1_g8_050": dict(groups=8, width=0.5),
    "shufflenet_v1_g8_100": dict(groups=8, width=1.0),
    "shufflenet_v1_g8_150": dict(groups=8, width=1.5),
    "shufflenet_v1_g8_200": dict(groups=8, width=2.0),
    "shufflenet_v1_g3_050_megvii": dict(groups=3, width=0.5, shuffle="megvii"),
    "shufflenet_v1_g3_100_megvii": dict(groups=3, width=1.0, shuffle="megvii"),
    "shufflenet_v1_g3_150_megvii": dict(groups=3, width=1.5, shuffle="megvii"),
    "shufflenet_v1_g3_200_megvii": dict(groups=3, width=2.0, shuffle="megvii"),
    "shufflenet_v1_g8_050_megvii": dict(groups=8, width=0.5, shuffle="megvii"),
    "shufflenet_v1_g8_100_megvii": dict(groups=8, width=1.0, shuffle="megvii"),
    "shufflenet_v1_g8_150_megvii": dict(groups=8, width=1.5, shuffle="megvii"),
    "shufflenet_v1_g8_200_megvii": dict(groups=8, width=2.0, shuffle="megvii"),
}

# Backbone outputs (timm has no ShuffleNet; rule of lightnets, paper names): conv1 (stem conv + BN + ReLU,
# stride 2), maxpool (stride 4) and the last unit of Stage2/3/4 (strides 8/16/32).
FEATURES = (
    FeaturePoint("conv1", "stem.act", 1),
    FeaturePoint("maxpool", "stem.pool", 1),
    FeaturePoint("stage2", "stages.2", 2),
    FeaturePoint("stage3", "stages.3", 3),
    FeaturePoint("stage4", "stages.4", 4),
)
