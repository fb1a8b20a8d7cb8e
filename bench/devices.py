"""Device benchmarks: scanner latency into the daemon, and rendering a receipt to ESC/POS.

``run(quick)`` returns one dict per benchmark with its measurements, the target and
whether it was met:

- ``devices.scan_to_daemon``: from the last byte of a scan written to a pty (the
  terminator; the code itself went 2 ms earlier, as bytes trickle in from a serial
  scanner) to the daemon's event loop taking the scan off its input queue. The real
  :class:`drivers.scanner.SerialScanner` reads the pty inside a running
  :class:`appliance.daemon.Daemon` (kiosk server, simulated demo devices, a cashier
  logged in); the timestamp is taken on entry to the daemon's scan handler. Also reported:
  the same to the driver's ``on_scan`` callback (before the hand-over to the loop), and
  to the line being in the sale (the handler's whole work). Baseline: a bare pyserial
  ``read_until`` loop on a second pty, alternating with the daemon scan by scan.
  Target p99 < 5 ms (wall time: it is a latency across threads).
- ``devices.render_receipt``: ``render_receipt`` of a real 50-line receipt (a Till sale
  of the demo catalog with promotions, a coupon, a manual discount, a void, weighed
  items, card and cash; 80 mm paper, CP858, a logo, the CODE128 reference and a QR
  link) to ESC/POS bytes. Baselines, interleaved call by call: ``render_text`` of the same
  receipt, and a plain ``b"\\n".join`` of its text lines already encoded. Target p99 < 20
  ms, judged on the thread's CPU time (the wall time is printed too).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from appliance.daemon import Daemon, Inputs, ManagedDevices, managed_devices
from appliance.receipt import Receipt
from bench import Stopwatch, percentile

#: Demo catalog codes sold by the unit and not age-restricted: each scan adds a line.
CODES = ("4006381333931", "5901234123457", "4012345678901", "4000417025005",
         "4000417020000", "9780201379624", "4008496559879", "4015000967051")  # fmt: skip
BYTE_GAP = 0.002  # seconds between the code and its terminator
PAUSE = 0.005  # seconds between scans
CART = 40  # scans per sale before it is parked, so the cart stays a realistic size
TIMEOUT = 5.0


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


def _summary(prefix: str, samples: Sequence[float]) -> dict[str, float]:
    """p50/p99/max of nanosecond samples, in ms, as ``{prefix}_p50_ms`` and so on."""
    return {f"{prefix}_p50_ms": _ms(statistics.median(samples)), f"{prefix}_p99_ms": _ms(percentile(samples, 99)),
            f"{prefix}_max_ms": _ms(max(samples))}  # fmt: skip


# -- scanner -------------------------------------------------------------------------------------


class _Probe:
    """Timestamps (``perf_counter_ns``) of one scan where the benchmark watches it."""

    def __init__(self) -> None:
        self.marks: dict[str, int] = {}
        self.code = ""
        self.lines = 0
        self.done = threading.Event()

    def reset(self) -> None:
        self.marks = {}
        self.done.clear()

    def mark(self, point: str) -> None:
        self.marks.setdefault(point, time.perf_counter_ns())


class _ProbedDaemon(Daemon):
    """The daemon, timestamping each scan as its loop takes it and when the line is in the sale."""

    probe: _Probe

    async def _on_scan(self, code: str) -> None:
        self.probe.mark("loop")
        try:
            await super()._on_scan(code)
        finally:
            self.probe.mark("line")
            self.probe.code = code
            self.probe.lines = len(self.sale.lines) if self.sale is not None else 0
            self.probe.done.set()


class _BareReader:
    """The plainest pyserial loop: ``read_until`` CR, timestamp each complete line."""

    def __init__(self, port: str) -> None:
        import serial

        self._serial = serial.Serial(port, 9600, timeout=0.1)
        self.line = b""
        self.at = 0
        self.got = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-bare-serial", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            buf += self._serial.read_until(b"\r")
            if buf.endswith(b"\r"):
                self.at = time.perf_counter_ns()
                self.line, buf = buf[:-1], b""
                self.got.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._serial.close()


def _send(master: int, code: str) -> int:
    """Write a scan to the pty's master side; returns the time just before its last byte."""
    os.write(master, code.encode("ascii"))
    time.sleep(BYTE_GAP)
    start = time.perf_counter_ns()
    os.write(master, b"\r")
    return start


