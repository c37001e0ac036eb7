"""Distributed engines: a lightnets model is a native model of each framework's own data-parallel engine.

- torch: DistributedDataParallel over the gloo backend, 2 processes (torch.multiprocessing.spawn).
  ``BACKEND.sync_batchnorm`` is torch's ``SyncBatchNorm.convert_sync_batchnorm`` plus re-binding the graph's
  steps (a GraphModule runs the modules it captured at build: torch's function alone swaps the submodules but
  leaves forward on the old BatchNorm2d). torch's SyncBatchNorm runs on GPU/XPU/HPU only: DDP refuses it on
  CPU ("SyncBatchNorm layers only work with GPU modules"), so here the one-process equality is shown with
  frozen BN (eval-mode statistics, gamma/beta fixed) and train-mode BN is per shard.
- keras: ``tf.distribute.MirroredStrategy`` over 2 logical CPU devices, BN ``synchronized=True``
  (``BACKEND.sync_batchnorm``) and without it.
- paddle: ``paddle.DataParallel`` over 2 CPU processes (``paddle.distributed.spawn(backend="gloo")``); paddle
  3.3.1 has no CPU SyncBatchNorm kernel (that test is skipped with paddle's error), frozen and per-shard BN run.

"One process": with synchronised (or frozen) BN the weights and gradients after every step equal ONE process
on the concatenated batch - the float64 numpy reference (``lightnets.optim``) - within 1e-10. Without
synchronisation every replica normalises its own shard: the gradients are the mean of per-shard gradients,
which the reference computes shard by shard; BN statistics are per replica (torch DDP re-broadcasts rank 0's
buffers at every forward, paddle does not).

Slow profile: ``LIGHTNETS_SLOW=1 .venv/bin/pytest -q tests/test_distributed.py`` (a few minutes on 2 cores).
Each engine runs in a subprocess: ``python tests/test_distributed.py {torch,keras,paddle} {frozen,shard,sync} OUT``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from profiles import SLOW

import lightnets
from lightnets import backward, optim
from lightnets import weights as W
from lightnets.layouts import to_canonical
from lightnets.numerics import rel_error

slow = pytest.mark.skipif(not SLOW, reason="distributed engines (minutes): set LIGHTNETS_SLOW=1")

MODEL, SIZE, CLASSES, BATCH, STEPS, RANKS = "mobilenet_v2_050", 64, 10, 8, 2, 2
# no weight decay: the engines reduce gradients, and an L2 term added per replica would be summed twice
SPEC = optim.SGD(lr=0.01, momentum=0.875)
REL = 1e-10  # float64, as the train-step parity (parity/train.py TRAIN_REL)
PADDLE_SYNC_ERROR = "(NotFound) The kernel `sync_batch_norm` is not registered."
TORCH_SYNC_ERROR = "SyncBatchNorm layers only work with GPU modules"
NOISE = 1e-12  # |gradient| / max |gradient| of backward.null_gradient_params (measured <= 5e-16 in torch)


def problem():
    """The graph, canonical weights and 2 steps of batches (8 images each) every engine trains on."""
    graph = lightnets.get_spec(MODEL, num_classes=CLASSES, input_size=SIZE)
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((BATCH, *graph.input_shape)) for _ in range(STEPS)]
    ys = [rng.integers(0, CLASSES, BATCH) for _ in range(STEPS)]
    return graph, W.init_weights(graph, 3), xs, ys


def shard(a, rank):
    n = len(a) // RANKS
    return a[rank * n: (rank + 1) * n]


# --- engines (run in subprocesses) -------------------------------------------------------------------
BN_LEAVES = {"batch_norm": {"gamma": "weight", "beta": "bias"}}  # torch and paddle BN parameter names


def _torch_rank(rank, out, mode, init):
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=RANKS)
    be = lightnets.load_backend("torch")
    graph, w, xs, ys = problem()
    model = be.build(graph, "float64")
    be.set_weights(model, w)
    if mode == "sync":
        model = be.sync_batchnorm(model)
        try:
            DDP(model)
        except ValueError as e:  # torch: SyncBatchNorm is GPU/XPU/HPU only
            (Path(out) / "error.txt").write_text(str(e))
            dist.destroy_process_group()
            return
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if mode == "frozen":
        for m in bns:
            m.weight.requires_grad_(False)
            m.bias.requires_grad_(False)
    ddp = DDP(model)
    opt = be.optimizer(SPEC, [p for p in ddp.parameters() if p.requires_grad])
    arrays = {}
    with be.training(model):
        if mode == "frozen":
            for m in bns:
                m.eval()
        for t in range(STEPS):
            opt.zero_grad()
            loss = be.loss(ddp(torch.as_tensor(shard(xs[t], rank))), shard(ys[t], rank))
            loss.backward()
            if t == 0:
                grads = canonical_grads(graph, lambda n, s: getattr(
                    model.get_submodule(n.name), BN_LEAVES.get(n.op, {}).get(s, s)).grad, trainable(graph, mode))
                arrays.update({f"grad/{k}": v for k, v in grads.items()})
            opt.step()
            arrays.update({f"{t}/{k}": v for k, v in be.get_weights(model).items()})
    np.savez(Path(out) / f"rank{rank}.npz", **arrays)
    dist.destroy_process_group()


def run_torch(out, mode):
    import torch.multiprocessing as mp

    mp.spawn(_torch_rank, args=(out, mode, f"file://{out}/store"), nprocs=RANKS, join=True)


def run_keras(out, mode):
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * RANKS)
    import keras

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    be = lightnets.load_backend("keras")
    graph, w, xs, ys = problem()
    with strategy.scope():
        model = be.build(graph, "float64")
        be.set_weights(model, w)
        if mode == "sync":
            model = be.sync_batchnorm(model)
        opt = be.optimizer(SPEC, model.trainable_variables)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    loss_obj = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=optim.LABEL_SMOOTHING,
                                                    reduction=None, dtype="float64")

    @tf.function
    def step(x, y):
        def replica(x, y):
            with tf.GradientTape() as tape:
                per_example = loss_obj(y, model(x, training=True))
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=BATCH)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica, args=(x, y)), axis=None)

    def per_replica(batch):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(shard(batch, ctx.replica_id_in_sync_group)))

    arrays = {"devices": np.array(devices)}
    for t in range(STEPS):
        nhwc = np.ascontiguousarray(xs[t].transpose(0, 2, 3, 1))
        step(per_replica(nhwc), per_replica(np.eye(CLASSES)[ys[t]]))
        arrays.update({f"{t}/{k}": v for k, v in be.get_weights(model).items()})
    np.savez(Path(out) / "rank0.npz", **arrays)


def _paddle_rank(out, mode):
    import paddle
    import paddle.distributed as dist
    from paddle import nn

    paddle.set_device("cpu")
    dist.init_parallel_env()
    rank = dist.get_rank()
    be = lightnets.load_backend("paddle")
    graph, w, xs, ys = problem()
    model = be.build(graph, "float64")
    be.set_weights(model, w)
    if mode == "sync":
        model = be.sync_batchnorm(model)
        assert type(model.layer(graph.nodes[1].name)).__name__ == "SyncBatchNorm"
    bns = [la for la in model.sublayers() if isinstance(la, nn.BatchNorm2D)]
    if mode == "frozen":
        for la in bns:
            la.weight.stop_gradient = True
            la.bias.stop_gradient = True
    dp = paddle.DataParallel(model)
    opt = be.optimizer(SPEC, [p for p in model.parameters() if not p.stop_gradient])
    layouts = {("linear", "weight"): "T"}
    arrays = {}
    try:
        with be.training(model):
            if mode == "frozen":
                for la in bns:
                    la.eval()
            for t in range(STEPS):
                loss = be.loss(dp(paddle.to_tensor(shard(xs[t], rank))), shard(ys[t], rank))
                loss.backward()
                if t == 0:
                    def leaf(n, s):
                        layer = model
                        for part in n.name.split("."):
                            layer = getattr(layer, part)
                        return getattr(layer, BN_LEAVES.get(n.op, {}).get(s, s)).grad.numpy()
                    grads = canonical_grads(graph, leaf, trainable(graph, mode), layouts)
                    arrays.update({f"grad/{k}": v for k, v in grads.items()})
                opt.step()
                opt.clear_grad()
                arrays.update({f"{t}/{k}": v for k, v in be.get_weights(model).items()})
    except RuntimeError as e:
        (Path(out) / f"error{rank}.txt").write_text(str(e))
        return
    np.savez(Path(out) / f"rank{rank}.npz", **arrays)


def run_paddle(out, mode):
    import paddle.distributed as dist

    dist.spawn(_paddle_rank, args=(out, mode), nprocs=RANKS, backend="gloo")


ENGINES = {"torch": run_torch, "keras": run_keras, "paddle": run_paddle}


def trainable(graph, mode) -> list[str]:
    """The parameters the optimizer updates: all, or (frozen BN) all but BN gamma/beta."""
    names = backward.trainable_names(graph)
    if mode == "frozen":
        bns = {n.name for n in graph.nodes if n.op == "batch_norm"}
        names = [k for k in names if k.rsplit(".", 1)[0] not in bns]
    return names


def canonical_grads(graph, leaf_of, names, layouts=None):
    """{canonical name: gradient} for ``names`` from ``leaf_of(node, suffix) -> native gradient``."""
    nodes = {n.name: n for n in graph.nodes}
    out = {}
    for name in names:
        node, suffix = name.rsplit(".", 1)
        g = leaf_of(nodes[node], suffix)
        g = g.detach().numpy() if hasattr(g, "detach") else np.asarray(g)
        out[name] = to_canonical(g, (layouts or {}).get((nodes[node].op, suffix), "id"))
    return out


# --- expectations: the float64 numpy reference ----------------------------------------------------------
def expected(mode: str):
    """Per step: trainable weights, BN statistics per rank, step-1 gradients, from the numpy reference.

    "sync"/"frozen": one process on the concatenated batch (frozen: BN on its running statistics, gamma/beta
    fixed). "shard": the mean of per-shard gradients; BN statistics per rank as each rank's own chain
    (``own``) and as torch DDP's (each forward starts from rank 0's buffers: ``bcast``)."""
    graph, w, xs, ys = problem()
    names = trainable(graph, mode)
    cur = {k: np.array(v, np.float64) for k, v in w.items()}
    state = SPEC.init_state({k: cur[k] for k in names})
    stats = [k for k in cur if k.endswith((".mean", ".var"))]
    own = [{k: cur[k] for k in stats} for _ in range(RANKS)]
    out = {"weights": [], "own": [], "bcast": [], "train": mode != "frozen"}
    for t in range(STEPS):
        if mode in ("sync", "frozen"):
            cache = backward.forward(graph, cur, xs[t], train=mode == "sync")
            dz = optim.cross_entropy(cache.values[graph.output], ys[t])[1]
            grads = backward.backward(graph, cache, dz)
            own = [cache.stats or {k: cur[k] for k in stats}] * RANKS
            bcast = own
        else:
            per = [optim.loss_and_gradients(graph, {**cur, **own[r]}, shard(xs[t], r), shard(ys[t], r))
                   for r in range(RANKS)]
            grads = {k: sum(p[1][k] for p in per) / RANKS for k in names}
            bcast = [backward.forward(graph, {**cur, **own[0]}, shard(xs[t], r)).stats for r in range(RANKS)]
            own = [p[2] for p in per]
        if t == 0:
            out["grads"] = {k: grads[k] for k in names}
        params = {k: cur[k] for k in names}
        SPEC.update(params, grads, state, SPEC.lr, t + 1)
        cur.update(params)
        if mode == "sync":
            cur.update(own[0])
        out["weights"].append({k: cur[k].copy() for k in names})
        out["own"].append(own)
        out["bcast"].append(bcast)
    return out


def _launch(engine, mode, tmp_path):
    out = tmp_path / f"{engine}-{mode}"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "2",
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, engine, mode, str(out)], env=env, capture_output=True,
                          text=True, timeout=1200)
    return out, proc.returncode, (proc.stdout + proc.stderr)[-3000:]


def _ranks(out):
    return [dict(np.load(p)) for p in sorted(out.glob("rank*.npz"))]


def _worst(got: dict, want: dict) -> tuple[float, str]:
    errs = {k: rel_error(got[k], v) for k, v in want.items()}
    k = max(errs, key=errs.get)
    return errs[k], k


def _check(ranks, exp, stats_of=None, grads=True):
    """Every rank's weights after every step (and step-1 gradients, BN statistics) against ``exp``."""
    assert len(ranks) == (1 if "devices" in ranks[0] else RANKS)
    report = {}
    for r, got in enumerate(ranks):
        for t in range(STEPS):
            report[f"rank{r} step{t + 1} weights"] = _worst({k: got[f"{t}/{k}"] for k in exp["weights"][t]},
                                                            exp["weights"][t])
            if stats_of is not None:
                want = stats_of(r, t)
                report[f"rank{r} step{t + 1} bn stats"] = _worst({k: got[f"{t}/{k}"] for k in want}, want)
        if grads:  # a null-gradient parameter's train-mode gradient is rounding noise: held to its size only
            null = set(backward.null_gradient_params(problem()[0])) if exp["train"] else set()
            want = {k: v for k, v in exp["grads"].items() if k not in null}
            report[f"rank{r} step1 grads"] = _worst({k: got[f"grad/{k}"] for k in want}, want)
            scale = max(float(np.abs(v).max()) for v in want.values())
            noise = max((float(np.abs(got[f"grad/{k}"]).max()) / scale for k in null & set(exp["grads"])), default=0.0)
            report[f"rank{r} step1 null-gradient noise / grad scale"] = (noise, f"{len(null)} tensors")
    print(json.dumps({k: f"{e:.2e} ({n})" for k, (e, n) in report.items()}, indent=1))
    bad = {k: v for k, v in report.items() if not v[0] <= (NOISE if "noise" in k else REL)}
    assert not bad, f"over {REL}: {bad}"


