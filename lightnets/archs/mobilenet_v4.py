"""MobileNetV4 conv-small / conv-medium / conv-large (Qin et al. 2024, "MobileNetV4 - Universal Models for the Mobile
Ecosystem", its architecture tables; the TF reference ``official/vision/modeling/backbones/mobilenet.py`` and timm
``_gen_mobilenet_v4`` as oracles).

A table row is one block kind (timm's block string in brackets):

- **conv** (``cn``, timm ``ConvBnAct``): kxk conv + BN + relu, no residual.
- **fused** (``er``, timm ``EdgeResidual``, the paper's FusedIB): kxk conv (strided) to ``make_divisible(in * e)`` +
  BN + relu -> 1x1 project + BN (linear); residual where the block keeps its shape.
- **uib** (``uir``, timm ``UniversalInvertedResidual``): ``[start kxk depthwise + BN, NO activation] -> 1x1 expand to
  make_divisible(in * e) + BN + relu -> [middle kxk depthwise + BN + relu] -> 1x1 project + BN`` (linear); residual
  where the block keeps its shape. Start and middle kernel 0 mean "no such conv": both = ExtraDW, start only =
  ConvNeXt-like, middle only = the inverted bottleneck (IB), neither = FFN. The STRIDE sits on the middle depthwise
  when there is one, else on the start depthwise (timm ``dw_start_stride = stride if not dw_kernel_size_mid``); an
  FFN row never strides. Only the first repeat of a row strides. No end depthwise, no SE in the conv models, and no
  layer scale (timm ``layer_scale_init_value=None`` for the conv ids; the hybrids use 1e-5).

Stem: 3x3 stride 2 conv + BN + relu (32 channels; 24 for large). The last stage is a 1x1 conv to 960 + BN + relu.
Head (timm ``head_norm=True``): global average pool -> 1x1 conv to 1280 (no bias) -> BN -> relu -> flatten ->
linear. The head conv runs on the pooled (C, 1, 1) map, so its BN is an ordinary ``batch_norm`` of a (1280, 1, 1)
map (timm's ``norm_head`` is a BatchNorm2d there too; in training its batch statistics are over the batch only).
``include_top=False`` keeps that head conv + BN + relu and drops the classifier: the 1280-vector of timm
``create_model(..., num_classes=0)`` (its ``forward_head(pre_logits=True)``). The classifier has no dropout
(timm's default ``drop_rate=0``). In training that BN normalises each channel over the batch alone (a batch of 2 is
2 values per channel: parity's model cases of such graphs run a batch of 4, ``parity/cases.case_batch``; a training
batch of 1 is refused by torch's BatchNorm2d, as for the timm twin).

Widths: ``make_divisible(c * width, 8)`` for every row's output (timm ``round_channels``; 960 too), expansions
``make_divisible(in * e, 8)`` of the block's actual input; below width 1.0 the stem stays 32 (timm ``fix_stem``) and
the 1280 head never scales. Padding k//2 on every side (timm ``pad_type=''``: stride-2 3x3/5x5 convs pad 1/2 both
sides, as torch ``padding=k//2``). BN eps 1e-5, momentum 0.1 (torch's defaults; timm ``resolve_bn_args`` of none).
Activation relu everywhere in the conv models.

Twins (identical trainable parameter counts, measured): timm ``mobilenetv4_conv_small_035`` / ``_050`` /
``mobilenetv4_conv_small`` / ``mobilenetv4_conv_medium`` / ``mobilenetv4_conv_large`` = ``mobilenet_v4_conv_small_035``
/ ``_050`` / ``_100``, ``mobilenet_v4_conv_medium_100``, ``mobilenet_v4_conv_large_100``. Their training sizes are
224 / 256 / 384 px (small / medium / large); the ids build at any ``input_size`` like every id. Stochastic depth
(timm ``drop_path_rate``) is the identity in eval and not in the graph.

Not here: the hybrid models (timm ``mobilenetv4_hybrid_medium`` / ``_large``) interleave Mobile MQA blocks (timm
``MobileAttention`` / ``MultiQueryAttention2d``), which need ops outside the vocabulary: a reshape/transpose of a
(C, H, W) map into (heads, H*W, d) tokens and back, a batched matmul of two activations (Q K^T, attention x V),
a softmax over the key axis and a constant scale of the logits; plus LayerScale (a trainable per-channel scale: a
parameter-bearing mul, not the two-input ``mul``) on every block of a hybrid, and GELU (hybrid-large) among the
activations. Their KV downsampling (strided depthwise conv + BN) and the 1x1 projections exist already. The
``conv_aa`` / ``conv_blur`` timm variants (anti-aliased downsampling) are not here either.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import SpecError
from ..graph import Graph, GraphBuilder
from .common import FeaturePoint, make_divisible, residual


class Block(NamedTuple):
    """A row of the paper's architecture tables (timm's arch_def strings): the block kind (conv / fused / uib), the
    start kernel (uib: the start depthwise, 0 = none; conv / fused: their kxk conv), the middle depthwise kernel (uib;
    0 = none), the stride of the first repeat, the expansion ratio, the output channels and the repeats."""

    kind: str
    start: int
    mid: int
    stride: int
    exp: float
    out: int
    n: int = 1


def conv(k: int, s: int, c: int) -> Block:  # timm cn_r1_k{k}_s{s}_c{c}
    return Block("conv", k, 0, s, 1.0, c)


def fused(k: int, s: int, e: float, c: int) -> Block:  # timm er_r1_k{k}_s{s}_e{e}_c{c} (FusedIB)
    return Block("fused", k, 0, s, e, c)


def uib(a: int, k: int, s: int, e: float, c: int, n: int = 1) -> Block:  # timm uir_r{n}_a{a}_k{k}_s{s}_e{e}_c{c}
    return Block("uib", a, k, s, e, c, n)


# stages as timm's arch_def (its blocks.0..4); comments: the paper's names of the uib rows
SMALL = (
    (conv(3, 2, 32), conv(1, 1, 32)),
    (conv(3, 2, 96), conv(1, 1, 64)),
    (uib(5, 5, 2, 3, 96),  # ExtraDW
     uib(0, 3, 1, 2, 96, n=4),  # IB
     uib(3, 0, 1, 4, 96)),  # ConvNeXt
    (uib(3, 3, 2, 6, 128), uib(5, 5, 1, 4, 128),  # ExtraDW
     uib(0, 5, 1, 4, 128), uib(0, 5, 1, 3, 128), uib(0, 3, 1, 4, 128, n=2)),  # IB
    (conv(1, 1, 960),),
)
MEDIUM = (
    (fused(3, 2, 4, 48),),
    (uib(3, 5, 2, 4, 80), uib(3, 3, 1, 2, 80)),
    (uib(3, 5, 2, 6, 160), uib(3, 3, 1, 4, 160, n=2), uib(3, 5, 1, 4, 160), uib(3, 3, 1, 4, 160),
     uib(3, 0, 1, 4, 160), uib(0, 0, 1, 2, 160), uib(3, 0, 1, 4, 160)),
    (uib(5, 5, 2, 6, 256), uib(5, 5, 1, 4, 256), uib(3, 5, 1, 4, 256, n=2), uib(0, 0, 1, 4, 256),
     uib(3, 0, 1, 4, 256), uib(3, 5, 1, 2, 256), uib(5, 5, 1, 4, 256), uib(0, 0, 1, 4, 256, n=2),
     uib(5, 0, 1, 2, 256)),
    (conv(1, 1, 960),),
)
LARGE = (
    (fused(3, 2, 4, 48),),
    (uib(3, 5, 2, 4, 96), uib(3, 3, 1, 4, 96)),
    (uib(3, 5, 2, 4, 192), uib(3, 3, 1, 4, 192, n=3), uib(3, 5, 1, 4, 192), uib(5, 3, 1, 4, 192, n=5),
     uib(3, 0, 1, 4, 192)),
    (uib(5, 5, 2, 4, 512, n=4), uib(5, 0, 1, 4, 512), uib(5, 3, 1, 4, 512), uib(5, 0, 1, 4, 512, n=2),
     uib(5, 3, 1, 4, 512), uib(5, 5, 1, 4, 512), uib(5, 0, 1, 4, 512, n=3)),
    (conv(1, 1, 960),),
)
TABLES = {"conv_small": SMALL, "conv_medium": MEDIUM, "conv_large": LARGE}
STEM = {"conv_small": 32, "conv_medium": 32, "conv_large": 24}
HEAD = 1280


def blocks(size: str) -> list[tuple[int, Block, int]]:
    """Every block of ``size`` in order as (stage, row, stride): repeats expanded, only the first repeat strided."""
    return [(s, row, row.stride if r == 0 else 1)
            for s, stage in enumerate(TABLES[size]) for row in stage for r in range(row.n)]


def _uib(g: GraphBuilder, name: str, x: str, row: Block, stride: int, out: int, bn: dict) -> str:
    c = g.channels(x)
    if row.start:  # start depthwise: BN, no activation; strides only when there is no middle depthwise
        x = g.conv_bn_act(f"{name}.dw_start", x, c, row.start, stride=1 if row.mid else stride, groups=c, act=None,
                          **bn)
    elif not row.mid and stride != 1:
        raise SpecError(f"{name}: a universal inverted bottleneck without depthwise convs (FFN) cannot stride")
    mid = make_divisible(c * row.exp)
    x = g.conv_bn_act(f"{name}.pw_exp", x, mid, 1, act="relu", **bn)
    if row.mid:
        x = g.conv_bn_act(f"{name}.dw_mid", x, mid, row.mid, stride=stride, groups=mid, act="relu", **bn)
    return g.conv_bn_act(f"{name}.pw_proj", x, out, 1, act=None, **bn)


def build(name: str, size: str, width: float, num_classes: int, input_size: int, include_top: bool,
          eps: float = 1e-5, momentum: float = 0.1) -> Graph:
    """MobileNetV4 ``size`` (conv_small / conv_medium / conv_large) at ``width`` as timm ``mobilenetv4_<size>``."""
    if size not in TABLES:
        raise SpecError(f"size must be one of {sorted(TABLES)}, got {size!r}")
    bn = dict(eps=eps, momentum=momentum)
    g = GraphBuilder(name, (3, input_size, input_size), family="mobilenet_v4", size=size, width=width)
    stem = STEM[size] if width < 1.0 else make_divisible(STEM[size] * width)
    x = g.conv_bn_act("stem", "input", stem, 3, stride=2, act="relu", **bn)
    for i, (_, row, stride) in enumerate(blocks(size)):
        block, inp, out = f"blocks.{i}", x, make_divisible(row.out * width)
        if row.kind == "conv":
            x = g.conv_bn_act(f"{block}.conv", x, out, row.start, stride=stride, act="relu", **bn)
            continue
        if row.kind == "fused":
            x = g.conv_bn_act(f"{block}.conv_exp", x, make_divisible(g.channels(x) * row.exp), row.start,
                              stride=stride, act="relu", **bn)
            x = g.conv_bn_act(f"{block}.conv_pwl", x, out, 1, act=None, **bn)
        else:
            x = _uib(g, block, x, row, stride, out, bn)
        x = residual(g, f"{block}.add", inp, x)
    # timm head_norm: pool -> 1x1 conv (no bias) -> BN -> relu on the (C, 1, 1) map, then the classifier
    x = g.add("head.pool", "global_avg_pool", x)
    x = g.conv_bn_act("head.conv", x, HEAD, 1, act="relu", **bn)
    x = g.add("head.flatten", "flatten", x)
    if include_top:
        g.add("head.fc", "linear", x, out_features=num_classes, bias=True)
    return g.build()


FAMILY = "mobilenet_v4"
# model id -> the keyword arguments of build() that pick the variant (timm's widths: small at 0.35 / 0.5 / 1.0)
VARIANTS = {
    "mobilenet_v4_conv_small_035": dict(size="conv_small", width=0.35),
    "mobilenet_v4_conv_small_050": dict(size="conv_small", width=0.5),
    "mobilenet_v4_conv_small_100": dict(size="conv_small", width=1.0),
    "mobilenet_v4_conv_medium_100": dict(size="conv_medium", width=1.0),
    "mobilenet_v4_conv_large_100": dict(size="conv_large", width=1.0),
}


def _features(size: str) -> tuple[FeaturePoint, ...]:
    """timm's features_only taps (EfficientNetBuilder): the stem ("bn1", stage 0) since the first block strides, then
    the last block of every stage that the next stage's stride-2 first block ends, and of the last stage (timm stage
    numbers are the stage index + 1). For every conv size: blocks.0/1/2 and blocks.4 (the 960 conv) at 4/8/16/32."""
    table, flat = TABLES[size], blocks(size)
    last = {s: max(i for i, (st, _, _) in enumerate(flat) if st == s) for s in range(len(table))}
    taps = [s for s in range(len(table)) if s + 1 == len(table) or table[s + 1][0].stride > 1]
    return (FeaturePoint("bn1", "stem", 0),
            *(FeaturePoint(f"blocks.{s}", f"blocks.{last[s]}", s + 1) for s in taps))


FEATURES = {size: _features(size) for size in TABLES}


def features(meta) -> tuple[FeaturePoint, ...]:
    return FEATURES[meta["size"]]
