"""The backend contract, once, over every installed backend (einops' collect_test_backends is the model).

Per-backend test files keep only the quirks of one framework.
"""

import re
from pathlib import Path

import lightnets.backends as backends_pkg


def test_backends_mention_no_model_name():
    """A backend lowers ops; it never names an architecture."""
    files = sorted(Path(backends_pkg.__file__).parent.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "base.py", "torch.py", "keras.py", "paddle.py"}
    for f in files:
        hit = re.search(r"mobilenet|shufflenet|ghostnet|efficientnet", f.read_text().lower())
        assert hit is None, f"{f.name} names an architecture: {hit.group(0)!r}"
