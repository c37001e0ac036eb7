"""The one worker-subprocess launcher, shared by the parity runner and ``lightnets bench``.

A worker is ``python -m <module> <dir>/request.json``: the launcher writes the request (a JSON dict
whose ``"out"`` is ``<dir>``), starts the module with the pinned environment of :func:`worker_env`
and collects its combined stdout/stderr into ``<dir>/worker.log``. The worker writes its response
as files under ``<dir>`` (the parity worker: ``status.json`` and one ``.npz`` per case; the bench
worker: ``result.json``). Each backend gets its own process: tensorflow imported before paddle in
one process segfaults (docs/design.md §2), and keras picks its backend from ``KERAS_BACKEND`` at
import.

This module imports no framework (stdlib only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REQUEST = "request.json"
LOG = "worker.log"


def thread_env(threads: int = 1) -> dict[str, str]:
    """Environment pinning every framework's intra-op pool to ``threads`` (inter-op to 1), quiet logs."""
    t = str(threads)
    return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t,
            "TF_NUM_INTRAOP_THREADS": t, "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
            "GLOG_minloglevel": "2", "PYTHONWARNINGS": "ignore"}


def worker_env(threads: int = 1, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The full environment of a worker: this process's, the thread pinning, then ``extra``."""
    return {**os.environ, **thread_env(threads), **(extra or {})}


@dataclass
class Worker:
    """A started worker: its process and the directory holding its request and response files."""

    module: str
    out: Path
    proc: subprocess.Popen
    started: float

    def wait(self, timeout: float | None = None) -> WorkerDone:
        """Wait for the worker (killing it after ``timeout`` seconds); its log goes to ``out/worker.log``."""
        timed_out = False
        try:
            log = self.proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            log = self.proc.communicate()[0]
            timed_out = True
        (self.out / LOG).write_text(log or "")
        return WorkerDone(self.out, self.proc.returncode, log or "", timed_out, time.perf_counter() - self.started)


@dataclass
class WorkerDone:
    """A finished worker: return code, combined log, whether it was killed on timeout, wall time."""

    out: Path
    returncode: int
    log: str
    timed_out: bool
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def failure(self, lines: int = 15) -> str:
        """One message for a failed worker: timeout, or exit code and the log's last lines."""
        if self.timed_out:
            return f"worker timed out after {self.wall_s:.0f} s"
        tail = "\n".join(self.log.strip().splitlines()[-lines:])
        return f"worker exited with {self.returncode}: {tail}"


def start(module: str, request: dict, out: Path, threads: int = 1, env: Mapping[str, str] | None = None) -> Worker:
    """Write ``request`` (with ``"out": out``) to ``out/request.json`` and start ``python -m module`` on it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REQUEST
    path.write_text(json.dumps({**request, "out": str(out)}, indent=1))
    proc = subprocess.Popen([sys.executable, "-m", module, str(path)], env=worker_env(threads, env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return Worker(module, out, proc, time.perf_counter())


def run(module: str, request: dict, out: Path, threads: int = 1, env: Mapping[str, str] | None = None,
        timeout: float | None = None) -> WorkerDone:
    """Start one worker and wait for it."""
    return start(module, request, out, threads, env).wait(timeout)


def run_all(jobs: Iterable[tuple[str, Callable[[], Worker]]], parallel: int = 1,
            on_done: Callable[[str, WorkerDone], None] | None = None,
            timeout: float | None = None) -> dict[str, WorkerDone]:
    """Run ``(key, start_fn)`` jobs, ``parallel`` workers at a time, in order; ``{key: WorkerDone}``.

    ``start_fn`` starts the worker (e.g. ``lambda: start(...)``) so that its request is written only
    when a slot is free. ``on_done(key, done)`` is called as each finishes (from a helper thread).
    """
    pending = list(jobs)
    results: dict[str, WorkerDone] = {}
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                if not pending:
                    return
                key, start_fn = pending.pop(0)
            done = start_fn().wait(timeout)
            with lock:
                results[key] = done
            if on_done:
                on_done(key, done)

    threads = [threading.Thread(target=work) for _ in range(max(1, parallel))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def read_request(argv: list[str] | None = None) -> dict:
    """The worker side: the request named by ``argv[0]`` (default ``sys.argv[1]``)."""
    argv = sys.argv[1:] if argv is None else argv
    return json.loads(Path(argv[0]).read_text())
