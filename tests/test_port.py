"""lightnets.port: every format saves/loads bit-exact, writes are atomic, bad files fail clearly,
ports between backends round-trip bit-exact and are probe-checked, and the ``lightnets port`` CLI.

Tests that use paddle in-process have "paddle" in their name (conftest runs them before anything
imports tensorflow); everything that needs keras runs in a subprocess that imports paddle first.
"""

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import profiles
import pytest

import lightnets
from lightnets.errors import FileFormatError, LightnetsError, WeightsError

P = importlib.import_module("lightnets.port")
F = importlib.import_module("lightnets.formats")
ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(num_classes=10, input_size=32)
ID = "mobilenet_v1_025"
NON_KERAS_FORMATS = ("a.safetensors", "a.npz", "a.pt", "a.pth", "t.safetensors", "a.pdparams")
# the keras pairs, probe-checked: mobilenet_v3_small_075 in `make test`, with LIGHTNETS_SLOW=1 also a
# ShuffleNetV1 (groups 3) and a GhostNet; their weight paths through keras are bit-exact in
# tests/test_zoo_cross.py (both ids there), their keras numbers the parity matrix (all ids for torch <-> paddle)
# (mobilenet_v1_025 goes through keras in the format checks of the same subprocess)
KERAS_SUBSET = ("mobilenet_v3_small_075", "shufflenet_v1_g3_050", "ghostnet_050") if profiles.SLOW else (
    "mobilenet_v3_small_075",)


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}


def _py(code: str, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=timeout)


def _equal(a, b) -> bool:
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def _fmt(name):
    return "torch" if name == "t.safetensors" else None


def _written(name, fmt=None):
    """The files a save of ``name`` leaves: native formats get their graph + card sidecar."""
    native = F.FORMATS[F.format_of(name, fmt, reading=False)].backend is not None
    return sorted([name, name + F.SIDECAR] if native else [name])


# --- round trips ------------------------------------------------------------------------------------
def test_round_trip_torch_paddle_bit_exact():
    for model_id in profiles.ids("mobilenet_v2_100_keras", "shufflenet_v2_200_paddle", "mobilenet_v3_large_100"):
        t = lightnets.build(model_id, "torch", **{**SMALL, "input_size": profiles.input_size(model_id, 32)})
        w0 = lightnets.export_weights(t)
        p = lightnets.port(t, to="paddle")
        assert _equal(lightnets.export_weights(p), w0), model_id
        t2 = lightnets.port(p, to="torch")  # paddle -> torch -> paddle closes the other ordered pair
        assert _equal(lightnets.export_weights(t2), w0), model_id
        assert _equal(lightnets.export_weights(lightnets.port(t2, to="paddle")), w0), model_id


def test_round_trips_with_keras_and_keras_formats_in_subprocess_paddle_first():
    r = _py(f"""
        import os, importlib, numpy as np, tempfile
        import paddle  # before tensorflow
        import lightnets
        F = importlib.import_module("lightnets.formats")
        def eq(a, b): return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
        worst = 0.0
        for mid in {KERAS_SUBSET!r}:
            src = {{b: lightnets.build(mid, b, num_classes=10, input_size=32, seed=3) for b in ("torch", "paddle")}}
            w0 = lightnets.export_weights(src["torch"])
            src["keras"] = lightnets.port(src["torch"], to="keras")
            for a in ("torch", "keras", "paddle"):
                for b in ("torch", "keras", "paddle"):
                    if a == b: continue
                    m_b, info = lightnets.port(src[a], to=b, return_info=True)
                    worst = max(worst, info["max_rel_diff"])
                    back = lightnets.port(m_b, to=a)
                    assert eq(lightnets.export_weights(back), w0), (mid, a, b)
        print("worst_rel", worst)
        d = tempfile.mkdtemp()
        m = lightnets.build("{ID}", "keras", num_classes=10, input_size=32)
        w0 = lightnets.export_weights(m)
        for name in ("a.weights.h5", "a.keras", "a.safetensors", "a.pt", "a.pdparams"):
            path = os.path.join(d, name)
            lightnets.save_weights(m, path)
            for b in ("keras", "torch", "paddle"):
                fresh = lightnets.build("{ID}", b, num_classes=10, input_size=32, seed=9)
                lightnets.load_weights(fresh, path)
                assert eq(lightnets.export_weights(fresh), w0), (name, b)
            if name.startswith("a.weights") or name.endswith(".keras"):
                t = lightnets.port(path, to="paddle", arch="{ID}", input_size=32)
                assert eq(lightnets.export_weights(t), w0), name
        # atomic keras writes: the writer fails mid-write -> nothing left
        for fmt, name in (("keras-weights", "b.weights.h5"), ("keras-model", "b.keras")):
            row = F.FORMATS[fmt]
            def boom(tmp, fmt, saving, real=row.write):
                real(tmp, fmt, saving)
                raise RuntimeError("disk full")
            F.FORMATS[fmt] = row._replace(write=boom)
            try:
                lightnets.save_weights(m, os.path.join(d, name))
                raise SystemExit("no error")
            except RuntimeError:
                pass
            F.FORMATS[fmt] = row
        want = sorted(["a.safetensors"] + [n + s for n in ("a.keras", "a.pdparams", "a.pt", "a.weights.h5")
                                           for s in ("", F.SIDECAR)])
        assert sorted(os.listdir(d)) == want, os.listdir(d)
        # a truncated .weights.h5 / .keras: clear lightnets errors
        for name in ("a.weights.h5", "a.keras"):
            path = os.path.join(d, name)
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])
            try:
                lightnets.port(path, to="torch", arch="{ID}", input_size=32)
                raise SystemExit("no error for truncated " + name)
            except lightnets.LightnetsError as e:
                assert "truncated" in str(e) or "corrupt" in str(e), e
        print("OK")
    """)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
    worst = float(r.stdout.split("worst_rel")[1].split()[0])
    assert worst <= P.PROBE_TOLERANCE