@pytest.fixture(scope="module")
def reference():
    cache = {}

    def get(mode):
        if mode not in cache:
            cache[mode] = expected(mode)
        return cache[mode]
    return get


# --- fast: the conversion itself ------------------------------------------------------------------------
def test_torch_sync_batchnorm_converts_every_lightnets_batchnorm():
    torch = pytest.importorskip("torch")
    be = lightnets.load_backend("torch")
    graph = lightnets.get_spec("shufflenet_v1_g3_050", num_classes=10, input_size=32)
    model = lightnets.build(graph, backend="torch", dtype="float64")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    before = be.run(model, x)
    synced = be.sync_batchnorm(model)
    bns = [n.name for n in graph.nodes if n.op == "batch_norm"]
    assert all(type(synced.get_submodule(n)).__name__ == "SyncBatchNorm" for n in bns)
    assert rel_error(be.run(synced, x), before) == 0.0  # eval mode: the same function
    assert {id(p) for p in synced.parameters()} == {id(p) for p in model.parameters()}
    assert torch.nn.SyncBatchNorm in {type(m) for m in synced.modules()}


def test_torch_convert_sync_batchnorm_alone_takes_effect():
    """torch's own function on a lightnets model: forward then runs SyncBatchNorm (a GraphModule reads its
    modules at their node names), and a module replaced by hand is used too."""
    torch = pytest.importorskip("torch")
    model = lightnets.build("shufflenet_v1_g3_050", backend="torch", num_classes=10, input_size=32)
    x = torch.randn(2, 3, 32, 32)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(type(m).__name__)) for m in synced.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        synced(x)
    assert seen and set(seen) == {"SyncBatchNorm"}
    for h in hooks:
        h.remove()
    with torch.no_grad():
        before = synced(x)
        synced.head.fc = torch.nn.Identity()  # a replaced module is the one that runs
        assert synced(x).shape != before.shape


