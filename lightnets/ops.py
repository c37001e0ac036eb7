"""The closed op vocabulary: each op's attributes, parameters and shape rule.

Shapes are per sample and channels-first: ``(C, H, W)`` for feature maps, ``(C,)`` for vectors.
Nothing outside this table may enter a graph. Every place an op lives (docs/design.md §7, "Add an op"):
its schema in ``OPS`` here; its float64 forward in ``reference.run_node``; its vector-Jacobian product in
``backward._node_backward`` (and ``backward._shift_passes`` if a per-channel shift passes through it); one
converter ``CONVERTERS[op](c: Lowering)`` in each of ``backends/torch/lowering.py``, ``keras/lowering.py``
(LiteRT converts keras'), ``paddle/lowering.py`` and ``onnx.py`` (tests/test_backend_contract.py lists a missing one);
op cases in ``parity/cases.py`` and a use in ``tests/test_fuzz.py``'s random graphs (both checked to cover
``OPS``); and, where it applies, ``features.reductions`` (an op that sets a spatial size) and, for an op with
weights, each backend's ``NATIVE_NAMES`` / ``NATIVE_LAYOUTS`` and the file importers
(``lightnets/artifacts/matching.py``).

Activation formulas (pinned; every backend must compute exactly these):

- relu(x)        = max(x, 0)
- relu6(x)       = min(max(x, 0), 6)
- hardsigmoid(x) = relu6(x + 3) / 6
- hardswish(x)   = x * relu6(x + 3) / 6
- sigmoid(x)     = 1 / (1 + exp(-x))
- swish(x)       = x * sigmoid(x)

Padding of conv2d / max_pool2d / avg_pool2d: ``padding="explicit"`` uses the 4-sided ``pads``
(top, bottom, left, right) as given; ``padding="same"`` is TF/Keras "same", whose pads depend on the
input size and are resolved by shape inference for the actual input (:func:`effective_pads`).
Max pooling pads with -inf; average pooling either counts pads (``count_include_pad``) or not.

``resize_nearest(x, like)``: ``x`` at ``like``'s spatial size, output row ``i`` = input row
``floor(i * H_in / H_out)`` in exact integer arithmetic (likewise columns); ``like`` gives only its size, so
the graph stays size-independent (an odd map: 7x7 -> 2x2 average pool, stride 2 -> 3x3 -> back to 7x7
reads rows 0, 0, 0, 1, 1, 2, 2).

``drop_path(x)`` (stochastic depth, drop-connect): in training each SAMPLE's whole input is zeroed with
probability ``rate`` and the survivors are scaled by ``1 / (1 - rate)``: ``y[n] = x[n] * m[n] / (1 - rate)``,
``m[n] ~ Bernoulli(1 - rate)`` (torchvision ``StochasticDepth(mode="row")``, timm ``DropPath``, keras
``Dropout(noise_shape=(None, 1, 1, 1))``); in eval it is the identity. Like ``dropout``, the reference and every
backend's parity train mode (``Backend.training``) run it off: its mask is each framework's own random draw.

BatchNorm (eval): ``y = (x - mean) / sqrt(var + eps) * gamma + beta``; in training the running
statistics follow the torch convention ``new = (1 - momentum) * old + momentum * batch`` with the
unbiased batch variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import SpecError

ACTIVATIONS = ("relu", "relu6", "hardsigmoid", "hardswish", "sigmoid", "swish")

Shape = tuple[int, ...]


class ParamSpec(NamedTuple):
    """One canonical parameter: full name, shape, role and whether it is trained by SGD."""

    name: str
    shape: Shape
    role: str  # weight | bias | gamma | beta | mean | var
    trainable: bool


@dataclass(frozen=True)
class Attr:
    """One attribute of an op: its kind, default (``REQUIRED`` if none) and an optional check."""

    kind: str  # int | float | bool | str | ints
    default: Any = None
    check: Callable[[Any], str | None] | None = None
    length: int | None = None  # for kind == "ints"

    REQUIRED = object()


def _positive(v):
    return None if all(i > 0 for i in (v if isinstance(v, tuple) else (v,))) else "must be > 0"


def _non_negative(v):
    return None if all(i >= 0 for i in v) else "must be >= 0"


def _in(options):
    return lambda v: None if v in options else f"must be one of {', '.join(map(str, options))}"


def _rate(v):
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


def _eps(v):
    return None if v > 0 else "must be > 0"


R = Attr.REQUIRED


@dataclass(frozen=True)
class OpSchema:
    """An op of the vocabulary: attributes, number of inputs, parameters and shape rule."""

    name: str
    attrs: dict[str, Attr]
    n_inputs: int | None  # None: any number >= 2
    infer: Callable[[dict, list[Shape]], Shape]
    params: Callable[[dict, list[Shape]], list[tuple[str, Shape, str, bool]]] = lambda a, s: []
    weight_kind: str | None = None  # an op with parameters: how zoo matchers and file importers group them


def _need_map(op: str, shape: Shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise SpecError(f"{op} needs a (C, H, W) feature map, got shape {shape}; "
                        "put it before global_avg_pool/flatten")
    return shape


def window_out(size: int, k: int, s: int, pad_lo: int, pad_hi: int, d: int = 1) -> int:
    """Output length of a sliding window (floor mode)."""
    return (size + pad_lo + pad_hi - d * (k - 1) - 1) // s + 1


def same_pads(n: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """(low, high) pads of TF/Keras ``padding="same"`` on a length-``n`` axis: the total is
    ``max((ceil(n/s) - 1)*s + d*(k-1) + 1 - n, 0)``, the odd pixel goes to the high side (bottom/right).
    So stride 2 on an even input pads (0, 1) for k=3 and (1, 2) for k=5; keras.applications'
    ``correct_pad`` + 'valid' is the same rule for stride 2."""
    total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
    return total // 2, total - total // 2


def effective_pads(a: dict, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a conv/pool node on an ``h`` x ``w`` input: the ``pads``
    attribute for ``padding="explicit"``, TF "same" computed for THIS input size for ``padding="same"``."""
    if a.get("padding", "explicit") == "explicit":
        return tuple(a["pads"])
    (kh, kw), (sh, sw), (dh, dw) = a["kernel"], a["stride"], a.get("dilation", (1, 1))
    return same_pads(hw[0], kh, sh, dh) + same_pads(hw[1], kw, sw, dw)


