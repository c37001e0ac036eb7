"""BatchNorm folding (issue 14): lightnets.transforms.fold_batch_norm and build(mode="inference").

Every folded graph is checked against the UNFOLDED graph run by the float64 numpy reference, on every
registered id, with calibrated init weights and with weights whose BNs have tiny running variances
(1e-6..1e-3, where eps matters). Keras runs in a subprocess that imports paddle first.
"""

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import profiles
import pytest

import lightnets
from lightnets import GraphBuilder, reference
from lightnets import weights as W
from lightnets.errors import LightnetsError, SpecError, WeightsError
from lightnets.graph import INPUT, Graph
from lightnets.numerics import rel_error
from lightnets.parity import tolerances as T
from lightnets.transforms import fold_batch_norm, foldable_batch_norms

ROOT = Path(__file__).resolve().parents[1]
# every id in the long profile (LIGHTNETS_SLOW=1; `make parity --mode inference` covers every id too), else the
# smallest id of each family plus the ids whose BN folding differs (keras flavours, the deepest nets)
IDS = profiles.ids("mobilenet_v2_100_keras", "mobilenet_v3_large_100", "shufflenet_v2_200_paddle", "ghostnet_130")
SIZE, BATCH, CLASSES = 64, 2, 10
# float64: folding changes the rounding of each conv's weights and bias only (one multiply per
# weight); measured <= 4.8e-14 over every id and both weight sets at 64 px (mobilenet_v2_100_keras).
F64_REL = 1e-12
# float32 (torch, folded weights cast to float32) against the float64 UNFOLDED reference: measured
# <= 1.8e-5 (shufflenet_v2_200_paddle, calibrated init). That is float32 rounding compounding with
# depth, not folding: the unfolded float32 model of that id is at 2.4e-5. So the whole-network float32
# bound of the parity suite applies (MODEL_REL); OP_REL (1e-5) is checked on a single conv+BN.
F32_REL = T.MODEL_REL["float32"]


def _small_var(graph: Graph, w: dict, seed: int = 1) -> dict:
    """Equivalent weights where ~1/4 of each folded BN's channels have running var in [1e-6, 1e-3].

    The conv's output channel (and the BN mean) is scaled by f with f^2 * var = target, so the
    network stays O(1) while eps (1e-5 or 1e-3) is comparable to or larger than those variances.
    """
    rng = np.random.default_rng(seed)
    w = {k: v.copy() for k, v in w.items()}
    for bn, layer in foldable_batch_norms(graph).items():
        var = w[f"{bn}.var"]
        f = np.where(rng.random(var.shape) < 0.25, np.sqrt(10.0 ** rng.uniform(-6, -3, var.shape) / var), 1.0)
        w[f"{layer}.weight"] *= f.reshape(-1, *(1,) * (w[f"{layer}.weight"].ndim - 1))
        if f"{layer}.bias" in w:
            w[f"{layer}.bias"] *= f
        w[f"{bn}.mean"] *= f
        w[f"{bn}.var"] = var * f**2
    return w


@functools.cache
def case(model_id: str, kind: str):
    """(graph, weights, input, unfolded float64 reference output, folded graph, folded weights)."""
    g = lightnets.get_spec(model_id, num_classes=CLASSES, input_size=SIZE)
    w = W.init_weights(g, seed=0)
    if kind == "small_var":
        w = _small_var(g, w)
    x = np.random.default_rng(0).standard_normal((BATCH, *g.input_shape))
    fg, fw = fold_batch_norm(g, w)
    return g, w, x, reference.run(g, w, x), fg, fw


KINDS = ("calibrated", "small_var")