# --- formats ------------------------------------------------------------------------------------
def test_save_refuses_an_existing_file_unless_overwrite(tmp_path):
    m = lightnets.build(ID, "torch", **SMALL, seed=1)
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"keep me")
    with pytest.raises(FileFormatError, match="exists; pass overwrite=True"):
        lightnets.save_weights(m, path)
    assert path.read_bytes() == b"keep me"
    lightnets.save_weights(m, path, overwrite=True)
    assert F.format_of(path) == "safetensors"


@pytest.mark.parametrize("name", NON_KERAS_FORMATS)
def test_every_format_saves_and_loads_bit_exact_torch_paddle(tmp_path, name):
    for backend in ("torch", "paddle"):
        m = lightnets.build(ID, backend, **SMALL, seed=1)
        w0 = lightnets.export_weights(m)
        path = tmp_path / backend / name
        path.parent.mkdir()
        lightnets.save_weights(m, path, _fmt(name))
        assert F.format_of(path) == F.format_of(path, _fmt(name))
        for other in ("torch", "paddle"):
            fresh = lightnets.build(ID, other, **SMALL, seed=2)
            lightnets.load_weights(fresh, path)
            assert _equal(lightnets.export_weights(fresh), w0), (name, backend, other)
        ported, info = lightnets.port(path, to="paddle", arch=ID, input_size=32, return_info=True)
        assert _equal(lightnets.export_weights(ported), w0)
        assert info["max_rel_diff"] <= P.PROBE_TOLERANCE
        assert sorted(os.listdir(path.parent)) == _written(name, _fmt(name))  # no temp files


def test_safetensors_metadata_marks_the_flavour_paddle(tmp_path):
    from safetensors import safe_open

    m = lightnets.build(ID, "paddle", **SMALL)
    lightnets.save_weights(m, tmp_path / "c.safetensors")
    lightnets.save_weights(m, tmp_path / "t.safetensors", "torch")
    with safe_open(str(tmp_path / "c.safetensors"), "numpy") as f:
        assert f.metadata()["format"] == "lightnets.canonical"
    with safe_open(str(tmp_path / "t.safetensors"), "numpy") as f:
        assert f.metadata()["format"] == "torch"
    # without metadata the key names decide
    from safetensors.numpy import load_file, save_file

    save_file(load_file(tmp_path / "t.safetensors"), tmp_path / "bare.safetensors")
    assert F.format_of(tmp_path / "bare.safetensors") == "torch-safetensors"


@pytest.mark.parametrize("fmt,name", [("torch", "a.pt"), ("safetensors", "a.safetensors"), ("npz", "a.npz"),
                                      ("paddle", "a.pdparams")])
def test_writes_are_atomic_paddle(tmp_path, monkeypatch, fmt, name):
    def partial(tmp, *args):
        Path(tmp).write_bytes(b"half a file")
        raise OSError("disk full")

    if fmt in F.CANONICAL:
        monkeypatch.setattr(lightnets.weights, "write_safetensors" if fmt == "safetensors" else "write_npz",
                            lambda arrays, tmp, *meta: partial(tmp))
    else:
        monkeypatch.setitem(F.FORMATS, fmt, F.FORMATS[fmt]._replace(write=partial))
    m = lightnets.build(ID, "paddle" if fmt == "paddle" else "torch", **SMALL)
    with pytest.raises(OSError, match="disk full"):
        lightnets.save_weights(m, tmp_path / name)
    assert os.listdir(tmp_path) == []


# --- bad files --------------------------------------------------------------------------------------
def _saved(tmp_path, name, model_id=ID):
    m = lightnets.build(model_id, "torch", **SMALL)
    path = tmp_path / name
    lightnets.save_weights(m, path, _fmt(name))
    return path


