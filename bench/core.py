"""The core benchmarks: barcode lookup, cart repricing, durable commit, catalog import, ledger verify.

Each ``bench_*`` function takes the sizes and an empty work directory (the runner
deletes it afterwards) and returns a :class:`bench.BenchResult`. Every figure is
compared with a baseline measured in the same run, interleaved with it where the
measurement allows, because the machines these run on are shared and noisy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from appliance.canonical import canonical_json
from appliance.catalog import Item
from appliance.catalog_import import import_catalog
from appliance.clock import iso_utc
from appliance.config import Config
from appliance.ids import uuid7
from appliance.ledger import Ledger, Tx, verify
from appliance.ledger.store import qty_to_milli
from appliance.promotions import PromoContext, is_active
from appliance.sale import Sale
from appliance.till import Till, open_ledger
from bench import BenchResult, Metric, Sizes, Stopwatch, percentile
from bench.data import (
    cart_items,
    cart_promotions,
    fill_cart,
    other_payloads,
    sale_doc,
    sale_policy,
    stock_items,
    weight_for,
    write_catalog_csv,
)

log = logging.getLogger(__name__)

#: A fixed Monday morning: promotions' windows are evaluated against it.
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
_MS = 1e-6  # nanoseconds to milliseconds


def _config() -> Config:
    return Config.defaults()


def _ms(samples_ns: Sequence[int], q: float) -> float:
    return percentile(samples_ns, q) * _MS


# --------------------------------------------------------------------------- 1. barcode lookup


def bench_lookup(sizes: Sizes, workdir: Path) -> BenchResult:
    """``Till.parse`` + ``Catalog.lookup`` of random existing codes in a large catalog."""
    result = BenchResult(
        "lookup",
        f"barcode lookup in a {sizes.catalog_items:,}-item catalog (Till.parse + Catalog.lookup)",
        "raw sqlite3: the indexed barcodes-join-items SELECT by catalog key, on its own connection, "
        "interleaved with the lookups",
    )
    started = time.perf_counter()
    config = _config()
    csv_path = workdir / "catalog.csv"
    write_catalog_csv(csv_path, sizes.catalog_items)
    ours, base = Stopwatch(), Stopwatch()
    with open_ledger(config, workdir / "data") as ledger:
        till = Till(config, ledger)
        log.info("lookup: importing %d items", sizes.catalog_items)
        t0 = time.perf_counter()
        import_catalog(
            ledger, csv_path, currency=till.currency, tax_classes=config.tax.classes.keys(),
            layouts=till.layouts, time=iso_utc(NOW),
        )  # fmt: skip
        build_s = time.perf_counter() - t0
        codes = ledger.conn.execute("SELECT code, key FROM barcodes").fetchall()
        with closing(sqlite3.connect(ledger.path, isolation_level=None)) as raw:
            select = (
                "SELECT i.sku, i.name, i.price, i.tax_class, i.unit, i.department, i.age_restricted, i.active "
                "FROM barcodes b JOIN items i ON i.sku = b.sku WHERE b.key = ?"
            )
            rng = random.Random(11)
            warmup = min(500, sizes.lookups)
            for n in range(warmup + sizes.lookups):
                code, key = codes[rng.randrange(len(codes))]
                keep = n >= warmup

                def lookup(c: str = code) -> Item:
                    return till.catalog.lookup(till.parse(c))

                def select_row(k: str = key) -> Any:
                    return raw.execute(select, (k,)).fetchone()

                if n % 2:  # alternate who goes first
                    item = ours.time(lookup, record=keep)
                    row = base.time(select_row, record=keep)
                else:
                    row = base.time(select_row, record=keep)
                    item = ours.time(lookup, record=keep)
                if row is None or item.sku != row[0]:
                    raise AssertionError(f"lookup of {code} found {item.sku}, raw SELECT found {row}")
    result.params.update(
        items=sizes.catalog_items, barcodes=len(codes), lookups=len(ours.cpu), import_s=round(build_s, 1)
    )
    result.metrics += _latency_metrics("lookup", ours, base, target_ms=0.5)
    result.seconds = time.perf_counter() - started
    return result


def _latency_metrics(what: str, ours: Stopwatch, base: Stopwatch, *, target_ms: float) -> list[Metric]:
    """p50/p99/max in CPU time (the target applies to CPU p99) and p50/p99 in wall time."""
    return [
        Metric(f"p50 {what} (CPU)", _ms(ours.cpu, 50), "ms", baseline=_ms(base.cpu, 50)),
        Metric(f"p99 {what} (CPU)", _ms(ours.cpu, 99), "ms", target=target_ms, baseline=_ms(base.cpu, 99)),
        Metric(f"max {what} (CPU)", _ms(ours.cpu, 100), "ms", baseline=_ms(base.cpu, 100)),
        Metric(f"p50 {what} (wall)", _ms(ours.wall, 50), "ms", baseline=_ms(base.wall, 50)),
        Metric(f"p99 {what} (wall)", _ms(ours.wall, 99), "ms", baseline=_ms(base.wall, 99)),
    ]


# --------------------------------------------------------------------------- 2. cart


def bench_cart(sizes: Sizes, workdir: Path) -> BenchResult:
    """``Sale.add_item`` on a cart that already has ``cart_lines - 1`` lines, with ~20 promotions."""
    del workdir  # pure logic: no files
    lines = sizes.cart_lines
    result = BenchResult(
        "cart",
        f"add an item to a {lines - 1}-line cart, promotions and tax recomputed (Sale.add_item)",
        "the same add on the same cart with no promotions (tax only), interleaved",
    )
    started = time.perf_counter()
    config = _config()
    items = cart_items()
    promotions = cart_promotions(items, NOW)
    carts: list[Sale] = []
    for policy in (sale_policy(config, promotions), sale_policy(config)):
        sale = Sale(policy=policy, cashier="ann")
        fill_cart(sale, items, lines - 1, NOW, random.Random(5))  # the same lines in both carts
        carts.append(sale)
    ctx = PromoContext(now=NOW, tz=carts[0].policy.tz, coupons=frozenset())
    active = sum(1 for p in promotions if is_active(p, ctx))
    rng = random.Random(7)
    watches = (Stopwatch(), Stopwatch())
    applied: list[int] = []
    warmup = min(50, sizes.cart_adds)
    for n in range(warmup + sizes.cart_adds):
        item = rng.choice(items)
        qty = weight_for(item, rng)
        for who in (0, 1) if n % 2 else (1, 0):  # alternate who goes first
            sale = carts[who]

            def add(sale: Sale = sale, item: Item = item, qty: Decimal | None = qty) -> None:
                sale.add_item(item, NOW, quantity=qty)

            watches[who].time(add, record=n >= warmup)
            if who == 0 and sale.promotions is not None:
                applied.append(len(sale.promotions.applied))
            # Every change reprices the whole cart from scratch, so dropping the line
            # restores the starting cart for the next sample.
            sale.lines.pop()
    ours, base = watches
    result.params.update(
        lines_after_add=lines, promotions=len(promotions), active_promotions=active,
        applied_per_add=round(sum(applied) / len(applied), 1), adds=len(ours.cpu),
    )  # fmt: skip
    result.metrics += _latency_metrics("add_item", ours, base, target_ms=2.0)
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- 3. durable commit

_STORE, _DEVICE = "bench", "till-1"


@dataclass(frozen=True)
class _RawSale:
    """The rows ``Ledger.commit_sale`` writes for one sale, prepared for plain INSERTs."""

    journal: tuple[Any, ...]  # without seq
    sale: tuple[Any, ...]  # without number and journal_seq
    lines: list[tuple[Any, ...]]
    tenders: list[tuple[Any, ...]]
    moves: list[tuple[str, int]]
    events: list[tuple[str, str, str, str | None, str]]  # id, type, time, subject, data


def _raw_sale(doc: dict[str, Any], number: int) -> _RawSale:
    """Rows of the same count and size as the ledger writes (hashes and ids made up front)."""
    record = {**doc, "number": number, "store": _STORE, "device": _DEVICE}
    payload = canonical_json(record)
    time_ = str(record["completed_at"])
    digest = hashlib.sha256(payload.encode()).hexdigest()
    sid = record["id"]
    moves: dict[str, int] = {}
    for ln in record["lines"]:
        moves[ln["sku"]] = moves.get(ln["sku"], 0) - qty_to_milli(Decimal(ln["qty"]))
    stock = canonical_json(
        {
            "reason": "sale",
            "sale_id": sid,
            "moves": [{"sku": s, "delta": str(d), "level": str(d)} for s, d in moves.items()],
        }
    )
    head = canonical_json({"seq": number, "hash": digest})
    return _RawSale(
        journal=(time_, "sale.completed", record.get("cashier"), record.get("approver"), None, payload, digest, digest),
        sale=(
            sid, record.get("cashier"), record.get("started_at"), time_, record.get("duration_ms"),
            record["currency"], record["subtotal"], record["discount"], record["tax"], record["total"],
            record["rounding"], record["change"], len(record["lines"]),
        ),
        lines=[
            (sid, ln["line"], ln["sku"], ln["name"], ln["qty"], ln["unit_price"], ln["amount"], ln["discount"],
             ln["tax"], ln["total"], ln["tax_class"], int(ln["voided"]))
            for ln in record["lines"]
        ],
        tenders=[(sid, i, t["kind"], t["amount"], t.get("reference")) for i, t in enumerate(record["tenders"], 1)],
        moves=list(moves.items()),
        events=[
            (uuid7(), "tillbox.sale.completed", time_, sid, payload),
            (uuid7(), "tillbox.stock.moved", time_, None, stock),
            (uuid7(), "tillbox.ledger.head", time_, None, head),
        ],
    )  # fmt: skip


class _RawWriter:
    """Plain sqlite3 doing the inserts of ``commit_sale``, one transaction per sale."""

    def __init__(self, path: Path, *, triggers: bool) -> None:
        Ledger(path, store_id=_STORE, device_id=_DEVICE).close()  # the ledger's own schema
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("PRAGMA wal_autocheckpoint = 1000")
        self.conn.execute("PRAGMA busy_timeout = 5000")
        if triggers:
            self.conn.execute("PRAGMA foreign_keys = ON")
        else:
            names = [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
            for name in names:
                self.conn.execute(f"DROP TRIGGER {name}")
        self.seq = 0
        self.outbox = 0

    def write(self, sale: _RawSale, number: int) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        self.seq += 1
        c.execute(
            "INSERT INTO journal(seq, time, type, actor, approver, ref_seq, payload, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.seq, *sale.journal),
        )
        s = sale.sale
        c.execute(
            "INSERT INTO sales(id, number, journal_seq, cashier, started_at, completed_at, duration_ms, "
            "currency, subtotal, discount, tax, total, rounding, change, line_count) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (s[0], number, self.seq, *s[1:]),
        )
        c.executemany(
            "INSERT INTO sale_lines(sale_id, line_no, sku, name, qty, unit_price, amount, discount, tax, "
            "total, tax_class, voided) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            sale.lines,
        )
        c.executemany(
            "INSERT INTO sale_tenders(sale_id, idx, kind, amount, reference) VALUES (?, ?, ?, ?, ?)", sale.tenders
        )
        for sku, delta in sale.moves:
            level = c.execute(
                "INSERT INTO stock(sku, level_milli) VALUES (?, ?) "
                "ON CONFLICT(sku) DO UPDATE SET level_milli = level_milli + excluded.level_milli "
                "RETURNING level_milli",
                (sku, delta),
            ).fetchone()[0]
            c.execute(
                "INSERT INTO stock_moves(sku, delta_milli, level_milli, reason, sale_id, journal_seq) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (sku, delta, level, "sale", s[0], self.seq),
            )
        for event in sale.events:
            self.outbox += 1
            c.execute(
                "INSERT INTO outbox(seq, id, type, time, subject, data, journal_seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.outbox, *event, self.seq),
            )
        c.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def bench_commit(sizes: Sizes, workdir: Path) -> BenchResult:
    """``Ledger.commit_sale`` of 5-line sales on a real file, WAL + synchronous=FULL, vs raw sqlite3."""
    result = BenchResult(
        "commit",
        "durable sale commit: 5 lines, 1 tender, journal, stock and 3 outbox events (Ledger.commit_sale)",
        "raw sqlite3 doing the same INSERTs into the same schema (triggers on), same pragmas and directory, "
        "one commit per sale, alternating blocks",
    )
    started = time.perf_counter()
    config = _config()
    policy = sale_policy(config)
    items = stock_items(400)
    rng = random.Random(13)
    log.info("commit: preparing %d sale documents", sizes.commit_sales)
    docs = [sale_doc(policy, items, NOW + timedelta(seconds=n), rng) for n in range(sizes.commit_sales)]
    raws = [_raw_sale(doc, n) for n, doc in enumerate(docs, 1)]
    ledger = Ledger(workdir / "ledger.db", store_id=_STORE, device_id=_DEVICE, synchronous="FULL")
    raw = _RawWriter(workdir / "raw.db", triggers=True)
    bare = _RawWriter(workdir / "bare.db", triggers=False)
    names = ("ledger", "raw", "bare")
    watches = {name: Stopwatch() for name in names}
    writers: dict[str, Callable[[int], object]] = {
        "ledger": lambda n: ledger.commit_sale(docs[n]),
        "raw": lambda n: raw.write(raws[n], n + 1),
        "bare": lambda n: bare.write(raws[n], n + 1),
    }
    totals = dict.fromkeys(names, 0.0)
    try:
        block = max(1, min(sizes.commit_block, sizes.commit_sales))
        for b, first in enumerate(range(0, sizes.commit_sales, block)):
            numbers = range(first, min(first + block, sizes.commit_sales))
            for name in names[b % 3 :] + names[: b % 3]:  # rotate who goes first
                write, watch = writers[name], watches[name]
                t_block = time.perf_counter()
                for n in numbers:
                    watch.time(partial(write, n))
                totals[name] += time.perf_counter() - t_block
        rows = ledger.conn.execute("SELECT count(*) FROM sales").fetchone()[0]
        rows_raw = raw.conn.execute("SELECT count(*) FROM sales").fetchone()[0]
        if rows != rows_raw or rows != sizes.commit_sales:
            raise AssertionError(f"committed {rows} sales, raw wrote {rows_raw}, expected {sizes.commit_sales}")
        events = ledger.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    finally:
        ledger.close()
        raw.close()
        bare.close()
    rate = {name: sizes.commit_sales / totals[name] for name in names}
    ours, base = watches["ledger"], watches["raw"]
    result.params.update(
        sales=sizes.commit_sales, block=block, journal_bytes=len(canonical_json(docs[0])), outbox_events=events,
        directory="temporary (same filesystem for all three)",
    )  # fmt: skip
    result.metrics += [
        Metric("commit_sale rate", rate["ledger"], "sales/s", target=300, baseline=rate["raw"], higher_is_better=True),
        Metric("slowdown vs raw sqlite3", rate["raw"] / rate["ledger"], "x", target=2.0),
        Metric("p50 commit (wall)", _ms(ours.wall, 50), "ms", baseline=_ms(base.wall, 50)),
        Metric("p99 commit (wall)", _ms(ours.wall, 99), "ms", baseline=_ms(base.wall, 99)),
        Metric("p50 commit (CPU)", _ms(ours.cpu, 50), "ms", baseline=_ms(base.cpu, 50)),
        Metric("raw, no triggers/FKs", rate["bare"], "sales/s", baseline=rate["raw"], higher_is_better=True),
    ]
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- 4. catalog import


@dataclass(frozen=True)
class _Run:
    seconds: float  # wall
    cpu_seconds: float  # user + system of the child
    peak_rss_mb: float
    output: str


def _tillbox_command() -> list[str]:
    """How to run ``tillbox``: the console script next to this interpreter, else ``-m appliance.cli``."""
    script = Path(sys.executable).with_name("tillbox")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "appliance.cli"]


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TILLBOX_")}


def _vm_hwm_kib(pid: int) -> int | None:
    """The peak resident set of a running process (``VmHWM``), or None where /proc lacks it."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None  # exiting: its memory is already gone


