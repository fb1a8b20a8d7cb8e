"""The daemon: one asyncio loop that owns the till, its devices, the kiosk API and sync.

Threads never touch appliance state. Device threads hand their input (scans, badge
reads, health changes) to the loop through one door, :meth:`Daemon.door`, which uses
``loop.call_soon_threadsafe``; the loop processes scans and badges in arrival order from
one queue. Blocking device calls (printing, the drawer kick, the scale, the card
terminal, the pole display) run in executors; their results are applied on the loop.
The ledger is written on the loop only. No sale path waits on the network: sync runs
on its own thread and drains the outbox the ledger writes.

Lifecycle: :meth:`Daemon.start` opens the ledger, the devices and sync; :meth:`Daemon.stop`
closes them in reverse order. :func:`serve` runs the daemon with the kiosk UI under
uvicorn until SIGTERM/SIGINT (or ``stop_event``), then shuts down cleanly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from appliance import __version__
from appliance.alerts import active_alerts, clear_alert, raise_alert
from appliance.catalog import Item
from appliance.clock import Clock, SystemClock, iso_utc
from appliance.config import Config
from appliance.errors import DeviceUnavailable, InputError, PaymentDeclined, SaleError, TillboxError
from appliance.receipt import Receipt
from appliance.reports import render_report
from appliance.returns import ReturnRequest
from appliance.sale import Discount, Sale
from appliance.sdnotify import notify as sd_notify
from appliance.sdnotify import watchdog_interval
from appliance.shifts import CashKind
from appliance.staff import Action, Approval, AuthError, Role, StaffMember
from appliance.tenders import CardResult, PaymentTerminal, TenderKind
from appliance.till import Completed, Till, open_ledger
from drivers.base import Device, Health

log = logging.getLogger(__name__)

T = TypeVar("T")

ALERT_ATTENDANT = "lane.attendant"
ALERT_PRINTER = "printer.queue"
ALERT_DRAWER = "drawer.left_open"
BADGE_TIMEOUT_MAX = 60.0
REPRINT_EVERY = 10.0


# -- devices ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """What devices report; every handler is safe to call from any thread (it queues for the loop)."""

    scan: Callable[[str, str | None], None]
    badge: Callable[[str], None]
    reject: Callable[[str, str], None]
    health: Callable[[Any], None]
    event: Callable[[str, Any], None]


class Devices:
    """The daemon's view of its devices. Look devices up each time: a replug may replace one.

    All methods but the properties block; call them from an executor.
    """

    cash_acceptor = False
    polls_drawer = True

    def device(self, name: str) -> Any:
        return None

    @property
    def scanner(self) -> Any:
        return self.device("scanner")

    @property
    def badge(self) -> Any:
        return self.device("badge")

    @property
    def printer(self) -> Any:
        return self.device("printer")

    @property
    def drawer(self) -> Any:
        return self.device("drawer")

    @property
    def display(self) -> Any:
        return self.device("display")

    @property
    def scale(self) -> Any:
        return self.device("scale")

    @property
    def terminal(self) -> Any:
        return self.device("terminal")

    @property
    def companion(self) -> Any:
        return self.device("companion")

    @property
    def sim(self) -> dict[str, Any]:
        """Simulators behind the devices, by device name (empty with real hardware)."""
        return {}

    def health(self) -> dict[str, dict[str, Any]]:
        """Every device's health: ``health``, ``reason``, ``last_error``, ``backend``, ``simulated``."""
        return {}

    def start(self) -> None:
        """Open the devices."""

    def close(self) -> None:
        """Close the devices; safe to call twice."""

    def self_test(self, name: str, actor: str) -> tuple[bool, str]:
        """A technician self-test of ``name`` (not the scanner: the daemon tests that itself)."""
        raise InputError(f"there is no self-test for {name}")


def _health_doc(device: Device, *, backend: str = "", simulated: bool = False) -> dict[str, Any]:
    state = device.health
    return {"health": str(state.health), "reason": state.reason, "last_error": state.reason,
            "backend": backend or type(device).__name__, "simulated": simulated}  # fmt: skip


