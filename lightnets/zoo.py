"""Zoo checkpoint importers: torchvision, timm, paddle.vision and keras.applications models <-> canonical weights.

One table per zoo maps ``(zoo, name)`` to the lightnets id whose graph really is that model, the
zoo's BN eps/momentum where they differ from the id's graph, and the zoo's preprocessing (DESIGN §2:
imports fail through preprocessing, head and eps differences more often than through arithmetic).

Names and layouts are mapped by ONE mechanism, :func:`name_map`: the zoo model's parameters grouped
by module in state-dict order are matched to the graph's parameters grouped by node in order (kinds
conv/bn/linear and every shape checked; a 1x1 conv in the zoo may be a linear in the graph; paddle
``Linear`` weights are transposed; torch ``num_batches_tracked`` is dropped). The result is an
explicit ``{canonical_name: (zoo_key, layout)}`` map, checked to use every zoo key once and fill
every canonical key. Every import then checks the zoo model's output on a probe batch against the
float64 reference executor before it reports success (DESIGN §2, X2Paddle #594).

Keras models have no state dict: their "state dict" is ``{f"{layer.name}.{weight.name}": array}``
in ``model.layers`` order (kernel, depthwise_kernel for a DepthwiseConv2D's kernel, bias,
gamma/beta/moving_mean/moving_variance), which the same positional matcher maps with keras layouts
(conv (kh,kw,I,O), depthwise (kh,kw,C,1), a 1x1 conv classifier (1,1,I,O) or a Dense (I,O) for a
linear). The keras ids' graphs carry TF padding computed from the input size, so import at the
keras model's input size.

numpy only at import time; torch/timm/torchvision/paddle/keras are imported inside the ``make`` functions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from . import reference, registry
from . import weights as W
from .errors import LightnetsError, WeightsError
from .graph import Graph, Node

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "scale": 1 / 255,
            "channels": "RGB", "layout": "NCHW"}
INCEPTION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "scale": 1 / 255,
             "channels": "RGB", "layout": "NCHW"}
PADDING = "symmetric (k//2 on every side, as torch/paddle padding=k//2)"
KERAS_PADDING = ("TF 'same' (odd pixel bottom/right) for the stem and stride-1 convs; strided depthwise "
                 "convs ZeroPadding2D + 'valid': correct_pad (MobileNetV2/V3) or ((0, 1), (0, 1)) "
                 "(MobileNet); pads computed from the input size")
# keras.applications.mobilenet(_v2).preprocess_input, mode "tf": x / 127.5 - 1 on RGB 0..255
KERAS_TF = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "scale": 1 / 255, "channels": "RGB",
            "layout": "NHWC", "input_range": (0, 255), "rescale": (1 / 127.5, -1.0),
            "in_model": False, "source": "keras.applications.{mobilenet,mobilenet_v2}.preprocess_input "
                                         "(mode 'tf': x / 127.5 - 1)"}
# keras.applications MobileNetV3: Rescaling(scale=1/127.5, offset=-1) inside the model when
# include_preprocessing=True (the default); the graph has no rescale op, so apply it before the graph
KERAS_V3 = {**KERAS_TF, "in_model": "Rescaling(scale=1/127.5, offset=-1.0) when include_preprocessing=True",
            "source": "keras.applications.MobileNetV3*(include_preprocessing=True) Rescaling layer"}
PROBE_TOLERANCE = 1e-4  # float32 zoo model vs float64 reference, relative to max |logit|


class ZooEntry(NamedTuple):
    """One zoo model: the lightnets id, how to build the zoo model, and the zoo's conventions.

    ``make(num_classes)`` builds the zoo model with random weights (never downloads). ``bn_eps`` and
    ``bn_momentum`` (IR convention: new = (1-m)·old + m·batch) are the zoo's values; the imported
    graph carries them even where the registered id's defaults differ.
    """

    arch: str
    framework: str  # "torch" | "paddle" | "keras"
    make: Callable[[int], Any]
    preprocessing: Mapping[str, Any]
    bn_eps: float
    bn_momentum: float
    padding: str = PADDING
    classifier_activation: str | None = None  # the zoo's default; the graph always outputs logits


def _torchvision(ctor: str, **kw):
    def make(num_classes: int = 1000):
        import torchvision
        return getattr(torchvision.models, ctor)(weights=None, num_classes=num_classes, **kw)
    return make


def _timm(name: str):
    def make(num_classes: int = 1000):
        import timm
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    return make


def _paddle(ctor: str, **kw):
    def make(num_classes: int = 1000):
        import paddle.vision.models as pm
        return getattr(pm, ctor)(pretrained=False, num_classes=num_classes, **kw)
    return make


def _tv(arch, ctor, eps=1e-5, momentum=0.1, **kw):
    return ZooEntry(arch, "torch", _torchvision(ctor, **kw), IMAGENET, eps, momentum)


def _tm(arch, name, pre=IMAGENET):
    return ZooEntry(arch, "torch", _timm(name), pre, 1e-5, 0.1)


def _pd(arch, ctor, eps=1e-5, momentum=0.1, **kw):  # paddle momentum 0.9 (0.99) = IR 0.1 (0.01)
    return ZooEntry(arch, "paddle", _paddle(ctor, **kw), IMAGENET, eps, momentum)


def _keras(ctor: str, **kw):
    def make(num_classes: int = 1000, input_size: int = 224):
        import keras
        extra = {"include_preprocessing": False} if ctor.startswith("MobileNetV3") else {}
        return getattr(keras.applications, ctor)(weights=None, classes=num_classes, classifier_activation=None,
                                                 input_shape=(input_size, input_size, 3), **extra, **kw)
    return make


def _ka(arch, ctor, momentum, pre=KERAS_TF, **kw):  # keras momentum 0.99 (0.999) = IR 0.01 (0.001)
    return ZooEntry(arch, "keras", _keras(ctor, **kw), pre, 1e-3, momentum, KERAS_PADDING, "softmax")


TORCHVISION = {
    ("torchvision", "mobilenet_v2"): _tv("mobilenet_v2_100", "mobilenet_v2"),
    ("torchvision", "mobilenet_v3_large"): _tv("mobilenet_v3_large_100", "mobilenet_v3_large", 1e-3, 0.01),
    ("torchvision", "mobilenet_v3_small"): _tv("mobilenet_v3_small_100", "mobilenet_v3_small", 1e-3, 0.01),
    # torchvision's width_mult rounds every table width on its own, like paddle.vision
    ("torchvision", "mobilenet_v3_large_075"): _tv("mobilenet_v3_large_075_paddle", "mobilenet_v3_large",
                                                   1e-3, 0.01, width_mult=0.75),
    ("torchvision", "mobilenet_v3_small_075"): _tv("mobilenet_v3_small_075_paddle", "mobilenet_v3_small",
                                                   1e-3, 0.01, width_mult=0.75),
    ("torchvision", "shufflenet_v2_x0_5"): _tv("shufflenet_v2_050", "shufflenet_v2_x0_5"),
    ("torchvision", "shufflenet_v2_x1_0"): _tv("shufflenet_v2_100", "shufflenet_v2_x1_0"),
    ("torchvision", "shufflenet_v2_x1_5"): _tv("shufflenet_v2_150", "shufflenet_v2_x1_5"),
    ("torchvision", "shufflenet_v2_x2_0"): _tv("shufflenet_v2_200", "shufflenet_v2_x2_0"),
}
TIMM = {  # timm builds every BN with eps 1e-5 (lightnets' MobileNetV3 ids default to 1e-3)
    ("timm", "ghostnet_050"): _tm("ghostnet_050", "ghostnet_050"),
    ("timm", "ghostnet_100"): _tm("ghostnet_100", "ghostnet_100"),
    ("timm", "ghostnet_130"): _tm("ghostnet_130", "ghostnet_130"),
    ("timm", "mobilenetv1_100"): _tm("mobilenet_v1_100", "mobilenetv1_100", INCEPTION),
    ("timm", "mobilenetv2_035"): _tm("mobilenet_v2_035", "mobilenetv2_035"),
    ("timm", "mobilenetv2_050"): _tm("mobilenet_v2_050", "mobilenetv2_050"),
    ("timm", "mobilenetv2_075"): _tm("mobilenet_v2_075", "mobilenetv2_075"),
    ("timm", "mobilenetv2_100"): _tm("mobilenet_v2_100", "mobilenetv2_100"),
    ("timm", "mobilenetv2_140"): _tm("mobilenet_v2_140", "mobilenetv2_140"),
    # conv_head (1x1 conv with bias, after the global pool) = the graph's head.hidden linear
    ("timm", "mobilenetv3_large_075"): _tm("mobilenet_v3_large_075", "mobilenetv3_large_075"),
    ("timm", "mobilenetv3_large_100"): _tm("mobilenet_v3_large_100", "mobilenetv3_large_100"),
    ("timm", "mobilenetv3_small_075"): _tm("mobilenet_v3_small_075", "mobilenetv3_small_075"),
    ("timm", "mobilenetv3_small_100"): _tm("mobilenet_v3_small_100", "mobilenetv3_small_100"),
}
PADDLE = {
    ("paddle", "mobilenet_v1"): _pd("mobilenet_v1_100", "mobilenet_v1"),
    ("paddle", "mobilenet_v1_x0_75"): _pd("mobilenet_v1_075", "mobilenet_v1", scale=0.75),
    ("paddle", "mobilenet_v1_x0_5"): _pd("mobilenet_v1_050", "mobilenet_v1", scale=0.5),
    ("paddle", "mobilenet_v1_x0_25"): _pd("mobilenet_v1_025", "mobilenet_v1", scale=0.25),
    ("paddle", "mobilenet_v2"): _pd("mobilenet_v2_100", "mobilenet_v2"),
    ("paddle", "mobilenet_v2_x0_75"): _pd("mobilenet_v2_075", "mobilenet_v2", scale=0.75),
    ("paddle", "mobilenet_v2_x0_5"): _pd("mobilenet_v2_050", "mobilenet_v2", scale=0.5),
    ("paddle", "mobilenet_v3_large"): _pd("mobilenet_v3_large_100", "mobilenet_v3_large", 1e-3, 0.01),
    ("paddle", "mobilenet_v3_small"): _pd("mobilenet_v3_small_100", "mobilenet_v3_small", 1e-3, 0.01),
    ("paddle", "mobilenet_v3_large_x0_75"): _pd("mobilenet_v3_large_075_paddle", "mobilenet_v3_large",
                                                1e-3, 0.01, scale=0.75),
    ("paddle", "mobilenet_v3_small_x0_75"): _pd("mobilenet_v3_small_075_paddle", "mobilenet_v3_small",
                                                1e-3, 0.01, scale=0.75),
    ("paddle", "shufflenet_v2_x0_25"): _pd("shufflenet_v2_025_paddle", "shufflenet_v2_x0_25"),
    ("paddle", "shufflenet_v2_x0_33"): _pd("shufflenet_v2_033_paddle", "shufflenet_v2_x0_33"),
    ("paddle", "shufflenet_v2_x0_5"): _pd("shufflenet_v2_050", "shufflenet_v2_x0_5"),
    ("paddle", "shufflenet_v2_x1_0"): _pd("shufflenet_v2_100", "shufflenet_v2_x1_0"),
    ("paddle", "shufflenet_v2_x1_5"): _pd("shufflenet_v2_150", "shufflenet_v2_x1_5"),
    ("paddle", "shufflenet_v2_x2_0"): _pd("shufflenet_v2_200_paddle", "shufflenet_v2_x2_0"),
    ("paddle", "shufflenet_v2_swish"): _pd("shufflenet_v2_swish_100_paddle", "shufflenet_v2_swish"),
}
KERAS = {  # names are "<constructor>" at alpha 1.0, "<constructor>_<alpha>" otherwise
    ("keras", "MobileNet"): _ka("mobilenet_v1_100_keras", "MobileNet", 0.01),
    ("keras", "MobileNet_0.75"): _ka("mobilenet_v1_075_keras", "MobileNet", 0.01, alpha=0.75),
    ("keras", "MobileNet_0.5"): _ka("mobilenet_v1_050_keras", "MobileNet", 0.01, alpha=0.5),
    ("keras", "MobileNet_0.25"): _ka("mobilenet_v1_025_keras", "MobileNet", 0.01, alpha=0.25),
    ("keras", "MobileNetV2"): _ka("mobilenet_v2_100_keras", "MobileNetV2", 0.001),
    ("keras", "MobileNetV2_0.35"): _ka("mobilenet_v2_035_keras", "MobileNetV2", 0.001, alpha=0.35),
    ("keras", "MobileNetV2_0.5"): _ka("mobilenet_v2_050_keras", "MobileNetV2", 0.001, alpha=0.5),
    ("keras", "MobileNetV2_0.75"): _ka("mobilenet_v2_075_keras", "MobileNetV2", 0.001, alpha=0.75),
    ("keras", "MobileNetV2_1.3"): _ka("mobilenet_v2_130_keras", "MobileNetV2", 0.001, alpha=1.3),
    ("keras", "MobileNetV2_1.4"): _ka("mobilenet_v2_140_keras", "MobileNetV2", 0.001, alpha=1.4),
    ("keras", "MobileNetV3Large"): _ka("mobilenet_v3_large_100_keras", "MobileNetV3Large", 0.001, KERAS_V3),
    ("keras", "MobileNetV3Large_0.75"): _ka("mobilenet_v3_large_075_keras", "MobileNetV3Large", 0.001,
                                            KERAS_V3, alpha=0.75),
    ("keras", "MobileNetV3Small"): _ka("mobilenet_v3_small_100_keras", "MobileNetV3Small", 0.001, KERAS_V3),
    ("keras", "MobileNetV3Small_0.75"): _ka("mobilenet_v3_small_075_keras", "MobileNetV3Small", 0.001,
                                            KERAS_V3, alpha=0.75),
}
ZOO: dict[tuple[str, str], ZooEntry] = {**TORCHVISION, **TIMM, **PADDLE, **KERAS}
ZOOS = ("torchvision", "timm", "paddle", "keras")


def entry(zoo: str, name: str) -> ZooEntry:
    if (zoo, name) not in ZOO:
        known = sorted(n for z, n in ZOO if z == zoo)
        raise LightnetsError(f"no importer for {zoo!r} model {name!r}; zoos are {ZOOS}"
                             + (f", {zoo} models are {known}" if known else ""))
    return ZOO[(zoo, name)]


def list_zoo(zoo: str | None = None) -> list[tuple[str, str]]:
    """The ``(zoo, name)`` keys of one zoo; with ``zoo=None`` those of the torch and paddle zoos only.

    keras.applications entries are listed by ``list_zoo("keras")`` alone: they need tensorflow, and
    tensorflow imported before paddle in one process segfaults (DESIGN §2), so a loop over "every
    zoo" must not mix them with the paddle ones.
    """
    if zoo is None:
        return sorted(k for k, e in ZOO.items() if e.framework != "keras")
    return sorted(k for k in ZOO if k[0] == zoo)


# --- graph with the zoo's BN conventions ----------------------------------------------------------
def with_bn(graph: Graph, eps: float, momentum: float) -> Graph:
    """``graph`` with every batch_norm's eps and momentum replaced (recorded in ``meta``)."""
    nodes = [Node(n.name, n.op, n.inputs, {**n.attrs, "eps": eps, "momentum": momentum})
             if n.op == "batch_norm" else n for n in graph.nodes]
    meta = {**graph.meta, "bn_eps": eps, "bn_momentum": momentum}
    return Graph(graph.name, graph.input_shape, tuple(nodes), meta)


