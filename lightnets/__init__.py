"""lightnets: light CNNs written once as a framework-neutral spec, lowered to torch, keras and paddle.

``import lightnets`` needs numpy only; frameworks are imported when a backend is first used.
"""

from .api import build, export_weights, feature_info, load_backend, load_weights, run, save_weights, spec
from .errors import LightnetsError
from .export import export
from .fast import optimize
from .graph import Graph, GraphBuilder, Node
from .port import port
from .registry import get_spec, list_models
from .zoo import export_zoo, import_zoo  # noqa: F401 -- public API (lightnets.zoo)

__version__ = "0.1.0"
__all__ = ["build", "export_weights", "feature_info", "load_weights", "save_weights", "run", "spec", "load_backend",
           "port", "export", "optimize", "get_spec", "list_models", "Graph", "GraphBuilder", "Node", "LightnetsError",
           "__version__"]
