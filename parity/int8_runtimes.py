"""int8 across runtimes and the per-layer locator at full size: one graph, one set of weights and one set of
calibration images through LiteRT (full-integer TFLite) and ONNX Runtime (QDQ ONNX), each located against the float64
reference node by node (``lightnets.int8``), and the two compared node by node in quantization steps
(``lightnets.int8.runtime_parity``). A script, not a test (minutes per model at 224 px):

    .venv/bin/python parity/int8_runtimes.py mobilenet_v2_100 mobilenet_v3_large_100 ghostnet_100 --size 224 \\
        --out int8-runtimes

Weights: the id's initial weights with batch-norm statistics from data (``weights.init_weights``, as
tests/test_int8.py); calibration: ``--calibration`` seeded N(0, 1) images (``export.calibration_images``, the same
for both runtimes); probe: ``--images`` other seeded images. Writes ``<out>/<id>.json`` (both locator reports, the
parity rows) and ``<out>/<id>-{tflite,onnx}.png`` (the error curves), and prints one summary line per model and
runtime plus the nodes where the runtimes differ most.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

# `lightnets parity --backends tflite-int8,onnx-int8`: the int8 targets (the locator, not a tolerance)
TARGETS = ("tflite-int8", "onnx-int8")


def _problem(model_id: str, size: int, calibration: int, images: int):
    """The id's graph, float32 weights (BN statistics from data), calibration images and probe images."""
    import lightnets
    E = importlib.import_module("lightnets.export")  # (lightnets.export, the attribute, is the function)
    from lightnets import weights as W

    graph = lightnets.get_spec(model_id, input_size=size)
    weights = {k: v.astype(np.float32) for k, v in W.init_weights(graph, seed=1).items()}
    cal = E.calibration_images(graph, calibration).astype(np.float32)
    return graph, weights, cal, E.seeded_images(graph, images, E.AGREEMENT_SEED)


def _int8_file(target: str, graph, weights, cal) -> bytes:
    """The int8 file of a target of :data:`TARGETS`: full-integer TFLite, or QDQ ONNX (quantize_static)."""
    if target == "tflite-int8":
        from lightnets.backends import tflite as TL

        return TL.convert(graph, weights, quantize="int8", calibration=cal, static_hw=True)
    from lightnets.backends import onnx_int8 as OI

    return OI.quantize_qdq(graph, weights, cal).SerializeToString()


def _tensors(target: str, data: bytes, graph, x) -> dict:
    """Every quantized node's tensor of the int8 file ``data`` on ``x``, by graph node (LiteRT / ONNX Runtime)."""
    backend = importlib.import_module(f"lightnets.backends.{target.split('-')[0]}_int8")
    return backend.node_tensors(data, graph, x)


def locate_in(model_id: str, target: str, size: int, calibration: int = 32, images: int = 2) -> dict:
    """``lightnets.int8.locate``'s report of ``model_id`` through one int8 target of :data:`TARGETS` (its full-integer
    TFLite in LiteRT, or its QDQ ONNX in ONNX Runtime; the same weights and calibration images)."""
    from lightnets import int8

    graph, weights, cal, x = _problem(model_id, size, calibration, images)
    tensors = _tensors(target, _int8_file(target, graph, weights, cal), graph, x)
    return int8.locate(graph, {k: v.astype(np.float64) for k, v in weights.items()}, x, tensors)


def run(model_id: str, size: int, calibration: int, images: int, out: Path, qdq_file: Path | None = None) -> dict:
    from lightnets import int8
    from lightnets.backends import onnx_int8 as OI

    graph, weights, cal, x = _problem(model_id, size, calibration, images)
    t0 = time.time()
    flat = _int8_file("tflite-int8", graph, weights, cal)
    t1 = time.time()
    qdq = _int8_file("onnx-int8", graph, weights, cal)
    t2 = time.time()
    ref_w = {k: v.astype(np.float64) for k, v in weights.items()}
    lite = _tensors("tflite-int8", flat, graph, x)
    ort = _tensors("onnx-int8", qdq, graph, x)
    reports = {"tflite": int8.locate(graph, ref_w, x, lite), "onnx": int8.locate(graph, ref_w, x, ort)}
    parity = int8.runtime_parity(graph, lite, ort, reports["tflite"]["rows"], reports["onnx"]["rows"])
    fused = OI.traced_vs_fused(qdq, graph, x)
    result = {"id": model_id, "size": size, "calibration_images": calibration, "probe_images": images,
              "seconds": {"tflite_convert": round(t1 - t0, 1), "qdq_quantize": round(t2 - t1, 1)},
              "qdq_kept_vs_fused_output_steps": fused,
              **{k: int8.summary(r) for k, r in reports.items()}, "parity": [r._asdict() for r in parity]}
    if qdq_file is not None:  # a quantize_static file the user wrote from this id's float export (same weights)
        rep = int8.locate(graph, ref_w, x, OI.node_tensors(qdq_file.read_bytes(), graph, x, qdq_file.name))
        result["file"] = {"path": str(qdq_file), **int8.summary(rep)}
        reports["file"] = rep
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{model_id}.json").write_text(json.dumps(result, indent=1, default=float))
    for k, r in reports.items():
        int8.plot(r, out / f"{model_id}-{k}.png", f"{model_id} {size} px, int8 {k}: error along depth")
    for k, r in reports.items():
        rows, jump = r["rows"], r["first_jump"]
        print(f"{model_id} {size}px {k:6s}: {len(rows)} quantized nodes, local <= "
              f"{max(x.local_steps for x in rows):.1f} steps, gain err <= {max(x.gain_error for x in rows):.3f}, "
              f"output rel {rows[-1].rel_error:.3f}, "
              f"first jump {jump.node + ' (' + r['reason'][:80] + ')' if jump else 'none'}")
    worst = sorted(parity, key=lambda r: -r.steps_max)[:6]
    print(f"  runtimes: {len(parity)} nodes in both; steps apart max {max(r.steps_max for r in parity):.1f}, "
          f"median of node maxima {np.median([r.steps_max for r in parity]):.1f}; QDQ kept-vs-fused output "
          f"{fused:.1f} steps; worst: " + ", ".join(f"{r.node} ({r.op}) {r.steps_max:.0f}/{r.steps_mean:.2f} "
                                                   f"scale x{r.scale_ratio:.3f}" for r in worst))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ids", nargs="+")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--calibration", type=int, default=32)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("int8-runtimes"))
    p.add_argument("--qdq-file", type=Path, help="also locate this quantize_static QDQ file (of the first id's float "
                   "ONNX export with the same weights)")
    args = p.parse_args(argv)
    for i, mid in enumerate(args.ids):
        run(mid, args.size, args.calibration, args.images, args.out, args.qdq_file if i == 0 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
