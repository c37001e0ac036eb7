"""Reparameterisable nets (issue 23): ``lightnets.transforms.reparameterize`` and the MobileOne / RepGhost families.

The transform collapses a sum of ``batch_norm(conv2d(x))`` branches (kxk and 1x1 padded into its centre) and
``batch_norm(x)`` (identity) into one conv with bias; a sum it cannot collapse is left alone, or named when asked
for explicitly. Checked: the reparameterised graph against the train graph by the float64 reference (data-calibrated
BN and tiny running variances) on the smallest id of each family (every id with LIGHTNETS_SLOW=1); parameter counts
of both forms against timm's twins and timm's ``reparameterize_model``; MACs against the papers; the zoo import of
timm's reparameterised state dict (data-calibrated BN) against our transform of the train import.
"""

import numpy as np
import profiles
import pytest

import lightnets
from lightnets import GraphBuilder, reference, registry, zoo
from lightnets import weights as W
from lightnets.errors import SpecError
from lightnets.graph import INPUT
from lightnets.numerics import rel_error
from lightnets.transforms import RepSum, inference_form, reparameterizable_sums, reparameterize

FAMILIES = ("mobileone", "repghost")
# trainable parameters at 1000 classes: (train form = timm mobileone_* / repghostnet_*, the form equal to timm's
# reparameterize_model of it), measured on timm 1.0.31; docs/design.md §3
PARAMS = {
    "mobileone_s0": (5_293_272, 2_078_504), "mobileone_s1": (4_825_192, 4_764_840),
    "mobileone_s2": (7_884_648, 7_808_168), "mobileone_s3": (10_170_600, 10_078_312),
    "mobileone_s4": (14_951_248, 14_838_352),
    "repghostnet_050": (2_313_968, 2_306_528), "repghostnet_058": (2_546_388, 2_537_736),
    "repghostnet_080": (3_278_968, 3_267_112), "repghostnet_100": (4_073_604, 4_058_772),
    "repghostnet_111": (4_539_984, 4_523_568), "repghostnet_130": (5_478_612, 5_459_316),
    "repghostnet_150": (6_575_336, 6_553_064), "repghostnet_200": (9_796_124, 9_766_460),
}
# multiply-accumulates (M) of the inference form at 224 px: MobileOne paper table 7 (0.275/0.825/1.299/1.896/2.978 G),
# RepGhost the official checkpoints' names (43/60/96/142/170/231/301/516 M); ours within 0.75% (43.3 for 43)
MACS = {"mobileone_s0": 275, "mobileone_s1": 825, "mobileone_s2": 1299, "mobileone_s3": 1896, "mobileone_s4": 2978,
        "repghostnet_050": 43, "repghostnet_058": 60, "repghostnet_080": 96, "repghostnet_100": 142,
        "repghostnet_111": 170, "repghostnet_130": 231, "repghostnet_150": 301, "repghostnet_200": 516}
IDS = lightnets.list_models("mobileone") + lightnets.list_models("repghost") if profiles.SLOW else [
    "mobileone_s0", "repghostnet_050"]
SIZE, CLASSES = 64, 10
# float64: the fused kernel and bias change the rounding of each conv output only; measured <= 4.4e-14 (mobileone_s0,
# calibrated) over these ids and both weight sets, but mobileone_s4 (seed 0, 64 px, 10 classes) at 2.0e-11: its last
# SE stages amplify rounding ~1e5x, so the train graph's own float64 noise is that large there (torch float64 vs the
# reference 1.9e-11, fold_batch_norm alone 2.7e-11, weights perturbed by 1e-16 relative 3.8e-11). The bound is 1e-12
# or twice the noise measured by that perturbation, whichever is larger.
F64_REL = 1e-12


def _noise(g, w, x, ref):
    rng = np.random.default_rng(1)
    return rel_error(reference.run(g, {k: v * (1 + 1e-16 * rng.standard_normal(v.shape)) for k, v in w.items()}, x),
                     ref)


def _form(graph, w, model_id):
    """The form of ``model_id`` that equals timm's reparameterize_model (the zoo's ``<name>_reparam`` entry)."""
    return inference_form(graph, w) if model_id.startswith("mobileone") else reparameterize(graph, w)


