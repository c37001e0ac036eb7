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
batch norms folded; ``parallel``: the ``fast`` file in ONNX Runtime's parallel execution mode, the other variants
running in its sequential mode) and the twin's export, made the way the zoo's users make it (``RUNTIME_TWINS``): the
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

The package: this module says what is timed (the constants, the twins) and drives the workers; ``worker`` is the
worker process (``python -m lightnets.bench``), ``report`` the summary, table, JSON and plot. It imports numpy
only; frameworks are used through the backend objects, inside the worker.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..frameworks import FRAMEWORKS

BACKENDS = tuple(f.name for f in FRAMEWORKS)
# inference runtime -> the framework whose zoo twins it runs, exported as that zoo's users export them
RUNTIME_TWINS = {f.name: f.runs_exports_of for f in FRAMEWORKS if f.runs_exports_of}
# THE default bench models (the CLI's default too)
DEFAULT_MODELS = ("mobilenet_v2_100", "mobilenet_v3_large_100", "shufflenet_v2_100", "ghostnet_100")
VARIANTS = ("plain", "fast", "compiled", "twin", "twin_compiled", "parallel")
FRAMEWORK_VARIANTS = VARIANTS[:5]
RUNTIME_VARIANTS = ("plain", "fast", "parallel", "twin")  # a runtime compiles what it loads: no compiled variants
PARALLEL_RUNTIMES = ("onnxruntime",)  # runtimes with a parallel execution mode (the ``parallel`` variant)
FAST_VARIANTS = ("fast", "compiled")  # a framework's fast path: the better of these
BEST_VARIANTS = (*FAST_VARIANTS, "parallel")  # lightnets' best cell of a backend: the best of these
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
    from .. import zoo

    return zoo.entry(*key).make(1000, size)


@functools.cache
def twins_of(backend: str) -> dict[str, tuple[str, str]]:
    """lightnets id -> the zoo model ``backend`` times it against (a key of ``lightnets.zoo.ZOO``; a runtime: its
    framework's twin, exported): the first zoo entry of the framework built as that id, else as one of the id's
    flavours (``<id>_keras``, ``<id>_timm``: the same net with the zoo's padding / BN conventions). Zoo order puts
    torchvision before timm. Read once per backend (the worker asks per model and variant)."""
    from .. import registry, zoo

    framework = RUNTIME_TWINS.get(backend, backend)
    ids = set(registry.list_models())

    def plain(arch: str) -> str | None:  # mobilenet_v2_100_keras -> mobilenet_v2_100
        base, _, flavour = arch.rpartition("_")
        return base if not flavour.isdigit() and base in ids else None

    twins: dict[str, tuple[str, str]] = {}
    for exact in (True, False):
        for key, e in zoo.ZOO.items():
            arch = e.arch if exact else plain(e.arch)
            if e.framework == framework and arch is not None and arch not in twins:
                twins[arch] = key
    return twins


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
    from ..workers import thread_env as pinned

    return {**pinned(threads), "KERAS_BACKEND": "tensorflow",
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


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
    from .. import workers

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
    from .. import registry
    from .report import summarize

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
