"""``optimize(model, compile=True)`` of a keras model on tensorflow: the model's inference graph with its
weights frozen in as constants, run by a TF session (``tf.compat.v1.Session``), one per input shape.

Why a session: with the weights constant, grappler folds and fuses more and oneDNN keeps each filter in its
blocked layout between calls, where a ``tf.function`` reads every weight variable per call. Measured here
(tf 2.21, 2 threads, 224 px, BN-folded lightnets models of the bench, interleaved in one process; ms): the
hardswish/squeeze-excite inverted-residual net at batch 1 / 16: tf.function 20.1 / 300.9, this 15.2 / 295.7;
the ghost-module net: 29.8 / 137.9, this 22.7 / 126.5. A frozen *concrete function* called from TF2 (the same
constants) ran 1.7-2.1x slower than the tf.function, and XLA (``jit_compile=True``) 10-26x slower: neither is
used.

The weights are a snapshot taken when a shape is first run (optimize again after changing them; lightnets'
``set_weights``/``load_state_dict`` drop the snapshot).
"""

from __future__ import annotations

import time

import numpy as np


class FrozenSessions:
    """Frozen-graph sessions of a keras model, one per NHWC input shape and dtype, made on first use."""

    def __init__(self, model):
        self.model, self.sessions, self.compile_s = model, {}, 0.0

    def _create(self, shape, dtype):
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        t0 = time.perf_counter()
        fn = tf.function(lambda x: self.model(x, training=False))
        concrete = fn.get_concrete_function(tf.TensorSpec(shape, dtype))
        multi = isinstance(concrete.structured_outputs, (list, tuple))  # (the frozen function's is always a list)
        frozen = convert_variables_to_constants_v2(concrete)
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(dtype, shape, name="x")
            outputs = tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="frozen",
                                                     input_map={frozen.inputs[0].name: x},
                                                     return_elements=[t.name for t in frozen.outputs])
        threads = tf.config.threading
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads.get_intra_op_parallelism_threads(),
                                          inter_op_parallelism_threads=threads.get_inter_op_parallelism_threads())
        session = tf.compat.v1.Session(graph=graph, config=config)
        self.compile_s += time.perf_counter() - t0
        return session, x, outputs, multi

    def __call__(self, x_nhwc: np.ndarray):
        """The model's output(s) (numpy, a list for a multi-output model) on the NHWC batch ``x_nhwc``."""
        key = (x_nhwc.shape, x_nhwc.dtype.name)
        if key not in self.sessions:
            self.sessions[key] = self._create(*key)
        session, x, outputs, multi = self.sessions[key]
        ys = session.run(outputs, {x: x_nhwc})
        return ys if multi else ys[0]
