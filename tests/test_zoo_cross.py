"""Cross-backend zoo imports and keras port round trips: the gaps tests/test_zoo.py, test_zoo_keras.py
and test_port.py leave.

1. every torchvision/timm/paddle.vision entry (``zoo.list_zoo()``) imported and run in the KERAS backend;
2. every keras.applications entry (``zoo.list_zoo("keras")``) imported and run in the PADDLE backend;
   (1. and 2.: in ``make test`` the entry of fewest parameters of each id variant, i.e. one width of each graph
   whatever zoo has it (``profiles.smallest_of_each_variant``; tests/test_zoo.py imports every entry of every
   zoo); every entry with LIGHTNETS_SLOW=1)
3. port round trips A->B->A bit-exact for every ordered pair with keras, over ``profiles.full_ids`` (every
   registered id with LIGHTNETS_SLOW=1)
   (the weight path of ``lightnets.port``: graph_of + export_weights + check_weights + build; the
   probe forward passes are left to tests/test_port.py, which keeps this under ~2 minutes).

Zoo models are built locally with random weights and randomised BN statistics (never downloaded),
float32, rel error <= 1e-4 against the zoo model's own logits. tensorflow imported before paddle in one
process segfaults (DESIGN §2), so everything that needs keras runs in ONE subprocess per test (paddle
imported first where both are needed); the pytest process imports torch/paddle only. Test names carry
"paddle" where paddle runs in-process, so conftest orders them before any in-process keras test.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import profiles
import pytest
from test_zoo import _forward, _x, _zoo_model  # tests/ is on sys.path (pytest's rootdir-less prepend)
from test_zoo_keras import CASES as KERAS_CASES

import lightnets
from lightnets import zoo

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 10
TOL = 1e-4
SIZE = 64  # as tests/test_zoo.py
ERRORS: dict[str, float] = {}  # "zoo name -> backend": rel error, printed with -s


def _params(key) -> int:
    return lightnets.get_spec(zoo.ZOO[key].arch).num_params()


ZOO_KEYS = profiles.smallest_of_each_variant(zoo.list_zoo(), arch=lambda k: zoo.ZOO[k].arch)


def _family(key) -> str:
    return lightnets.registry.entry(zoo.ZOO[key].arch).family


# a family outside profiles.FULL_FAMILIES (EfficientNet and MixNet alone: 7 variants, ~70 s of keras builds here):
# the smallest entry of the family only in `make test`; every variant's graph runs in keras in `make parity` (and
# here with LIGHTNETS_SLOW=1)
ZOO_KEYS = [k for k in ZOO_KEYS if profiles.SLOW or _family(k) in profiles.FULL_FAMILIES
            or k == min((j for j in ZOO_KEYS if _family(j) == _family(k)), key=_params)]
ZOO_KEYS += [min((k for k in zoo.list_zoo() if k[0] == z), key=_params)
             for z in sorted({k[0] for k in zoo.list_zoo()} - {k[0] for k in ZOO_KEYS})]  # and each zoo once
KERAS_KEYS = profiles.smallest_of_each_variant(zoo.list_zoo("keras"), arch=lambda k: zoo.ZOO[k].arch)
# keras.applications twins of a family outside profiles.FULL_FAMILIES (EfficientNetB0-B3: its import is
# tests/test_zoo_keras.py's, float64 vs the twin) run in paddle with LIGHTNETS_SLOW=1 (~14 s)
KERAS_KEYS = [k for k in KERAS_KEYS if profiles.SLOW or _family(k) in profiles.FULL_FAMILIES]


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT),
            **extra}


def _py(code: str, *args, timeout=600, **env) -> dict:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                       text=True, env=_env(**env), cwd=ROOT, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _judge(errs: dict, target: str) -> None:
    """``errs``: name -> rel error (float) or an error message (str); all must be floats <= TOL."""
    for name, err in errs.items():
        if isinstance(err, float):
            ERRORS[f"{name} -> {target}"] = err
            print(f"ZOOERR {name} -> {target}: {err:.2e}")
    bad = {k: v for k, v in errs.items() if not (isinstance(v, float) and v <= TOL)}
    floats = [v for v in errs.values() if isinstance(v, float)]
    print(f"ZOOMAX -> {target}: {max(floats):.2e} over {len(floats)} entries")
    assert not bad, bad


# --- 1. torch/timm/paddle zoo imports in the keras backend ------------------------------------------
KERAS_RUN = r"""
import json, sys
import numpy as np
import lightnets
from lightnets.graph import Graph
from lightnets.numerics import rel_error
out = {}
for case in json.load(open(sys.argv[1])):
    try:
        graph = Graph.from_json(open(case["graph"]).read())
        model = lightnets.build(graph, backend="keras", weights=case["weights"])
        d = np.load(case["io"])
        out[case["name"]] = rel_error(lightnets.run(model, d["x"]), d["want"])
    except Exception as e:  # report every entry, not just the first failure
        out[case["name"]] = f"{type(e).__name__}: {e}"[:500]
    import keras; keras.backend.clear_session()
