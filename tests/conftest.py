"""Test-session set-up: deterministic threads, and paddle before tensorflow in one process.

Importing tensorflow before paddle in one process segfaults (docs/design.md §2), so test modules import
frameworks only inside tests/fixtures, and the paddle tests are ordered first.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: 0 if "paddle" in item.nodeid else 1)
