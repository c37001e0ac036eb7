"""Conformance cases: small graphs exercising every op with its edge attributes, and model cases.

Golden outputs come from the float64 numpy reference (``lightnets.reference``). Feature cases are the
backbone graphs of the ids (``lightnets.spec(id, features=True)``: every feature map an output), compared
output by output.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lightnets import features, ops, registry
from lightnets.graph import INPUT, Graph, GraphBuilder


class Case(NamedTuple):
    """A conformance case: an id, the graph, and the batch size of its input."""

    id: str
    graph: Graph
    batch: int = 2


def _one(case_id: str, shape, op: str, batch: int = 2, pre=None, **attrs) -> Case:
    """A graph ``input [-> pre] -> op``; ``pre(g)`` may add nodes and returns the op's inputs."""
    g = GraphBuilder(case_id, shape)
    inputs = pre(g) if pre else [INPUT]
    g.add("op", op, inputs, **attrs)
    return Case(case_id, g.build(), batch)


def _side(kind: str):
    """Second input for binary ops: an activation of the input (same shape)."""
    def pre(g):
        return [INPUT, g.add("side", "activation", INPUT, kind=kind)]
    return pre


def _se_scale(g):
    s = g.add("squeeze", "global_avg_pool", INPUT)
    return [INPUT, g.add("gate", "activation", s, kind="hardsigmoid")]


def _flat(g):
    return [g.add("flat", "flatten", g.add("gap", "global_avg_pool", INPUT))]


def _spatial_flat(g):
    """A map made (C, 1, 1) by a conv as large as the input, flattened: the graph fixes its input size."""
    k = g.input_shape[1]
    return [g.add("flat", "flatten", g.add("conv", "conv2d", INPUT, out_channels=5, kernel=k, bias=True))]


def _resize_back(kernel, stride=None):
    """resize_nearest(pool(input), input): a map pooled, then back to the input's size (GhostNetV2's DFC gate)."""
    def pre(g):
        return [g.add("small", "avg_pool2d", INPUT, kernel=kernel, stride=stride or kernel, count_include_pad=False),
                INPUT]
    return pre


def _resize_to_pooled(g):
    """resize_nearest(input, pool(input)): down to a smaller map's size."""
    return [INPUT, g.add("small", "max_pool2d", INPUT, kernel=3, stride=2)]


