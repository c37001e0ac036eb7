"""The ``lightnets`` console script: list, summary, parity, bench, port, info, export.

Bad arguments exit with code 2 and the usage; a LightnetsError exits 1 with its message, never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from . import registry
from .errors import LightnetsError
from .frameworks import BACKENDS, DEFAULT_PARITY_TARGETS, PARITY_TARGETS
from .numerics import DTYPES
from .parity.int8_runtimes import TARGETS as INT8_TARGETS


def _csv(allowed: tuple[str, ...] | None = None):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if allowed and t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed or ())}")
        return items
    return parse


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def cmd_list(args) -> int:
    from rich.table import Table

    table = Table(title="lightnets models (224x224, 1000 classes)")
    for col, justify in (("id", "left"), ("family", "left"), ("params", "right"), ("MMACs", "right")):
        table.add_column(col, justify=justify)
    for model_id in registry.list_models(args.family):
        g = registry.get_spec(model_id)
        table.add_row(model_id, registry.entry(model_id).family, f"{g.num_params():,}", f"{g.macs() / 1e6:.1f}")
    _console().print(table)
    return 0


def cmd_summary(args) -> int:
    from rich.table import Table

    g = registry.get_spec(args.model, num_classes=args.num_classes, input_size=args.size)
    if args.features:
        from . import features as FT

        points = FT.feature_points(g)
        default = FT.default_indices(points)
        g = FT.feature_graph(g)
    table = Table(title=f"{args.model}{' backbone (features=True)' if args.features else ''}: input {g.input_shape}")
    for col, justify in (("layer", "left"), ("ops", "left"), ("output", "left"), ("params", "right"),
                         ("MMACs", "right")):
        table.add_column(col, justify=justify)
    rows: dict[str, list] = {}
    params = {}
    for p in g.params:
        node = p.name.rsplit(".", 1)[0]
        params[node] = params.get(node, 0) + (_size(p.shape) if p.trainable else 0)
    for n in g.nodes:
        key = _layer_key(n.name)
        row = rows.setdefault(key, [[], None, 0, 0])
        if n.op not in row[0]:
            row[0].append(n.op)
        row[1] = g.shapes[n.name]
        row[2] += params.get(n.name, 0)
        row[3] += g.node_macs(n)
    for key, (op_names, shape, p, m) in rows.items():
        table.add_row(key, ",".join(op_names), "x".join(map(str, shape)), f"{p:,}", f"{m / 1e6:.2f}")
    table.add_section()
    out = " ".join("x".join(map(str, s)) for s in g.output_shapes)
    table.add_row("total", "", out if len(out) < 40 else f"{len(g.output_names)} outputs", f"{g.num_params():,}",
                  f"{g.macs() / 1e6:.2f}")
    _console().print(table)
    if args.features:
        _console().print(_feature_table(args.model, g, points, default))
    return 0


def _feature_table(model_id: str, g, points: list[dict], default: tuple[int, ...]):
    """The stages a backbone offers (lightnets.feature_info): index, timm-style module, IR node, channels,
    reduction, shape at the summary's input size, and whether the default out_indices return it."""
    from rich.table import Table

    table = Table(title=f"{model_id} feature maps (lightnets.build(..., features=True, out_indices=...); "
                        f"default {default})")
    for col, justify in (("index", "right"), ("module", "left"), ("node", "left"), ("stage", "right"),
                         ("channels", "right"), ("reduction", "right"), ("output", "left"), ("default", "left")):
        table.add_column(col, justify=justify)
    shapes = registry.get_spec(model_id, input_size=g.input_shape[1]).shapes
    for i, d in enumerate(points):
        table.add_row(str(d["index"]), d["module"], d["node"], str(d["stage"]), str(d["num_chs"]),
                      str(d["reduction"]), "x".join(map(str, shapes[d["node"]])), "yes" if i in default else "")
    return table


def _layer_key(node_name: str) -> str:
    """The block a node belongs to: its first name component plus any numeric ones after it."""
    parts = node_name.split(".")
    key = [parts[0]]
    for part in parts[1:]:
        if not part.isdigit():
            break
        key.append(part)
    return ".".join(key)


