"""One parity subprocess: run cases in one backend and write the outputs to files.

``python -m lightnets.parity.worker REQUEST.json``. The request names the backend, the dtypes and,
per case, the graph JSON, canonical weights and input files written by the runner. Each backend
runs in its own process (tensorflow-then-paddle in one process segfaults, and keras picks its own
backend from ``KERAS_BACKEND`` at import). A failing case is recorded and the others still run.
The request's ``mode`` goes to ``lightnets.build`` ("inference": batch norms folded into the convs).
"fast" / "compiled": the folded model through ``lightnets.optimize(model, compile=False / True)``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

import lightnets
from lightnets import weights as W
from lightnets.graph import Graph

# parity mode -> lightnets.optimize(compile=...) of the BN-folded model
FAST_MODES = {"fast": False, "compiled": True}


def run_request(request: dict) -> dict:
    """Run every case of ``request``; write ``<out>/<dtype>/<case>.npz``; return per-case status."""
    backend = lightnets.load_backend(request["backend"])
    out_dir = Path(request["out"])
    status: dict[str, dict] = {}
    for dtype in request["dtypes"]:
        (out_dir / dtype).mkdir(parents=True, exist_ok=True)
        for case in request["cases"]:
            key = f"{dtype}/{case['id']}"
            try:
                t0 = time.perf_counter()
                graph = Graph.from_json(Path(case["graph"]).read_text())
                mode = request.get("mode", "train")
                model = lightnets.build(graph, backend=request["backend"], weights=W.load(case["weights"]),
                                        dtype=dtype, mode="train" if mode == "train" else "inference")
                if mode in FAST_MODES:  # the fast path: lightnets.optimize of the folded model
                    model = lightnets.optimize(model, compile=FAST_MODES[mode])
                t1 = time.perf_counter()
                x = np.load(case["input"]).astype(dtype)
                arrays = pack("output", backend.run(model, x))
                t2 = time.perf_counter()
                if case.get("return_all"):
                    arrays.update({f"node:{k}": v for k, v in backend.run(model, x, return_all=True).items()})
                if request.get("train"):
                    arrays.update(_train_arrays(backend, model, x, load_probe(case["probe"], dtype)))
                np.savez(out_dir / dtype / f"{case['id']}.npz", **arrays)
                status[key] = {"ok": True, "build_s": t1 - t0, "run_s": t2 - t1}
            except Exception as e:  # recorded per case, reported by the runner
                status[key] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                               "traceback": traceback.format_exc(limit=6)}
    return status


def pack(key: str, y) -> dict[str, np.ndarray]:
    """An output as npz entries: ``key``, or ``key:0``, ``key:1``... for the list of a multi-output graph."""
    if isinstance(y, (list, tuple)):
        return {f"{key}:{i}": v for i, v in enumerate(y)}
    return {key: y}


def load(out: Path, dtype: str, key: str) -> tuple[dict[str, np.ndarray] | None, str]:
    """``(arrays, "")`` of the case ``key`` a worker wrote under ``out`` (``<dtype>/<key>.npz``), else
    ``(None, why)``: the case's error, or the worker's (``status.json``'s ``__worker__`` entry)."""
    status = json.loads((out / "status.json").read_text())
    if "__worker__" in status:
        return None, status["__worker__"]["error"]
    s = status.get(f"{dtype}/{key}", {"ok": False, "error": "not run"})
    if not s["ok"]:
        return None, s["error"]
    with np.load(out / dtype / f"{key}.npz") as z:
        return {k: z[k] for k in z.files}, ""


def unpack(arrays, key: str) -> list[np.ndarray]:
    """The outputs :func:`pack` stored under ``key``, as a list (of one for a single-output graph)."""
    if key in arrays:
        return [arrays[key]]
    out, i = [], 0
    while f"{key}:{i}" in arrays:
        out.append(arrays[f"{key}:{i}"])
        i += 1
    if not out:
        raise KeyError(key)
    return out


def load_probe(path: str, dtype: str):
    """The gradient probe: one array (``.npy``), or one per output (``.npz``, multi-output graphs)."""
    if path.endswith(".npz"):
        with np.load(path) as z:
            return [z[f"arr_{i}"].astype(dtype) for i in range(len(z.files))]
    return np.load(path).astype(dtype)


def _train_arrays(backend, model, x, probe) -> dict[str, np.ndarray]:
    """Train-mode forward with its updated BN statistics, and gradients of sum(output * probe) (over every
    output)."""
    arrays = {f"grad:{k}": v for k, v in backend.gradients(model, x, probe).items()}
    out, stats = backend.train_forward(model, x)  # last: it updates the running statistics
    arrays.update({**pack("train:output", out), **{f"stat:{k}": v for k, v in stats.items()}})
    return arrays


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    request = json.loads(Path(argv[0]).read_text())
    status = run_request(request)
    (Path(request["out"]) / "status.json").write_text(json.dumps(status, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