def op_cases() -> list[Case]:
    """Every op of the vocabulary with its edge attributes (groups, depthwise, stride 2, odd sizes...)."""
    cases = [
        _one("conv_3x3_s1_same", (4, 9, 9), "conv2d", out_channels=6, kernel=3, pads=1),
        _one("conv_3x3_s2_odd", (3, 11, 13), "conv2d", out_channels=5, kernel=3, stride=2, pads=1, bias=True),
        _one("conv_3x3_s2_asym_tf_same", (3, 10, 10), "conv2d", out_channels=4, kernel=3, stride=2,
             pads=(0, 1, 0, 1)),
        _one("conv_5x5_asym_pads", (2, 8, 7), "conv2d", out_channels=3, kernel=5, pads=(1, 2, 0, 3)),
        # padding="same": TF pads from the input size (odd height, even width: both rules at once)
        _one("conv_5x5_s2_same", (3, 9, 10), "conv2d", out_channels=4, kernel=5, stride=2, padding="same"),
        _one("conv_depthwise_3x3_s2_same", (4, 11, 8), "conv2d", out_channels=4, kernel=3, stride=2, groups=4,
             padding="same"),
        _one("max_pool_3x3_s2_same", (2, 9, 10), "max_pool2d", kernel=3, stride=2, padding="same"),
        _one("avg_pool_3x3_s2_same_exclude_pad", (2, 9, 10), "avg_pool2d", kernel=3, stride=2, padding="same",
             count_include_pad=False),
        _one("conv_1x1_grouped", (12, 5, 5), "conv2d", out_channels=6, kernel=1, groups=3),
        _one("conv_3x3_grouped_s2", (8, 9, 8), "conv2d", out_channels=16, kernel=3, stride=2, pads=1, groups=4,
             bias=True),
        _one("conv_depthwise_3x3", (6, 7, 7), "conv2d", out_channels=6, kernel=3, pads=1, groups=6),
        _one("conv_depthwise_5x5_s2", (6, 12, 12), "conv2d", out_channels=6, kernel=5, stride=2, pads=2, groups=6),
        _one("conv_depthwise_7x7_s2_asym", (4, 11, 10), "conv2d", out_channels=4, kernel=7, stride=2,
             pads=(2, 3, 3, 2), groups=4, bias=True),
        _one("conv_depthwise_mult2", (3, 6, 6), "conv2d", out_channels=6, kernel=3, pads=1, groups=3),
        _one("conv_dilated", (3, 12, 12), "conv2d", out_channels=4, kernel=3, pads=2, dilation=2),
        _one("conv_rect_kernel", (3, 8, 9), "conv2d", out_channels=2, kernel=(1, 3), pads=(0, 0, 1, 1)),
        _one("conv_depthwise_1x5", (4, 6, 7), "conv2d", out_channels=4, kernel=(1, 5), pads=(0, 0, 2, 2), groups=4),
        _one("conv_depthwise_5x1", (4, 7, 6), "conv2d", out_channels=4, kernel=(5, 1), pads=(2, 2, 0, 0), groups=4),
        _one("batch_norm", (5, 4, 3), "batch_norm", eps=1e-5),
        _one("batch_norm_eps1e-3", (5, 4, 3), "batch_norm", eps=1e-3),
        *[_one(f"activation_{k}", (3, 5, 4), "activation", kind=k) for k in ops.ACTIVATIONS],
        _one("add", (4, 5, 5), "add", pre=_side("relu")),
        _one("mul_se_scale", (4, 5, 6), "mul", pre=_se_scale),
        _one("mul_same_shape", (4, 5, 6), "mul", pre=_side("sigmoid")),
        _one("concat", (3, 5, 5), "concat", pre=_side("relu6")),
        _one("slice_channels_low", (6, 4, 4), "slice_channels", start=0, stop=3),
        _one("slice_channels_high", (7, 4, 4), "slice_channels", start=3, stop=7),
        _one("channel_shuffle_g2", (6, 3, 3), "channel_shuffle", groups=2),
        _one("channel_shuffle_g3", (12, 3, 5), "channel_shuffle", groups=3),
        _one("channel_shuffle_batch1", (8, 2, 2), "channel_shuffle", batch=1, groups=4),
        # resize_nearest: back up from a 2x2 / stride 2 pool at odd (7 -> 3 -> 7: rows 0,0,0,1,1,2,2) and mixed
        # odd/even sizes; 6 -> 74 rows, where a float32 scale (torch/paddle F.interpolate) reads one row low; down
        _one("resize_nearest_odd", (3, 7, 7), "resize_nearest", pre=_resize_back(2)),
        _one("resize_nearest_odd_even", (2, 9, 6), "resize_nearest", batch=1, pre=_resize_back(2)),
        _one("resize_nearest_6_to_74", (2, 74, 3), "resize_nearest", pre=_resize_back((14, 1), (12, 1))),
        _one("resize_nearest_down", (3, 9, 8), "resize_nearest", pre=_resize_to_pooled),
        _one("max_pool_3x3_s2_p1", (3, 9, 9), "max_pool2d", kernel=3, stride=2, pads=1),
        _one("max_pool_3x3_s2_even", (3, 8, 8), "max_pool2d", kernel=3, stride=2, pads=(0, 1, 0, 1)),
        _one("max_pool_2x2", (3, 6, 7), "max_pool2d", kernel=2, stride=2),
        _one("avg_pool_3x3_s2_count_pad", (3, 8, 8), "avg_pool2d", kernel=3, stride=2, pads=1,
             count_include_pad=True),
        _one("avg_pool_3x3_s2_exclude_pad", (3, 9, 8), "avg_pool2d", kernel=3, stride=2, pads=1,
             count_include_pad=False),
        _one("avg_pool_2x2_nopad", (3, 6, 6), "avg_pool2d", kernel=2, stride=2, count_include_pad=False),
        _one("global_avg_pool", (5, 7, 6), "global_avg_pool"),
        _one("flatten", (5, 4, 4), "flatten", pre=lambda g: [g.add("gap", "global_avg_pool", INPUT)]),
        _one("linear", (6, 3, 3), "linear", pre=_flat, out_features=4),
        _one("linear_nobias", (6, 3, 3), "linear", pre=_flat, out_features=3, bias=False),
        # size-fixed heads (ONNX's Gemm cases): a (C, 1, 1) input, and flatten of a map a conv sized it at two sizes
        _one("linear_of_1x1_input", (4, 1, 1), "linear", pre=lambda g: [g.add("flat", "flatten", INPUT)],
             out_features=3),
        _one("linear_of_conv_5px", (3, 5, 5), "linear", pre=_spatial_flat, out_features=4),
        _one("linear_of_conv_8px", (3, 8, 8), "linear", pre=_spatial_flat, out_features=4),
        _one("dropout_eval_identity", (3, 4, 4), "dropout", rate=0.5),
        # eval and parity's train mode: the identity (tests/test_backend_contract.py checks its train-mode mask)
        _one("drop_path_eval_identity", (3, 5, 4), "drop_path", rate=0.5),
    ]
    return cases


