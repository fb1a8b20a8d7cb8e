"""Benchmarks for the tillbox core: results, sizes, statistics and the report table.

Each benchmark measures something against a target from the performance issue and
against a *baseline* measured in the same process run (the machines are shared and
noisy, so an absolute figure alone says little). Run them with ``python -m bench``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "BenchResult",
    "Metric",
    "Sizes",
    "Stopwatch",
    "format_result",
    "machine_info",
    "percentile",
]


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is; :meth:`quick` gives a smoke-test run of a few seconds."""

    catalog_items: int = 200_000  # lookup: items in the catalog
    lookups: int = 20_000  # lookup: timed lookups (and as many baseline SELECTs)
    cart_lines: int = 50  # cart: lines after the timed add
    cart_adds: int = 2_000  # cart: timed adds (and as many baseline adds)
    commit_sales: int = 3_000  # commit: sales per contender
    commit_block: int = 100  # commit: sales per alternating block
    import_items: int = 200_000  # import: items in the CSV
    journal_entries: int = 1_000_000  # verify: journal entries in the ledger
    sale_every: int = 5  # verify: every n-th entry is a sale (0: none)
    projection_sales: int = 20_000  # verify: size of the all-sales ledger for the projection

    @classmethod
    def quick(cls) -> Sizes:
        """Small sizes: every code path runs, in seconds; the figures mean little."""
        return cls(
            catalog_items=2_000,
            lookups=300,
            cart_lines=50,
            cart_adds=40,
            commit_sales=30,
            commit_block=10,
            import_items=2_000,
            journal_entries=5_000,
            sale_every=5,
            projection_sales=200,
        )

    def override(self, assignments: Sequence[str]) -> Sizes:
        """Apply ``name=value`` assignments (integers, ``_`` allowed: ``catalog_items=50_000``)."""
        names = {f.name for f in dataclasses.fields(self)}
        changes: dict[str, int] = {}
        for text in assignments:
            name, sep, value = text.partition("=")
            name = name.strip()
            if not sep or name not in names:
                raise ValueError(f"unknown size {text!r}; sizes are {', '.join(sorted(names))}")
            try:
                number = int(value.strip())
            except ValueError:
                raise ValueError(f"size {name} must be an integer, not {value.strip()!r}") from None
            if number < 0 or (number == 0 and name != "sale_every"):
                raise ValueError(f"size {name} must be positive, not {number}")
            changes[name] = number
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Metric:
    """One measured figure, with its target and its same-run baseline where it has them.

    ``target`` is a bound: the value must be ``>=`` it when ``higher_is_better``, else
    ``<=``. ``ratio`` is the *cost* relative to the baseline (above 1: slower or bigger).
    """

    name: str
    value: float
    unit: str
    target: float | None = None
    baseline: float | None = None
    higher_is_better: bool = False

    @property
    def passed(self) -> bool | None:
        """Whether the target is met; ``None`` when the metric has no target."""
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    @property
    def ratio(self) -> float | None:
        """Cost relative to the baseline (value/baseline, or baseline/value for rates)."""
        if self.baseline is None or self.baseline <= 0 or self.value <= 0:
            return None
        return self.baseline / self.value if self.higher_is_better else self.value / self.baseline

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "baseline": self.baseline,
            "higher_is_better": self.higher_is_better,
            "ratio": self.ratio,
            "passed": self.passed,
        }


@dataclass
class BenchResult:
    """What one benchmark measured."""

    name: str
    title: str
    baseline: str  # what the baseline is, in words
    params: dict[str, Any] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the whole benchmark, setup included
    target: str = ""  # a target in words, for results that judge it themselves (``ok``)
    ok: bool | None = None

    @property
    def passed(self) -> bool:
        """``ok`` when the benchmark judged itself, else whether every metric meets its target."""
        if self.ok is not None:
            return self.ok
        return all(m.passed is not False for m in self.metrics)

    def metric(self, name: str) -> Metric:
        """The metric called ``name``."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "baseline": self.baseline,
            "params": dict(self.params),
            "metrics": [m.to_dict() for m in self.metrics],
            "seconds": self.seconds,
            "target": self.target,
            "passed": self.passed,
        }


_T = TypeVar("_T")


@functools.cache
def _clock_overhead() -> tuple[int, int]:
    """Median wall and CPU nanoseconds that reading both clocks around nothing takes."""
    wall, cpu = [], []
    for _ in range(2_000):
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        c1, w1 = time.thread_time_ns(), time.perf_counter_ns()
        wall.append(w1 - w0)
        cpu.append(c1 - c0)
    return int(statistics.median(wall)), int(statistics.median(cpu))


class Stopwatch:
    """Times calls in wall-clock time and in the thread's CPU time (user + system).

    On a shared machine the wall time of a call includes whatever the scheduler gave
    to other processes meanwhile; the CPU time does not, so it is what a dedicated
    device would see as latency for work that does not wait on I/O. The cost of
    reading the clocks is measured once and subtracted.
    """

    def __init__(self) -> None:
        self.wall: list[int] = []
        self.cpu: list[int] = []
        self._wall_offset, self._cpu_offset = _clock_overhead()

    def time(self, fn: Callable[[], _T], *, record: bool = True) -> _T:
        """Call ``fn`` and record its wall and CPU nanoseconds (unless ``record`` is false)."""
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        value = fn()
        c1, w1 = time.thread_time_ns(), time.perf_counter_ns()
        if record:
            self.wall.append(max(0, w1 - w0 - self._wall_offset))
            self.cpu.append(max(0, c1 - c0 - self._cpu_offset))
        return value


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not in 0..100")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _with_unit(value: float, unit: str) -> str:
    return f"{_number(value)} {unit}".rstrip()


def format_result(result: BenchResult) -> str:
    """The result as a short plain-text table."""
    header = ("metric", "value", "target", "baseline", "ratio", "result")
    rows = [header]
    for m in result.metrics:
        target = "-"
        if m.target is not None:
            target = (">= " if m.higher_is_better else "<= ") + _with_unit(m.target, m.unit)
        baseline = "-" if m.baseline is None else _with_unit(m.baseline, m.unit)
        ratio = "-" if m.ratio is None else f"{m.ratio:.2f}x"
        verdict = {None: "info", True: "PASS", False: "FAIL"}[m.passed]
        rows.append((m.name, _with_unit(m.value, m.unit), target, baseline, ratio, verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"== {result.name}: {result.title} ({result.seconds:.1f} s) =="]
    if result.params:
        lines.append("   " + ", ".join(f"{k}={_param(v)}" for k, v in result.params.items()))
    lines.append(f"   baseline: {result.baseline}")
    if result.target:
        lines.append(f"   target: {result.target}: {'PASS' if result.passed else 'FAIL'}")
    if not result.metrics:
        return "\n".join(lines)
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:_}"
    if isinstance(value, float):
        return _number(value)
    return str(value)


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or "unknown"


def machine_info() -> Mapping[str, str]:
    """What the figures were measured on."""
    try:
        load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        load = "n/a"
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count() or "?"),
        "load average": load,
        "executable": Path(sys.executable).name,
    }
