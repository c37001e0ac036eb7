"""The bench report: ratios and targets (``summarize``), the table, ``bench.json`` and ``bench.png``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import BEST_VARIANTS, FAST_VARIANTS, PEAK_N, TARGETS, VARIANTS, WITHIN_FASTEST


def summarize(report: dict) -> dict:
    """Ratios, throughput vs peak, the fastest framework per model and batch, every cell of a (model, batch) row
    against that row's fastest cell, and the targets' status."""
    peaks = [res["peak"]["gflops"] for res in report["backends"].values() if res.get("peak")]
    peak = max(peaks) if peaks else None
    lines, best = [], {}
    for backend, r in rows(report):
        v = r["variants"]
        ms = {k: s["median_ms"] for k, s in v.items()}
        fast = {k: ms[k] for k in BEST_VARIANTS if k in ms}
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
    return {"peak_gflops": peak, "lines": lines, "fastest": fastest, "cells": cells(report, peak)}


def cells(report: dict, peak: float | None) -> list[dict]:
    """Per (model, batch): every (backend, variant) cell's median ms, GFLOP/s (the lightnets graph's conv/linear
    MACs x 2: a twin is the same net), fraction of the peak and ratio to the row's fastest cell, fastest first."""
    per: dict = {}
    for backend, r in rows(report):
        for name, s in r["variants"].items():
            per.setdefault((r["model"], r["batch"]), {})[f"{backend} {name}"] = s["median_ms"]
    out = []
    for (model, batch), ms in per.items():
        best = min(ms.values())
        for cell, t in sorted(ms.items(), key=lambda kv: kv[1]):
            gflops = 2 * report["macs"][model] * batch / (t / 1000) / 1e9
            out.append({"model": model, "batch": batch, "cell": cell, "ms": t, "gflops": round(gflops, 2),
                        "peak_fraction": round(gflops / peak, 3) if peak else None, "vs_fastest": round(t / best, 3)})
    return out


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
    t = Table(title=f"lightnets: plain, fast path (optimize), compiled (optimize(compile=True)), the zoo twin, par: "
                    "the fast file in ONNX Runtime's parallel execution mode; "
                    f"{m['size']}px, {m['threads']} threads, median of {m['repeats']} interleaved runs (ms)")
    cols = ("backend", "model", "bs", "plain", "fast", "comp", "twin", "twin comp", "par", "fast /plain", "comp /plain",
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
                  ms["twin_compiled"], ms["parallel"], _f(s.get("fast/plain"), 2), _f(s.get("compiled/plain"), 2), best,
                  _f(s.get("gflops"), 1),
                  _f(100 * s["peak_fraction"], 1) if s.get("peak_fraction") is not None else "-", once)
    console.print(t)
    c = Table(title="every cell of a (model, batch) row against its fastest (GFLOP/s: the graph's MACs x 2)")
    for col in ("model", "bs", "backend variant", "ms", "GFLOP/s", "% peak", "x fastest"):
        c.add_column(col, justify="left" if col in ("model", "backend variant") else "right", no_wrap=True)
    for e in summary.get("cells", []):
        c.add_row(e["model"], str(e["batch"]), e["cell"], _f(e["ms"]), _f(e["gflops"]),
                  _f(100 * e["peak_fraction"]) if e["peak_fraction"] is not None else "-", _f(e["vs_fastest"], 2))
    console.print(c)
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
    from ..weights import atomic_write

    def write(tmp):
        Path(tmp).write_text(json.dumps(report, indent=2))
        os.chmod(tmp, 0o644)
    atomic_write(path, write)


def plot(report: dict, path: Path) -> None:
    """Bars of each variant's median latency relative to the twin (else the plain model) per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..weights import atomic_write

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
