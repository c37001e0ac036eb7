"""MobileNetV1 (Howard et al. 2017, table 1): depthwise-separable convs, width multiplier alpha."""

from __future__ import annotations

from typing import NamedTuple

from ..graph import Graph, GraphBuilder
from .common import FeaturePoint, pads_for


class DWSep(NamedTuple):
    """One depthwise-separable layer: 3x3 depthwise of ``stride``, then 1x1 to ``out`` channels."""

    out: int
    stride: int


STEM = 32
# Paper table 1, after the 3x3/2 stem conv of 32 channels.
LAYERS = (
    DWSep(64, 1), DWSep(128, 2), DWSep(128, 1), DWSep(256, 2), DWSep(256, 1), DWSep(512, 2),
    *[DWSep(512, 1)] * 5,
    DWSep(1024, 2), DWSep(1024, 1),
)


def build(name: str, width: float, num_classes: int, input_size: int, include_top: bool,
          dropout: float = 0.0, eps: float = 1e-5, momentum: float = 0.1, act: str = "relu",
          padding: str = "symmetric") -> Graph:
    """MobileNetV1: channels are ``int(c * width)`` as in keras.applications and paddle.vision.

    ``padding="keras"`` (the ``_keras`` ids, keras.applications.MobileNet): TF 'same' stem and
    stride-1 convs, ZeroPadding2D(((0, 1), (0, 1))) + 'valid' before each strided depthwise conv.
    """
    g = GraphBuilder(name, (3, input_size, input_size), family="mobilenet_v1", width=width,
                     **({} if padding == "symmetric" else {"padding": padding}))
    bn = dict(eps=eps, momentum=momentum, act=act)


    x = g.conv_bn_act("stem", "input", int(STEM * width), 3, stride=2, pads=pads_for(padding, 3, 2), **bn)
    for i, layer in enumerate(LAYERS):
        c = g.channels(x)
        x = g.conv_bn_act(f"blocks.{i}.dw", x, c, 3, stride=layer.stride, groups=c,
                          pads=pads_for(padding, 3, layer.stride, "pad01"), **bn)
        x = g.conv_bn_act(f"blocks.{i}.pw", x, int(layer.out * width), 1, **bn)
    g.classifier(x, num_classes, dropout=dropout, include_top=include_top)
    return g.build()


# keras.applications.MobileNet: TF padding, BN eps 1e-3 / momentum 0.99 (IR 0.01), ReLU6,
# head GAP -> Dropout(1e-3) -> 1x1 conv with bias (= linear)
KERAS = dict(padding="keras", eps=1e-3, momentum=0.01, act="relu6", dropout=1e-3)
FAMILY = "mobilenet_v1"
# model id -> the keyword arguments of build() that pick the variant
VARIANTS = {
    "mobilenet_v1_025": dict(width=0.25),
    "mobilenet_v1_050": dict(width=0.5),
    "mobilenet_v1_075": dict(width=0.75),
    "mobilenet_v1_100": dict(width=1.0),
    # timm mobilenetv1_100: ReLU6 where the paper (and paddle.vision) use ReLU; invisible while activations
    # stay below 6 (random BN statistics), 1.0 relative on logits with BN statistics taken from data
    "mobilenet_v1_100_timm": dict(width=1.0, act="relu6"),
    "mobilenet_v1_025_keras": dict(width=0.25, **KERAS),
    "mobilenet_v1_050_keras": dict(width=0.5, **KERAS),
    "mobilenet_v1_075_keras": dict(width=0.75, **KERAS),
    "mobilenet_v1_100_keras": dict(width=1.0, **KERAS),
}

# Backbone outputs: timm mobilenetv1_100 (features_only) groups LAYERS into stages blocks.0-4 of 1, 2, 2, 6, 2
# layers and taps the end of each, one per stride 2/4/8/16/32; the stem (stride 2 too) is not one.
FEATURES = (
    FeaturePoint("blocks.0", "blocks.0", 1),
    FeaturePoint("blocks.1", "blocks.2", 2),
    FeaturePoint("blocks.2", "blocks.4", 3),
    FeaturePoint("blocks.3", "blocks.10", 4),
    FeaturePoint("blocks.4", "blocks.12", 5),
)