def _small_var(graph, w, seed=1):
    """Equivalent weights where ~1/4 of the channels of every BN inside a collapsed sum have running var in
    [1e-6, 1e-3] (each branch's conv output channel and its BN mean scaled by f with f^2 var = target; identity BNs
    get the target variance directly, changing the function but not its reparameterised equality)."""
    rng = np.random.default_rng(seed)
    w = {k: v.copy() for k, v in w.items()}
    for plan in reparameterizable_sums(graph).values():
        if not isinstance(plan, RepSum):
            continue
        for conv, bn in plan.branches:
            var = w[f"{bn}.var"]
            f = np.where(rng.random(var.shape) < 0.25, np.sqrt(10.0 ** rng.uniform(-6, -3, var.shape) / var), 1.0)
            w[f"{conv}.weight"] *= f[:, None, None, None]
            w[f"{bn}.mean"] *= f
            w[f"{bn}.var"] = var * f**2
        for bn in plan.identities:
            small = rng.random(w[f"{bn}.var"].shape) < 0.25
            w[f"{bn}.var"] = np.where(small, 10.0 ** rng.uniform(-6, -3, small.shape), w[f"{bn}.var"])
    return w


@pytest.mark.parametrize("kind", ["calibrated", "small_var"])
@pytest.mark.parametrize("model_id", IDS)
def test_reparameterized_graph_equals_the_train_graph_in_float64(model_id, kind):
    g = lightnets.get_spec(model_id, num_classes=CLASSES, input_size=SIZE)
    w = W.init_weights(g, seed=0)
    w = _small_var(g, w) if kind == "small_var" else w
    x = np.random.default_rng(0).standard_normal((2, *g.input_shape))
    ref = reference.run(g, w, x)
    rg, rw = reparameterize(g, w)
    err = rel_error(reference.run(rg, rw, x), ref)
    fg, fw = inference_form(g, w)
    err_inf = rel_error(reference.run(fg, fw, x), ref)
    bound = F64_REL if max(err, err_inf) <= F64_REL else max(F64_REL, 2 * _noise(g, w, x, ref))
    print(f"REPARAM {model_id} {kind}: reparameterize {err:.1e}, inference form {err_inf:.1e} (bound {bound:.1e})")
    assert err <= bound and err_inf <= bound
    assert not any(n.op == "batch_norm" for n in fg.nodes)  # every BN of both families collapses or folds
    plans = reparameterizable_sums(g)
    assert {n.name for n in rg.nodes if n.name.endswith(".reparam_conv")} == {
        k for k, p in plans.items() if isinstance(p, RepSum)} == set(rg.meta["reparameterized"])
    assert all(rg.node(k).op == "conv2d" and rg.node(k).attrs["bias"] for k in rg.meta["reparameterized"])
    # the sums left alone are RepGhost's residual adds of ghost2 and a conv shortcut (terms on two inputs)
    left = {k: p for k, p in plans.items() if not isinstance(p, RepSum)}
    assert all(k.endswith(".add") and "different inputs" in p for k, p in left.items())
    again, w2 = reparameterize(rg, rw)  # idempotent
    assert again.nodes == rg.nodes and all(np.array_equal(w2[k], rw[k]) for k in rw)


@pytest.mark.parametrize("model_id", sorted(PARAMS) if profiles.SLOW else [  # ~1 s each at 224 px
    "mobileone_s0", "mobileone_s1", "repghostnet_050", "repghostnet_111"])
def test_params_of_both_forms_and_macs(model_id):
    g = lightnets.get_spec(model_id)
    rep = _form(g, W.init_weights(g, calibrate=False), model_id)[0]
    assert (g.num_params(), rep.num_params()) == PARAMS[model_id]
    assert rep.macs() / 1e6 == pytest.approx(MACS[model_id], rel=0.01)
    assert lightnets.get_spec(model_id, input_size=SIZE).num_params() == g.num_params()


def test_no_other_family_has_a_sum_to_collapse():
    for m in lightnets.list_models():
        if registry.entry(m).family not in FAMILIES:
            plans = reparameterizable_sums(lightnets.get_spec(m, num_classes=CLASSES, input_size=SIZE))
            assert not any(isinstance(p, RepSum) for p in plans.values()), m


TWINS = ["mobileone_s0", "repghostnet_050"] + (["mobileone_s4", "repghostnet_200"] if profiles.SLOW else [])


