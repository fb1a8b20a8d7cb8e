"""Demo mode: the whole appliance over a seeded catalog, simulated devices and a local ledger.

``tillbox demo`` runs the daemon with the kiosk UI (http://127.0.0.1:8080 by default),
demo staff and an open shift; ``tillbox scan CODE`` feeds its simulated scanner.
``tillbox demo --console`` is the older console till: type or scan a code and press
Enter; ``help`` lists the commands. Commands can also be piped in on standard input.
It needs no broker and no hardware.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import TextIO

from appliance.config import Config
from appliance.errors import InputError, TillboxError
from appliance.money import Currency
from appliance.receipt import render_text
from appliance.sale import Discount, Sale
from appliance.till import Till

HELP = """\
  CODE                 scan a barcode, PLU or SKU (e.g. 4006381333931, 4011, BAG)
  qty N CODE           scan with a quantity (or a weight in kg for loose produce)
  void N               void line N
  discount N PCT       PCT% off line N          cart PCT   PCT% off the whole cart
  coupon CODE          enter a coupon (try PEN)
  pay cash [AMOUNT]    pay cash (exact when no amount)
  pay card [AMOUNT]    pay by card on the simulated terminal
  suspend / resume     park the sale / bring back the oldest parked sale
  cancel               abandon the sale          verify    check the ledger
  help                 this text                 quit      leave"""


def seed(till: Till, data_dir: Path) -> None:
    """Load the demo catalog and promotions into an empty ledger."""
    from appliance.canonical import canonical_json
    from appliance.catalog_import import import_catalog
    from appliance.clock import iso_utc
    from appliance.promotions import promotion_from_dict, promotion_to_dict

    if till.catalog.count():
        return
    src = resources.files("appliance") / "demo_data"
    with resources.as_file(src / "catalog.csv") as csv_path:
        import_catalog(till.ledger, csv_path, currency=till.currency, tax_classes=till.config.tax.classes.keys(),
                       layouts=till.layouts, time=iso_utc(till.clock.now()), actor="demo")  # fmt: skip
    import json

    text = (src / "promotions.jsonl").read_text(encoding="utf-8")
    with till.ledger.transaction("seeding promotions") as tx:
        for line in text.splitlines():
            promo = promotion_from_dict(json.loads(line), till.currency)
            tx.conn.execute("INSERT INTO promotions(id, body) VALUES (?, ?)",
                            (promo.id, canonical_json(promotion_to_dict(promo, till.currency))))  # fmt: skip
    till.reload_promotions()


def seed_orders(till: Till) -> int:
    """Two online orders for the demo's pickup queue (as if the shop had sent them); how many were added.

    ``web-1001`` is paid, its pickup code is 4711 (QR ``TBO:web-1001:4711``); ``web-1002`` is
    paid at pickup. A demo whose ledger already holds orders is left alone.
    """
    import json
    from datetime import timedelta

    from appliance.clock import iso_utc
    from appliance.orders import code_hash
    from sync.inbound import Inbound, InboundPolicy

    if till.ledger.conn.execute("SELECT count(*) FROM pickup_orders").fetchone()[0]:
        return 0
    placed = iso_utc(till.clock.now() - timedelta(hours=2))
    water = {"sku": "1001", "qty": "2", "name": "Sparkling Water 1.5l", "total": 158, "tax": 10,
             "tax_class": "reduced"}  # fmt: skip
    juice = {"sku": "1002", "qty": "1", "name": "Orange Juice 1l", "total": 199, "tax": 13, "tax_class": "reduced"}
    orders = [
        {"id": "web-1001", "version": 1, "status": "placed", "time": placed, "customer": "Erika Mustermann",
         "currency": till.currency.code, "paid_at": placed, "lines": [water, juice],
         "pickup_code_sha256": code_hash("web-1001", "4711")},
        {"id": "web-1002", "version": 1, "status": "placed", "time": placed, "customer": "Max Power",
         "currency": till.currency.code, "payment": "at_pickup", "lines": [juice]},
    ]  # fmt: skip
    policy = InboundPolicy(currency=till.currency, tax_classes=tuple(till.config.tax.classes))
    inbound = Inbound(till.ledger, policy, clock=till.clock)
    return sum(inbound.handle(f"tillbox/v1/{till.ledger.store_id}/orders/{o['id']}", json.dumps(o).encode())
               for o in orders)  # fmt: skip


#: Devices of the demo (all simulated): a till with every peripheral, so every screen has something to show.
DEMO_DEVICES = """\
[devices]
mode = "sim"

