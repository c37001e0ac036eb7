"""The IR's training definitions: loss, optimizers, learning-rate schedule, and their float64 numpy reference.

Every backend's ``train_steps`` maps its framework's optimizer onto THESE formulas (written once here),
so that N steps from the same canonical weights and batches give the same weights and BN statistics in
torch, keras and paddle, and in :func:`reference_train_steps` (numpy, float64, with its own backward pass
over the whole op vocabulary: :mod:`lightnets.backward`).

Step ``t`` = 1, 2, ... uses the learning rate ``lr_t = optimizer.lr * schedule.factor(t - 1)``.

Loss (``LABEL_SMOOTHING`` = 0.1): softmax cross-entropy with label smoothing, averaged over the batch:
``q = (1 - s) * onehot(y) + s / K``, ``loss = mean_n( -sum_k q_k * log_softmax(z)_k )``.

SGD (torch.optim.SGD with dampening 0): L2 weight decay coupled into the gradient, lr outside the buffer::

    g   = grad + wd * p
    buf = mu * buf + g            (buf = g at step 1)
    p   = p - lr_t * (g + mu * buf   if nesterov else   buf)

AdamW (torch.optim.AdamW): decoupled weight decay, bias-corrected moments, eps OUTSIDE the sqrt of the
bias-corrected second moment::

    p = p * (1 - lr_t * wd)
    m = b1 * m + (1 - b1) * grad;   v = b2 * v + (1 - b2) * grad**2
    p = p - lr_t * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)

Weight decay applies to every trainable parameter (conv/linear weights and biases, BN gamma/beta).
BatchNorm in train mode normalises with the biased batch variance and updates the running statistics
the IR's way (``ops.py``: ``new = (1 - m) * old + m * batch``, unbiased batch variance). Dropout is off
(rate 0) during these steps so that every framework computes the same function.

How each framework is mapped onto the formulas (the backends do this; see docs/design.md §2):

- torch: ``torch.optim.SGD(momentum, nesterov, weight_decay)`` and ``torch.optim.AdamW(betas, eps,
  weight_decay)`` are the formulas as written; ``lr_t`` is set in every param group before each step.
- keras 3 (on tensorflow): hyperparameters are passed as numpy float64 scalars, because keras casts them
  with ``ops.cast(self.momentum, variable.dtype)`` and ``tf.cast`` of a Python float makes a float32 tensor
  first (a float64 run would use momentum 0.8999999762; also beta_1/beta_2/weight_decay).
  ``keras.optimizers.SGD`` keeps ``v = mu * v - lr * g; p += v`` (nesterov ``p += mu * v - lr * g``): the lr
  sits INSIDE the velocity, so ``v = -lr * buf`` holds only at a constant lr; the backend rescales every
  velocity by ``lr_t / lr_{t-1}`` before step t. Keras' ``weight_decay`` is decoupled even on SGD
  (``p -= lr * wd * p``), so it is not used: ``wd * p`` is added to the gradient (coupled L2).
  ``keras.optimizers.AdamW`` adds its epsilon to ``sqrt(v)`` of the UNcorrected ``v``
  (``p -= lr * sqrt(1 - b2**t) / (1 - b1**t) * m / (sqrt(v) + eps_k)``): that is the formula above with
  ``eps_k = eps * sqrt(1 - b2**t)``, which the backend sets before each step. Keras BN updates the moving
  variance with the biased batch variance; the backend rescales the batch term by n / (n - 1).
- paddle: ``paddle.optimizer.Momentum(use_nesterov, weight_decay=L2Decay(wd))`` - paddle's L2 regulariser
  adds ``wd * p`` to the gradient (coupled), which is the SGD above, except that its kernel takes ``mu`` and the
  L2 coefficient as float32 attributes: momentum 0.9 runs as float32(0.9) = 0.8999999762 (parity profiles
  use momenta and decays that are exact in float32, e.g. 0.875 and 2**-11).
  ``paddle.optimizer.AdamW(weight_decay=wd)`` decays ``p -= lr * wd * p`` (decoupled) and its adam kernel
  uses ``eps * sqrt(1 - b2**t)`` next to ``sqrt(v)`` - the formula above. Paddle's
  ``cross_entropy(label_smoothing=)`` smooths a float32 one-hot, so the backend passes the IR's float64
  smoothed targets as soft labels. (``paddle.optimizer.Adam(weight_decay=...)`` would be L2, not AdamW.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .backward import backward, forward, trainable_names
from .errors import InputShapeError, LightnetsError
from .graph import Graph
from .reference import F, check_input

LABEL_SMOOTHING = 0.1


class TrainingSpecError(LightnetsError, ValueError):
    """An optimizer, schedule, batch or label list for a training run is invalid."""


# --- optimizers ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SGD:
    """SGD with momentum, coupled L2 weight decay and optional Nesterov momentum (formula: module doc)."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    kind = "sgd"

    def __post_init__(self):
        _check_number("SGD lr", self.lr, lo=0.0, lo_open=True)
        _check_number("SGD momentum", self.momentum, lo=0.0, hi=1.0, hi_open=True)
        _check_number("SGD weight_decay", self.weight_decay, lo=0.0)
        if self.nesterov and self.momentum == 0:
            raise TrainingSpecError("SGD(nesterov=True) needs momentum > 0; set momentum, e.g. 0.9")

    @property
    def name(self) -> str:
        return f"sgd{'-nesterov' if self.nesterov else ''}"

    def init_state(self, params: dict[str, np.ndarray]) -> dict:
        return {"buf": {}}

    def update(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], state: dict, lr: float,
               t: int) -> None:
        """One step ``t`` (1-based) in place, float64."""
        for k, p in params.items():
            g = grads[k] + self.weight_decay * p if self.weight_decay else grads[k]
            buf = state["buf"].get(k)
            buf = g.copy() if buf is None else self.momentum * buf + g
            state["buf"][k] = buf
            d = g + self.momentum * buf if self.nesterov else buf
            params[k] = p - lr * d