#: How often a child's peak RSS is sampled. ``VmHWM`` is a high-water mark, so sampling
#: only misses growth in the child's last interval before it exits.
_POLL_S = 0.01


def _measure(argv: Sequence[str], workdir: Path) -> _Run:
    """Run a child to completion: its wall time, CPU time and peak RSS.

    The peak is the child's ``VmHWM`` polled from /proc, because ``ru_maxrss`` of a
    child also counts the parent's memory at the moment it was spawned (Linux carries
    the pre-exec high-water mark over), which would make a big benchmark process look
    like a big import. Without /proc it falls back to ``ru_maxrss``.
    """
    out_path = workdir / "child.out"
    with out_path.open("w+b") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=_child_env())
        peak: int | None = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            hwm = _vm_hwm_kib(proc.pid)
            if hwm is not None:
                peak = max(peak or 0, hwm)
            time.sleep(_POLL_S)
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}... exited {proc.returncode}: {output.strip()[-500:]}")
    kib = peak if peak is not None else usage.ru_maxrss  # Linux reports KiB
    return _Run(seconds, usage.ru_utime + usage.ru_stime, kib / 1024, output)


#: What the import command loads before it reads the file: the baseline child imports just these.
_IMPORT_MODULES = (
    "appliance.cli",
    "appliance.catalog_import",
    "appliance.till",
    "appliance.config",
    "appliance.clock",
    "drivers.payment",
)