def test_paddle_convert_sync_batchnorm_alone_takes_effect():
    """paddle's own function on a lightnets model swaps the sublayers in place and forward runs them: paddle
    3.3.1 has no CPU sync_batch_norm kernel, so the converted model's forward raises its error (had forward
    kept the old BatchNorm2D layers, it would run unsynchronised, silently). A layer replaced by hand runs."""
    paddle = pytest.importorskip("paddle")
    model = lightnets.build("shufflenet_v1_g3_050", backend="paddle", num_classes=10, input_size=32)
    x = paddle.randn([2, 3, 32, 32])
    with paddle.no_grad():
        before = model(x)
        model.head.fc = paddle.nn.Identity()
        assert model(x).shape != before.shape
    synced = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert synced is model and type(model.layer("stem.bn")).__name__ == "SyncBatchNorm"
    with pytest.raises(RuntimeError, match="sync_batch_norm"), paddle.no_grad():
        synced(x)


# --- slow: the engines ---------------------------------------------------------------------------------
@slow
@pytest.mark.parametrize("mode", ["frozen", "shard"])
def test_paddle_data_parallel(tmp_path, reference, mode):
    out, rc, log = _launch("paddle", mode, tmp_path)
    assert rc == 0 and not list(out.glob("error*.txt")), log
    exp = reference(mode)
    _check(_ranks(out), exp, stats_of=(lambda r, t: exp["own"][t][r]))


