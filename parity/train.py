"""Optimizer-step parity (``lightnets parity --train-steps N``): training you can trust across frameworks.

From identical canonical weights and identical batches every target runs N optimizer steps with the IR's
loss, optimizers and learning-rate schedule (``lightnets.optim``: softmax cross-entropy with label smoothing
0.1, SGD with momentum + coupled L2 (also Nesterov), AdamW with decoupled decay, linear warmup + cosine),
BN in train mode and dropout off. After EVERY step the weights and BN running statistics of every target
are compared, tensor by tensor, with the float64 numpy reference (``optim.reference_train_steps``, its own
backward pass) and with each other. float64 is judged (``TRAIN_REL``); float32 is reported with its measured
drift per step. Each row names the first step and parameter over its bound.

One subprocess per target (tensorflow and paddle cannot share a process); the reference runs in a worker
of its own. Workers write every step's weights to ``.npz`` files that the runner compares and deletes.
``python -m lightnets.parity.train REQUEST.json`` is the worker.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lightnets import backward, optim, registry, workers
from lightnets import weights as W
from lightnets.frameworks import TRAIN_STEP_TARGETS
from lightnets.graph import Graph
from lightnets.numerics import rel_error

from . import tolerances as T
from .worker import load

DEFAULT_MODELS = ("mobilenet_v2_100", "shufflenet_v1_g3_100", "ghostnet_100")
DEFAULT_SIZE, BATCH, NUM_CLASSES = 64, 4, 10
REFERENCE = "reference"
# targets whose backend has train_steps (lightnets.frameworks' table); keras-torch computes float64 in float32 inside
# (tolerances.EFFECTIVE_DTYPE)
TRAIN_TARGETS = TRAIN_STEP_TARGETS

# Weights and BN statistics after every step, per tensor: max|w - ref| / max|ref| (numerics.rel_error).
# float64: summation order only, amplified by the training dynamics; measured after 5 steps at 64 px, batch 4
# (torch, keras on tf, paddle vs the numpy reference and pairwise), worst step-5 tensor: mobilenet_v2_100 SGD
# 1.2e-12, Nesterov 9.4e-12, AdamW 2.5e-11; shufflenet_v1_g3_100 1.2e-14 / 1.8e-14 / 2.8e-12; ghostnet_100
# 5.2e-15 / 5.3e-15 / 2.6e-12 (see PROFILE_NOTE for why these hyperparameters).
TRAIN_REL = {"float64": 1e-10}
# float32 is not judged (rounding flips ReLU kinks and BN over 4 images amplifies it; the drift grows with the
# steps); its rows name the first step and parameter over the float32 model bound below.
FLOAT32_MARK = T.MODEL_REL["float32"]

CONTROL = 1e-15  # the control run: the first target again from weights scaled by (1 + 1e-15 * (+-1)), ~4 ulp
PROFILE_NOTE = (
    "Hyperparameters are exact in float32 (momentum 0.875, weight decays 2**-11 and 2**-5): paddle's Momentum "
    "and AdamW kernels take mu and the decay coefficient as float32 attributes (0.9 runs as 0.8999999762, "
    "measured 7.9e-9 after 5 steps; tests/test_train_steps.py shows paddle == the IR formula with those "
    "values rounded, bit for bit). The control row (target~target*) reruns the first target from weights "
    "perturbed by 1e-15 relative (~4 ulp): how much the training map itself amplifies a rounding-size "
    "difference, the scale against which the framework rows are read. At "
    "64 px, batch 4, random init that amplification is up to ~10x per step: at SGD lr 0.002 (Nesterov) "
    "mobilenet_v2_100 reached 1.7e-10 at step 5 in torch, paddle and keras alike, as did torch against itself "
    "from a 1e-13 perturbation (2e-10) - the dynamics, not the frameworks. So SGD runs at lr 0.001 (~0.1 at "
    "batch 256, linearly scaled). AdamW's update g / (|g| + eps) amplifies float64 gradient rounding by up "
    "to lr / (4 eps) where |g| ~ eps: at eps 1e-8 torch vs the reference measured 1.35e-10 after one step "
    "(shufflenet_v1_g3_100), at 1e-7 mobilenet_v2_100 grew 3.3e-11 -> 1.1e-10 in 5 steps; the profile uses "
    "eps 1e-6 (RoBERTa's). Under AdamW the parameters of backward.null_gradient_params (train-mode gradient "
    "identically 0, float noise only, which Adam normalises into steps) are reported, not judged.")


def optimizers() -> dict[str, optim.SGD | optim.AdamW]:
    """The optimizers of the profile, by name (see ``PROFILE_NOTE`` for the values)."""
    sgd = dict(lr=0.001, momentum=0.875, weight_decay=2.0 ** -11)  # lr: ~0.1 at batch 256, scaled to 4
    return {"sgd": optim.SGD(**sgd), "sgd-nesterov": optim.SGD(**sgd, nesterov=True),
            "adamw": optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=2.0 ** -5)}


def schedule(steps: int) -> optim.WarmupCosine:
    """Warmup over the first 2 steps (1 for a 2-step run), cosine over the rest; never 0 within the run."""
    return optim.WarmupCosine(warmup=min(2, steps - 1), total=steps + 1)


def make_batches(graph: Graph, steps: int, batch: int = BATCH, seed: int = 0):
    """Deterministic N(0, 1) NCHW float64 batches and integer labels, one per step."""
    rng = np.random.default_rng(seed)
    k = graph.output_shape[0]
    return ([rng.standard_normal((batch, *graph.input_shape)) for _ in range(steps)],
            [rng.integers(0, k, batch) for _ in range(steps)])


@dataclass
class TrainResult:
    """One case x optimizer in one target (or a pair ``a~b``) at one dtype, over every step."""

    case: str
    optimizer: str
    target: str
    dtype: str
    per_step: list = field(default_factory=list)  # worst judged rel error after each step
    worst: list = field(default_factory=list)  # the tensor of that worst error, per step
    loss_err: list = field(default_factory=list)  # |loss - ref loss| per step
    null_err: float = float("nan")  # worst over backward.null_gradient_params, when not judged (AdamW)
    tol: float = float("nan")
    status: str = "pass"  # pass | fail | error | info
    divergence: dict | None = None  # first {"step", "param", "rel_err"} over tol (float32: over FLOAT32_MARK)
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "error")


# --- the worker ---------------------------------------------------------------------------------------
def run_request(request: dict) -> dict:
    """Run every (case, optimizer, dtype) of ``request`` in one backend (or the numpy reference)."""
    out = Path(request["out"])
    backend = None if request["backend"] == REFERENCE else _load(request["backend"])
    opts = optimizers()
    status = {}
    for dtype in request["dtypes"]:
        (out / dtype).mkdir(parents=True, exist_ok=True)
        for case in request["cases"]:
            graph = Graph.from_json(Path(case["graph"]).read_text())
            w = W.load(case["weights"])
            with np.load(case["batches"]) as z:
                xs = [z[f"x{i}"] for i in range(request["steps"])]
                ys = [z[f"y{i}"] for i in range(request["steps"])]
            runs = [(name, w) for name in request["optimizers"]]
            if request.get("control") and dtype == "float64":
                runs += [(f"{name}.control", perturbed(w)) for name in request["optimizers"]]
            for name, weights in runs:
                key = f"{dtype}/{case['id']}.{name}"
                try:
                    t0 = time.perf_counter()
                    spec, sched = opts[name.split(".")[0]], schedule(request["steps"])
                    if backend is None:
                        trace = optim.reference_train_steps(graph, weights, xs, ys, spec, sched)
                    else:
                        model = backend.build(graph, dtype)
                        backend.set_weights(model, weights)
                        trace = backend.train_steps(model, [x.astype(dtype) for x in xs], ys, spec, sched)
                    arrays = {f"{t}/{k}": v for t, step in enumerate(trace.weights) for k, v in step.items()}
                    np.savez(out / dtype / f"{case['id']}.{name}.npz", losses=np.array(trace.losses),
                             lrs=np.array(trace.lrs), **arrays)
                    status[key] = {"ok": True, "s": time.perf_counter() - t0}
                except Exception as e:  # recorded per run, reported by the runner
                    status[key] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                   "traceback": traceback.format_exc(limit=8)}
    return status


def perturbed(weights: dict) -> dict:
    """``weights`` scaled elementwise by (1 + CONTROL * (+-1)), a fixed sign pattern: the control run."""
    rng = np.random.default_rng(12345)
    return {k: v * (1.0 + CONTROL * rng.choice([-1.0, 1.0], size=np.shape(v))) for k, v in weights.items()}


def _load(name: str):
    import lightnets

    return lightnets.load_backend(name)


def main(argv: list[str] | None = None) -> int:
    request = workers.read_request(argv)
    status = run_request(request)
    (Path(request["out"]) / "status.json").write_text(json.dumps(status, indent=1))
    return 0


# --- the runner ---------------------------------------------------------------------------------------
@dataclass
class Run:
    """The prepared files of a run: per case its graph, weights and batches."""

    workdir: Path
    steps: int
    cases: dict[str, Graph]
    files: dict[str, dict]


def prepare(models, workdir: Path, steps: int, size: int = DEFAULT_SIZE, batch: int = BATCH,
            num_classes: int = NUM_CLASSES, seed: int = 0, graphs: dict[str, Graph] | None = None) -> Run:
    """Write every case's graph, canonical weights (``weights.init_weights(seed)``) and batches."""
    if steps < 1:
        raise optim.TrainingSpecError(f"--train-steps must be >= 1, got {steps}")
    graphs = dict(graphs or {})
    for m in models:
        graphs.setdefault(m, registry.get_spec(m, num_classes=num_classes, input_size=size))
    files = {}
    for i, (cid, graph) in enumerate(graphs.items()):
        d = Path(workdir) / "cases" / cid
        d.mkdir(parents=True, exist_ok=True)
        (d / "graph.json").write_text(graph.to_json())
        W.save(W.init_weights(graph, seed=seed + i), d / "weights.safetensors", overwrite=True)
        xs, ys = make_batches(graph, steps, batch, seed=seed + i)
        np.savez(d / "batches.npz", **{f"x{j}": x for j, x in enumerate(xs)}, **{f"y{j}": y for j, y in enumerate(ys)})
        files[cid] = {"id": cid, "graph": str(d / "graph.json"), "weights": str(d / "weights.safetensors"),
                      "batches": str(d / "batches.npz")}
    return Run(Path(workdir), steps, graphs, files)


