"""The parity suite: op cases and a quick model subset in every target, the locator, the report."""

import json

import numpy as np
import profiles
import pytest
from planted import plant_and_locate

from lightnets import cli, registry
from lightnets.parity import cases as C
from lightnets.parity import runner
from lightnets.parity import tolerances as T

TARGETS = list(runner.TARGETS)
QUICK = profiles.MATRIX_MODELS  # the model subset of the matrix in `make test`
TRAIN_TARGETS = [t for t in TARGETS if t not in runner.INFERENCE_ONLY]  # train-mode BN and gradients


# The runtimes whose per-model cost is a conversion or a trace (a TFLite conversion, a JAX compile: ~30 s a
# model here) and keras on torch (keras' layer graph over torch ops, ~3x torch's time) run every op case but
# one model and its backbone in `make test`; every id is `make parity`.
SLOW_RUNTIMES = ("tflite", "keras-jax", "keras-torch")
# that one model, and the probe case (its per-node curve re-runs it in every target and dtype): the quick
# model of fewest parameters (mobilenet_v1_025: ghostnet_050 took ~4 min in keras-jax float64 alone)
CHEAPEST = min(QUICK, key=lambda m: registry.get_spec(m).num_params())
# the backbone (every feature map an output) of that model in every target; the taps of every family are
# tests/test_features.py's (against timm, torch and paddle), every backbone in every target `make parity`'s
BACKBONES = [CHEAPEST]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    ops = C.op_cases()
    # 64 px, or where every BN sees >= 2x2 (profiles.train_size: ghostnet_v2_100 at 128)
    models = [c for m in QUICK for c in C.model_cases([m], input_size=profiles.train_size(m), num_classes=10)]
    # the backbone of CHEAPEST: every feature map an output
    backbones = C.feature_cases(list(BACKBONES), input_size=64, num_classes=10)
    kinds = {c.id: "op" for c in ops}
    workdir = tmp_path_factory.mktemp("parity")
    results = runner.run_matrix(ops + models + backbones, [t for t in TARGETS if t not in SLOW_RUNTIMES],
                                ["float32", "float64"], workdir / "main", kinds=kinds, train=True, probe=CHEAPEST)
    slow = [t for t in TARGETS if t in SLOW_RUNTIMES]
    if slow:  # beside torch, so that their gradients are compared with a framework's
        one = [c for c in models + backbones if c.id in (CHEAPEST, CHEAPEST + C.FEATURES_SUFFIX)]
        more = runner.run_matrix(ops + one, ["torch", *slow], ["float32", "float64"], workdir / "slow", kinds=kinds,
                                 train=True)
        results += [r for r in more if any(t in r.target.split("~") for t in slow)]
    return results


def test_every_op_and_quick_model_agrees_in_every_target(matrix):
    failed = [(r.kind, r.case, r.target, r.dtype, r.rel_err, r.error[:200]) for r in matrix if r.failed]
    assert failed == []
    seen = {(r.kind, r.target) for r in matrix}
    for target in TARGETS:
        assert {("op", target), ("model", target), ("features", target)} <= seen
    for target in TRAIN_TARGETS:
        assert {("train", target), ("stats", target)} <= seen


# The every-id matrix of `make test` runs the classifier of the smallest id of each variant (profiles.every_id) in
# torch and paddle (the two fast ones); every id, keras, the runtimes and the backbones of every id are `make
# parity` (and this test with LIGHTNETS_SLOW=1) - the `matrix` fixture above runs the smallest id of each of
# profiles.FULL_FAMILIES in every target.
EVERY_ID_TARGETS = TARGETS if profiles.SLOW else [t for t in ("torch", "paddle") if t in TARGETS]


def test_every_model_agrees_with_the_reference_in_every_target(tmp_path):
    """Every registered id (with LIGHTNETS_SLOW=1 also its backbone, every feature map, and every target) x
    float32/float64 at a small input, 32 px (or the next size the id takes; issue: all families)."""
    at = {m: profiles.input_size(m, 32) for m in registry.list_models()}  # ghostnet_v2_*: 33
    models = [c for m in profiles.every_id() for c in C.model_cases([m], input_size=at[m], num_classes=10)]
    backbones = [c for m in registry.list_models() if profiles.SLOW
                 for c in C.feature_cases([m], input_size=at[m], num_classes=10)]
    results = runner.run_matrix(models + backbones, EVERY_ID_TARGETS, ["float32", "float64"], tmp_path, locate=True)
    failed = [(r.case, r.target, r.dtype, r.rel_err, r.divergence, r.error[:200]) for r in results if r.failed]
    assert failed == []
    assert {(r.case, r.target) for r in results if r.kind == "model"} == {
        (m, t) for m in profiles.every_id() for t in EVERY_ID_TARGETS}
    assert {(r.case, r.target) for r in results if r.kind == "features"} == {
        (m + C.FEATURES_SUFFIX, t) for m in registry.list_models() for t in EVERY_ID_TARGETS if profiles.SLOW}