def zoo_graph(zoo: str, name: str, num_classes: int = 1000, input_size: int = 224) -> Graph:
    e = entry(zoo, name)
    g = registry.get_spec(e.arch, num_classes=num_classes, input_size=input_size)
    g = with_bn(g, e.bn_eps, e.bn_momentum)
    return Graph(g.name, g.input_shape, g.nodes, {**g.meta, "zoo": zoo, "zoo_name": name})


# --- the one mapping mechanism --------------------------------------------------------------------
_BN_ROLES = {"torch": {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "var"},
             "paddle": {"weight": "gamma", "bias": "beta", "_mean": "mean", "_variance": "var"},
             "keras": {"gamma": "gamma", "beta": "beta", "moving_mean": "mean", "moving_variance": "var"}}
_KERAS_ROLES = {"kernel": "weight", "depthwise_kernel": "weight", "bias": "bias"}
_SKIP = ("num_batches_tracked",)
_KIND = {"conv2d": "conv", "batch_norm": "bn", "linear": "linear"}


def _zoo_groups(shapes: Mapping[str, tuple], framework: str) -> list[tuple[str, str, dict]]:
    """[(module, kind, {role: (key, shape)})] in state-dict order."""
    groups: dict[str, dict[str, tuple[str, tuple]]] = {}
    for key, shape in shapes.items():
        module, _, leaf = key.rpartition(".")
        if leaf in _SKIP:
            continue
        groups.setdefault(module, {})[leaf] = (key, tuple(shape))
    out = []
    bn = _BN_ROLES[framework]
    for module, leaves in groups.items():
        if set(leaves) & {"running_mean", "_mean", "moving_mean"}:
            out.append((module, "bn", {bn.get(k, k): v for k, v in leaves.items()}))
        elif framework == "keras":
            roles = {_KERAS_ROLES.get(k, k): v for k, v in leaves.items()}
            ndim = len(roles["weight"][1]) if "weight" in roles else 0
            kind = {4: "conv", 2: "linear"}.get(ndim, f"unknown (leaves {sorted(leaves)})")
            out.append((module, kind, roles))
        else:
            ndim = len(leaves["weight"][1]) if "weight" in leaves else 0
            kind = {4: "conv", 2: "linear"}.get(ndim, f"unknown (leaves {sorted(leaves)})")
            out.append((module, kind, dict(leaves)))
    return out