def run_workers(run: Run, targets: list[str], dtypes: list[str], opt_names: list[str], jobs: int = 2,
                on_done=None) -> dict[str, Path]:
    """The reference and every target, ``jobs`` subprocesses at a time; ``{target: output dir}``."""
    from .runner import TARGETS

    def starter(target):
        backend, env = (REFERENCE, {}) if target == REFERENCE else TARGETS[target]
        request = {"backend": backend, "dtypes": ["float64"] if target == REFERENCE else dtypes,
                   "steps": run.steps, "optimizers": opt_names, "cases": list(run.files.values()),
                   "control": bool(targets) and target == targets[0]}
        return lambda: workers.start("lightnets.parity.train", request, run.workdir / "out" / target, env=env)

    order = [REFERENCE, *targets]
    done = workers.run_all([(t, starter(t)) for t in order], parallel=jobs,
                           on_done=(lambda key, d: on_done(key)) if on_done else None)
    outs = {}
    for target, d in done.items():
        if not d.ok and not (d.out / "status.json").exists():
            (d.out / "status.json").write_text(json.dumps({"__worker__": {"ok": False, "error": d.failure()}}))
        outs[target] = d.out
    return outs


def _load_trace(out: Path, dtype: str, case: str, opt: str):
    arrays, err = load(out, dtype, f"{case}.{opt}")
    if arrays is None:
        return None, err
    steps = {}
    for k, v in arrays.items():
        if "/" in k:
            t, name = k.split("/", 1)
            steps.setdefault(int(t), {})[name] = v
    return {"weights": [steps[t] for t in sorted(steps)], "losses": arrays["losses"]}, ""


