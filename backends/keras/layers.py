"""The custom keras layers of the lowering (ops without a native layer), written with ``keras.ops`` only: they run on
any keras backend and reload from ``.keras`` without Lambda layers. Defined on first use (keras is imported lazily)."""

from __future__ import annotations

from lightnets import ops as ir_ops  # the IR's op rules (keras.ops is `ops` below)

_LAYERS = None  # the custom layer classes, defined on first use (keras is imported lazily)


# --- custom layers ---------------------------------------------------------------------------
def _custom_layers():
    """Define (once) and return the custom layers; registered for ``keras.saving.load_model``."""
    global _LAYERS
    if _LAYERS is not None:
        return _LAYERS
    import keras
    from keras import ops

    register = keras.saving.register_keras_serializable(package="lightnets")

    @register
    class Pad2D(keras.layers.Layer):
        """Constant padding of H and W by ``pads`` = (top, bottom, left, right), e.g. -inf for max pool."""

        def __init__(self, pads, value=0.0, **kwargs):
            super().__init__(**kwargs)
            self.pads, self.value = tuple(pads), float(value)

        def call(self, x):
            t, b, l, r = self.pads
            return ops.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=self.value)

        def get_config(self):
            return {**super().get_config(), "pads": list(self.pads), "value": self.value}

    @register
    class Subsample2D(keras.layers.Layer):
        """Keep every ``stride``-th row and column (a strided conv = stride-1 conv, then this)."""

        def __init__(self, stride, **kwargs):
            super().__init__(**kwargs)
            self.stride = tuple(stride)

        def call(self, x):
            sh, sw = self.stride
            return x[:, ::sh, ::sw, :]

        def get_config(self):
            return {**super().get_config(), "stride": list(self.stride)}

    @register
    class SliceChannels(keras.layers.Layer):
        """Channels ``[start, stop)`` of an NHWC tensor."""

        def __init__(self, start, stop, **kwargs):
            super().__init__(**kwargs)
            self.start, self.stop = int(start), int(stop)

        def call(self, x):
            return x[:, :, :, self.start: self.stop]

        def get_config(self):
            return {**super().get_config(), "start": self.start, "stop": self.stop}

    @register
    class ChannelShuffle(keras.layers.Layer):
        """Paper/torch shuffle in NHWC: out[j*g + i] = in[i*(C/g) + j]; any batch size."""

        def __init__(self, groups, **kwargs):
            super().__init__(**kwargs)
            self.groups = int(groups)

        def call(self, x):
            c, g = x.shape[-1], self.groups  # channels are static; batch, height and width may not be
            y = ops.swapaxes(ops.reshape(x, (-1, g, c // g)), 1, 2)
            # back to x's shape: a constant where at most the batch is unknown (a TFLite RESHAPE alone; the
            # shape read at run time costs SHAPE + 3 STRIDED_SLICE + PACK per shuffle, outside XNNPack)
            static = sum(d is None for d in x.shape) <= 1
            return ops.reshape(y, tuple(-1 if d is None else d for d in x.shape) if static else ops.shape(x))

        def get_config(self):
            return {**super().get_config(), "groups": self.groups}

    @register
    class AvgPool2DExcludePad(keras.layers.Layer):
        """Average pooling over zero pads that divides by the number of real inputs only: explicit
        ``pads``, or ``pads=None`` for TF "same" pads computed from the (static) input size."""

        def __init__(self, kernel, stride, pads, **kwargs):
            super().__init__(**kwargs)
            self.kernel, self.stride = tuple(kernel), tuple(stride)
            self.pads = None if pads is None else tuple(pads)

        def call(self, x):
            if self.pads is None:
                window = {"kernel": self.kernel, "stride": self.stride, "padding": "same"}
                t, b, l, r = ir_ops.effective_pads(window, tuple(x.shape[1:3]))
            else:
                t, b, l, r = self.pads
            pad = ((0, 0), (t, b), (l, r), (0, 0))
            total = ops.average_pool(ops.pad(x, pad), self.kernel, self.stride, padding="valid")
            count = ops.average_pool(ops.pad(ops.ones_like(x[..., :1]), pad), self.kernel, self.stride,
                                     padding="valid")
            return total / count

        def get_config(self):
            return {**super().get_config(), "kernel": list(self.kernel), "stride": list(self.stride),
                    "pads": None if self.pads is None else list(self.pads)}

    @register
    class ResizeNearest(keras.layers.Layer):
        """``x`` at ``like``'s height and width (NHWC), nearest: rows/columns floor(i * in / out) gathered by
        integer index (lightnets.ops.nearest_index); the sizes may be dynamic (keras' and TF's resize use
        half-pixel centres or a float scale, which differ)."""

        def call(self, inputs):
            x, like = inputs

            def index(size_in, size_out):
                return ops.floor_divide(ops.arange(0, size_out, dtype="int32") * size_in, size_out)

            xs, ls = ops.shape(x), ops.shape(like)
            return ops.take(ops.take(x, index(xs[1], ls[1]), axis=1), index(xs[2], ls[2]), axis=2)

        def compute_output_shape(self, shapes):
            x_shape, like_shape = shapes
            return (x_shape[0], like_shape[1], like_shape[2], x_shape[3])

    classes = (Pad2D, Subsample2D, SliceChannels, ChannelShuffle, AvgPool2DExcludePad, ResizeNearest)
    _LAYERS = {c.__name__: c for c in classes}
    return _LAYERS


def custom_objects() -> dict:
    """The custom layers by name (importing them registers them for ``keras.saving.load_model``)."""
    return dict(_custom_layers())