# A batch norm of a (C, 1, 1) map (MobileNetV4's head conv + BN after the global pool; any BN whose map the case's
# input size shrinks to 1 x 1) normalises each channel over the batch alone in train mode: over 2 values it is
# +-d / sqrt(d^2 + eps) of their half-difference d, which float32 rounding of the pooled values moves. Measured
# (mobilenet_v4_conv_small_035, torch, 64 px, 3 input seeds): train-mode float32 logits 1.0-2.1e-4 off the float64
# reference at batch 2 (MODEL_REL bound 1e-4), 0.8-2.9e-5 at batch 4, 0.6-1.0e-5 at batch 8; float64 <= 1.9e-13 at
# every batch. Model cases of such graphs run a batch of 4.
POOLED_BN_BATCH = 4


def case_batch(graph: Graph) -> int:
    """The input batch of a model case: 2, or POOLED_BN_BATCH where a batch norm normalises a 1 x 1 map."""
    pooled = any(n.op == "batch_norm" and graph.shapes[n.name][1:] == (1, 1) for n in graph.nodes)
    return POOLED_BN_BATCH if pooled else 2


def model_cases(models: list[str] | None = None, input_size: int = 64, num_classes: int = 10) -> list[Case]:
    """Every registered id (or ``models``) at a small input size, for the parity matrix."""
    ids = models or registry.list_models()
    graphs = [(m, registry.get_spec(m, num_classes=num_classes, input_size=input_size)) for m in ids]
    return [Case(m, g, case_batch(g)) for m, g in graphs]


FEATURES_SUFFIX = ":features"


def feature_cases(models: list[str] | None = None, input_size: int = 64, num_classes: int = 10) -> list[Case]:
    """The backbone of every registered id (or ``models``): its feature maps (default selection) as outputs,
    case id ``<id>:features``."""
    ids = models or registry.list_models()
    return [Case(m + FEATURES_SUFFIX, features.feature_graph(registry.get_spec(m, num_classes=num_classes,
                                                                                input_size=input_size)))
            for m in ids]


def make_input(graph: Graph, batch: int = 2, seed: int = 0) -> np.ndarray:
    """A deterministic float64 NCHW input for ``graph``."""
    return np.random.default_rng(seed).standard_normal((batch, *graph.input_shape))