def _compare(a: dict, b: dict, excluded: set[str], order: list[str]):
    """Per step: (worst judged rel error, its tensor, worst excluded rel error, {tensor: rel error} in graph
    order) of trace ``a`` against ``b``."""
    rows = []
    for wa, wb in zip(a["weights"], b["weights"], strict=True):
        errs = {k: rel_error(wa[k], wb[k]) for k in order}
        judged = {k: e for k, e in errs.items() if k not in excluded}
        worst = max(judged, key=lambda k: (judged[k] != judged[k], judged[k]))
        rows.append((judged[worst], worst, max((errs[k] for k in excluded), default=float("nan")), errs))
    return rows


def compare(run: Run, outs: dict[str, Path], dtypes: list[str], opt_names: list[str]) -> list[TrainResult]:
    """Every target against the reference, and every pair of targets, per case, optimizer and dtype."""
    results = []
    for cid, graph in run.cases.items():
        null = set(backward.null_gradient_params(graph))
        order = [p.name for p in graph.params]
        for opt in opt_names:
            excluded = null if optimizers()[opt].kind == "adamw" else set()
            ref, ref_err = _load_trace(outs[REFERENCE], "float64", cid, opt)
            for dtype in dtypes:
                got = {}
                for target in outs:
                    if target == REFERENCE:
                        continue
                    r = TrainResult(cid, opt, target, dtype)
                    trace, err = _load_trace(outs[target], dtype, cid, opt)
                    if ref is None or trace is None:
                        r.status, r.error = "error", (f"reference: {ref_err}" if ref is None else err)
                        results.append(r)
                        continue
                    got[target] = trace
                    results.append(_judge(r, _compare(trace, ref, excluded, order),
                                          [abs(float(x) - float(y)) for x, y in zip(trace["losses"], ref["losses"],
                                                                                     strict=True)], excluded))
                control = [t for t in got if (outs[t] / dtype / f"{cid}.{opt}.control.npz").exists()]
                for target in control:  # the training map's own amplification of a 1e-13 difference
                    trace, err = _load_trace(outs[target], dtype, cid, f"{opt}.control")
                    r = TrainResult(cid, opt, f"{target}~{target}*", dtype)
                    if trace is None:
                        r.status, r.error = "error", err
                        results.append(r)
                        continue
                    r = _judge(r, _compare(trace, got[target], excluded, order),
                               [abs(float(x) - float(y)) for x, y in zip(trace["losses"], got[target]["losses"],
                                                                          strict=True)], excluded)
                    r.status, r.divergence = "info", None
                    r.error = f"control: {target} from weights perturbed by {CONTROL:.0e} relative"
                    results.append(r)
                for a, b in itertools.combinations(sorted(got), 2):
                    r = TrainResult(cid, opt, f"{a}~{b}", dtype)
                    results.append(_judge(r, _compare(got[a], got[b], excluded, order),
                                          [abs(float(x) - float(y)) for x, y in zip(got[a]["losses"],
                                                                                     got[b]["losses"], strict=True)],
                                          excluded))
    return results


