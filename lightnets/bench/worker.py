"""The bench worker (``python -m lightnets.bench DIR/request.json``): one backend's models timed in one process."""

from __future__ import annotations

import gc
import json
import resource
import time
import traceback
from pathlib import Path

import numpy as np

from . import (
    FAST_VARIANTS,
    FRAMEWORK_VARIANTS,
    PARALLEL_RUNTIMES,
    PEAK_N,
    PORT_MODEL,
    RESULT,
    RUNTIME_TWINS,
    RUNTIME_VARIANTS,
    VARIANTS,
    WARMUP,
    WARMUP_S,
    Timed,
    make_twin,
    twins_of,
)


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
    if name == "parallel":  # the fast model's file in the runtime's parallel execution mode
        fast = made.get("fast") or lightnets.optimize(made.get("plain") or lightnets.build(
            model_id, backend=be.name, input_size=size))
        return Timed(*be.timed_call(fast, parallel=True)), None, True
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
    variants = RUNTIME_VARIANTS if be.name in RUNTIME_TWINS else FRAMEWORK_VARIANTS
    names = [n for n in variants if n in wanted and (twin_key is not None or not n.startswith("twin"))
             and (n != "parallel" or be.name in PARALLEL_RUNTIMES)]
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
            ref = "fast" if name == "parallel" else ref
            rel = _rel(outputs[name], outputs[ref]) if ref in outputs and same[name] else None
            row["variants"][name] = {**_stats(e["times"], batch), "first_call_s": e["first_call_s"],
                                     **built[name], "peak_mb": e["peak_mb"], "rel_vs_plain": rel}
        rows.append(row)
    return rows


def _port(req: dict, backend: str) -> dict:
    """Weight port: torch exports (and saves weights + reference output); other backends load."""
    import lightnets

    from .. import weights as W

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


def main(argv: list[str] | None = None) -> int:
    """Worker entry: ``python -m lightnets.bench DIR/request.json``; writes ``DIR/result.json``."""
    from ..workers import read_request

    req = read_request(argv)
    result = run_worker(req)
    Path(req["out"], RESULT).write_text(json.dumps(result))
    return 0
