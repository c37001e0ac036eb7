"""The part of the contract that the inference runtimes (ONNX Runtime, LiteRT) share, written once.

Their lightnets models are :class:`CompiledModel` s: the graph and its canonical weights, compiled to the
runtime's own model (an ONNX graph, a TFLite flat buffer) on first use and again after ``set_weights``. The
runtimes run inference only: ``train_forward``, ``gradients``, ``training`` and the training hooks refuse.
"""

from __future__ import annotations

import numpy as np

from lightnets import weights as W
from lightnets.errors import LightnetsError
from lightnets.frameworks import TRAINERS
from lightnets.numerics import check_dtype

from .base import Backend


class CompiledModel:
    """A lightnets graph and its canonical weights in ``dtype`` (``DTYPES[dtype]``), compiled by the runtime
    on first use; ``invalidate`` drops what was compiled from the weights."""

    DTYPES: dict[str, type] = {}  # requested dtype -> numpy dtype of the weights and outputs

    def __init__(self, graph, dtype: str = "float32"):
        check_dtype(dtype, self.DTYPES)
        self.graph, self.dtype = graph, dtype
        self.weights = {k: v.astype(self.DTYPES[dtype])
                        for k, v in W.init_weights(graph, 0, calibrate=False).items()}

    def invalidate(self) -> None:
        raise NotImplementedError


class InferenceRuntime(Backend):
    """A backend whose lightnets models are ``model_class`` instances (a :class:`CompiledModel`)."""

    model_class: type[CompiledModel] = CompiledModel

    @property
    def computes_float64(self) -> bool:
        return False  # see parity/tolerances.py: EFFECTIVE_DTYPE

    def owns(self, model) -> bool:
        return isinstance(model, self.model_class)

    def graph_of(self, model):
        return model.graph

    def set_weights(self, model, weights) -> None:
        """Copy checked canonical weights into the model, cast to its dtype; compiled again on next use."""
        checked = W.check_weights(model.graph, weights)
        model.weights = {k: np.array(v, model.DTYPES[model.dtype]) for k, v in checked.items()}
        model.invalidate()

    def get_weights(self, model) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in model.weights.items()}

    def _unsupported(self, what: str) -> LightnetsError:
        return LightnetsError(f"{what} is not supported by {self.name} (an inference runtime: no train-mode batch "
                              f"norm, no gradients); use one of {', '.join(TRAINERS)} for it")

    def train_forward(self, model, x):
        raise self._unsupported("train-mode forward")

    def gradients(self, model, x, probe):
        raise self._unsupported("gradients")

    def training(self, model):
        raise self._unsupported("train mode")

    def state_dict(self, model):
        return self.get_weights(model) if self.owns(model) else self._file_state_dict(model)

    def _file_state_dict(self, model) -> dict[str, np.ndarray]:
        """The weights of a runtime file that lightnets did not build, where the file keeps them as they are."""
        raise NotImplementedError

    def _assign(self, model, sd):
        if not self.owns(model):
            raise LightnetsError(f"only lightnets {self.model_class.__name__}s take weights; export the model "
                                 "again instead")
        self.set_weights(model, sd)

    def bn_eps(self, model):
        if self.owns(model):
            return {float(n.attrs["eps"]) for n in model.graph.nodes if n.op == "batch_norm"}
        return self._file_bn_eps(model)

    def optimize(self, model, compile=False):
        """The model as given: ``lightnets.optimize`` passes it with the batch norms folded, and the runtime optimises
        its graph itself when it loads it (there is no compiled variant)."""
        if compile:
            raise LightnetsError(f"{self.name} has no compiled variant (the runtime compiles the model when it loads "
                                 "it); use lightnets.optimize(model)")
        if not self.owns(model):
            raise LightnetsError(f"{type(model).__name__} is not a lightnets {self.model_class.__name__}; build one "
                                 f"with lightnets.build(..., backend={self.name!r})")
        return model

    def _file_bn_eps(self, model) -> set[float]:
        """The batch-norm eps of a runtime file that lightnets did not build."""
        raise NotImplementedError
