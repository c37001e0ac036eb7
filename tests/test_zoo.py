"""Zoo importers: every torchvision/timm/paddle.vision entry imports, runs in the torch and paddle
backends like the zoo model (float32, rel error <= 1e-4), exports back strictly, and bad state dicts
raise WeightsError naming the keys.

Zoo models are built locally with random weights and randomised BN statistics (never downloaded).
Frameworks are imported inside tests only; tensorflow never.
"""

import numpy as np
import pytest

import lightnets
from lightnets import zoo
from lightnets.errors import LightnetsError, WeightsError
from lightnets.parity.tolerances import rel_error

KEYS = zoo.list_zoo()
NUM_CLASSES = 10
TOL = 1e-4
ERRORS: dict[str, float] = {}  # "(zoo name -> backend)": max rel error, printed with -s


def _randomise(model, framework, seed):
    rng = np.random.default_rng(seed)
    if framework == "torch":
        import torch
        torch.set_num_threads(1)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                with torch.no_grad():
                    m.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.1, c)))
                    m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c)))
                    m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c)))
                    m.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, c)))
        return model.eval()
    import paddle
    for m in model.sublayers():
        if isinstance(m, paddle.nn.layer.norm._BatchNormBase):
            c = m._mean.shape[0]
            m._mean.set_value(rng.normal(0, 0.1, c).astype("float32"))
            m._variance.set_value(rng.uniform(0.5, 1.5, c).astype("float32"))
            m.weight.set_value(rng.uniform(0.5, 1.5, c).astype("float32"))
            m.bias.set_value(rng.normal(0, 0.1, c).astype("float32"))
    model.eval()
    return model


def _zoo_model(key, seed=0):
    e = zoo.ZOO[key]
    if e.framework == "paddle":
        import paddle
        paddle.seed(seed)
    else:
        import torch
        torch.manual_seed(seed)
    return _randomise(e.make(NUM_CLASSES), e.framework, seed + 1)


def _forward(model, x, framework):
    if framework == "torch":
        import torch
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    import paddle
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def _x(seed=3):
    return np.random.default_rng(seed).standard_normal((2, 3, 64, 64)).astype(np.float32)


@pytest.mark.parametrize("key", KEYS, ids=[f"{z}-{n}" for z, n in KEYS])
def test_import_runs_like_the_zoo_model_in_torch_and_paddle_and_exports_back(key):
    e = zoo.ZOO[key]
    model = _zoo_model(key)
    x = _x()
    want = _forward(model, x, e.framework)
    # import from the model object for some, from its state dict for the others
    source = model if KEYS.index(key) % 2 == 0 else model.state_dict()
    graph, w, info = zoo.import_zoo(*key, source)
    assert info["arch"] == e.arch and info["num_classes"] == NUM_CLASSES
    assert info["probe_rel_error"] <= TOL
    assert graph.meta["bn_eps"] == e.bn_eps
    assert all(n.attrs["eps"] == e.bn_eps for n in graph.nodes if n.op == "batch_norm")
    for backend in ("torch", "paddle"):
        ours = lightnets.build(graph, backend=backend, weights=w, input_size=64)
        got = lightnets.run(ours, x)
        err = rel_error(got, want)
        ERRORS[f"{key[0]} {key[1]} -> {backend}"] = err
        print(f"ZOOERR {key[0]} {key[1]} -> {backend}: {err:.2e}")
        assert err <= TOL, (backend, err)
    # export back into a fresh zoo model, strictly
    fresh = _zoo_model(key, seed=7)
    native = zoo.export_zoo(*key, w)
    if e.framework == "torch":
        fresh.load_state_dict(native, strict=True)
    else:
        assert set(native) == set(fresh.state_dict())
        fresh.set_state_dict(native)
    err = rel_error(_forward(fresh, x, e.framework), want)
    print(f"ZOOERR {key[0]} {key[1]} -> export: {err:.2e}")
    assert err <= 1e-6


@pytest.mark.parametrize("key", [k for k in KEYS if k[0] == "timm"], ids=lambda k: k[1])
def test_timm_preprocessing_is_the_models_pretrained_cfg(key):
    import timm
    cfg = timm.create_model(key[1], pretrained=False).pretrained_cfg
    pre = zoo.ZOO[key].preprocessing
    assert tuple(cfg["mean"]) == pre["mean"] and tuple(cfg["std"]) == pre["std"]


