"""lightnets.formats / lightnets.provenance: a weights file never loses its graph.

The motivating bug: timm's mobilenetv3_large_100 builds every BN with eps 1e-5, lightnets'
``mobilenet_v3_large_100`` id with 1e-3. Weights imported from timm (with BN statistics from data, so
some running variances are ~1e-3) saved to a file and rebuilt *by the id* ran the id's graph: logits
68.9% off timm in float64 (measured at 64 px). Files now carry their graph and provenance card; a
disagreeing id is an error naming the node and attribute, and the file's graph reproduces timm.

Tests that use paddle in-process have "paddle" in their name (conftest runs them first); keras runs in
a subprocess that imports paddle first.
"""

import importlib
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lightnets
from lightnets import provenance as PV
from lightnets import weights as W
from lightnets.errors import FileFormatError, LightnetsError, WeightsError
from lightnets.numerics import rel_error

F = importlib.import_module("lightnets.formats")
P = importlib.import_module("lightnets.port")
ROOT = Path(__file__).resolve().parents[1]
ID = "mobilenet_v1_025"
SMALL = dict(num_classes=10, input_size=32)
TIMM = "mobilenetv3_large_100"
SIZE = 64
NATIVE_IN_PROCESS = ("a.pt", "a.pth", "t.safetensors", "a.pdparams")
CANONICAL = ("a.safetensors", "a.npz")


def _fmt(name):
    return "torch" if name == "t.safetensors" else None


def _equal(a, b) -> bool:
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}


# --- the motivating case: timm eps 1e-5 vs the id's 1e-3 ------------------------------------------------
@pytest.fixture(scope="module")
def timm_case(tmp_path_factory):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    zoo_model = timm.create_model(TIMM, pretrained=False, num_classes=1000)
    for m in zoo_model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0  # running stats := the statistics of one batch of low-variance data
    zoo_model.train()
    with torch.no_grad():
        zoo_model(0.05 * torch.randn(8, 3, SIZE, SIZE))
    zoo_model.eval()
    running_var = np.concatenate([m.running_var.numpy() for m in zoo_model.modules()
                                  if isinstance(m, torch.nn.BatchNorm2d)])
    graph, w, info = lightnets.zoo.import_zoo("timm", TIMM, zoo_model, input_size=SIZE)
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE))
    with torch.no_grad():
        ref = zoo_model.double()(torch.from_numpy(x)).numpy()
    model = lightnets.build(graph, "torch", weights=w, dtype="float64")
    path = tmp_path_factory.mktemp("timm") / "x.safetensors"
    lightnets.save_weights(model, path)
    return {"graph": graph, "weights": w, "x": x, "ref": ref, "path": path, "model": model,
            "min_var": float(running_var.min())}


def test_timm_bug_reproduced_the_ids_graph_is_far_from_timm(timm_case):
    c = timm_case
    assert c["min_var"] < 2e-3  # running variances of order 1e-3: eps 1e-5 vs 1e-3 matters
    assert {n.attrs["eps"] for n in c["graph"].nodes if n.op == "batch_norm"} == {1e-5}
    assert rel_error(lightnets.run(c["model"], c["x"]), c["ref"]) <= 1e-10  # the imported graph is timm
    # what build(id, weights=file) did before files carried their graph: the id's graph (eps 1e-3)
    by_id = lightnets.build("mobilenet_v3_large_100", weights=W.load(c["path"]), input_size=SIZE, dtype="float64")
    err = rel_error(lightnets.run(by_id, c["x"]), c["ref"])
    assert err > 0.3, err  # measured 0.689


def test_timm_bug_fixed_disagreeing_id_raises_naming_node_and_eps(timm_case):
    path = timm_case["path"]
    msg = r"node 'stem.bn' attr eps: file 1e-05, mobilenet_v3_large_100 builds 0.001"
    with pytest.raises(WeightsError, match=msg):
        lightnets.build("mobilenet_v3_large_100", weights=path, dtype="float64")
    with pytest.raises(WeightsError, match=msg):
        lightnets.port(path, to="torch", arch="mobilenet_v3_large_100")
    with pytest.raises(WeightsError, match=r"node 'stem.bn' attr eps: file 1e-05, the given mobilenet_v3_large_100 "
                                           r"graph has 0.001"):
        lightnets.load_weights(lightnets.build("mobilenet_v3_large_100", input_size=SIZE), path)