def _graph_groups(graph: Graph) -> list[tuple[str, str, dict]]:
    groups: dict[str, dict] = {}
    for p in graph.params:
        node = p.name[: -len(p.name.rsplit(".", 1)[1]) - 1]
        groups.setdefault(node, {})[p.role] = (p.name, tuple(p.shape))
    return [(n, _KIND[graph.node(n).op], roles) for n, roles in groups.items()]


# layouts: 'id'; 'T' (linear (in, out)); 'conv1x1' (linear stored as (O, I, 1, 1)); keras 'khwio'
# (conv (kh, kw, I, O)), 'khwc1' (depthwise (kh, kw, C, 1)), 'k11io' (linear stored as a (1, 1, I, O) conv)
def _native_shape(shape: tuple, layout: str) -> tuple:
    if layout == "T":
        return tuple(reversed(shape))
    if layout == "conv1x1":
        return (*shape, 1, 1)
    if layout == "khwio":
        return (shape[2], shape[3], shape[1], shape[0])
    if layout == "khwc1":
        return (shape[2], shape[3], shape[0], 1)
    if layout == "k11io":
        return (1, 1, shape[1], shape[0])
    return tuple(shape)


def to_canonical(v: np.ndarray, layout: str) -> np.ndarray:
    """A zoo array in ``layout`` -> the canonical layout."""
    v = np.asarray(v)
    if layout == "T":
        return v.T
    if layout == "conv1x1":
        return v.reshape(v.shape[:2])
    if layout == "khwio":
        return v.transpose(3, 2, 0, 1)
    if layout == "khwc1":
        return v.transpose(2, 3, 0, 1)
    if layout == "k11io":
        return v[0, 0].T
    return v