def static_pads(a: dict) -> tuple[int, int, int, int] | None:
    """The pads of a conv/pool node when they do not depend on the input size (explicit pads, or "same"
    with stride 1, whose total pad is ``d*(k-1)`` at any size); None when they do (strided "same")."""
    if a.get("padding", "explicit") == "explicit":
        return tuple(a["pads"])
    if all(s == 1 for s in a["stride"]):
        return effective_pads(a, (1, 1))
    return None


def _window_shape(op: str, a: dict, x: Shape, channels: int) -> Shape:
    c, h, w = _need_map(op, x)
    kh, kw = a["kernel"]
    sh, sw = a["stride"]
    pads = effective_pads(a, (h, w))
    t, b, l, r = pads
    dh, dw = a.get("dilation", (1, 1))
    ho, wo = window_out(h, kh, sh, t, b, dh), window_out(w, kw, sw, l, r, dw)
    if ho < 1 or wo < 1:
        raise SpecError(f"{op}: input {h}x{w} is too small for kernel {kh}x{kw}, stride {sh}x{sw}, "
                        f"pads {pads} (output would be {ho}x{wo}); use a larger input size")
    return (channels, ho, wo)


def _conv_infer(a, shapes):
    c = _need_map("conv2d", shapes[0])[0]
    g = a["groups"]
    if c % g or a["out_channels"] % g:
        raise SpecError(f"conv2d: in_channels {c} and out_channels {a['out_channels']} must both be "
                        f"divisible by groups {g}; change the channel table or the groups")
    return _window_shape("conv2d", a, shapes[0], a["out_channels"])


