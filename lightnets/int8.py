"""The per-layer int8 locator: an int8 model's dequantized tensors against the float64 reference, node by node.

For every node whose output the int8 model quantizes (``backends/tflite_int8.py`` maps a TFLite file's tensors onto
the graph), on the same input:

- ``rel_error``: max |int8 - reference| / max |reference|, the reference run end to end in float64 from the image:
  the error the int8 model has accumulated up to this node (the curve along depth);
- ``local_steps``: max |int8 - local reference| in quantization steps of the tensor over the values inside its int8
  range, where the local reference runs only the nodes between this tensor and the quantized tensors it reads, in
  float64, from their int8 values: the error this op adds by itself. Rounding the output costs half a step, int8
  weights and accumulation a few more; a wrong weight, channel order or folded batch norm costs tens;
- ``gain_error``: the largest |g - 1| over the channels, g the least-squares gain of the int8 channel on the local
  reference's (channels spanning at least :data:`MIN_STEPS` steps; |g - 1| beyond :data:`GAIN_Z` standard errors
  and moving the channel's ends by :data:`GAIN_STEPS` steps):
  rounding noise averages out of g, a channel whose weights are scaled or swapped does not;
- ``step``: the tensor's quantization step relative to max |reference|;
- ``clipped``: the share of local-reference values outside the tensor's int8 range (saturation);
- ``channel_spread``: the widest channel's max |reference| over the median channel's (a per-tensor scale spends its
  256 levels on the widest channel: the narrow ones get few).

The first node that saturates or whose local error is not int8 rounding is named with the likely reason (see
:func:`first_jump`). The tensors come from LiteRT (``backends/tflite_int8.py``) or ONNX Runtime running a QDQ file
(``backends/onnx_int8.py``); :func:`runtime_parity` puts two runtimes side by side. numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from . import reference
from .errors import WeightsError
from .graph import INPUT, Graph

# Beyond int8 rounding: a local error of JUMP_STEPS steps or a channel gain off by JUMP_GAIN. Measured on clean
# int8 exports (64 px, weights with BN statistics from data, 8 calibration images, probed on 2; tests/test_int8.py)
# of mobilenet_v2_035 / mobilenet_v3_small_075 / ghostnet_050: local error <= 3.3 / 1.9 / 2.1 steps, no significant
# gain error; at 224 px (`lightnets int8`, 32 calibration images) mobilenet_v2_100 / mobilenet_v3_large_100 /
# ghostnet_100 <= 3.3 / 2.0 / 3.3 steps, no significant gain error, <= 0.006 % clipped. Planted: one output
# channel's weights x1.25 -> 7.7 / 11.4 / 13.2 steps (gain 0.25 on mobilenet_v2_035), two depthwise filters
# swapped -> 131 / 90 / 155 steps, each at the node it touches only. Through ONNX Runtime (QDQ, quantize_static, the
# same images): clean <= 3.5 / 2.1 / 2.2 steps at 64 px, <= 3.4 / 2.3 / 2.9 at 224 px; planted 28.6 / 20.5 / 12.3 and
# 131.8 / 91.9 / 171.0 steps (docs/design.md §6).
JUMP_STEPS = 8.0
JUMP_GAIN = 0.1
# a channel narrower than MIN_STEPS steps, or with fewer than MIN_VALUES non-zero values, is not measured
MIN_STEPS = 8.0
MIN_VALUES = 32
GAIN_Z = 8.0  # a gain error counts only beyond this many of its standard errors
GAIN_STEPS = 2.0  # ... and where it moves the channel's extreme values by this many steps
# saturation: this share of the values outside the tensor's int8 range, and at least MIN_CLIPPED of them (an SE
# vector of 2 x 48 values clips 1 % with one value)
CLIPPED = 0.01
MIN_CLIPPED = 8
SPREAD = 20.0  # a channel spread that names a too-coarse per-tensor scale


class NodeError(NamedTuple):
    node: str
    op: str
    fused: tuple[str, ...]
    rel_error: float
    local_steps: float
    gain_error: float
    step: float
    clipped: float
    channel_spread: float
    values: int


def _local_reference(graph: Graph, weights: Mapping[str, np.ndarray], x: np.ndarray, name: str,
                     quantized: Mapping[str, Any]) -> np.ndarray:
    """``name``'s output computed in float64 from the int8 values of the quantized tensors it reads."""
    shapes = graph.shapes_at(*np.shape(x)[2:])
    memo: dict[str, np.ndarray] = {}

    def value(v: str) -> np.ndarray:
        if v not in memo:
            if v != name and v in quantized:
                memo[v] = quantized[v].values
            elif v == INPUT:
                memo[v] = np.asarray(x, np.float64)
            else:
                node = graph.node(v)
                memo[v] = reference.run_node(node, [value(i) for i in node.inputs], weights, shapes[v])
        return memo[v]
    return value(name)