# --- the transform ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("model_id", IDS)
def test_folded_graph_matches_unfolded_reference_in_float64(model_id, kind):
    g, w, x, ref, fg, fw = case(model_id, kind)
    assert all(v.dtype == np.float64 for v in fw.values())
    assert rel_error(reference.run(fg, fw, x), ref) <= F64_REL


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("model_id", IDS)
def test_folded_graph_in_torch_float32_matches_unfolded_reference(model_id, kind):
    g, w, x, ref, fg, fw = case(model_id, kind)
    model = lightnets.build(fg, "torch", weights={k: v.astype(np.float32) for k, v in fw.items()})
    assert rel_error(lightnets.run(model, x.astype(np.float32)), ref) <= F32_REL


@pytest.mark.parametrize("model_id", IDS)
def test_every_bn_of_every_id_folds_and_macs_params_account(model_id):
    g = lightnets.get_spec(model_id, num_classes=CLASSES, input_size=SIZE)
    fg, fw = fold_batch_norm(g, W.init_weights(g, seed=0, calibrate=False))
    # every BN follows a lone conv but MixNet's after a concat of mixed-kernel / grouped 1x1 convs and the identity
    # branches of MobileOne / RepGhost (a BN of the block input, which transforms.reparameterize collapses): those stay
    after_concat = {n.name for n in g.nodes if n.op == "batch_norm" and g.node(n.inputs[0]).op != "conv2d"}
    assert not after_concat or g.meta["family"] in ("mixnet", "mobileone", "repghost")
    assert g.meta["family"] != "mixnet" or {g.node(g.node(b).inputs[0]).op for b in after_concat} == {"concat"}
    bns = [n for n in g.nodes if n.op == "batch_norm" and n.name not in after_concat]
    assert bns and {n.name for n in fg.nodes if n.op == "batch_norm"} == after_concat
    assert len(fg.nodes) == len(g.nodes) - len(bns)
    assert fg.macs() == g.macs()
    folded = foldable_batch_norms(g)
    assert {g.node(c).op for c in folded.values()} == {"conv2d"}  # no id has a BN after a linear
    new_biases = sum(g.node(c).attrs["out_channels"] for c in folded.values() if not g.node(c).attrs["bias"])
    bn_trainable = sum(2 * g.shapes[n.name][0] for n in bns)
    assert fg.num_params() == g.num_params() - bn_trainable + new_biases
    assert fg.num_params(trainable_only=False) == g.num_params(trainable_only=False) - 2 * bn_trainable + new_biases
    assert list(fw) == [p.name for p in fg.params]
    assert fg.meta["bn_folded"] is True and fg.meta["bn_folded_into"] == folded
    assert fg.output == g.output  # the logits are a linear, not a BN
    for conv in folded.values():  # every attribute but bias is kept
        before, after = dict(g.node(conv).attrs), dict(fg.node(conv).attrs)
        assert after.pop("bias") is True and before.pop("bias") is False and after == before
    assert Graph.from_json(fg.to_json()).to_json() == fg.to_json()


def _conv_bn(shape=(3, 6, 6), bias=False, eps=1e-5, **conv):
    g = GraphBuilder("t", shape)
    g.add("c", "conv2d", INPUT, out_channels=conv.pop("out_channels", 4), kernel=3, pads=1, bias=bias, **conv)
    g.add("bn", "batch_norm", "c", eps=eps)
    return g


def _check_equal(g: Graph, w=None, seed=0, x=None):
    w = W.init_weights(g, seed=seed, calibrate=False) if w is None else w
    x = np.random.default_rng(seed).standard_normal((2, *g.input_shape)) if x is None else x
    fg, fw = fold_batch_norm(g, w)
    assert rel_error(reference.run(fg, fw, x), reference.run(g, w, x)) <= F64_REL
    return fg, fw


@pytest.mark.parametrize("conv", [{}, {"bias": True}, {"groups": 3, "out_channels": 6}, {"stride": 2},
                                  {"dilation": 2, "eps": 1e-3}])
def test_bn_as_graph_output_and_conv_with_bias(conv):
    fg, fw = _check_equal(_conv_bn(**conv).build())
    assert [n.name for n in fg.nodes] == ["c"] and fg.output == "c" and set(fw) == {"c.weight", "c.bias"}


