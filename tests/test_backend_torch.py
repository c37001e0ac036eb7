"""The torch backend against the float64 numpy reference, the zoo twins and its own contract."""

import numpy as np
import pytest

import lightnets
from lightnets import reference
from lightnets import weights as W
from lightnets.errors import InputShapeError
from lightnets.parity.cases import make_input, op_cases
from lightnets.parity.tolerances import MODEL_REL, OP_REL, rel_error

torch = pytest.importorskip("torch")
tb = pytest.importorskip("lightnets.backends.torch")

MODELS = [m for m in lightnets.list_models() if m.startswith(("mobilenet_v1_", "mobilenet_v2_"))]
DTYPES = ("float64", "float32")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _errors(graph, batch, dtype, seed=0):
    w = W.init_weights(graph, seed)
    model = tb.build(graph, dtype)
    tb.set_weights(model, w)
    x = make_input(graph, batch, seed)
    return rel_error(tb.run(model, x), reference.run(graph, w, x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", op_cases(), ids=lambda c: c.id)
def test_op_matches_reference(case, dtype):
    err = _errors(case.graph, case.batch, dtype)
    assert err <= OP_REL[dtype], f"{case.id} {dtype}: rel error {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model_id", MODELS)
def test_model_matches_reference(model_id, dtype):
    graph = lightnets.get_spec(model_id, num_classes=10, input_size=64)
    err = _errors(graph, 2, dtype)
    assert err <= MODEL_REL[dtype], f"{model_id} {dtype}: rel error {err:.3g}"


def test_return_all_gives_every_node_in_nchw():
    graph = lightnets.get_spec("mobilenet_v2_035", num_classes=10, input_size=32)
    model = lightnets.build(graph, backend="torch", dtype="float64")
    x = make_input(graph, 1)
    got = tb.run(model, x, return_all=True)
    ref = reference.run(graph, W.init_weights(graph, 0), x, return_all=True)
    assert list(got) == [n.name for n in graph.nodes]
    for name, y in got.items():
        assert y.shape == ref[name].shape and rel_error(y, ref[name]) <= MODEL_REL["float64"], name


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_param_counts_match_spec_and_zoo_twins():
    torchvision = pytest.importorskip("torchvision")
    timm = pytest.importorskip("timm")
    twins = {"mobilenet_v2_100": (torchvision.models.mobilenet_v2(weights=None), 3_504_872),
             "mobilenet_v1_100": (timm.create_model("mobilenetv1_100", pretrained=False), 4_231_976)}
    for model_id, (twin, expected) in twins.items():
        graph = lightnets.get_spec(model_id)
        model = tb.build(graph, "float32")
        assert _trainable(model) == graph.num_params() == _trainable(twin) == expected, model_id


def test_state_dict_keys_look_like_torch():
    model = lightnets.build("mobilenet_v2_035", backend="torch", num_classes=10, input_size=32)
    keys = set(model.state_dict())
    for k in ("stem.conv.weight", "stem.bn.weight", "stem.bn.bias", "stem.bn.running_mean",
              "stem.bn.running_var", "blocks.3.dw.conv.weight", "head.fc.weight", "head.fc.bias"):
        assert k in keys, k
    assert isinstance(model.get_submodule("blocks.3.dw.conv"), torch.nn.Conv2d)
    assert isinstance(model.get_submodule("stem.bn"), torch.nn.BatchNorm2d)
    assert not model.training


@pytest.mark.parametrize("dtype", DTYPES)
def test_export_load_round_trip_is_bit_exact(dtype):
    kw = dict(backend="torch", num_classes=10, input_size=32, dtype=dtype)
    a = lightnets.build("mobilenet_v1_025", seed=1, **kw)
    b = lightnets.build("mobilenet_v1_025", seed=2, **kw)
    wa = lightnets.export_weights(a)
    assert all(v.dtype == np.dtype(dtype) for v in wa.values())
    lightnets.load_weights(b, wa)
    wb = lightnets.export_weights(b)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    x = make_input(tb.graph_of(a), 2)
    assert np.array_equal(tb.run(a, x), tb.run(b, x))


def test_float64_weights_survive_a_float64_model_exactly():
    graph = lightnets.get_spec("mobilenet_v1_025", num_classes=10, input_size=32)
    w = W.init_weights(graph, 3)
    model = lightnets.build(graph, backend="torch", weights=w, dtype="float64")
    got = lightnets.export_weights(model)
    assert all(np.array_equal(got[k], w[k]) for k in w)


def test_torch_state_dict_save_load_strict(tmp_path):
    a = lightnets.build("mobilenet_v2_035", backend="torch", num_classes=10, input_size=32, seed=1)
    b = lightnets.build("mobilenet_v2_035", backend="torch", num_classes=10, input_size=32, seed=2)
    torch.save(a.state_dict(), tmp_path / "sd.pt")
    b.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True), strict=True)
    x = make_input(tb.graph_of(a), 2)
    assert np.array_equal(tb.run(a, x), tb.run(b, x))


def test_build_by_id_and_ownership():
    model = lightnets.build("mobilenet_v1_025", backend="torch", num_classes=7, input_size=32)
    assert tb.owns(model) and not tb.owns(torch.nn.Linear(2, 2))
    assert tb.graph_of(model).name == "mobilenet_v1_025"
    y = lightnets.run(model, make_input(tb.graph_of(model), 3))
    assert y.shape == (3, 7) and y.dtype == np.float32


@pytest.mark.parametrize("shape, message", [
    ((3, 32, 32), "4-D NCHW"), ((1, 32, 32, 3), "is it in NCHW layout"),
    ((1, 1, 32, 32), "the model expects 3")])
def test_bad_input_raises_input_shape_error(shape, message):
    model = lightnets.build("mobilenet_v1_025", backend="torch", num_classes=10, input_size=32)
    with pytest.raises(InputShapeError, match=message):
        tb.run(model, np.zeros(shape, np.float32))


def test_run_is_eval_even_in_train_mode_and_restores_it():
    model = lightnets.build("mobilenet_v1_025", backend="torch", num_classes=10, input_size=32,
                            dtype="float64")
    x = make_input(tb.graph_of(model), 2)
    y = tb.run(model, x)
    model.train()
    assert np.array_equal(tb.run(model, x), y) and model.training


def test_asymmetric_pools_and_conv_use_explicit_padding():
    g = lightnets.GraphBuilder("pads", (2, 8, 8))
    g.add("conv", "conv2d", "input", out_channels=2, kernel=3, stride=2, pads=(0, 1, 0, 1))
    g.add("maxp", "max_pool2d", "input", kernel=3, stride=2, pads=(0, 1, 0, 1))
    g.add("avgp", "avg_pool2d", "input", kernel=3, stride=2, pads=(1, 2, 0, 1), count_include_pad=False)
    g.add("avgi", "avg_pool2d", "input", kernel=3, stride=2, pads=(1, 2, 0, 1), count_include_pad=True)
    graph = g.build()
    model = lightnets.build(graph, backend="torch", dtype="float64")
    assert isinstance(model.conv, tb.PadConv2d) and isinstance(model.maxp, tb.PadPool2d)
    x = -np.abs(make_input(graph, 2))  # all negative: zero padding in max pool would show
    ref = reference.run(graph, W.init_weights(graph, 0), x, return_all=True)
    got = tb.run(model, x, return_all=True)
    for name in ref:
        assert rel_error(got[name], ref[name]) <= OP_REL["float64"], name
