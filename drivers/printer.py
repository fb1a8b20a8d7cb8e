"""Receipt printer: ESC/POS over python-escpos links, a reprint queue, and a simulator.

The bytes come from the pure codec (:mod:`drivers.escpos_codec`); this module only moves
them. A failed print never fails a sale: :meth:`ReceiptPrinter.print_receipt` swallows the
failure, queues the job for :meth:`ReceiptPrinter.reprint_pending`, marks the printer
unavailable with the reason and calls the alert callback.

Links: :func:`usb_link`, :func:`serial_link`, :func:`network_link` and :func:`file_link`
wrap python-escpos backends (pyusb, pyserial, sockets, device files) in the
:class:`~drivers.transport.Transport` seam; any other transport works too.
:class:`SimulatedPrinter` is a transport that keeps its bytes and answers status requests.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from appliance.clock import Clock, SystemClock, iso_utc
from appliance.errors import DeviceMisconfigured, DeviceUnavailable, InputError
from appliance.receipt import Receipt
from drivers.base import Device, Health, simulated
from drivers.escpos_codec import (
    STATUS_REQUESTS,
    PrinterProfile,
    PrinterStatus,
    RasterImage,
    check_status_byte,
    render_receipt,
    to_text,
)
from drivers.transport import Transport

log = logging.getLogger(__name__)

# -- jobs, queue, alerts --------------------------------------------------------------------------


def receipt_to_dict(receipt: Receipt) -> dict[str, Any]:
    """A receipt as JSON-ready data (lists, strings, ints, booleans, None); read back by :func:`receipt_from_dict`."""
    data = _plain(receipt)
    assert isinstance(data, dict)
    return data


def receipt_from_dict(data: Mapping[str, Any]) -> Receipt:
    """Rebuild a receipt from :func:`receipt_to_dict` data; raises InputError for anything else."""
    receipt = _build(Receipt, data, "receipt")
    assert isinstance(receipt, Receipt)
    return receipt


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _build(cls: Any, data: Any, where: str) -> Any:
    """An instance of the dataclass ``cls`` from a mapping, checking every field's type."""
    if not isinstance(data, Mapping):
        raise InputError(f"{where} must be an object, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"{where} has unknown fields: {', '.join(map(str, unknown))}")
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _typed(hints[name], data[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InputError(f"{where} lacks {name}")
    return cls(**values)


def _typed(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin, args = get_origin(hint), get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, list | tuple):
            raise InputError(f"{where} must be a list, not {type(value).__name__}")
        return tuple(_typed(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin in (Union, UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _typed(inner, value, where)
    if hint in (str, int, bool) and type(value) is hint:
        return value
    raise InputError(f"{where} must be {getattr(hint, '__name__', hint)}, not {type(value).__name__}")


def job_key(receipt: Receipt) -> str:
    """The queue key of a receipt: its reference, and the copy number of a reprint."""
    return f"{receipt.reference} copy {receipt.copy}" if receipt.copy else receipt.reference


@dataclass(frozen=True)
class PrintJob:
    """A receipt waiting to be printed: the receipt model, never rendered bytes."""

    key: str
    receipt: Receipt
    queued_at: str
    attempts: int = 0
    last_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for a daemon that persists the queue."""
        return {"key": self.key, "receipt": receipt_to_dict(self.receipt), "queued_at": self.queued_at,
                "attempts": self.attempts, "last_error": self.last_error}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrintJob:
        """Read back :meth:`to_dict`; raises InputError for malformed data."""
        try:
            return cls(key=str(data["key"]), receipt=receipt_from_dict(data["receipt"]),
                       queued_at=str(data["queued_at"]), attempts=int(data.get("attempts", 0)),
                       last_error=str(data.get("last_error", "")))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"print job is malformed: {exc!r}") from None


QueueListener = Callable[[tuple[PrintJob, ...]], None]


class ReprintQueue:
    """Receipts that failed to print, oldest first; ``on_change`` gets every new state.

    The queue lives in memory; a daemon persists it from ``on_change`` and restores it by
    passing the saved jobs back in. Beyond ``limit`` jobs the oldest is dropped.
    """

    def __init__(self, jobs: Iterable[PrintJob] = (), *, limit: int = 200,
                 on_change: QueueListener | None = None) -> None:  # fmt: skip
        if limit < 1:
            raise DeviceMisconfigured("reprint queue limit must be at least 1")
        self._jobs: deque[PrintJob] = deque(jobs)
        self._limit = limit
        self._lock = threading.Lock()
        self._on_change = on_change

    def __len__(self) -> int:
        return len(self._jobs)

    def jobs(self) -> tuple[PrintJob, ...]:
        with self._lock:
            return tuple(self._jobs)

    def put(self, job: PrintJob) -> None:
        """Add a job, or update the queued job with the same key in place."""
        with self._lock:
            for i, queued in enumerate(self._jobs):
                if queued.key == job.key:
                    self._jobs[i] = job
                    break
            else:
                self._jobs.append(job)
                while len(self._jobs) > self._limit:
                    dropped = self._jobs.popleft()
                    log.warning("reprint queue full; dropped receipt %s", dropped.key)
            state = tuple(self._jobs)
        self._changed(state)

    def remove(self, key: str) -> None:
        with self._lock:
            self._jobs = deque(j for j in self._jobs if j.key != key)
            state = tuple(self._jobs)
        self._changed(state)

    def _changed(self, state: tuple[PrintJob, ...]) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(state)
        except Exception:
            log.exception("reprint queue listener failed")


@dataclass(frozen=True)
class PrinterAlert:
    """A receipt could not be printed; it waits in the reprint queue."""

    device: str
    reason: str
    job: str
    pending: int


AlertListener = Callable[[PrinterAlert], None]

# -- the driver -----------------------------------------------------------------------------------

Opener = Callable[[], Transport]


class ReceiptPrinter(Device):
    """An ESC/POS receipt printer behind a transport.

    ``link`` is a transport, or a function that opens one (called again after a failure,
    so an unplugged USB printer is found again). ``check_status`` asks ``DLE EOT 1..4``
    before every job; turn it off for links that cannot read (a plain device file).
    Blocking: call from an executor, never from the event loop.
    """

    def __init__(
        self,
        link: Transport | Opener,
        profile: PrinterProfile | None = None,
        *,
        logo: RasterImage | None = None,
        clock: Clock | None = None,
        queue: ReprintQueue | None = None,
        on_alert: AlertListener | None = None,
        check_status: bool = True,
        status_timeout: float = 0.5,
        chunk_size: int = 1024,
        name: str = "printer",
    ) -> None:
        super().__init__(name)
        self.profile = profile or PrinterProfile()
        if logo is not None and logo.width > self.profile.dots:
            raise DeviceMisconfigured(f"logo is {logo.width} dots wide; the paper takes {self.profile.dots}")
        if chunk_size < 1:
            raise DeviceMisconfigured("chunk_size must be positive")
        self.logo = logo
        self.queue = queue if queue is not None else ReprintQueue()
        self._clock = clock or SystemClock()
        self._on_alert = on_alert
        self._check_status = check_status
        self._status_timeout = status_timeout
        self._chunk = chunk_size
        self._io = threading.RLock()
        if hasattr(link, "write"):
            self._link: Transport | None = link  # type: ignore[assignment]
            self._opener: Opener | None = None
        else:
            self._link = None
            self._opener = link

    # public API ----------------------------------------------------------------------------------

    @property
    def pending(self) -> tuple[PrintJob, ...]:
        return self.queue.jobs()

    def render(self, receipt: Receipt) -> bytes:
        """The ESC/POS bytes of a receipt (pure)."""
        return render_receipt(receipt, self.profile, logo=self.logo)

    def print_receipt(self, receipt: Receipt) -> None:
        """Print a receipt (sale, return or copy); on any failure queue it and alert, never raise."""
        key = job_key(receipt)
        try:
            data = self.render(receipt)
        except Exception as exc:
            log.exception("receipt %s cannot be rendered", key)
            self.set_health(Health.DEGRADED, f"receipt {key} cannot be rendered: {exc}")
            return
        job = PrintJob(key=key, receipt=receipt, queued_at=iso_utc(self._clock.now()))
        try:
            status = self._send_job(data)
        except DeviceUnavailable as exc:
            self._queue_failure(job, str(exc))
            return
        except Exception as exc:  # a misconfigured or broken link must not fail the sale either
            log.exception("printing receipt %s failed", key)
            self.set_health(Health.UNAVAILABLE, f"printing failed: {exc}")
            self._queue_failure(job, str(exc))
            return
        self._settle(status)

    def reprint_pending(self) -> int:
        """Retry queued receipts oldest first; stops at the first failure. Returns how many printed."""
        printed = 0
        for job in self.queue.jobs():
            try:
                data = self.render(job.receipt)
            except Exception:
                log.exception("queued receipt %s cannot be rendered; dropped", job.key)
                self.queue.remove(job.key)
                continue
            try:
                status = self._send_job(data)
            except DeviceUnavailable as exc:
                self._queue_failure(job, str(exc), alert=False)
                return printed
            self.queue.remove(job.key)
            printed += 1
            log.info("reprinted receipt %s", job.key)
            self._settle(status)
        return printed

    def status(self) -> PrinterStatus:
        """Ask the printer's real-time status (``DLE EOT 1..4``); raises DeviceUnavailable."""
        with self._io:
            try:
                status = self._query_status(self._ensure_link())
            except DeviceUnavailable as exc:
                self._link_failed(str(exc))
                raise
        self._settle(status)
        return status

    def send(self, data: bytes) -> None:
        """Send a raw command (e.g. a drawer kick); raises DeviceUnavailable."""
        with self._io:
            link = self._ensure_link()
            try:
                link.write(data)
            except DeviceUnavailable as exc:
                self._link_failed(str(exc))
                raise

    def close(self) -> None:
        with self._io:
            if self._link is not None:
                try:
                    self._link.close()
                except Exception:
                    log.debug("closing %s failed", self.name, exc_info=True)
                self._link = None
            self._opener = None
        super().close()

    # internals -----------------------------------------------------------------------------------

    def _ensure_link(self) -> Transport:
        if self.closed:
            raise DeviceUnavailable(f"{self.name} is closed")
        if self._link is None:
            if self._opener is None:
                raise DeviceUnavailable(f"{self.name} has no link")
            self._link = self._opener()
        return self._link

    def _link_failed(self, reason: str) -> None:
        self.set_health(Health.UNAVAILABLE, reason)
        if self._opener is not None and self._link is not None:
            try:
                self._link.close()
            except Exception:
                log.debug("closing %s after a failure failed", self.name, exc_info=True)
            self._link = None

    def _query_status(self, link: Transport) -> PrinterStatus:
        for _ in range(16):  # drop stale bytes (automatic status back, late replies)
            if not link.read(64, 0):
                break
        replies: list[int] = []
        for n, request in STATUS_REQUESTS.items():
            link.write(request)
            reply = link.read(1, self._status_timeout)
            if not reply:
                raise DeviceUnavailable(f"{self.name} did not answer status request {n}")
            try:
                replies.append(check_status_byte(reply[0]))
            except InputError as exc:
                raise DeviceUnavailable(f"{self.name} sent a garbled status: {exc}") from exc
        return PrinterStatus.parse(*replies)

    def _send_job(self, data: bytes) -> PrinterStatus | None:
        """Write one job; raises DeviceUnavailable (link failure or printer not ready)."""
        with self._io:
            try:
                link = self._ensure_link()
                status = self._query_status(link) if self._check_status else None
            except DeviceUnavailable as exc:
                self._link_failed(str(exc))
                raise
            if status is not None and not status.ready:
                reason = ", ".join(status.problems)
                self.set_health(Health.UNAVAILABLE, reason)
                raise DeviceUnavailable(reason)
            try:
                for start in range(0, len(data), self._chunk):
                    link.write(data[start : start + self._chunk])
            except DeviceUnavailable as exc:
                self._link_failed(str(exc))
                raise
        return status

    def _queue_failure(self, job: PrintJob, reason: str, *, alert: bool = True) -> None:
        queued = next((j for j in self.queue.jobs() if j.key == job.key), job)
        self.queue.put(replace(queued, attempts=queued.attempts + 1, last_error=reason))
        if not alert:
            return
        log.warning("receipt %s not printed (%s); queued for reprint", job.key, reason)
        if self._on_alert is not None:
            try:
                self._on_alert(PrinterAlert(self.name, reason, job.key, len(self.queue)))
            except Exception:
                log.exception("printer alert listener failed")

    def _settle(self, status: PrinterStatus | None) -> None:
        """Health after a successful exchange: problems, paper near end, or receipts waiting."""
        if status is not None and not status.ready:
            self.set_health(Health.UNAVAILABLE, ", ".join(status.problems))
        elif status is not None and status.paper_near_end:
            self.set_health(Health.DEGRADED, "paper near end")
        elif self.queue.jobs():
            n = len(self.queue)
            self.set_health(Health.DEGRADED, f"{n} receipt{'s' if n > 1 else ''} waiting to be reprinted")
        else:
            self.set_health(Health.OK)


# -- python-escpos links --------------------------------------------------------------------------


class EscposLink:
    """A python-escpos printer object as a :class:`Transport` (its ``_raw`` and device reads)."""

    def __init__(self, printer: Any, description: str) -> None:
        self._printer = printer
        self.description = description

    def write(self, data: bytes) -> None:
        from escpos.exceptions import Error as EscposError

        if not self._printer._device:
            raise DeviceUnavailable(f"{self.description} is not open")
        try:
            self._printer._raw(data)
        except (OSError, EscposError) as exc:
            raise DeviceUnavailable(f"write to {self.description} failed: {exc}") from exc

    def read(self, size: int, timeout: float) -> bytes:
        """Read from the backend's device with a timeout; b"" when the link cannot read."""
        from escpos.printer import Network, Serial, Usb

        device = self._printer._device
        if not device:
            raise DeviceUnavailable(f"{self.description} is not open")
        try:
            if isinstance(self._printer, Usb):
                import usb.core

                try:
                    return bytes(device.read(self._printer.in_ep, size, max(1, int(timeout * 1000))))
                except usb.core.USBTimeoutError:
                    return b""
            if isinstance(self._printer, Serial):
                device.timeout = max(0.0, timeout)
                return bytes(device.read(size))
            if isinstance(self._printer, Network):
                device.settimeout(max(0.001, timeout))
                try:
                    data = device.recv(size)
                except TimeoutError:
                    return b""
                if not data:
                    raise DeviceUnavailable(f"{self.description} closed the connection")
                return bytes(data)
        except OSError as exc:
            raise DeviceUnavailable(f"read from {self.description} failed: {exc}") from exc
        return b""

    def close(self) -> None:
        self._printer.close()


def _open_escpos(printer: Any, description: str) -> EscposLink:
    from escpos.exceptions import Error as EscposError

    try:
        printer.open()
    except (EscposError, OSError) as exc:
        raise DeviceUnavailable(f"cannot open {description}: {exc}") from exc
    except (RuntimeError, ValueError) as exc:  # pyusb or libusb missing
        raise DeviceMisconfigured(f"cannot use {description}: {exc}") from exc
    return EscposLink(printer, description)


def usb_link(vendor_id: int, product_id: int, *, timeout_ms: int = 5000, in_ep: int = 0x82,
             out_ep: int = 0x01) -> EscposLink:  # fmt: skip
    """A USB printer through python-escpos and pyusb."""
    from escpos.printer import Usb

    printer = Usb(vendor_id, product_id, timeout=timeout_ms, in_ep=in_ep, out_ep=out_ep)
    return _open_escpos(printer, f"USB printer {vendor_id:04x}:{product_id:04x}")


def serial_link(port: str, baudrate: int = 9600, *, timeout: float = 1.0) -> EscposLink:
    """A serial printer (RS-232, USB CDC) through python-escpos and pyserial."""
    from escpos.printer import Serial

    printer = Serial(devfile=port, baudrate=baudrate, timeout=timeout, dsrdtr=False)
    return _open_escpos(printer, f"serial printer {port}")


def network_link(host: str, port: int = 9100, *, timeout: float = 5.0) -> EscposLink:
    """A network printer (raw TCP, usually port 9100) through python-escpos."""
    import socket

    from escpos.printer import Network

    description = f"network printer {host}:{port}"
    try:  # connect here: escpos's own open() leaks the socket when the connection is refused
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise DeviceUnavailable(f"cannot open {description}: {exc}") from exc
    printer = Network(host, port=port, timeout=timeout)
    printer.device = sock
    return EscposLink(printer, description)


def file_link(path: str | Path) -> EscposLink:
    """A printer device file (``/dev/usb/lp0``) through python-escpos; it cannot report status."""
    from escpos.printer import File

    return _open_escpos(File(devfile=str(path)), f"printer file {path}")


def load_logo(path: str | Path, profile: PrinterProfile, *, threshold: int = 128) -> RasterImage:
    """Read a small image file as a monochrome logo that fits the paper."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            logo = RasterImage.from_image(image, threshold=threshold)
    except (OSError, UnidentifiedImageError) as exc:
        raise DeviceMisconfigured(f"cannot read logo {path}: {exc}") from exc
    if logo.width > profile.dots:
        raise DeviceMisconfigured(f"logo {path} is {logo.width} dots wide; the paper takes {profile.dots}")
    return logo


def open_link(kind: str, **options: Any) -> Transport:
    """Open a printer link by kind ("usb", "serial", "network", "file" or "sim").

    ``TILLBOX_DEVICES=sim`` returns a :class:`SimulatedPrinter` whatever the kind.
    """
    if simulated() or kind == "sim":
        return SimulatedPrinter()
    openers: dict[str, Callable[..., EscposLink]] = {
        "usb": usb_link, "serial": serial_link, "network": network_link, "file": file_link,
    }  # fmt: skip
    if kind not in openers:
        raise DeviceMisconfigured(f"unknown printer link {kind!r}; use usb, serial, network, file or sim")
    try:
        return openers[kind](**options)
    except TypeError as exc:
        raise DeviceMisconfigured(f"bad options for a {kind} printer: {exc}") from exc


# -- simulator ------------------------------------------------------------------------------------


class SimulatedPrinter:
    """A printer you can see: keeps every byte, answers ``DLE EOT``, renders its paper as text.

    Set ``status`` (e.g. ``PrinterStatus(paper_out=True, online=False)``), call
    :meth:`disconnect`, or ``fail_after(n)`` to lose the link after ``n`` more bytes.

    A write that starts by selecting another device (``ESC = n`` without the printer bit,
    as a customer display behind the printer is addressed) is not printed: it goes to
    :attr:`peripheral` when one is attached (e.g. a ``SimulatedDisplay``) and is kept in
    :attr:`passthrough`. A real printer parses its whole command stream; the simulator only
    looks at the start of each write, which is how such frames are sent.
    """

    def __init__(self, *, columns: int = 48) -> None:
        self.columns = columns
        self.written = bytearray()
        #: Bytes addressed to the device behind the printer.
        self.passthrough = bytearray()
        #: The device daisy-chained behind the printer (anything with ``write(bytes)``).
        self.peripheral: Any = None
        self.status = PrinterStatus()
        self.connected = True
        self._replies: deque[int] = deque()
        self._budget: int | None = None
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            if not self.connected:
                raise DeviceUnavailable("simulated printer is disconnected")
            if len(data) == 3 and data[:2] == b"\x10\x04" and 1 <= data[2] <= 4:
                self._replies.append(self.status.to_bytes()[data[2] - 1])
                return
            if len(data) >= 3 and data[:2] == b"\x1b=" and not data[2] & 0x01:
                self.passthrough += data
                if self.peripheral is not None:
                    self.peripheral.write(data)
                return
            if self._budget is not None and len(data) > self._budget:
                self.written += data[: self._budget]
                self._budget = None
                self.connected = False
                raise DeviceUnavailable("simulated printer went away mid-job")
            if self._budget is not None:
                self._budget -= len(data)
            if self.status.ready:
                self.written += data

    def read(self, size: int, timeout: float) -> bytes:
        with self._lock:
            if not self.connected:
                raise DeviceUnavailable("simulated printer is disconnected")
            out = bytearray()
            while self._replies and len(out) < size:
                out.append(self._replies.popleft())
            return bytes(out)

    def close(self) -> None:
        """Nothing to release; the simulator stays usable (it is the 'device', not the link)."""

    def disconnect(self) -> None:
        with self._lock:
            self.connected = False
            self._replies.clear()

    def reconnect(self) -> None:
        with self._lock:
            self.connected = True

    def fail_after(self, nbytes: int) -> None:
        """Accept ``nbytes`` more bytes of print data, then drop the link."""
        with self._lock:
            self._budget = nbytes

    def text(self) -> str:
        """Everything printed so far as plain text."""
        with self._lock:
            data = bytes(self.written)
        return to_text(data, self.columns)

    def clear(self) -> None:
        with self._lock:
            self.written.clear()
