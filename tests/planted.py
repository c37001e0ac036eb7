"""A planted error for the locator's tests: one node's attributes changed in the graph file a parity worker builds
(the float64 reference keeps the graph as it was)."""

import json

from lightnets.parity import cases as C
from lightnets.parity.runner import Matrix


def plant_and_locate(tmp_path, node: str, attrs: dict, target: str, dtype: str, mode: str = "train",
                     model: str = "mobilenet_v1_025"):
    """``model`` (32 px, 10 classes) in ``target`` at ``dtype`` with ``attrs`` of ``node`` replaced in the worker's
    graph -> (the model's result, the locator's first diverging node, its per-node curve)."""
    case = C.model_cases([model], input_size=32, num_classes=10)[0]
    m = Matrix([case], tmp_path, mode=mode)
    graph_file = tmp_path / "cases" / case.id / "graph.json"
    d = json.loads(graph_file.read_text())
    next(n for n in d["nodes"] if n["name"] == node)["attrs"].update(attrs)
    graph_file.write_text(json.dumps(d))
    outs = m.run_workers([target], [case.id], [dtype], "main")
    [result] = [r for r in m.compare(outs, [dtype]) if r.kind == "model"]
    out = m.run_workers([target], [case.id], [dtype], "locate", return_all=True)[target]
    first, per_node = m.locate(target, dtype, [case.id], out)[case.id]
    return result, first, per_node
