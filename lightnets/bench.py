"""``lightnets bench``: inference latency of lightnets models against their zoo twins.

Each backend runs in its own worker subprocess (``python -m lightnets.bench WORKER.json``;
tensorflow-then-paddle in one process segfaults) with pinned thread counts. In the worker the
lightnets model and its twin (the same architecture from torchvision/timm, keras.applications or
paddle.vision, random weights, no downloads) are timed alternately, round after round, after a
warm-up, each on its framework's fast inference path:

- torch: ``eval()`` + ``torch.inference_mode()``;
- keras: one ``tf.function`` of ``model(x, training=False)`` per model;
- paddle: ``eval()`` + ``paddle.no_grad()``.

Peak memory is the worker's RSS high-water mark reset before each model (``/proc/self/clear_refs``)
minus the RSS at the reset: build plus two forwards, so weights + activations + framework caches
first touched by that model. It is a rough figure (allocator reuse makes it order-dependent).

Also timed: ``import lightnets`` (fresh interpreter), ``lightnets.build()`` per backend, and a weight
port (``export_weights`` in torch, then ``build(..., weights=file)`` in paddle/keras, checked).

This module imports numpy only; frameworks are imported inside the worker.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

BACKENDS = ("torch", "keras", "paddle")
DEFAULT_MODELS = ("mobilenet_v2_100", "mobilenet_v3_large_100", "shufflenet_v2_100", "ghostnet_100")
WARMUP = 3
WARMUP_S = 0.5
PORT_MODEL = "mobilenet_v2_100"

# lightnets id -> the zoo model it is timed against, per backend: a key of lightnets.zoo.ZOO, whose
# entry builds it (random weights, logits head).
TWINS: dict[str, dict[str, tuple[str, str]]] = {
    "torch": {
        "mobilenet_v2_100": ("torchvision", "mobilenet_v2"),
        "mobilenet_v3_large_100": ("torchvision", "mobilenet_v3_large"),
        "shufflenet_v2_100": ("torchvision", "shufflenet_v2_x1_0"),
        "ghostnet_100": ("timm", "ghostnet_100"),
        "mobilenet_v1_100": ("timm", "mobilenetv1_100"),
    },
    "keras": {
        "mobilenet_v1_100": ("keras", "MobileNet"),
        "mobilenet_v2_100": ("keras", "MobileNetV2"),
        "mobilenet_v3_large_100": ("keras", "MobileNetV3Large"),
    },
    "paddle": {
        "mobilenet_v1_100": ("paddle", "mobilenet_v1"),
        "mobilenet_v2_100": ("paddle", "mobilenet_v2"),
        "mobilenet_v3_large_100": ("paddle", "mobilenet_v3_large"),
        "shufflenet_v2_100": ("paddle", "shufflenet_v2_x1_0"),
    },
}


def make_twin(key: tuple[str, str], size: int):
    """The zoo model of ``key`` with random weights and 1000 classes (keras at ``size``)."""
    from . import zoo

    e = zoo.entry(*key)
    return e.make(1000, size) if e.framework == "keras" else e.make(1000)


def thread_env(threads: int) -> dict[str, str]:
    t = str(threads)
    return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t,
            "TF_NUM_INTRAOP_THREADS": t, "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
            "GLOG_minloglevel": "2", "PYTHONWARNINGS": "ignore", "KERAS_BACKEND": "tensorflow"}


# --- memory -------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> int | None:
    """Reset the RSS high-water mark; the current RSS in kB (None if the kernel can't)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_kb("VmRSS")


def _peak_mb(base_kb: int | None) -> float | None:
    hwm = _status_kb("VmHWM")
    if base_kb is None or hwm is None:
        return None
    return round(max(hwm - base_kb, 0) / 1024, 1)


def maxrss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# --- per-framework adapters (run inside the worker) ---------------------------------------------
class _Torch:
    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        self.torch = torch

    def prepare(self, model):
        model.eval()
        torch = self.torch

        def call(x):
            with torch.inference_mode():
                return model(x)
        return call

    def input(self, x: np.ndarray):
        return self.torch.from_numpy(x)

    @staticmethod
    def sync(y):
        return y


class _Keras:
    def __init__(self, threads: int):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import keras

        self.tf, self.keras = tf, keras

    def prepare(self, model):
        return self.tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def input(self, x: np.ndarray):
        return self.tf.constant(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))

    @staticmethod
    def sync(y):
        return y.numpy()