def to_native(v: np.ndarray, layout: str) -> np.ndarray:
    """A canonical array -> the zoo's ``layout`` (inverse of :func:`to_canonical`)."""
    v = np.asarray(v)
    if layout == "T":
        return v.T
    if layout == "conv1x1":
        return v.reshape(*v.shape, 1, 1)
    if layout == "khwio":
        return v.transpose(2, 3, 1, 0)
    if layout == "khwc1":
        return v.transpose(2, 3, 0, 1)
    if layout == "k11io":
        return v.T[None, None]
    return v


def _layout(framework: str, role: str, zkind: str, gkind: str, zkey: str, cshape: tuple) -> str:
    if framework == "keras":
        if role != "weight":
            return "id"
        if gkind == "linear":
            return "k11io" if zkind == "conv" else "T"
        return "khwc1" if zkey.endswith(".depthwise_kernel") else "khwio"
    if role == "weight" and gkind == "linear":
        return "conv1x1" if zkind == "conv" else ("T" if framework == "paddle" else "id")
    return "id"


def match(graph: Graph, zoo_shapes: Mapping[str, tuple], framework: str) -> dict[str, tuple[str, str]]:
    """The explicit map ``{canonical_name: (zoo_key, layout)}``; layout is 'id', 'T' or 'conv1x1'.

    Positional over (zoo modules in state-dict order, graph nodes in order); every kind and shape is
    checked, then every zoo key must be used once and every canonical key filled. Raises WeightsError
    naming the unmatched or mis-shaped keys.
    """
    zg, gg = _zoo_groups(zoo_shapes, framework), _graph_groups(graph)
    problems: list[str] = []
    out: dict[str, tuple[str, str]] = {}
    for (module, zkind, zroles), (node, gkind, groles) in zip(zg, gg, strict=False):
        ok_kind = zkind == gkind or (zkind == "conv" and gkind == "linear")
        if not ok_kind or set(zroles) != set(groles):
            problems.append(f"zoo module {module!r} ({zkind}: {sorted(zroles)}) does not match graph node "
                            f"{node!r} ({gkind}: {sorted(groles)})")
            break
        for role, (cname, cshape) in groles.items():
            zkey, zshape = zroles[role]
            layout = _layout(framework, role, zkind, gkind, zkey, cshape)
            if _native_shape(cshape, layout) != zshape:
                problems.append(f"zoo key {zkey!r} has shape {zshape}, canonical {cname!r} needs "
                                f"{_native_shape(cshape, layout)} ({layout})")
            out[cname] = (zkey, layout)
        if problems:
            break
    used = {k for k, _ in out.values()}
    zoo_keys = [k for k in zoo_shapes if k.rpartition(".")[2] not in _SKIP]
    unmapped_zoo = [k for k in zoo_keys if k not in used]
    unfilled = [p.name for p in graph.params if p.name not in out]
    if len({k for k, _ in out.values()}) != len(out):
        problems.append("a zoo key was mapped twice")
    if not problems and (unmapped_zoo or unfilled):
        problems.append(f"zoo keys left unmapped {W._few(unmapped_zoo)}, canonical keys left unfilled "
                        f"{W._few(unfilled)}")
    if problems:
        extra = "" if not (unmapped_zoo or unfilled) else (
            f" (unmapped zoo keys {W._few(unmapped_zoo, 4)}; unfilled canonical keys {W._few(unfilled, 4)})")
        raise WeightsError(f"cannot map the zoo state dict onto graph {graph.name!r}: " + "; ".join(problems)
                           + extra + ". Is it the zoo model this importer names?")
    return out