def _size(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _select_models(spec: list[str]) -> list[str]:
    ids: list[str] = []
    families = registry.families()
    for item in spec:
        if item == "all":
            ids += registry.list_models()
        elif item in families:
            ids += registry.list_models(item)
        else:
            registry.entry(item)  # raises UnknownModelError with suggestions
            ids.append(item)
    return list(dict.fromkeys(ids))


def cmd_parity(args) -> int:
    from rich.progress import Progress

    from .parity import cases as C
    from .parity import report, runner

    if args.train_steps:  # the optimizer-step profile (parity/train.py) instead of the matrix
        from .parity import train as train_steps

        return train_steps.cli(args, _console())
    models = _select_models(args.models)
    if args.train and args.mode != "train":
        print("lightnets parity: error: --train needs --mode train (folded models have no batch norms); "
              "drop --train or --mode", file=sys.stderr)
        return 2
    int8_targets = [t for t in args.backends if t in INT8_TARGETS]
    targets = [t for t in args.backends if t not in INT8_TARGETS]
    if not targets:  # the int8 locator only
        return _parity_int8(models, int8_targets, args.size, Path(args.out))
    case_list = (C.op_cases() if args.ops else []) + C.model_cases(models, input_size=args.size,
                                                                    num_classes=args.num_classes)
    kinds = {c.id: "op" for c in C.op_cases()} if args.ops else {}
    if args.features:  # every id's backbone: each feature map an output, compared one by one
        feature_list = C.feature_cases(models, input_size=args.size, num_classes=args.num_classes)
        case_list += feature_list
        kinds.update({c.id: "features" for c in feature_list})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = _console()
    n_ops = sum(k == "op" for k in kinds.values())
    n_feat = sum(k == "features" for k in kinds.values())
    console.print(f"parity: {len(models)} models + {n_feat} backbones + {n_ops} op cases x "
                  f"{', '.join(targets)} x {', '.join(args.dtype)}, input {args.size}px"
                  f"{', train mode + gradients' if args.train else ''}"
                  f"{f', BN folded (--mode {args.mode})' if args.mode != 'train' else ''}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lightnets-parity-") as work, Progress(console=console) as bar:
        task = bar.add_task("backends", total=len(targets))
        results = runner.run_matrix(case_list, targets, args.dtype, Path(work), kinds=kinds, jobs=args.jobs,
                                    train=args.train, probe=models[0] if models else None,
                                    on_done=lambda target: bar.advance(task), mode=args.mode)
    elapsed = time.perf_counter() - t0
    meta = {"models": len(models), "op_cases": n_ops, "feature_cases": n_feat, "targets": ",".join(targets),
            "dtypes": ",".join(args.dtype), "input_size": args.size, "train": args.train, "mode": args.mode,
            "wall_time_s": round(elapsed, 1), "python": sys.version.split()[0], **_versions()}
    report.print_summary(results, args.dtype, console)
    report.write_json(results, meta, out / "report.json")
    report.write_markdown(results, args.dtype, meta, out / "report.md")
    plotted = report.plot_divergence(results, out / "divergence.png")
    failed = sum(r.failed for r in results)
    console.print(f"{len(results)} comparisons, {failed} failed, {elapsed:.0f} s; wrote {out}/report.md, "
                  f"report.json{', divergence.png' if plotted else ''}")
    int8_failed = _parity_int8(models, int8_targets, args.size, out) if int8_targets else 0
    return 1 if failed or int8_failed else 0


def _parity_int8(models: list[str], targets: list[str], size: int, out: Path) -> int:
    """The int8 targets of ``lightnets parity``: each model's full-integer TFLite (LiteRT) / QDQ ONNX (ONNX Runtime)
    against the float64 reference node by node (``lightnets.int8``; seeded weights with BN statistics from data, 32
    seeded calibration images): the error along depth, the first node whose error jumps and why. Not judged by a
    bound (int8 error is the quantization's): writes ``int8.json`` and ``int8-<id>-<target>.png``; 1 if a run fails."""
    import json

    from rich.table import Table

    from . import int8
    from .parity import int8_runtimes as I8
    from .weights import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"int8 vs the float64 reference, node by node ({size} px)")
    for col in ("model", "target", "quantized nodes", "output rel", "max local steps", "first jump", "reason"):
        table.add_column(col, justify="right" if col in ("quantized nodes", "output rel", "max local steps")
                         else "left")
    found, failed = {}, 0
    for model in models:
        for target in targets:
            try:
                report = I8.locate_in(model, target, size)
            except LightnetsError as e:
                failed += 1
                table.add_row(model, target, "", "", "", f"[red]error[/] {e}"[:120], "")
                continue
            rows, jump = report["rows"], report["first_jump"]
            found[f"{model} {target}"] = int8.summary(report)
            int8.plot(report, out / f"int8-{model}-{target}.png", f"{model} {size} px, {target}: error along depth")
            table.add_row(model, target, str(len(rows)), f"{rows[-1].rel_error:.3f}",
                          f"{max(r.local_steps for r in rows):.1f}", jump.node if jump else "none",
                          (report["reason"] or "")[:80])
    _console().print(table)
    atomic_write(out / "int8.json", lambda tmp: Path(tmp).write_text(json.dumps(found, indent=1, default=float)))
    return 1 if failed else 0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("numpy", "torch", "keras", "tensorflow-cpu", "paddlepaddle"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _positive_ints(text: str) -> list[int]:
    try:
        items = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        items = []
    if not items or any(i < 1 for i in items):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, comma separated")
    return list(dict.fromkeys(items))


def _positive_int(minimum: int = 1):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= {minimum}")
        return value
    return parse


def _calibration(text: str) -> int | str:
    """A count of seeded N(0, 1) images, or a folder of image files."""
    if text.isdigit():
        return _positive_int()(text)
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a count of seeded images or a folder of images")
    return text


def _model_ids(text: str) -> list[str]:
    items = _csv()(text)
    known = set(registry.list_models()) | set(registry.families()) | {"all"}
    bad = [t for t in items if t not in known]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown model {', '.join(bad)}; see 'lightnets list'")
    return _select_models(items)


def _model_id(text: str) -> str:
    if text not in registry.list_models():
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; see 'lightnets list'")
    return text


def cmd_bench(args) -> int:
    from rich.progress import Progress

    from . import bench
    from .bench import report as R

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = _console()
    console.print(f"bench: {', '.join(args.models)} x {', '.join(args.backends)}, batch "
                  f"{','.join(map(str, args.batch))}, {args.size}px, {args.threads} threads, "
                  f"{args.repeats} repeats, variants {','.join(args.variants)}")
    t0 = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("backends", total=len(args.backends))
        report = bench.run_bench(args.models, args.backends, args.batch, args.size, args.threads,
                                 args.repeats, on_done=lambda b: bar.advance(task), variants=args.variants)
    report["meta"].update({"wall_time_s": round(time.perf_counter() - t0, 1), **_versions()})
    R.print_table(report, console)
    R.write_json(report, out / "bench.json")
    R.plot(report, out / "bench.png")
    failed = R.failures(report)
    for f in failed:
        console.print(f"[red]failed[/] {f}")
    console.print(f"wrote {out}/bench.json, bench.png ({report['meta']['wall_time_s']:.0f} s)")
    return 1 if failed else 0


def cmd_port(args) -> int:
    from . import formats
    from .port import check_port_target, port  # (lightnets.port, the attribute, is the function)

    out = formats.check_writable(args.out, args.force)  # before any work: nothing is written on refusal
    out_fmt = check_port_target(out, args.to, args.format)
    model, info = port(args.source, to=args.to, arch=args.arch, from_format=args.from_format,
                            num_classes=args.num_classes, input_size=args.size, return_info=True)
    formats.save_weights(model, out, args.format, overwrite=args.force)
    print(f"ported {info['arch']}: {info['source_format']} {args.source} -> {args.to} {out_fmt} {out}")
    print(f"  graph from:    {info['graph_from']}")
    for note in info["notes"]:
        if note not in info["graph_from"]:
            print(f"  note:          {note}")
    print(f"  tensors moved: {info['tensors']}")
    print(f"  params moved:  {info['params']:,} values (incl. BN running statistics)")
    print(f"  probe {'x'.join(map(str, info['probe_shape']))} {info['probe_dtype']} "
          f"({', '.join(info['probe_checked'])}) "
          f"vs {info['probe_against']}: max abs logit diff {info['max_abs_diff']:.3e}, max rel diff "
          f"{info['max_rel_diff']:.3e}")
    source = (info["card"] or {}).get("source", {})
    print(f"  provenance:    {', '.join(f'{k}={v}' for k, v in source.items())} (card written with {out.name})")
    return 0


def cmd_info(args) -> int:
    from rich.table import Table

    from . import formats

    d = formats.describe(args.file, args.format)
    console = _console()
    console.print(f"{d['path']}: {d['format']} file, {d['bytes']:,} bytes; graph and card from: {d['graph_from']}")
    for note in d["notes"]:
        console.print(f"  note: {note}")
    if d["graph"] is None:
        hint = f" (the file records the model id {d['id_hint']!r})" if d["id_hint"] else ""
        console.print(f"no graph recorded{hint}: load it with the model id (build(id, weights=...), "
                      "port --arch ID)")
        return 0
    g = d["graph"]
    table = Table(title="graph")
    table.add_column("field")
    table.add_column("value")
    size = g["input_shape"]
    for key, value in (("id", g["id"]), ("params (trainable)", f"{g['params']:,}"),
                       ("params (incl. BN stats)", f"{g['params_incl_bn_stats']:,}"),
                       ("input size", f"{size[0]}x{size[1]}x{size[2]} (C x H x W)"), ("classes", g["num_classes"]),
                       ("nodes", g["nodes"]), ("BN eps", g["bn_eps"]), ("BN momentum", g["bn_momentum"]),
                       ("padding", g["padding"])):
        table.add_row(key, str(value))
    console.print(table)
    card = Table(title="provenance card")
    card.add_column("field")
    card.add_column("value")
    for key, value in (d["card"] or {}).items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list) and key == "notes":
            value = "\n".join(value)
        card.add_row(key, str(value))
    console.print(card)
    return 0