class _Paddle:
    def __init__(self, threads: int):
        import paddle

        paddle.set_device("cpu")
        self.paddle = paddle

    def prepare(self, model):
        model.eval()
        paddle = self.paddle

        def call(x):
            with paddle.no_grad():
                return model(x)
        return call

    def input(self, x: np.ndarray):
        return self.paddle.to_tensor(x)

    @staticmethod
    def sync(y):
        return y.numpy()


ADAPTERS = {"torch": _Torch, "keras": _Keras, "paddle": _Paddle}


def _stats(times_s: list[float], batch: int) -> dict:
    t = np.asarray(times_s) * 1000.0
    med = float(np.median(t))
    return {"median_ms": round(med, 3), "p90_ms": round(float(np.percentile(t, 90)), 3),
            "min_ms": round(float(t.min()), 3), "images_per_s": round(batch * 1000.0 / med, 1), "n": len(t)}


def _bench_pair(fw, backend: str, model_id: str, batch: int, size: int, repeats: int) -> dict:
    import lightnets

    twin_key = TWINS[backend].get(model_id)
    twin_name = ".".join(twin_key) if twin_key else None
    x = fw.input(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype("float32"))
    entries = {}
    for role in ("lightnets", "twin"):
        if role == "twin" and twin_name is None:
            continue
        gc.collect()
        base = _reset_peak()
        t0 = time.perf_counter()
        if role == "lightnets":
            model = lightnets.build(model_id, backend=backend, dtype="float32", input_size=size)
        else:
            model = make_twin(twin_key, size)
        build_s = time.perf_counter() - t0
        call = fw.prepare(model)
        t_end = time.perf_counter() + WARMUP_S
        for i in range(1000):  # at least WARMUP runs and WARMUP_S seconds
            fw.sync(call(x))
            if i + 1 >= WARMUP and time.perf_counter() > t_end:
                break
        entries[role] = {"model": model, "call": call, "times": [], "peak_mb": _peak_mb(base),
                         "build_s": round(build_s, 3)}
    order = list(entries)
    for r in range(repeats):  # interleaved rounds, alternating who goes first
        for role in (order if r % 2 == 0 else order[::-1]):
            e = entries[role]
            t0 = time.perf_counter()
            fw.sync(e["call"](x))
            e["times"].append(time.perf_counter() - t0)
    row: dict = {"model": model_id, "batch": batch, "twin_name": twin_name}
    for role, e in entries.items():
        row[role] = {**_stats(e["times"], batch), "peak_mb": e["peak_mb"], "build_s": e["build_s"]}
    if "twin" in row:
        row["ratio"] = round(row["lightnets"]["median_ms"] / row["twin"]["median_ms"], 3)
    return row


def _port(req: dict, backend: str) -> dict:
    """Weight port: torch exports (and saves weights + reference output); other backends load."""
    import lightnets
    from lightnets import weights as W

    work = Path(req["work"])
    x = np.random.default_rng(1).standard_normal((1, 3, req["size"], req["size"])).astype("float32")
    if backend == "torch":
        m = lightnets.build(PORT_MODEL, backend="torch", input_size=req["size"], seed=1)
        t0 = time.perf_counter()
        w = lightnets.export_weights(m)
        export_s = time.perf_counter() - t0
        W.save(w, work / "port.safetensors")
        np.save(work / "port_out.npy", lightnets.run(m, x))
        return {"model": PORT_MODEL, "export_s": round(export_s, 4)}
    src = work / "port.safetensors"
    if not src.exists():
        return {"skipped": "no torch export (torch not benchmarked)"}
    t0 = time.perf_counter()
    m = lightnets.build(PORT_MODEL, backend=backend, weights=src, input_size=req["size"])
    load_s = time.perf_counter() - t0
    err = float(np.abs(lightnets.run(m, x) - np.load(work / "port_out.npy")).max())
    return {"model": PORT_MODEL, "build_with_weights_s": round(load_s, 3), "max_abs_diff_vs_torch": err}