def _conv_params(a, shapes):
    c = shapes[0][0]
    kh, kw = a["kernel"]
    out = [("weight", (a["out_channels"], c // a["groups"], kh, kw), "weight", True)]
    if a["bias"]:
        out.append(("bias", (a["out_channels"],), "bias", True))
    return out


def _pool_infer(op):
    def infer(a, shapes):
        c = _need_map(op, shapes[0])[0]
        kh, kw = a["kernel"]
        t, b, l, r = effective_pads(a, shapes[0][1:]) if len(shapes[0]) == 3 else a["pads"]
        if max(t, b) >= kh or max(l, r) >= kw:
            raise SpecError(f"{op}: pads {(t, b, l, r)} must be smaller than the kernel {a['kernel']} "
                            "(a window of padding only has no defined value)")
        return _window_shape(op, a, shapes[0], c)
    return infer


def _same(op):
    def infer(a, shapes):
        first = shapes[0]
        for s in shapes[1:]:
            if s != first:
                raise SpecError(f"{op}: input shapes {shapes} differ; {op} needs equal shapes")
        return first
    return infer


def _mul_infer(a, shapes):
    x, s = shapes
    c = _need_map("mul", x)[0]
    if s not in ((c, 1, 1), x):
        raise SpecError(f"mul: scale shape {s} must be {(c, 1, 1)} (per-channel, as in SE) or {x}")
    return x


def _concat_infer(a, shapes):
    hw = {s[1:] for s in shapes}
    if len(hw) != 1 or any(len(s) != 3 for s in shapes):
        raise SpecError(f"concat: inputs {shapes} must be feature maps of one spatial size")
    return (sum(s[0] for s in shapes), *shapes[0][1:])


def _slice_infer(a, shapes):
    c = _need_map("slice_channels", shapes[0])[0]
    start, stop = a["start"], a["stop"]
    if not 0 <= start < stop <= c:
        raise SpecError(f"slice_channels: [{start}, {stop}) is not a non-empty range inside the "
                        f"{c} input channels")
    return (stop - start, *shapes[0][1:])


def _shuffle_infer(a, shapes):
    c = _need_map("channel_shuffle", shapes[0])[0]
    if c % a["groups"]:
        raise SpecError(f"channel_shuffle: {c} channels are not divisible by groups {a['groups']}; "
                        "choose groups that divide the channel count")
    return shapes[0]


def _resize_infer(a, shapes):
    x, like = shapes
    c = _need_map("resize_nearest", x)[0]
    _need_map("resize_nearest", like)
    return (c, *like[1:])


def nearest_index(size_in: int, size_out: int) -> list[int]:
    """Source index of each output position of ``resize_nearest`` along one axis: ``floor(i * in / out)`` in
    exact integer arithmetic (torch ``F.interpolate(mode="nearest")``'s rule; torch and paddle compute it with a
    float32 scale, which lands one index low at some size pairs, e.g. 6 -> 74, 26 -> 22 - never at
    out = 2 * in or 2 * in + 1)."""
    return [i * size_in // size_out for i in range(size_out)]


def _bn_infer(a, shapes):
    return _need_map("batch_norm", shapes[0])  # BatchNorm2d: every backend and the reference normalise (N, C, H, W)


def _bn_params(a, shapes):
    c = (shapes[0][0],)
    return [("gamma", c, "gamma", True), ("beta", c, "beta", True),
            ("mean", c, "mean", False), ("var", c, "var", False)]


def _gap_infer(a, shapes):
    c = _need_map("global_avg_pool", shapes[0])[0]
    return (c, 1, 1)


def _flatten_infer(a, shapes):
    s = shapes[0]
    if len(s) == 3 and s[1:] != (1, 1):
        raise SpecError(f"flatten: input {s} must be (C, 1, 1): flatten only after global_avg_pool, "
                        "so that NCHW and NHWC frameworks agree on the feature order")
    return (s[0],)


def _linear_infer(a, shapes):
    if len(shapes[0]) != 1:
        raise SpecError(f"linear: input {shapes[0]} must be a vector; flatten it first")
    return (a["out_features"],)


def _linear_params(a, shapes):
    out = [("weight", (a["out_features"], shapes[0][0]), "weight", True)]
    if a["bias"]:
        out.append(("bias", (a["out_features"],), "bias", True))
    return out


PADDINGS = ("explicit", "same")
WINDOW = {
    "kernel": Attr("ints", R, _positive, 2),
    "stride": Attr("ints", (1, 1), _positive, 2),
    "pads": Attr("ints", (0, 0, 0, 0), _non_negative, 4),
    # "explicit": the 4 pads above; "same": TF/Keras "same", resolved for the actual input size
    "padding": Attr("str", "explicit", _in(PADDINGS)),
}

OPS: dict[str, OpSchema] = {
    s.name: s
    for s in [
        OpSchema("conv2d", {
            "out_channels": Attr("int", R, _positive),
            **WINDOW,
            "dilation": Attr("ints", (1, 1), _positive, 2),
            "groups": Attr("int", 1, _positive),
            "bias": Attr("bool", False),
        }, 1, _conv_infer, _conv_params, "conv"),
        OpSchema("batch_norm", {
            "eps": Attr("float", 1e-5, _eps),
            "momentum": Attr("float", 0.1, lambda v: None if 0 < v <= 1 else "must be in (0, 1]"),
        }, 1, _bn_infer, _bn_params, "bn"),
        OpSchema("activation", {"kind": Attr("str", R, _in(ACTIVATIONS))}, 1, _same("activation")),
        OpSchema("add", {}, 2, _same("add")),
        OpSchema("mul", {}, 2, _mul_infer),
        OpSchema("concat", {}, None, _concat_infer),
        OpSchema("slice_channels", {"start": Attr("int", R), "stop": Attr("int", R)}, 1, _slice_infer),
        OpSchema("channel_shuffle", {"groups": Attr("int", R, _positive)}, 1, _shuffle_infer),
        # resize_nearest(x, like): x resized to like's height and width (nearest, :func:`nearest_index`); like's
        # values are not read (GhostNetV2's DFC attention: a gate computed at half size, back to the map's size)
        OpSchema("resize_nearest", {}, 2, _resize_infer),
        OpSchema("max_pool2d", dict(WINDOW), 1, _pool_infer("max_pool2d")),
        OpSchema("avg_pool2d", {**WINDOW, "count_include_pad": Attr("bool", R)}, 1,
                 _pool_infer("avg_pool2d")),
        OpSchema("global_avg_pool", {}, 1, _gap_infer),
        OpSchema("flatten", {}, 1, _flatten_infer),
        OpSchema("linear", {"out_features": Attr("int", R, _positive), "bias": Attr("bool", True)}, 1,
                 _linear_infer, _linear_params, "linear"),
        OpSchema("dropout", {"rate": Attr("float", 0.0, _rate)}, 1, _same("dropout")),
        # drop_path(x): stochastic depth of a residual branch (per sample, see the module docstring)
        OpSchema("drop_path", {"rate": Attr("float", 0.0, _rate)}, 1, _same("drop_path")),
    ]
}
# the weight kinds of the ops with parameters: the unit of a zoo matcher (lightnets.zoo.matcher) and of a file
# importer's layers (lightnets.artifacts.Layer.kind)
WEIGHT_KINDS = tuple(dict.fromkeys(s.weight_kind for s in OPS.values() if s.weight_kind))


def _coerce(op: str, key: str, spec: Attr, value: Any) -> Any:
    where = f"{op}.{key}"
    if spec.kind == "ints":
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value,) * spec.length
        if not isinstance(value, (tuple, list)) or len(value) != spec.length or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise SpecError(f"{where} must be an int or {spec.length} ints, got {value!r}")
        return tuple(value)
    if spec.kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif spec.kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif spec.kind == "bool":
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise SpecError(f"{where} must be of type {spec.kind}, got {value!r}")
    return value


def normalize_attrs(op: str, attrs: dict) -> dict:
    """Validate ``attrs`` of ``op`` against its schema; return them complete and canonical."""
    if op not in OPS:
        raise SpecError(f"unknown op {op!r}; the vocabulary is: {', '.join(OPS)}")
    schema = OPS[op].attrs
    unknown = sorted(set(attrs) - set(schema))
    if unknown:
        raise SpecError(f"{op}: unknown attribute(s) {unknown}; allowed: {sorted(schema)}")
    out = {}
    for key, spec in schema.items():
        if key not in attrs:
            if spec.default is R:
                raise SpecError(f"{op}: missing required attribute {key!r}")
            value = spec.default
        else:
            value = _coerce(op, key, spec, attrs[key])
        if spec.check and (problem := spec.check(value)):
            raise SpecError(f"{op}.{key}={value!r} {problem}")
        out[key] = value
    if out.get("padding") == "same" and any(out["pads"]):
        raise SpecError(f"{op}: pads {out['pads']} given with padding='same'; 'same' computes the pads from "
                        "the input size - drop pads, or use padding='explicit'")
    return out


def infer_shape(op: str, attrs: dict, in_shapes: list[Shape]) -> Shape:
    """Output shape of ``op`` for the given (normalized) attrs and input shapes."""
    schema = OPS[op]
    n = len(in_shapes)
    if (schema.n_inputs is None and n < 2) or (schema.n_inputs is not None and n != schema.n_inputs):
        want = "at least 2" if schema.n_inputs is None else str(schema.n_inputs)
        raise SpecError(f"{op} takes {want} input(s), got {n}")
    return schema.infer(attrs, in_shapes)


def param_specs(node_name: str, op: str, attrs: dict, in_shapes: list[Shape]) -> list[ParamSpec]:
    """Canonical parameters of one node, named ``<node>.<suffix>``."""
    return [ParamSpec(f"{node_name}.{suffix}", shape, role, trainable)
            for suffix, shape, role, trainable in OPS[op].params(attrs, in_shapes)]


def macs(op: str, attrs: dict, in_shapes: list[Shape], out_shape: Shape) -> int:
    """Multiply-accumulates of one node (convs and linears; BN is assumed folded)."""
    if op == "conv2d":
        kh, kw = attrs["kernel"]
        c_out, ho, wo = out_shape
        return c_out * ho * wo * (in_shapes[0][0] // attrs["groups"]) * kh * kw
    if op == "linear":
        return in_shapes[0][0] * attrs["out_features"]
    return 0