def _wait_ready(daemon: Daemon) -> None:
    from drivers.base import Health

    deadline = time.monotonic() + TIMEOUT
    while daemon.devices.scanner.health.health != Health.OK:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the scanner did not open: {daemon.devices.scanner.health.reason}")
        time.sleep(0.01)


def scan_to_daemon(root: Path, scans: int, *, warmup: int = 5) -> dict[str, Any]:
    """Scan over a pty into a running daemon, alternating with a bare pyserial reader on another pty."""
    from appliance.config import parse_config
    from appliance.demo import DEMO_DEVICES
    from drivers.scanner import SerialScanner
    from kiosk_ui.testing import DaemonThread, demo_prepare

    probe = _Probe()
    ptys = [os.openpty() for _ in range(2)]
    (master, slave), (bare_master, bare_slave) = ptys

    def factory(inputs: Inputs, daemon: Daemon) -> ManagedDevices:
        def on_scan(code: str, symbology: str | None) -> None:
            probe.mark("driver")
            inputs.scan(code, symbology)

        scanner = SerialScanner(os.ttyname(slave), on_scan, on_reject=lambda r: inputs.reject("scanner", r))
        return managed_devices(inputs, daemon, overrides={"scanner": scanner})

    config = parse_config(DEMO_DEVICES + '\n[devices.scanner]\nkind = "none"\n', environ={})
    daemon = _ProbedDaemon(config, root / "scan", prepare=demo_prepare(), devices=factory, fast_hash=True)
    daemon.probe = probe
    samples: dict[str, list[int]] = {"driver": [], "loop": [], "line": [], "bare": []}
    bare = _BareReader(os.ttyname(bare_slave))
    try:
        with DaemonThread(daemon) as running:
            _wait_ready(daemon)
            session = running.call(lambda: daemon.login_pin("ann", "1234"))
            in_cart = 0
            for i in range(warmup + scans):
                code = CODES[i % len(CODES)]
                for side in ("daemon", "bare") if i % 2 == 0 else ("bare", "daemon"):
                    if side == "bare":
                        bare.got.clear()
                        start = _send(bare_master, code)
                        if not bare.got.wait(TIMEOUT) or bare.line != code.encode():
                            raise RuntimeError(f"the bare reader did not read {code}")
                        if i >= warmup:
                            samples["bare"].append(bare.at - start)
                        continue
                    probe.reset()
                    start = _send(master, code)
                    if not probe.done.wait(TIMEOUT):
                        raise RuntimeError(f"the daemon did not handle scan {code} within {TIMEOUT:g} s")
                    in_cart += 1
                    if probe.code != code or probe.lines != in_cart:
                        raise RuntimeError(f"scan {code} did not add line {in_cart} (cart has {probe.lines})")
                    if i >= warmup:
                        for point in ("driver", "loop", "line"):
                            samples[point].append(probe.marks[point] - start)
                if in_cart == CART:
                    running.call(lambda: daemon.suspend(session))
                    in_cart = 0
                time.sleep(PAUSE)
    finally:
        bare.close()
        for fd in (master, slave, bare_master, bare_slave):
            os.close(fd)
    loop_p99, bare_p99 = percentile(samples["loop"], 99), percentile(samples["bare"], 99)
    return {
        "name": "devices.scan_to_daemon", "scans": len(samples["loop"]),
        **_summary("loop", samples["loop"]), **_summary("driver", samples["driver"]),
        **_summary("line", samples["line"]), **_summary("bare", samples["bare"]),
        "ratio_p99": round(loop_p99 / bare_p99, 2) if bare_p99 else None,
        "target": "pty last byte to daemon loop: p99 < 5 ms", "ok": loop_p99 < 5_000_000,
    }  # fmt: skip


# -- receipt rendering ---------------------------------------------------------------------------

_RECEIPT_CONFIG = """\
[store]
name = "Corner Shop"
address = ["Müllerstraße 12", "10115 Berlin"]
tax_id = "DE123456789"
timezone = "Europe/Berlin"

[receipt]
url_template = "https://receipts.example.org/{store}/{device}/{id}"
"""


