"""GhostNetV2 (Tang et al. 2022): GhostNet with DFC attention on the expanding ghost modules.

The block table, widths, SE, shortcut and head are GhostNet's (:mod:`.ghostnet`, table 7 of the v1 paper;
``make_divisible(c * width, 4)``, SE reduce ``make_divisible(expanded * 0.25, 4)`` with relu and a
hardsigmoid gate, head 1x1 conv to ``960 * width`` + BN + relu, pool, 1280 linear + relu, dropout 0.2).
New: from the third block on (timm ``layer_idx > 1``: BLOCKS rows 2..15) the FIRST ghost module of each
bottleneck (the expansion) is multiplied by a decoupled fully connected (DFC) attention map of its input:
``avg_pool2d(2, stride 2, floor)`` -> 1x1 conv + BN -> 1x5 depthwise + BN (pads 0/2) -> 5x1 depthwise + BN
(pads 2/0) -> sigmoid -> nearest resize back to the module output's size (op ``resize_nearest``: rows
``floor(i * in / out)``, so 7x7 -> 3x3 -> 7x7 reads 0,0,0,1,1,2,2) -> multiply. The second (projection)
ghost module and the first two blocks stay GhostNet v1's.

Twins: timm ``ghostnetv2_100/130/160`` (``timm.models.ghostnet``, ``version='v2'``: ``GhostModuleV2``,
the official huawei-noah ghostnetv2_torch code); BN eps 1e-5, momentum 0.1; padding k//2 (symmetric)
everywhere. timm's features_only taps are GhostNet's (same stages): :data:`.ghostnet.FEATURES`.
"""

from __future__ import annotations

from ..graph import Graph
from . import ghostnet

FAMILY = "ghostnet_v2"
DFC_FROM = 2  # the first BLOCKS row whose ghost1 has DFC attention (timm: layer_idx > 1)


def build(name: str, width: float, num_classes: int, input_size: int, include_top: bool,
          dropout: float = 0.2, eps: float = 1e-5) -> Graph:
    """GhostNetV2 at ``width`` as timm ``ghostnetv2_<width>``."""
    return ghostnet.build(name, width, num_classes, input_size, include_top, dropout=dropout, eps=eps,
                          dfc_from=DFC_FROM, family=FAMILY)


# model id -> the keyword arguments of build() that pick the variant
VARIANTS = {
    "ghostnet_v2_100": dict(width=1.0),
    "ghostnet_v2_130": dict(width=1.3),
    "ghostnet_v2_160": dict(width=1.6),
}

# Backbone outputs, as timm ghostnetv2_* (features_only): GhostNet's stages and taps (conv_stem before its BN,
# then the first block at each stride: blocks.1/3/5/7 = BLOCKS rows 1, 3, 5, 11)
FEATURES = ghostnet.FEATURES