def test_timm_bug_fixed_the_files_graph_reproduces_timm_float64(timm_case):
    c = timm_case
    for model in (lightnets.build(c["path"], dtype="float64"),
                  lightnets.build(str(c["path"]), dtype="float64"),
                  lightnets.build(c["graph"], weights=c["path"], dtype="float64")):
        g = model.graph
        assert g.to_json() == c["graph"].to_json()  # the whole graph, card included
        assert rel_error(lightnets.run(model, c["x"]), c["ref"]) <= 1e-10
        card = PV.card_of(g)
        assert card["source"]["kind"] == "zoo" and card["source"]["zoo"] == "timm" and card["bn_eps"] == 1e-5
    ported, info = lightnets.port(c["path"], to="torch", dtype="float64", return_info=True)
    assert info["graph_from"] == "file metadata" and info["card"] == PV.card_of(c["graph"])
    assert rel_error(lightnets.run(ported, c["x"]), c["ref"]) <= 1e-10


def test_timm_card_survives_every_format_and_port_float64_paddle(timm_case, tmp_path):
    c = timm_case
    card, text = PV.card_of(c["graph"]), c["graph"].to_json()
    for name in CANONICAL + NATIVE_IN_PROCESS:
        path = tmp_path / name
        lightnets.save_weights(c["model"], path, _fmt(name))
        for backend in ("torch", "paddle"):
            m = lightnets.build(path, backend, dtype="float64")
            assert m.graph.to_json() == text, (name, backend)
            assert _equal(lightnets.export_weights(m), lightnets.export_weights(c["model"])), (name, backend)
            assert rel_error(lightnets.run(m, c["x"]), c["ref"]) <= 1e-10, (name, backend)
            # and every port keeps it
            for to in ("torch", "paddle"):
                p, info = lightnets.port(m, to=to, dtype="float64", return_info=True)
                assert info["card"] == card and p.graph.to_json() == text, (name, backend, to)
        _, info = lightnets.port(path, to="paddle", dtype="float64", return_info=True)
        assert info["card"] == card and info["graph_from"] in ("file metadata", f"sidecar {name}{F.SIDECAR}")