@functools.lru_cache(maxsize=64)
def _template(zoo: str, name: str, num_classes: int) -> tuple[dict[str, tuple], dict[str, str]]:
    """Shapes and dtypes of a freshly built zoo model's state dict (the keys an import must see)."""
    e = entry(zoo, name)
    sd = _state_dict(e.make(num_classes), e.framework)
    return {k: tuple(v.shape) for k, v in sd.items()}, {k: str(v.dtype) for k, v in sd.items()}


def name_map(zoo: str, name: str, num_classes: int = 1000) -> dict[str, tuple[str, str]]:
    """``{canonical_name: (zoo_key, layout)}`` for a zoo model, generated from a fresh zoo model."""
    shapes, _ = _template(zoo, name, num_classes)
    return match(zoo_graph(zoo, name, num_classes), shapes, entry(zoo, name).framework)


# --- framework glue (lazy) -----------------------------------------------------------------------
def _to_numpy(v, framework: str) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    if framework == "torch" and hasattr(v, "detach"):
        return v.detach().cpu().numpy()
    if hasattr(v, "numpy"):
        return np.asarray(v.numpy())
    return np.asarray(v)


def _is_model(source, framework: str) -> bool:
    if framework == "keras":
        return hasattr(source, "layers") and hasattr(source, "get_weights")
    return hasattr(source, "state_dict") and callable(source.state_dict)