def _judge(r: TrainResult, rows, loss_err, excluded) -> TrainResult:
    r.per_step = [e for e, _, _, _ in rows]
    r.worst = [k for _, k, _, _ in rows]
    r.loss_err = loss_err
    r.null_err = max((n for _, _, n, _ in rows), default=float("nan")) if excluded else float("nan")
    effective = T.effective_dtype(r.target, r.dtype)
    judged = effective in TRAIN_REL
    r.tol = TRAIN_REL[effective] if judged else FLOAT32_MARK
    for t, (_, _, _, errs) in enumerate(rows, start=1):
        over = [(k, e) for k, e in errs.items() if k not in excluded and not e <= r.tol]
        if over:
            # the first tensor in graph order over the bound
            k, e = over[0]
            r.divergence = {"step": t, "param": k, "rel_err": e}
            break
    r.status = ("fail" if r.divergence else "pass") if judged else "info"
    return r


def cleanup(outs: dict[str, Path]) -> None:
    """Delete the per-step weight files (large) once compared; logs and status stay."""
    for out in outs.values():
        for d in out.iterdir():
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)


def run_train_matrix(models, targets, dtypes, workdir: Path, steps: int = 5, size: int = DEFAULT_SIZE,
                     batch: int = BATCH, opt_names=None, jobs: int = 2, on_done=None,
                     graphs: dict[str, Graph] | None = None) -> list[TrainResult]:
    """The whole profile: prepare, run the reference and the targets, compare, clean up."""
    unknown = [t for t in targets if t not in TRAIN_TARGETS]
    if unknown:
        raise optim.TrainingSpecError(f"target(s) {unknown} cannot train (inference only or unknown); choose from "
                                      f"{', '.join(TRAIN_TARGETS)}")
    opt_names = list(opt_names or optimizers())
    run = prepare(models, workdir, steps, size, batch, graphs=graphs)
    outs = run_workers(run, list(targets), list(dtypes), opt_names, jobs, on_done)
    try:
        return compare(run, outs, list(dtypes), opt_names)
    finally:
        cleanup(outs)


# --- report -------------------------------------------------------------------------------------------
def _fmt(v) -> str:
    return "-" if v != v else f"{v:.1e}"