def build_receipt(data_dir: Path, lines: int = 50) -> Receipt:
    """The receipt of a committed Till sale of ``lines`` lines over the demo catalog.

    Every demo item in turn (weighed ones at 0.735 kg, two bags), the PEN coupon, a 10%
    line discount, one voided line; paid partly by card (simulated terminal), the rest in cash with change.
    """
    import csv
    from importlib import resources

    from appliance.clock import FrozenClock
    from appliance.config import parse_config
    from appliance.demo import open_demo_shift, seed
    from appliance.sale import Discount
    from appliance.till import Till, open_ledger
    from drivers.payment import SimulatedTerminal

    config = parse_config(_RECEIPT_CONFIG, environ={})
    clock = FrozenClock(datetime(2026, 3, 2, 9, 30, tzinfo=UTC))
    text = (resources.files("appliance") / "demo_data" / "catalog.csv").read_text(encoding="utf-8")
    items = list(csv.DictReader(text.splitlines()))
    with open_ledger(config, data_dir) as ledger:
        till = Till(config, ledger, clock=clock, terminal=SimulatedTerminal(), fast_hash=True)
        seed(till, data_dir)
        open_demo_shift(till)
        sale = till.new_sale("ann")
        for i in range(lines):
            item = items[i % len(items)]
            if item["unit"] == "kg":
                till.add_sku(sale, item["sku"], quantity=Decimal("0.735"))
            elif item["sku"] == "3001":
                till.add_sku(sale, item["sku"], quantity=Decimal(2))
            else:
                till.scan(sale, item["barcode"].split("|")[0])
        now = clock.now()
        sale.add_coupon("PEN", now)
        sale.discount_line(5, Discount(percent=Decimal(10), reason="damaged box", actor="ann"), now)
        sale.void_line(7, now, reason="customer changed mind")
        till.pay_card(sale, 5_000)
        due = sale.cash_due()
        sale.pay_cash(due + 1_000 - due % 1_000)  # the next 10.00 up: the receipt shows change
        return till.receipt(till.complete(sale))


def render_receipt_bench(root: Path, renders: int, *, warmup: int = 20) -> dict[str, Any]:
    """Time ``render_receipt`` of a 50-line receipt, interleaved with its two baselines."""
    from appliance.receipt import render_text
    from drivers.escpos_codec import PrinterProfile, RasterImage, render_receipt, to_text

    receipt = build_receipt(root / "receipt")
    profile = PrinterProfile(paper_mm=80, code_page="CP858")
    stride, height = profile.dots // 8, 96
    logo = RasterImage(profile.dots, height, bytes((i * 37) & 0xFF for i in range(stride * height)))
    text_lines = render_text(receipt, profile.columns).splitlines()
    codec = profile.page.codec
    encoded = [line.encode(codec, "replace") for line in text_lines]
    expected = render_receipt(receipt, profile, logo=logo)
    if "TOTAL EUR" not in to_text(expected, profile.columns):
        raise RuntimeError("the rendered receipt has no total")
    esc, plain, joined = Stopwatch(), Stopwatch(), Stopwatch()
    for i in range(warmup + renders):
        record = i >= warmup
        data = esc.time(lambda: render_receipt(receipt, profile, logo=logo), record=record)
        plain.time(lambda: render_text(receipt, profile.columns), record=record)
        joined.time(lambda: b"\n".join(encoded), record=record)
        if data != expected:
            raise RuntimeError("render_receipt is not deterministic")
    cpu_p99 = percentile(esc.cpu, 99)
    return {
        "name": "devices.render_receipt", "sale_lines": len(receipt.lines), "text_lines": len(text_lines),
        "bytes": len(expected), "renders": len(esc.cpu), "paper": f"{profile.paper_mm} mm {profile.page.name}",
        **_summary("cpu", esc.cpu), **_summary("wall", esc.wall),
        **_summary("text_cpu", plain.cpu), **_summary("join_cpu", joined.cpu),
        "ratio_p50": round(statistics.median(esc.cpu) / statistics.median(plain.cpu), 1),
        "target": "50-line receipt to ESC/POS: p99 < 20 ms (CPU)", "ok": cpu_p99 < 20_000_000,
    }  # fmt: skip


def run(quick: bool) -> list[dict[str, Any]]:
    """All device benchmarks; ``quick`` uses few samples for a smoke run."""
    with tempfile.TemporaryDirectory(prefix="tillbox-bench-devices-") as tmp:
        root = Path(tmp)
        return [scan_to_daemon(root, 30 if quick else 1_000), render_receipt_bench(root, 30 if quick else 1_000)]


if __name__ == "__main__":
    for result in run(quick="--quick" in sys.argv):
        print(json.dumps(result))