def test_formula_and_float32_weights():
    g = _conv_bn(bias=True, eps=1e-3).build()
    w = W.init_weights(g, seed=2, calibrate=False)
    fg, fw = fold_batch_norm(g, w)
    s = w["bn.gamma"] / np.sqrt(w["bn.var"] + 1e-3)
    np.testing.assert_array_equal(fw["c.weight"], w["c.weight"] * s[:, None, None, None])
    np.testing.assert_array_equal(fw["c.bias"], (w["c.bias"] - w["bn.mean"]) * s + w["bn.beta"])
    fg32, fw32 = fold_batch_norm(g, {k: v.astype(np.float32) for k, v in w.items()})
    assert all(v.dtype == np.float32 for v in fw32.values())
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    assert rel_error(reference.run(fg32, fw32, x), reference.run(g, w, x)) <= T.OP_REL["float32"]
    assert w["c.bias"].dtype == np.float64 and "bn.gamma" in w  # inputs untouched


def test_unfoldable_bns_stay():
    g = GraphBuilder("t", (4, 6, 6))
    g.add("bn0", "batch_norm", INPUT)  # reads the input
    g.add("c", "conv2d", "bn0", out_channels=4, kernel=1)
    g.add("bn1", "batch_norm", "c")  # conv also read by the add
    g.add("sum", "add", ["c", "bn1"])
    g.add("bn2", "batch_norm", "sum")  # reads an add
    g.add("c2", "conv2d", "bn2", out_channels=4, kernel=3, pads=1, groups=4)
    g.add("bn3", "batch_norm", "c2")  # foldable
    g.add("act", "activation", "bn3", kind="relu")
    g.add("c3", "conv2d", "act", out_channels=4, kernel=1)
    g.add("bn4", "batch_norm", "c3")  # foldable; its reader is another folded conv's input
    g.add("c4", "conv2d", "bn4", out_channels=4, kernel=1)
    g.add("bn5", "batch_norm", "c4")
    g.add("out", "add", ["bn5", "bn0"])
    fg, fw = _check_equal(g.build(), w=W.init_weights(g.build(), seed=1))
    assert foldable_batch_norms(g.build()) == {"bn3": "c2", "bn4": "c3", "bn5": "c4"}
    assert [n.name for n in fg.nodes] == ["bn0", "c", "bn1", "sum", "bn2", "c2", "act", "c3", "c4", "out"]
    assert fg.node("act").inputs == ("c2",) and fg.node("c4").inputs == ("c3",) and fg.node("out").inputs == (
        "c4", "bn0")
    again, w2 = fold_batch_norm(fg, fw)  # idempotent
    assert again.to_json() == fg.to_json() and all(np.array_equal(w2[k], fw[k]) for k in fw)


def test_bn_last_after_a_conv_that_is_not_the_previous_node():
    g = GraphBuilder("t", (3, 6, 6))
    g.add("c", "conv2d", INPUT, out_channels=3, kernel=1)
    g.add("side", "activation", INPUT, kind="relu")
    g.add("bn", "batch_norm", "c")
    fg, _ = _check_equal(g.build())
    assert [n.name for n in fg.nodes] == ["side", "c"] and fg.output == "c"


def test_bn_on_a_vector_is_not_in_the_vocabulary():
    """batch_norm is BatchNorm2d everywhere; after a linear it is refused, so folding never meets one."""
    g = GraphBuilder("t", (3, 4, 4))
    g.add("fc", "linear", g.add("flat", "flatten", g.add("gap", "global_avg_pool", INPUT)), out_features=5)
    with pytest.raises(SpecError, match="batch_norm needs a"):
        g.add("bn", "batch_norm", "fc", eps=1e-3)


def test_bad_weights_raise_weights_error():
    g = _conv_bn().build()
    w = W.init_weights(g, seed=0)
    del w["bn.var"]
    with pytest.raises(WeightsError, match=r"missing keys \['bn.var'\]"):
        fold_batch_norm(g, w)


