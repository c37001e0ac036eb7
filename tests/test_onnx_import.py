"""Importing .onnx files lightnets did not write: torch.onnx exports of torchvision and timm models.

The oracle is the file's own runtime (ONNX Runtime): the imported lightnets model must reproduce its logits.
BN statistics are taken from data (one train-mode forward with momentum 1), so eps and folding matter.
"""

import subprocess
import sys

import numpy as np
import pytest
from keras_apps import draw_batch_norms
from profiles import SLOW

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import lightnets  # noqa: E402
from lightnets import artifacts as A  # noqa: E402
from lightnets.errors import FileFormatError, WeightsError  # noqa: E402

SIZE = 64
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")


def _calibrated(model, scale: float = 1.0):
    """``model`` in eval mode with BN running statistics of one batch of ``scale * randn`` images."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    model.train()
    with torch.no_grad():
        model(scale * torch.randn(8, 3, SIZE, SIZE))
    return model.eval()


def _export(model, path, fold: bool = True):
    torch.onnx.export(model, torch.randn(1, 3, SIZE, SIZE), str(path), dynamo=False, do_constant_folding=fold,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    return path


def _ort(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


ZOO = [
    ("torchvision", "mobilenet_v2", {"width_mult": 0.5}, "mobilenet_v2_050"),
    ("torchvision", "shufflenet_v2_x0_5", {}, "shufflenet_v2_050"),
    ("torchvision", "mobilenet_v3_small", {}, "mobilenet_v3_small_100"),
    ("timm", "mobilenetv3_large_100", {}, "mobilenet_v3_large_100"),
    ("timm", "ghostnet_100", {}, "ghostnet_100"),
]


def _zoo_model(zoo, name, kwargs):
    if zoo == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False, **kwargs)
    return getattr(torchvision.models, name)(**kwargs)


@pytest.mark.parametrize("zoo,name,kwargs,arch", ZOO, ids=[z[1] for z in ZOO])
@pytest.mark.parametrize("fold", [True, False], ids=["bn-folded", "bn-kept"])
def test_torch_onnx_export_imports_as_its_id(tmp_path, zoo, name, kwargs, arch, fold):
    """The id is found from the file; the torch port reproduces ONNX Runtime's logits of the file."""
    path = _export(_calibrated(_zoo_model(zoo, name, kwargs)), tmp_path / f"{name}.onnx", fold)
    model, info = lightnets.port(path, to="torch", input_size=SIZE, return_info=True)
    assert info["arch"] == arch
    notes = " ".join(info["card"]["notes"])
    assert ("folded into their convs" in notes) == fold
    assert info["card"]["source"]["format"] == "onnx"
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    assert _rel(lightnets.run(model, x), _ort(path, x)) <= 1e-4


def test_bn_kept_file_carries_its_eps(tmp_path):
    """A BN-carrying file's epsilon becomes the graph's (timm models use 1e-5, the id may use another)."""
    net = _calibrated(torchvision.models.mobilenet_v2(width_mult=0.5))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-3
    path = _export(net, tmp_path / "m.onnx", fold=False)
    imp = A.read(path, "onnx", "onnxruntime", input_size=SIZE)
    eps = {n.attrs["eps"] for n in imp.graph.nodes if n.op == "batch_norm"}
    assert len(eps) == 1 and abs(eps.pop() - 1e-3) < 1e-9
    assert imp.probe["rel_error"] <= imp.probe["tolerance"]


def test_identity_bn_is_exact_in_float64():
    for eps in (1e-5, 1e-3, 0.001, 1e-6):
        assert np.sqrt(A.identity_var(eps) + eps) == 1.0


def test_folded_import_equals_the_source_in_float64(tmp_path):
    """The folded weights on the id's graph compute the torch model's function: float64 <= 1e-10."""
    net = _calibrated(torchvision.models.shufflenet_v2_x0_5())
    path = _export(net, tmp_path / "s.onnx")
    imp = A.read(path, "onnx", "onnxruntime", input_size=SIZE)
    x = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE))
    with torch.no_grad():
        want = net.double()(torch.from_numpy(x)).numpy()
    got = lightnets.reference.run(imp.graph, imp.weights, x)
    # the file's weights are float32 (folded in float32 by the exporter): the bound is float32 rounding of weights
    assert _rel(got, want) <= 1e-5


def test_wrong_arch_is_refused(tmp_path):
    path = _export(_calibrated(torchvision.models.mobilenet_v2(width_mult=0.5)), tmp_path / "m.onnx")
    with pytest.raises(WeightsError, match="fits no lightnets id 'mobilenet_v2_100'.*weight"):
        lightnets.port(path, to="torch", arch="mobilenet_v2_100", input_size=SIZE)