@dataclass(frozen=True)
class AdamW:
    """Adam with decoupled weight decay, torch's bias correction and eps placement (formula: module doc)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    kind = "adamw"

    def __post_init__(self):
        _check_number("AdamW lr", self.lr, lo=0.0, lo_open=True)
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2):
            raise TrainingSpecError(f"AdamW betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", (float(self.betas[0]), float(self.betas[1])))
        for b in self.betas:
            _check_number("AdamW beta", b, lo=0.0, hi=1.0, hi_open=True)
        _check_number("AdamW eps", self.eps, lo=0.0, lo_open=True)
        _check_number("AdamW weight_decay", self.weight_decay, lo=0.0)

    @property
    def name(self) -> str:
        return "adamw"

    def init_state(self, params: dict[str, np.ndarray]) -> dict:
        return {"m": {k: np.zeros_like(v) for k, v in params.items()},
                "v": {k: np.zeros_like(v) for k, v in params.items()}}

    def update(self, params, grads, state, lr, t) -> None:
        b1, b2 = self.betas
        c1, c2 = 1.0 - b1 ** t, 1.0 - b2 ** t
        for k, p in params.items():
            g = grads[k]
            p = p * (1.0 - lr * self.weight_decay)
            m = state["m"][k] = b1 * state["m"][k] + (1.0 - b1) * g
            v = state["v"][k] = b2 * state["v"][k] + (1.0 - b2) * g * g
            params[k] = p - lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


Optimizer = SGD | AdamW


def _check_number(what, v, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        raise TrainingSpecError(f"{what} must be a finite number {' and '.join(s for s in (lo_s, hi_s) if s)}, "
                                f"got {v!r}")


# --- learning-rate schedule -----------------------------------------------------------------------
@dataclass(frozen=True)
class WarmupCosine:
    """Linear warmup then cosine decay, as a factor of the optimizer's lr, for 0-based step index ``i``::

        i <  warmup: (i + 1) / warmup
        i >= warmup: floor + (1 - floor) * (1 + cos(pi * (i - warmup) / (total - warmup))) / 2

    ``total`` is the length of the run the cosine spans (the factor never reaches ``floor`` before it).
    """

    warmup: int = 2
    total: int = 10
    floor: float = 0.0

    def __post_init__(self):
        if not (isinstance(self.warmup, int) and isinstance(self.total, int) and 0 <= self.warmup < self.total):
            raise TrainingSpecError(f"WarmupCosine needs ints 0 <= warmup < total, got warmup={self.warmup!r}, "
                                    f"total={self.total!r}; e.g. WarmupCosine(warmup=2, total=10)")
        _check_number("WarmupCosine floor", self.floor, lo=0.0, hi=1.0)

    def factor(self, i: int) -> float:
        if i < self.warmup:
            return (i + 1) / self.warmup
        frac = min(i - self.warmup, self.total - self.warmup) / (self.total - self.warmup)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def learning_rates(optimizer: Optimizer, schedule: WarmupCosine | None, steps: int) -> list[float]:
    """``lr_t`` for t = 1..steps: the lrs every backend sets, identically."""
    lrs = [optimizer.lr * (schedule.factor(i) if schedule is not None else 1.0) for i in range(steps)]
    if optimizer.kind == "sgd" and optimizer.momentum and any(lr <= 0 for lr in lrs):
        raise TrainingSpecError("the schedule reaches lr 0 within the run; with SGD momentum keras cannot carry "
                                "its velocity across an lr of 0 - give WarmupCosine a floor > 0 or more total steps")
    return lrs


# --- loss ---------------------------------------------------------------------------------------------
def cross_entropy(logits: np.ndarray, labels: np.ndarray, smoothing: float = LABEL_SMOOTHING):
    """``(loss, dloss/dlogits)`` of the IR loss (module doc), float64."""
    z = np.asarray(logits, F)
    n, k = z.shape
    zs = z - z.max(axis=1, keepdims=True)
    logp = zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))
    q = np.full((n, k), smoothing / k)
    q[np.arange(n), labels] += 1.0 - smoothing
    loss = float(-(q * logp).sum() / n)
    return loss, (np.exp(logp) - q) / n


def one_hot_smoothed(labels: np.ndarray, k: int, smoothing: float = LABEL_SMOOTHING) -> np.ndarray:
    """The smoothed targets ``q`` (float64), for frameworks whose loss takes soft labels."""
    q = np.full((len(labels), k), smoothing / k)
    q[np.arange(len(labels)), labels] += 1.0 - smoothing
    return q


# --- runs -------------------------------------------------------------------------------------------
@dataclass
class Trace:
    """What a training run leaves: canonical weights (params AND BN running statistics) after every step,
    the loss of every step (before its update) and the lr it used."""

    weights: list[dict[str, np.ndarray]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)


def check_run(graph: Graph, batches, labels, optimizer, schedule) -> tuple[list, list, list[float]]:
    """Validate a run's inputs; return (batches, labels as int64 arrays, lr_t for every step)."""
    if not isinstance(optimizer, (SGD, AdamW)):
        raise TrainingSpecError(f"optimizer must be lightnets.optim.SGD(...) or AdamW(...), got "
                                f"{type(optimizer).__name__}")
    if schedule is not None and not isinstance(schedule, WarmupCosine):
        raise TrainingSpecError(f"schedule must be None or lightnets.optim.WarmupCosine(...), got "
                                f"{type(schedule).__name__}")
    batches, labels = list(batches), list(labels)
    if not batches or len(batches) != len(labels):
        raise TrainingSpecError(f"got {len(batches)} batches and {len(labels)} label arrays; pass one label "
                                "array per batch (at least one step)")
    if graph.multi_output or len(graph.output_shape) != 1:
        raise TrainingSpecError(f"graph {graph.name!r} returns {graph.output_shapes}, not one (classes,) logits "
                                "vector; train a classifier graph (include_top=True, no features=)")
    k = graph.output_shape[0]
    out = []
    for i, (x, y) in enumerate(zip(batches, labels, strict=True)):
        check_input(graph, np.asarray(x))
        y = np.asarray(y)
        if y.shape != (np.shape(x)[0],) or y.dtype.kind not in "iu" or (y.size and not 0 <= y.min() <= y.max() < k):
            raise InputShapeError(f"labels of step {i + 1} must be {np.shape(x)[0]} integer class ids in [0, {k}), "
                                  f"got shape {y.shape}, dtype {y.dtype}; pass np.array([...], dtype=np.int64)")
        out.append(y.astype(np.int64))
    return [np.asarray(x) for x in batches], out, learning_rates(optimizer, schedule, len(batches))


