"""`lightnets bench` runs end to end on a tiny case and rejects bad arguments (timings are not tested)."""

import json
import subprocess
import sys

import pytest

from lightnets import bench, cli


def test_bench_tiny_torch(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    pytest.importorskip("matplotlib")
    out = tmp_path / "rep"
    code = cli.main(["bench", "--models", "mobilenet_v2_100", "--backends", "torch", "--batch", "1",
                     "--size", "64", "--repeats", "3", "--threads", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().out
    report = json.loads((out / "bench.json").read_text())
    assert report["meta"]["size"] == 64 and report["meta"]["batches"] == [1]
    assert report["import_lightnets"]["median_s"] > 0
    res = report["backends"]["torch"]
    assert not res.get("failed") and res["errors"] == []
    assert res["build"]["median_s"] > 0 and res["port"]["export_s"] >= 0
    (row,) = res["rows"]
    assert row["model"] == "mobilenet_v2_100" and row["twin_name"] == "torchvision.mobilenet_v2"
    for role in ("lightnets", "twin"):
        s = row[role]
        assert s["n"] == 3 and 0 < s["min_ms"] <= s["median_ms"] <= s["p90_ms"]
        assert s["images_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["lightnets"]["median_ms"] / row["twin"]["median_ms"], rel=1e-2)
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mobilenet_v2_100" in capsys.readouterr().out


@pytest.mark.parametrize("args", [
    ["--backends", "tensorflow"],
    ["--models", "no_such_net"],
    ["--batch", "0"],
    ["--batch", "x"],
    ["--size", "8"],
    ["--threads", "0"],
    ["--repeats", "-1"],
])
def test_bench_bad_args_exit_2(args, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", *args, "--out", str(tmp_path / "never")])
    assert e.value.code == 2
    assert not (tmp_path / "never").exists()


def test_bench_module_imports_numpy_only():
    code = ("import sys, lightnets.bench; bad = [m for m in ('torch', 'tensorflow', 'keras', 'paddle', "
            "'matplotlib') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_twin_is_a_lightnets_id():
    import lightnets

    ids = set(lightnets.list_models())
    from lightnets import zoo

    for backend, twins in bench.TWINS.items():
        assert backend in bench.BACKENDS
        assert set(twins) <= ids
        assert all(zoo.entry(*key).framework == backend for key in twins.values())
    assert set(bench.DEFAULT_MODELS) <= ids