def bench_import(sizes: Sizes, workdir: Path) -> BenchResult:
    """``tillbox catalog import`` of a generated CSV, in a child process: wall time and peak RSS."""
    result = BenchResult(
        "import",
        f"tillbox catalog import of {sizes.import_items:,} items (child process: wall time, peak RSS)",
        "a child that only starts the interpreter and imports the modules the command loads",
    )
    started = time.perf_counter()
    csv_path = workdir / "catalog.csv"
    barcodes = write_catalog_csv(csv_path, sizes.import_items)
    data_dir = workdir / "data"
    data_dir.mkdir()
    baseline_argv = [sys.executable, "-c", "import " + ", ".join(_IMPORT_MODULES)]
    command = _tillbox_command()
    before = _measure(baseline_argv, workdir)
    log.info("import: importing %d items in a child process", sizes.import_items)
    run = _measure([*command, "catalog", "import", str(csv_path), "--data-dir", str(data_dir)], workdir)
    after = _measure(baseline_argv, workdir)
    expected = f"imported {sizes.import_items} item(s)"
    if expected not in run.output:
        raise AssertionError(f"import printed {run.output.strip()!r}, expected {expected!r}")
    with closing(sqlite3.connect(data_dir / "ledger.db")) as check:
        stored = check.execute("SELECT (SELECT count(*) FROM items), (SELECT count(*) FROM barcodes)").fetchone()
    if tuple(stored) != (sizes.import_items, barcodes):
        raise AssertionError(f"ledger holds {stored}, expected {sizes.import_items} items and {barcodes} codes")
    base_s = (before.seconds + after.seconds) / 2
    base_cpu = (before.cpu_seconds + after.cpu_seconds) / 2
    base_rss = max(before.peak_rss_mb, after.peak_rss_mb)
    result.params.update(
        items=sizes.import_items, barcodes=barcodes, csv_mb=round(csv_path.stat().st_size / 2**20, 1),
        command="tillbox" if len(command) == 1 else "python -m appliance.cli",
        rss="VmHWM polled every 10 ms" if _vm_hwm_kib(os.getpid()) is not None else "ru_maxrss",
    )  # fmt: skip
    result.metrics += [
        Metric("CPU time", run.cpu_seconds, "s", target=30.0, baseline=base_cpu),
        Metric("wall time", run.seconds, "s", baseline=base_s),
        Metric("rate (CPU)", sizes.import_items / run.cpu_seconds, "items/s"),
        Metric("peak RSS", run.peak_rss_mb, "MB", target=200.0, baseline=base_rss),
        Metric("RSS of the import itself", max(0.0, run.peak_rss_mb - base_rss), "MB"),
    ]
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- 5. ledger verify


