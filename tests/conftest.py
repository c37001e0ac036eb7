"""Test-session set-up: deterministic threads, and paddle before tensorflow in one process.

Importing tensorflow before paddle in one process segfaults, and so does torch._dynamo (torch's optimizers import
it) after tensorflow (docs/design.md §2), so test modules import frameworks only inside tests/fixtures, and the
paddle tests are ordered first.

``make test`` runs two pytest-xdist workers (``-n 2``), each its own process on one core: every framework
runs single-threaded (the variables below), each worker imports paddle and torch._dynamo when it starts (so the
order in which a worker is handed tests cannot put tensorflow first), and the tests of a file in
``SHARED_FIXTURE_FILES`` go to one worker, so that their expensive module-scoped fixture is built once.
"""

import importlib.util
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

# files whose tests share a module-scoped fixture of minutes: one xdist work unit each (the scheduler below;
# xdist's own --dist loadgroup does not regroup under pytest 9, whose node ids it can no longer rename)
SHARED_FIXTURE_FILES = {
    "tests/test_parity.py": "matrix: the quick parity matrix in every target",
    "tests/test_zoo_keras.py": "keras_files: keras.applications files ported in a subprocess",
}


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER") and importlib.util.find_spec("paddle") is not None:
        import paddle  # noqa: F401  (first in every worker: tensorflow after paddle is fine)
    if os.environ.get("PYTEST_XDIST_WORKER") and importlib.util.find_spec("torch") is not None:
        import torch._dynamo  # noqa: F401  (before tensorflow too: torch's optimizers import it, after tf it segfaults)


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: 0 if "paddle" in item.nodeid else 1)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """``-n N`` (xdist's ``--dist load``): every test its own work unit, handed out in collection order,
    except that the tests of one file of ``SHARED_FIXTURE_FILES`` are one unit (those go out first)."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path in SHARED_FIXTURE_FILES else nodeid

    return SharedFixtureScheduling(config, log)
