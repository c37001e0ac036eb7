"""The parity matrix: every case in every target (one subprocess each), compared with the reference.

Targets are backends in a given environment: ``torch``, ``keras`` (on tensorflow), ``keras-torch``
(keras with ``KERAS_BACKEND=torch``), ``keras-jax`` (``KERAS_BACKEND=jax``, x64 enabled), ``paddle``,
``onnxruntime`` (ONNX written from the IR) and ``tflite`` (the keras model converted to TFLite, run by
LiteRT): the rows of ``lightnets.frameworks.FRAMEWORKS``. The last two are inference only, so they are never
asked for train-mode BN or gradients (``INFERENCE_ONLY``). Inputs, weights and graphs go to the workers
through files; outputs come back the same way; a multi-output case (a backbone, ``<id>:features``) is
compared output by output. When a case exceeds its tolerance the runner asks for every node's output and
names the first node that diverges.

``mode="inference"`` builds every target's model with its batch norms folded into the convs
(``lightnets.build(..., mode="inference")``) and still compares it with the float64 reference of the
UNFOLDED graph; the locator then compares a folded conv's output with its batch norm's reference output.
``mode="fast"`` / ``"compiled"`` run the folded model through ``lightnets.optimize(model, compile=False /
True)`` (each backend's fast path) under the same bounds; the locator walks the eager folded layers.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lightnets import reference, workers
from lightnets import weights as W
from lightnets.frameworks import INFERENCE_ONLY, PARITY_TARGETS
from lightnets.transforms import RepSum, foldable_batch_norms, reparameterizable_sums

from . import tolerances as T
from .cases import Case, make_input
from .worker import load, unpack

TARGETS = PARITY_TARGETS  # target -> (backend, worker env): lightnets.frameworks' table
# "fast"/"compiled": the folded model through lightnets.optimize(compile=False/True), vs the unfolded reference
MODES = ("train", "inference", "fast", "compiled")
THREAD_ENV = workers.thread_env(1)  # every parity worker runs single-threaded (lightnets.workers)


@dataclass
class Result:
    """One comparison: a case in a target (or a pair of targets) at a dtype."""

    kind: str  # op | model | pair | train | stats | grad
    case: str
    target: str  # a target, or "a~b" for a pair
    dtype: str
    abs_err: float = float("nan")
    rel_err: float = float("nan")
    tol: float = float("nan")
    status: str = "pass"  # pass | fail | error | xfail | xpass | info (reported, not judged)
    error: str = ""
    divergence: dict | None = None
    per_node: list = field(default_factory=list)  # [(node, op, rel_err)] along depth, when located

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "error", "xpass")


def _judge(r: Result) -> Result:
    if r.status == "info":
        return r
    expected = T.EXPECTED_FAILURES.get((r.case, r.target, r.dtype))
    bad = r.status == "error" or not r.rel_err <= r.tol
    if expected:
        r.status = "xfail" if bad else "xpass"
        r.error = r.error or f"expected failure ({expected}) passed: remove it from EXPECTED_FAILURES"
    else:
        r.status = "error" if r.status == "error" else ("fail" if bad else "pass")
    return r


class Matrix:
    """Prepares files for the cases, runs the workers, compares, locates divergences."""

    def __init__(self, cases: list[Case], workdir: Path, kinds: dict[str, str] | None = None, seed: int = 0,
                 mode: str = "train"):
        if mode not in MODES:
            raise ValueError(f"unknown parity mode {mode!r}; choose from {', '.join(MODES)}")
        self.cases = {c.id: c for c in cases}
        self.kinds = kinds or {}
        self.mode = mode
        self.workdir = Path(workdir)
        self.files: dict[str, dict] = {}
        self.golden: dict[str, list[np.ndarray]] = {}  # every output of the case, in order
        self._kappas: dict[tuple[str, bool], float] = {}  # (case, train) -> float32-storage error of its logits
        for i, c in enumerate(cases):
            d = self.workdir / "cases" / c.id
            d.mkdir(parents=True, exist_ok=True)
            (d / "graph.json").write_text(c.graph.to_json())
            w = W.init_weights(c.graph, seed=seed + i)
            W.save(w, d / "weights.safetensors", overwrite=True)
            x = make_input(c.graph, c.batch, seed=seed + i)
            np.save(d / "input.npy", x)
            rng = np.random.default_rng(seed + i + 1)
            probes = [rng.standard_normal((c.batch, *shape)) for shape in c.graph.output_shapes]
            if c.graph.multi_output:  # one probe per output: gradients of the sum over every output
                probe_file = d / "probe.npz"
                np.savez(probe_file, *probes)
            else:
                probe_file = d / "probe.npy"
                np.save(probe_file, probes[0])
            self.files[c.id] = {"id": c.id, "graph": str(d / "graph.json"), "weights": str(d / "weights.safetensors"),
                                "input": str(d / "input.npy"), "probe": str(probe_file)}
            y = reference.run(c.graph, w, x)
            self.golden[c.id] = y if c.graph.multi_output else [y]

    # --- workers ------------------------------------------------------------------------------
    def launch(self, target: str, case_ids: list[str], dtypes: list[str], tag: str, return_all=False,
               train=False) -> workers.Worker:
        """Start the parity worker of ``target`` on ``case_ids`` (the shared launcher: one thread, pinned env)."""
        backend, env = TARGETS[target]
        out = self.workdir / "out" / tag / target
        if train and self.mode != "train":
            raise ValueError("train-mode BN and gradients need mode='train' (folded models have no batch norms)")
        train = train and target not in INFERENCE_ONLY
        request = {"backend": backend, "dtypes": dtypes, "train": train, "mode": self.mode,
                   "cases": [{**self.files[c], "return_all": return_all} for c in case_ids]}
        return workers.start("lightnets.parity.worker", request, out, threads=1, env=env)

    def run_workers(self, targets: list[str], case_ids: list[str], dtypes: list[str], tag: str, jobs: int = 2,
                    on_done: Callable[[str], None] | None = None, **kw) -> dict[str, Path]:
        """Run one worker per target, ``jobs`` at a time; return each target's output directory."""
        def done(target: str, w: workers.WorkerDone) -> None:
            if w.returncode != 0 and not (w.out / "status.json").exists():
                (w.out / "status.json").write_text(json.dumps({"__worker__": {
                    "ok": False, "error": f"worker exited with {w.returncode}: {w.log.strip()[-800:]}"}}))
            if on_done:
                on_done(target)

        jobs_ = [(t, lambda t=t: self.launch(t, case_ids, dtypes, tag, **kw)) for t in targets]
        return {t: w.out for t, w in workers.run_all(jobs_, parallel=jobs, on_done=done).items()}

    # --- comparison ---------------------------------------------------------------------------
    def _tol(self, case_id: str, dtype: str, target: str) -> float:
        table = T.OP_REL if self.kinds.get(case_id) == "op" else T.MODEL_REL
        return table[T.effective_dtype(target, dtype)]

    def compare(self, outs: dict[str, Path], dtypes: list[str], train: bool = False) -> list[Result]:
        results: list[Result] = []
        for case_id, dtype in itertools.product(self.cases, dtypes):
            kind = self.kinds.get(case_id, "features" if self.cases[case_id].graph.multi_output else "model")
            ref = self.golden[case_id]
            got = {}
            for target, out in outs.items():
                tol = self._tol(case_id, dtype, target)
                arrays, err = load(out, dtype, case_id)
                if arrays is not None and len(unpack(arrays, "output")) != len(ref):
                    arrays, err = None, (f"the target returned {len(unpack(arrays, 'output'))} outputs, the graph "
                                         f"has {len(ref)}")
                if arrays is None:
                    results.append(_judge(Result(kind, case_id, target, dtype, tol=tol, status="error", error=err)))
                    continue
                got[target] = arrays
                r = _compared(Result(kind, case_id, target, dtype, tol=tol), _outputs(arrays, "output", ref), ref,
                              self.cases[case_id])
                results.append(_judge(self._conditioned(r, ref[0], train=False)))
            for a, b in itertools.combinations(sorted(got), 2):
                ya, yb = _outputs(got[a], "output", ref), _outputs(got[b], "output", ref)
                abs_errs = [T.abs_error(u, v) for u, v in zip(ya, yb, strict=True)]
                rels = [e / (float(np.max(np.abs(r))) or 1.0) for e, r in zip(abs_errs, ref, strict=True)]
                r = Result("pair", case_id, f"{a}~{b}", dtype, max(abs_errs), max(rels),
                           2 * self._tol(case_id, dtype, f"{a}~{b}"))  # two targets' errors
                results.append(_judge(self._conditioned(r, ref[0], train=False, targets=2)))
            if train:
                trained = {t: a for t, a in got.items() if t not in INFERENCE_ONLY}
                results += self._compare_train(case_id, dtype, trained)
        return results

    def _compare_train(self, case_id: str, dtype: str, got: dict[str, dict]) -> list[Result]:
        case = self.cases[case_id]
        w = W.load(self.files[case_id]["weights"])
        out, stats = reference.train_forward(case.graph, w, np.load(self.files[case_id]["input"]))
        out = out if case.graph.multi_output else [out]
        results = []
        for target, arrays in got.items():
            tol = self._tol(case_id, dtype, target)
            r = Result("train", case_id, target, dtype, tol=tol)
            if case.graph.multi_output:  # train-mode feature maps: judged where tolerances say (float64 only)
                r.tol = T.TRAIN_FEATURES_REL.get(T.effective_dtype(target, dtype), float("nan"))
                r.status = "pass" if r.tol == r.tol else "info"
            r = self._conditioned(_compared(r, _outputs(arrays, "train:output", out), out, case), out[0], train=True)
            results.append(_judge(r))
            errs = [T.rel_error(arrays[f"stat:{k}"], v) for k, v in stats.items()] or [0.0]
            results.append(_judge(Result("stats", case_id, target, dtype, rel_err=max(errs), tol=tol)))
        for a, b in itertools.combinations(sorted(got), 2):
            grad_tol = T.GRAD_REL.get(T.effective_dtype(f"{a}~{b}", dtype), float("nan"))
            keys = sorted(k for k in got[a] if k.startswith("grad:"))
            missing = set(keys) ^ {k for k in got[b] if k.startswith("grad:")}
            if missing:
                results.append(_judge(Result("grad", case_id, f"{a}~{b}", dtype, tol=grad_tol, status="error",
                                             error=f"gradient keys differ: {sorted(missing)[:5]}")))
                continue
            errs = [T.rel_error(got[a][k], got[b][k]) for k in keys]
            worst = int(np.argmax(errs)) if errs else 0
            r = Result("grad", case_id, f"{a}~{b}", dtype, rel_err=max(errs, default=0.0), tol=grad_tol,
                       status="pass" if grad_tol == grad_tol else "info")
            results.append(_judge(r))
            if r.failed or r.status == "info":
                r.error = f"worst gradient: {keys[worst][5:]}"
        return results

    def _conditioned(self, r: Result, exact: np.ndarray, train: bool, targets: int = 1) -> Result:
        """``r`` (a single-output model's float32 logits, or a pair of ``targets`` = 2) that misses its bound, held to
        ``targets`` x ``KAPPA_FACTOR`` x the graph's own float32 conditioning instead (``tolerances.KAPPA_FACTOR``)."""
        if (r.rel_err <= r.tol or self.kinds.get(r.case) == "op" or self.cases[r.case].graph.multi_output
                or T.effective_dtype(r.target, r.dtype) != "float32"):
            return r
        r.tol = max(r.tol, targets * T.KAPPA_FACTOR * self._kappa(r.case, exact, train))
        return r

    def _kappa(self, case_id: str, exact: np.ndarray, train: bool) -> float:
        """The error of the case's logits (train mode: on batch statistics) with every tensor stored as float32
        (``exact``: the float64 ones): the float32 error no float32 kernel can avoid on this graph."""
        if (case_id, train) not in self._kappas:
            files, graph = self.files[case_id], self.cases[case_id].graph
            w, x = W.load(files["weights"]), np.load(files["input"])
            stored = (reference.train_forward(graph, w, x, stored_as="float32")[0] if train
                      else reference.run(graph, w, x, stored_as="float32"))
            self._kappas[case_id, train] = T.rel_error(stored, exact)
        return self._kappas[case_id, train]

    # --- divergence locator -------------------------------------------------------------------
    def locate(self, target: str, dtype: str, case_ids: list[str], out: Path) -> dict[str, tuple[dict | None, list]]:
        """Per-node errors along depth for ``case_ids`` in ``target``, and the first node over tolerance."""
        located = {}
        for case_id in case_ids:
            arrays, err = load(out, dtype, case_id)
            if arrays is None:
                located[case_id] = ({"error": err}, [])
                continue
            graph = self.cases[case_id].graph
            ref_all = reference.run(graph, W.load(self.files[case_id]["weights"]),
                                    np.load(self.files[case_id]["input"]), return_all=True)
            tol = self._tol(case_id, dtype, target)
            # folded: a BN's value is its conv's output; a folded conv, and a branch that reparameterize collapsed
            # into its sum's conv, have no value of their own
            folds = foldable_batch_norms(graph) if self.mode != "train" else {}
            skip = set(folds.values()) | {n for s in reparameterizable_sums(graph).values() if self.mode != "train"
                                          and isinstance(s, RepSum) for n in s.removed}
            per_node, first = [], None
            for node in graph.nodes:
                if node.name in skip:
                    continue
                got = arrays[f"node:{folds.get(node.name, node.name)}"]
                rel = T.rel_error(got, ref_all[node.name])
                per_node.append((node.name, node.op, rel))
                if first is None and not rel <= tol:
                    first = {"node": node.name, "op": node.op, "attrs": _jsonable(dict(node.attrs)),
                             "inputs": list(node.inputs), "rel_err": rel,
                             "abs_err": T.abs_error(got, ref_all[node.name])}
                    if node.name in folds:
                        first["folded_into"] = folds[node.name]
            located[case_id] = (first, per_node)
        return located