def run_worker(req: dict) -> dict:
    backend = req["backend"]
    t0 = time.perf_counter()
    fw = ADAPTERS[backend](req["threads"])
    import lightnets

    lightnets.load_backend(backend)
    out: dict = {"backend": backend, "framework_import_s": round(time.perf_counter() - t0, 3), "rows": [],
                 "errors": []}
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        lightnets.build(req["models"][0], backend=backend, input_size=req["size"])
        times.append(time.perf_counter() - t0)
    out["build"] = {"model": req["models"][0], "median_s": round(float(np.median(times)), 3),
                    "first_s": round(times[0], 3)}
    try:
        out["port"] = _port(req, backend)
    except Exception as e:  # noqa: BLE001 - reported, the timings still run
        out["port"] = {"error": f"{type(e).__name__}: {e}"}
    for model_id in req["models"]:
        for batch in req["batches"]:
            try:
                out["rows"].append(_bench_pair(fw, backend, model_id, batch, req["size"], req["repeats"]))
            except Exception as e:  # noqa: BLE001
                out["errors"].append({"model": model_id, "batch": batch, "error": f"{type(e).__name__}: {e}",
                                      "traceback": traceback.format_exc(limit=5)})
            gc.collect()
    out["maxrss_mb"] = maxrss_mb()
    return out


# --- the driver (no framework imports) ------------------------------------------------------------
def time_import(repeats: int = 3) -> dict:
    code = "import time; t = time.perf_counter(); import lightnets; print(time.perf_counter() - t)"
    times = []
    for _ in range(repeats):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        if r.returncode == 0:
            times.append(float(r.stdout.strip().splitlines()[-1]))
    return {"median_s": round(float(np.median(times)), 4) if times else None, "runs": len(times)}


def launch(req: dict, work: Path, threads: int, timeout: float = 3600) -> dict:
    backend = req["backend"]
    req_path, out_path = work / f"{backend}.request.json", work / f"{backend}.result.json"
    req_path.write_text(json.dumps(req))
    env = {**os.environ, **thread_env(threads)}
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "lightnets.bench", str(req_path), str(out_path)], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"backend": backend, "failed": f"worker timed out after {timeout:.0f} s", "rows": [],
                "errors": []}
    if r.returncode != 0 or not out_path.exists():
        tail = (r.stdout + r.stderr).strip().splitlines()[-15:]
        return {"backend": backend, "failed": f"worker exited {r.returncode}: " + "\n".join(tail), "rows": [],
                "errors": []}
    result = json.loads(out_path.read_text())
    result["worker_wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def run_bench(models: list[str], backends: list[str], batches: list[int], size: int, threads: int,
              repeats: int, on_done=None) -> dict:
    """Every backend's worker in turn (torch first: it exports the ported weights)."""
    order = sorted(backends, key=lambda b: BACKENDS.index(b) if b != "torch" else -1)
    report = {"meta": {"models": models, "backends": order, "batches": batches, "size": size,
                       "threads": threads,
                       "repeats": repeats, "warmup": WARMUP, "python": sys.version.split()[0],
                       "machine": platform.machine(), "cpus": os.cpu_count()},
              "import_lightnets": time_import(), "backends": {}}
    with tempfile.TemporaryDirectory(prefix="lightnets-bench-") as work:
        for backend in order:
            req = {"backend": backend, "models": models, "batches": batches, "size": size, "threads": threads,
                   "repeats": repeats, "work": work}
            report["backends"][backend] = launch(req, Path(work), threads)
            if on_done:
                on_done(backend)
    return report


def failures(report: dict) -> list[str]:
    out = []
    for b, res in report["backends"].items():
        if res.get("failed"):
            out.append(f"{b}: {res['failed']}")
        out += [f"{b} {e['model']} batch {e['batch']}: {e['error']}" for e in res.get("errors", [])]
    return out


def rows(report: dict):
    for backend, res in report["backends"].items():
        for row in res.get("rows", []):
            yield backend, row


