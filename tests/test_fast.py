"""The fast path (``lightnets.optimize``) against the float64 reference of the UNFOLDED graph.

torch and paddle run in this process (paddle tests first: conftest); keras runs through the parity runner
(``mode="fast"``), i.e. in a worker subprocess, since tensorflow and paddle do not share a process.
Bounds: the unchanged float32 model bound of parity/tolerances.py.
"""

import importlib.util
import json

import numpy as np
import pytest

import lightnets
from lightnets import reference
from lightnets import weights as W
from lightnets.frameworks import backend_of
from lightnets.parity import tolerances as T

# channel shuffle, slices and concat in process (torch, paddle); squeeze-excite and hardswish in keras
IDS = ("shufflenet_v2_050",)
KERAS_IDS = ("mobilenet_v3_small_075",)
SIZE, CLASSES, BATCH = 32, 10, 2


def _case(model_id: str, seed: int = 0):
    g = lightnets.get_spec(model_id, num_classes=CLASSES, input_size=SIZE)
    w = W.init_weights(g, seed=seed)
    x = np.random.default_rng(seed).standard_normal((BATCH, *g.input_shape))
    return g, w, x, reference.run(g, w, x)


def _check_fast(backend: str, compile: bool) -> list:
    worst = []
    for model_id in IDS:
        g, w, x, ref = _case(model_id)
        model = lightnets.build(g, backend=backend, weights=w)
        fast = lightnets.optimize(model, compile=compile)
        rel = T.rel_error(lightnets.run(fast, x.astype("float32")), ref)
        assert rel <= T.MODEL_REL["float32"], (model_id, backend, compile, rel)
        # batch 1 goes through the same object (a new trace / predictor shape where the path compiles)
        assert T.rel_error(lightnets.run(fast, x[:1].astype("float32")), ref[:1]) <= T.MODEL_REL["float32"]
        worst.append(rel)
        # the argument is unchanged: still the unfolded graph, same output
        assert not backend_of(model).graph_of(model).meta.get("bn_folded")
        assert T.rel_error(lightnets.run(model, x.astype("float32")), ref) <= T.MODEL_REL["float32"]
    return worst


@pytest.mark.parametrize("compile", [False, True])
def test_paddle_fast_path_matches_the_unfolded_reference(compile):
    pytest.importorskip("paddle")
    _check_fast("paddle", compile)


@pytest.mark.parametrize("compile", [False, True])
def test_torch_fast_path_matches_the_unfolded_reference(compile):
    pytest.importorskip("torch")
    _check_fast("torch", compile)


def test_torch_compiled_model_is_a_lightnets_model_and_retraces_on_new_weights():
    torch = pytest.importorskip("torch")
    from lightnets.backends.torch import CompiledGraphModule

    g, w, x, ref = _case(IDS[0])
    fast = lightnets.optimize(lightnets.build(g, backend="torch", weights=w), compile=True)
    assert isinstance(fast, CompiledGraphModule)
    assert next(fast.parameters()).is_contiguous(memory_format=torch.channels_last)
    folded = lightnets.build(g, backend="torch", weights=w, mode="inference")
    assert fast.state_dict().keys() == folded.state_dict().keys()
    every = lightnets.run(fast, x.astype("float32"), return_all=True)  # the eager walk of the folded layers
    assert set(every) == {n.name for n in backend_of(folded).graph_of(folded).nodes}
    lightnets.run(fast, x.astype("float32"))
    assert fast.compile_s > 0
    # new weights: the frozen trace (weights baked in) must not be reused
    g2, w2, _, ref2 = _case(IDS[0], seed=5)
    lightnets.load_backend("torch").set_weights(fast, lightnets.export_weights(
        lightnets.build(g2, backend="torch", weights=w2, mode="inference")))
    assert T.rel_error(lightnets.run(fast, x.astype("float32")), reference.run(g2, w2, x)) <= T.MODEL_REL["float32"]


def test_optimize_needs_a_lightnets_model_and_a_bool():
    pytest.importorskip("torch")
    with pytest.raises(lightnets.LightnetsError, match="not a lightnets model"):
        lightnets.optimize(object())
    with pytest.raises(lightnets.LightnetsError, match="compile must be True or False"):
        lightnets.optimize(lightnets.build("mobilenet_v1_025", backend="torch", input_size=32), compile="yes")


@pytest.mark.parametrize("mode", ["fast", "compiled"])
def test_keras_fast_path_through_the_parity_runner(tmp_path, mode):
    """keras in a worker subprocess: the folded model, lightnets.optimize(compile=mode == "compiled"), run."""
    if importlib.util.find_spec("keras") is None:  # not imported here: tensorflow in this process breaks later imports
        pytest.skip("keras is not installed")
    from lightnets.parity import cases as C
    from lightnets.parity import runner

    models = C.model_cases(list(KERAS_IDS), input_size=SIZE, num_classes=CLASSES)
    results = runner.run_matrix(models, ["keras"], ["float32"], tmp_path, mode=mode, locate=False)
    failed = [(r.case, r.target, r.rel_err, r.error[:300]) for r in results if r.failed]
    assert failed == []
    assert {r.case for r in results if r.kind == "model"} == set(KERAS_IDS)
    request = json.loads(next((tmp_path / "out" / "main").glob("*/request.json")).read_text())
    assert request["mode"] == mode