def _id_or_file(text: str) -> str:
    from .api import is_weights_file

    return text if is_weights_file(text) else _model_id(text)


def cmd_export(args) -> int:
    from . import formats
    from .export import export, export_tflite, onnx_module  # (lightnets.export, the attribute, is the function)

    if args.calibration and not args.quantize:
        print("lightnets export: error: --calibration calibrates an int8 export; add --quantize int8",
              file=sys.stderr)
        return 2
    if args.quantize and args.to == "onnx" and args.dtype != "float32":
        print("lightnets export: error: a QDQ int8 ONNX export takes float32 images; drop --dtype float64",
              file=sys.stderr)
        return 2
    out = formats.check_writable(args.out, args.force)  # before any work: nothing is written on refusal
    if args.quantize and args.to == "onnx":
        from .export import export_onnx_int8

        path, rep = export_onnx_int8(args.source, out, overwrite=args.force, calibration=args.calibration,
                                     input_size=args.size)
        print(f"exported {args.source} -> onnx {path} ({path.stat().st_size:,} bytes, QDQ int8, input {rep['input']}; "
              f"graph and provenance card in {formats.sidecar_of(path).name})")
        print(f"int8: top-1 agreement with the float64 reference {rep['agreeing']}/{rep['images']} = "
              f"{rep['top1_agreement']:.1%} (N(0, 1) images, seed {rep['agreement_seed']}); calibration: "
              f"{rep['calibration']}")
        return 0
    if args.to == "tflite":
        if args.dtype != "float32":
            print("lightnets export: error: TFLite export is float32 (LiteRT has no float64 kernels); drop "
                  "--dtype float64, or add --quantize int8", file=sys.stderr)
            return 2
        path, rep = export_tflite(args.source, out, overwrite=args.force, quantize=args.quantize,
                                  calibration=args.calibration, input_size=args.size,
                                  dynamic_hw=False if args.static else None)
        kind = "int8 (float32 input/output)" if args.quantize else "float32"
        print(f"exported {args.source} -> tflite {path} ({path.stat().st_size:,} bytes, {kind}, input {rep['input']}; "
              f"graph and provenance card in {formats.sidecar_of(path).name})")
        if args.quantize:
            print(f"int8: top-1 agreement with the float64 reference {rep['agreeing']}/{rep['images']} = "
                  f"{rep['top1_agreement']:.1%} (N(0, 1) images, seed {rep['agreement_seed']}); calibration: "
                  f"{rep['calibration']}")
        else:
            print(f"probe rel error against the float64 reference: {rep['probe_rel_error']:.1e}")
        return 0
    path = export(args.source, to=args.to, path=out, overwrite=args.force, dtype=args.dtype, input_size=args.size,
                  dynamic_hw=False if args.static else None)
    dims = ", ".join(map(str, onnx_module().input_dims(path)))
    print(f"exported {args.source} -> {args.to} {path} ({path.stat().st_size:,} bytes, {args.dtype}, input ({dims}); "
          "graph and provenance card in its doc_string and metadata_props)")
    return 0