@pytest.mark.parametrize("model_id", TWINS)
def test_params_equal_timm_and_timm_reparameterize_model(model_id):
    timm = pytest.importorskip("timm")
    from timm.utils.model import reparameterize_model
    twin = timm.create_model(model_id, pretrained=False)
    n = sum(p.numel() for p in twin.parameters())
    assert n == PARAMS[model_id][0]
    assert sum(p.numel() for p in reparameterize_model(twin).parameters()) == PARAMS[model_id][1]


@pytest.mark.parametrize("model_id", ["mobileone_s0", "repghostnet_050"])
def test_feature_info_equals_timm_features_only(model_id):
    timm = pytest.importorskip("timm")
    theirs = timm.create_model(model_id, pretrained=False, features_only=True).feature_info
    ours = lightnets.feature_info(model_id)
    for mine, d in zip(ours.get_dicts(), theirs.get_dicts(), strict=True):
        assert {k: mine[k] for k in d} == d, (mine, d)


# --- the transform on small graphs --------------------------------------------------------------------
def _rep_block(c_in=4, c_out=4, stride=1, groups=1, kernels=(3, 1), identity=True, **conv):
    g = GraphBuilder("t", (c_in, 7, 7))
    terms = [g.conv_bn_act(f"b{i}", INPUT, c_out, k, stride=stride, groups=groups, act=None, **conv)
             for i, k in enumerate(kernels)]
    if identity:
        terms.append(g.add("id", "batch_norm", INPUT, eps=1e-3))
    y = terms[0]
    for i, t in enumerate(terms[1:]):
        y = g.add(f"sum{i}", "add", [y, t])
    g.add("act", "activation", y, kind="relu")
    return g.build()


@pytest.mark.parametrize("block", [{}, {"groups": 4}, {"groups": 2, "c_out": 6, "identity": False},
                                   {"stride": 2, "identity": False}, {"kernels": (5, 3, 1, 5)},
                                   {"kernels": (1, 1), "c_out": 4}, {"kernels": (3, 3, 3, 3, 1), "groups": 4}])
