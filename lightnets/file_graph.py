"""Which graph a weights file is read into: the file's own graph, checked against the id and arguments the caller
gives (:func:`resolve_graph`), or, for a file without one, the id's graph with the class count read from the
file's tensors (:class:`GraphFor`, :func:`infer_classes`); numpy only, no framework."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from . import features as FT
from . import provenance as PV
from . import registry
from . import weights as W
from .errors import WeightsError
from .graph import Graph


def fc_weight(graph: Graph) -> str | None:
    """The canonical name of the classifier weight (the output linear's weight), None without a top."""
    last = graph.nodes[-1]
    return f"{last.name}.weight" if last.op == "linear" else None


def infer_classes(template: Mapping[str, tuple], got: Mapping[str, tuple], n: int | None) -> int | None:
    """The class count of a native state dict ``got`` whose model is ``template`` at ``n`` classes.

    Key- and layout-agnostic: the shapes only the template has that contain ``n`` are the classifier's;
    the file's shapes that differ from them on exactly those axes give the class count (None if unclear).
    """
    if n is None:
        return None
    t, f = Counter(template.values()), Counter(got.values())
    t_only, f_only = t - f, f - t
    found = set()
    for ts in t_only:
        for fs in f_only:
            axes = [i for i, (a, b) in enumerate(zip(ts, fs, strict=False)) if a != b]
            if len(fs) == len(ts) and axes and all(ts[i] == n for i in axes):
                found |= {fs[i] for i in axes}
    return found.pop() if len(found) == 1 else None


def at_size(graph: Graph, input_size: int | None) -> Graph:
    """``graph`` for ``input_size`` x ``input_size`` inputs (its nodes do not depend on the size)."""
    if input_size is None or graph.input_shape[1:] == (input_size, input_size):
        return graph
    graph.shapes_at(input_size, input_size)  # SpecError for fixed-size graphs or too small inputs
    return graph.replace(input_shape=(graph.input_shape[0], input_size, input_size))


class GraphFor:
    """``graph_for(num_classes_or_None)``: the graph a reader loads into; ``infer_classes`` says
    whether the class count is still to be read from the file's tensors."""

    def __init__(self, fixed: Graph | None = None, arch: str | None = None, num_classes: int | None = None,
                 input_size: int | None = None, include_top: bool | None = None):
        self.fixed, self.arch, self.num_classes = fixed, arch, num_classes
        self.input_size, self.include_top = input_size, include_top
        self.infer_classes = fixed is None and num_classes is None and include_top is not False

    def __call__(self, n: int | None = None) -> Graph:
        if self.fixed is not None:
            return self.fixed
        return registry.get_spec(self.arch, num_classes=self.num_classes or n or 1000,
                                 input_size=self.input_size or 224,
                                 include_top=True if self.include_top is None else self.include_top)


def _keys_note(have: Graph, want: Graph) -> str:
    h, w = {p.name for p in have.params}, {p.name for p in want.params}
    parts = []
    if w - h:
        parts.append(f"missing keys {W.few(sorted(w - h))}")
    if h - w:
        parts.append(f"unexpected keys {W.few(sorted(h - w))}")
    return f" ({'; '.join(parts)})" if parts else ""


def resolve_graph(path, file_graph: Graph, arch: str | Graph | None = None, num_classes: int | None = None,
                  input_size: int | None = None, include_top: bool | None = None) -> Graph:
    """The graph to load a file with a graph into: the FILE's graph, checked against the caller's.

    ``arch`` (an id or a Graph) and the arguments given must build exactly the file's graph (attributes
    of every node; the input size only where it changes a node), else WeightsError naming the first
    differing node and attribute. The result is the file's graph (card included) at ``input_size``.
    """
    if isinstance(arch, Graph):
        want, label = arch, f"the given {arch.name} graph has"
    elif arch is not None:
        file_top = PV.num_classes_of(file_graph) is not None
        top = file_top if include_top is None else include_top
        want = registry.get_spec(arch, num_classes=num_classes or PV.num_classes_of(file_graph) or 1000,
                                 input_size=input_size or file_graph.input_shape[1], include_top=top)
        label = f"{arch} builds"
        if FT.META_KEY in file_graph.meta:  # a backbone file (build(features=True)): the id's same maps
            want = FT.feature_graph(want, [d["index"] for d in file_graph.meta[FT.META_KEY]])
            label = f"{arch} (features) builds"
    else:
        want, label = None, ""
        file_n = PV.num_classes_of(file_graph)
        if include_top is not None and include_top != (file_n is not None):
            raise WeightsError(f"{path} holds a graph {'with' if file_n else 'without'} a classifier; "
                               f"include_top={include_top} disagrees - drop the argument")
        if num_classes is not None and num_classes != file_n:
            raise WeightsError(f"{path} holds a {file_graph.name!r} graph with {file_n} classes, not {num_classes}; "
                               "drop num_classes (or re-export the weights with that head)")
    if want is not None:
        diff = PV.graph_diff(file_graph, want, "file", label, compare_input=False)
        if diff:
            hint = _keys_note(file_graph, want) if file_graph.name != want.name else ""
            raise WeightsError(f"{path}: the file's graph differs from the one asked for: {diff}{hint}. "
                               f"Build from the file's own graph (lightnets.build({str(path)!r}), CLI: omit "
                               "--arch) or pass the id and arguments it was saved with; lightnets never runs "
                               "other weights' graph")
    if isinstance(arch, Graph):
        return PV.with_card(arch, PV.card_of(file_graph))
    return at_size(file_graph, input_size)