def _keras_key(layer, w) -> str:
    # Keras 3 names a DepthwiseConv2D's kernel "kernel"; the key says "depthwise_kernel" (its layout)
    leaf = "depthwise_kernel" if type(layer).__name__ == "DepthwiseConv2D" and w.name == "kernel" else w.name
    return f"{layer.name}.{leaf}"


def keras_state_dict(model) -> dict[str, np.ndarray]:
    """``{f"{layer.name}.{weight.name}": array}`` of a keras model, in ``model.layers`` order."""
    out = {}
    for layer in model.layers:
        for w in layer.weights:
            key = _keras_key(layer, w)
            if key in out:
                raise WeightsError(f"keras model has two weights named {key!r}; layer names must be unique")
            out[key] = np.asarray(w.numpy())
    return out


def _state_dict(source, framework: str) -> dict[str, np.ndarray]:
    if framework == "keras" and _is_model(source, framework):
        return keras_state_dict(source)
    sd = source.state_dict() if hasattr(source, "state_dict") and callable(source.state_dict) else source
    if not isinstance(sd, Mapping):
        raise WeightsError(f"source must be a {framework} zoo model or its state dict, "
                           f"got {type(source).__name__}")
    return {k: _to_numpy(v, framework) for k, v in sd.items()}


def _keras_rescaling(model):
    """The (scale, offset) of a keras Rescaling layer inside ``model`` (MobileNetV3 preprocessing), or None."""
    for layer in model.layers:
        if type(layer).__name__ == "Rescaling":
            return float(layer.scale), float(layer.offset)
    return None


def _keras_classifier_activation(model) -> str:
    layer = model.layers[-1]
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "linear") if act is not None else "linear"


def _forward(model, x: np.ndarray, framework: str) -> np.ndarray:
    """Logits of the zoo model on the NCHW batch ``x`` (keras: NHWC, in-model rescaling undone)."""
    if framework == "keras":
        xk = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        rescale = _keras_rescaling(model)
        if rescale is not None:  # feed raw pixels that the model's Rescaling maps back onto x
            xk = ((xk - rescale[1]) / rescale[0]).astype(x.dtype)
        return np.asarray(model(xk, training=False))
    was_training = model.training
    model.eval()
    try:
        if framework == "torch":
            import torch
            with torch.no_grad():
                return model(torch.from_numpy(x)).numpy()
        import paddle
        with paddle.no_grad():
            return model(paddle.to_tensor(x)).numpy()
    finally:
        if was_training:
            model.train()