def print_table(report: dict, console) -> None:
    from rich.table import Table

    m = report["meta"]
    t = Table(title=f"lightnets vs twin: {m['size']}px, {m['threads']} threads, median of {m['repeats']} "
                    f"interleaved runs (ms)")
    for col in ("backend", "model", "batch", "twin", "ln med", "ln p90", "twin med", "twin p90", "ln img/s",
                "twin img/s", "ln MB", "twin MB", "ratio"):
        t.add_column(col, justify="left" if col in ("backend", "model", "twin") else "right")
    for backend, r in rows(report):
        ln, tw = r["lightnets"], r.get("twin") or {}
        ratio = r.get("ratio")
        style = "red" if ratio and ratio > 1.1 else ("green" if ratio and ratio < 0.95 else "")
        t.add_row(backend, r["model"], str(r["batch"]), r["twin_name"] or "-", f"{ln['median_ms']:.1f}",
                  f"{ln['p90_ms']:.1f}", _f(tw.get("median_ms")), _f(tw.get("p90_ms")),
                  f"{ln['images_per_s']:.0f}",
                  _f(tw.get("images_per_s"), 0), _f(ln.get("peak_mb"), 0), _f(tw.get("peak_mb"), 0),
                  f"[{style}]{ratio:.2f}[/]" if ratio and style else _f(ratio, 2))
    console.print(t)
    imp = report["import_lightnets"]["median_s"]
    lines = [f"import lightnets: {imp * 1000:.0f} ms" if imp is not None else "import lightnets: failed"]
    for b, res in report["backends"].items():
        if res.get("failed"):
            lines.append(f"{b}: FAILED {res['failed'].splitlines()[0]}")
            continue
        bd, port = res["build"], res.get("port", {})
        s = (f"{b}: framework import {res['framework_import_s']:.1f} s, "
             f"build({bd['model']}) {bd['median_s'] * 1000:.0f} ms"
             f" (first {bd['first_s'] * 1000:.0f} ms), worker max RSS {res['maxrss_mb']:.0f} MB")
        if "export_s" in port:
            s += f", export_weights {port['export_s'] * 1000:.0f} ms"
        elif "build_with_weights_s" in port:
            s += (f", port torch->{b}: build with weights {port['build_with_weights_s'] * 1000:.0f} ms, "
                  f"max |diff| {port['max_abs_diff_vs_torch']:.1e}")
        elif port:
            s += f", port: {port.get('error') or port.get('skipped')}"
        lines.append(s)
    console.print("\n".join(lines))


def _f(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write_json(report: dict, path: Path) -> None:
    from .weights import atomic_write

    def write(tmp):
        Path(tmp).write_text(json.dumps(report, indent=2))
        os.chmod(tmp, 0o644)
    atomic_write(path, write)


def plot(report: dict, path: Path) -> None:
    """Bars of the lightnets/twin median ratio per model, one bar per backend x batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .weights import atomic_write

    data = [(b, r) for b, r in rows(report) if r.get("ratio")]
    models = list(dict.fromkeys(r["model"] for _, r in data))
    groups = list(dict.fromkeys((b, r["batch"]) for b, r in data))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(models) + 2), 4.5))
    width = 0.8 / max(len(groups), 1)
    for i, (b, batch) in enumerate(groups):
        vals = {r["model"]: r["ratio"] for bb, r in data if bb == b and r["batch"] == batch}
        xs = [j + (i - (len(groups) - 1) / 2) * width for j, m in enumerate(models) if m in vals]
        ax.bar(xs, [vals[m] for m in models if m in vals], width, label=f"{b} batch {batch}")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(models)), models, rotation=15)
    ax.set_ylabel("lightnets / twin median latency")
    m = report["meta"]
    ax.set_title(f"lightnets vs twin ({m['size']}px, {m['threads']} threads; < 1 = lightnets faster)")
    if groups:
        ax.legend(fontsize=8)
    fig.tight_layout()
    def write(tmp):
        fig.savefig(tmp, format="png", dpi=110)
        os.chmod(tmp, 0o644)
    atomic_write(path, write)
    plt.close(fig)


def main(argv: list[str]) -> int:
    """Worker entry: ``python -m lightnets.bench REQUEST.json RESULT.json``."""
    req = json.loads(Path(argv[0]).read_text())
    result = run_worker(req)
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