def rows(results: list[TrainResult]) -> list[list[str]]:
    out = []
    for r in results:
        note = r.error.splitlines()[0][:120] if r.error else ""
        if r.divergence:
            d = r.divergence
            note = f"first over {r.tol:.0e}: step {d['step']} {d['param']} ({d['rel_err']:.1e})"
        elif r.status == "pass":
            note = f"worst: {r.worst[-1]}" if r.worst else ""
        if r.null_err == r.null_err:
            note += f"; null-gradient params (not judged) {r.null_err:.1e}"
        out.append([r.case, r.optimizer, r.target, r.dtype, " ".join(_fmt(e) for e in r.per_step),
                    _fmt(max(r.loss_err, default=float("nan"))), r.status, note])
    return out


HEADER = ["case", "optimizer", "target", "dtype", "rel err after each step", "max |loss err|", "status", "notes"]


def print_summary(results: list[TrainResult], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="lightnets train-step parity: weights + BN statistics per tensor after every step")
    for col in HEADER:
        table.add_column(col)
    style = {"pass": "green", "fail": "bold red", "error": "bold red", "info": "dim"}
    for row in rows(results):
        row[6] = f"[{style[row[6]]}]{row[6]}[/]"
        table.add_row(*row)
    console.print(table)


def write_reports(results: list[TrainResult], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "note": PROFILE_NOTE, "optimizers": {k: repr(v) for k, v in optimizers().items()},
               "results": [asdict(r) for r in results]}
    W.atomic_write(out / "train-report.json", lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1)))
    lines = ["# lightnets train-step parity", "", *[f"- {k}: {v}" for k, v in meta.items()], "",
             f"Optimizers: {', '.join(f'{k} = {v!r}' for k, v in optimizers().items())}; schedule "
             f"{schedule(meta.get('steps', 5))!r}. Errors: max |w - ref| / max |ref| per tensor (weights and BN "
             "statistics), the worst tensor after each step; ref is the float64 numpy reference, or the other "
             f"target for pairs. float64 bound {TRAIN_REL['float64']:.0e}; float32 is reported (info).", "",
             PROFILE_NOTE, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    W.atomic_write(out / "train-report.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


def cli(args, console) -> int:
    """``lightnets parity --train-steps N``: the profile over ``--models`` (default: DEFAULT_MODELS when
    'all'), the training targets of ``--backends``, ``--dtype``, ``--size`` (64 px when left at the
    matrix default 224)."""
    import tempfile

    from rich.progress import Progress

    models = list(DEFAULT_MODELS) if list(args.models) == ["all"] else _ids(args.models)
    size = DEFAULT_SIZE if args.size == 224 else args.size
    skipped = [t for t in args.backends if t not in TRAIN_TARGETS]
    targets = [t for t in args.backends if t in TRAIN_TARGETS]
    if skipped:
        console.print(f"parity --train-steps: skipping {', '.join(skipped)} (cannot train)")
    console.print(f"train-step parity: {len(models)} models x {', '.join(targets)} x {', '.join(args.dtype)}, "
                  f"{args.train_steps} steps of {', '.join(optimizers())}, {size}px, batch {BATCH}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lightnets-train-") as work, Progress(console=console) as bar:
        task = bar.add_task("workers", total=len(targets) + 1)
        results = run_train_matrix(models, targets, args.dtype, Path(work), steps=args.train_steps, size=size,
                                   jobs=args.jobs, on_done=lambda target: bar.advance(task))
    elapsed = time.perf_counter() - t0
    meta = {"models": ",".join(models), "targets": ",".join(targets), "dtypes": ",".join(args.dtype),
            "steps": args.train_steps, "input_size": size, "batch": BATCH, "num_classes": NUM_CLASSES,
            "wall_time_s": round(elapsed, 1), "python": sys.version.split()[0]}
    print_summary(results, console)
    write_reports(results, meta, Path(args.out))
    failed = sum(r.failed for r in results)
    console.print(f"{len(results)} comparisons, {failed} failed, {elapsed:.0f} s; wrote {args.out}/train-report.md, "
                  "train-report.json")
    return 1 if failed else 0


def _ids(spec) -> list[str]:
    ids = []
    for item in spec:
        ids += registry.list_models(item) if item in registry.families() else [item]
    for m in ids:
        registry.entry(m)  # UnknownModelError with suggestions
    return list(dict.fromkeys(ids))


if __name__ == "__main__":
    sys.exit(main())