def test_a_block_collapses_into_one_conv(block):
    g = _rep_block(**block)
    w = W.init_weights(g, seed=3)
    rg, rw = reparameterize(g, w)
    x = np.random.default_rng(1).standard_normal((2, *g.input_shape))
    assert rel_error(reference.run(rg, rw, x), reference.run(g, w, x)) <= F64_REL
    root = [n.name for n in g.nodes if n.op == "add"][-1]
    assert [n.name for n in rg.nodes] == [root, "act"] and set(rw) == {f"{root}.weight", f"{root}.bias"}
    k = max(block.get("kernels", (3, 1)))
    assert rg.node(root).attrs["kernel"] == (k, k) and rg.node(root).attrs["pads"] == (k // 2,) * 4


def test_the_fused_kernel_is_the_formula():
    g = _rep_block(kernels=(3, 1))
    w = W.init_weights(g, seed=2, calibrate=False)
    _, rw = reparameterize(g, w)

    def s(bn):
        return w[f"{bn}.gamma"] / np.sqrt(w[f"{bn}.var"] + g.node(bn).attrs["eps"])
    want = w["b0.conv.weight"] * s("b0.bn")[:, None, None, None]
    want[:, :, 1:2, 1:2] += w["b1.conv.weight"] * s("b1.bn")[:, None, None, None]
    want[np.arange(4), np.arange(4), 1, 1] += s("id")
    np.testing.assert_allclose(rw["sum1.weight"], want, rtol=1e-15, atol=1e-15)
    bias = sum(w[f"{b}.beta"] - w[f"{b}.mean"] * s(b) for b in ("b0.bn", "b1.bn", "id"))
    np.testing.assert_allclose(rw["sum1.bias"], bias, rtol=1e-14, atol=1e-15)
    _, rw32 = reparameterize(g, {k: v.astype(np.float32) for k, v in w.items()})
    assert all(v.dtype == np.float32 for v in rw32.values())  # computed in float64, returned as the convs' dtype


def test_what_does_not_collapse_is_left_alone_or_named():
    g = GraphBuilder("t", (4, 7, 7))
    a = g.conv_bn_act("a", INPUT, 4, 3, act=None, pads=(0, 2, 0, 2))
    b = g.conv_bn_act("b", INPUT, 4, 3, act=None)  # its window starts one pixel before a's
    g.add("s1", "add", [a, b])
    c = g.conv_bn_act("c", "s1", 4, 3, act=None)
    d = g.conv_bn_act("d", INPUT, 4, 3, act=None, pads=(1, 1, 1, 1))
    g.add("s2", "add", [c, g.add("pool", "max_pool2d", d, kernel=1)])  # a term that is not a BN
    e = g.conv_bn_act("e", "s2", 4, 3, stride=2, act=None)
    f = g.conv_bn_act("f", "s2", 4, 3, stride=2, act=None, pads="same")  # strided TF "same"
    g.add("s3", "add", [e, f])
    h = g.conv_bn_act("h", "s3", 4, 3, act=None)
    i = g.conv_bn_act("i", "s3", 4, 3, act=None)
    g.add("s4", "add", [h, i])
    g.add("out", "add", ["s4", "h.bn"])  # h.bn is read twice
    graph = g.build()
    plans = reparameterizable_sums(graph)
    assert set(plans) == {"s1", "s3", "s4", "out"} and not any(isinstance(p, RepSum) for p in plans.values())
    assert "does not sit inside" in plans["s1"] and "strided TF 'same'" in plans["s3"]
    assert "'h.bn' is also read elsewhere" in plans["out"] == plans["s4"]
    w = W.init_weights(graph, seed=0)
    rg, rw = reparameterize(graph, w)
    assert rg.nodes == graph.nodes and all(np.array_equal(rw[k], w[k]) for k in w)
    with pytest.raises(SpecError, match=r"cannot reparameterize 's1': a 3x3 term does not sit inside .*'pool': it is "
                                         r"not the root add"):
        reparameterize(graph, w, sums=["s1", "pool"])


def test_graph_only_and_explicit_sums():
    g = lightnets.get_spec("repghostnet_050", num_classes=CLASSES, input_size=SIZE)
    rg, none = reparameterize(g, None)
    assert none is None and rg.nodes == reparameterize(g, W.init_weights(g, calibrate=False))[0].nodes
    one = "blocks.0.ghost1.reparam_conv"
    g1, w1 = reparameterize(g, W.init_weights(g, calibrate=False), sums=one)
    assert list(g1.meta["reparameterized"]) == [one] and g1.node(one).op == "conv2d"
    assert g1.node("blocks.0.ghost2.reparam_conv").op == "add"


# --- lightnets.build(mode="inference") and the zoo -----------------------------------------------------
def test_build_inference_mode_reparameterizes_and_folds():
    g = lightnets.get_spec("mobileone_s0", num_classes=CLASSES, input_size=SIZE)
    w = W.init_weights(g, seed=0)
    x = np.random.default_rng(0).standard_normal((2, *g.input_shape))
    ref = reference.run(g, w, x)
    model = lightnets.build("mobileone_s0", "torch", weights=w, num_classes=CLASSES, input_size=SIZE,
                            dtype="float64", mode="inference")
    assert rel_error(lightnets.run(model, x), ref) <= F64_REL
    built = lightnets.load_backend("torch").graph_of(model)
    assert not any(n.op in ("batch_norm", "add") for n in built.nodes)
    assert rel_error(lightnets.run(lightnets.optimize(model), x), ref) <= F64_REL


ZOO_KEYS = [("timm", "mobileone_s0"), ("timm", "repghostnet_050")] + (
    [("timm", "mobileone_s4"), ("timm", "repghostnet_200")] if profiles.SLOW else [])


def test_every_twin_has_both_zoo_entries():
    for m in PARAMS:
        train, rep = zoo.entry("timm", m), zoo.entry("timm", f"{m}_reparam")
        assert train.arch == rep.arch == m and train.form == "train"
        assert rep.form == ("inference" if m.startswith("mobileone") else "reparameterize")


@pytest.mark.parametrize("key", ZOO_KEYS, ids=[k[1] for k in ZOO_KEYS])
def test_timm_reparameterize_model_state_dict_imports_as_our_reparameterized_form(key):
    torch = pytest.importorskip("torch")
    from timm.utils.model import reparameterize_model
    from zoo_calibration import calibrated
    model, min_var = calibrated(key)
    g, w, _ = zoo.import_zoo(*key, model)
    rep = reparameterize_model(model)
    rg, rw, info = zoo.import_zoo(*key, rep.state_dict())  # the same name: the form is found from the keys
    p = info["probe"]
    print(f"ZOOPROBE reparam {key[1]}: min var {min_var:.1e}, float64 {p['rel_error']:.2e}, "
          f"float32 {p['float32_rel_error']:.2e}")
    assert info["zoo"]["name"] == f"{key[1]}_reparam" and p["dtype"] == "float64"
    assert p["rel_error"] <= zoo.PROBE_FLOAT64
    assert rg.num_params() == sum(q.numel() for q in rep.parameters()) == PARAMS[key[1]][1]
    og, ow = _form(g, {k: v.astype(np.float64) for k, v in w.items()}, key[1])  # timm fuses in float32
    assert [n.to_json() for n in og.nodes] == [n.to_json() for n in rg.nodes]
    assert max(rel_error(ow[k], rw[k]) for k in rw) <= 1e-6  # timm fuses in float32: measured <= 1.3e-7
    x = 0.05 * np.random.default_rng(5).standard_normal((2, 3, 67, 62))
    with torch.no_grad():
        want = model.double()(torch.from_numpy(x)).numpy()
    assert rel_error(reference.run(og, ow, x), want) <= zoo.PROBE_FLOAT64
    fresh = zoo.ZOO[("timm", f"{key[1]}_reparam")].make(1000).eval()
    zoo.load_native(fresh, zoo.export_zoo("timm", f"{key[1]}_reparam", rw), "timm")
    x32 = torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        assert torch.equal(fresh(x32), rep.float()(x32))


ONNX_KEYS = [("timm", "repghostnet_050")] + ([("timm", "mobileone_s0")] if profiles.SLOW else [])


@pytest.mark.parametrize("key", ONNX_KEYS, ids=[k[1] for k in ONNX_KEYS])
def test_torch_onnx_export_of_the_reparameterized_twin_imports(key, tmp_path):
    """The ONNX file of timm's reparameterize_model(twin) imports as ``<name>_reparam`` (measured vs the twin in
    float32: repghostnet_050 8.5e-6, mobileone_s0 9.3e-7); the train-form file is refused by name (a BN of the
    block input follows no conv: lightnets.artifacts imports BNs that follow one conv, as for MixNet)."""
    pytest.importorskip("onnxruntime")
    import torch
    from timm.utils.model import reparameterize_model
    from zoo_calibration import calibrated

    from lightnets.errors import FileFormatError
    model, _ = calibrated(key)
    rep = reparameterize_model(model)
    for name, m in ((f"{key[1]}_reparam", rep), (key[1], model)):
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(m, torch.randn(1, 3, 64, 64), str(path), dynamo=False, dynamic_axes={"input": {0: "n"}},
                          input_names=["input"])
        if m is model:
            with pytest.raises(FileFormatError, match="does not follow a conv alone"):
                zoo.import_zoo("timm", name, str(path), input_size=64)
            continue
        graph, w, info = zoo.import_zoo("timm", name, str(path), input_size=64)
        assert info["arch"] == key[1] and graph.meta["provenance"]["source"]["format"] == "onnx"
        x = np.random.default_rng(6).standard_normal((2, 3, 64, 64)).astype(np.float32)
        with torch.no_grad():
            want = m(torch.from_numpy(x)).numpy()
        assert rel_error(reference.run(graph, w, x.astype(np.float64)), want) <= 1e-4


def test_the_parity_locator_walks_an_inference_form_past_the_collapsed_branches(tmp_path):
    """--mode inference: the per-node curve of a reparameterized model skips exactly the nodes that went into a
    fused conv (and the folded convs); every other node has its value, at float64 noise."""
    from lightnets.parity import cases as C
    from lightnets.parity import runner

    [case] = C.model_cases(["repghostnet_050"], input_size=32, num_classes=10)
    results = runner.run_matrix([case], ["torch"], ["float64"], tmp_path, mode="inference", probe=case.id)
    curve = next(r.per_node for r in results if r.per_node)
    removed = {n for s in reparameterizable_sums(case.graph).values() if isinstance(s, RepSum) for n in s.removed}
    walked = {n for n, _, _ in curve}
    assert removed and not removed & walked and len(walked) > len(case.graph.nodes) // 3
    print(f"\nworst node {max(e for _, _, e in curve):.1e}")
    assert max(e for _, _, e in curve) <= 1e-12  # measured 1.2e-14
