"""``lightnets bench``: inference latency of lightnets models, their fast path and their zoo twins.

Each backend runs in its own worker subprocess, started by the shared launcher (``lightnets.workers``:
``python -m lightnets.bench DIR/request.json``, pinned thread counts, the result in ``DIR/result.json``;
tensorflow-then-paddle in one process segfaults). In the worker, per model, these variants are timed
alternately, round after round, after a warm-up, each through its backend's ``timed_call`` (the
framework's eval path: torch ``inference_mode``, keras a ``tf.function``, paddle ``no_grad``):

- ``plain``: ``lightnets.build(id)`` as built (eval mode, batch norms not folded);
- ``fast``: ``lightnets.optimize(plain)`` (BN folded + the framework's eager fast path);
- ``compiled``: ``lightnets.optimize(plain, compile=True)`` (the compiled/frozen variant);
- ``twin``: the same architecture from torchvision/timm, keras.applications or paddle.vision (random
  weights, no downloads; the zoo table of ``lightnets.zoo``), as a user runs it;
- ``twin_compiled``: the twin through the backend's ``optimize(compile=True)`` (no BN folding by lightnets).

The inference runtimes (``onnxruntime``, ``tflite``) run lightnets' own export (``plain``; ``fast``: with the
batch norms folded) and the twin's export, made the way the zoo's users make it (``RUNTIME_TWINS``): the
torchvision/timm twin through ``torch.onnx.export`` (TorchScript exporter, dynamic batch) in ONNX Runtime, the
keras.applications twin through ``tf.lite.TFLiteConverter.from_keras_model`` in LiteRT (XNNPack).

Per variant: median/p90/min latency, images/s, the one-time costs (``convert_s``: the optimize call;
``first_call_s``: the first call at that batch size, where lazy compilers trace), peak memory, and the
output's relative difference from the plain model's (twin variants: from the twin's). Throughput is
also given as conv/linear MACs/s, FLOP/s (2 per MAC) and the fraction of the CPU's measured peak: the
best of a float32 matmul (numpy's BLAS, ``PEAK_N`` square) timed in each worker at the same thread count.

Peak memory is the worker's RSS high-water mark reset before each variant (``/proc/self/clear_refs``)
minus the RSS at the reset: build plus the first batch's warm-up. It is a rough figure (allocator reuse
makes it order-dependent). Also timed: ``import lightnets`` (fresh interpreter), ``lightnets.build()``
per backend, and a weight port (``export_weights`` in torch, ``build(..., weights=file)`` elsewhere).

This module imports numpy only; frameworks are used through the backend objects, inside the worker.
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
from typing import Any, NamedTuple

import numpy as np

from .frameworks import FRAMEWORKS

BACKENDS = tuple(f.name for f in FRAMEWORKS)
# inference runtime -> the framework whose zoo twins it runs, exported as that zoo's users export them
RUNTIME_TWINS = {f.name: f.runs_exports_of for f in FRAMEWORKS if f.runs_exports_of}
# THE default bench models (the CLI's default too)
DEFAULT_MODELS = ("mobilenet_v2_100", "mobilenet_v3_large_100", "shufflenet_v2_100", "ghostnet_100")
VARIANTS = ("plain", "fast", "compiled", "twin", "twin_compiled")
RUNTIME_VARIANTS = ("plain", "fast", "twin")  # a runtime compiles what it loads: no compiled variants
FAST_VARIANTS = ("fast", "compiled")  # a framework's fast path: the better of these
WARMUP = 3
WARMUP_S = 0.5
PORT_MODEL = "mobilenet_v2_100"
PEAK_N = 1536  # the peak-matmul size (2 * 1536**3 = 7.2 GFLOP)
WORKER = "lightnets.bench"
RESULT = "result.json"

# The fast path's goals, measured against (never asserted): backend -> batch -> max(best fast / twin)
TARGETS: dict[str, dict[int, float]] = {"torch": {1: 0.7, 16: 0.5}, "paddle": {16: 0.5}, "keras": {1: 0.9, 16: 0.9}}
WITHIN_FASTEST = 1.3  # every framework's fast path within this factor of the fastest framework's


def make_twin(key: tuple[str, str], size: int):
    """The zoo model of ``key`` with random weights and 1000 classes (keras.applications at ``size``)."""
    from . import zoo

    return zoo.entry(*key).make(1000, size)


def twins_of(backend: str) -> dict[str, tuple[str, str]]:
    """lightnets id -> the zoo model ``backend`` times it against (a key of ``lightnets.zoo.ZOO``; a runtime: its
    framework's twin, exported): the first zoo entry of the framework built as that id, else as one of the id's
    flavours (``<id>_keras``, ``<id>_timm``: the same net with the zoo's padding / BN conventions). Zoo order puts
    torchvision before timm."""
    from . import registry, zoo

    framework = RUNTIME_TWINS.get(backend, backend)
    twins: dict[str, tuple[str, str]] = {}
    for exact in (True, False):
        for key, e in zoo.ZOO.items():
            if e.framework != framework:
                continue
            arch = e.arch if exact else _flavour_of(e.arch, registry)
            if arch is not None and arch not in twins:
                twins[arch] = key
    return twins


def _flavour_of(arch: str, registry) -> str | None:
    """The plain id that ``arch`` is a flavour of (``mobilenet_v2_100_keras`` -> ``mobilenet_v2_100``), or None."""
    base, _, flavour = arch.rpartition("_")
    return base if base and not flavour.isdigit() and base in registry.list_models() else None


class Timed(NamedTuple):
    """A model that is only a call: ``to_input(x_nchw)`` makes the native input, ``call`` runs it."""

    to_input: Any
    call: Any


def thread_env(threads: int) -> dict[str, str]:
    """The worker environment the bench adds: the shared pinning, keras on tensorflow, and OpenMP threads that
    sleep instead of spinning while they wait (``OMP_WAIT_POLICY``, default PASSIVE, kept if set): on this
    shared 2-core machine (load 4-7) torch's 2-thread OpenMP pool otherwise spun against the other processes -
    folded mobilenet_v2_100 batch 1: 1906 ms median (min 75) ACTIVE vs 31 ms PASSIVE (1 thread: 24 ms); the
    paddle predictor 27.5 vs 12.3 ms. TensorFlow's own thread pool does not read it."""
    from .workers import thread_env as pinned

    return {**pinned(threads), "KERAS_BACKEND": "tensorflow",
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


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


# --- the worker (frameworks through the backend object) -------------------------------------------
def peak_matmul(n: int = PEAK_N, repeats: int = 5) -> dict:
    """The best float32 FLOP/s of an ``n`` x ``n`` matmul (numpy's BLAS, this process's pinned threads)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return {"n": n, "best_s": round(best, 5), "gflops": round(2 * n**3 / best / 1e9, 2)}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _stats(times_s: list[float], batch: int) -> dict:
    t = np.asarray(times_s) * 1000.0
    med = float(np.median(t))
    return {"median_ms": round(med, 3), "p90_ms": round(float(np.percentile(t, 90)), 3),
            "min_ms": round(float(t.min()), 3), "images_per_s": round(batch * 1000.0 / med, 1), "n": len(t)}


def _as_array(y) -> np.ndarray:
    y = y[0] if isinstance(y, (list, tuple)) else y
    return np.asarray(y.numpy() if hasattr(y, "numpy") else y, np.float64)


def _rel(a, b) -> float:
    a, b = _as_array(a), _as_array(b)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) or 1.0))


def _make_variant(be, name: str, model_id: str, size: int, made: dict, work: str):
    """``(model, convert_s, same_weights)`` of variant ``name``; ``made`` holds the variants built before it.
    ``same_weights``: it holds the weights of the model it is compared with (plain, or the twin)."""
    import lightnets

    if name == "plain":
        return lightnets.build(model_id, backend=be.name, dtype="float32", input_size=size), None, True
    if name in FAST_VARIANTS:
        plain = made.get("plain") or lightnets.build(model_id, backend=be.name, input_size=size)
        t0 = time.perf_counter()
        return lightnets.optimize(plain, compile=name == "compiled"), round(time.perf_counter() - t0, 3), True
    if be.name in RUNTIME_TWINS:  # an inference runtime: the twin exported as its users export it
        return Timed(*be.timed_export(make_twin(twins_of(be.name)[model_id], size), size, Path(work))), None, True
    twin = make_twin(twins_of(be.name)[model_id], size)
    if name == "twin":
        return twin, None, True
    same = False
    if "twin" in made:  # twin_compiled: the twin's weights, the backend's generic fast path
        try:
            be.load_state_dict(twin, be.state_dict(made["twin"]))
            same = True
        except Exception:  # noqa: BLE001 -- other random weights then: no rel_vs_plain
            pass
    t0 = time.perf_counter()
    return be.optimize(twin, compile=True), round(time.perf_counter() - t0, 3), same


def _bench_model(be, model_id: str, batches: list[int], size: int, repeats: int, wanted: list[str],
                 work: str) -> list[dict]:
    """Every wanted variant of ``model_id`` at every batch size: built (and its memory measured) at the first."""
    twin_key = twins_of(be.name).get(model_id)
    variants = RUNTIME_VARIANTS if be.name in RUNTIME_TWINS else VARIANTS
    names = [n for n in variants if n in wanted and (twin_key is not None or not n.startswith("twin"))]
    made: dict = {}
    built: dict[str, dict] = {}
    same: dict[str, bool] = {}
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype("float32")
        live, outputs = {}, {}
        for name in names:
            first_batch = name not in built
            if first_batch:  # build + first-batch warm-up under one memory high-water mark
                gc.collect()
                base = _reset_peak()
                t0 = time.perf_counter()
                made[name], convert_s, same[name] = _make_variant(be, name, model_id, size, made, work)
                built[name] = {"convert_s": convert_s, "build_s": round(time.perf_counter() - t0, 3)}
            to_input, call = made[name] if isinstance(made[name], Timed) else be.timed_call(made[name])
            xi = to_input(x)
            t0 = time.perf_counter()
            outputs[name] = call(xi)
            first = time.perf_counter() - t0
            t_end = time.perf_counter() + WARMUP_S
            for i in range(1000):  # at least WARMUP runs and WARMUP_S seconds
                call(xi)
                if i + 2 >= WARMUP and time.perf_counter() > t_end:
                    break
            live[name] = {"call": call, "x": xi, "times": [], "first_call_s": round(first, 3),
                          "peak_mb": _peak_mb(base) if first_batch else None}
        order = list(live)
        for r in range(repeats):  # interleaved rounds, alternating who goes first
            for name in (order if r % 2 == 0 else order[::-1]):
                e = live[name]
                t0 = time.perf_counter()
                e["call"](e["x"])
                e["times"].append(time.perf_counter() - t0)
        row: dict = {"model": model_id, "batch": batch, "twin_name": ".".join(twin_key) if twin_key else None,
                     "variants": {}}
        for name, e in live.items():
            ref = "twin" if name.startswith("twin") else "plain"
            rel = _rel(outputs[name], outputs[ref]) if ref in outputs and same[name] else None
            row["variants"][name] = {**_stats(e["times"], batch), "first_call_s": e["first_call_s"],
                                     **built[name], "peak_mb": e["peak_mb"], "rel_vs_plain": rel}
        rows.append(row)
    return rows


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
        W.save(w, work / "port.safetensors", overwrite=True)
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
    import lightnets

    backend = req["backend"]
    t0 = time.perf_counter()
    be = lightnets.load_backend(backend)
    be.set_threads(req["threads"])
    out: dict = {"backend": backend, "framework_import_s": round(time.perf_counter() - t0, 3), "rows": [],
                 "errors": [], "peak": peak_matmul()}
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
        try:
            out["rows"] += _bench_model(be, model_id, req["batches"], req["size"], req["repeats"],
                                        req.get("variants", list(VARIANTS)), req["work"])
        except Exception as e:  # noqa: BLE001
            out["errors"].append({"model": model_id, "error": f"{type(e).__name__}: {e}",
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


def launch(req: dict, work: Path, threads: int, timeout: float = 7200) -> dict:
    """One backend's worker through the shared launcher; its result (or why it failed)."""
    from . import workers

    backend = req["backend"]
    done = workers.run(WORKER, req, work / backend, threads=threads, env=thread_env(threads), timeout=timeout)
    result_file = work / backend / RESULT
    if not done.ok or not result_file.exists():
        return {"backend": backend, "failed": done.failure(), "rows": [], "errors": []}
    result = json.loads(result_file.read_text())
    result["worker_wall_s"] = round(done.wall_s, 1)
    return result


def run_bench(models: list[str], backends: list[str], batches: list[int], size: int, threads: int,
              repeats: int, on_done=None, variants: list[str] | None = None) -> dict:
    """Every backend's worker in turn (torch first: it exports the ported weights), then the summary."""
    from . import registry

    order = sorted(backends, key=lambda b: BACKENDS.index(b) if b != "torch" else -1)
    variants = list(variants or VARIANTS)
    report = {"meta": {"models": models, "backends": order, "batches": batches, "size": size,
                       "threads": threads, "repeats": repeats, "warmup": WARMUP, "variants": variants,
                       "omp_wait_policy": thread_env(threads)["OMP_WAIT_POLICY"],
                       "python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
                       "load_avg_start": _loadavg()},
              "macs": {m: registry.get_spec(m, input_size=size).macs() for m in models},
              "import_lightnets": time_import(), "backends": {}}
    with tempfile.TemporaryDirectory(prefix="lightnets-bench-") as work:
        for backend in order:
            req = {"backend": backend, "models": models, "batches": batches, "size": size, "threads": threads,
                   "repeats": repeats, "work": work, "variants": variants}
            report["backends"][backend] = launch(req, Path(work), threads)
            if on_done:
                on_done(backend)
    report["meta"]["load_avg_end"] = _loadavg()
    report["summary"] = summarize(report)
    return report


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def summarize(report: dict) -> dict:
    """Ratios, throughput vs peak, the fastest framework per model and batch, and the targets' status."""
    peaks = [res["peak"]["gflops"] for res in report["backends"].values() if res.get("peak")]
    peak = max(peaks) if peaks else None
    lines, best = [], {}
    for backend, r in rows(report):
        v = r["variants"]
        ms = {k: s["median_ms"] for k, s in v.items()}
        fast = {k: ms[k] for k in FAST_VARIANTS if k in ms}
        line = {"backend": backend, "model": r["model"], "batch": r["batch"], "twin": r["twin_name"]}
        if fast:
            name = min(fast, key=fast.get)
            line["best_fast"], line["best_fast_ms"] = name, fast[name]
            macs = report["macs"][r["model"]] * r["batch"]
            line["gmacs_per_s"] = round(macs / (fast[name] / 1000) / 1e9, 2)
            line["gflops"] = round(2 * line["gmacs_per_s"], 2)
            line["peak_fraction"] = round(line["gflops"] / peak, 3) if peak else None
            best.setdefault((r["model"], r["batch"]), {})[backend] = fast[name]
        for num in ("fast", "compiled", "twin_compiled"):
            for den in ("plain", "twin"):
                if num in ms and den in ms and num != den and not (num == "twin_compiled" and den == "plain"):
                    line[f"{num}/{den}"] = round(ms[num] / ms[den], 3)
        if "best_fast_ms" in line and "twin" in ms:
            line["best/twin"] = round(line["best_fast_ms"] / ms["twin"], 3)
            goal = TARGETS.get(backend, {}).get(r["batch"])
            if goal is not None:
                line["target"] = goal
                line["target_met"] = line["best/twin"] <= goal
        lines.append(line)
    fastest = []
    for (model, batch), per in best.items():
        winner = min(per, key=per.get)
        fastest.append({"model": model, "batch": batch, "fastest": winner, "ms": per[winner],
                        "vs_fastest": {b: round(t / per[winner], 3) for b, t in per.items()},
                        "within": {b: t / per[winner] <= WITHIN_FASTEST for b, t in per.items()}})
    return {"peak_gflops": peak, "lines": lines, "fastest": fastest}


def failures(report: dict) -> list[str]:
    out = []
    for b, res in report["backends"].items():
        if res.get("failed"):
            out.append(f"{b}: {res['failed']}")
        out += [f"{b} {e['model']}: {e['error']}" for e in res.get("errors", [])]
    return out


def rows(report: dict):
    for backend, res in report["backends"].items():
        for row in res.get("rows", []):
            yield backend, row


def print_table(report: dict, console) -> None:
    from rich.table import Table

    m, summary = report["meta"], report.get("summary") or summarize(report)
    lines = {(s["backend"], s["model"], s["batch"]): s for s in summary["lines"]}
    t = Table(title=f"lightnets: plain, fast path (optimize), compiled (optimize(compile=True)) and the zoo twin; "
                    f"{m['size']}px, {m['threads']} threads, median of {m['repeats']} interleaved runs (ms)")
    cols = ("backend", "model", "bs", "plain", "fast", "comp", "twin", "twin comp", "fast /plain", "comp /plain",
            "best /twin (goal)", "GFLOP/s", "% peak", "once s fast/comp")
    for col in cols:
        t.add_column(col, justify="left" if col in ("backend", "model") else "right", no_wrap=col == "model")
    for backend, r in rows(report):
        v, s = r["variants"], lines[(backend, r["model"], r["batch"])]
        ms = {k: _f(v[k]["median_ms"]) if k in v else "-" for k in VARIANTS}
        goal = s.get("target")
        met = s.get("target_met")
        best = _f(s.get("best/twin"), 2)
        if met is not None:
            best = f"[{'green' if met else 'red'}]{best}[/] (<={goal})"
        once = "/".join(_f(_once(v.get(k)), 1) for k in FAST_VARIANTS)
        t.add_row(backend, r["model"], str(r["batch"]), ms["plain"], ms["fast"], ms["compiled"], ms["twin"],
                  ms["twin_compiled"], _f(s.get("fast/plain"), 2), _f(s.get("compiled/plain"), 2), best,
                  _f(s.get("gflops"), 1),
                  _f(100 * s["peak_fraction"], 1) if s.get("peak_fraction") is not None else "-", once)
    console.print(t)
    out = []
    for f in summary["fastest"]:
        others = ", ".join(f"{b} {x:.2f}x" + ("" if f["within"][b] else f" [red](> {WITHIN_FASTEST}x)[/]")
                           for b, x in f["vs_fastest"].items() if b != f["fastest"])
        out.append(f"fastest {f['model']} bs{f['batch']}: {f['fastest']} {f['ms']:.1f} ms"
                   + (f"; {others}" if others else ""))
    if summary["peak_gflops"]:
        out.append(f"CPU peak (float32 {PEAK_N}^2 matmul, numpy BLAS, {m['threads']} threads, best per worker): "
                   + ", ".join(f"{b} {res['peak']['gflops']:.1f}" for b, res in report["backends"].items()
                               if res.get("peak")) + " GFLOP/s; conv MACs x 2 = FLOPs")
    imp = report["import_lightnets"]["median_s"]
    out.append(f"import lightnets: {imp * 1000:.0f} ms" if imp is not None else "import lightnets: failed")
    for b, res in report["backends"].items():
        if res.get("failed"):
            out.append(f"{b}: FAILED {res['failed'].splitlines()[0]}")
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
        out.append(s)
    load = (m.get("load_avg_start"), m.get("load_avg_end"))
    if all(load):
        out.append(f"load average (1/5/15 min) at start {load[0]}, at end {load[1]} on {m['cpus']} CPUs; "
                   f"OMP_WAIT_POLICY={m.get('omp_wait_policy')}")
    console.print("\n".join(out))


def _once(v: dict | None) -> float | None:
    """A variant's one-time cost: the optimize call plus its first call (where lazy compilers trace)."""
    if not v:
        return None
    return (v.get("convert_s") or 0.0) + (v.get("first_call_s") or 0.0)


def _f(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write_json(report: dict, path: Path) -> None:
    from .weights import atomic_write

    def write(tmp):
        Path(tmp).write_text(json.dumps(report, indent=2))
        os.chmod(tmp, 0o644)
    atomic_write(path, write)


def plot(report: dict, path: Path) -> None:
    """Bars of each variant's median latency relative to the twin (else the plain model) per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .weights import atomic_write

    data = list(rows(report))
    models = list(dict.fromkeys(r["model"] for _, r in data))
    groups = list(dict.fromkeys((b, r["batch"], k) for b, r in data for k in FAST_VARIANTS if k in r["variants"]))
    fig, ax = plt.subplots(figsize=(max(7, 2.2 * len(models) + 2), 4.8))
    width = 0.8 / max(len(groups), 1)
    for i, (b, batch, k) in enumerate(groups):
        vals = {}
        for bb, r in data:
            v = r["variants"]
            base = v.get("twin") or v.get("plain")
            if bb == b and r["batch"] == batch and k in v and base:
                vals[r["model"]] = v[k]["median_ms"] / base["median_ms"]
        xs = [j + (i - (len(groups) - 1) / 2) * width for j, mm in enumerate(models) if mm in vals]
        ax.bar(xs, [vals[mm] for mm in models if mm in vals], width, label=f"{b} {k} bs{batch}")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(models)), models, rotation=15)
    ax.set_ylabel("median latency / twin's (plain model's without a twin)")
    m = report["meta"]
    ax.set_title(f"lightnets fast path vs zoo twin ({m['size']}px, {m['threads']} threads; < 1 = faster)")
    if groups:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()

    def write(tmp):
        fig.savefig(tmp, format="png", dpi=110)
        os.chmod(tmp, 0o644)
    atomic_write(path, write)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Worker entry: ``python -m lightnets.bench DIR/request.json``; writes ``DIR/result.json``."""
    from .workers import read_request

    req = read_request(argv)
    result = run_worker(req)
    Path(req["out"], RESULT).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