def reference_train_steps(graph: Graph, weights, batches, labels, optimizer: Optimizer,
                          schedule: WarmupCosine | None = None) -> Trace:
    """The float64 numpy run: train-mode forward, the IR loss, :func:`backward`, the optimizer formula."""
    batches, labels, lrs = check_run(graph, batches, labels, optimizer, schedule)
    w = {k: np.array(v, F) for k, v in weights.items()}
    names = trainable_names(graph)
    state = optimizer.init_state({k: w[k] for k in names})
    trace = Trace()
    for t, (x, y, lr) in enumerate(zip(batches, labels, lrs, strict=True), start=1):
        loss, grads, stats = loss_and_gradients(graph, w, x, y)
        w.update(stats)
        params = {k: w[k] for k in names}
        optimizer.update(params, grads, state, lr, t)
        w.update(params)
        trace.weights.append({k: v.copy() for k, v in w.items()})
        trace.losses.append(loss)
        trace.lrs.append(lr)
    return trace


def loss_and_gradients(graph: Graph, weights, x, labels, smoothing: float = LABEL_SMOOTHING):
    """Train-mode ``(loss, {trainable param: gradient}, updated BN statistics)`` in float64."""
    cache = forward(graph, weights, x, train=True)
    loss, dz = cross_entropy(cache.values[graph.output], labels, smoothing)
    grads = backward(graph, cache, dz)
    return loss, {k: grads[k] for k in trainable_names(graph)}, cache.stats


__all__ = ["LABEL_SMOOTHING", "SGD", "AdamW", "WarmupCosine", "Trace", "TrainingSpecError", "cross_entropy",
           "one_hot_smoothed", "learning_rates", "check_run", "reference_train_steps",
           "loss_and_gradients"]