def _int8_file(source: str) -> str | None:
    """"onnx" / "tflite" when ``source`` is an int8 file of that kind (a QDQ .onnx, an int8 .tflite), else None."""
    import importlib

    path = Path(source)
    if path.suffix == ".onnx" and path.is_file():
        return "onnx" if importlib.import_module("lightnets.export").onnx_int8_module().is_qdq(path) else None
    if path.suffix == ".tflite" and path.is_file():
        tflite_int8 = importlib.import_module("lightnets.backends.tflite_int8")
        return "tflite" if tflite_int8.is_int8(path.read_bytes()) else None
    return None


def cmd_int8(args) -> int:
    import importlib
    import json

    from rich.table import Table

    from . import int8
    from .export import AGREEMENT_SEED, seeded_images, tflite_module, to_onnx_int8, to_tflite
    from .weights import atomic_write

    what = (f"{args.calibration} seeded N(0, 1)" if isinstance(args.calibration, int)
            else f"the folder {args.calibration}'s")
    kind = _int8_file(args.source)
    if kind is not None:  # an int8 file: its own tensors against the float64 reference of its dequantized weights
        graph, weights = int8.file_reference(args.source, "onnxruntime" if kind == "onnx" else "tflite", args.size)
        x = seeded_images(graph, args.images, AGREEMENT_SEED)
        data = Path(args.source).read_bytes()
        backend = importlib.import_module(f"lightnets.backends.{kind}_int8")
        tensors = backend.node_tensors(data, graph, x, Path(args.source).name) if kind == "onnx" else \
            backend.node_tensors(data, graph, x)
        report = int8.locate(graph, weights, x, tensors)
        runtime = "ONNX Runtime, QDQ" if kind == "onnx" else "LiteRT"
        calibrated = f"the file's own calibration; reference: its dequantized weights; {runtime}"
    else:
        if args.to == "onnx":
            model, graph, _ = to_onnx_int8(args.source, args.calibration, args.size)
        else:
            tflite_module()  # the clear error if tensorflow / LiteRT are missing
            model, graph, _ = to_tflite(args.source, "int8", args.calibration, False, args.size)
        x = seeded_images(graph, args.images, AGREEMENT_SEED)
        backend = importlib.import_module(f"lightnets.backends.{'onnx' if args.to == 'onnx' else 'tflite'}_int8")
        report = backend.locate_model(model, x)
        runtime = "ONNX Runtime, QDQ" if args.to == "onnx" else "LiteRT"
        calibrated = f"calibrated on {len(model.calibration)} of {what} images; {runtime}"
    console = _console()
    table = Table(title=f"int8 vs the float64 reference, node by node: {graph.name} at {graph.input_shape[1]} px, "
                        f"{args.images} images ({calibrated})")
    for col in ("node", "op", "accumulated rel", "step", "local steps", "gain err", "clipped %", "spread"):
        table.add_column(col, justify="left" if col in ("node", "op") else "right")
    for r in report["rows"]:
        style = "red" if int8.jumps(r) else None
        table.add_row(r.node, r.op, f"{r.rel_error:.3f}", f"{r.step:.4f}", f"{r.local_steps:.1f}",
                      f"{r.gain_error:.3f}", f"{100 * r.clipped:.2f}", f"{r.channel_spread:.1f}", style=style)
    console.print(table)
    jump = report["first_jump"]
    console.print(f"first jump: {jump.node} ({', '.join(jump.fused)}): {report['reason']}" if jump else
                  f"no jump: every op's error is int8 rounding (local <= {int8.JUMP_STEPS:g} steps, channel gains "
                  f"within {int8.JUMP_GAIN:.0%}, no saturation); the accumulated error at the output is "
                  f"{report['rows'][-1].rel_error:.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "int8.json", lambda tmp: Path(tmp).write_text(json.dumps(int8.summary(report), indent=1)))
    int8.plot(report, out / "int8.png", f"{graph.name}: int8 error along depth")
    console.print(f"wrote {out}/int8.json, int8.png")
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lightnets", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="every model id with params and MACs")
    s.add_argument("--family", choices=registry.families(), help="only this family")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("summary", help="per-layer table of one model: output shape, params, MACs")
    s.add_argument("model")
    s.add_argument("--size", type=_positive_int(32), default=224)
    s.add_argument("--num-classes", type=_positive_int(), default=1000)
    s.add_argument("--features", action="store_true", help="the backbone (build(..., features=True)): its layers "
                   "and the feature map at the end of each stage (index, module, node, channels, reduction)")
    s.set_defaults(func=cmd_summary)

    s = sub.add_parser("parity", help="the cross-framework parity matrix against the numpy reference")
    s.add_argument("--models", type=_csv(), default=["all"], help="ids, family names or 'all' (comma separated)")
    s.add_argument("--backends", type=_csv((*PARITY_TARGETS, *INT8_TARGETS)), default=list(DEFAULT_PARITY_TARGETS),
                   help="parity targets; tflite-int8 / onnx-int8: the per-node int8 locator of every model (its "
                   "full-integer TFLite in LiteRT / QDQ ONNX in ONNX Runtime vs the float64 reference)")
    s.add_argument("--dtype", type=_csv(DTYPES), default=list(DTYPES))
    s.add_argument("--train", action="store_true", help="also train-mode BN and gradients")
    s.add_argument("--train-steps", type=_positive_int(), default=0, metavar="N",
                   help="instead of the matrix: N optimizer steps (SGD, Nesterov, AdamW; warmup+cosine) per model "
                   "in every training backend vs the float64 numpy reference, weights and BN statistics compared "
                   "after every step (parity/train.py; --models all means its 3 default models, --size 224 means "
                   "its 64 px)")
    s.add_argument("--mode", choices=("train", "inference", "fast", "compiled"), default="train",
                   help="inference: build every model with its batch norms folded into the convs and compare "
                   "it with the unfolded reference (not with --train); fast / compiled: the folded model through "
                   "lightnets.optimize(model, compile=False / True), each backend's fast path")
    s.add_argument("--no-ops", dest="ops", action="store_false", help="skip the op conformance cases")
    s.add_argument("--no-features", dest="features", action="store_false",
                   help="skip the backbone cases (<id>:features: every feature map of build(..., features=True))")
    s.add_argument("--size", type=_positive_int(32), default=224, help="input size of the model cases")
    s.add_argument("--num-classes", type=_positive_int(), default=1000)
    s.add_argument("--jobs", type=_positive_int(), default=2, help="backend subprocesses at once")
    s.add_argument("--out", default="parity-report", help="directory for report.md/json and divergence.png")
    s.set_defaults(func=cmd_parity)

    from .bench import BACKENDS as BENCH_BACKENDS
    from .bench import DEFAULT_MODELS, VARIANTS

    s = sub.add_parser("bench", help="inference latency of lightnets models (plain, fast path) vs their zoo twins, "
                       "per backend")
    s.add_argument("--models", type=_model_ids, default=list(DEFAULT_MODELS),
                   help="ids, family names or 'all' (comma separated)")
    s.add_argument("--variants", type=_csv(VARIANTS), default=list(VARIANTS),
                   help="plain: as built; fast / compiled: lightnets.optimize(model, compile=False / True); twin: the "
                   "zoo model; twin_compiled: the zoo model through the backend's optimize(compile=True)")
    s.add_argument("--backends", type=_csv(BENCH_BACKENDS), default=list(BENCH_BACKENDS))
    s.add_argument("--batch", type=_positive_ints, default=[1, 16], help="batch sizes (comma separated)")
    s.add_argument("--size", type=_positive_int(32), default=224, help="input size")
    s.add_argument("--threads", type=_positive_int(), default=2, help="intra-op threads per framework")
    s.add_argument("--repeats", type=_positive_int(), default=30, help="timed runs per model (interleaved)")
    s.add_argument("--out", default="bench-report", help="directory for bench.json and bench.png")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("port", help="port a weights file (any format, or a zoo checkpoint) to another backend")
    s.add_argument("--arch", type=_model_id, help="lightnets model id of the weights (default: the graph "
                   "recorded with the file; needed for files without one)")
    s.add_argument("--from", dest="source", required=True, help="weights file to read")
    s.add_argument("--from-format", help="format of --from (default: by suffix), or a zoo checkpoint "
                   "such as torchvision:mobilenet_v2, timm:ghostnet_100, paddle:mobilenet_v2")
    s.add_argument("--to", required=True, choices=tuple(BACKENDS), help="target backend")
    s.add_argument("--out", required=True, help="output file; its suffix picks the format")
    s.add_argument("--format", help="output format name when the suffix is ambiguous (e.g. torch for .safetensors)")
    s.add_argument("--num-classes", type=_positive_int(), help="class count (default: read from the file)")
    s.add_argument("--size", type=_positive_int(16), help="input size of the probe and the ported graph "
                   "(default: the file's graph's, else 224)")
    s.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    s.set_defaults(func=cmd_port)

    s = sub.add_parser("info", help="the provenance card and graph summary recorded with a weights file")
    s.add_argument("file", help="weights file of any format (native files: their .lightnets.json sidecar)")
    s.add_argument("--format", help="format name when the suffix is ambiguous (e.g. torch for .safetensors)")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("export", help="write a model (id or weights file) as an ONNX file (emitted from the graph IR) "
                       "or a TFLite file (the keras model, converted)")
    s.add_argument("source", metavar="ID_OR_FILE", type=_id_or_file,
                   help="model id (its deterministic initial weights) or weights file of any format")
    s.add_argument("--to", choices=("onnx", "tflite"), default="onnx", help="export format")
    s.add_argument("--quantize", choices=("int8",), help="post-training int8, calibrated on 32 seeded N(0, 1) images "
                   "or --calibration; reports top-1 agreement. --to tflite: full-integer (float32 input/output); "
                   "--to onnx: QDQ (onnxruntime quantize_static, per-channel weights, static height/width)")
    s.add_argument("--calibration", metavar="DIR", help="with --quantize int8: a folder of image files to calibrate "
                   "on (a seeded sample of 32, normalised as the card's preprocessing or ImageNet's)")
    s.add_argument("--out", required=True, help="output file")
    s.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    s.add_argument("--size", type=_positive_int(16), help="input size the graph is built for (default: the file's "
                   "graph's, else 224)")
    s.add_argument("--dtype", choices=DTYPES, default="float32", help="ONNX tensor type")
    s.add_argument("--static", action="store_true", help="fix height/width to --size (the batch stays dynamic)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("int8", help="the per-layer int8 locator: a model's int8 export (TFLite, or QDQ ONNX) against "
                       "the float64 reference, node by node, and the first node whose error is not int8 rounding")
    s.add_argument("source", metavar="ID_OR_FILE", type=_id_or_file,
                   help="model id (its deterministic initial weights) or weights file of any format; an int8 file "
                   "(a QDQ .onnx, an int8 .tflite written by lightnets) is located itself")
    s.add_argument("--to", choices=("tflite", "onnx"), default="tflite", help="the int8 export to locate: LiteRT "
                   "full-integer, or ONNX Runtime QDQ")
    s.add_argument("--size", type=_positive_int(16), help="input size (default: the file's graph's, else 224)")
    s.add_argument("--images", type=_positive_int(), default=2, help="probe images (seeded N(0, 1))")
    s.add_argument("--calibration", type=_calibration, default=32, metavar="N_OR_DIR",
                   help="calibration: N seeded N(0, 1) images, or a folder of image files (a seeded sample of 32)")
    s.add_argument("--out", default="int8-report", help="directory for int8.json and int8.png")
    s.set_defaults(func=cmd_int8)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except LightnetsError as e:
        print(f"lightnets: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
