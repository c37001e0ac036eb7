"""MobileOne (Vasu et al. 2023, "An Improved One millisecond Mobile Backbone", table 7): reparameterisable blocks.

Train form, as timm ``mobileone_s0 .. s4`` (``byobnet.py`` ``MobileOneBlock``, ``_mobileone_bcfg``): every
block is a sum of parallel branches on one input, then [SE], then relu:

- ``num_conv_branches`` kxk conv + BN branches (``conv_kxk.i``; 4 in S0's stages, 1 elsewhere and in every stem),
- a 1x1 conv + BN "scale" branch (``conv_scale``) when k > 1, with the block's stride and groups,
- a BN "skip" branch (``identity``, ``batch_norm(x)``) when the block keeps its shape (stride 1, in = out),

summed as timm does (scale + kxk branches + skip) by adds whose last one is ``<block>.reparam_conv``.
Each of the 4 stages (depths 2/8/10/1 of widths 64/128/256/512 x the variant's factors) repeats a pair: a 3x3
depthwise block (stride 2 in the stage's first pair), then a 1x1 block to the stage width. Stem: one 3x3 stride 2
block (3 -> 48 in S0, 64 otherwise; 1 kxk branch). S4 has SE (timm ``SEModule``: ``make_divisible(c / 16, 8)``,
relu, sigmoid, biases) in both blocks of the last 5 pairs of stage 3 and the last pair of stage 4. Head: global
pool, linear (no final conv). BN eps 1e-5, momentum 0.1; pads k//2 (the 1x1 branches none). Params equal timm's.

Inference form: ``lightnets.transforms.reparameterize`` collapses every sum into ``<block>.reparam_conv``
(conv with bias); a block with one branch only (the first 1x1 block of each stage) is a lone conv + BN, which
``fold_batch_norm`` folds. timm's ``reparameterize_model(m)`` folds every MobileOne block, branches or not, so
it equals ``fold_batch_norm(reparameterize(g))`` = ``build(..., mode="inference")`` (params equal, measured).
"""

from __future__ import annotations

from typing import NamedTuple

from ..graph import Graph, GraphBuilder
from .common import FeaturePoint, make_divisible, squeeze_excite


class Variant(NamedTuple):
    """A row of the paper's table 7 as timm's ``_mobileone_bcfg``: stage width factors, stem width, kxk branches,
    SE pairs per stage."""

    width: tuple[float, float, float, float]
    stem: int
    branches: int = 1
    se: tuple[int, int, int, int] = (0, 0, 0, 0)


DEPTHS = (2, 8, 10, 1)
WIDTHS = (64, 128, 256, 512)
SE_RATIO = 1 / 16
TABLE = {
    "s0": Variant((0.75, 1.0, 1.0, 2.0), 48, branches=4),
    "s1": Variant((1.5, 1.5, 2.0, 2.5), 64),
    "s2": Variant((1.5, 2.0, 2.5, 4.0), 64),
    "s3": Variant((2.0, 2.5, 3.0, 4.0), 64),
    "s4": Variant((3.0, 3.5, 3.5, 4.0), 64, se=(0, 0, 5, 1)),
}


def _block(g: GraphBuilder, name: str, x: str, out: int, kernel: int, stride: int, groups: int, branches: int,
           se: bool, bn: dict) -> str:
    """A MobileOneBlock: identity BN, kxk conv+BN branches, 1x1 scale conv+BN, summed; [SE]; relu."""
    c = g.channels(x)
    identity = g.add(f"{name}.identity", "batch_norm", x, **bn) if c == out and stride == 1 else None
    terms = [g.conv_bn_act(f"{name}.conv_kxk.{i}", x, out, kernel, stride=stride, groups=groups, act=None, **bn)
             for i in range(branches)]
    if kernel > 1:
        terms.insert(0, g.conv_bn_act(f"{name}.conv_scale", x, out, 1, stride=stride, groups=groups, act=None,
                                      pads=(0, 0, 0, 0), **bn))
    if identity:
        terms.append(identity)
    y = terms[0]
    for i, t in enumerate(terms[1:], 1):
        y = g.add(f"{name}.reparam_conv" if i == len(terms) - 1 else f"{name}.sum.{i}", "add", [y, t])
    if se:
        y = squeeze_excite(g, f"{name}.attn", y, make_divisible(out * SE_RATIO, 8), act="relu", gate="sigmoid")
    return g.add(f"{name}.act", "activation", y, kind="relu")


def build(name: str, variant: str, num_classes: int, input_size: int, include_top: bool,
          eps: float = 1e-5, momentum: float = 0.1) -> Graph:
    """MobileOne ``variant`` (s0..s4) in its train form, as timm ``mobileone_<variant>``."""
    v, bn = TABLE[variant], dict(eps=eps, momentum=momentum)
    g = GraphBuilder(name, (3, input_size, input_size), family="mobileone", variant=variant)
    x = _block(g, "stem", "input", v.stem, 3, 2, 1, 1, False, bn)
    for s, (depth, width, factor, se) in enumerate(zip(DEPTHS, WIDTHS, v.width, v.se, strict=True)):
        out = int(width * factor)
        for i in range(depth):
            c, has_se = g.channels(x), i >= depth - se
            x = _block(g, f"stages.{s}.{2 * i}", x, c, 3, 2 if i == 0 else 1, c, v.branches, has_se, bn)
            x = _block(g, f"stages.{s}.{2 * i + 1}", x, out, 1, 1, 1, v.branches, has_se, bn)
    g.classifier(x, num_classes, include_top=include_top)
    return g.build()


FAMILY = "mobileone"
# model id -> the keyword arguments of build() that pick the variant (the train form; its inference form is
# lightnets.transforms.reparameterize + fold_batch_norm, build(..., mode="inference"))
VARIANTS = {f"mobileone_{v}": dict(variant=v) for v in TABLE}

# Backbone outputs, as timm mobileone_* (features_only, ByobNet): the stem (stride 2), stages.0..2 (4, 8, 16) and
# "final_conv" (an identity: the output of stages.3, 32), each the last block of its stage.
FEATURES = (FeaturePoint("stem", "stem", 0),
            *(FeaturePoint(f"stages.{s}", f"stages.{s}.{2 * DEPTHS[s] - 1}", s + 1) for s in range(3)),
            FeaturePoint("final_conv", f"stages.3.{2 * DEPTHS[3] - 1}", 4))
