"""The ``tillbox`` command line.

Every command takes ``--data-dir`` (default: ``$TILLBOX_DATA_DIR`` or
``/var/lib/tillbox``) and ``--config`` (default: ``tillbox.toml`` in the data
dir when present, else built-in defaults). Errors print one line and exit
non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import __version__
from appliance.errors import InputError, TillboxError

if TYPE_CHECKING:
    from appliance.config import Config
    from appliance.staff import Action, Approval
    from appliance.till import Till

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "/var/lib/tillbox"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VERIFY_FAILED = 3


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("TILLBOX_DATA_DIR", DEFAULT_DATA_DIR)),
        help="directory holding the ledger and config (default: $TILLBOX_DATA_DIR or %(default)s)",
    )
    common.add_argument("--config", type=Path, help="config file (default: DATA_DIR/tillbox.toml if present)")
    common.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="tillbox", description="Raspberry Pi till and self-checkout appliance.")
    parser.add_argument("--version", action="version", version=f"tillbox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    catalog = sub.add_parser("catalog", help="manage the item catalog").add_subparsers(dest="action", required=True)
    imp = catalog.add_parser("import", parents=[common], help="import items from CSV or JSON Lines")
    imp.add_argument("file", type=Path)
    imp.add_argument("--skip-bad", action="store_true", help="import the good rows and report the bad ones")
    promo = catalog.add_parser("promotions", parents=[common], help="import promotions from JSON Lines")
    promo.add_argument("file", type=Path)
    find = catalog.add_parser("lookup", parents=[common], help="look up a barcode, SKU or name")
    find.add_argument("text")

    ledger = sub.add_parser("ledger", help="inspect the ledger").add_subparsers(dest="action", required=True)
    ver = ledger.add_parser("verify", parents=[common], help="check the hash chain and that sales match it")
    ver.add_argument("--json", action="store_true")
    ver.add_argument("--no-quick-check", action="store_true", help="skip SQLite's file-level check")

    sale = sub.add_parser("sale", parents=[common], help="ring a scripted test sale")
    sale.add_argument("--scan", action="append", required=True, metavar="CODE", help="a scanned code (repeat)")
    sale.add_argument(
        "--pay", action="append", required=True, metavar="TENDER",
        help="cash:AMOUNT, cash (exact), card or card:AMOUNT; repeat for split tender",
    )  # fmt: skip
    sale.add_argument("--cashier", default="technician", help="who rings the sale (default: %(default)s)")
    sale.add_argument("--json", action="store_true", help="print the sale as JSON instead of a receipt")

    shift = sub.add_parser("shift", help="open a shift, cash in and out").add_subparsers(dest="action", required=True)
    sopen = shift.add_parser("open", parents=[common], help="open a shift with a counted float")
    sopen.add_argument("--float", required=True, dest="float_amount", metavar="AMOUNT", help="e.g. 150.00")
    sopen.add_argument("--staff", default="console", help="who opens it (default: %(default)s)")
    cash = shift.add_parser("cash", parents=[common], help="paid-in, paid-out or safe drop")
    cash.add_argument("kind", choices=["paid_in", "paid_out", "safe_drop"])
    cash.add_argument("amount")
    cash.add_argument("--reason", required=True)
    cash.add_argument("--staff", default="console")

    report = sub.add_parser("report", help="X and Z reports").add_subparsers(dest="action", required=True)
    for name, text in (("x", "mid-shift report (read-only)"), ("z", "end-of-shift report; closes the shift")):
        rep = report.add_parser(name, parents=[common], help=text)
        rep.add_argument("--json", action="store_true")
        rep.add_argument("--staff", default="console")
        if name == "z":
            rep.add_argument("--count", action="append", default=[], metavar="DENOM=N",
                             help="counted cash by denomination, e.g. --count 20.00=3 (repeat)")  # fmt: skip
            rep.add_argument("--counted", metavar="AMOUNT", help="counted cash as one total")

    staff = sub.add_parser("staff", help="staff records").add_subparsers(dest="action", required=True)
    sadd = staff.add_parser("add", parents=[common], help="add a staff member (PIN read from stdin)")
    sadd.add_argument("id")
    sadd.add_argument("name")
    sadd.add_argument("--role", required=True, choices=["cashier", "supervisor", "manager", "technician"])
    sadd.add_argument("--badge", help="badge token (as the reader sends it)")

    ret = sub.add_parser("return", parents=[common], help="refund lines of a sale (receipted return)")
    ret.add_argument("--receipt", required=True, help="receipt reference (TB-...), sale id or number")
    ret.add_argument("--line", action="append", required=True, metavar="N[:QTY]", help="line to return (repeat)")
    ret.add_argument("--damaged", action="store_true", help="items go to write-off instead of back to stock")
    ret.add_argument("--staff", default="console")
    ret.add_argument("--json", action="store_true")

    rpr = sub.add_parser("reprint", parents=[common], help="reprint a receipt, marked COPY")
    rpr.add_argument("receipt")
    rpr.add_argument("--staff", default="console")

    prov = sub.add_parser("provision", help="first-boot provisioning").add_subparsers(dest="action", required=True)
    pw = prov.add_parser("write", help="write and validate a provisioning file for the boot partition")
    pw.add_argument("--store", required=True)
    pw.add_argument("--device", required=True)
    pw.add_argument("--broker", action="append", required=True, help="mqtt:// or mqtts:// URL (repeat)")
    pw.add_argument("--token", required=True, help="one-time enrollment token from `tillbox enroll-token`")
    pw.add_argument("--timezone", default="UTC")
    pw.add_argument("--locale", default="en_US")
    pw.add_argument("--wifi-ssid", help="Wi-Fi network name (the Pi's [wifi] table)")
    pw.add_argument("--wifi-psk", help="Wi-Fi passphrase, or 64 hex digits; none for an open network")
    pw.add_argument("--wifi-country", help="Wi-Fi regulatory domain, ISO 3166 alpha-2 (e.g. DE)")
    pw.add_argument("--out", type=Path, required=True, help="e.g. the mounted boot partition's tillbox-provision.toml")
    pc = prov.add_parser("check", help="validate a provisioning file")
    pc.add_argument("file", type=Path)
    pa = prov.add_parser("apply", parents=[common], help="provision this device from a file (first boot)")
    pa.add_argument("file", type=Path)
    pa.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the hub")
    pr = prov.add_parser("reset", parents=[common], help="retire this till's identity and ledger to re-provision")
    pr.add_argument("--force", action="store_true", help="even with events the shop has not acknowledged")
    tok = sub.add_parser("enroll-token", help="issue a one-time enrollment token (on the hub)")
    tok.add_argument("--store", required=True)
    tok.add_argument("--device", required=True)
    tok.add_argument("--data-dir", type=Path, required=True, help="the hub's data directory")

    upd = sub.add_parser("update", help="signed updates").add_subparsers(dest="action", required=True)
    ub = upd.add_parser("build", help="pack and sign an update bundle (release tooling)")
    ub.add_argument("src", type=Path, help="the built appliance directory (venv or PyInstaller output)")
    ub.add_argument("--version", required=True, dest="bundle_version")
    ub.add_argument("--key", type=Path, required=True, help="ed25519 private key (PEM)")
    ub.add_argument("--out", type=Path, required=True)
    ui_ = upd.add_parser("install", parents=[common], help="verify a bundle and switch to it (pending its gate)")
    ui_.add_argument("bundle", type=Path)
    ui_.add_argument("--root", type=Path, default=Path("/opt/tillbox"))
    ui_.add_argument("--keys", type=Path, default=Path("/etc/tillbox/update-keys"), help="directory of *.pem")
    ui_.add_argument("--force", action="store_true", help="install even during an open sale or shift")
    ua = upd.add_parser("apply-ready", parents=[common], help="install the newest fetched bundle once idle (root)")
    ua.add_argument("--root", type=Path, default=Path("/opt/tillbox"))
    ua.add_argument("--keys", type=Path, default=Path("/etc/tillbox/update-keys"), help="directory of *.pem")
    ua.add_argument("--systemctl", default="systemctl", help="the systemctl to restart the daemon and run the gate")
    ua.add_argument("--no-restart", action="store_true", help="install only: no daemon restart, no gate run")
    ug = upd.add_parser("gate", parents=[common], help="confirm a pending version, or roll it back")
    ug.add_argument("--root", type=Path, default=Path("/opt/tillbox"))
    ug.add_argument("--url", default="http://127.0.0.1:8080/api/v1/health")
    ug.add_argument("--wait", type=float, default=60.0)
    hl = sub.add_parser("health", help="check (and wait for) the daemon's health endpoint")
    hl.add_argument("--url", default="http://127.0.0.1:8080/api/v1/health")
    hl.add_argument("--wait", type=float, default=0.0, help="seconds to keep trying")

    cfg = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True)
    cfg.add_parser("check", parents=[common], help="validate the config file")
    cfg.add_parser("reference", help="print the config reference (Markdown)")

    demo = sub.add_parser("demo", parents=[common], help="run the appliance (kiosk UI) with simulated devices")
    demo.add_argument("--reset", action="store_true", help="start from an empty data dir")
    demo.add_argument("--port", type=int, help="port of the kiosk UI (default: [ui] port, 8080)")
    demo.add_argument("--console", action="store_true", help="run the console till instead of the kiosk UI")
    demo.add_argument(
        "--broker",
        action="append",
        default=[],
        metavar="URL",
        help="sync with the shop through this MQTT broker (mqtt://HOST:PORT; repeat for fallbacks)",
    )
    daemon = sub.add_parser("daemon", parents=[common], help="run the appliance daemon (devices, kiosk UI, sync)")
    daemon.add_argument("--port", type=int, help="port of the kiosk UI (default: [ui] port)")
    scan = sub.add_parser("scan", parents=[common], help="feed a simulated device of a running demo")
    scan.add_argument("code", nargs="?", help="the code the simulated scanner reads")
    scan.add_argument("--badge", metavar="TOKEN", help="swipe this badge on the simulated badge reader instead")
    scan.add_argument("--weight", metavar="KG", help="put this weight on the simulated scale instead")
    from sync.__main__ import add_hub_arguments

    hub = sub.add_parser("hub", help="run the reference shop hub (the other end of MQTT sync)")
    hub.add_argument("--data-dir", type=Path, required=True, help="directory for the hub's database")
    hub.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_hub_arguments(hub)

    companion = sub.add_parser("companion", help="self-checkout companion board firmware")
    comp = companion.add_subparsers(dest="action", required=True)
    cbuild = comp.add_parser("build", help="compile the firmware to .mpy with mpy-cross")
    cbuild.add_argument("--out", type=Path, default=Path("build/companion"), help="output dir (default: %(default)s)")
    cflash = comp.add_parser("flash", help="build the firmware and copy it to the board with mpremote")
    cflash.add_argument("--port", help="serial port (default: the first Pico found by USB VID/PID)")
    return parser


def _load(args: argparse.Namespace) -> tuple[Config, Path]:
    from appliance.config import load_config

    data_dir: Path = args.data_dir
    path: Path | None = args.config
    if path is None and (data_dir / "tillbox.toml").is_file():
        path = data_dir / "tillbox.toml"
    return load_config(path), data_dir


def _open(args: argparse.Namespace) -> Till:
    from appliance.till import Till, open_ledger
    from drivers.payment import SimulatedTerminal

    config, data_dir = _load(args)
    ledger = open_ledger(config, data_dir)
    return Till(config, ledger, terminal=SimulatedTerminal())


def _parse_pay(values: Sequence[str], till: Till) -> list[tuple[str, int | None]]:
    payments: list[tuple[str, int | None]] = []
    for value in values:
        kind, _, amount = value.partition(":")
        kind = kind.strip().lower()
        if kind not in ("cash", "card"):
            raise InputError(f"--pay {value!r}: the tender must be cash or card")
        minor = till.currency.to_minor(amount) if amount else None
        if minor is not None and minor <= 0:
            raise InputError(f"--pay {value!r}: the amount must be positive")
        payments.append((kind, minor))
    return payments


def cmd_catalog_import(args: argparse.Namespace) -> int:
    from appliance.catalog_import import ImportRejected, import_catalog
    from appliance.clock import iso_utc

    till = _open(args)
    with till.ledger:
        try:
            report = import_catalog(
                till.ledger, args.file, currency=till.currency,
                tax_classes=till.config.tax.classes.keys(), layouts=till.layouts,
                max_price=till.config.sale.max_line_amount, skip_bad=args.skip_bad,
                time=iso_utc(till.clock.now()),
            )  # fmt: skip
        except ImportRejected as exc:
            for err in exc.report.errors[:50]:
                print(f"{args.file.name}: {err}", file=sys.stderr)
            raise
    for err in report.errors[:50]:
        print(f"{args.file.name}: skipped {err}", file=sys.stderr)
    print(f"imported {report.imported} item(s), skipped {report.skipped} bad row(s)")
    return 0


def cmd_catalog_promotions(args: argparse.Namespace) -> int:
    from appliance.canonical import canonical_json
    from appliance.clock import iso_utc
    from appliance.promotions import promotion_from_dict, promotion_to_dict

    till = _open(args)
    promos = []
    try:
        lines = args.file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {args.file}: {exc}") from None
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            from decimal import Decimal

            promos.append(promotion_from_dict(json.loads(text, parse_float=Decimal), till.currency))
        except (json.JSONDecodeError, TillboxError) as exc:
            raise InputError(f"{args.file.name} line {n}: {exc}") from None
    with till.ledger, till.ledger.transaction("importing promotions") as tx:
        for p in promos:
            body = canonical_json(promotion_to_dict(p, till.currency))
            tx.conn.execute(
                "INSERT INTO promotions(id, body) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                (p.id, body),
            )
        tx.journal("promotions.imported", {"ids": [p.id for p in promos]}, time=iso_utc(till.clock.now()))
    print(f"imported {len(promos)} promotion(s)")
    return 0


def cmd_catalog_lookup(args: argparse.Namespace) -> int:
    from appliance.errors import NotFound

    till = _open(args)
    with till.ledger:
        try:
            items = [till.catalog.lookup(till.parse(args.text))]
        except (NotFound, InputError):
            items = till.catalog.search(args.text)
        if not items:
            raise InputError(f"nothing matches {args.text!r}")
        for item in items:
            price = till.currency.plain(item.price) + ("/kg" if item.weighed else "")
            print(f"{item.sku}\t{item.name}\t{price}\t{item.tax_class}\t{'|'.join(item.barcodes)}")
    return 0


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    from appliance.ledger import verify

    till = _open(args)
    with till.ledger:
        report = verify(till.ledger, quick_check=not args.no_quick_check)
    if args.json:
        print(json.dumps({"ok": report.ok, "entries": report.entries, "sales": report.sales,
                          "first_bad_seq": report.first_bad_seq, "errors": report.errors}))  # fmt: skip
    elif report.ok:
        print(f"ledger ok: {report.entries} journal entries, {report.sales} sales verified")
    else:
        for err in report.errors:
            print(f"ledger verify: {err}", file=sys.stderr)
    return 0 if report.ok else EXIT_VERIFY_FAILED


def cmd_sale(args: argparse.Namespace) -> int:
    from appliance.receipt import render_text
    from appliance.till import scripted_sale

    till = _open(args)
    with till.ledger:
        till.shifts.require_open()
        payments = _parse_pay(args.pay, till)
        done = scripted_sale(till, args.scan, payments, cashier=args.cashier)
        receipt = till.receipt(done)
    if args.json:
        print(json.dumps(done.doc, indent=2, sort_keys=True))
    else:
        print(render_text(receipt), end="")
    return 0


def _console(action: Action, staff: str, till: Till) -> Approval:
    """The CLI runs with shell access on the device: it acts with full rights, journaled as ``staff``."""
    from datetime import timedelta

    from appliance.staff import Approval

    return Approval(action, staff, None, till.clock.now() + timedelta(minutes=1))


def cmd_shift_open(args: argparse.Namespace) -> int:
    from appliance.staff import Action

    till = _open(args)
    with till.ledger:
        amount = till.currency.to_minor(args.float_amount)
        shift = till.shifts.open(amount, _console(Action.OPEN_SHIFT, args.staff, till), till.clock.now())
    print(f"shift {shift.id} open with a float of {till.currency.plain(shift.float)}")
    return 0


def cmd_shift_cash(args: argparse.Namespace) -> int:
    from appliance.staff import Action

    till = _open(args)
    with till.ledger:
        amount = till.currency.to_minor(args.amount)
        till.shifts.cash(args.kind, amount, args.reason, _console(Action.CASH_IN_OUT, args.staff, till),
                         till.clock.now())  # fmt: skip
    print(f"{args.kind} of {till.currency.plain(amount)} recorded")
    return 0


def _print_report(report: dict[str, object], till: Till, as_json: bool) -> None:
    from appliance.reports import render_report

    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render_report(report, till.currency), end="")


def cmd_report_x(args: argparse.Namespace) -> int:
    till = _open(args)
    with till.ledger:
        report = till.shifts.report()
    _print_report(report, till, args.json)
    return 0


def cmd_report_z(args: argparse.Namespace) -> int:
    from appliance.shifts import parse_count
    from appliance.staff import Action

    till = _open(args)
    with till.ledger:
        counted: dict[int, int] | int | None = None
        if args.count:
            counted = parse_count(till.currency, args.count)
        elif args.counted is not None:
            counted = till.currency.to_minor(args.counted)
        report = till.shifts.close(_console(Action.CLOSE_SHIFT, args.staff, till), till.clock.now(), counted=counted)
    _print_report(report, till, args.json)
    return 0


def cmd_staff_add(args: argparse.Namespace) -> int:
    till = _open(args)
    pin = sys.stdin.readline().strip() or None
    with till.ledger:
        member = till.staff.add(args.id, args.name, args.role, pin=pin, badge=args.badge, now=till.clock.now(),
                                actor="console")  # fmt: skip
    print(f"added {member.role} {member.id} ({member.name})")
    return 0


def cmd_return(args: argparse.Namespace) -> int:
    from decimal import Decimal, InvalidOperation

    from appliance.receipt import render_text
    from appliance.returns import ReturnRequest
    from appliance.staff import Action

    till = _open(args)
    requests = []
    for spec in args.line:
        no, _, qty = spec.partition(":")
        try:
            requests.append(ReturnRequest(qty=Decimal(qty or "1"), line=int(no),
                                          disposition="damaged" if args.damaged else "restock"))  # fmt: skip
        except (ValueError, InvalidOperation):
            raise InputError(f"--line {spec!r} must look like N or N:QTY") from None
    with till.ledger:
        original = till.returns.find_sale(args.receipt)
        plan = till.returns.plan_receipted(original, requests)
        doc, receipt = till.refund(plan, _console(Action.REFUND, args.staff, till))
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render_text(receipt), end="")
    return 0


def cmd_reprint(args: argparse.Namespace) -> int:
    from appliance.receipt import render_text

    till = _open(args)
    with till.ledger:
        receipt = till.reprint(args.receipt, actor=args.staff)
    print(render_text(receipt), end="")
    return 0


def cmd_provision_write(args: argparse.Namespace) -> int:
    from appliance import provision

    wifi = {"ssid": args.wifi_ssid, "psk": args.wifi_psk or ""} if args.wifi_ssid else {}
    if not args.wifi_ssid and (args.wifi_psk or args.wifi_country):
        raise InputError("--wifi-psk and --wifi-country need --wifi-ssid")
    if args.wifi_ssid and args.wifi_country:
        wifi["country"] = args.wifi_country
    p = provision.Provisioning(args.store, args.device, tuple(args.broker), args.token, args.timezone, args.locale,
                               wifi)  # fmt: skip
    text = provision.render(p)
    provision.parse(text, str(args.out))  # the same validation the device runs
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} for {args.store}/{args.device}")
    return 0


def cmd_provision_check(args: argparse.Namespace) -> int:
    from appliance import provision

    p = provision.load(args.file)
    token = "with a token" if p.enrollment_token else "without a token (already used?)"
    print(f"{args.file}: ok, {p.store_id}/{p.device_id}, {len(p.brokers)} broker(s), {token}")
    return 0


def cmd_provision_apply(args: argparse.Namespace) -> int:
    from appliance import provision
    from sync.enroll import enroll

    try:
        done = provision.apply(args.file, args.data_dir, lambda p, csr: enroll(p, csr, timeout=args.timeout))
    except provision.ProvisionError as exc:
        print(f"tillbox: provisioning failed: {exc}", file=sys.stderr)
        return 2
    print(f"provisioned as {done['store_id']}/{done['device_id']}")
    return 0


def cmd_provision_reset(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from appliance import provision

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = provision.reset(args.data_dir, force=args.force, stamp=stamp)
    print(f"identity and ledger moved to {target}; the till can be provisioned again")
    return 0


def cmd_enroll_token(args: argparse.Namespace) -> int:
    from sync.enroll import EnrollmentAuthority

    print(EnrollmentAuthority(args.data_dir).issue_token(args.store, args.device))
    return 0


def _healthy(url: str, wait: float) -> bool:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - a local URL from the command line
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def cmd_health(args: argparse.Namespace) -> int:
    if _healthy(args.url, args.wait):
        print("healthy")
        return 0
    print(f"tillbox: error: {args.url} is not healthy", file=sys.stderr)
    return 1


def cmd_update_build(args: argparse.Namespace) -> int:
    from appliance.update import build_bundle

    manifest = build_bundle(args.src, args.bundle_version, args.key.read_bytes(), args.out)
    print(f"built {args.out}: version {manifest.version}, {len(manifest.files)} files")
    return 0


def cmd_update_install(args: argparse.Namespace) -> int:
    from appliance.update import Installer, load_public_keys, trading

    keys = load_public_keys(sorted(args.keys.glob("*.pem")))
    if not keys:
        raise InputError(f"no trusted update keys in {args.keys}")
    version = Installer(args.root).install(args.bundle, keys, busy=lambda: trading(args.data_dir), force=args.force)
    print(f"installed {version}; it runs after a reboot (or a restart of tillbox.service), and the update gate "
          "confirms it or rolls it back")  # fmt: skip
    return 0


def cmd_update_apply_ready(args: argparse.Namespace) -> int:
    """``tillbox update apply-ready``: what tillbox-update-apply.service runs (appliance/update_fetch.py)."""
    from datetime import UTC, datetime

    from appliance.clock import iso_utc
    from appliance.update import Installer, load_public_keys, trading
    from appliance.update_fetch import apply_ready, systemctl_restart

    keys = load_public_keys(sorted(args.keys.glob("*.pem")))
    if not keys:
        raise InputError(f"no trusted update keys in {args.keys}")
    restart = (lambda: None) if args.no_restart else systemctl_restart(args.systemctl)
    done = apply_ready(args.data_dir, Installer(args.root), keys, busy=lambda: trading(args.data_dir),
                       restart=restart, now=lambda: iso_utc(datetime.now(UTC)))  # fmt: skip
    if done.state in ("refused", "failed"):
        print(f"tillbox: error: {done.message}", file=sys.stderr)
        return EXIT_ERROR
    print(done.message)
    return 0


def cmd_update_gate(args: argparse.Namespace) -> int:
    from appliance.ledger import verify
    from appliance.update import Installer

    def healthy() -> bool:
        if not _healthy(args.url, args.wait):
            return False
        till = _open(args)
        with till.ledger:
            return verify(till.ledger).ok

    inst = Installer(args.root)
    pending = inst.pending
    if inst.gate(healthy):
        print(f"version {inst.current} is good" if pending else "nothing pending")
        return 0
    back = f"rolled back to {inst.current}" if inst.current != pending else "there is no previous version to go back to"
    print(f"tillbox: error: version {pending} failed its health gate; {back}", file=sys.stderr)
    return 1


def cmd_config_check(args: argparse.Namespace) -> int:
    config, _ = _load(args)
    print(f"config ok: store {config.store.id} device {config.store.device_id}")
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from appliance.config import render_reference

    print(render_reference(), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from appliance.demo import run_demo

    if not args.broker or not args.console:  # the daemon runs sync itself
        return run_demo(args)
    from sync.service import SyncService

    if args.reset and args.data_dir.exists():
        import shutil

        shutil.rmtree(args.data_dir)
        args.reset = False
    _open(args).ledger.close()  # create the ledger before the sync service opens it
    config, data_dir = _load(args)
    with SyncService.from_config(config, data_dir, brokers=tuple(args.broker)):
        return run_demo(args)


def cmd_daemon(args: argparse.Namespace) -> int:
    import dataclasses

    from appliance.daemon import run_daemon

    config, data_dir = _load(args)
    if args.port is not None:
        config = dataclasses.replace(config, ui=dataclasses.replace(config.ui, port=args.port))
    return run_daemon(config, data_dir)


def cmd_scan(args: argparse.Namespace) -> int:
    from appliance.daemon import feed_simulator

    if sum(x is not None for x in (args.code, args.badge, args.weight)) != 1:
        raise InputError("give a code, --badge TOKEN or --weight KG")
    if args.code is not None:
        device, value = "scanner", args.code
    elif args.badge is not None:
        device, value = "badge", args.badge
    else:
        device, value = "scale", args.weight
    feed_simulator(args.data_dir, device, value)
    print(f"fed {value} to the simulated {device}")
    return 0


def cmd_hub(args: argparse.Namespace) -> int:
    from sync.hub import main as hub_main

    return hub_main(args)


def cmd_companion_build(args: argparse.Namespace) -> int:
    from drivers.companion.build import compile_firmware

    for path in compile_firmware(args.out):
        print(path)
    return 0


def cmd_companion_flash(args: argparse.Namespace) -> int:
    from drivers.companion.build import flash_board

    port, files = flash_board(args.port)
    print(f"flashed {', '.join(f.name for f in files)} to {port}")
    return 0


COMMANDS = {
    ("catalog", "import"): cmd_catalog_import,
    ("catalog", "promotions"): cmd_catalog_promotions,
    ("catalog", "lookup"): cmd_catalog_lookup,
    ("ledger", "verify"): cmd_ledger_verify,
    ("sale", None): cmd_sale,
    ("shift", "open"): cmd_shift_open,
    ("shift", "cash"): cmd_shift_cash,
    ("report", "x"): cmd_report_x,
    ("report", "z"): cmd_report_z,
    ("staff", "add"): cmd_staff_add,
    ("return", None): cmd_return,
    ("reprint", None): cmd_reprint,
    ("provision", "write"): cmd_provision_write,
    ("provision", "check"): cmd_provision_check,
    ("provision", "apply"): cmd_provision_apply,
    ("provision", "reset"): cmd_provision_reset,
    ("enroll-token", None): cmd_enroll_token,
    ("update", "build"): cmd_update_build,
    ("update", "install"): cmd_update_install,
    ("update", "apply-ready"): cmd_update_apply_ready,
    ("update", "gate"): cmd_update_gate,
    ("health", None): cmd_health,
    ("config", "check"): cmd_config_check,
    ("config", "reference"): cmd_config_reference,
    ("demo", None): cmd_demo,
    ("daemon", None): cmd_daemon,
    ("scan", None): cmd_scan,
    ("hub", None): cmd_hub,
    ("companion", "build"): cmd_companion_build,
    ("companion", "flash"): cmd_companion_flash,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tillbox`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler = COMMANDS[(args.command, getattr(args, "action", None))]
    try:
        return handler(args)
    except TillboxError as exc:
        print(f"tillbox: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"tillbox: error: {exc.strerror or exc} ({exc.filename or ''})".rstrip(" ()"), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
