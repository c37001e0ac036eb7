"""MixNet (Tan & Le 2019, figures 8 and 9 and the TF TPU ``mixnet_builder``): S, M and L (= M at width 1.3).

A row is one block kind of a stage: (block, repeats, depthwise kernels, expansion groups, projection groups,
stride, expansion, output channels, SE ratio, activation). Blocks:

- ``"ds"`` (the first block): 3x3 depthwise + BN + relu -> 1x1 conv + BN (linear), a residual (the stem already
  has the block's width);
- ``"ir"`` (MBConv with mixed kernels): 1x1 expand + BN + act -> mixed depthwise (MDConv) + BN + act -> [SE] ->
  1x1 project + BN (linear); a residual add wherever the block keeps its shape.

Mixed depthwise conv (MDConv): the channels are split into one group per kernel size, each group gets its own
depthwise conv (k x k, pads k//2), the outputs are concatenated: ``slice_channels`` -> conv2d -> ``concat`` in
the graph. A grouped 1x1 (expansion / projection groups 2) is the same split -> 1x1 convs -> concat, not a
``groups=2`` conv: its parameters are separate convs in the zoos and the split may be uneven. The split is the
reference code's (timm ``_split_channels``): ``c // groups`` channels each, the remainder to the FIRST group.

SE (ratio of the block INPUT channels: ``round(input * ratio)`` squeeze channels, timm ``se_from_exp=False``) with
the block's activation and a sigmoid gate. Stem 3x3 stride 2 conv + BN + relu; head 1x1 conv to 1536 + BN +
relu, global pool, dropout 0.2, linear. Widths ``make_divisible(c * width, 8)`` (stem and blocks; the expanded width
``make_divisible(input * expansion)``); the 1536 head stays 1536 at every width.

Twins: timm ``mixnet_s/m/l`` (``mixnet_s/m/l``: BN eps 1e-5, momentum 0.1) and ``tf_mixnet_s/m/l`` (ports of the
TF checkpoints: ``mixnet_s/m/l_tf``, TF "same" padding on every conv and BN eps 1e-3), identical parameter counts
(measured). Stochastic depth is not in the graph (identity in eval; train-mode drop-path is not modelled).
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import SpecError
from ..graph import Graph, GraphBuilder
from .common import FeaturePoint, make_divisible, residual, squeeze_excite


class Row(NamedTuple):
    """Blocks of one kind in a stage (a block string of the reference code, e.g.
    ``ir_r3_k3.5_a1.1_p1.1_s1_e6_c40_se0.5_sw``): timm's stage (blocks.N), kind, repeats, depthwise kernels,
    expansion groups, projection groups, first stride, expansion, output channels, SE ratio (0: none), activation."""

    stage: int
    block: str  # "ds" depthwise-separable, "ir" MBConv
    n: int
    kernels: tuple[int, ...]
    exp_groups: int
    pw_groups: int
    stride: int
    exp: int
    out: int
    se: float
    act: str


S = (
    Row(0, "ds", 1, (3,), 1, 1, 1, 1, 16, 0, "relu"),
    Row(1, "ir", 1, (3,), 2, 2, 2, 6, 24, 0, "relu"),
    Row(1, "ir", 1, (3,), 2, 2, 1, 3, 24, 0, "relu"),
    Row(2, "ir", 1, (3, 5, 7), 1, 1, 2, 6, 40, 0.5, "swish"),
    Row(2, "ir", 3, (3, 5), 2, 2, 1, 6, 40, 0.5, "swish"),
    Row(3, "ir", 1, (3, 5, 7), 1, 2, 2, 6, 80, 0.25, "swish"),
    Row(3, "ir", 2, (3, 5), 1, 2, 1, 6, 80, 0.25, "swish"),
    Row(4, "ir", 1, (3, 5, 7), 2, 2, 1, 6, 120, 0.5, "swish"),
    Row(4, "ir", 2, (3, 5, 7, 9), 2, 2, 1, 3, 120, 0.5, "swish"),
    Row(5, "ir", 1, (3, 5, 7, 9, 11), 1, 1, 2, 6, 200, 0.5, "swish"),
    Row(5, "ir", 2, (3, 5, 7, 9), 1, 2, 1, 6, 200, 0.5, "swish"),
)
M = (
    Row(0, "ds", 1, (3,), 1, 1, 1, 1, 24, 0, "relu"),
    Row(1, "ir", 1, (3, 5, 7), 2, 2, 2, 6, 32, 0, "relu"),
    Row(1, "ir", 1, (3,), 2, 2, 1, 3, 32, 0, "relu"),
    Row(2, "ir", 1, (3, 5, 7, 9), 1, 1, 2, 6, 40, 0.5, "swish"),
    Row(2, "ir", 3, (3, 5), 2, 2, 1, 6, 40, 0.5, "swish"),
    Row(3, "ir", 1, (3, 5, 7), 1, 1, 2, 6, 80, 0.25, "swish"),
    Row(3, "ir", 3, (3, 5, 7, 9), 2, 2, 1, 6, 80, 0.25, "swish"),
    Row(4, "ir", 1, (3,), 1, 1, 1, 6, 120, 0.5, "swish"),
    Row(4, "ir", 3, (3, 5, 7, 9), 2, 2, 1, 3, 120, 0.5, "swish"),
    Row(5, "ir", 1, (3, 5, 7, 9), 1, 1, 2, 6, 200, 0.5, "swish"),
    Row(5, "ir", 3, (3, 5, 7, 9), 1, 2, 1, 6, 200, 0.5, "swish"),
)
TABLES = {"s": S, "m": M}
STEM = {"s": 16, "m": 24}
HEAD = 1536


def split_channels(c: int, groups: int) -> list[int]:
    """``c`` channels in ``groups`` parts: ``c // groups`` each, the remainder to the first (the reference code's
    ``_split_channels``)."""
    parts = [c // groups] * groups
    parts[0] += c - sum(parts)
    return parts


def mixed_conv(g: GraphBuilder, name: str, x: str, out: int, kernels: tuple[int, ...], stride: int = 1,
               depthwise: bool = False, padding: str = "symmetric") -> str:
    """One conv per kernel over a channel split of ``x``, concatenated (``name.conv`` when there is one kernel;
    else ``name.slice{j}``, ``name.conv{j}``, ``name.concat``). ``depthwise``: each part is a depthwise conv."""
    def conv(nm, inp, co, k):
        ci = g.channels(inp)
        pads = {"padding": "same"} if padding == "same" else {"pads": (k // 2,) * 4}
        return g.add(nm, "conv2d", inp, out_channels=co, kernel=k, stride=stride, groups=ci if depthwise else 1,
                     bias=False, **pads)
    if len(kernels) == 1:
        return conv(f"{name}.conv", x, out, kernels[0])
    ins = split_channels(g.channels(x), len(kernels))
    outs = ins if depthwise else split_channels(out, len(kernels))
    parts, start = [], 0
    for j, (k, ci, co) in enumerate(zip(kernels, ins, outs, strict=True)):
        s = g.add(f"{name}.slice{j}", "slice_channels", x, start=start, stop=start + ci)
        parts.append(conv(f"{name}.conv{j}", s, co, k))
        start += ci
    return g.add(f"{name}.concat", "concat", parts)


def build(name: str, version: str, width: float, num_classes: int, input_size: int, include_top: bool,
          dropout: float = 0.2, eps: float = 1e-5, momentum: float = 0.1, padding: str = "symmetric") -> Graph:
    """MixNet-``version`` (s or m) at ``width`` (MixNet-L is m at 1.3). ``padding="same"``: TF "same" on every conv
    (the ``_tf`` ids, timm ``tf_mixnet_*``)."""
    if version not in TABLES or padding not in ("symmetric", "same"):
        raise SpecError(f"version must be one of {sorted(TABLES)} and padding 'symmetric' or 'same', "
                        f"got {version!r}, {padding!r}")
    bn = dict(eps=eps, momentum=momentum)
    meta = {} if padding == "symmetric" else {"padding": padding}
    g = GraphBuilder(name, (3, input_size, input_size), family="mixnet", version=version, width=width, **meta)
    x = g.conv_bn_act("stem", "input", make_divisible(STEM[version] * width), 3, stride=2,
                      pads="same" if padding == "same" else None, **bn)

    def bn_act(nm, inp, act):
        y = g.add(f"{nm}.bn", "batch_norm", inp, **bn)
        return g.add(f"{nm}.act", "activation", y, kind=act) if act else y

    i = 0
    for row in TABLES[version]:
        out = make_divisible(row.out * width)
        for r in range(row.n):
            block, inp, c = f"blocks.{i}", x, g.channels(x)
            stride = row.stride if r == 0 else 1
            if row.block == "ir":
                x = bn_act(f"{block}.expand", mixed_conv(g, f"{block}.expand", x, make_divisible(c * row.exp),
                                                         (1,) * row.exp_groups, padding=padding), row.act)
            mid = g.channels(x)
            x = bn_act(f"{block}.dw", mixed_conv(g, f"{block}.dw", x, mid, row.kernels, stride, depthwise=True,
                                                 padding=padding), row.act)
            if row.se:
                x = squeeze_excite(g, f"{block}.se", x, round(c * row.se), act=row.act, gate="sigmoid")
            x = bn_act(f"{block}.project", mixed_conv(g, f"{block}.project", x, out, (1,) * row.pw_groups,
                                                      padding=padding), None)
            x = residual(g, f"{block}.add", inp, x)
            i += 1
    x = g.conv_bn_act("head.conv", x, HEAD, 1, **bn)
    g.classifier(x, num_classes, dropout=dropout, include_top=include_top)
    return g.build()


FAMILY = "mixnet"
# timm tf_mixnet_*: the TF checkpoints' padding and BN eps (torch's BN momentum)
TF = dict(padding="same", eps=1e-3)
SIZES = {"s": dict(version="s", width=1.0), "m": dict(version="m", width=1.0), "l": dict(version="m", width=1.3)}
# model id -> the keyword arguments of build() that pick the variant
VARIANTS = {**{f"mixnet_{k}": v for k, v in SIZES.items()}, **{f"mixnet_{k}_tf": {**v, **TF} for k, v in SIZES.items()}}

# Backbone outputs, as timm mixnet_* (features_only): its stages blocks.0..5 are the ``stage`` column and it taps the
# last block of the stage at each stride 2/4/8/16/32 (stages 0, 1, 2, 4, 5; timm's stage numbers are stage + 1); the
# head conv is not a stage.
FEATURE_STAGES = (0, 1, 2, 4, 5)


def _features(table) -> tuple[FeaturePoint, ...]:
    ends, i = {}, 0
    for row in table:
        i += row.n
        ends[row.stage] = i - 1
    return tuple(FeaturePoint(f"blocks.{s}", f"blocks.{ends[s]}", s + 1) for s in FEATURE_STAGES)


FEATURES = {v: _features(t) for v, t in TABLES.items()}


def features(meta) -> tuple[FeaturePoint, ...]:
    return FEATURES[meta["version"]]
