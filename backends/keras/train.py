"""Keras training: train-mode BN, gradients over the three keras backends, and the optimizer-step hooks
(``lightnets.optim``), as a mixin of the keras backend object."""

from __future__ import annotations

import contextlib
import math

import numpy as np

from lightnets.errors import LightnetsError
from lightnets.layouts import to_nhwc

from .layers import custom_objects
from .lowering import _GRAPH, _dtype, graph_of, layer_name


class KerasTraining:
    """Train-mode forward, gradients and optimizer steps of a lightnets keras model."""


    def _train_call(self, model, x):
        """Keras updates the moving variance with the biased batch variance; the IR pins the unbiased one
        (torch convention), so the batch term of each update is rescaled by n / (n - 1) afterwards."""
        import keras

        graph = graph_of(model)
        shapes = graph.shapes_at(x.shape[1], x.shape[2])
        bns = [(n, model.get_layer(layer_name(n.name))) for n in graph.nodes if n.op == "batch_norm"]
        old = {n.name: layer.moving_variance.numpy() for n, layer in bns}
        dropouts = [la for la in model.layers if isinstance(la, keras.layers.Dropout)]
        rates = [la.rate for la in dropouts]
        try:
            for la in dropouts:
                la.rate = 0.0
            out = model(x, training=True)
            out = ([keras.ops.convert_to_numpy(y) for y in out] if isinstance(out, (list, tuple))
                   else keras.ops.convert_to_numpy(out))
        finally:
            for la, rate in zip(dropouts, rates, strict=True):
                la.rate = rate
        for node, layer in bns:
            _, h, w = shapes[node.inputs[0]]
            n, keep = x.shape[0] * h * w, layer.momentum
            kept = keep * old[node.name]
            layer.moving_variance.assign(kept + (layer.moving_variance.numpy() - kept) * (n / (n - 1)))
        return out

    def _backward(self, model, x, probe, variables):
        """keras on tensorflow (GradientTape), torch (autograd) or jax (jax.grad of ``model.stateless_call``)."""
        import keras

        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            xt = tf.constant(x)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                loss = self.probe_loss(model(xt, training=False), probe, tf.reduce_sum)
            grads = [g.numpy() for g in tape.gradient(loss, [xt, *variables])]
        elif backend == "torch":
            import torch

            xt = torch.tensor(x, requires_grad=True)
            pt = [torch.as_tensor(p) for p in probe] if isinstance(probe, list) else torch.as_tensor(probe)
            loss = self.probe_loss(model(xt, training=False), pt)
            grads = torch.autograd.grad(loss, [xt, *(v.value for v in variables)])
            grads = [g.detach().cpu().numpy() for g in grads]
        elif backend == "jax":
            import jax

            trainable = model.trainable_variables
            position = {id(v): i for i, v in enumerate(trainable)}
            missing = [v.path for v in variables if id(v) not in position]
            if missing:
                raise LightnetsError(f"keras-jax gradients: {missing[:3]} are not trainable variables of the model")
            fixed = [v.value for v in model.non_trainable_variables]

            def loss(xv, values, pv):
                y, _ = model.stateless_call(values, fixed, xv, training=False)
                return self.probe_loss(y, pv)
            # jitted: one XLA compile of the whole backward (op-by-op eager dispatch measured 2.7x slower)
            g_x, g_vars = jax.jit(jax.grad(loss, argnums=(0, 1)))(jax.numpy.asarray(x), [v.value for v in trainable],
                                                                  probe)
            grads = [np.asarray(g_x)] + [np.asarray(g_vars[position[id(v)]]) for v in variables]
        else:
            raise LightnetsError(f"gradients are implemented for keras on tensorflow, torch and jax, not {backend!r}")
        dtype = _dtype(model)
        return grads[0], [np.asarray(g, dtype) for g in grads[1:]]


    # --- training: the IR's loss, optimizers and schedule (lightnets.optim) ----------------------------
    def optimizer(self, spec, params):
        """The keras optimizer of a ``lightnets.optim`` spec, built over the variables ``params``, its lr variable
        in their dtype (keras makes it in floatx). SGD gets no ``weight_decay`` (keras' is decoupled): the trainer
        adds the IR's coupled L2 to the gradients, rescales the velocities when the lr changes and sets AdamW's
        epsilon per step.

        Hyperparameters are numpy float64 scalars (still ``float`` instances): keras 3.15 on tensorflow applies
        ``ops.cast(self.momentum, variable.dtype)`` (also beta_1/beta_2, weight_decay), and ``tf.cast`` of a
        Python float makes a float32 tensor first - a float64 run would use momentum 0.8999999762 (measured:
        weights off by 3.7e-9 relative after 2 SGD steps)."""
        import keras

        f64 = np.float64
        previous = keras.config.floatx()
        keras.config.set_floatx(keras.backend.standardize_dtype(params[0].dtype))
        try:
            if spec.kind == "sgd":
                opt = keras.optimizers.SGD(learning_rate=f64(spec.lr), momentum=f64(spec.momentum),
                                           nesterov=spec.nesterov)
            else:
                opt = keras.optimizers.AdamW(learning_rate=f64(spec.lr), weight_decay=f64(spec.weight_decay),
                                             beta_1=f64(spec.betas[0]), beta_2=f64(spec.betas[1]),
                                             epsilon=f64(spec.eps))
        finally:
            keras.config.set_floatx(previous)
        opt.build(params)
        return opt

    def loss(self, logits, labels):
        """The IR loss as keras' own: categorical cross-entropy on logits with label smoothing
        ``optim.LABEL_SMOOTHING`` on the one-hot ``labels``, batch mean, in the logits' dtype."""
        import keras

        from lightnets.optim import LABEL_SMOOTHING

        dtype = keras.backend.standardize_dtype(logits.dtype)
        target = keras.ops.one_hot(keras.ops.convert_to_tensor(labels), logits.shape[-1], dtype=dtype)
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=LABEL_SMOOTHING,
                                                    dtype=dtype)(target, logits)

    @contextlib.contextmanager
    def training(self, model):
        """Context: every dropout's rate 0 (keras' train mode is a per-call flag: the trainer passes it)."""
        import keras

        dropouts = [la for la in model.layers if isinstance(la, keras.layers.Dropout)]
        rates = [la.rate for la in dropouts]
        for la in dropouts:
            la.rate = 0.0
        try:
            yield model
        finally:
            for la, rate in zip(dropouts, rates, strict=True):
                la.rate = rate

    @staticmethod
    def correct_bn_variance(model, old: dict, batch: int, hw: dict) -> None:
        """Keras updates a moving variance with the BIASED batch variance; rescale the batch term of the update
        by n / (n - 1) (the IR's unbiased update). ``old``: layer name -> moving variance before the step;
        ``hw``: layer name -> spatial size of the BN input."""
        for name, before in old.items():
            layer = model.get_layer(name)
            n = batch * hw[name]
            kept = layer.momentum * before
            layer.moving_variance.assign(kept + (layer.moving_variance.numpy() - kept) * (n / (n - 1)))

    def _trainer(self, model, spec):
        """Keras semantics mapped as the module doc says; keras on tensorflow (GradientTape) or torch (autograd)."""
        graph = graph_of(model)
        variables = list(model.trainable_variables)  # the graph's trainable parameters
        dtype = np.dtype(model.inputs[0].dtype)
        opt = self.optimizer(spec, variables)
        bns = [n for n in graph.nodes if n.op == "batch_norm"]
        loss_and_grads = self._loss_and_grads_fn(model, variables)
        lrs: list[float] = []

        def step(x, y, lr):
            xn = to_nhwc(x, dtype)
            shapes = graph.shapes_at(xn.shape[1], xn.shape[2])
            hw = {layer_name(n.name): shapes[n.inputs[0]][1] * shapes[n.inputs[0]][2] for n in bns}
            old = {name: model.get_layer(name).moving_variance.numpy() for name in hw}
            if spec.kind == "sgd" and spec.momentum and lrs:  # keras' velocity carries lr
                for m in opt.momentums:
                    m.assign(m * (lr / lrs[-1]))
            if spec.kind == "adamw":  # keras adds eps to sqrt of the uncorrected v
                opt.epsilon = np.float64(spec.eps * math.sqrt(1.0 - spec.betas[1] ** (len(lrs) + 1)))
            opt.learning_rate = lr
            loss, grads = loss_and_grads(xn, np.asarray(y))
            if spec.kind == "sgd" and spec.weight_decay:  # the IR's coupled L2
                grads = [g + spec.weight_decay * v.value for g, v in zip(grads, variables, strict=True)]
            opt.apply_gradients(zip(grads, variables, strict=True))
            self.correct_bn_variance(model, old, xn.shape[0], hw)
            lrs.append(lr)
            return float(loss)
        return step

    def sync_batchnorm(self, model):
        """The same lightnets keras model with every BatchNormalization ``synchronized=True`` (batch statistics
        over all replicas of a ``tf.distribute`` strategy; tensorflow only), weights copied. Call it inside
        ``strategy.scope()`` so that the new variables are mirrored."""
        import keras

        config = model.get_config()
        for layer in config["layers"]:
            if layer["class_name"] == "BatchNormalization":
                layer["config"]["synchronized"] = True
        with keras.saving.custom_object_scope(custom_objects()):
            synced = type(model).from_config(config)
        synced.set_weights(model.get_weights())
        setattr(synced, _GRAPH, graph_of(model))
        return synced

    def _loss_and_grads_fn(self, model, variables):
        """``(x, labels) -> (loss, gradients w.r.t. variables)`` of a train-mode forward: one tf.function on
        tensorflow (traced once per input shape; the optimizer runs eagerly), torch autograd on torch."""
        import keras

        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            @tf.function(reduce_retracing=True)
            def step(x, labels):
                with tf.GradientTape() as tape:
                    loss = self.loss(model(x, training=True), labels)
                return loss, tape.gradient(loss, [v.value for v in variables])

            def run(x, labels):
                loss, grads = step(tf.constant(x), tf.constant(labels))
                return loss.numpy(), grads
            return run
        if backend == "torch":
            import torch

            def run(x, labels):
                loss = self.loss(model(torch.as_tensor(x), training=True), torch.as_tensor(labels))
                return loss.detach().cpu().numpy(), list(torch.autograd.grad(loss, [v.value for v in variables]))
            return run
        raise LightnetsError(f"train_steps is implemented for keras on tensorflow and torch, not {backend!r}")