# --- build(mode=...) ------------------------------------------------------------------------------------
BUILD_IDS = ("mobilenet_v3_small_075", "shufflenet_v2_050", "ghostnet_050")


def _build_case(model_id):
    g, w, x, ref, fg, _ = case(model_id, "small_var")
    return w, x, ref, fg


@pytest.mark.parametrize("backend", ["torch", "paddle"])
@pytest.mark.parametrize("model_id", BUILD_IDS)
def test_build_inference_mode(backend, model_id):
    w, x, ref, fg = _build_case(model_id)
    for dtype, tol in (("float64", T.MODEL_REL["float64"]), ("float32", F32_REL)):
        model = lightnets.build(model_id, backend, weights=w, num_classes=CLASSES, input_size=SIZE, dtype=dtype,
                                mode="inference")
        assert rel_error(lightnets.run(model, x.astype(dtype)), ref) <= tol
    be = lightnets.load_backend(backend)
    built = be.graph_of(model)
    assert [n.to_json() for n in built.nodes] == [n.to_json() for n in fg.nodes]
    assert built.meta["bn_folded"] is True and built.meta["bn_folded_into"] == fg.meta["bn_folded_into"]
    outs = lightnets.run(model, x.astype("float32"), return_all=True)
    assert not any(k.endswith(".bn") for k in outs)
    exported = lightnets.export_weights(model)
    assert set(exported) == {p.name for p in fg.params}
    train = lightnets.build(model_id, backend, weights=w, num_classes=CLASSES, input_size=SIZE, dtype="float64")
    spec_nodes = [n.to_json() for n in lightnets.get_spec(model_id, CLASSES, SIZE).nodes]
    assert [n.to_json() for n in be.graph_of(train).nodes] == spec_nodes  # default: train, graph as written
    assert "bn_folded" not in be.graph_of(train).meta


def test_build_float32_weights_fold_in_float64():
    g = lightnets.get_spec("mobilenet_v1_025", num_classes=CLASSES, input_size=32)
    w = W.init_weights(g, seed=0, dtype=np.float32)
    model = lightnets.build(g, "torch", weights=w, dtype="float64", mode="inference")
    want = fold_batch_norm(g, {k: v.astype(np.float64) for k, v in w.items()})[1]
    got = lightnets.export_weights(model)
    assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("mode", ["eval", "Inference", None, ["inference"]])
def test_build_bad_mode(mode):
    with pytest.raises(LightnetsError, match=r"mode .* is not supported; use 'train' .* or 'inference'"):
        lightnets.build("mobilenet_v1_025", "torch", mode=mode)


