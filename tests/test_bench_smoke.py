"""Smoke tests of the benchmarks: each runs in quick mode and returns sane, structured results.

No timing is asserted (the machines are shared and noisy); the figures only have to be
well-formed: finite, positive, and measured on the data the benchmark says it built.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a tool at the project root, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import BenchResult, Metric, Sizes, format_result, percentile  # noqa: E402
from bench.__main__ import main, select  # noqa: E402
from bench.core import BENCHMARKS  # noqa: E402

QUICK = Sizes.quick()


def _check_sane(result: BenchResult, name: str) -> None:
    assert result.name == name
    assert result.title and result.baseline
    assert result.seconds > 0
    assert result.metrics, "a benchmark reports at least one metric"
    assert any(m.target is not None for m in result.metrics), "each benchmark checks a target"
    for m in result.metrics:
        assert math.isfinite(m.value) and m.value >= 0, m
        if m.baseline is not None:
            assert math.isfinite(m.baseline) and m.baseline > 0, m
        assert isinstance(m.passed, bool) == (m.target is not None)
    table = format_result(result)
    assert all(m.name in table for m in result.metrics)
    assert json.loads(json.dumps(result.to_dict()))["name"] == name


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_quick_benchmark_runs(name: str, tmp_path: Path) -> None:
    result = BENCHMARKS[name](QUICK, tmp_path)
    _check_sane(result, name)
    p = result.params
    if name == "lookup":
        assert p["items"] == QUICK.catalog_items and p["lookups"] == QUICK.lookups
        assert p["barcodes"] > p["items"]  # some items carry a second barcode
        assert 0 < result.metric("p50 lookup (CPU)").value <= result.metric("p99 lookup (CPU)").value
    elif name == "cart":
        assert p["lines_after_add"] == QUICK.cart_lines and p["adds"] == QUICK.cart_adds
        assert p["promotions"] == 20 and 0 < p["active_promotions"] < 20
        assert p["applied_per_add"] > 0  # the promotions really take part
    elif name == "commit":
        assert p["sales"] == QUICK.commit_sales and p["outbox_events"] == 3 * QUICK.commit_sales
        assert result.metric("commit_sale rate").value > 0
    elif name == "import":
        assert p["items"] == QUICK.import_items and p["barcodes"] > QUICK.import_items
        assert result.metric("peak RSS").value > 0 and result.metric("wall time").value > 0
    else:
        assert p["entries"] == QUICK.journal_entries
        assert p["sales"] == QUICK.journal_entries // QUICK.sale_every
        assert p["sales"] + p["other_entries"] == p["entries"]
        assert result.metric("verify rate (CPU)").value > 0


def test_cli_runs_one_benchmark_with_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    status = main(["cart", "--quick", "--set", "cart_adds=5", "--set", "cart_lines=10", "--json", str(out), "-q"])
    assert status == 0
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert [r["name"] for r in doc["results"]] == ["cart"]
    assert doc["results"][0]["params"]["adds"] == 5
    assert doc["results"][0]["params"]["lines_after_add"] == 10
    assert "p99 add_item (CPU)" in capsys.readouterr().out


def test_devices_suite_quick_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    assert main(["devices", "--quick", "--json", str(out), "-q"]) == 0
    doc = json.loads(out.read_text(encoding="utf-8"))
    results = {r["name"]: r for r in doc["results"]}
    assert list(results) == ["devices.scan_to_daemon", "devices.render_receipt"]
    for r in results.values():
        assert r["target"] and isinstance(r["passed"], bool)
        figures = {k: v for k, v in r["params"].items() if k.endswith("_ms")}
        assert figures and all(math.isfinite(v) and v > 0 for v in figures.values()), figures
    printed = capsys.readouterr().out
    assert all(f"== {name}:" in printed for name in results)
    scan = results["devices.scan_to_daemon"]["params"]
    assert scan["scans"] == 30
    for stage in ("bare", "driver", "loop", "line"):
        assert scan[f"{stage}_p50_ms"] <= scan[f"{stage}_p99_ms"] <= scan[f"{stage}_max_ms"]
    # Every scan passes the driver, then the daemon's loop, then lands in the sale: the
    # per-scan times are ordered, so each percentile of them is too.
    for stat in ("p50", "p99", "max"):
        assert scan[f"driver_{stat}_ms"] <= scan[f"loop_{stat}_ms"] <= scan[f"line_{stat}_ms"]
    render = results["devices.render_receipt"]["params"]
    assert render["sale_lines"] == 50 and render["renders"] == 30
    assert render["text_lines"] > render["sale_lines"] and render["bytes"] > 50 * 48
    assert render["paper"] == "80 mm CP858"


def test_selection_and_bad_sizes() -> None:
    assert select([]) == select(["all"]) == [*BENCHMARKS, "sync", "kiosk", "devices"]
    assert select(["devices"]) == ["devices"]
    assert select(["core"]) == select(["verify", "core", "lookup"]) == list(BENCHMARKS)
    assert select(["verify", "lookup"]) == ["lookup", "verify"]
    with pytest.raises(ValueError, match="unknown benchmark"):
        select(["nope"])
    assert QUICK.override(["catalog_items=1_000"]).catalog_items == 1_000
    for bad in ("catalog_items", "nope=1", "lookups=x", "lookups=0"):
        with pytest.raises(ValueError):
            QUICK.override([bad])


def test_percentile_is_nearest_rank() -> None:
    values = list(range(100, 0, -1))  # 1..100, unsorted
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7], 99) == 7
    with pytest.raises(ValueError):
        percentile([], 50)


def test_metric_ratio_and_verdict() -> None:
    slow = Metric("p99", 2.0, "ms", target=1.0, baseline=0.5)
    assert slow.ratio == 4.0 and slow.passed is False
    rate = Metric("rate", 300, "sales/s", target=300, baseline=600, higher_is_better=True)
    assert rate.ratio == 2.0 and rate.passed is True
    assert Metric("info", 1.0, "s").passed is None