def test_name_map_uses_every_zoo_key_once_and_fills_every_canonical_key():
    key = ("torchvision", "mobilenet_v3_small")
    nmap = zoo.name_map(*key)
    graph = zoo.zoo_graph(*key)
    assert set(nmap) == {p.name for p in graph.params}
    shapes, _ = zoo._template(*key, 1000)
    used = [k for k, _ in nmap.values()]
    assert sorted(used) == sorted(k for k in shapes if not k.endswith("num_batches_tracked"))
    assert nmap["head.hidden.weight"] == ("classifier.0.weight", "id")
    timm_map = zoo.name_map("timm", "mobilenetv3_small_100")
    assert timm_map["head.hidden.weight"] == ("conv_head.weight", "conv1x1")
    assert zoo.name_map("paddle", "mobilenet_v2")["head.fc.weight"] == ("classifier.1.weight", "T")


def test_timm_mobilenet_v3_gets_the_zoo_bn_eps_not_the_ids_default():
    assert lightnets.get_spec("mobilenet_v3_small_100").node("stem.bn").attrs["eps"] == 1e-3
    graph = zoo.zoo_graph("timm", "mobilenetv3_small_100")
    assert graph.node("stem.bn").attrs["eps"] == 1e-5 and graph.meta["bn_eps"] == 1e-5


def _sd(key):
    return {k: v.detach().numpy() for k, v in _zoo_model(key).state_dict().items()}


def test_missing_key_is_named():
    key = ("torchvision", "shufflenet_v2_x0_5")
    sd = _sd(key)
    del sd["conv1.1.running_var"]
    with pytest.raises(WeightsError, match=r"missing keys \['conv1.1.running_var'\]"):
        zoo.import_zoo(*key, sd)


def test_extra_key_is_named():
    key = ("torchvision", "shufflenet_v2_x0_5")
    sd = _sd(key)
    sd["fc.extra"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match=r"unexpected keys \['fc.extra'\]"):
        zoo.import_zoo(*key, sd)


def test_wrong_shape_is_named():
    key = ("torchvision", "shufflenet_v2_x0_5")
    sd = _sd(key)
    sd["conv1.0.weight"] = sd["conv1.0.weight"][:, :2]
    with pytest.raises(WeightsError, match=r"conv1.0.weight"):
        zoo.import_zoo(*key, sd)


def test_wrong_arch_is_refused_naming_keys():
    # a shufflenet state dict offered as torchvision mobilenet_v2
    sd = _sd(("torchvision", "shufflenet_v2_x0_5"))
    with pytest.raises(WeightsError, match=r"conv1.0.weight|features.0.0.weight"):
        zoo.import_zoo("torchvision", "mobilenet_v2", sd)
    # the mapping mechanism itself refuses a graph of another width, naming the first mismatch
    shapes = {k: v.shape for k, v in sd.items()}
    with pytest.raises(WeightsError, match=r"zoo key '.*' has shape"):
        zoo.match(lightnets.get_spec("shufflenet_v2_100", num_classes=NUM_CLASSES), shapes, "torch")


def test_wrong_flavour_fails_the_probe():
    # timm MobileNetV3 with the id's default eps (1e-3) instead of timm's 1e-5 must not pass silently
    key = ("timm", "mobilenetv3_small_100")
    model = _zoo_model(key)
    bad = zoo.ZOO[key]._replace(bn_eps=1e-3)
    zoo.ZOO[key] = bad
    try:
        with pytest.raises(WeightsError, match="eps"):
            zoo.import_zoo(*key, model)
    finally:
        zoo.ZOO[key] = bad._replace(bn_eps=1e-5)


def test_export_refuses_weights_of_another_arch():
    w = lightnets.weights.init_weights(lightnets.get_spec("shufflenet_v2_050", num_classes=NUM_CLASSES))
    with pytest.raises(WeightsError, match="unexpected keys|missing keys|has shape"):
        zoo.export_zoo("torchvision", "shufflenet_v2_x1_0", w)
    with pytest.raises(WeightsError, match="classifier weight"):
        zoo.export_zoo("torchvision", "mobilenet_v2", {})


def test_unknown_zoo_model_lists_the_known_ones():
    with pytest.raises(LightnetsError, match="mobilenet_v2"):
        zoo.import_zoo("torchvision", "resnet50", {})