def _gain_error(got: np.ndarray, want: np.ndarray, inside: np.ndarray, step: float) -> float:
    """max |g - 1| over the channels wide enough to measure, g the least-squares gain of ``got`` on ``want``
    over the values inside the int8 range."""
    worst = 0.0
    channels = range(want.shape[1]) if want.ndim == 4 else [None]
    for c in channels:
        sel = (slice(None), c) if c is not None else (slice(None),)
        w, g = want[sel].ravel(), got[sel].ravel()
        keep = inside[sel].ravel() & (np.abs(w) > step / 2)  # the values a ReLU zeroed tell nothing of the gain
        w, g = w[keep], g[keep]
        span = float(np.ptp(w)) / step if w.size else 0.0  # in steps
        if w.size < MIN_VALUES or span < MIN_STEPS:
            continue
        w, g = w - w.mean(), g - g.mean()
        gain = float(g @ w / (w @ w))
        resid = g - gain * w
        se = float(np.sqrt(resid @ resid / (w.size - 2) / (w @ w)))  # the gain's standard error
        # else rounding explains it: noise (values bunched near zero), or a systematic half step at the ends of a
        # narrow channel (a gain off by 12 % over 8 steps is 0.5 step at the ends: measured on an SE scale)
        if abs(gain - 1.0) > GAIN_Z * se and abs(gain - 1.0) * span / 2 >= GAIN_STEPS:
            worst = max(worst, abs(gain - 1.0))
    return worst


def _channel_spread(ref: np.ndarray) -> float:
    if ref.ndim != 4 or ref.shape[1] < 2:
        return 1.0
    per_channel = np.abs(ref).max(axis=(0, 2, 3))
    median = float(np.median(per_channel))
    return float(per_channel.max() / median) if median > 0 else float("inf")


def compare(graph: Graph, weights: Mapping[str, np.ndarray], x: np.ndarray,
            quantized: Mapping[str, Any]) -> list[NodeError]:
    """One :class:`NodeError` per quantized node, in graph order. ``quantized``: ``{node: tensor}`` with the
    fields of ``backends.tflite_int8.QuantTensor`` (values NCHW, scale, zero_point, qmin, qmax, fused, op)."""
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    ref = reference.run(graph, w, x, return_all=True)
    ref[INPUT] = np.asarray(x, np.float64)
    rows = []
    for name in [INPUT, *(n.name for n in graph.nodes)]:
        if name not in quantized or quantized[name].values.shape != ref[name].shape:
            continue  # not quantized, or a tensor of another shape (a flatten folded into a reshape)
        t, want = quantized[name], ref[name]
        local = want if name == INPUT else _local_reference(graph, w, x, name, quantized)
        top = float(np.abs(want).max()) or 1.0
        lo, hi = (t.qmin - t.zero_point - 0.5) * t.scale, (t.qmax - t.zero_point + 0.5) * t.scale
        inside = (local >= lo) & (local <= hi)
        local_err = float(np.abs(t.values - local)[inside].max(initial=0.0)) / t.scale
        rows.append(NodeError(name, "input" if name == INPUT else graph.node(name).op, tuple(t.fused),
                              float(np.abs(t.values - want).max()) / top, local_err,
                              _gain_error(t.values, local, inside, t.scale), t.scale / top,
                              1.0 - float(np.mean(inside)), _channel_spread(want), int(want.size)))
    return rows


def jumps(row: NodeError) -> bool:
    """Whether the node saturates or adds an error int8 rounding does not explain."""
    return _saturated(row) or row.local_steps >= JUMP_STEPS or row.gain_error >= JUMP_GAIN


def _saturated(row: NodeError) -> bool:
    return row.clipped >= CLIPPED and row.clipped * row.values >= MIN_CLIPPED


def first_jump(rows: list[NodeError]) -> NodeError | None:
    """The first node that :func:`jumps`, or None."""
    return next((r for r in rows if jumps(r)), None)


def reason(row: NodeError) -> str:
    """The likely cause of a node's int8 error, from its statistics."""
    if _saturated(row):
        return (f"saturated: {100 * row.clipped:.1f} % of the values lie outside the tensor's int8 range (calibration "
                "saw a smaller range; calibrate on more representative images)")
    if row.channel_spread >= SPREAD:
        return (f"per-tensor scale too coarse: the widest channel spans {row.channel_spread:.0f}x the median one, so "
                "most channels get few of the 256 levels (per-channel ranges, or clip the outlier channel)")
    return (f"this op alone is off by {row.local_steps:.0f} quantization steps of its output and a channel's gain by "
            f"{100 * row.gain_error:.0f} %, with no saturation or range spread: its weights or their mapping differ "
            "(a wrong weight, a channel order, a folded batch norm)")