class ManagedDevices(Devices):
    """Devices opened by :class:`drivers.manager.DeviceManager` from ``[devices]``.

    ``overrides`` replaces a device the manager would open (a test rig's serial scanner on a pty).
    """

    polls_drawer = False  # the manager polls the drawer sensor itself

    def __init__(self, manager: Any, overrides: Mapping[str, Device] | None = None) -> None:
        self.manager = manager
        self.overrides = dict(overrides or {})

    def device(self, name: str) -> Any:
        if name in self.overrides:
            return self.overrides[name]
        return self.manager.device(name)

    @property
    def sim(self) -> dict[str, Any]:
        found = {name: self.manager.simulator(name) for name in self.manager.names()}
        return {name: peer for name, peer in found.items() if peer is not None and name not in self.overrides}

    def health(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, state in self.manager.health().items():
            if name not in self.overrides:
                doc = state.to_doc()
                out[name] = {k: doc[k] for k in ("health", "reason", "last_error", "backend", "simulated")}
        for name, device in self.overrides.items():
            out[name] = _health_doc(device)
        return out

    def start(self) -> None:
        self.manager.start()

    def close(self) -> None:
        self.manager.close()
        for device in self.overrides.values():
            device.close()

    def self_test(self, name: str, actor: str) -> tuple[bool, str]:
        tests: dict[str, Callable[[], Any]] = {
            "printer": self.manager.test_print, "drawer": lambda: self.manager.test_drawer(actor),
            "display": self.manager.test_display, "scale": self.manager.test_scale,
            "terminal": self.manager.test_terminal,
        }  # fmt: skip
        if name not in tests:
            return super().self_test(name, actor)
        result = tests[name]()
        return bool(result.ok), str(result.message)


DeviceFactory = Callable[[Inputs, "Daemon"], Devices]


def managed_devices(inputs: Inputs, daemon: Daemon, overrides: Mapping[str, Device] | None = None) -> ManagedDevices:
    """The devices ``[devices]`` configures, through the device manager (the default)."""
    from drivers.manager import DeviceManager

    manager = DeviceManager(daemon.config, dispatch=lambda fn: fn(), clock=daemon.clock, data_dir=daemon.data_dir)
    manager.on_scan(lambda e: inputs.scan(e.code, e.symbology))
    manager.on_badge(lambda e: inputs.badge(e.data))
    manager.on_rejected(lambda e: inputs.reject(e.device, e.reason))
    manager.on_health(inputs.health)
    for kind in ("attendant", "drawer", "printer_alert"):
        getattr(manager, f"on_{kind}")(lambda e, kind=kind: inputs.event(kind, e))
    for device in (overrides or {}).values():
        device.on_health(inputs.health)
    return ManagedDevices(manager, overrides)


# -- live updates ----------------------------------------------------------------------------------


class Hub:
    """Fans messages out to WebSocket clients; each client has a bounded queue (oldest dropped)."""

    def __init__(self, size: int = 256) -> None:
        self._clients: dict[asyncio.Queue[str], str | None] = {}
        self._size = size

    def subscribe(self, token: str | None) -> asyncio.Queue[str]:
        q: asyncio.Queue[str] = asyncio.Queue(self._size)
        self._clients[q] = token
        return q

    def unsubscribe(self, q: asyncio.Queue[str]) -> None:
        self._clients.pop(q, None)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def publish(self, msg_type: str, /, *, to: str | None = None, **data: Any) -> None:
        """Send ``{"type": msg_type, ...data}`` to every client (or only to session ``to``)."""
        text = json.dumps({"type": msg_type, **data}, default=str)
        for q, token in list(self._clients.items()):
            if to is not None and token != to:
                continue
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(text)


class LogBuffer(logging.Handler):
    """Keeps the latest log records for the technician page."""

    def __init__(self, size: int = 500) -> None:
        super().__init__(logging.INFO)
        self.records: deque[dict[str, str]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append({"time": iso_utc(datetime.fromtimestamp(record.created).astimezone()),
                                 "level": record.levelname, "logger": record.name,
                                 "message": record.getMessage()})  # fmt: skip
        except Exception:
            self.handleError(record)


# -- the daemon ------------------------------------------------------------------------------------


Prepare = Callable[[Till], None]


class Daemon:
    """The appliance: a till, its devices, sessions and live updates, owned by one loop."""

    def __init__(
        self,
        config: Config,
        data_dir: Path,
        *,
        devices: DeviceFactory | None = None,
        clock: Clock | None = None,
        fast_hash: bool = False,
        brokers: Sequence[str] = (),
        prepare: Prepare | None = None,
        health_interval: float = 2.0,
        key_path: Path | None = None,
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.clock = clock or SystemClock()
        self._device_factory = devices or managed_devices
        self._fast_hash = fast_hash
        self._brokers = tuple(brokers)
        self._prepare = prepare
        self.health_interval = health_interval
        self.key_path = key_path or data_dir / "kiosk.key"
        self.hub = Hub()
        self.logs = LogBuffer()
        self.started_at: float | None = None
        self.ready = False
        # set by start()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inputs: asyncio.Queue[tuple[str, tuple[Any, ...]]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._exec = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="tillbox-io")
        self._printer_exec = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tillbox-printer")
        self._display_exec = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tillbox-display")
        self.till: Till | None = None
        self.devices: Devices = Devices()
        self.sync: Any = None  # sync.service.SyncService when enabled
        self.orders: Any = None  # appliance.orders.Orders once started
        from kiosk_ui.auth import Approvals, KioskKey, Sessions

        self.sessions = Sessions(config.staff.session_minutes * 60.0, self.clock.monotonic)
        self.approvals = Approvals()
        self.key: KioskKey | None = None
        from kiosk_ui.views import Formatter

        self.fmt = Formatter(config.currency, config.currency_settings.locale, config.store.timezone)
        # the open sale and what hangs on it
        self.sale: Sale | None = None
        self.needs: list[Action] = []
        self.busy: str | None = None
        #: Called once to restart the daemon (``run_daemon`` sets it under systemd); None: never restart.
        self.restart: Callable[[str], None] | None = None
        self.config_waiting: int | None = None  # the accepted remote config version not yet in force
        self.last: Completed | None = None
        self.last_receipt: Receipt | None = None
        self._printed: set[str] = set()
        self._operator: str | None = None
        self._badge_waiters: deque[asyncio.Future[str]] = deque()
        self._scan_waiters: deque[asyncio.Future[str]] = deque()
        self._health: dict[str, dict[str, str]] = {}
        self._alerts: list[dict[str, str]] = []
        self._sync_health: dict[str, str] = {}
        self._config_report: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the daemon is not running")
        return self._loop

    async def start(self) -> None:
        """Open the ledger, devices and sync; start the input and health loops. Call on the loop."""
        self.started_at = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._inputs = asyncio.Queue()
        logging.getLogger().addHandler(self.logs)
        try:
            ledger = open_ledger(self.config, self.data_dir)
            try:
                self._apply_remote_config(ledger)
            except BaseException:
                ledger.close()
                raise
            from kiosk_ui.auth import KioskKey

            self.key = KioskKey(self.key_path)
            inputs = Inputs(scan=lambda code, sym: self.door("scan", code, sym),
                            badge=lambda token: self.door("badge", token),
                            reject=lambda device, reason: self.door("reject", device, reason),
                            health=lambda state: self.door("health", state),
                            event=lambda kind, payload: self.door("event", kind, payload))  # fmt: skip
            try:
                self.devices = self._device_factory(inputs, self)
                await self.loop.run_in_executor(None, self.devices.start)
                self.till = Till(self.config, ledger, clock=self.clock, terminal=_Terminal(self),
                                 fast_hash=self._fast_hash)  # fmt: skip
            except BaseException:
                await self.loop.run_in_executor(None, self.devices.close)
                ledger.close()
                raise
            if self._prepare is not None:
                self._prepare(self.till)
            self.till.recover_accounts()  # what the shop took for sales lost in a crash goes back (docs/accounts.md)
            self._provisioning_alert()
            self._health = self._device_health()
            self._alerts = self._alert_list()
            self._start_sync()
            self._tasks = [asyncio.create_task(self._input_loop(), name="tillbox-inputs"),
                           asyncio.create_task(self._health_loop(), name="tillbox-health")]  # fmt: skip
            self._start_orders()
        except BaseException:
            logging.getLogger().removeHandler(self.logs)
            raise
        self.ready = True
        _trim_heap()
        log.info("tillbox %s ready: store %s device %s, %d items, devices %s, sync %s", __version__,
                 self.config.store.id, self.config.store.device_id, self.till.catalog.count(),
                 ", ".join(self._health) or "none",
                 "on" if self.sync is not None else "off")  # fmt: skip

    def _start_orders(self) -> None:
        """The pickup queue (appliance/orders.py); this till expires overdue orders when ``[orders] expire``."""
        from appliance.orders import Orders, expire_periodically

        self.orders = Orders(self.t)
        if self.orders.policy.expire:
            task = expire_periodically(
                self.orders,
                interval=self.orders.policy.expiry_check_minutes * 60.0,
                on_expired=lambda ids: self.hub.publish("orders", ids=ids, status="expired"),
            )
            self._tasks.append(asyncio.create_task(task, name="tillbox-orders"))

    def _apply_remote_config(self, ledger: Any) -> None:
        """Lay the shop's accepted desired config (``sync_docs``) over the file config, validated as a whole."""
        from sync.desired import apply_desired

        applied = apply_desired(self.config, ledger, time=iso_utc(self.clock.now()))
        self._config_report = applied.report(iso_utc(self.clock.now()))
        if applied.status != "applied":
            return
        self.config = applied.config
        from kiosk_ui.views import Formatter

        self.fmt = Formatter(self.config.currency, self.config.currency_settings.locale, self.config.store.timezone)
        self.sessions.idle_seconds = self.config.staff.session_minutes * 60.0

    def _start_sync(self) -> None:
        if not (self.config.sync.enabled or self._brokers):
            return
        from sync.service import SyncService

        loop = self.loop

        def changed(kind: str) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._sync_changed, kind)

        self.sync = SyncService.from_config(
            self.config, self.data_dir, brokers=self._brokers, on_change=changed,
            health=lambda: dict(self._sync_health), config_report=self._config_report,
            commands={"open_drawer": self._remote("open_drawer"), "reprint": self._remote("reprint")},
        ).start()  # fmt: skip
        self.t.returns.lookup = self.sync.lookup_sale  # returns of other tills' sales and online orders
        self.t.stored_value.remote = self.t.loyalty.remote = self.sync.request  # the hub: docs/accounts.md
        self.t.customers.remote = self.sync.request  # the shop's customer record (appliance/customers.py)
        self.t.customers.cache_days = self.config.sync.customer_cache_days

    def _remote(self, name: str) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
        """A sync command handler (runs on the sync thread) that does its work on the loop."""

        def handler(args: Mapping[str, Any]) -> Mapping[str, Any]:
            async def run() -> Mapping[str, Any]:
                if name == "open_drawer":
                    await self._kick_drawer(str(args.get("reason") or "remote"), "shop")
                    return {"opened": True}
                reference = str(args.get("reference") or "")
                receipt = self.t.reprint(reference, actor="shop")
                await self._print(receipt)
                return {"printed": receipt.reference}

            return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

        return handler

    def _sync_changed(self, kind: str) -> None:
        if kind in ("catalog", "promotions") and self.till is not None:
            self.till.reload_promotions()
        if kind == "config" and self.till is not None:
            from sync.desired import stored_desired

            stored = stored_desired(self.t.ledger)
            if stored is not None and self.config.sync.restart_for_config and self.restart is not None:
                self.config_waiting = stored[0]
                log.info("configuration version %d accepted from the shop: restarting once the till is idle",
                         stored[0])  # fmt: skip
                self._restart_if_idle()
        self.hub.publish("catalog", kind=kind)

    async def stop(self) -> None:
        """Close everything started; idempotent. Call on the loop."""
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for waiters in (self._badge_waiters, self._scan_waiters):
            while waiters:
                waiters.popleft().cancel()
        loop = asyncio.get_running_loop()
        if self.sync is not None:
            sync, self.sync = self.sync, None
            if self.till is not None:
                self.till.returns.lookup = None
                self.till.stored_value.remote = self.till.loyalty.remote = None
                self.till.customers.remote = None
            await loop.run_in_executor(None, sync.close)
        for ex in (self._printer_exec, self._display_exec):
            await loop.run_in_executor(None, ex.shutdown)
        await loop.run_in_executor(None, self.devices.close)
        self._exec.shutdown(wait=True)
        if self.till is not None:
            self.till.ledger.close()
        self.sale = None
        self._mark_sale()
        logging.getLogger().removeHandler(self.logs)
        self._loop = None

    def door(self, kind: str, *args: Any) -> None:
        """The one way in from other threads: queue device input for the loop."""
        loop, inputs = self._loop, self._inputs
        if loop is None or inputs is None:
            log.debug("%s input while stopped dropped", kind)
            return
        try:
            loop.call_soon_threadsafe(inputs.put_nowait, (kind, args))
        except RuntimeError:  # the loop closed under us during shutdown
            log.debug("%s input after shutdown dropped", kind)

    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on the loop from another thread (tests, tools)."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    @property
    def t(self) -> Till:
        if self.till is None:
            raise DeviceUnavailable("the daemon is starting")
        return self.till

    async def _io(self, fn: Callable[..., T], *args: Any, executor: concurrent.futures.Executor | None = None) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor or self._exec, fn, *args)

    # -- device input ----------------------------------------------------------------------------

    async def _input_loop(self) -> None:
        assert self._inputs is not None
        while True:
            kind, args = await self._inputs.get()
            try:
                if kind == "scan":
                    await self._on_scan(str(args[0]))
                elif kind == "badge":
                    self._on_badge(str(args[0]))
                elif kind == "reject":
                    self.hub.publish("notice", level="warning", message=f"{args[0]}: {args[1]}")
                elif kind == "health":
                    self._refresh_health()
                elif kind == "event":
                    self._on_event(str(args[0]), args[1])
            except Exception:
                log.exception("handling %s input failed", kind)

    async def _on_scan(self, code: str) -> None:
        while self._scan_waiters:
            waiter = self._scan_waiters.popleft()
            if not waiter.done():
                waiter.set_result(code)
                self.hub.publish("scanner.test", code=code)
                return
        session = self._operator_session()
        if session is None:
            self.hub.publish("notice", level="error", code="login_required",
                             message="scan ignored: log in first")  # fmt: skip
            return
        if code[:5].upper() == "TBC1:":  # a customer's QR code from the shop's app (appliance/customers.py)
            from kiosk_ui.customers import scanned

            await scanned(self, session, code)
            return
        if code[:4].upper() == "TBO:":  # an order's QR code (appliance/orders.py): the pickup queue opens it
            from kiosk_ui.orders import scanned as order_scanned

            order_scanned(self, session, code)
            return
        try:
            await self.add_item(session, code=code)
        except TillboxError as exc:
            log.info("scan %s refused: %s", code, exc)
            self.hub.publish("notice", level="error", code=_error_code(exc), message=str(exc), scanned=code)

    def _on_event(self, kind: str, event: Any) -> None:
        """Other device events: the lane's help button, drawer left open, receipts not printed."""
        from drivers.drawer import DrawerLeftOpen

        now = iso_utc(self.clock.now())
        if kind == "attendant":
            self.call_attendant("help button pressed")
        elif kind == "drawer" and isinstance(event, DrawerLeftOpen):
            raise_alert(self.t.ledger, ALERT_DRAWER, f"{event.drawer} open for {int(event.seconds)} s", time=now)
        elif kind == "drawer" and getattr(self.devices.drawer, "is_open", None) is False:
            clear_alert(self.t.ledger, ALERT_DRAWER, time=now, note="closed")
        elif kind == "printer_alert":
            raise_alert(self.t.ledger, ALERT_PRINTER, f"{event.pending} receipt(s) waiting: {event.reason}", time=now)
        self._refresh_alerts()

    def _on_badge(self, token: str) -> None:
        while self._badge_waiters:
            waiter = self._badge_waiters.popleft()
            if not waiter.done():
                waiter.set_result(token)
                return
        self.hub.publish("notice", level="info", message="badge read, but nothing is waiting for one")

    def _operator_session(self) -> Any:
        from kiosk_ui.auth import Unauthenticated

        if self._operator is None:
            return None
        try:  # a scan is the operator at work: it keeps the session alive like a request does
            return self.sessions.get(self._operator)
        except Unauthenticated:
            self._operator = None
            return None

    async def wait_badge(self, timeout: float) -> str:
        """The next badge read (a badge login or approval); InputError after ``timeout`` s."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._badge_waiters.append(fut)
        try:
            return await asyncio.wait_for(fut, min(timeout, BADGE_TIMEOUT_MAX))
        except TimeoutError:
            raise InputError("no badge was read in time") from None
        finally:
            with contextlib.suppress(ValueError):
                self._badge_waiters.remove(fut)

    # -- health ----------------------------------------------------------------------------------

    def _device_health(self) -> dict[str, dict[str, Any]]:
        return self.devices.health()

    def _alert_list(self) -> list[dict[str, str]]:
        return [{"code": a.code, "severity": a.severity, "message": a.message, "raised_at": a.raised_at}
                for a in active_alerts(self.t.ledger)]  # fmt: skip

    def _refresh_health(self) -> None:
        health = self._device_health()
        self._sync_health = {name: h["health"] for name, h in health.items()}
        if health != self._health:
            self._health = health
            self.hub.publish("health", **self.health())

    def _refresh_alerts(self) -> None:
        alerts = self._alert_list()
        if alerts != self._alerts:
            self._alerts = alerts
            self.hub.publish("alerts", alerts=alerts)

    def health(self) -> dict[str, Any]:
        """Overall status and each device's health."""
        if not self.ready:
            return {"status": "starting", "devices": {}, "version": __version__}
        bad = [h for h in self._health.values() if h["health"] != str(Health.OK)]
        sync = None if self.sync is None else ("connected" if self.sync.link.connected else "offline")
        return {
            "status": "degraded" if bad else "ok",
            "devices": self._health,
            "version": __version__,
            "sync": sync,
            "alerts": [a["code"] for a in self._alerts],
        }

    async def _health_loop(self) -> None:
        watchdog = watchdog_interval()  # half systemd's timeout, or None
        last_dog = last_reprint = 0.0
        while True:
            await asyncio.sleep(self.health_interval)
            try:
                drawer = self.devices.drawer
                if self.devices.polls_drawer and drawer is not None:
                    await self._io(drawer.poll)
                printer = self.devices.printer
                if printer is not None and printer.pending and time.monotonic() - last_reprint >= REPRINT_EVERY:
                    last_reprint = time.monotonic()
                    printed = await self._io(printer.reprint_pending, executor=self._printer_exec)
                    if printed:
                        log.info("%d queued receipt(s) printed", printed)
                if printer is not None and not printer.pending:
                    clear_alert(self.t.ledger, ALERT_PRINTER, time=iso_utc(self.clock.now()), note="printed")
                self._refresh_health()
                self._refresh_alerts()
                self._restart_if_idle()
                for gone in self.sessions.prune():
                    self.hub.publish("session.expired", to=gone.token)
                if watchdog and time.monotonic() - last_dog >= watchdog:
                    last_dog = time.monotonic()
                    sd_notify("WATCHDOG=1")
            except Exception:
                log.exception("health check failed")

    def idle(self) -> bool:
        """No sale with lines is open and no payment is in progress: nothing is lost by a restart."""
        open_sale = self.sale is not None and self.sale.state == "open" and bool(self.sale.lines)
        return self.busy is None and not open_sale

    def _restart_if_idle(self) -> None:
        """Restart for an accepted remote configuration, once, when the till is idle."""
        if self.config_waiting is None or self.restart is None or not self.idle():
            return
        version, restart = self.config_waiting, self.restart
        self.config_waiting, self.restart = None, None
        log.info("restarting to apply configuration version %d from the shop", version)
        restart(f"configuration version {version} from the shop")

    # -- sessions and approvals ------------------------------------------------------------------

    def _expiry(self) -> datetime:
        return self.clock.now() + timedelta(seconds=self.config.staff.approval_seconds)

    def login_pin(self, staff_id: str, pin: str) -> Any:
        member = self.t.staff.login_pin(staff_id, pin, self.clock.now())
        return self._open_session(member)

    async def login_badge(self, timeout: float) -> Any:
        token = await self.wait_badge(timeout)
        member = self.t.staff.login_badge(token, self.clock.now())
        return self._open_session(member)

    def login_device(self, key: str, kind: Literal["self_checkout", "display"]) -> Any:
        from kiosk_ui.auth import Unauthenticated, display_member, lane_member

        if self.key is None or not self.key.matches(key):
            raise Unauthenticated("wrong kiosk key; restart the kiosk screen")
        device = self.config.store.device_id
        member = lane_member(device) if kind == "self_checkout" else display_member(device)
        session = self.sessions.open(member, kind)
        if kind == "self_checkout":
            self._operator = session.token
        return session

    def _open_session(self, member: StaffMember) -> Any:
        session = self.sessions.open(member, "staff")
        if session.allows(Action.SELL):
            self._operator = session.token
        return session

    def logout(self, session: Any) -> None:
        self.sessions.close(session.token)
        if self._operator == session.token:
            self._operator = None

    async def request_approval(self, session: Any, action: Action, *, staff_id: str | None, pin: str | None,
                               badge: bool, timeout: float) -> tuple[str, Approval]:  # fmt: skip
        """A supervisor approves ``action`` for ``session`` by PIN or badge; returns (token, approval)."""
        from kiosk_ui.auth import Forbidden

        if session.role is None:
            raise Forbidden("this screen cannot ask for approvals")
        badge_token = await self.wait_badge(timeout) if badge else None
        if badge_token is None and not (staff_id and pin):
            raise InputError("an approval needs the supervisor's staff id and PIN, or a badge")
        approval = self.t.staff.authorize(session.member, action, self.clock.now(), approver_id=staff_id,
                                          approver_pin=pin, approver_badge=badge_token)  # fmt: skip
        return self.approvals.issue(session, approval, self.clock.now()), approval

    def precheck(self, session: Any, action: Action, *, staff_only: bool = False, approvable: bool = True) -> None:
        """Refuse a session that may never do ``action``, before any state is looked at."""
        from kiosk_ui.auth import Forbidden

        if staff_only and session.kind != "staff":
            raise Forbidden("staff only: log in as staff")
        if session.role is None:
            raise Forbidden("this screen is read-only")
        if session.role == Role.TECHNICIAN and action is not Action.NO_SALE and not session.allows(action):
            raise Forbidden("the technician role may not do this")
        if not approvable and not session.allows(action):
            raise Forbidden(f"{session.role} may not {action}")

    def authorize(self, session: Any, action: Action, approval: str | None = None, *, staff_only: bool = False,
                  approvable: bool = True) -> Approval:  # fmt: skip
        """Permission for ``session`` to do ``action`` now: by its role, or by an approval token."""
        from kiosk_ui.auth import ApprovalRequired

        self.precheck(session, action, staff_only=staff_only, approvable=approvable)
        if session.allows(action):
            return Approval(action, session.actor, None, self._expiry())
        if approval:
            return self.approvals.take(session, approval, action, self.clock.now())
        raise ApprovalRequired(action)

    def require_role(self, session: Any, role: Role) -> None:
        from kiosk_ui.auth import Forbidden

        if session.kind != "staff" or session.role != role:
            raise Forbidden(f"this needs the {role} role")

    # -- the cart --------------------------------------------------------------------------------

    def _seller(self, session: Any) -> Approval:
        return self.authorize(session, Action.SELL, approvable=False)

    def _open_sale(self, session: Any) -> Sale:
        self._seller(session)
        if self.busy:
            raise SaleError(f"{self.busy} payment in progress; wait for the terminal")
        if self.sale is None or self.sale.state != "open":
            self.sale = self.t.new_sale(session.actor)
            self.needs = []
        return self.sale

    def _current(self, session: Any) -> Sale:
        self._seller(session)
        if self.busy:
            raise SaleError(f"{self.busy} payment in progress; wait for the terminal")
        if self.sale is None or self.sale.state != "open" or not self.sale.lines:
            raise SaleError("there is no open sale")
        return self.sale

    def cart(self) -> dict[str, Any]:
        from kiosk_ui.views import quick_cash, sale_view

        customer = None
        if self.sale is not None and self.sale.customer_id:
            with contextlib.suppress(TillboxError):
                c = self.t.customers.get(self.sale.customer_id)
                customer = {"id": c.id, "name": c.name}
        view = sale_view(self.sale, self.fmt, needs=[str(a) for a in self.needs], busy=self.busy,
                         customer=customer)  # fmt: skip
        due = view["cash_due"]["minor"]
        view["quick_cash"] = [self.fmt.amount(a) for a in quick_cash(due, self.t.currency)]
        from kiosk_ui.accounts import points_discount_view

        view["points_discount"] = points_discount_view(self, self.sale)  # docs/accounts.md
        return view

    def _mark_sale(self) -> None:
        """Keep ``DATA_DIR/sale-open`` while a sale is on screen (the updater waits for it to go)."""
        marker = self.data_dir / "sale-open"
        open_now = self.sale is not None and self.sale.state == "open" and bool(self.sale.lines)
        with contextlib.suppress(OSError):
            if open_now and not marker.exists():
                marker.touch()
            elif not open_now and marker.exists():
                marker.unlink()

    def _changed(self, event: str, **extra: Any) -> dict[str, Any]:
        self._mark_sale()
        view = self.cart()
        self.hub.publish("cart", cart=view, event=event, **extra)
        if view["points_discount"] and view["points_discount"]["capped"]:  # the sale shrank below its points
            self.hub.publish("notice", level="error", message=view["points_discount"]["message"])
        return view

    async def weigh(self) -> Decimal:
        """A stable weight from the scale, in kg."""
        scale = self.devices.scale
        if scale is None:
            raise DeviceUnavailable("no scale is connected")
        reading = await self._io(scale.read_stable)
        weight = reading.weight_kg
        if weight is None or weight <= 0:
            raise InputError("put the item on the scale")
        return Decimal(weight)

    async def add_item(self, session: Any, *, code: str | None = None, sku: str | None = None,
                       quantity: Decimal | None = None) -> dict[str, Any]:  # fmt: skip
        """Scan a code or add a SKU; a weighed item without a weight is weighed on the scale."""
        sale = self._open_sale(session)
        till = self.t
        if (code is None) == (sku is None):
            raise InputError("give a scanned code or a SKU")
        if code is not None:
            scan = till.parse(code)
            item = till.catalog.lookup(scan)
            if item.weighed and scan.weight_kg is None and scan.embedded_price is None and quantity is None:
                quantity = await self.weigh()
                sale = self._open_sale(session)
            till.scan(sale, code, quantity=quantity)
        else:
            assert sku is not None
            item = till.catalog.by_sku(sku)
            if item.weighed and quantity is None:
                quantity = await self.weigh()
                sale = self._open_sale(session)
            till.add_sku(sale, sku, quantity=quantity)
        self._check_restricted(session, item)
        line = sale.lines[-1]
        self._show_item(line.item.name, line.total, sale.totals().total)
        return self._changed("added", line=line.no)

    def _check_restricted(self, session: Any, item: Item) -> None:
        if not item.age_restricted or session.allows(Action.SELL_AGE_RESTRICTED):
            return
        if Action.SELL_AGE_RESTRICTED not in self.needs:
            self.needs.append(Action.SELL_AGE_RESTRICTED)
        if session.kind == "self_checkout":
            self.call_attendant(f"age check for {item.name}", intervention=True)

    def _light(self, state: str) -> None:
        companion = self.devices.companion
        if companion is not None:
            from drivers.companion.host import LightState

            companion.set_state(LightState(state))

    def call_attendant(self, reason: str, *, intervention: bool = False) -> None:
        """Light the lane's tower (assistance, or intervention for an age check) and raise the alert."""
        self._light("intervention" if intervention else "assistance")
        raise_alert(self.t.ledger, ALERT_ATTENDANT, reason, time=iso_utc(self.clock.now()))
        self.hub.publish("attendant", active=True, reason=reason)
        self._refresh_alerts()

    def _attendant_done(self) -> None:
        self._light("idle")
        if clear_alert(self.t.ledger, ALERT_ATTENDANT, time=iso_utc(self.clock.now()), note="attended"):
            self.hub.publish("attendant", active=False, reason="")
            self._refresh_alerts()

    def approve_interventions(self, session: Any, approval: str) -> dict[str, Any]:
        """Clear the sale's pending interventions (age checks) with a supervisor approval."""
        sale = self._current(session)
        if not self.needs:
            raise SaleError("nothing on this sale needs an approval")
        action = self.needs[0]
        granted = self.authorize(session, action, approval)
        self.needs.remove(action)
        sale.approver = granted.approver or sale.approver
        if not self.needs:
            self._attendant_done()
        return self._changed("approved", action=str(action))

    def set_quantity(self, session: Any, no: int, quantity: Decimal) -> dict[str, Any]:
        sale = self._current(session)
        sale.set_quantity(no, quantity, self.clock.now())
        return self._changed("quantity", line=no)

    def void_line(self, session: Any, no: int, reason: str, approval: str | None) -> dict[str, Any]:
        sale = self._current(session)
        sale._line(no)  # raises for unknown or voided lines before an approval is spent
        self.authorize(session, Action.VOID_LINE, approval)
        sale.void_line(no, self.clock.now(), reason=reason or "voided at the till")
        if not any(not ln.voided and ln.item.age_restricted for ln in sale.lines):
            if Action.SELL_AGE_RESTRICTED in self.needs:
                self.needs.remove(Action.SELL_AGE_RESTRICTED)
            if not self.needs:
                self._attendant_done()
        return self._changed("voided", line=no)

    def _discount(self, session: Any, percent: Decimal | None, amount: int | None, reason: str,
                  approval: str | None, base: int) -> Discount:  # fmt: skip
        limit = self.config.sale.discount_approval_percent
        above = (percent is not None and percent > limit) or (
            amount is not None and base > 0 and Decimal(amount) * 100 > limit * base
        )
        action = Action.DISCOUNT_ABOVE_LIMIT if above else Action.SELL
        Discount(percent=percent, amount=amount)  # validate before an approval is spent
        granted = self.authorize(session, action, approval, staff_only=True)
        return Discount(percent=percent, amount=amount, reason=reason.strip(), actor=session.actor,
                        approver=granted.approver)  # fmt: skip

    def discount_line(self, session: Any, no: int, percent: Decimal | None, amount: int | None, reason: str,
                      approval: str | None) -> dict[str, Any]:  # fmt: skip
        sale = self._current(session)
        line = sale._line(no)
        discount = self._discount(session, percent, amount, reason, approval, line.base - line.promo_discount)
        sale.discount_line(no, discount, self.clock.now())
        return self._changed("discount", line=no)

    def discount_cart(self, session: Any, percent: Decimal | None, amount: int | None, reason: str,
                      approval: str | None) -> dict[str, Any]:  # fmt: skip
        sale = self._current(session)
        base = sum(ln.amount for ln in sale.lines if not ln.voided)
        sale.discount_cart(self._discount(session, percent, amount, reason, approval, base), self.clock.now())
        return self._changed("discount")

    def override_price(self, session: Any, no: int, price: int, reason: str, approval: str | None) -> dict[str, Any]:
        sale = self._current(session)
        sale._line(no)
        if not reason.strip():
            raise InputError("a price override needs a reason")
        granted = self.authorize(session, Action.PRICE_OVERRIDE, approval, staff_only=True)
        sale.override_price(no, price, self.clock.now(), reason=reason, actor=session.actor,
                            approver=granted.approver)  # fmt: skip
        return self._changed("price", line=no)

    def add_coupon(self, session: Any, code: str) -> dict[str, Any]:
        """Enter a coupon; ``applied`` in the answer tells whether it changed the price yet."""
        sale = self._current(session)
        before = sale.totals().discount
        sale.add_coupon(code, self.clock.now())
        view = self._changed("coupon")
        view["coupon_applied"] = sale.totals().discount > before
        return view

    def attach_customer(self, session: Any, customer_id: str | None) -> dict[str, Any]:
        sale = self._current(session)
        self.authorize(session, Action.SELL, staff_only=True)
        if customer_id is not None:
            customer = self.t.customers.get(customer_id)
            if customer.erased:
                raise InputError("that customer was erased")
        if sale.points_discount is not None and customer_id != sale.points_discount.customer:
            raise SaleError("the sale has the customer's points off its price; remove the points discount first")
        sale.customer_id = customer_id
        return self._changed("customer")

    def suspend(self, session: Any) -> dict[str, Any]:
        sale = self._current(session)
        self.authorize(session, Action.SELL, staff_only=True)
        if self.needs:
            raise SaleError("settle the pending approvals before parking the sale")
        self.t.suspend(sale)
        self.sale = None
        return self._changed("suspended")

    def suspended(self, session: Any) -> list[dict[str, Any]]:
        self.authorize(session, Action.SELL, staff_only=True, approvable=False)
        return [{"id": i, "cashier": c, "time": self.fmt.when(t)} for i, c, t in self.t.suspended()]

    def resume(self, session: Any, sale_id: str) -> dict[str, Any]:
        self.authorize(session, Action.SELL, staff_only=True, approvable=False)
        if self.sale is not None and self.sale.state == "open" and self.sale.lines:
            raise SaleError("finish or park the open sale first")
        self.sale = self.t.resume(sale_id, cashier=session.actor)
        self.needs = [Action.SELL_AGE_RESTRICTED] if any(
            ln.item.age_restricted and not ln.voided for ln in self.sale.lines
        ) and not session.allows(Action.SELL_AGE_RESTRICTED) else []  # fmt: skip
        return self._changed("resumed")

    def cancel(self, session: Any, reason: str, approval: str | None) -> dict[str, Any]:
        sale = self._current(session)
        granted = self.authorize(session, Action.VOID_SALE, approval)
        self.t.cancel(sale, actor=session.actor, reason=reason.strip() or "cancelled", approver=granted.approver)
        self.sale = None
        self.needs = []
        self._attendant_done()
        self._show_idle()
        return self._changed("cancelled")

    # -- payment ---------------------------------------------------------------------------------

    async def pay(self, session: Any, kind: Literal["cash", "card"], amount: int | None, *, print_receipt: bool = True
                  ) -> dict[str, Any]:  # fmt: skip
        """Take a payment; when the sale is paid it is committed, printed and the drawer opened."""
        from kiosk_ui.auth import ApprovalRequired, Forbidden

        sale = self._current(session)
        if self.needs:
            raise ApprovalRequired(self.needs[0])
        if kind == "cash":
            if session.kind == "self_checkout" and not self.devices.cash_acceptor:
                raise Forbidden("this lane takes cards only")
            sale.pay_cash(sale.cash_due() if amount is None else amount)
        else:
            await self._pay_card(sale, amount)
        t = sale.totals()
        if t.due > 0:
            self._show_total(t.total, paid=t.paid)
            return {"cart": self._changed("paid"), "receipt": None}
        receipt = await self._complete(session, sale, print_receipt)
        return {"cart": self.cart(), "receipt": receipt}

    async def _pay_card(self, sale: Sale, amount: int | None) -> None:
        terminal = self.devices.terminal
        if terminal is None:
            raise SaleError("no payment terminal is configured")
        due = sale.totals().due
        if due <= 0:
            raise SaleError("the sale is already paid")
        charge = due if amount is None else amount
        if charge <= 0 or charge > due:
            raise InputError(f"a card payment must be between {self.fmt.money(1)} and {self.fmt.money(due)}")
        self.busy = "card"
        self.hub.publish("payment", state="waiting", amount=self.fmt.amount(charge))
        self._show_total(sale.totals().total)
        try:
            result = await self._io(terminal.authorize, charge, self.t.currency.code, sale.id)
        finally:
            self.busy = None
        if not result.approved:
            self.hub.publish("payment", state="declined", message=result.message)
            self._changed("declined")
            raise PaymentDeclined(f"card declined: {result.message or 'no reason given'}")
        detail = {k: v for k, v in (("approval_code", result.approval_code), ("scheme", result.scheme)) if v}
        sale.pay_electronic(TenderKind.CARD, result.amount, result.reference, detail)
        self.hub.publish("payment", state="approved", amount=self.fmt.amount(result.amount))

    async def _complete(self, session: Any, sale: Sale, print_receipt: bool) -> dict[str, Any]:
        from kiosk_ui.views import receipt_view

        done = self.t.complete(sale)
        receipt = self.t.receipt(done)
        self.last, self.last_receipt = done, receipt
        self.sale = None
        self._mark_sale()
        self.needs = []
        self._attendant_done()
        view = receipt_view(receipt, self.fmt)
        self.hub.publish("sale.completed", receipt=view, cart=self.cart())
        t = done.doc
        self._show_total(int(t["total"]), change=int(t["change"]) if t["change"] else None)
        if any(tn["kind"] == "cash" for tn in t["tenders"]):
            try:
                await self._kick_drawer("sale", session.actor)
            except TillboxError as exc:
                self.hub.publish("notice", level="error", message=f"drawer: {exc}")
        if print_receipt:
            await self._print(receipt)
            self._printed.add(receipt.reference)
        return view

    async def _print(self, receipt: Receipt) -> None:
        printer = self.devices.printer
        if printer is None:
            raise DeviceUnavailable("no receipt printer is connected")
        await self._io(printer.print_receipt, receipt, executor=self._printer_exec)
        self._refresh_health()

    async def _kick_drawer(self, reason: str, actor: str) -> None:
        drawer = self.devices.drawer
        if drawer is None:
            raise DeviceUnavailable("no cash drawer is connected")
        await self._io(drawer.open, reason, actor)

    async def print_last(self, session: Any) -> dict[str, Any]:
        """Print the receipt of the sale just completed (the shopper chose paper)."""
        from kiosk_ui.views import receipt_view

        self._seller(session)
        receipt = self.last_receipt
        if receipt is None:
            raise SaleError("there is no receipt to print")
        if receipt.reference in self._printed:
            raise SaleError("that receipt was printed already; staff can reprint a copy")
        await self._print(receipt)
        self._printed.add(receipt.reference)
        return receipt_view(receipt, self.fmt)

    async def reprint(self, session: Any, reference: str) -> dict[str, Any]:
        from kiosk_ui.views import receipt_view

        self.authorize(session, Action.SELL, staff_only=True, approvable=False)
        if self.devices.printer is None:
            raise DeviceUnavailable("no receipt printer is connected")
        receipt = self.t.reprint(reference, actor=session.actor)
        await self._print(receipt)
        return receipt_view(receipt, self.fmt)

    # -- pole display (best effort, off the loop, in order) -------------------------------------

    def _display(self, method: str, *args: Any, **kw: Any) -> None:
        display = self.devices.display
        if display is None:
            return

        def run() -> None:
            getattr(display, method)(*args, **kw)

        self._display_exec.submit(run)

    def _show_item(self, name: str, amount: int, total: int) -> None:
        self._display("show_item", name, amount, total)

    def _show_total(self, total: int, *, paid: int | None = None, change: int | None = None) -> None:
        self._display("show_total", total, paid=paid, change=change)

    def _show_idle(self) -> None:
        self._display("show_idle", self.config.store.name, "Welcome")

    # -- shifts ----------------------------------------------------------------------------------

    def shift(self) -> dict[str, Any] | None:
        s = self.t.shifts.current()
        if s is None:
            return None
        return {"id": s.id, "opened_at": self.fmt.when(s.opened_at), "opened_by": s.opened_by,
                "float": self.fmt.amount(s.float)}  # fmt: skip

    def open_shift(self, session: Any, float_amount: int) -> dict[str, Any] | None:
        approval = self.authorize(session, Action.OPEN_SHIFT, staff_only=True, approvable=False)
        self.t.shifts.open(float_amount, approval, self.clock.now())
        self.hub.publish("shift", shift=self.shift())
        return self.shift()

    async def cash_move(self, session: Any, kind: CashKind, amount: int, reason: str, approval: str | None) -> None:
        self.precheck(session, Action.CASH_IN_OUT, staff_only=True)
        self.t.shifts.require_open()
        if not reason.strip():
            raise InputError("a cash movement needs a reason")
        granted = self.authorize(session, Action.CASH_IN_OUT, approval, staff_only=True)
        self.t.shifts.cash(kind, amount, reason, granted, self.clock.now())
        with contextlib.suppress(TillboxError):
            await self._kick_drawer(kind, session.actor)

    async def no_sale(self, session: Any, reason: str, approval: str | None) -> None:
        self.precheck(session, Action.NO_SALE, staff_only=True)
        self.t.shifts.require_open()
        if not reason.strip():
            raise InputError("opening the drawer without a sale needs a reason")
        granted = self.authorize(session, Action.NO_SALE, approval, staff_only=True)
        self.t.shifts.no_sale(reason, granted, self.clock.now())
        await self._kick_drawer("no sale", session.actor)

    def x_report(self, session: Any) -> dict[str, Any]:
        self.authorize(session, Action.X_REPORT, staff_only=True)
        report = self.t.shifts.report()
        return {"report": report, "text": render_report(report, self.t.currency)}

    def close_shift(self, session: Any, counted: dict[int, int] | int | None, approval: str | None
                    ) -> dict[str, Any]:  # fmt: skip
        self.precheck(session, Action.CLOSE_SHIFT, staff_only=True)
        self.t.shifts.require_open()
        if self.sale is not None and self.sale.state == "open" and self.sale.lines:
            raise SaleError("finish, park or cancel the open sale before closing the shift")
        granted = self.authorize(session, Action.CLOSE_SHIFT, approval, staff_only=True)
        report = self.t.shifts.close(granted, self.clock.now(), counted=counted)
        self.hub.publish("shift", shift=None)
        return {"report": report, "text": render_report(report, self.t.currency)}

    # -- returns ---------------------------------------------------------------------------------

    async def find_sale(self, session: Any, reference: str) -> dict[str, Any]:
        self.authorize(session, Action.SELL, staff_only=True, approvable=False)
        doc = await self.original_sale(reference)
        done = self.t.returns.refunded(doc["id"])
        lines = [{"line": ln["line"], "name": ln["name"], "qty": ln["qty"], "unit": ln["unit"],
                  "total": self.fmt.amount(ln["total"]), "voided": ln["voided"],
                  "refunded_qty": str(done.get(ln["line"], (Decimal(0), 0, 0))[0])}
                 for ln in doc["lines"]]  # fmt: skip
        return {"id": doc["id"], "number": doc.get("number"), "device": doc.get("device"),
                "completed_at": self.fmt.when(doc.get("completed_at")), "total": self.fmt.amount(doc["total"]),
                "lines": lines}  # fmt: skip

    async def original_sale(self, reference: str) -> dict[str, Any]:
        """``Returns.find_sale``, with any lookup at the shop waiting in an executor, not on the loop."""
        returns = self.t.returns
        lookup = returns.lookup
        if lookup is None:
            return returns.find_sale(reference)
        asked: list[str] = []

        def defer(key: str) -> Mapping[str, Any]:
            asked.append(key)
            raise _AskShop

        returns.lookup = defer
        try:
            return returns.find_sale(reference)
        except _AskShop:
            pass
        finally:
            returns.lookup = lookup
        outcome: Mapping[str, Any] | BaseException
        try:
            outcome = await self._io(lookup, asked[0])
        except TillboxError as exc:
            outcome = exc

        def answer(key: str) -> Mapping[str, Any]:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        returns.lookup = answer
        try:
            return returns.find_sale(reference)
        finally:
            returns.lookup = lookup

    def _requests(self, lines: Sequence[Mapping[str, Any]]) -> list[ReturnRequest]:
        return [ReturnRequest(qty=Decimal(str(ln["qty"])), line=ln.get("line"), sku=ln.get("sku"),
                              disposition=ln.get("disposition", "restock")) for ln in lines]  # fmt: skip

    async def refund(self, session: Any, reference: str | None, lines: Sequence[Mapping[str, Any]], reason: str,
                     approval: str | None, *, card_present: bool = False) -> dict[str, Any]:  # fmt: skip
        """A receipted return (``reference``) or one without receipt (SKUs, a reason code, approval)."""
        self.precheck(session, Action.REFUND, staff_only=True)
        from kiosk_ui.views import receipt_view

        till = self.t
        till.shifts.require_open()
        requests = self._requests(lines)
        if reference is not None:
            plan = till.returns.plan_receipted(await self.original_sale(reference), requests, reason)
            granted = self.authorize(session, Action.REFUND, approval, staff_only=True)
        else:
            granted = self.authorize(session, Action.RETURN_NO_RECEIPT, approval, staff_only=True)
            plan = till.returns.plan_no_receipt(till.catalog, requests, reason, granted, self.clock.now())
        doc, receipt = till.refund(plan, granted, card_present=card_present)
        if any(r["kind"] == "cash" for r in doc["refunds"]):
            with contextlib.suppress(TillboxError):
                await self._kick_drawer("refund", session.actor)
        with contextlib.suppress(TillboxError):
            await self._print(receipt)
        return {"return": {"id": doc["id"], "number": doc["number"], "total": self.fmt.amount(doc["total"]),
                           "refunds": [{"kind": r["kind"], "amount": self.fmt.amount(r["amount"])}
                                       for r in doc["refunds"]]},
                "receipt": receipt_view(receipt, self.fmt)}  # fmt: skip

    async def exchange(self, session: Any, reference: str, lines: Sequence[Mapping[str, Any]], reason: str,
                       approval: str | None) -> dict[str, Any]:  # fmt: skip
        """Return lines of ``reference`` against the open sale: its value pays the new items first."""
        self.precheck(session, Action.REFUND, staff_only=True)
        from kiosk_ui.views import receipt_view

        sale = self._current(session)
        till = self.t
        plan = till.returns.plan_receipted(await self.original_sale(reference), self._requests(lines), reason)
        granted = self.authorize(session, Action.REFUND, approval, staff_only=True)
        ret, done = till.exchange(plan, sale, granted)
        receipt = till.receipt(done)
        self.last, self.last_receipt, self.sale, self.needs = done, receipt, None, []
        self._mark_sale()
        view = receipt_view(receipt, self.fmt)
        self.hub.publish("sale.completed", receipt=view, cart=self.cart())
        with contextlib.suppress(TillboxError):
            await self._print(receipt)
        self._printed.add(receipt.reference)
        return {"return": {"id": ret["id"], "number": ret["number"], "total": self.fmt.amount(ret["total"])},
                "receipt": view, "cart": self.cart()}  # fmt: skip

    # -- catalog and customers -------------------------------------------------------------------

    def _item(self, item: Item) -> dict[str, Any]:
        return {"sku": item.sku, "name": item.name, "price": self.fmt.amount(item.price), "unit": item.unit,
                "department": item.department, "age_restricted": item.age_restricted,
                "barcode": item.barcodes[0] if item.barcodes else None}  # fmt: skip

    def search(self, session: Any, text: str) -> list[dict[str, Any]]:
        self._seller(session)
        return [self._item(i) for i in self.t.catalog.search(text, limit=40)]

    def produce(self, session: Any) -> list[dict[str, Any]]:
        """Items sold by weight (the no-barcode lookup of the self-checkout), by department."""
        self._seller(session)
        rows = self.t.ledger.conn.execute(
            "SELECT sku FROM items WHERE active = 1 AND unit = 'kg' ORDER BY department, name LIMIT 200"
        ).fetchall()
        return [self._item(self.t.catalog.by_sku(str(r[0]))) for r in rows]

    def promotions(self) -> list[str]:
        return [p.name for p in self.t.policy().promotions if p.coupon is None and p.runs_in("store")]

    def add_customer(self, session: Any, name: str, email: str | None, phone: str | None,
                     consent: bool) -> dict[str, Any]:  # fmt: skip
        self.authorize(session, Action.SELL, staff_only=True, approvable=False)
        c = self.t.customers.add(name, email=email, phone=phone, consent=consent, now=self.clock.now(),
                                 actor=session.actor)  # fmt: skip
        return {"id": c.id, "name": c.name, "email": c.email, "phone": c.phone, "consent": c.consent}

    def find_customers(self, session: Any, text: str) -> list[dict[str, Any]]:
        self.authorize(session, Action.SELL, staff_only=True, approvable=False)
        return [{"id": c.id, "name": c.name, "email": c.email, "phone": c.phone, "consent": c.consent}
                for c in self.t.customers.find(text)]  # fmt: skip

    # -- technician ------------------------------------------------------------------------------

    def tech_devices(self, session: Any) -> list[dict[str, Any]]:
        self.require_role(session, Role.TECHNICIAN)
        return [{"name": name, **doc} for name, doc in self.devices.health().items()]

    async def tech_test(self, session: Any, device: str, timeout: float = 15.0) -> dict[str, Any]:
        """Run a device self-test; the scanner test hands the next scan to the technician, not a sale."""
        self.require_role(session, Role.TECHNICIAN)
        if device == "scanner":
            if self.devices.scanner is None:
                raise DeviceUnavailable("no scanner is connected")
            fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._scan_waiters.append(fut)
            try:
                code = await asyncio.wait_for(fut, min(timeout, BADGE_TIMEOUT_MAX))
            except TimeoutError:
                return {"device": device, "ok": False, "detail": f"no scan within {timeout:g} s"}
            finally:
                with contextlib.suppress(ValueError):
                    self._scan_waiters.remove(fut)
            return {"device": device, "ok": True, "detail": f"read {code}"}
        executor = {"printer": self._printer_exec, "display": self._display_exec}.get(device, self._exec)
        ok, detail = await self._io(self.devices.self_test, device, session.actor, executor=executor)
        if device == "drawer" and ok:
            data = {"shift_id": None, "reason": "technician test", "by": session.actor}
            self.t.ledger.append("drawer.opened", data, time=iso_utc(self.clock.now()), actor=session.actor)
        self._refresh_health()
        return {"device": device, "ok": ok, "detail": detail}

    async def sync_status(self, session: Any) -> dict[str, Any]:
        self.require_role(session, Role.TECHNICIAN)
        conn = self.t.ledger.conn
        size, oldest = conn.execute("SELECT count(*), min(time) FROM outbox WHERE acked_at IS NULL").fetchone()
        out: dict[str, Any] = {"enabled": self.sync is not None, "brokers": list(self._brokers or
                               self.config.sync.brokers), "backlog": {"size": int(size), "oldest": oldest},
                               "network": _network()}  # fmt: skip
        if self.sync is not None:
            state = await asyncio.wrap_future(self.sync.call(self.sync.state))
            out.update(connected=bool(self.sync.link.connected), state=state)
        else:
            out["connected"] = False
        return out

    def _provisioning(self) -> dict[str, Any]:
        """The enrolled identity, and the last provisioning failure (shown on the technician page)."""
        from appliance import provision

        error_file = self.data_dir / provision.ERROR_FILE
        error = error_file.read_text(encoding="utf-8").strip() if error_file.is_file() else None
        return {"identity": provision.provisioned(self.data_dir), "error": error}

    def _provisioning_alert(self) -> None:
        """A bad provisioning file is an alert on every screen until provisioning succeeds."""
        from appliance.alerts import clear_alert, raise_alert

        error = self._provisioning()["error"]
        now = iso_utc(self.clock.now())
        if error:
            message = f"provisioning failed: {error}"
            raise_alert(self.t.ledger, "provisioning", message, time=now, severity="critical")
        else:
            clear_alert(self.t.ledger, "provisioning", time=now)

    def versions(self, session: Any) -> dict[str, Any]:
        self.require_role(session, Role.TECHNICIAN)
        import sqlite3
        from importlib.metadata import PackageNotFoundError, version

        deps: dict[str, str | None] = {}
        for name in ("fastapi", "uvicorn", "starlette", "babel", "paho-mqtt", "pyserial", "python-escpos"):
            try:
                deps[name] = version(name)
            except PackageNotFoundError:
                deps[name] = None
        return {"tillbox": __version__, "python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version,
                "ledger_schema": self.t.ledger.schema_version, "packages": deps,
                "provisioning": self._provisioning(),
                "update": None if self.sync is None or self.sync.updates is None else self.sync.updates.last,
                "uptime_s": int(time.monotonic() - (self.started_at or time.monotonic()))}  # fmt: skip

    def config_view(self, session: Any) -> dict[str, Any]:
        self.require_role(session, Role.TECHNICIAN)
        from kiosk_ui.views import mask_secrets

        return dict(mask_secrets(_plain(self.config)))

    def log_view(self, session: Any, limit: int) -> list[dict[str, str]]:
        self.require_role(session, Role.TECHNICIAN)
        return list(self.logs.records)[-limit:]

    def sim_feed(self, device: str, value: str) -> None:
        """Feed a simulated device (the demo's ``tillbox scan``); only simulators accept input."""
        sim = self.devices.sim.get(device)
        if device in ("scanner", "badge") and sim is not None and hasattr(sim, "feed"):
            self._exec.submit(sim.feed, value)
        elif device == "scale" and sim is not None:
            sim.place(Decimal(value))
        else:
            raise DeviceUnavailable(f"there is no simulated {device} to feed")


class _AskShop(Exception):
    """Internal: the sale must be asked from the shop (off the loop)."""


class _Terminal:
    """The payment terminal as the till sees it: whichever terminal the devices have now."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def _get(self) -> PaymentTerminal:
        terminal = self._daemon.devices.terminal
        if terminal is None:
            raise DeviceUnavailable("no payment terminal is connected")
        return cast(PaymentTerminal, terminal)

    def authorize(self, amount: int, currency: str, reference: str) -> CardResult:
        return self._get().authorize(amount, currency, reference)

    def refund(self, amount: int, currency: str, reference: str) -> CardResult:
        return self._get().refund(amount, currency, reference)

    def reverse(self, reference: str) -> CardResult:
        return self._get().reverse(reference)


def _trim_heap() -> None:
    """Give memory freed during start-up (catalog import, PIN hashing) back to the OS (glibc only)."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    # What start-up built lives until shutdown: keep it out of later collections, so a full
    # collection does not land on a scan (it costs tens of ms with the catalog loaded).
    gc.freeze()


def _plain(value: Any) -> Any:
    import dataclasses
    from types import MappingProxyType

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping | MappingProxyType):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    return str(value)