def _load_native(model, native: Mapping[str, Any], framework: str) -> None:
    if framework == "keras":
        want, got = set(keras_state_dict(model)), set(native)
        if want != got:
            raise WeightsError(f"keras weights differ from the model's: missing {W._few(sorted(want - got))}, "
                               f"unexpected {W._few(sorted(got - want))}")
        for layer in model.layers:
            if layer.weights:
                layer.set_weights([np.asarray(native[_keras_key(layer, w)]) for w in layer.weights])
        return
    if framework == "torch":
        model.load_state_dict(native, strict=True)
        return
    want, got = set(model.state_dict()), set(native)
    if want != got:
        raise WeightsError(f"paddle state dict keys differ: missing {W._few(sorted(want - got))}, "
                           f"unexpected {W._few(sorted(got - want))}")
    model.set_state_dict(dict(native))


def _check_eps(model, e: ZooEntry, zoo: str, name: str) -> None:
    """The zoo model's own BN eps must be the table's (guards the table and modified models)."""
    eps = set()
    modules = {"torch": lambda: model.modules(), "paddle": lambda: model.sublayers(),
               "keras": lambda: model.layers}[e.framework]()
    attr = {"torch": "eps", "paddle": "_epsilon", "keras": "epsilon"}[e.framework]
    for m in modules:
        v = getattr(m, attr, None)
        if "BatchNorm" in type(m).__name__ and v is not None:
            eps.add(round(float(v), 12))
    if eps and eps != {round(e.bn_eps, 12)}:
        raise WeightsError(f"{zoo} {name}: the model's BatchNorm eps {sorted(eps)} differ from the "
                           f"importer's {e.bn_eps}; the imported graph would compute different outputs")


# --- API -----------------------------------------------------------------------------------------
def import_zoo(zoo: str, name: str, source, input_size: int = 224, probe_size: int = 64,
               probe_seed: int = 0) -> tuple[Graph, W.Weights, dict]:
    """Import a zoo model (object or state dict) -> ``(graph, canonical_weights, info)``.

    The graph carries the zoo's BN eps/momentum; ``info`` records the zoo, arch id, preprocessing,
    padding, BN conventions, the explicit name map and the probe's relative error. The import checks
    every key and shape, then runs the zoo model (the given one, or a fresh one loaded strictly with
    the given state dict) and the float64 reference on a probe batch; it raises WeightsError if they
    differ by more than ``PROBE_TOLERANCE`` relative to the largest logit.
    """
    e = entry(zoo, name)
    is_model = _is_model(source, e.framework)
    sd = _state_dict(source, e.framework)
    tshapes, _ = _template(zoo, name, 1000)
    fc_key, fc_layout = match(zoo_graph(zoo, name, 1000), tshapes, e.framework)[registry_fc(zoo, name)]
    if fc_key not in sd:
        raise WeightsError(f"{zoo} {name} state dict lacks the classifier key {fc_key!r}; missing keys "
                           f"{W._few(sorted(set(tshapes) - set(sd)))}")
    num_classes = int(to_canonical(sd[fc_key], fc_layout).shape[0])
    shapes, _ = _template(zoo, name, num_classes)
    missing = [k for k in shapes if k not in sd and k.rpartition(".")[2] not in _SKIP]
    extra = [k for k in sd if k not in shapes]
    bad = [f"{k} {tuple(sd[k].shape)} != {shapes[k]}" for k in shapes
           if k in sd and tuple(sd[k].shape) != shapes[k]]
    if missing or extra or bad:
        raise WeightsError(f"{zoo} {name} state dict does not fit: missing keys {W._few(missing)}, "
                           f"unexpected keys {W._few(extra)}, shape mismatches {W._few(bad)}")
    nmap = match(zoo_graph(zoo, name, num_classes), shapes, e.framework)
    graph = zoo_graph(zoo, name, num_classes, input_size)
    canonical = {cname: np.ascontiguousarray(to_canonical(sd[zkey], layout)) for cname, (zkey, layout) in nmap.items()}
    canonical = W.check_weights(graph, canonical)

    # probe: the zoo model itself vs the float64 reference executor of the imported graph
    extra: dict[str, Any] = {}
    if e.framework == "keras":
        if is_model and source.input_shape[1] is not None:  # keras models are built for one input size
            probe_size = int(source.input_shape[1])
        model = source if is_model else e.make(num_classes, probe_size)
        extra = {"classifier_activation": _keras_classifier_activation(model),
                 "model_rescaling": _keras_rescaling(model)}
    else:
        model = source if is_model else e.make(num_classes)
    if not is_model:
        _load_native(model, _native_values(sd, e.framework, model), e.framework)
    _check_eps(model, e, zoo, name)
    x = np.random.default_rng(probe_seed).standard_normal((1, 3, probe_size, probe_size)).astype(np.float32)
    got = _forward(model, x, e.framework)
    want = reference.run(zoo_graph(zoo, name, num_classes, probe_size), canonical, x.astype(np.float64))
    if extra.get("classifier_activation") == "softmax":  # keras' default head: compare probabilities
        want = np.exp(want - want.max(axis=-1, keepdims=True))
        want = want / want.sum(axis=-1, keepdims=True)
    elif extra.get("classifier_activation", "linear") != "linear":
        raise WeightsError(f"{zoo} {name}: the model's classifier activation is "
                           f"{extra['classifier_activation']!r}; build it with classifier_activation=None "
                           "(logits) or 'softmax'")
    if tuple(got.shape) != tuple(want.shape):
        raise WeightsError(f"{zoo} {name}: zoo output shape {tuple(got.shape)} != imported "
                           f"graph's {want.shape}")
    err = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))
    if not err <= PROBE_TOLERANCE:
        raise WeightsError(f"{zoo} {name}: probe output of the imported weights differs from the zoo "
                           f"model by {err:.2e} relative (> {PROBE_TOLERANCE}); the mapping or the "
                           "arch id is wrong")
    info = {"zoo": zoo, "name": name, "arch": e.arch, "framework": e.framework, "num_classes": num_classes,
            "preprocessing": dict(e.preprocessing), "padding": e.padding, "bn_eps": e.bn_eps,
            "bn_momentum": e.bn_momentum, "name_map": nmap, "probe_rel_error": err,
            "probe_shape": (1, 3, probe_size, probe_size),
            "zoo_classifier_activation": e.classifier_activation, **extra}
    return graph, canonical, info