def test_truncated_file_is_refused(tmp_path):
    path = _export(_calibrated(torchvision.models.mobilenet_v2(width_mult=0.5)), tmp_path / "m.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FileFormatError, match="cut.onnx"):
        lightnets.port(cut, to="torch", input_size=SIZE)


def test_unsupported_op_is_named(tmp_path):
    class WithLSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.rnn = torch.nn.LSTM(4, 4)

        def forward(self, x):
            y = self.conv(x).mean((2, 3))
            return self.rnn(y[None])[0][0]

    path = tmp_path / "lstm.onnx"
    torch.onnx.export(WithLSTM().eval(), torch.randn(1, 3, 8, 8), str(path), dynamo=False)
    with pytest.raises(FileFormatError, match=r"unsupported ONNX op LSTM \(node "):
        lightnets.port(path, to="torch")


def test_lightnets_onnx_without_sidecar_imports_to_the_same_graph(tmp_path):
    """A lightnets export whose sidecar was lost imports back onto exactly the id's graph and weights."""
    model = lightnets.build("mobilenet_v3_small_075", backend="torch", input_size=SIZE)
    path = tmp_path / "m.onnx"
    lightnets.export(model, to="onnx", path=path)
    for side in tmp_path.glob("*.lightnets.json"):
        side.unlink()
    imp = A.read(path, "onnx", "onnxruntime", arch="mobilenet_v3_small_075", input_size=SIZE)
    want = lightnets.export_weights(model)
    assert lightnets.graph.Graph.to_json(imp.graph.replace(meta={})) == \
        lightnets.graph.Graph.to_json(lightnets.spec("mobilenet_v3_small_075", input_size=SIZE).replace(meta={}))
    assert all(np.array_equal(imp.weights[k], want[k]) for k in want)


def test_a_wrong_mapping_is_caught_by_the_probe(tmp_path, monkeypatch):
    """Two same-shape convs swapped by the matcher: the file's runtime and the reference then disagree."""
    path = _export(_calibrated(torchvision.models.mobilenet_v2(width_mult=0.5)), tmp_path / "m.onnx")
    real = A.match

    def swapped(graph, art, hw):
        m = real(graph, art, hw)
        if m.problem is not None:
            return m
        w = dict(m.weights)
        a, b = "blocks.2.expand.conv.weight", "blocks.3.expand.conv.weight"  # both (96, 16, 1, 1) at width 0.5
        assert w[a].shape == w[b].shape
        w[a], w[b] = w[b], w[a]
        return m._replace(weights=w)

    monkeypatch.setattr(A.probe, "match", swapped)  # the matcher that fitting() calls
    with pytest.raises(WeightsError, match="not that net"):
        A.read(path, "onnx", "onnxruntime", input_size=SIZE)


# paddle.onnx.export segfaults in a process that has imported tensorflow, even after paddle (measured:
# paddle, then tensorflow or keras or tf2onnx, then the export): the export runs in a process of its own
PADDLE2ONNX_EXPORT = """
import sys
import numpy as np
import paddle
from paddle.vision.models import shufflenet_v2_x0_5

prefix, size = sys.argv[1], int(sys.argv[2])
paddle.seed(0)
net = shufflenet_v2_x0_5()
rng = np.random.default_rng(0)
for layer in net.sublayers():
    if isinstance(layer, paddle.nn.BatchNorm2D):
        c = layer.weight.shape[0]
        layer._mean.set_value(rng.uniform(-0.1, 0.1, c).astype("float32"))
        layer._variance.set_value(rng.uniform(1e-3, 1.0, c).astype("float32"))
        layer.weight.set_value(rng.uniform(0.5, 1.5, c).astype("float32"))
net.eval()
paddle.onnx.export(net, prefix, input_spec=[paddle.static.InputSpec([None, 3, size, size], "float32", "x")],
                   opset_version=17)
"""


def test_paddle2onnx_export_imports_as_its_id(tmp_path):
    """paddle.onnx.export keeps BatchNormalization nodes (eps 1e-5): imported with them, logits as ORT's."""
    pytest.importorskip("paddle")
    pytest.importorskip("paddle2onnx")
    prefix = tmp_path / "pd"
    proc = subprocess.run([sys.executable, "-c", PADDLE2ONNX_EXPORT, str(prefix), str(SIZE)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imp = A.read(prefix.with_suffix(".onnx"), "onnx", "onnxruntime")
    assert imp.graph.name == "shufflenet_v2_050"
    assert "folded" not in " ".join(imp.notes)
    assert imp.probe["rel_error"] <= imp.probe["tolerance"]


KERAS_APPS = [("MobileNet", {"alpha": 0.25, "classifier_activation": "softmax"}, "mobilenet_v1_025_keras"),
              ("MobileNetV2", {"alpha": 0.35}, "mobilenet_v2_035_keras"),
              ("MobileNetV3Small", {"include_preprocessing": True}, "mobilenet_v3_small_100_keras")]


@pytest.mark.parametrize("app,kwargs,arch", KERAS_APPS, ids=[a[0] for a in KERAS_APPS])
def test_keras_onnx_export_imports_as_its_keras_id(tmp_path, app, kwargs, arch):
    """keras' ONNX export (tf2onnx: NHWC input, batch norms as conv * scale + shift, Pad ops for TF "same")
    imports as the ``_keras`` id; the card records the in-model rescaling and the softmax head."""
    pytest.importorskip("tf2onnx")
    keras = pytest.importorskip("keras")
    kw = {"classifier_activation": None, **kwargs}
    net = getattr(keras.applications, app)(input_shape=(96, 96, 3), weights=None, **kw)
    rng = np.random.default_rng(0)
    draw_batch_norms(net, rng, statistics=True)
    net(np.zeros((1, 96, 96, 3), "float32"))
    path = tmp_path / f"{app}.onnx"
    net.export(str(path), format="onnx", verbose=False)
    imp = A.read(path, "onnx", "onnxruntime")
    assert imp.graph.name == arch
    card = imp.graph.meta["provenance"]
    assert card["classifier_activation"] == (kw["classifier_activation"] or "linear")
    assert (card["preprocessing"] is not None) == bool(kwargs.get("include_preprocessing"))
    assert imp.probe["rel_error"] <= imp.probe["tolerance"]
    # the imported weights reproduce keras itself (the file's source), in float64 on the reference
    x = rng.standard_normal((2, 3, 96, 96))
    feed = x if card["preprocessing"] is None else (x + 1) * 127.5
    want = np.asarray(net(feed.transpose(0, 2, 3, 1).astype("float32")), np.float64)
    got = lightnets.reference.run(imp.graph, imp.weights, x)
    if kw["classifier_activation"] == "softmax":
        got = lightnets.numerics.softmax(got)
    assert _rel(got, want) <= 1e-4


def test_import_zoo_takes_a_zoo_models_onnx_file(tmp_path):
    """import_zoo(zoo, name, file.onnx): the zoo's graph (its BN eps: torchvision mobilenet_v3 uses 1e-3) and card."""
    path = _export(_calibrated(torchvision.models.mobilenet_v3_small()), tmp_path / "m.onnx")
    graph, weights, info = lightnets.import_zoo("torchvision", "mobilenet_v3_small", path, input_size=SIZE)
    assert graph.name == "mobilenet_v3_small_100"
    assert {n.attrs["eps"] for n in graph.nodes if n.op == "batch_norm"} == {1e-3}
    assert info["source"]["zoo"] == "torchvision" and info["source"]["format"] == "onnx"
    assert info["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert info["probe_rel_error"] <= info["probe"]["tolerance"]
    x = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    assert _rel(lightnets.reference.run(graph, weights, x.astype(np.float64)), _ort(path, x)) <= 1e-4


# --- files as users write them (issue 21): a fixed batch of 1, torch's default (dynamo) exporter, onnxruntime's
# offline optimizer. torch.onnx.export(model, x, path) without dynamic_axes fixes the batch to x's (1); the import
# probe and every run of such a file feed it one image at a time. Measured (64 px, BN statistics from data, the
# torch port against ONNX Runtime's run of the file, batch 3): <= 1.7e-5 relative for every twin, both exporters.
def _export_fixed(model, path, dynamo: bool | str):
    """``model`` exported the way most users do: no dynamic_axes, no names (dynamo: torch 2.14's default;
    "noopt": without its optimizer, BatchNormalization nodes and CastLike/Expand-computed zero biases kept)."""
    x = torch.randn(1, 3, SIZE, SIZE)
    if dynamo:
        pytest.importorskip("onnxscript")
        torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False, optimize=dynamo != "noopt")
    else:
        torch.onnx.export(model, x, str(path), dynamo=False)
    return path


# (zoo, name, id); the quick profile: every twin's torchscript file (~1-2 s each), dynamo files of the two smallest
# (3-7 s each, measured); the long profile: every twin's dynamo file too
TWINS = [("torchvision", "shufflenet_v2_x0_5", "shufflenet_v2_050"),
         ("torchvision", "mobilenet_v3_large", "mobilenet_v3_large_100"),
         ("torchvision", "mobilenet_v2", "mobilenet_v2_100"),
         ("timm", "ghostnet_100", "ghostnet_100"),
         ("timm", "mobilenetv3_small_100", "mobilenet_v3_small_100"),
         ("timm", "mobilenetv1_100", "mobilenet_v1_100_timm")]
QUICK_DYNAMO = ("shufflenet_v2_x0_5", "mobilenetv3_small_100")
TWIN_PARAMS = [pytest.param(*t, dynamo, id=f"{'dynamo' if dynamo else 'torchscript'}-{t[1]}",
                            marks=() if not dynamo or t[1] in QUICK_DYNAMO or SLOW else
                            pytest.mark.skip(reason="dynamo files of the smallest twins in the quick profile: "
                                                    "LIGHTNETS_SLOW=1"))
               for dynamo in (False, True) for t in TWINS]
TWIN_PARAMS.append(pytest.param(*TWINS[4], "noopt", id="dynamo-noopt-mobilenetv3_small_100",
                                marks=pytest.mark.skipif(not SLOW, reason="~15 s: LIGHTNETS_SLOW=1")))


@pytest.mark.parametrize("zoo,name,arch,dynamo", TWIN_PARAMS)
def test_batch1_files_of_both_torch_exporters_port(tmp_path, zoo, name, arch, dynamo):
    """A batch-1 file (no dynamic_axes) of either exporter ports with its id found, the card saying the batch is
    fixed, and the torch model reproduces ONNX Runtime's run of the file on a batch of 3 (one image at a time)."""
    path = _export_fixed(_calibrated(_zoo_model(zoo, name, {})), tmp_path / f"{name}.onnx", dynamo)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    model, info = lightnets.port(path, to="torch", return_info=True)
    assert info["arch"] == arch
    assert any("batch is fixed to 1" in n for n in info["card"]["notes"])
    x = np.random.default_rng(1).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    want = lightnets.load_backend("onnxruntime").forward(path, x)  # batch 3 through a batch-1 file: in chunks
    assert want.shape == (3, 1000)
    assert _rel(lightnets.run(model, x), want) <= 1e-4


def _ort_optimized(src, level: str):
    so = ort.SessionOptions()
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    so.optimized_model_filepath = str(src.with_name(f"{src.stem}_{level}.onnx"))
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return src.with_name(f"{src.stem}_{level}.onnx")


def test_onnxruntime_optimized_files_import_or_name_the_fused_op(tmp_path):
    """onnxruntime's basic offline optimization (Split -> Slice, the two branches of ShuffleNet's stride-2 units
    written in the other order) imports: the matcher follows the data flow; matched in file order, the probe refuses
    the swapped branches. Above the basic level, its fused ops (com.microsoft FusedConv) are refused by name. A file
    constant-folded by onnxscript's optimizer imports too."""
    src = _export_fixed(_calibrated(torchvision.models.shufflenet_v2_x0_5()), tmp_path / "s.onnx", dynamo=False)
    basic = _ort_optimized(src, "basic")
    imp = A.read(basic, "onnx", "onnxruntime")
    assert imp.graph.name == "shufflenet_v2_050" and imp.probe["rel_error"] <= imp.probe["tolerance"]
    x = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE))
    want = lightnets.load_backend("onnxruntime").forward(basic, x.astype(np.float32))
    assert _rel(lightnets.reference.run(imp.graph, imp.weights, x), want) <= 1e-4
    be = lightnets.load_backend("onnxruntime")
    with pytest.raises(WeightsError, match="not that net"):  # without the data flow: the file's order misleads
        A.import_artifact(be.read_artifact(basic)._replace(producers=None), be)
    with pytest.raises(FileFormatError, match=r"unsupported ONNX op FusedConv .*com\.microsoft.*ORT_ENABLE_BASIC"):
        A.read(_ort_optimized(src, "extended"), "onnx", "onnxruntime")
    # onnxsim-style constant folding (onnxscript's optimizer, of the onnx extra: Split -> Slice, shapes folded)
    optimizer = pytest.importorskip("onnxscript.optimizer")
    onnx.save(optimizer.optimize(onnx.load(str(src))), str(tmp_path / "s_folded.onnx"))
    folded = A.read(tmp_path / "s_folded.onnx", "onnx", "onnxruntime")
    assert folded.graph.name == "shufflenet_v2_050" and folded.probe["rel_error"] <= folded.probe["tolerance"]


def test_in_batches_feeds_a_fixed_batch_and_cuts_the_padding():
    """A file fixed to a batch of 3 gets 7 images as 3 + 3 + (1 + 2 copies of it); outputs cut back, lists too."""
    seen = []

    def run(x):
        assert len(x) == 3
        seen.append(x[:, 0, 0, 0].tolist())
        return [x[:, :2, 0, 0] * 2, x.sum((1, 2, 3))]

    x = np.arange(7, dtype=np.float32)[:, None, None, None] * np.ones((7, 3, 2, 2), np.float32)
    y = A.in_batches(run, x, 3)
    assert seen == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]
    assert np.array_equal(y[0], x[:, :2, 0, 0] * 2) and np.array_equal(y[1], x.sum((1, 2, 3)))
    assert np.array_equal(A.in_batches(lambda v: v + 1, x, None), x + 1)  # dynamic batch: one call