def test_build_inference_mode_in_keras_subprocess_paddle_first():
    code = f"""
        import json, numpy as np
        import paddle  # before tensorflow
        import lightnets
        from lightnets import reference, weights as W
        from lightnets.numerics import rel_error
        out = {{}}
        for mid in {BUILD_IDS!r}:
            g = lightnets.get_spec(mid, num_classes={CLASSES}, input_size={SIZE})
            w = W.init_weights(g, seed=0)
            x = np.random.default_rng(0).standard_normal(({BATCH}, *g.input_shape))
            ref = reference.run(g, w, x)
            for dtype in ("float64", "float32"):
                m = lightnets.build(mid, "keras", weights=w, num_classes={CLASSES}, input_size={SIZE}, dtype=dtype,
                                    mode="inference")
                out[mid + "/" + dtype] = rel_error(lightnets.run(m, x.astype(dtype)), ref)
                assert not any(n.op == "batch_norm" for n in lightnets.load_backend("keras").graph_of(m).nodes)
        print(json.dumps(out))
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT),
           "KERAS_BACKEND": "tensorflow"}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    errs = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(errs) == 2 * len(BUILD_IDS)
    for key, e in errs.items():
        assert e <= (T.MODEL_REL["float64"] if key.endswith("float64") else F32_REL), (key, e)


# --- parity --mode inference ----------------------------------------------------------------------------
PARITY_IDS = ("mobilenet_v3_small_075", "shufflenet_v2_050", "ghostnet_050")


def test_parity_matrix_inference_mode_torch_paddle(tmp_path):
    """Folded models of torch and paddle against the UNFOLDED reference, with the unchanged model bounds."""
    from lightnets.parity import cases as C
    from lightnets.parity import runner

    models = C.model_cases(list(PARITY_IDS), input_size=SIZE, num_classes=CLASSES)
    results = runner.run_matrix(models, ["torch", "paddle"], ["float32", "float64"], tmp_path, mode="inference",
                                probe=PARITY_IDS[0])
    failed = [(r.case, r.target, r.dtype, r.rel_err, r.divergence, r.error[:300]) for r in results if r.failed]
    assert failed == []
    assert {(r.case, r.target, r.dtype) for r in results if r.kind == "model"} == {
        (m, t, d) for m in PARITY_IDS for t in ("torch", "paddle") for d in ("float32", "float64")}
    request = json.loads(next((tmp_path / "out" / "main").glob("*/request.json")).read_text())
    assert request["mode"] == "inference"
    g = lightnets.get_spec(PARITY_IDS[0], num_classes=CLASSES, input_size=SIZE)
    curve = next(r.per_node for r in results if r.per_node)  # the probe: folded convs have no value of their own
    assert [n for n, _, _ in curve] == [n.name for n in g.nodes if n.name not in foldable_batch_norms(g).values()]
    assert max(e for _, _, e in curve) <= T.MODEL_REL["float32"]


def test_parity_locator_names_a_bn_folded_with_a_planted_wrong_eps(tmp_path):
    from planted import plant_and_locate

    # the worker folds with eps 0.5; the reference keeps 1e-5
    result, first, per_node = plant_and_locate(tmp_path, "blocks.4.dw.bn", {"eps": 0.5}, "torch", "float64",
                                               mode="inference")
    assert result.failed and result.rel_err > 1e-3
    assert (first["node"], first["op"], first["folded_into"]) == ("blocks.4.dw.bn", "batch_norm", "blocks.4.dw.conv")
    names = [n for n, _, _ in per_node]
    assert "blocks.4.dw.conv" not in names
    assert all(e <= T.MODEL_REL["float64"] for _, _, e in per_node[: names.index("blocks.4.dw.bn")])


def test_parity_mode_errors(tmp_path, capsys):
    from lightnets import cli
    from lightnets.parity import runner

    with pytest.raises(ValueError, match="train=True needs mode='train'"):
        runner.run_matrix([], ["torch"], ["float64"], tmp_path, train=True, mode="inference")
    with pytest.raises(ValueError, match="unknown parity mode 'eval'; choose from train, inference"):
        runner.Matrix([], tmp_path, mode="eval")
    with pytest.raises(SystemExit) as e:
        cli.main(["parity", "--mode", "eval"])
    assert e.value.code == 2 and "choose from 'train', 'inference'" in capsys.readouterr().err
    assert cli.main(["parity", "--mode", "inference", "--train", "--models", "mobilenet_v1_025"]) == 2
    assert "--train needs --mode train" in capsys.readouterr().err


def test_parity_cli_inference_mode(tmp_path):
    from lightnets import cli

    args = ["parity", "--mode", "inference", "--models", "mobilenet_v1_025", "--backends", "torch", "--dtype",
            "float32,float64", "--no-ops", "--size", "32", "--num-classes", "10", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["meta"]["mode"] == "inference"
    assert {r["status"] for r in report["results"]} == {"pass"}
    assert sorted((r["kind"], r["dtype"]) for r in report["results"]) == [  # the classifier and its backbone
        ("features", "float32"), ("features", "float64"), ("model", "float32"), ("model", "float64")]