def _network() -> dict[str, Any]:
    """Host name and the state of each network interface (from /sys on Linux)."""
    links: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for entry in sorted(Path("/sys/class/net").iterdir()):
            with contextlib.suppress(OSError):
                links[entry.name] = (entry / "operstate").read_text(encoding="ascii").strip()
    return {"hostname": socket.gethostname(), "interfaces": links}


def _error_code(exc: BaseException) -> str:
    from appliance.errors import BarcodeError, NotFound

    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, BarcodeError):
        return "bad_barcode"
    if isinstance(exc, AuthError):
        return "denied"
    return "error"


# -- running ---------------------------------------------------------------------------------------


async def serve(
    daemon: Daemon,
    *,
    host: str | None = None,
    port: int | None = None,
    sock: socket.socket | None = None,
    stop_event: asyncio.Event | None = None,
    on_ready: Callable[[Daemon, int], Awaitable[None] | None] | None = None,
) -> None:
    """Run the daemon and the kiosk UI until SIGTERM/SIGINT or ``stop_event``; then shut down."""
    import signal
    import threading

    import uvicorn

    from kiosk_ui.app import create_app

    await daemon.start()
    try:
        app = create_app(daemon)
        config = uvicorn.Config(
            app, host=host or daemon.config.ui.listen_host, port=daemon.config.ui.port if port is None else port,
            log_config=None, access_log=False, lifespan="off", ws="websockets-sansio", http="h11",
            server_header=False, timeout_graceful_shutdown=3,
        )  # fmt: skip
        server = _Server(config)
        loop = asyncio.get_running_loop()
        main = threading.current_thread() is threading.main_thread()
        if main:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, server.request_exit)
        watcher = None
        if stop_event is not None:

            async def watch() -> None:
                await stop_event.wait()
                server.request_exit()

            watcher = asyncio.create_task(watch())
        ready_task = asyncio.create_task(_announce(server, daemon, on_ready))
        try:
            await server.serve(sockets=[sock] if sock is not None else None)
        finally:
            ready_task.cancel()
            if watcher is not None:
                watcher.cancel()
            if main:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
    finally:
        sd_notify("STOPPING=1")
        await daemon.stop()


