"""Parity report: a printed summary table, ``report.md``, ``report.json`` and ``divergence.png``."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from lightnets.weights import atomic_write

from .runner import Result, to_json

STATUS_STYLE = {"pass": "green", "xfail": "yellow", "fail": "bold red", "error": "bold red", "xpass": "bold red",
                "info": "dim"}


def summary_rows(results: list[Result]) -> list[dict]:
    """One row per (case or op group, target, kind) with the worst error per dtype."""
    groups: dict[tuple[str, str, str], dict[str, list[Result]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        name = f"ops ({len({x.case for x in results if x.kind == 'op'})} cases)" if r.kind == "op" else r.case
        groups[(r.kind, name, r.target)][r.dtype].append(r)
    rows = []
    for (kind, name, target), by_dtype in groups.items():
        row = {"kind": kind, "case": name, "target": target}
        for dtype, rs in sorted(by_dtype.items()):
            worst = max(rs, key=lambda r: (r.failed, r.rel_err if r.rel_err == r.rel_err else float("inf")))
            row[dtype] = {"abs": worst.abs_err, "rel": worst.rel_err, "tol": worst.tol,
                          "status": "fail" if any(r.failed for r in rs) else worst.status,
                          "note": _note(worst)}
        rows.append(row)
    return rows


def _note(r: Result) -> str:
    if r.divergence and "node" in r.divergence:
        d = r.divergence
        return f"first divergence at {d['node']} ({d['op']}), rel {d['rel_err']:.2e}"
    return r.error.splitlines()[0][:160] if r.error else ""


def _fmt(v: float) -> str:
    return "-" if v != v else f"{v:.2e}"


def print_summary(results: list[Result], dtypes: list[str], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="lightnets parity: max error vs the float64 numpy reference (pairs: vs each other)")
    for col in ("kind", "case", "target"):
        table.add_column(col)
    for dtype in dtypes:
        short = dtype.replace("float", "f")
        table.add_column(f"{short} abs", justify="right")
        table.add_column(f"{short} rel", justify="right")
        table.add_column(short, justify="center")
    for row in summary_rows(results):
        cells = [row["kind"], row["case"], row["target"]]
        for dtype in dtypes:
            c = row.get(dtype)
            if c is None:
                cells += ["", "", ""]
            else:
                cells += [_fmt(c["abs"]), _fmt(c["rel"]), f"[{STATUS_STYLE[c['status']]}]{c['status']}[/]"]
        table.add_row(*cells)
    console.print(table)
    for r in results:
        if r.failed:
            console.print(f"[red]{r.status}[/]: {r.kind} {r.case} {r.target} {r.dtype}: {_note(r) or r.error}")


def write_markdown(results: list[Result], dtypes: list[str], meta: dict, path: Path) -> None:
    lines = ["# lightnets parity report", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "Errors are max |y - ref| (abs) and that over max |ref| (rel); ref is the float64 numpy "
              "reference, or the other target for pairs. Tolerances: parity/tolerances.py.", ""]
    head = "| kind | case | target | " + " | ".join(f"{d} abs | {d} rel | {d} status" for d in dtypes) + " | notes |"
    lines += [head, "|" + "---|" * (4 + 3 * len(dtypes))]
    for row in summary_rows(results):
        cells, notes = [row["kind"], row["case"], row["target"]], []
        for d in dtypes:
            c = row.get(d)
            cells += ["", "", ""] if c is None else [_fmt(c["abs"]), _fmt(c["rel"]), c["status"]]
            if c and c["note"]:
                notes.append(f"{d}: {c['note']}")
        lines.append("| " + " | ".join(cells + ["; ".join(notes)]) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(results: list[Result], meta: dict, path: Path) -> None:
    text = json.dumps({"meta": meta, "results": to_json(results)}, indent=1, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def plot_divergence(results: list[Result], path: Path) -> bool:
    """Per-node relative error along depth, one line per target and dtype. False if nothing to plot."""
    curves = [r for r in results if r.per_node]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for r in curves:
        errs = [max(e, 1e-18) for _, _, e in r.per_node]
        ax.plot(range(len(errs)), errs, label=f"{r.case} · {r.target} · {r.dtype}",
                linestyle="-" if r.dtype == "float64" else "--")
        if r.divergence and "node" in r.divergence:
            i = [n for n, _, _ in r.per_node].index(r.divergence["node"])
            ax.annotate(r.divergence["node"], (i, errs[i]), fontsize=7, color="red")
    ax.set_yscale("log")
    ax.set_xlabel("node index along depth")
    ax.set_ylabel("max |y - ref| / max |ref|")
    ax.set_title("Error per node along depth vs the float64 numpy reference")
    ax.legend(fontsize=7, loc="best")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return True