print(json.dumps(out))
"""


def test_torch_timm_and_paddle_zoo_imports_run_in_keras_in_one_subprocess(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    pytest.importorskip("paddle")
    cases = []
    x = _x()
    assert {k[0] for k in ZOO_KEYS} == {k[0] for k in zoo.list_zoo()}  # every zoo
    for i, key in enumerate(ZOO_KEYS):
        e = zoo.ZOO[key]
        model = _zoo_model(key)
        want = _forward(model, x, e.framework)
        graph, w, info = zoo.import_zoo(*key, model, input_size=SIZE)
        assert info["probe_rel_error"] <= TOL and graph.input_shape[1:] == (SIZE, SIZE)
        stem = tmp_path / f"{i:02d}"
        stem.with_suffix(".json").write_text(graph.to_json())
        lightnets.weights.save(w, stem.with_suffix(".safetensors"))
        np.savez(stem.with_suffix(".io.npz"), x=x, want=want)
        cases.append({"name": f"{key[0]} {key[1]}", "graph": str(stem.with_suffix(".json")),
                      "weights": str(stem.with_suffix(".safetensors")), "io": str(stem.with_suffix(".io.npz"))})
    assert len(cases) == len(ZOO_KEYS) > 0
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    errs = _py(KERAS_RUN, tmp_path / "cases.json", KERAS_BACKEND="tensorflow")
    assert sorted(errs) == sorted(c["name"] for c in cases)
    _judge(errs, "keras")


# --- 2. keras.applications imports in the paddle backend ------------------------------------------
PADDLE_RUN = r"""
import json, sys
import paddle  # first: tensorflow after paddle is fine, the other order segfaults
import keras
import numpy as np
import lightnets
from lightnets import zoo
from lightnets.numerics import rel_error
out = {}
for name, size in json.loads(sys.argv[1]):
    try:
        keras.utils.set_random_seed(0)
        model = zoo.ZOO[("keras", name)].make(10, size)
        rng = np.random.default_rng(1)
        for layer in model.layers:  # randomised BN statistics, as tests/test_zoo_keras.py
            if type(layer).__name__ == "BatchNormalization":
                c = layer.gamma.shape[0]
                layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                                   rng.uniform(0.5, 1.5, c)])
        x = np.random.default_rng(3).standard_normal((2, 3, size, size)).astype(np.float32)
        want = zoo.zoo_forward("keras", model, x)
        assert want.shape == (2, 10), want.shape
        graph, w, info = zoo.import_zoo("keras", name, model, input_size=size, probe_size=size)
        assert info["probe_rel_error"] <= 1e-4, info["probe_rel_error"]
        ours = lightnets.build(graph, backend="paddle", weights=w)
        out[f"keras {name}@{size}"] = rel_error(lightnets.run(ours, x), want)
    except Exception as e:
        out[f"keras {name}@{size}"] = f"{type(e).__name__}: {e}"[:500]
    keras.backend.clear_session()
print(json.dumps(out))
"""


def _keras_cases():
    # the sizes tests/test_zoo_keras.py uses: its CASES where listed, else 96 / 99 (odd: TF 'same' pads)
    sizes = dict(KERAS_CASES)
    return [(n, sizes.get(n, 96 if i % 2 == 0 else 99)) for i, (_, n) in enumerate(zoo.list_zoo("keras"))
            if ("keras", n) in KERAS_KEYS]


def test_keras_applications_imports_run_in_paddle_in_one_subprocess():
    cases = _keras_cases()
    assert len(cases) == len(KERAS_KEYS) > 0 and len(zoo.list_zoo("keras")) == len(zoo.KERAS)
    errs = _py(PADDLE_RUN, json.dumps(cases), KERAS_BACKEND="tensorflow")
    assert sorted(errs) == sorted(f"keras {n}@{s}" for n, s in cases)
    _judge(errs, "paddle")


# --- 3. port round trips through keras, every id ---------------------------------------------------
ROUND_TRIPS = r"""
import json, sys
import paddle  # before tensorflow
import keras
import numpy as np
import lightnets
def eq(a, b):
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
from lightnets import api
from lightnets import weights as W
out = {}
def port(m, to):
    # lightnets.port(m, to=...) without its probe forward passes (test_port.py probes the keras ports):
    # the source's own graph and canonical weights, checked, built in the target backend
    graph = api.backend_of(m).graph_of(m)
    return lightnets.build(graph, to, weights=W.check_weights(graph, lightnets.export_weights(m)))
for mid in json.loads(sys.argv[1]):
    try:
        t = lightnets.build(mid, "torch", num_classes=10, input_size=32, seed=3)
        w0 = lightnets.export_weights(t)
        k1 = port(t, "keras")
        t2 = port(k1, "torch")
        k2 = port(t2, "keras")
        p1 = port(k1, "paddle")
        k3 = port(p1, "keras")
        p2 = port(k3, "paddle")
        # each triple is a round trip from a model of its first backend
        chains = {"torch->keras->torch": (t, t2), "keras->torch->keras": (k1, k2),
                  "keras->paddle->keras": (k1, k3), "paddle->keras->paddle": (p1, p2)}
        bad = [c for c, (a, b) in chains.items()
               if not eq(lightnets.export_weights(a), w0) or not eq(lightnets.export_weights(b), w0)]
        out[mid] = bad
    except Exception as e:
        out[mid] = [f"{type(e).__name__}: {e}"[:500]]
    keras.backend.clear_session()
print(json.dumps({"failed": {k: v for k, v in out.items() if v}, "ids": len(out)}))
"""


def test_port_round_trips_through_keras_bit_exact_in_one_subprocess():
    # the smallest id of each of profiles.FULL_FAMILIES, the keras flavours' (every id with SLOW) and g3 (the keras
    # pairs of tests/test_port.py, probed, with SLOW)
    ids = profiles.full_ids("mobilenet_v1_025_keras", "mobilenet_v2_035_keras", "mobilenet_v3_large_075_keras",
                       "shufflenet_v1_g3_050")
    res = _py(ROUND_TRIPS, json.dumps(ids), KERAS_BACKEND="tensorflow")
    print(f"ROUNDTRIP ids={res['ids']} chains=4")
    assert res["ids"] == len(ids) > 0
    assert res["failed"] == {}