def _outputs(arrays: dict, key: str, ref: list) -> list[np.ndarray]:
    """A worker's outputs under ``key`` (one per output of the case); ValueError if their number differs."""
    got = unpack(arrays, key)
    if len(got) != len(ref):
        raise ValueError(f"the target returned {len(got)} outputs, the graph has {len(ref)}")
    return got


def _compared(r: Result, got: list[np.ndarray], ref: list[np.ndarray], case: Case) -> Result:
    """``r`` with the errors of every output (the worst one counts; a multi-output case names it)."""
    rels = [T.rel_error(g, e) for g, e in zip(got, ref, strict=True)]
    r.rel_err = max(rels)
    r.abs_err = max(T.abs_error(g, e) for g, e in zip(got, ref, strict=True))
    if len(rels) > 1 and not r.rel_err <= r.tol:
        worst = int(np.argmax(rels))
        r.error = f"worst output {worst} ({case.graph.output_names[worst]})"
    return r


def _jsonable(attrs: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}


def run_matrix(cases: list[Case], targets: list[str], dtypes: list[str], workdir: Path, kinds=None,
               jobs: int = 2, train: bool = False, locate: bool = True, probe: str | None = None,
               on_done: Callable[[str], None] | None = None, mode: str = "train") -> list[Result]:
    """Run ``cases`` in every target and dtype; compare with the reference and pairwise.

    Failing cases (and the ``probe`` case, for the depth plot) are re-run with every node's output
    and get their first diverging node and per-node error curve attached. ``mode="inference"``
    runs the BN-folded models against the unfolded reference (not with ``train``).
    """
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ValueError(f"unknown parity target(s) {unknown}; choose from {', '.join(TARGETS)}")
    if train and mode != "train":
        raise ValueError("train=True needs mode='train': folded models have no batch norms to train")
    m = Matrix(cases, workdir, kinds, mode=mode)
    outs = m.run_workers(targets, list(m.cases), dtypes, "main", jobs=jobs, on_done=on_done, train=train)
    results = m.compare(outs, dtypes, train=train)
    if locate:
        wanted: dict[tuple[str, str], set[str]] = {}
        for r in results:
            if r.kind in ("op", "model", "features") and (r.failed or r.case == probe):
                wanted.setdefault((r.target, r.dtype), set()).add(r.case)
        for (target, dtype), ids in sorted(wanted.items()):
            out = m.run_workers([target], sorted(ids), [dtype], f"locate-{dtype}", jobs=1, return_all=True)[target]
            for case_id, (first, per_node) in m.locate(target, dtype, sorted(ids), out).items():
                for r in results:
                    if r.kind in ("op", "model", "features") and (r.case, r.target, r.dtype) == (case_id, target,
                                                                                                   dtype):
                        r.divergence = first if r.failed else None
                        r.per_node = per_node
    return results


def to_json(results: list[Result]) -> list[dict]:
    return [asdict(r) for r in results]
