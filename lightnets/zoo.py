"""Zoo checkpoint importers: torchvision, timm and paddle.vision models <-> canonical weights.

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

numpy only at import time; torch/timm/torchvision/paddle are imported inside the ``make`` functions.
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
PROBE_TOLERANCE = 1e-4  # float32 zoo model vs float64 reference, relative to max |logit|


class ZooEntry(NamedTuple):
    """One zoo model: the lightnets id, how to build the zoo model, and the zoo's conventions.

    ``make(num_classes)`` builds the zoo model with random weights (never downloads). ``bn_eps`` and
    ``bn_momentum`` (IR convention: new = (1-m)·old + m·batch) are the zoo's values; the imported
    graph carries them even where the registered id's defaults differ.
    """

    arch: str
    framework: str  # "torch" | "paddle"
    make: Callable[[int], Any]
    preprocessing: Mapping[str, Any]
    bn_eps: float
    bn_momentum: float
    padding: str = PADDING


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
ZOO: dict[tuple[str, str], ZooEntry] = {**TORCHVISION, **TIMM, **PADDLE}
ZOOS = ("torchvision", "timm", "paddle")


def entry(zoo: str, name: str) -> ZooEntry:
    if (zoo, name) not in ZOO:
        known = sorted(n for z, n in ZOO if z == zoo)
        raise LightnetsError(f"no importer for {zoo!r} model {name!r}; zoos are {ZOOS}"
                             + (f", {zoo} models are {known}" if known else ""))
    return ZOO[(zoo, name)]


def list_zoo(zoo: str | None = None) -> list[tuple[str, str]]:
    return sorted(k for k in ZOO if zoo is None or k[0] == zoo)


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
             "paddle": {"weight": "gamma", "bias": "beta", "_mean": "mean", "_variance": "var"}}
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
        if set(leaves) & {"running_mean", "_mean"}:
            out.append((module, "bn", {bn.get(k, k): v for k, v in leaves.items()}))
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


def _native_shape(shape: tuple, layout: str) -> tuple:
    if layout == "T":
        return tuple(reversed(shape))
    if layout == "conv1x1":
        return (*shape, 1, 1)
    return tuple(shape)


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
        linear_t = framework == "paddle" and zkind == "linear"
        ok_kind = zkind == gkind or (zkind == "conv" and gkind == "linear")
        if not ok_kind or set(zroles) != set(groles):
            problems.append(f"zoo module {module!r} ({zkind}: {sorted(zroles)}) does not match graph node "
                            f"{node!r} ({gkind}: {sorted(groles)})")
            break
        for role, (cname, cshape) in groles.items():
            zkey, zshape = zroles[role]
            layout = "id"
            if role == "weight" and gkind == "linear":
                layout = "conv1x1" if zkind == "conv" else ("T" if linear_t else "id")
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


def _state_dict(source, framework: str) -> dict[str, np.ndarray]:
    sd = source.state_dict() if hasattr(source, "state_dict") and callable(source.state_dict) else source
    if not isinstance(sd, Mapping):
        raise WeightsError(f"source must be a {framework} zoo model or its state dict, "
                           f"got {type(source).__name__}")
    return {k: _to_numpy(v, framework) for k, v in sd.items()}


def _forward(model, x: np.ndarray, framework: str) -> np.ndarray:
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
    for m in (model.modules() if e.framework == "torch" else model.sublayers()):
        v = getattr(m, "eps", None) if e.framework == "torch" else getattr(m, "_epsilon", None)
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
    is_model = hasattr(source, "state_dict") and callable(source.state_dict)
    sd = _state_dict(source, e.framework)
    tshapes, _ = _template(zoo, name, 1000)
    fc_key = match(zoo_graph(zoo, name, 1000), tshapes, e.framework)[registry_fc(zoo, name)][0]
    if fc_key not in sd:
        raise WeightsError(f"{zoo} {name} state dict lacks the classifier key {fc_key!r}; missing keys "
                           f"{W._few(sorted(set(tshapes) - set(sd)))}")
    num_classes = int(sd[fc_key].shape[1 if e.framework == "paddle" and sd[fc_key].ndim == 2 else 0])
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
    canonical = {}
    for cname, (zkey, layout) in nmap.items():
        v = sd[zkey]
        canonical[cname] = v.T if layout == "T" else (v.reshape(v.shape[:2]) if layout == "conv1x1" else v)
    canonical = W.check_weights(graph, {k: np.ascontiguousarray(v) for k, v in canonical.items()})

    # probe: the zoo model itself vs the float64 reference executor of the imported graph
    model = source if is_model else e.make(num_classes)
    if not is_model:
        _load_native(model, _native_values(sd, e.framework, model), e.framework)
    _check_eps(model, e, zoo, name)
    x = np.random.default_rng(probe_seed).standard_normal((1, 3, probe_size, probe_size)).astype(np.float32)
    got = _forward(model, x, e.framework)
    want = reference.run(zoo_graph(zoo, name, num_classes, probe_size), canonical, x.astype(np.float64))
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
            "probe_shape": (1, 3, probe_size, probe_size)}
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
    """Canonical weights -> the zoo model's native state dict (torch tensors / numpy arrays for paddle).

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
        v = w[cname]
        v = v.T if layout == "T" else (v.reshape(*v.shape, 1, 1) if layout == "conv1x1" else v)
        out[zkey] = np.ascontiguousarray(v.astype(dtypes[zkey]))
    for k in shapes:
        if k not in out:  # num_batches_tracked
            out[k] = np.zeros(shapes[k], dtype=dtypes[k].replace("torch.", ""))
    out = {k: out[k] for k in shapes}
    if e.framework == "torch":
        import torch
        return {k: torch.from_numpy(v) for k, v in out.items()}
    return out