def _journal_plan(entries: int, sale_every: int) -> Iterator[bool]:
    """For entries 1..n: whether it is a sale (every ``sale_every``-th one)."""
    for seq in range(1, entries + 1):
        yield sale_every > 0 and seq % sale_every == 0


def build_journal(ledger: Ledger, entries: int, sale_every: int, *, seed: int = 17) -> dict[str, Any]:
    """Append ``entries`` journal entries; every ``sale_every``-th is a complete sale.

    Sales are written with ``Tx.write_sale`` inside big transactions when the ledger has
    it, else one ``commit_sale`` each; either way they are the full sale writes (rows,
    stock, journal, outbox). The other entries (suspend / resume / void payloads of real
    sales) go through ``Tx.journal``. Sale documents are 50 templates from the sale
    engine re-issued with fresh ids and times. The build runs with ``synchronous = OFF``
    (it is set-up, not what is measured). Returns what was written.
    """
    config = _config()
    policy = sale_policy(config)
    items = stock_items(400)
    rng = random.Random(seed)
    templates = [sale_doc(policy, items, NOW, rng) for _ in range(50)]
    others = [p for _ in range(20) for p in other_payloads(policy, items, NOW, rng)]
    other_sizes = [len(canonical_json(payload)) for _type, payload in others]
    in_tx = callable(getattr(Tx, "write_sale", None))
    ledger.conn.execute("PRAGMA synchronous = OFF")
    moment = NOW
    step = timedelta(seconds=7)
    sales = payload_bytes = 0
    pending: list[tuple[str, dict[str, Any], str]] = []  # (type, payload or sale doc, time)

    def flush() -> None:
        if pending:
            with ledger.transaction("bench journal") as tx:
                # Tx.write_sale is newer than Ledger.commit_sale; fall back where it is missing.
                write_sale: Callable[[dict[str, Any]], object] | None = getattr(tx, "write_sale", None)
                for type_, payload, at in pending:
                    if type_ == "sale" and write_sale is not None:
                        write_sale(payload)
                    else:
                        tx.journal(type_, payload, time=at, actor="ann")
            pending.clear()

    for n, is_sale in enumerate(_journal_plan(entries, sale_every)):
        moment += step
        at = iso_utc(moment)
        if is_sale:
            doc = {**templates[n % len(templates)], "id": uuid7(), "started_at": at, "completed_at": at}
            sales += 1
            if in_tx:
                pending.append(("sale", doc, at))
            else:
                flush()
                ledger.commit_sale(doc)
        else:
            k = n % len(others)
            pending.append((*others[k], at))
            payload_bytes += other_sizes[k]
        if len(pending) >= 20_000:
            flush()
        if n and n % 100_000 == 0:
            log.info("verify: built %d of %d journal entries", n, entries)
    flush()
    ledger.conn.execute("PRAGMA synchronous = FULL")
    others_n = entries - sales
    return {
        "sales": sales,
        "sales_written_by": "Tx.write_sale" if in_tx else "Ledger.commit_sale",
        "other_entries": others_n,
        "sale_payload_bytes": sum(len(canonical_json(t)) for t in templates) // len(templates),
        "other_payload_bytes": payload_bytes // others_n if others_n else 0,
    }