async def _announce(server: Any, daemon: Daemon, on_ready: Callable[[Daemon, int], Any] | None) -> None:
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1] if server.servers else 0
    info = {"url": f"http://{_url_host(daemon.config.ui.listen_host)}:{port}", "pid": os.getpid()}
    path = daemon.data_dir / "daemon.json"
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(info) + "\n", encoding="utf-8")
    os.replace(partial, path)  # readers (``tillbox scan``) never see half a file
    sd_notify(f"READY=1\nSTATUS=serving {info['url']}")
    if on_ready is not None:
        result = on_ready(daemon, port)
        if asyncio.iscoroutine(result):
            await result


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding to it
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class _Server:
    """uvicorn's server without its own signal handling (the daemon owns SIGTERM)."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                yield

        self._server = Quiet(config)

    @property
    def started(self) -> bool:
        return bool(self._server.started)

    @property
    def servers(self) -> list[Any]:
        return list(getattr(self._server, "servers", []))

    def request_exit(self) -> None:
        self._server.should_exit = True

    async def serve(self, sockets: list[socket.socket] | None) -> None:
        await self._server.serve(sockets=sockets)


def run_daemon(config: Config, data_dir: Path, *, port: int | None = None, brokers: Sequence[str] = (),
               prepare: Prepare | None = None, on_ready: Callable[[Daemon, int], Any] | None = None,
               devices: DeviceFactory | None = None) -> int:  # fmt: skip
    """Run the appliance in the foreground until SIGTERM or SIGINT (``tillbox daemon``/``demo``).

    INFO messages reach the technician's log view; the console handlers keep their level.
    """
    root = logging.getLogger()
    for handler in root.handlers:
        if handler.level == logging.NOTSET:
            handler.setLevel(root.level)
    root.setLevel(min(root.level, logging.INFO))
    daemon = Daemon(config, data_dir, brokers=brokers, prepare=prepare, devices=devices)
    if os.environ.get("NOTIFY_SOCKET"):  # under systemd (Restart=always): a clean stop starts it again

        def restart(why: str) -> None:
            import signal

            sd_notify(f"STATUS=restarting: {why}")
            os.kill(os.getpid(), signal.SIGTERM)

        daemon.restart = restart
    asyncio.run(serve(daemon, port=port, on_ready=on_ready))
    return 0


def feed_simulator(data_dir: Path, device: str, value: str, *, timeout: float = 5.0) -> None:
    """Feed a simulated device of the daemon running on ``data_dir`` (``tillbox scan``)."""
    import urllib.error
    import urllib.request

    try:
        info = json.loads((data_dir / "daemon.json").read_text(encoding="utf-8"))
        key = (data_dir / "kiosk.key").read_text(encoding="ascii").strip()
        url = str(info["url"])
    except (OSError, ValueError, KeyError) as exc:
        raise DeviceUnavailable(f"no running daemon found in {data_dir} (start tillbox demo first)") from exc

    def post(path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if not url.startswith("http://"):
            raise DeviceUnavailable(f"unexpected daemon URL {url!r} in {data_dir / 'daemon.json'}")
        req = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers=headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=timeout) as res:  # noqa: S310
                return dict(json.loads(res.read()))
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = str(exc)
            raise InputError(f"the daemon refused: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DeviceUnavailable(f"cannot reach the daemon at {url}: {exc}") from exc

    session = post("/api/v1/session/device", {"key": key, "kind": "display"})
    post(f"/api/v1/sim/{device}", {"value": value}, str(session["token"]))