@pytest.mark.parametrize("name", NON_KERAS_FORMATS)
def test_truncated_file_is_a_clear_error_paddle(tmp_path, name):
    path = _saved(tmp_path, name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LightnetsError, match="truncated|corrupt|does not fit|missing"):
        lightnets.port(path, to="paddle", arch=ID, input_size=32, from_format=_fmt(name))
    with pytest.raises(LightnetsError):
        lightnets.load_weights(lightnets.build(ID, "torch", **SMALL), path, _fmt(name))


@pytest.mark.parametrize("name", ["a.safetensors", "t.safetensors", "a.npz"])
def test_tampered_bytes_are_detected_paddle(tmp_path, name):
    path = _saved(tmp_path, name)
    data = bytearray(path.read_bytes())
    i = len(data) - 4096  # inside the tensor data, not the header
    data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="sha256|corrupt|modified"):
        lightnets.port(path, to="paddle", arch=ID, input_size=32)


@pytest.mark.parametrize("name", NON_KERAS_FORMATS)
def test_file_of_another_arch_names_the_keys_paddle(tmp_path, name):
    path = _saved(tmp_path, name, "shufflenet_v2_050")
    with pytest.raises(WeightsError, match="missing keys .*unexpected keys|missing keys|unexpected keys"):
        lightnets.port(path, to="paddle", arch=ID, input_size=32, from_format=_fmt(name))


def test_missing_key_is_named_paddle(tmp_path):
    m = lightnets.build(ID, "torch", **SMALL)
    w = lightnets.export_weights(m)
    del w["stem.bn.var"]
    from safetensors.numpy import save_file

    save_file(w, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError, match=r"missing keys \['stem.bn.var'\]"):
        lightnets.port(tmp_path / "w.safetensors", to="paddle", arch=ID, input_size=32)
    import torch

    sd = m.state_dict()
    del sd["stem.bn.running_var"]
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(WeightsError, match=r"missing keys \['stem.bn.running_var'\]"):
        lightnets.port(tmp_path / "w.pt", to="paddle", arch=ID, input_size=32)


# --- CLI ----------------------------------------------------------------------------------------
def _cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "lightnets.cli", *map(str, args)], capture_output=True,
                          text=True, env=_env(), cwd=ROOT, timeout=timeout)


def test_cli_port_torch_pt_to_paddle_pdparams(tmp_path):
    src = _saved(tmp_path, "w.pt")
    out = tmp_path / "w.pdparams"
    r = _cli("port", "--arch", ID, "--from", src, "--to", "paddle", "--out", out, "--size", 32)
    assert r.returncode == 0, r.stderr[-2000:]
    for word in ("tensors moved: 137", "params moved:", "torch", "paddle", "max abs logit diff", "max rel diff"):
        assert word in r.stdout, r.stdout
    before = out.read_bytes()
    r = _cli("port", "--arch", ID, "--from", src, "--to", "paddle", "--out", out, "--size", 32)
    assert r.returncode == 1 and "--force" in r.stderr and out.read_bytes() == before
    # bad inputs: nothing written, exit 1; bad args exit 2
    bad = tmp_path / "bad.pt"
    bad.write_bytes(src.read_bytes()[:1000])
    for args in (("--from", bad, "--out", tmp_path / "x.pdparams"),
                 ("--from", src, "--out", tmp_path / "nodir" / "x.pdparams"),
                 ("--from", _saved(tmp_path, "o.pt", "shufflenet_v2_050"), "--out", tmp_path / "y.pdparams"),
                 ("--from", src, "--out", tmp_path / "z.weights.h5")):
        r = _cli("port", "--arch", ID, *args, "--to", "paddle", "--size", 32)
        assert r.returncode == 1 and "Traceback" not in r.stderr and "error" in r.stderr, (args, r.stderr[-1500:])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["bad.pt", "o.pt", "o.pt" + F.SIDECAR, "w.pdparams", "w.pdparams" + F.SIDECAR, "w.pt", "w.pt" + F.SIDECAR])
    assert _cli("port", "--arch", "nope", "--from", src, "--to", "paddle", "--out", out).returncode == 2
    assert _cli("port", "--arch", ID, "--from", src, "--to", "mxnet", "--out", out).returncode == 2


def test_zoo_state_dict_without_from_format_is_detected(tmp_path):
    """A torchvision checkpoint (no lightnets sidecar) ports without --from-format: its keys and shapes name
    the zoo entry; the ported model equals torchvision's logits."""
    import torch
    import torchvision

    tv = torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pt")
    model, info = lightnets.port(tmp_path / "tv.pt", to="torch", return_info=True)
    assert info["graph_from"] == "zoo importer torchvision:mobilenet_v2" and info["arch"] == "mobilenet_v2_100"
    assert any("detected torchvision:mobilenet_v2" in n for n in info["notes"])
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = tv(torch.from_numpy(x)).numpy()
    assert np.abs(lightnets.run(model, x) - want).max() / np.abs(want).max() <= 1e-5