def bare_chain_walk(path: Path) -> int:
    """Baseline: read every journal row in order and SHA-256 its fields; returns the count."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        count = 0
        rows = conn.execute(
            "SELECT seq, time, type, actor, approver, ref_seq, payload, prev_hash, hash FROM journal ORDER BY seq"
        )
        for seq, at, type_, actor, approver, ref_seq, payload, prev_hash, _digest in rows:
            fields = (prev_hash, str(seq), at, type_, actor or "", approver or "",
                      "" if ref_seq is None else str(ref_seq), payload)  # fmt: skip
            hashlib.sha256("\x1f".join(fields).encode()).hexdigest()
            count += 1
        return count
    finally:
        conn.close()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def bench_verify(sizes: Sizes, workdir: Path) -> BenchResult:
    """``verify()`` (what ``tillbox ledger verify`` runs) over a large journal, vs a bare hash loop."""
    n = sizes.journal_entries
    result = BenchResult(
        "verify",
        f"tillbox ledger verify over {n:,} journal entries (1 in {sizes.sale_every} a sale)"
        if sizes.sale_every
        else f"tillbox ledger verify over {n:,} journal entries (no sales)",
        "a bare loop reading every journal row in order and SHA-256ing it (run before and after)",
    )
    started = time.perf_counter()
    config = _config()
    data_dir = workdir / "data"
    with open_ledger(config, data_dir) as ledger:
        log.info("verify: building %d journal entries", n)
        build_s, counts = _timed(lambda: build_journal(ledger, n, sizes.sale_every))
    path = config.ledger_path(data_dir)
    size_mb = path.stat().st_size / 2**20
    walk, check = Stopwatch(), Stopwatch()
    rows = walk.time(lambda: bare_chain_walk(path))
    with open_ledger(config, data_dir) as ledger:  # reopened, as the CLI opens it
        report = check.time(lambda: verify(ledger))
    walk.time(lambda: bare_chain_walk(path))
    if not report.ok or report.entries != n or rows != n or report.sales != counts["sales"]:
        raise AssertionError(f"verify reported {report}, expected {n} entries and {counts['sales']} sales")

    # Projection: the per-entry cost of a journal of nothing but sales (the worst case).
    proj_dir = workdir / "projection"
    m = sizes.projection_sales
    with open_ledger(config, proj_dir) as ledger:
        build_journal(ledger, m, 1)
    proj_watch = Stopwatch()
    with open_ledger(config, proj_dir) as ledger:
        proj = proj_watch.time(lambda: verify(ledger))
    if not proj.ok or proj.sales != m:
        raise AssertionError(f"verify of the all-sales ledger reported {proj}")

    s = 1e-9  # nanoseconds to seconds
    verify_cpu, verify_wall = check.cpu[0] * s, check.wall[0] * s
    walk_cpu, walk_wall = sum(walk.cpu) / 2 * s, sum(walk.wall) / 2 * s
    result.params.update(entries=n, **counts, ledger_mb=round(size_mb), build_s=round(build_s), projection_sales=m)
    result.metrics += [
        Metric("verify time (CPU)", verify_cpu, "s", target=60.0, baseline=walk_cpu),
        Metric("verify time (wall)", verify_wall, "s", baseline=walk_wall),
        Metric("verify rate (CPU)", n / verify_cpu, "entries/s", baseline=n / walk_cpu, higher_is_better=True),
        Metric(f"projected, {n:,} sales only (CPU)", proj_watch.cpu[0] * s / m * n, "s"),
    ]
    result.seconds = time.perf_counter() - started
    return result


#: Benchmarks by name, in the order ``python -m bench`` runs them.
BENCHMARKS: dict[str, Callable[[Sizes, Path], BenchResult]] = {
    "lookup": bench_lookup,
    "cart": bench_cart,
    "commit": bench_commit,
    "import": bench_import,
    "verify": bench_verify,
}