@slow
def test_paddle_sync_batchnorm(tmp_path):
    out, rc, log = _launch("paddle", "sync", tmp_path)
    errors = [p.read_text() for p in out.glob("error*.txt")]
    if errors and all(PADDLE_SYNC_ERROR in e for e in errors):
        pytest.skip(f"paddle 3.3.1 CPU has no SyncBatchNorm: BACKEND.sync_batchnorm (nn.SyncBatchNorm."
                    f"convert_sync_batchnorm + re-binding) converts, the forward raises RuntimeError: "
                    f"{PADDLE_SYNC_ERROR} (the kernel is GPU-only); "
                    "paddle.DataParallel over gloo with frozen and per-shard BN is tested")
    assert rc == 0 and not errors, log + "".join(errors)


@slow
def test_torch_ddp_frozen_bn_equals_one_process(tmp_path, reference):
    out, rc, log = _launch("torch", "frozen", tmp_path)
    assert rc == 0, log
    exp = reference("frozen")
    _check(_ranks(out), exp, stats_of=lambda r, t: exp["own"][t][r])


@slow
def test_torch_ddp_per_shard_bn(tmp_path, reference):
    out, rc, log = _launch("torch", "shard", tmp_path)
    assert rc == 0, log
    exp = reference("shard")
    _check(_ranks(out), exp, stats_of=lambda r, t: exp["bcast"][t][r])


