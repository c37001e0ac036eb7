"""The frozen, JSON-serialisable graph IR.

A graph is a topologically ordered tuple of nodes over one NCHW input named ``input``. Its output is
the last node, or, with ``outputs`` (a tuple of node names, e.g. the feature maps of a backbone), those
nodes in that order: executors then return a list (even of one). Construction validates everything (op,
attrs, names, inputs, shapes, outputs), so a ``Graph`` that exists is a valid network.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

from . import ops
from .errors import SpecError

INPUT = "input"
# 2: conv/pool attr "padding" (version 1 files read as padding="explicit"), optional "outputs" (absent: the
# last node)
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


@dataclass(frozen=True)
class Node:
    """One op application. ``name`` is a dotted path (``blocks.3.dw.conv``) and prefixes its params."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.op, str):
            raise SpecError(f"node {self.name!r}: op must be a string naming an op of the vocabulary, "
                            f"got {self.op!r}")
        if not isinstance(self.attrs, Mapping):
            raise SpecError(f"node {self.name!r}: attrs must be a mapping of name -> value, got {self.attrs!r}")
        if isinstance(self.inputs, str) or not all(isinstance(i, str) for i in self.inputs):
            raise SpecError(f"node {self.name!r}: inputs must be a list of node names, got {self.inputs!r}")
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SpecError(f"node name {self.name!r} must be a dotted path of identifiers, "
                            "e.g. 'blocks.3.dw.conv'")
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "attrs", MappingProxyType(ops.normalize_attrs(self.op, dict(self.attrs))))

    def to_json(self) -> dict:
        return {"name": self.name, "op": self.op, "inputs": list(self.inputs),
                "attrs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.attrs.items()}}


@dataclass(frozen=True)
class Graph:
    """A validated network: name, per-sample input shape (C, H, W), nodes, free-form metadata and
    ``outputs``: None (the last node is the output) or a tuple of node names (a multi-output graph)."""

    name: str
    input_shape: tuple[int, int, int]
    nodes: tuple[Node, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        if self.outputs is not None:
            if isinstance(self.outputs, str) or not all(isinstance(o, str) for o in self.outputs):
                raise SpecError(f"graph outputs must be a list of node names, got {self.outputs!r}")
            object.__setattr__(self, "outputs", tuple(self.outputs))
        if not isinstance(self.name, str):
            raise SpecError(f"graph name must be a string, got {self.name!r}")
        if not isinstance(self.meta, Mapping):
            raise SpecError(f"graph meta must be a mapping, got {type(self.meta).__name__}")
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        bad = [n for n in self.nodes if not isinstance(n, Node)]
        if bad:
            raise SpecError(f"graph nodes must be lightnets.graph.Node objects, got {type(bad[0]).__name__} "
                            f"{bad[0]!r:.60}; build them with Node(...) or GraphBuilder")
        if len(self.input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in self.input_shape):
            raise SpecError(f"graph input_shape {self.input_shape} must be 3 positive ints (C, H, W)")
        if not self.nodes:
            raise SpecError("a graph needs at least one node")
        self.shapes  # noqa: B018 -- validates names, inputs and shapes now
        self._check_name_prefixes()
        self._check_outputs()

    @cached_property
    def shapes(self) -> dict[str, ops.Shape]:
        """Per-sample output shape of the input and of every node, in node order, at the build size."""
        return self._infer(self.input_shape)

    @property
    def fixed_size(self) -> bool:
        """Whether the graph is valid at its build size only (see :attr:`fixed_size_reason`)."""
        return self.fixed_size_reason is not None

    @cached_property
    def fixed_size_reason(self) -> str | None:
        """Why the graph takes its build size only, or None if other sizes follow from its shapes: either
        ``meta["fixed_size"]`` (TF pads baked for the build size) or a shape only the build size gives (e.g. a
        flatten of a spatial map before a linear), found by inferring the graph at 2x and 3x the build size
        (both keep the parity of the size, so strided branches that meet at the build size meet there too)."""
        if self.meta.get("fixed_size", False):
            return "meta fixed_size: its pads were resolved for that size"
        c, h, w = self.input_shape
        for k in (2, 3):
            try:
                self._infer((c, k * h, k * w))
            except SpecError as e:
                return f"at {k * h}x{k * w} {e}"
        return None

    def shapes_at(self, h: int, w: int) -> dict[str, ops.Shape]:
        """Shapes of every value for an ``h`` x ``w`` input (pads of ``padding="same"`` nodes follow the
        size). Raises SpecError naming the first node that has no valid output at that size."""
        if (h, w) == self.input_shape[1:]:
            return self.shapes
        cache = self.__dict__.setdefault("_shapes_at", {})
        if (h, w) not in cache:
            if self.fixed_size:
                raise SpecError(f"graph {self.name!r} is fixed to {self.input_shape[1]}x{self.input_shape[2]} "
                                f"inputs ({self.fixed_size_reason}), not {h}x{w}; resize the input or rebuild the "
                                "graph at that size")
            cache[(h, w)] = self._infer((self.input_shape[0], h, w))
        return cache[(h, w)]

    def _infer(self, input_shape) -> dict[str, ops.Shape]:
        shapes: dict[str, ops.Shape] = {INPUT: tuple(input_shape)}
        for node in self.nodes:
            if node.name in shapes:
                raise SpecError(f"duplicate node name {node.name!r}; node names must be unique")
            missing = [i for i in node.inputs if i not in shapes]
            if missing:
                raise SpecError(f"node {node.name!r} reads {missing}, which is not the input or an earlier "
                                "node (dangling input, or nodes out of topological order / a cycle)")
            try:
                shapes[node.name] = ops.infer_shape(node.op, dict(node.attrs), [shapes[i] for i in node.inputs])
            except SpecError as e:
                raise SpecError(f"node {node.name!r}: {e}") from None
        return shapes

    def _check_name_prefixes(self):
        names = {n.name for n in self.nodes}
        for n in self.nodes:
            parts = n.name.split(".")
            for i in range(1, len(parts)):
                if ".".join(parts[:i]) in names:
                    raise SpecError(f"node {n.name!r} lies under node {'.'.join(parts[:i])!r}; a node name "
                                    "may not be a prefix of another (frameworks nest modules by name)")

    def _check_outputs(self):
        if self.outputs is None:
            return
        names = {n.name for n in self.nodes}
        bad = [o for o in self.outputs if o not in names]
        if not self.outputs or bad:
            raise SpecError(f"graph {self.name!r}: outputs {list(self.outputs)} must be a non-empty list of its node "
                            f"names ({bad} are not nodes); the input itself cannot be an output")
        if len(set(self.outputs)) != len(self.outputs):
            raise SpecError(f"graph {self.name!r}: outputs {list(self.outputs)} name a node twice; list each once")

    @property
    def multi_output(self) -> bool:
        """Whether executors return a list of outputs (``outputs`` was given, even with one name)."""
        return self.outputs is not None

    @property
    def output_names(self) -> tuple[str, ...]:
        """The nodes whose values the graph returns, in order (the last node if ``outputs`` is None)."""
        return self.outputs if self.outputs is not None else (self.nodes[-1].name,)

    @property
    def output(self) -> str:
        """The single output node; a graph with ``outputs`` of several nodes has none (use ``output_names``)."""
        if len(self.output_names) != 1:
            raise SpecError(f"graph {self.name!r} has {len(self.output_names)} outputs {list(self.output_names)}; "
                            "use graph.output_names / graph.output_shapes")
        return self.output_names[0]

    @property
    def output_shape(self) -> ops.Shape:
        return self.shapes[self.output]

    @property
    def output_shapes(self) -> list[ops.Shape]:
        """Per-sample shape of every output, in ``output_names`` order."""
        return [self.shapes[o] for o in self.output_names]

    def replace(self, **changes) -> Graph:
        """A copy with fields replaced (``outputs`` carried over unless given): rebuild graphs with this."""
        return dataclasses.replace(self, **changes)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise SpecError(f"graph {self.name!r} has no node {name!r}")

    def in_shapes(self, node: Node) -> list[ops.Shape]:
        return [self.shapes[i] for i in node.inputs]

    @cached_property
    def released(self) -> dict[str, tuple[str, ...]]:
        """Per node, the values (its inputs) that no later node reads: executors free them after it."""
        last_use = {i: n.name for n in self.nodes for i in n.inputs}
        keep = set(self.output_names)
        return {n.name: tuple(i for i in dict.fromkeys(n.inputs) if last_use[i] == n.name and i not in keep)
                for n in self.nodes}

    @cached_property
    def schedule(self) -> tuple[tuple[Node, tuple[str, ...]], ...]:
        """``(node, values to free after it)`` in execution order: THE walk every executor follows."""
        return tuple((n, self.released[n.name]) for n in self.nodes)

    def walk(self, x, step, keep_all: bool = False):
        """Run ``step(node, inputs) -> value`` over the schedule from the input value ``x``.

        Returns the output value (a list of them for a graph with ``outputs``), or with ``keep_all`` every
        node's value by name (nothing freed).
        """
        values = {INPUT: x}
        for node, free in self.schedule:
            values[node.name] = step(node, [values[i] for i in node.inputs])
            if not keep_all:
                for i in free:
                    del values[i]
        if keep_all:
            del values[INPUT]
            return values
        if self.outputs is not None:
            return [values[o] for o in self.outputs]
        return values[self.nodes[-1].name]

    @cached_property
    def params(self) -> tuple[ops.ParamSpec, ...]:
        """Every canonical parameter, in node order."""
        return tuple(p for n in self.nodes for p in ops.param_specs(n.name, n.op, dict(n.attrs), self.in_shapes(n)))

    def num_params(self, trainable_only: bool = True) -> int:
        return sum(_prod(p.shape) for p in self.params if p.trainable or not trainable_only)

    def node_macs(self, node: Node) -> int:
        return ops.macs(node.op, dict(node.attrs), self.in_shapes(node), self.shapes[node.name])

    def macs(self) -> int:
        """Multiply-accumulates of one forward pass of one sample."""
        return sum(self.node_macs(n) for n in self.nodes)

    # --- serialisation -----------------------------------------------------------------------
    def to_json(self) -> str:
        d = {"format": "lightnets.graph", "version": FORMAT_VERSION, "name": self.name,
             "input_shape": list(self.input_shape), "meta": dict(self.meta), "nodes": [n.to_json() for n in self.nodes]}
        if self.outputs is not None:
            d["outputs"] = list(self.outputs)
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Graph:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise SpecError(f"graph JSON is not valid JSON ({e}); pass the text of Graph.to_json()") from None
        if not isinstance(d, dict) or d.get("format") != "lightnets.graph":
            raise SpecError("graph JSON lacks '\"format\": \"lightnets.graph\"'; pass the text of Graph.to_json()")
        if type(d.get("version")) is not int or d.get("version") not in READABLE_VERSIONS:
            raise SpecError(f"graph JSON version {d.get('version')!r} is not supported (this lightnets reads "
                            f"versions {READABLE_VERSIONS}); re-export it with this version")
        try:
            nodes = [Node(n["name"], n["op"], _inputs(n["inputs"]), n.get("attrs", {})) for n in d["nodes"]]
            meta = dict(d.get("meta", {}))
            if d["version"] == 1 and meta.get("padding") == "keras":  # TF pads were baked for the build size
                meta["fixed_size"] = True
            outputs = d.get("outputs")
            return cls(d["name"], tuple(d["input_shape"]), tuple(nodes), meta,
                       None if outputs is None else _inputs(outputs))
        except (KeyError, TypeError) as e:
            raise SpecError(f"graph JSON is malformed (missing or mistyped field {e}); every node needs "
                            "name, op, inputs and attrs") from None


def _inputs(value):
    """A JSON node's inputs as a tuple; a bare string stays a string so that Node rejects it by name."""
    return value if isinstance(value, str) else tuple(value)


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


class GraphBuilder:
    """Appends nodes in order; arch builders use it to write the network as code over paper tables."""

    def __init__(self, name: str, input_shape: tuple[int, int, int], **meta):
        self.name, self.input_shape, self.meta = name, tuple(input_shape), meta
        self.nodes: list[Node] = []
        self._shapes: dict[str, ops.Shape] = {INPUT: self.input_shape}

    def add(self, name: str, op: str, inputs: str | list[str], **attrs) -> str:
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        node = Node(name, op, tuple(inputs), attrs)
        if name in self._shapes:
            raise SpecError(f"duplicate node name {name!r}")
        self._shapes[name] = ops.infer_shape(op, dict(node.attrs), [self._shapes[i] for i in inputs])
        self.nodes.append(node)
        return name

    def shape(self, name: str) -> ops.Shape:
        return self._shapes[name]

    def channels(self, name: str) -> int:
        return self._shapes[name][0]

    # --- common compositions -----------------------------------------------------------------
    def conv_bn_act(self, name: str, x: str, out: int, kernel: int, stride: int = 1, groups: int = 1,
                    act: str | None = "relu", eps: float = 1e-5, pads=None, momentum: float = 0.1) -> str:
        """conv (no bias) -> BN -> activation, as ``name.conv``, ``name.bn``, ``name.act``.

        ``pads``: 4 explicit pads (default k//2 on every side) or ``"same"`` (TF "same" at any input size).
        """
        if pads is None:
            pads = (kernel // 2,) * 4
        padding = {"padding": "same"} if pads == "same" else {"pads": pads}
        x = self.add(f"{name}.conv", "conv2d", x, out_channels=out, kernel=kernel, stride=stride,
                     groups=groups, bias=False, **padding)
        x = self.add(f"{name}.bn", "batch_norm", x, eps=eps, momentum=momentum)
        if act:
            x = self.add(f"{name}.act", "activation", x, kind=act)
        return x

    def classifier(self, x: str, num_classes: int, dropout: float = 0.0, hidden: int | None = None,
                   hidden_act: str = "hardswish", include_top: bool = True) -> str:
        """global_avg_pool -> flatten [-> linear(hidden) -> act] -> dropout -> linear(num_classes)."""
        x = self.add("head.pool", "global_avg_pool", x)
        x = self.add("head.flatten", "flatten", x)
        if not include_top:
            return x
        if hidden:
            x = self.add("head.hidden", "linear", x, out_features=hidden, bias=True)
            x = self.add("head.hidden_act", "activation", x, kind=hidden_act)
        if dropout:
            x = self.add("head.dropout", "dropout", x, rate=dropout)
        return self.add("head.fc", "linear", x, out_features=num_classes, bias=True)

    def build(self, outputs: tuple[str, ...] | None = None) -> Graph:
        return Graph(self.name, self.input_shape, tuple(self.nodes), self.meta, outputs)