def test_card_survives_keras_formats_float64_in_subprocess_paddle_first(tmp_path):
    code = f"""
        import json, numpy as np
        import paddle  # before tensorflow
        import lightnets
        from lightnets import provenance as PV
        from lightnets.numerics import rel_error
        src = lightnets.build("{ID}", "paddle", num_classes=10, input_size=32, dtype="float64", seed=4)
        card, text = PV.card_of(src.graph), src.graph.to_json()
        x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
        want = lightnets.run(src, x)
        for name in ("a.weights.h5", "a.keras", "a.safetensors", "a.pdparams"):
            path = "{tmp_path}/" + name
            lightnets.save_weights(src, path)
            for b in ("keras", "paddle", "torch"):
                m = lightnets.build(path, b, dtype="float64")
                assert lightnets.api.backend_of(m).graph_of(m).to_json() == text, (name, b)
                err = rel_error(lightnets.run(m, x), want)
                assert err <= 1e-10, (name, b, err)
            k, info = lightnets.port(path, to="keras", dtype="float64", return_info=True)
            assert info["card"] == card, name
            back = lightnets.port(k, to="paddle", dtype="float64")
            assert back.graph.to_json() == text, name
        print("OK")
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=_env(),
                       cwd=ROOT, timeout=400)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]


def test_port_of_a_zoo_checkpoint_carries_its_card_into_the_files_it_writes(tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    zoo_model = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=10).eval()
    torch.save(zoo_model.state_dict(), tmp_path / "z.pt")
    t, info = lightnets.port(tmp_path / "z.pt", to="torch", from_format="timm:mobilenetv3_small_100", input_size=SIZE,
                             return_info=True)
    assert info["graph_from"] == "zoo importer timm:mobilenetv3_small_100"
    assert info["probe_against"] == "float64 reference" and info["probe_checked"] == ["target"]
    card = info["card"]
    assert card["source"]["zoo"] == "timm" and card["source"]["sha256"] == PV.sha256_file(tmp_path / "z.pt")
    assert card["bn_eps"] == 1e-5 and card["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    lightnets.save_weights(t, tmp_path / "o.safetensors")
    assert lightnets.formats.describe(tmp_path / "o.safetensors")["card"] == card
    x = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE))
    with torch.no_grad():
        ref = zoo_model.double()(torch.from_numpy(x)).numpy()
    assert rel_error(lightnets.run(lightnets.build(tmp_path / "o.safetensors", dtype="float64"), x), ref) <= 1e-10


def test_onnx_row_keeps_graph_and_card(tmp_path):
    pytest.importorskip("onnxruntime")
    m = lightnets.build(ID, **SMALL, seed=6)  # float32: the onnx backend writes float32 initializers
    lightnets.save_weights(m, tmp_path / "a.onnx")
    assert sorted(os.listdir(tmp_path)) == ["a.onnx", "a.onnx" + F.SIDECAR]
    back = lightnets.build(tmp_path / "a.onnx")
    assert back.graph.to_json() == m.graph.to_json() and _equal(lightnets.export_weights(back),
                                                                lightnets.export_weights(m))
    o, info = lightnets.port(tmp_path / "a.onnx", to="onnxruntime", return_info=True)
    assert info["card"] == PV.card_of(m.graph) and info["graph_from"] == "sidecar a.onnx" + F.SIDECAR
    assert info["max_rel_diff"] <= P.PROBE_TOLERANCE


# --- what a file records ------------------------------------------------------------------------------
def test_canonical_metadata_holds_graph_and_card(tmp_path):
    m = lightnets.build(ID, **SMALL, seed=5)
    lightnets.save_weights(m, tmp_path / "a.safetensors")
    lightnets.save_weights(m, tmp_path / "a.npz")
    arrays, meta = W.read_safetensors(tmp_path / "a.safetensors")
    assert meta["format"] == "lightnets.canonical" and meta["sha256"] == W.digest(arrays)
    assert lightnets.Graph.from_json(meta["lightnets.graph"]).to_json() == m.graph.to_json()
    assert json.loads(meta["lightnets.card"]) == PV.card_of(m.graph) == {**PV.card_of(m.graph),
                                                                         "source": {"kind": "init", "seed": 5}}
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:  # plain strings, no pickle
        assert W.NPZ_META in z.files and z[W.NPZ_META].dtype.kind == "U"
        npz_meta = json.loads(str(z[W.NPZ_META][()]))
    assert npz_meta["lightnets.graph"] == meta["lightnets.graph"]
    assert W.NPZ_META not in W.load(tmp_path / "a.npz")  # the metadata is not a weight


def test_native_sidecar_holds_graph_card_and_file_hash(tmp_path):
    m = lightnets.build(ID, **SMALL)
    path = tmp_path / "a.pt"
    lightnets.save_weights(m, path)
    side = json.loads((tmp_path / ("a.pt" + F.SIDECAR)).read_text())
    assert side["format"] == F.SIDECAR_FORMAT and side["file_format"] == "torch"
    assert side["file_sha256"] == PV.sha256_file(path) and side["card"] == PV.card_of(m.graph)
    assert lightnets.Graph.from_json(json.dumps(side["graph"])).to_json() == m.graph.to_json()


def test_files_without_a_graph_load_by_id_and_say_so(tmp_path):
    m = lightnets.build(ID, **SMALL, seed=3)
    w = lightnets.export_weights(m)
    from safetensors.numpy import save_file

    save_file(w, tmp_path / "old.safetensors")  # an older / foreign canonical file: no lightnets metadata
    with pytest.raises(LightnetsError, match="holds no graph.*pass the lightnets model id"):
        lightnets.build(tmp_path / "old.safetensors")
    got, info = lightnets.port(tmp_path / "old.safetensors", to="torch", arch=ID, input_size=32, return_info=True)
    assert _equal(lightnets.export_weights(got), w)
    assert info["graph_from"].startswith(f"id '{ID}'") and "holds no graph" in info["graph_from"]
    assert info["card"]["source"]["kind"] == "file" and info["card"]["source"]["sha256"] == PV.sha256_file(
        tmp_path / "old.safetensors")
    # a file written by the first lightnets: the id in metadata, no graph JSON -> that id
    W.save(w, tmp_path / "v1.safetensors", {"lightnets.graph": ID})
    assert _equal(lightnets.export_weights(lightnets.build(tmp_path / "v1.safetensors", input_size=32)), w)
    # a native file without its sidecar
    lightnets.save_weights(m, tmp_path / "a.pt")
    (tmp_path / ("a.pt" + F.SIDECAR)).unlink()
    _, info = lightnets.port(tmp_path / "a.pt", to="torch", arch=ID, input_size=32, return_info=True)
    assert "no sidecar a.pt.lightnets.json" in info["graph_from"], info["graph_from"]


def test_stale_sidecar_is_ignored_not_trusted(tmp_path):
    torch = pytest.importorskip("torch")
    a = lightnets.build(ID, **SMALL, seed=1)
    lightnets.save_weights(a, tmp_path / "a.pt")
    other = lightnets.build(ID, num_classes=10, input_size=32, seed=2)
    torch.save(other.state_dict(), tmp_path / "a.pt")  # replaced by another tool; the sidecar stayed
    _, info = lightnets.port(tmp_path / "a.pt", to="torch", arch=ID, input_size=32, return_info=True)
    assert "written for other bytes" in info["graph_from"] and info["card"]["source"]["kind"] == "file"
    assert lightnets.formats.describe(tmp_path / "a.pt")["graph"] is None


@pytest.mark.parametrize("kwargs,problem", [
    (dict(arch=ID, num_classes=1000), "node 'head.fc' attr out_features: file 10, mobilenet_v1_025 builds 1000"),
    (dict(arch="mobilenet_v1_050"), "model id: file 'mobilenet_v1_025', mobilenet_v1_050 builds"),
    (dict(arch=ID, include_top=False), "node count: file 84, mobilenet_v1_025 builds 83 (the longer one goes "
                                       "on with ['head.fc'])"),
    (dict(num_classes=5), "with 10 classes, not 5"),
])
def test_caller_disagreeing_with_the_files_graph_is_refused(tmp_path, kwargs, problem):
    m = lightnets.build(ID, **SMALL)
    lightnets.save_weights(m, tmp_path / "a.npz")
    problem = re.escape(problem)
    with pytest.raises(WeightsError, match=problem):
        F.read(tmp_path / "a.npz", **kwargs)
    with pytest.raises(WeightsError, match=problem):
        lightnets.build(kwargs.pop("arch", None), weights=tmp_path / "a.npz", **kwargs)


def test_input_size_only_matters_where_it_changes_the_graph(tmp_path):
    m = lightnets.build(ID, **SMALL)
    lightnets.save_weights(m, tmp_path / "a.safetensors")
    big = lightnets.build(ID, weights=tmp_path / "a.safetensors", input_size=64)  # same nodes at 64 px
    assert big.graph.input_shape == (3, 64, 64) and _equal(lightnets.export_weights(big), lightnets.export_weights(m))
    assert lightnets.build(tmp_path / "a.safetensors").graph.input_shape == (3, 32, 32)  # default: the file's
    g = lightnets.spec(ID, **SMALL)  # a graph valid at its build size only refuses another size
    fixed = lightnets.Graph(g.name, g.input_shape, g.nodes, {**g.meta, "fixed_size": True})
    lightnets.save_weights(lightnets.build(fixed), tmp_path / "fixed.safetensors")
    assert lightnets.build(tmp_path / "fixed.safetensors").graph.meta["fixed_size"] is True
    with pytest.raises(LightnetsError, match="fixed to 32x32 inputs"):
        lightnets.build(tmp_path / "fixed.safetensors", input_size=64)


def test_backbone_files_keep_their_outputs_and_ports_probe_every_map_paddle(tmp_path):
    m = lightnets.build("mobilenet_v2_050", input_size=64, features=True, seed=2)
    text = m.graph.to_json()
    p, info = lightnets.port(m, to="paddle", return_info=True)
    assert info["max_rel_diff"] <= P.PROBE_TOLERANCE and p.graph.to_json() == text
    for name in ("a.safetensors", "a.pdparams"):
        lightnets.save_weights(p, tmp_path / name)
        assert lightnets.build(tmp_path / name).graph.to_json() == text
        back = lightnets.build("mobilenet_v2_050", weights=tmp_path / name)  # the id's same maps agree
        assert back.graph.outputs == m.graph.outputs
        _, info = lightnets.port(tmp_path / name, to="torch", return_info=True)
        assert info["max_rel_diff"] <= P.PROBE_TOLERANCE
    with pytest.raises(WeightsError, match="mobilenet_v1_050"):
        lightnets.build("mobilenet_v1_050", weights=tmp_path / "a.safetensors")


def test_provenance_of_builds(tmp_path):
    assert PV.card_of(lightnets.build(ID, **SMALL, seed=7).graph)["source"] == {"kind": "init", "seed": 7}
    g = lightnets.spec(ID, **SMALL)
    card = PV.card_of(lightnets.build(g, weights=W.init_weights(g)).graph)
    assert card["source"] == {"kind": "dict"} and card["num_classes"] == 10 and card["bn_eps"] == 1e-5


# --- atomic writes: the mode a plain open() gives ----------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_writes_respect_the_umask(tmp_path, mask):
    m = lightnets.build(ID, **SMALL)
    old = os.umask(mask)
    try:
        with open(tmp_path / "plain", "w") as f:
            f.write("x")
        want = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
        assert want == 0o666 & ~mask
        for name in ("a.safetensors", "a.npz", "a.pt", "t.safetensors"):
            lightnets.save_weights(m, tmp_path / name, _fmt(name))
        W.atomic_write(tmp_path / "r.txt", lambda tmp: Path(tmp).write_text("report"))
        for p in tmp_path.iterdir():
            assert stat.S_IMODE(os.stat(p).st_mode) == want, (p.name, oct(os.stat(p).st_mode))
        # replacing a file keeps its mode, as open(path, "w") does
        os.chmod(tmp_path / "a.safetensors", 0o640)
        lightnets.save_weights(m, tmp_path / "a.safetensors", overwrite=True)
        assert stat.S_IMODE(os.stat(tmp_path / "a.safetensors").st_mode) == 0o640
    finally:
        os.umask(old)


def test_native_file_and_sidecar_are_written_together(tmp_path, monkeypatch):
    m = lightnets.build(ID, **SMALL)
    row = F.FORMATS["torch"]

    def boom(tmp, fmt, saving):
        row.write(tmp, fmt, saving)
        raise OSError("disk full")
    monkeypatch.setitem(F.FORMATS, "torch", row._replace(write=boom))
    with pytest.raises(OSError, match="disk full"):
        lightnets.save_weights(m, tmp_path / "a.pt")
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(F.PV, "sha256_file", lambda p: (_ for _ in ()).throw(OSError("sidecar failed")))
    monkeypatch.setitem(F.FORMATS, "torch", row)
    with pytest.raises(OSError, match="sidecar failed"):
        lightnets.save_weights(m, tmp_path / "a.pt")
    assert os.listdir(tmp_path) == []


# --- the format table -------------------------------------------------------------------------------------
def test_one_table_of_formats():
    for name, row in F.FORMATS.items():
        assert row.name == name and row.suffixes and callable(row.read) and callable(row.write)
        assert row.holds_card == (row.backend is None)
        for suffix in row.suffixes:
            got = F.format_of("w" + suffix, reading=False)
            assert got == name or F.FORMATS[got].suffixes == row.suffixes or suffix == ".safetensors"
    assert F.CANONICAL == ("safetensors", "npz")
    assert F.format_of("w.safetensors", "torch") == "torch-safetensors"
    assert F.format_of("w.keras", "keras") == "keras-model"
    with pytest.raises(FileFormatError, match="cannot tell the weights format"):
        F.format_of("w.bin")


def test_port_and_formats_import_no_framework_and_name_none():
    for mod in ("formats", "port", "provenance"):
        text = (ROOT / "lightnets" / f"{mod}.py").read_text()
        for fw in ("import torch", "import keras", "import paddle", "import tensorflow", "import h5py",
                   "== \"torch\"", "== \"keras\"", "== \"paddle\""):
            assert fw not in text, (mod, fw)
    code = ("import sys, lightnets.formats, lightnets.port\n"
            "print([m for m in ('torch', 'keras', 'paddle') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr[-2000:]


# --- lightnets info ------------------------------------------------------------------------------------------
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lightnets.cli", *map(str, args)], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=240)


def test_cli_info_prints_card_and_graph(tmp_path, timm_case):
    r = _cli("info", timm_case["path"])
    assert r.returncode == 0, r.stderr[-2000:]
    for word in ("graph and card from: file metadata", "mobilenet_v3_large_100", "1e-05", "kind=zoo",
                 "zoo=timm", "3x64x64", "5,483,032", "explicit (symmetric)", "preprocessing"):
        assert word in r.stdout, (word, r.stdout)
    m = lightnets.build(ID, **SMALL)
    lightnets.save_weights(m, tmp_path / "a.pt")
    r = _cli("info", tmp_path / "a.pt")
    assert r.returncode == 0 and f"sidecar a.pt{F.SIDECAR}" in r.stdout and "kind=init" in r.stdout, r.stdout
    (tmp_path / ("a.pt" + F.SIDECAR)).unlink()
    r = _cli("info", tmp_path / "a.pt")
    assert r.returncode == 0 and "no sidecar" in r.stdout and "no graph recorded" in r.stdout, r.stdout
    r = _cli("info", tmp_path / "missing.pt")
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert _cli("info").returncode == 2