def test_gradients_agree_across_backends_in_float64(matrix):
    grads = [r for r in matrix if r.kind == "grad" and r.dtype == "float64" and r.case in QUICK]
    backbone_grads = [r for r in matrix if r.kind == "grad" and r.dtype == "float64"
                      and r.case.endswith(C.FEATURES_SUFFIX)]
    fast = [t for t in TRAIN_TARGETS if t not in SLOW_RUNTIMES]
    slow = len(TRAIN_TARGETS) - len(fast)  # the slow runtimes and torch: every pair on one model

    def pairs(n):
        return n * (n - 1) // 2
    assert len(grads) == len(QUICK) * pairs(len(fast)) + pairs(slow + 1)
    # gradients of the probe-weighted sum over every feature map
    assert len(backbone_grads) == len(BACKBONES) * pairs(len(fast)) + pairs(slow + 1)
    exact = [r for r in grads if T.effective_dtype(r.target, "float64") == "float64"]
    assert len(exact) >= len(QUICK) * 3  # torch, keras (tf), paddle: every pair
    exact += [r for r in backbone_grads if T.effective_dtype(r.target, "float64") == "float64"]
    assert max(r.rel_err for r in exact) <= T.GRAD_REL["float64"]


def test_probe_case_has_a_per_node_curve(matrix):
    curves = [r for r in matrix if r.per_node]
    assert curves and all(len(r.per_node) == len(registry.get_spec(r.case, input_size=64).nodes) for r in curves)


def test_locator_names_a_planted_wrong_pad(tmp_path):
    """Change one conv's pads in the graph the worker builds; the locator must name that node."""
    # same output shape, shifted window
    result, first, per_node = plant_and_locate(tmp_path, "blocks.4.dw.conv", {"pads": [2, 0, 1, 1]}, "torch", "float64")
    assert result.failed and result.rel_err > 1e-3
    assert first["node"] == "blocks.4.dw.conv" and first["op"] == "conv2d"
    assert first["attrs"]["pads"] == [1, 1, 1, 1]  # the reference's
    names = [n for n, _, _ in per_node]
    assert all(e <= T.MODEL_REL["float64"] for _, _, e in per_node[: names.index("blocks.4.dw.conv")])


def test_cli_writes_reports_and_exits_1_on_unexpected_pass(tmp_path, monkeypatch, capsys):
    args = ["parity", "--models", "mobilenet_v1_025", "--backends", "torch", "--dtype", "float64", "--no-ops",
            "--size", "32", "--num-classes", "10", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"report.md", "report.json", "divergence.png"}
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["results"][0]["case"] == "mobilenet_v1_025"
    assert "mobilenet_v1_025" in (tmp_path / "report.md").read_text()
    monkeypatch.setitem(T.EXPECTED_FAILURES, ("mobilenet_v1_025", "torch", "float64"), "planted for this test")
    assert cli.main(args) == 1
    assert "xpass" in capsys.readouterr().out


def test_cli_bad_arguments_exit_2_with_usage(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["parity", "--dtype", "float16"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: lightnets parity" in err and "choose from float32, float64" in err


def test_rel_error_is_relative_to_the_reference_magnitude():
    ref = np.array([10.0, -20.0])
    assert T.rel_error(ref + 0.2, ref) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="differs from the reference shape"):
        T.rel_error(np.zeros(3), ref)


def test_op_cases_cover_every_op():
    """Every op of the vocabulary has a conformance case (so every target runs it)."""
    from lightnets import ops

    used = {n.op for c in C.op_cases() for n in c.graph.nodes}
    assert used == set(ops.OPS), set(ops.OPS) - used


def test_float32_train_logits_are_held_to_the_graphs_own_conditioning(tmp_path):
    """A float32 train-mode logit over MODEL_REL passes within KAPPA_FACTOR x kappa (the error of storing
    every tensor as float32) and fails beyond it; float64 keeps its bound. mobileone_s0 at 64 px, batch 2: kappa is
    1.5e-4, over the float32 bound by itself."""
    from lightnets import reference
    from lightnets import weights as W

    case = C.model_cases(["mobileone_s0"], input_size=64, num_classes=10)[0]
    m = runner.Matrix([case], tmp_path)
    files = m.files[case.id]
    w, x = W.load(files["weights"]), np.load(files["input"])
    exact, stats = reference.train_forward(case.graph, w, x)
    stored, _ = reference.train_forward(case.graph, w, x, stored_as="float32")
    kappa = T.rel_error(stored, exact)
    assert T.MODEL_REL["float32"] < kappa < 1e-3
    scale = float(np.max(np.abs(exact)))
    stat_arrays = {f"stat:{k}": v for k, v in stats.items()}
    off = lambda k: {"train:output": exact + k * kappa * scale, **stat_arrays}  # noqa: E731 -- k x kappa
    for dtype, k, status in [("float32", 1.0, "pass"), ("float32", T.KAPPA_FACTOR - 1, "pass"),
                             ("float32", T.KAPPA_FACTOR + 1, "fail"),
                             ("float64", 1.0, "fail")]:
        train = [r for r in m._compare_train(case.id, dtype, {"torch": off(k)}) if r.kind == "train"]
        assert [r.status for r in train] == [status], (dtype, k, train)
    # eval logits likewise (kappa of reference.run stored as float32: 1.5e-5 here, so 17x is over MODEL_REL too)
    eval_exact = reference.run(case.graph, w, x)
    eval_kappa = T.rel_error(reference.run(case.graph, w, x, stored_as="float32"), eval_exact)
    assert T.MODEL_REL["float32"] / (T.KAPPA_FACTOR + 1) < eval_kappa < T.MODEL_REL["float32"]
    for k, status in [(T.KAPPA_FACTOR - 1, "pass"), (T.KAPPA_FACTOR + 1, "fail")]:
        r = runner.Result("model", case.id, "torch", "float32", rel_err=k * eval_kappa, tol=T.MODEL_REL["float32"])
        assert runner._judge(m._conditioned(r, eval_exact, train=False)).status == status, (k, r)
