"""MNASNet (Tan et al. 2019, figure 7 and the TF TPU reference code): A1 (with SE), B1 and "small".

A stage row is (block, expansion, kernel, stride, output channels, repeats, SE ratio). Blocks:

- ``"ds"`` (SepConv): 3x3 depthwise + BN + relu -> 1x1 conv + BN (linear);
- ``"ir"`` (MBConv): 1x1 expand + BN + relu -> kxk depthwise + BN + relu -> [SE] -> 1x1 project + BN (linear).

A residual add where the block keeps the shape (stride 1, same channels): every repeat after the first, and
the "small" variant's first SepConv (8 -> 8). SE (A1, small): global pool -> 1x1 conv (bias) -> relu -> 1x1
conv (bias) -> sigmoid -> scale, with ``round(block input channels * ratio)`` squeeze channels (the TF code's
rule; timm's ``se_from_exp=False``). Stem: 3x3 stride 2 conv + BN + relu; head: 1x1 conv to 1280 + BN + relu,
global pool, dropout 0.2, linear. The head stays 1280 at every width.

Widths: ``make_divisible(c * width, 8)`` for the stem and every stage (torchvision's ``_round_to_multiple_of``
with ``round_up_bias=0.9`` and timm's ``round_channels`` are that same rule), the expanded width is
``input * expansion``. torchvision ``mnasnet0_5..1_3`` (B1) and timm ``mnasnet_050..140`` (B1),
``semnasnet_050..140`` (A1) and ``mnasnet_small`` are this graph with identical parameter counts (measured).
BN: eps 1e-5 and torchvision's momentum ``1 - 0.9997`` (IR convention, ~0.0003; the ids' default); timm builds
momentum 0.1 (its zoo entries carry it).
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import SpecError
from ..graph import Graph, GraphBuilder
from .common import FeaturePoint, make_divisible, residual, squeeze_excite


class Stage(NamedTuple):
    """A stage of figure 7: block kind, expansion, depthwise kernel, first stride, output channels, repeats,
    SE ratio (0: none)."""

    block: str  # "ds" SepConv, "ir" MBConv
    exp: int
    kernel: int
    stride: int
    out: int
    n: int
    se: float = 0.0


B1 = (
    Stage("ds", 1, 3, 1, 16, 1),
    Stage("ir", 3, 3, 2, 24, 3),
    Stage("ir", 3, 5, 2, 40, 3),
    Stage("ir", 6, 5, 2, 80, 3),
    Stage("ir", 6, 3, 1, 96, 2),
    Stage("ir", 6, 5, 2, 192, 4),
    Stage("ir", 6, 3, 1, 320, 1),
)
A1 = (
    Stage("ds", 1, 3, 1, 16, 1),
    Stage("ir", 6, 3, 2, 24, 2),
    Stage("ir", 3, 5, 2, 40, 3, 0.25),
    Stage("ir", 6, 3, 2, 80, 4),
    Stage("ir", 6, 3, 1, 112, 2, 0.25),
    Stage("ir", 6, 5, 2, 160, 3, 0.25),
    Stage("ir", 6, 3, 1, 320, 1),
)
# the TF reference code's "mnasnet-small" (timm mnasnet_small): an 8-channel stem
SMALL = (
    Stage("ds", 1, 3, 1, 8, 1),
    Stage("ir", 3, 3, 2, 16, 1),
    Stage("ir", 6, 3, 2, 16, 2),
    Stage("ir", 6, 5, 2, 32, 4, 0.25),
    Stage("ir", 6, 3, 1, 32, 3, 0.25),
    Stage("ir", 6, 5, 2, 88, 3, 0.25),
    Stage("ir", 6, 3, 1, 144, 1),
)
TABLES = {"a1": A1, "b1": B1, "small": SMALL}
STEM = {"a1": 32, "b1": 32, "small": 8}
HEAD = 1280


def build(name: str, version: str, width: float, num_classes: int, input_size: int, include_top: bool,
          dropout: float = 0.2, eps: float = 1e-5, momentum: float = 1 - 0.9997) -> Graph:
    """MNASNet-``version`` (a1, b1 or small) at ``width``."""
    if version not in TABLES:
        raise SpecError(f"version must be one of {sorted(TABLES)}, got {version!r}")
    bn = dict(eps=eps, momentum=momentum)
    g = GraphBuilder(name, (3, input_size, input_size), family="mnasnet", version=version, width=width)
    x = g.conv_bn_act("stem", "input", make_divisible(STEM[version] * width), 3, stride=2, **bn)
    i = 0
    for st in TABLES[version]:
        out = make_divisible(st.out * width)
        for r in range(st.n):
            block, inp = f"blocks.{i}", x
            c = g.channels(x)
            s = st.stride if r == 0 else 1
            if st.block == "ir":
                x = g.conv_bn_act(f"{block}.expand", x, c * st.exp, 1, **bn)
            mid = g.channels(x)
            x = g.conv_bn_act(f"{block}.dw", x, mid, st.kernel, stride=s, groups=mid, **bn)
            if st.se:
                x = squeeze_excite(g, f"{block}.se", x, round(c * st.se), act="relu", gate="sigmoid")
            x = g.conv_bn_act(f"{block}.project", x, out, 1, act=None, **bn)
            x = residual(g, f"{block}.add", inp, x)
            i += 1
    x = g.conv_bn_act("head.conv", x, HEAD, 1, **bn)
    g.classifier(x, num_classes, dropout=dropout, include_top=include_top)
    return g.build()


FAMILY = "mnasnet"
# model id -> the keyword arguments of build() that pick the variant
VARIANTS = {
    "mnasnet_a1_050": dict(version="a1", width=0.5),
    "mnasnet_a1_075": dict(version="a1", width=0.75),
    "mnasnet_a1_100": dict(version="a1", width=1.0),
    "mnasnet_a1_140": dict(version="a1", width=1.4),
    "mnasnet_b1_050": dict(version="b1", width=0.5),
    "mnasnet_b1_075": dict(version="b1", width=0.75),
    "mnasnet_b1_100": dict(version="b1", width=1.0),
    "mnasnet_b1_130": dict(version="b1", width=1.3),
    "mnasnet_b1_140": dict(version="b1", width=1.4),
    "mnasnet_small_100": dict(version="small", width=1.0),
}

# Backbone outputs, as timm mnasnet_* / semnasnet_* (features_only): its stages blocks.0..6 are the rows of the
# tables and it taps the last block of the stage at each stride 2/4/8/16/32 (rows 0, 1, 2, 4, 6; timm's stage
# numbers are row + 1); the 1280 head conv is not a stage.
FEATURE_ROWS = (0, 1, 2, 4, 6)
FEATURES = {v: tuple(FeaturePoint(f"blocks.{r}", f"blocks.{sum(st.n for st in t[:r + 1]) - 1}", r + 1)
                     for r in FEATURE_ROWS) for v, t in TABLES.items()}


def features(meta) -> tuple[FeaturePoint, ...]:
    return FEATURES[meta["version"]]