@slow
def test_torch_ddp_sync_batchnorm(tmp_path):
    out, rc, log = _launch("torch", "sync", tmp_path)
    assert rc == 0, log
    error = (out / "error.txt").read_text() if (out / "error.txt").exists() else ""
    if TORCH_SYNC_ERROR in error:
        pytest.skip(f"torch {__import__('torch').__version__}: DistributedDataParallel refuses SyncBatchNorm on CPU "
                    f"(ValueError: {error}); SyncBatchNorm.forward needs a cuda/xpu/hpu input. The conversion of "
                    "the lightnets BatchNorm2d is tested above; frozen and per-shard BN run under DDP")
    assert not error


@slow
def test_keras_mirrored_strategy_synchronized_bn_equals_one_process(tmp_path, reference):
    out, rc, log = _launch("keras", "sync", tmp_path)
    assert rc == 0, log
    ranks = _ranks(out)
    assert len(ranks[0]["devices"]) == RANKS
    exp = reference("sync")
    # moving means over both replicas = one process (keras' own moving-variance rule is the biased one)
    _check(ranks, exp, grads=False, stats_of=lambda r, t: {k: v for k, v in exp["own"][t][0].items()
                                                           if k.endswith(".mean")})


@slow
def test_keras_mirrored_strategy_per_replica_bn(tmp_path, reference):
    out, rc, log = _launch("keras", "shard", tmp_path)
    assert rc == 0, log
    _check(_ranks(out), reference("shard"), grads=False)


if __name__ == "__main__":
    engine, mode, out_dir = sys.argv[1:4]
    ENGINES[engine](out_dir, mode)
