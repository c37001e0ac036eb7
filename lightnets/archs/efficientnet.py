"""EfficientNet (Tan & Le 2019, table 1 and the compound-scaling coefficients) B0-B3 and EfficientNet-Lite 0-4
(the TF TPU reference code's ``efficientnet/lite``).

A stage row of table 1 is (expansion, kernel, stride, output channels, repeats). Block (MBConv):
``[1x1 expand + BN + act] -> kxk depthwise + BN + act -> [SE] -> 1x1 project + BN`` (linear), the expand conv only
where the expansion is > 1 (MBConv1 of the first stage); a residual add wherever the block keeps its shape.
Stem: 3x3 stride 2 conv to 32 + BN + act; head: 1x1 conv + BN + act, global pool, dropout, linear.

- **B0-B3**: swish everywhere; SE in every block: global pool -> 1x1 conv (bias) to ``block input channels // 4``
  (the squeeze comes from the block's INPUT, not its expanded width: torchvision ``max(1, in // 4)``, timm
  ``round(in * 0.25)``, equal on these widths) -> swish -> 1x1 conv (bias) -> sigmoid -> scale. Compound
  scaling ``(width, depth, resolution, dropout)``: B0 (1.0, 1.0, 224, 0.2), B1 (1.0, 1.1, 240, 0.2), B2 (1.1,
  1.2, 260, 0.3), B3 (1.2, 1.4, 300, 0.3). Widths ``make_divisible(c * width, 8)`` for the stem, every stage and
  the head (``1280 * width``, = torchvision's ``4 * last stage``); repeats ``ceil(n * depth)`` (torchvision's
  ``adjust_depth``, timm's ``depth_trunc="ceil"``).
- **Lite 0-4**: relu6, no SE; the stem (32) and the head (1280) are not scaled with the width, and the first and
  last stage keep their single repeat (timm ``fix_stem``, ``fix_first_last``). Lite0..4: (1.0, 1.0, 224, 0.2),
  (1.0, 1.1, 240, 0.2), (1.1, 1.2, 260, 0.3), (1.2, 1.4, 280, 0.3), (1.4, 1.8, 300, 0.3).

The resolution of each variant is its zoo's training size; the ids build at any ``input_size`` like every id.

Twins (identical parameter counts, measured): torchvision ``efficientnet_b0..b3`` and timm ``efficientnet_b0..b3``
are the same graph (``efficientnet_b0..b3``: BN eps 1e-5, momentum 0.1 in both); timm ``efficientnet_lite0..4``
is ``efficientnet_lite0..4`` (eps 1e-5); timm ``tf_efficientnet_b0..b3`` and ``tf_efficientnet_lite0..4`` (the
TF checkpoints' ports) are ``efficientnet_b0_tf..b3_tf`` and ``efficientnet_lite0_tf..lite4_tf``: TF "same"
padding on every conv (stride 2: the odd pixel bottom/right) and BN eps 1e-3 (momentum stays torch's 0.1 there).

Stochastic depth: a ``drop_path`` node on the branch of every residual block, before its add, at rate
``0.2 * block / blocks`` (``block`` counted from 0 over all blocks, ``blocks`` their total after depth scaling):
torchvision's ``StochasticDepth(0.2 * stage_block_id / total_stage_blocks, "row")`` (B0-B3), keras.applications'
``Dropout(drop_connect_rate * b / blocks, noise_shape=(None, 1, 1, 1))`` (drop_connect_rate 0.2), the TF reference
code's ``survival_prob`` 0.8 (B and Lite; ``1 - 0.2 * idx / len(blocks)``, so the ``_tf`` ids too). timm builds
its ``efficientnet_*`` / ``tf_efficientnet_*`` with ``drop_path_rate=0`` unless given (its model functions note
"for train, drop_path_rate should be 0.2"; its builder's schedule ``drop_path_rate * block_idx / block_count`` is
this one): these ids carry the rate its training recipes pass. ``drop_path`` is the identity in eval and in
parity's train mode (like dropout), so params, MACs, weights and zoo imports do not see it; ``drop_path_rate=0``
builds the graph without the nodes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ..errors import SpecError
from ..graph import Graph, GraphBuilder
from .common import FeaturePoint, make_divisible, residual, squeeze_excite


class Stage(NamedTuple):
    """A row of table 1 (stages 2-8): MBConv expansion, depthwise kernel, first stride, output channels, repeats."""

    exp: int
    kernel: int
    stride: int
    out: int
    n: int


B0 = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
)
STEM = 32
HEAD = 1280
SE_RATIO = 0.25
DROP_PATH = 0.2  # stochastic depth of the last block; block i of n: DROP_PATH * i / n


class Scaling(NamedTuple):
    """Compound-scaling coefficients of one variant (the reference code's ``efficientnet_params``)."""

    width: float
    depth: float
    resolution: int
    dropout: float


SCALING = {
    "b0": Scaling(1.0, 1.0, 224, 0.2),
    "b1": Scaling(1.0, 1.1, 240, 0.2),
    "b2": Scaling(1.1, 1.2, 260, 0.3),
    "b3": Scaling(1.2, 1.4, 300, 0.3),
    "lite0": Scaling(1.0, 1.0, 224, 0.2),
    "lite1": Scaling(1.0, 1.1, 240, 0.2),
    "lite2": Scaling(1.1, 1.2, 260, 0.3),
    "lite3": Scaling(1.2, 1.4, 280, 0.3),
    "lite4": Scaling(1.4, 1.8, 300, 0.3),
}


def repeats(version: str) -> tuple[int, ...]:
    """Blocks per stage after depth scaling (Lite keeps the first and last stage at one block)."""
    d, lite = SCALING[version].depth, version.startswith("lite")
    return tuple(st.n if lite and i in (0, len(B0) - 1) else math.ceil(st.n * d) for i, st in enumerate(B0))


def build(name: str, version: str, num_classes: int, input_size: int, include_top: bool,
          eps: float = 1e-5, momentum: float = 0.1, padding: str = "symmetric",
          drop_path_rate: float = DROP_PATH) -> Graph:
    """EfficientNet-``version`` (b0..b3, lite0..lite4). ``padding="same"``: TF "same" on every conv (the ``_tf``
    ids, timm ``tf_*``); ``"symmetric"``: k//2 on every side (torchvision, timm). ``drop_path_rate``: the
    stochastic depth of the last block (0: no drop_path nodes)."""
    if version not in SCALING or padding not in ("symmetric", "same"):
        raise SpecError(f"version must be one of {sorted(SCALING)} and padding 'symmetric' or 'same', "
                        f"got {version!r}, {padding!r}")
    sc, lite = SCALING[version], version.startswith("lite")
    act = "relu6" if lite else "swish"
    bn = dict(eps=eps, momentum=momentum)
    meta = {} if padding == "symmetric" else {"padding": padding}
    g = GraphBuilder(name, (3, input_size, input_size), family="efficientnet", version=version, **meta)
    same = "same" if padding == "same" else None  # 1x1 convs: no pads either way

    stem = STEM if lite else make_divisible(STEM * sc.width)
    x = g.conv_bn_act("stem", "input", stem, 3, stride=2, act=act, pads=same, **bn)
    i, blocks = 0, sum(repeats(version))
    for st, n in zip(B0, repeats(version), strict=True):
        out = make_divisible(st.out * sc.width)
        for r in range(n):
            block, inp, c = f"blocks.{i}", x, g.channels(x)
            if st.exp != 1:
                x = g.conv_bn_act(f"{block}.expand", x, make_divisible(c * st.exp), 1, act=act, **bn)
            mid = g.channels(x)
            x = g.conv_bn_act(f"{block}.dw", x, mid, st.kernel, stride=st.stride if r == 0 else 1, groups=mid,
                              act=act, pads=same, **bn)
            if not lite:
                x = squeeze_excite(g, f"{block}.se", x, max(1, c // 4), act="swish", gate="sigmoid")
            x = g.conv_bn_act(f"{block}.project", x, out, 1, act=None, **bn)
            rate = drop_path_rate * i / blocks  # torchvision's, keras.applications' and timm's expression
            if rate and g.shape(x) == g.shape(inp):
                x = g.add(f"{block}.drop_path", "drop_path", x, rate=rate)
            x = residual(g, f"{block}.add", inp, x)
            i += 1
    head = HEAD if lite else make_divisible(HEAD * sc.width)
    x = g.conv_bn_act("head.conv", x, head, 1, act=act, **bn)
    g.classifier(x, num_classes, dropout=sc.dropout, include_top=include_top)
    return g.build()


FAMILY = "efficientnet"
# timm tf_efficientnet_b* / tf_efficientnet_lite*: the TF checkpoints' padding and BN eps (torch's BN momentum)
TF = dict(padding="same", eps=1e-3)
# model id -> the keyword arguments of build() that pick the variant
VARIANTS = {
    **{f"efficientnet_{v}": dict(version=v) for v in ("b0", "b1", "b2", "b3")},
    **{f"efficientnet_lite{k}": dict(version=f"lite{k}") for k in range(5)},
    **{f"efficientnet_{v}_tf": dict(version=v, **TF) for v in ("b0", "b1", "b2", "b3")},
    **{f"efficientnet_lite{k}_tf": dict(version=f"lite{k}", **TF) for k in range(5)},
}

# Backbone outputs, as timm efficientnet_* / tf_efficientnet_lite* (features_only): its stages blocks.0..6 are the
# rows of B0 and it taps the last block of the stage at each stride 2/4/8/16/32 (rows 0, 1, 2, 4, 6; timm's stage
# numbers are row + 1); the head conv is not a stage.
FEATURE_ROWS = (0, 1, 2, 4, 6)
FEATURES = {v: tuple(FeaturePoint(f"blocks.{r}", f"blocks.{sum(repeats(v)[:r + 1]) - 1}", r + 1) for r in FEATURE_ROWS)
            for v in SCALING}


def features(meta) -> tuple[FeaturePoint, ...]:
    return FEATURES[meta["version"]]
