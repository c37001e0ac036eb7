"""`lightnets bench` runs end to end on a tiny case and rejects bad arguments (timings are not tested)."""

import json
import subprocess
import sys

import pytest

from lightnets import bench, cli


def _tiny_bench(tmp_path, capsys, backend: str, batch: int) -> tuple[dict, object]:
    """``lightnets bench`` of mobilenet_v2_100 at 64 px, 3 repeats, 1 thread: (bench.json, the report dir)."""
    pytest.importorskip("torchvision")
    pytest.importorskip("matplotlib")
    out = tmp_path / "rep"
    code = cli.main(["bench", "--models", "mobilenet_v2_100", "--backends", backend, "--batch", str(batch),
                     "--size", "64", "--repeats", "3", "--threads", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().out
    return json.loads((out / "bench.json").read_text()), out


def test_bench_tiny_torch(tmp_path, capsys):
    report, out = _tiny_bench(tmp_path, capsys, "torch", 1)
    assert report["meta"]["size"] == 64 and report["meta"]["batches"] == [1]
    assert report["import_lightnets"]["median_s"] > 0
    res = report["backends"]["torch"]
    assert not res.get("failed") and res["errors"] == []
    assert res["build"]["median_s"] > 0 and res["port"]["export_s"] >= 0
    assert res["peak"]["gflops"] > 0
    (row,) = res["rows"]
    assert row["model"] == "mobilenet_v2_100" and row["twin_name"] == "torchvision.mobilenet_v2"
    assert set(row["variants"]) == set(bench.FRAMEWORK_VARIANTS)
    for name, s in row["variants"].items():
        assert s["n"] == 3 and 0 < s["min_ms"] <= s["median_ms"] <= s["p90_ms"], name
        assert s["images_per_s"] > 0 and s["first_call_s"] > 0
        # every variant computes its reference's function (fast paths: the plain model's; twin_compiled: the twin's)
        assert s["rel_vs_plain"] <= 1e-4, (name, s["rel_vs_plain"])
    assert row["variants"]["fast"]["convert_s"] > 0 and row["variants"]["compiled"]["convert_s"] > 0
    (line,) = report["summary"]["lines"]
    v = row["variants"]
    best = min(v["fast"]["median_ms"], v["compiled"]["median_ms"])
    assert line["best/twin"] == pytest.approx(best / v["twin"]["median_ms"], rel=1e-2)
    assert line["gflops"] == pytest.approx(2 * report["macs"]["mobilenet_v2_100"] / best * 1e3 / 1e9, rel=1e-2)
    # peak_fraction is rounded to 3 decimals: on a loaded host (a few % of the peak) that is more than 1 %
    assert line["peak_fraction"] == pytest.approx(line["gflops"] / res["peak"]["gflops"], rel=1e-2, abs=5e-4)
    assert line["target"] == bench.TARGETS["torch"][1] and isinstance(line["target_met"], bool)
    (fastest,) = report["summary"]["fastest"]
    assert fastest["fastest"] == "torch" and fastest["vs_fastest"] == {"torch": 1.0}
    # the cells of the row (model x batch): every variant against the fastest one
    cells = report["summary"]["cells"]
    assert [c["cell"] for c in cells] == sorted((f"torch {k}" for k in v), key=lambda c: v[c[6:]]["median_ms"])
    assert cells[0]["vs_fastest"] == 1.0 and all(c["vs_fastest"] >= 1.0 for c in cells)
    for c in cells:
        ms = v[c["cell"][6:]]["median_ms"]
        assert c["gflops"] == pytest.approx(2 * report["macs"]["mobilenet_v2_100"] / ms * 1e3 / 1e9, rel=1e-2)
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "mobilenet_v2_100" in printed and "fastest mobilenet_v2_100 bs1: torch" in printed


def test_bench_tiny_onnxruntime_times_our_export_and_the_twins_export(tmp_path, capsys):
    """ONNX Runtime runs lightnets' export (plain, BN folded; the folded one in the sequential and the parallel
    execution mode) and torchvision's torch.onnx export of the twin."""
    pytest.importorskip("onnxruntime")
    res = _tiny_bench(tmp_path, capsys, "onnxruntime", 2)[0]["backends"]["onnxruntime"]
    assert not res.get("failed") and res["errors"] == []
    (row,) = res["rows"]
    assert row["twin_name"] == "torchvision.mobilenet_v2" and set(row["variants"]) == set(bench.RUNTIME_VARIANTS)
    assert row["variants"]["fast"]["rel_vs_plain"] <= 1e-5  # the folded export computes the plain export's function
    assert row["variants"]["parallel"]["rel_vs_plain"] == 0.0  # the same file, another execution mode
    assert all(s["n"] == 3 and s["median_ms"] > 0 for s in row["variants"].values())


def test_bench_worker_goes_through_the_shared_launcher(tmp_path, monkeypatch):
    """The bench and the parity runner start workers through lightnets.workers (one env pinning)."""
    from lightnets import workers

    started = []
    real = workers.start

    def spy(module, request, out, threads=1, env=None):
        started.append((module, threads, dict(env or {})))
        return real(module, request, out, threads, env)
    monkeypatch.setattr(workers, "start", spy)
    result = bench.launch({"backend": "nope", "models": [], "batches": [1], "size": 32, "threads": 1, "repeats": 1,
                           "work": str(tmp_path)}, tmp_path, threads=3)
    assert started == [("lightnets.bench", 3, bench.thread_env(3))]
    assert "worker exited with 1" in result["failed"]  # an unknown backend fails inside the worker
    assert (tmp_path / "nope" / "request.json").exists() and (tmp_path / "nope" / "worker.log").exists()
    assert workers.thread_env(3)["OMP_NUM_THREADS"] == "3" and bench.thread_env(3)["KERAS_BACKEND"] == "tensorflow"


@pytest.mark.parametrize("args", [
    ["--backends", "tensorflow"],
    ["--models", "no_such_net"],
    ["--batch", "0"],
    ["--batch", "x"],
    ["--size", "8"],
    ["--threads", "0"],
    ["--repeats", "-1"],
    ["--variants", "plain,jit"],
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

    framework = {b: bench.RUNTIME_TWINS.get(b, b) for b in bench.BACKENDS}
    for backend in bench.BACKENDS:
        twins = bench.twins_of(backend)
        assert set(twins) <= ids
        assert all(zoo.entry(*key).framework == framework[backend] for key in twins.values())
    # read from the zoo entries: torchvision before timm, a flavour where the zoo builds only that
    assert bench.twins_of("torch")["mobilenet_v2_100"] == ("torchvision", "mobilenet_v2")
    assert bench.twins_of("torch")["mobilenet_v1_100"] == ("timm", "mobilenetv1_100")  # mobilenet_v1_100_timm
    assert bench.twins_of("keras")["mobilenet_v3_large_100"] == ("keras", "MobileNetV3Large")
    assert bench.twins_of("tflite") == bench.twins_of("keras") and "shufflenet_v2_100" in bench.twins_of("paddle")
    assert set(bench.DEFAULT_MODELS) <= ids
    assert set(bench.TARGETS) <= set(bench.BACKENDS)


def test_the_cli_default_bench_models_are_the_bench_modules():
    args = cli.make_parser().parse_args(["bench"])
    assert args.models == list(bench.DEFAULT_MODELS) and args.variants == list(bench.VARIANTS)
    assert not hasattr(cli, "BENCH_MODELS")