def file_reference(path, runtime: str, input_size: int | None = None) -> tuple[Graph, dict[str, np.ndarray]]:
    """The graph and the float64 reference weights of an int8 file for the locator: its weights dequantized and
    matched onto its recorded graph (a lightnets export's sidecar) or onto the one id they fit, WITHOUT the import's
    top-1 probe (the locator compares node by node, a far finer check of the mapping; an int8 export of an id's
    random initial weights agrees with the float64 reference on as few as 6 % of top-1 at 1000 classes, so the
    import refuses it). ``runtime``: the backend that reads the file ("onnxruntime", "tflite")."""
    from pathlib import Path

    from . import artifacts, formats
    from .frameworks import load_backend

    fmt = formats.format_of(path)
    recorded = formats.read_file_meta(path, fmt).graph
    art = load_backend(runtime).read_artifact(Path(path))
    fits, _, closest = artifacts.fitting(art, recorded, None, input_size)
    if len(fits) != 1:
        where = f"{closest[0]}: {closest[1].problem}" if closest else "no id has as many weight ops"
        found = f"several ids: {', '.join(f[0] for f in fits)}" if fits else f"no lightnets id ({where})"
        raise WeightsError(f"{path} fits {found}; the locator needs the graph the file was quantized from: export it "
                           "with lightnets (its sidecar records the graph)")
    m = fits[0][1]
    return m.graph, {k: np.asarray(v, np.float64) for k, v in m.weights.items()}


def locate(graph: Graph, weights: Mapping[str, np.ndarray], x: np.ndarray, quantized: Mapping[str, Any]) -> dict:
    """``{"rows": [NodeError], "first_jump": NodeError | None, "reason": str | None}``."""
    rows = compare(graph, weights, x, quantized)
    jump = first_jump(rows)
    return {"rows": rows, "first_jump": jump, "reason": reason(jump) if jump else None}


def summary(report: dict) -> dict:
    """The report as plain data (for JSON): every row, the first jump and its reason."""
    return {"rows": [r._asdict() for r in report["rows"]],
            "first_jump": report["first_jump"].node if report["first_jump"] else None, "reason": report["reason"]}


def plot(report: dict, path, title: str) -> None:
    """The accumulated error and each op's local error (in steps) along depth, the first jump marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .weights import atomic_write

    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(max(8, len(rows) / 8), 4.5))
    ax.semilogy([max(r.rel_error, 1e-6) for r in rows], label="accumulated: |int8 - reference| / max |reference|")
    ax.semilogy([max(r.local_steps, 1e-2) for r in rows], label="this op alone: |int8 - local reference| in steps")
    ax.axhline(JUMP_STEPS, color="r", lw=0.8, ls="--", label=f"jump: {JUMP_STEPS:g} steps")
    jump = report["first_jump"]
    if jump is not None:
        i = rows.index(jump)
        ax.annotate(f"first jump: {jump.node}", (i, max(jump.local_steps, 1e-2)), color="r", fontsize=8)
    ax.set_xlabel("quantized tensors along depth (graph order)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()

    def write(tmp):
        fig.savefig(tmp, format="png", dpi=110)
    atomic_write(path, write)
    plt.close(fig)


class RuntimeRow(NamedTuple):
    """One node quantized by two int8 runtimes (a, b) on the same input: how far apart their dequantized tensors are
    in quantization steps of a's tensor, the scale ratio b / a, both zero points, and each runtime's local error."""

    node: str
    op: str
    steps_max: float
    steps_mean: float
    differing: float  # share of values that are not the same quantization level
    scale_ratio: float
    zero_points: tuple[int, int]
    local_a: float
    local_b: float


def runtime_parity(graph: Graph, a: Mapping[str, Any], b: Mapping[str, Any], rows_a: list[NodeError],
                   rows_b: list[NodeError]) -> list[RuntimeRow]:
    """Node by node, in graph order, the nodes both int8 runtimes quantize (``a``/``b``: ``{node: tensor}`` as
    :func:`compare` takes them, on the same input; ``rows_a``/``rows_b``: their :func:`compare` rows)."""
    local_a, local_b = ({r.node: r.local_steps for r in rows} for rows in (rows_a, rows_b))
    out = []
    for name in [INPUT, *(n.name for n in graph.nodes)]:
        if name not in a or name not in b or a[name].values.shape != b[name].values.shape:
            continue
        ta, tb = a[name], b[name]
        d = np.round(np.abs(ta.values - tb.values) / ta.scale, 6)  # (float32 dequantization: 1e-7 of a step)
        out.append(RuntimeRow(name, "input" if name == INPUT else graph.node(name).op, float(d.max()), float(d.mean()),
                              float(np.mean(d > 0.5)), tb.scale / ta.scale, (ta.zero_point, tb.zero_point),
                              local_a.get(name, float("nan")), local_b.get(name, float("nan"))))
    return out