def registry_fc(zoo: str, name: str) -> str:
    """The canonical name of the classifier weight (the graph's last parameter that is a weight)."""
    g = zoo_graph(zoo, name, 1000)
    return [p.name for p in g.params if p.role == "weight"][-1]


def _native_values(sd: Mapping[str, np.ndarray], framework: str, model) -> dict:
    if framework == "torch":
        import torch
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    return dict(sd)


def export_zoo(zoo: str, name: str, canonical: Mapping[str, np.ndarray]) -> dict:
    """Canonical weights -> the zoo model's native state dict (torch tensors / numpy arrays for paddle
    and keras; keras keys are ``layer.weight``, load them with :func:`load_native`).

    Holds every key of the zoo model's state dict (torch ``num_batches_tracked`` = 0), in the zoo
    model's dtypes, so it loads with ``load_state_dict(strict=True)`` / ``set_state_dict``.
    """
    e = entry(zoo, name)
    fc = registry_fc(zoo, name)
    if fc not in canonical:
        raise WeightsError(f"canonical weights lack the classifier weight {fc!r}; "
                           f"they are not {e.arch} weights")
    num_classes = int(np.asarray(canonical[fc]).shape[0])
    graph = zoo_graph(zoo, name, num_classes)
    w = W.check_weights(graph, canonical)
    shapes, dtypes = _template(zoo, name, num_classes)
    nmap = match(graph, shapes, e.framework)
    out: dict[str, np.ndarray] = {}
    for cname, (zkey, layout) in nmap.items():
        out[zkey] = np.ascontiguousarray(to_native(w[cname], layout).astype(dtypes[zkey]))
    for k in shapes:
        if k not in out:  # num_batches_tracked
            out[k] = np.zeros(shapes[k], dtype=dtypes[k].replace("torch.", ""))
    out = {k: out[k] for k in shapes}
    if e.framework == "torch":
        import torch
        return {k: torch.from_numpy(v) for k, v in out.items()}
    return out


def load_native(model, native: Mapping[str, Any], zoo: str) -> None:
    """Load an :func:`export_zoo` result into a zoo model of ``zoo`` (keras: ``layer.set_weights``)."""
    framework = {"torchvision": "torch", "timm": "torch", "paddle": "paddle", "keras": "keras"}.get(zoo)
    if framework is None:
        raise LightnetsError(f"unknown zoo {zoo!r}; zoos are {ZOOS}")
    _load_native(model, native, framework)