[devices.terminal]
kind = "zvt-serial"

[devices.badge]
kind = "evdev"

[devices.display]
kind = "serial"

[devices.scale]
kind = "serial"

[devices.companion]
kind = "usb"
"""


def demo_config() -> Config:
    """The configuration ``tillbox demo`` uses when the data dir has no ``tillbox.toml``."""
    from appliance.config import parse_config

    return parse_config(DEMO_DEVICES, source="<demo>")


#: Demo staff: (id, name, role, PIN, badge).
DEMO_STAFF = (
    ("ann", "Ann Cashier", "cashier", "1234", "CASHIER-0001"),
    ("sam", "Sam Supervisor", "supervisor", "9999", "SUPER-0001"),
    ("tom", "Tom Technician", "technician", "4321", None),
)


def seed_staff(till: Till) -> None:
    """Add the demo staff unless someone exists already."""
    if till.ledger.conn.execute("SELECT count(*) FROM staff").fetchone()[0]:
        return
    now = till.clock.now()
    for staff_id, name, role, pin, badge in DEMO_STAFF:
        till.staff.add(staff_id, name, role, pin=pin, badge=badge, now=now, actor="demo")


def open_demo_shift(till: Till, cashier: str = "demo") -> bool:
    """Open a shift with a float of 100.00 unless one is open; True if it opened one."""
    if till.shifts.current() is not None:
        return False
    from datetime import timedelta

    from appliance.staff import Action, Approval

    now = till.clock.now()
    till.shifts.open(10_000, Approval(Action.OPEN_SHIFT, cashier, None, now + timedelta(minutes=1)), now)
    return True


def show(sale: Sale, currency: Currency, out: TextIO) -> None:
    """Print the cart."""
    for ln in sale.lines:
        mark = "x" if ln.voided else " "
        qty = f"{ln.quantity} kg" if ln.item.weighed else f"{ln.quantity} x"
        promo = f"  [{', '.join(ln.promo_reasons)}]" if ln.promo_reasons else ""
        print(
            f" {mark}{ln.no:>3} {ln.item.name[:26]:<26} {qty:>9} {currency.plain(ln.total):>9}{promo}",
            file=out,
        )
    t = sale.totals()
    print(f"      total {currency.plain(t.total)}  (tax {currency.plain(t.tax)}, saved {currency.plain(t.discount)})"
          f"  due {currency.plain(t.due)}", file=out)  # fmt: skip


def _amount(currency: Currency, words: list[str]) -> int | None:
    return currency.to_minor(words[0]) if words else None


def run_console(till: Till, inp: TextIO, out: TextIO, *, cashier: str = "demo") -> int:
    """Read commands until ``quit`` or end of input; returns how many sales were completed."""
    from appliance.ledger import verify

    if open_demo_shift(till, cashier):
        print(f"shift opened with a float of {till.currency.plain(10_000)}", file=out)
    sale = till.new_sale(cashier)
    done = 0
    interactive = inp.isatty()
    print("tillbox demo till; type help. Scan or type a code:", file=out)
    while True:
        if interactive:
            print("> ", end="", file=out, flush=True)
        text = inp.readline()
        if not text:
            break
        words = text.split()
        if not words:
            continue
        cmd, rest = words[0].lower(), words[1:]
        try:
            if cmd in ("quit", "exit"):
                break
            if cmd == "help":
                print(HELP, file=out)
            elif cmd == "qty" and len(rest) == 2:
                till.scan(sale, rest[1], quantity=_decimal(rest[0]))
            elif cmd == "void" and len(rest) == 1:
                sale.void_line(int(rest[0]), till.clock.now(), reason="cashier void")
            elif cmd == "discount" and len(rest) == 2:
                sale.discount_line(int(rest[0]), Discount(percent=_decimal(rest[1]), reason="demo", actor=cashier),
                                   till.clock.now())  # fmt: skip
            elif cmd == "cart" and len(rest) == 1:
                sale.discount_cart(Discount(percent=_decimal(rest[0]), reason="demo", actor=cashier), till.clock.now())
            elif cmd == "coupon" and len(rest) == 1:
                sale.add_coupon(rest[0], till.clock.now())
            elif cmd == "pay" and rest and rest[0] in ("cash", "card"):
                amount = _amount(till.currency, rest[1:])
                if rest[0] == "cash":
                    sale.pay_cash(sale.cash_due() if amount is None else amount)
                else:
                    till.pay_card(sale, amount)
                if sale.totals().due <= 0:
                    result = till.complete(sale)
                    print(render_text(till.receipt(result)), file=out)
                    done += 1
                    sale = till.new_sale(cashier)
                    continue
            elif cmd == "suspend":
                till.suspend(sale)
                print("sale parked", file=out)
                sale = till.new_sale(cashier)
                continue
            elif cmd == "resume":
                parked = till.suspended()
                if not parked:
                    raise InputError("no parked sales")
                sale = till.resume(parked[0][0], cashier=cashier)
            elif cmd == "cancel":
                till.cancel(sale, actor=cashier, reason="cancelled at the till")
                print("sale cancelled", file=out)
                sale = till.new_sale(cashier)
                continue
            elif cmd == "verify":
                report = verify(till.ledger)
                print("ledger ok" if report.ok else "; ".join(report.errors), file=out)
                continue
            elif len(words) == 1:
                till.scan(sale, words[0])
            else:
                raise InputError(f"don't understand {text.strip()!r}; type help")
            show(sale, till.currency, out)
        except (TillboxError, ValueError) as exc:
            print(f"! {exc}", file=out)
    return done


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise InputError(f"{text!r} is not a number") from None


def run_demo(args: argparse.Namespace) -> int:
    """``tillbox demo``: the appliance with the kiosk UI, or with ``--console`` the console till."""
    if args.reset and args.data_dir.exists():
        shutil.rmtree(args.data_dir)
    if not getattr(args, "console", False):
        return run_kiosk_demo(args)
    from appliance.cli import _open

    till = _open(args)
    with till.ledger:
        seed(till, args.data_dir)
        print(f"demo data in {args.data_dir}; {till.catalog.count()} items, simulated devices, no broker")
        run_console(till, sys.stdin, sys.stdout)
    return 0


def demo_hint(url: str, key: str, data_dir: Path) -> str:
    """What ``tillbox demo`` prints once the UI answers."""
    staff = ", ".join(f"{i} / PIN {pin} ({role})" for i, _, role, pin, _ in DEMO_STAFF)
    where = f" --data-dir {data_dir}"
    return (
        f"tillbox demo running: simulated devices, demo catalog, data in {data_dir}\n"
        f"  cashier           {url}/cashier   staff: {staff}\n"
        f"  self-checkout     {url}/self-checkout#key={key}\n"
        f"  customer display  {url}/customer-display#key={key}\n"
        f"  technician        {url}/technician\n"
        f"  pickup queue      {url}/orders   (demo orders web-1001, code 4711, and web-1002, to pay)\n"
        f"feed the simulated scanner: tillbox scan 4006381333931{where}\n"
        f"  a badge: tillbox scan --badge SUPER-0001{where}   the scale: tillbox scan --weight 0.5{where}\n"
        "stop with Ctrl+C"
    )


def run_kiosk_demo(args: argparse.Namespace) -> int:
    """Run the daemon with simulated devices, the demo catalog, staff and an open shift."""
    import os

    from appliance.cli import _load
    from appliance.daemon import Daemon, run_daemon

    os.environ.setdefault("TILLBOX_DEVICES", "sim")
    config, data_dir = _load(args)
    if args.config is None and not (data_dir / "tillbox.toml").is_file():
        config = demo_config()
    if getattr(args, "port", None) is not None:
        import dataclasses

        config = dataclasses.replace(config, ui=dataclasses.replace(config.ui, port=args.port))

    def prepare(till: Till) -> None:
        seed(till, data_dir)
        seed_staff(till)
        open_demo_shift(till)
        seed_orders(till)

    def ready(daemon: Daemon, port: int) -> None:
        host = config.ui.listen_host
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104
        key = daemon.key.value if daemon.key else "?"
        print(demo_hint(url, key, data_dir), flush=True)

    return run_daemon(config, data_dir, brokers=tuple(getattr(args, "broker", ()) or ()), prepare=prepare,
                      on_ready=ready)  # fmt: skip
