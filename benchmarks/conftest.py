"""Shared benchmark helpers: collect ``bench_*.py`` files and write results + machine info as JSON.

Use in a benchmark::

    def test_something(benchmark, bench_results):
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
        bench_results.record("something", benchmark, config={"size": 64}, extra={"ratio": 1.7})

At the end of the session every module's records go to ``benchmarks/results/<module>.json``
(atomically, rewritten after every record), together with the machine (CPU, cores, GPU, torch / CUDA versions, threads).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def pytest_collect_file(file_path, parent):
    # pytest.ini only collects test_*.py; benchmarks are named bench_*.py.
    # Files named on the command line are collected by pytest itself; do not collect them twice.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _cpu_name() -> str:
    from mcfast.evaluate.classifier import cpu_name

    return cpu_name()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info: dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cuda_available": torch.cuda.is_available(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def benchmark_stats(benchmark) -> dict[str, float]:
    """Seconds (mean, median, min, max, stddev) and rounds from a finished pytest-benchmark fixture."""
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None:
        return {}
    return {"mean_s": stats.mean, "median_s": stats.median, "min_s": stats.min, "max_s": stats.max,
            "stddev_s": stats.stddev, "rounds": stats.rounds}


class BenchResults:
    """Collects result records per benchmark module."""

    def __init__(self) -> None:
        self.records: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def record(self, name: str, benchmark=None, *, module: str = "misc", config: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        rec = {"name": name, **(config or {}), **(benchmark_stats(benchmark) if benchmark is not None else {}),
               **(extra or {})}
        self.records[module].append(rec)
        self.write([module])  # after every record, so an interrupted session keeps what it measured
        return rec

    def write(self, modules: list[str] | None = None) -> list[Path]:
        from mcfast.atomic import write_text

        written = []
        machine = machine_info()
        for module in modules if modules is not None else list(self.records):
            recs = self.records[module]
            path = RESULTS_DIR / f"{module}.json"
            doc = {"module": module, "started": self.started,
                   "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   "machine": machine, "results": recs}
            write_text(path, json.dumps(doc, indent=1) + "\n")
            written.append(path)
        return written


_COLLECTOR = BenchResults()


@pytest.fixture
def bench_results(request):
    """A recorder whose records are written to benchmarks/results/<this module>.json at session end."""
    module = Path(str(request.node.fspath)).stem

    class _Bound:
        def record(self, name, benchmark=None, *, config=None, extra=None):
            return _COLLECTOR.record(name, benchmark, module=module, config=config, extra=extra)
    return _Bound()


def pytest_sessionfinish(session, exitstatus):
    if _COLLECTOR.records:
        for path in _COLLECTOR.write():
            print(f"\nbenchmark results written to {path}")
