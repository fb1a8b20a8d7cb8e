"""A ZVT payment terminal simulator that speaks the real protocol.

It listens on the master side of a pseudo-terminal (serial framing, CRC, ACK/NAK)
or on a TCP socket (bare APDUs), runs in one background thread, and follows a
script of outcomes: approve, decline, time out, drop the line mid-transaction,
send a malformed answer, or answer late. Line faults can be injected too:
garbage bytes, damaged CRCs, truncated frames, refused (NAKed) frames.

Everything the terminal booked is kept in :attr:`ZvtSimulator.journal`, so a
test can check that a customer was charged exactly once.

    with ZvtSimulator.pty() as sim:
        terminal = ZvtTerminal.serial(sim.port, t3=0.5, t4=1.0)
        sim.script(SimOutcome.decline(0x05))
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import socket
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from appliance.errors import DeviceUnavailable
from drivers import zvt
from drivers.transport import Transport
from drivers.zvt import Apdu, Framing, Link, SerialLink, TcpLink

log = logging.getLogger(__name__)

_POLL = 0.02  # how often idle loops look at the stop flag


class Behaviour(enum.StrEnum):
    """What the simulated terminal does with the next payment."""

    APPROVE = "approve"
    DECLINE = "decline"
    TIMEOUT = "timeout"  # acknowledges the command, then never answers
    NO_ACK = "no_ack"  # takes the frame but never acknowledges the command
    DISCONNECT = "disconnect"  # drops the line after taking the command
    MALFORMED = "malformed"  # status information with a length field larger than its data


@dataclass(frozen=True)
class SimOutcome:
    """A scripted outcome for one payment (authorization or refund)."""

    behaviour: Behaviour = Behaviour.APPROVE
    result_code: int = zvt.RC_OK
    delay: float = 0.0
    book: bool = True
    then_dead: bool = False

    @classmethod
    def approve(cls, *, delay: float = 0.0) -> SimOutcome:
        """Approve; ``delay`` seconds of silence before the result (longer than T4 means "too late")."""
        return cls(Behaviour.APPROVE, delay=delay)

    @classmethod
    def decline(cls, result_code: int = 0x05) -> SimOutcome:
        return cls(Behaviour.DECLINE, result_code=result_code)

    @classmethod
    def timeout(cls) -> SimOutcome:
        return cls(Behaviour.TIMEOUT, book=False)

    @classmethod
    def no_ack(cls) -> SimOutcome:
        return cls(Behaviour.NO_ACK, book=False)

    @classmethod
    def disconnect(cls, *, book: bool = True, then_dead: bool = False) -> SimOutcome:
        """Drop the line after the command; ``book`` decides whether the payment went through first.

        ``then_dead`` leaves the terminal unresponsive until :attr:`ZvtSimulator.unresponsive` is cleared.
        """
        return cls(Behaviour.DISCONNECT, book=book, then_dead=then_dead)

    @classmethod
    def malformed(cls) -> SimOutcome:
        return cls(Behaviour.MALFORMED)


@dataclass
class SimTransaction:
    """One transaction the simulated terminal booked."""

    kind: str  # "authorization" | "refund" | "reversal"
    amount: int
    trace: int
    receipt: int
    result_code: int
    reversed: bool = False

    @property
    def approved(self) -> bool:
        return self.result_code == zvt.RC_OK


class _FdPort:
    """The master side of a pty as a :class:`Transport`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except OSError as exc:
                raise DeviceUnavailable(f"pty write failed: {exc}") from exc
            view = view[written:]

    def read(self, size: int, timeout: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return b""
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise DeviceUnavailable(f"pty read failed: {exc}") from exc

    def close(self) -> None:
        """The simulator owns the fd and closes it itself."""


class _SocketPort:
    """An accepted TCP connection as a :class:`Transport`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise DeviceUnavailable(f"send failed: {exc}") from exc

    def read(self, size: int, timeout: float) -> bytes:
        self.sock.settimeout(max(0.001, timeout))
        try:
            data = self.sock.recv(size)
        except TimeoutError:
            return b""
        except OSError as exc:
            raise DeviceUnavailable(f"receive failed: {exc}") from exc
        if not data:
            raise DeviceUnavailable("the ECR closed the connection")
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class _FaultyPort:
    """Wraps the simulator's transport to damage outgoing frames on request."""

    def __init__(self, inner: Transport, sim: ZvtSimulator) -> None:
        self.inner = inner
        self.sim = sim

    def write(self, data: bytes) -> None:
        sim = self.sim
        with sim._lock:
            garbage, sim._garbage = sim._garbage, b""
            is_frame = data[:2] == bytes([zvt.DLE, zvt.STX]) or (sim.framing is Framing.TCP and len(data) >= 3)
            corrupt = truncate = False
            if is_frame and sim._corrupt:
                sim._corrupt -= 1
                corrupt = True
            elif is_frame and sim._truncate:
                sim._truncate -= 1
                truncate = True
        if garbage:
            self.inner.write(garbage)
        if corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        if truncate:
            data = data[: max(3, len(data) // 2)]
        self.inner.write(data)

    def read(self, size: int, timeout: float) -> bytes:
        return self.inner.read(size, timeout)

    def close(self) -> None:
        self.inner.close()


class _SimSerialLink(SerialLink):
    """A serial link that refuses (NAKs) good frames on request, like line noise towards the terminal."""

    def __init__(self, transport: Transport, sim: ZvtSimulator, **kwargs: Any) -> None:
        super().__init__(transport, **kwargs)
        self.sim = sim

    def accept(self, apdu: bytes) -> bool:
        with self.sim._lock:
            if self.sim._nak:
                self.sim._nak -= 1
                return False
        return True


class _Gone(Exception):
    """The session ends (line dropped or terminal went silent)."""


class ZvtSimulator:
    """A scripted ZVT terminal on a pty or a TCP socket; call :meth:`close` to stop it."""

    def __init__(
        self,
        framing: Framing,
        *,
        terminal_id: str = "29001234",
        t3: float = zvt.T3,
        byte_timeout: float = zvt.BYTE_TIMEOUT,
        max_repeats: int = zvt.MAX_REPEATS,
        card_name: str = "Mastercard",
        pan: str = "6763********1230",
        start_trace: int = 41,
        start_receipt: int = 7,
        acknowledgement: Apdu = zvt.POSITIVE_ACK,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.framing = Framing(framing)
        self.terminal_id = terminal_id
        self.t3 = t3
        self.byte_timeout = byte_timeout
        self.max_repeats = max_repeats
        self.card_name = card_name
        self.pan = pan
        #: What the terminal answers a command with: ``80 00 00``, or ``84 00 00`` as some terminals do.
        self.acknowledgement = acknowledgement
        self._clock = clock
        self._trace = start_trace
        self._receipt = start_receipt
        self._lock = threading.Lock()
        self._script: deque[SimOutcome] = deque()
        self._garbage = b""
        self._corrupt = self._truncate = self._nak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._server: socket.socket | None = None
        self._conn: _SocketPort | None = None
        self._current: Apdu | None = None
        #: Every transaction booked, in order.
        self.journal: list[SimTransaction] = []
        #: Control fields of every command received (e.g. ``zvt.AUTHORIZATION``).
        self.received: list[int] = []
        #: Unexpected exceptions in the simulator thread (should stay empty).
        self.errors: list[BaseException] = []
        #: A dead terminal: reads and ignores everything.
        self.unresponsive = False
        self.link_stats = zvt.LinkStats()
        self.port = ""
        self.address: tuple[str, int] = ("", 0)

    # -- construction

    @classmethod
    def pty(cls, **kwargs: Any) -> ZvtSimulator:
        """A started simulator on a new pseudo-terminal; open :attr:`port` as the serial port."""
        sim = cls(Framing.SERIAL, **kwargs)
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            sim._master, sim._slave = master, slave
            sim.port = os.ttyname(slave)
        except OSError:
            os.close(master)
            os.close(slave)
            raise
        return sim.start()

    @classmethod
    def tcp(cls, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> ZvtSimulator:
        """A started simulator listening on ``host:port`` (0 picks a free port); see :attr:`address`."""
        sim = cls(Framing.TCP, **kwargs)
        server = socket.create_server((host, port))
        server.settimeout(_POLL)
        sim._server = server
        sim.address = server.getsockname()[:2]
        return sim.start()

    def start(self) -> ZvtSimulator:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=f"zvt-sim-{self.framing}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and release the pty or socket; safe to call twice."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self) -> ZvtSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scripting

    def script(self, *outcomes: SimOutcome) -> None:
        """Queue outcomes for the next payments (default: approve)."""
        with self._lock:
            self._script.extend(outcomes)

    def inject_garbage(self, data: bytes) -> None:
        """Send ``data`` on the line just before the next frame."""
        with self._lock:
            self._garbage += data

    def corrupt_next_frames(self, count: int = 1) -> None:
        """Damage the CRC (on TCP: the last byte) of the next ``count`` frames sent."""
        with self._lock:
            self._corrupt += count

    def truncate_next_frames(self, count: int = 1) -> None:
        """Send only the first half of the next ``count`` frames."""
        with self._lock:
            self._truncate += count

    def nak_next_frames(self, count: int = 1) -> None:
        """Refuse (NAK) the next ``count`` good frames from the ECR, as if they arrived damaged."""
        with self._lock:
            self._nak += count

    def book(self, kind: str, amount: int, result_code: int = zvt.RC_OK) -> SimTransaction:
        """Record a transaction as if it had been made at the terminal."""
        with self._lock:
            self._trace += 1
            self._receipt += 1
            txn = SimTransaction(kind, amount, self._trace, self._receipt, result_code)
            self.journal.append(txn)
            return txn

    @property
    def last(self) -> SimTransaction | None:
        with self._lock:
            return self.journal[-1] if self.journal else None

    def charges(self) -> list[SimTransaction]:
        """Approved authorizations that were not reversed: what customers actually paid."""
        with self._lock:
            return [t for t in self.journal if t.kind == "authorization" and t.approved and not t.reversed]

    # -- thread

    def _main(self) -> None:
        try:
            if self.framing is Framing.SERIAL:
                assert self._master is not None
                self._session(_FdPort(self._master))
            else:
                self._accept_loop()
        except Exception as exc:  # pragma: no cover - reported through self.errors
            self.errors.append(exc)
            log.exception("ZVT simulator crashed")

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                sock, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            port = _SocketPort(sock)
            self._conn = port
            try:
                self._session(port)
            finally:
                port.close()
                self._conn = None

    def _make_link(self, transport: Transport) -> Link:
        port = _FaultyPort(transport, self)
        if self.framing is Framing.SERIAL:
            return _SimSerialLink(port, self, ack_timeout=self.t3, byte_timeout=self.byte_timeout,
                                  max_repeats=self.max_repeats, stats=self.link_stats)  # fmt: skip
        return TcpLink(port, stats=self.link_stats)

    def _session(self, transport: Transport) -> None:
        link = self._make_link(transport)
        queued: Apdu | None = None
        while not self._stop.is_set():
            try:
                if self.unresponsive:
                    transport.read(4096, _POLL)
                    queued = None
                    continue
                if queued is None:
                    raw = link.receive(_POLL)
                    if raw is None:
                        continue
                    queued = Apdu.decode(raw)
                command, queued = queued, None
                queued = self._dispatch(link, command)
            except _Gone:
                if self.framing is Framing.TCP:
                    return
            except DeviceUnavailable as exc:
                log.debug("simulator line dropped: %s", exc)
                if self.framing is Framing.TCP:
                    return
            except zvt.ZvtError as exc:
                log.debug("simulator ignores a bad exchange: %s", exc)

    # -- protocol

    def _dispatch(self, link: Link, command: Apdu) -> Apdu | None:
        """Run one command; returns a command the ECR sent meanwhile, to run next."""
        if command.klass in (0x80, 0x84):
            return None  # a late or repeated acknowledgement: nothing to answer
        self.received.append(command.control)
        self._current = command
        control = command.control
        if control == zvt.REGISTRATION:
            link.send(self.acknowledgement.encode())
            done = zvt.completion([(0x19, b"\x00"), (0x29, self._tid()), (0x49, zvt.bcd_encode(978, 2))])
            return self._send_and_wait(link, done)
        if control == zvt.LOG_OFF:
            link.send(self.acknowledgement.encode())
            return None
        if control == zvt.STATUS_ENQUIRY:
            link.send(self.acknowledgement.encode())
            info = zvt.status_information([(0x27, b"\x00"), (0x29, self._tid())])
            return self._send_and_wait(link, info) or self._send_and_wait(link, zvt.completion())
        if control == zvt.REPEAT_RECEIPT:
            link.send(self.acknowledgement.encode())
            last = self.last
            if last is None:
                return self._send_and_wait(link, zvt.abort(zvt.RC_NOT_POSSIBLE))
            return self._send_and_wait(link, self._status(last)) or self._send_and_wait(link, zvt.completion())
        if control in (zvt.AUTHORIZATION, zvt.REFUND):
            return self._payment(link, command)
        if control == zvt.REVERSAL:
            return self._reversal(link, command)
        link.send(zvt.negative_ack(zvt.RC_NOT_POSSIBLE).encode())
        return None

    def _payment(self, link: Link, command: Apdu) -> Apdu | None:
        kind = "authorization" if command.control == zvt.AUTHORIZATION else "refund"
        data = command.data if kind == "authorization" else command.data[3:]
        fields = zvt.parse_bmps(data).values
        amount = zvt.bcd_decode(fields[0x04]) if 0x04 in fields else 0
        with self._lock:
            outcome = self._script.popleft() if self._script else SimOutcome.approve()
        if outcome.behaviour is Behaviour.NO_ACK:
            return None
        link.send(self.acknowledgement.encode())
        if outcome.behaviour is Behaviour.TIMEOUT:
            return None
        if outcome.behaviour is Behaviour.DISCONNECT:
            if outcome.book:
                self.book(kind, amount)
            if outcome.then_dead:
                self.unresponsive = True
            if self.framing is Framing.TCP and self._conn is not None:
                self._conn.close()
            raise _Gone
        if outcome.delay:
            self._stop.wait(outcome.delay)
            link.flush_input()  # a busy terminal ignores what arrived meanwhile
        elif (pending := self._send_and_wait(link, zvt.intermediate_status(0x0A))) is not None:
            return pending
        if outcome.behaviour is Behaviour.DECLINE:
            txn = self.book(kind, amount, outcome.result_code)
            return self._send_and_wait(link, self._status(txn)) or self._send_and_wait(
                link, zvt.abort(outcome.result_code)
            )
        txn = self.book(kind, amount)
        status = self._status(txn).encode()
        if outcome.behaviour is Behaviour.MALFORMED:
            status = status[:2] + bytes([status[2] + 5]) + status[3:]  # length field claims 5 bytes too many
        return self._send_raw_and_wait(link, status) or self._send_and_wait(link, zvt.completion())

    def _reversal(self, link: Link, command: Apdu) -> Apdu | None:
        fields = zvt.parse_bmps(command.data[3:]).values
        receipt = zvt.bcd_decode(fields[0x87]) if 0x87 in fields else -1
        link.send(self.acknowledgement.encode())
        with self._lock:
            original = next((t for t in self.journal if t.receipt == receipt and t.kind != "reversal"), None)
        if original is None or not original.approved:
            return self._send_and_wait(link, zvt.abort(0xB5))
        if original.reversed:
            return self._send_and_wait(link, zvt.abort(zvt.RC_ALREADY_REVERSED))
        original.reversed = True
        txn = self.book("reversal", original.amount)
        return self._send_and_wait(link, self._status(txn)) or self._send_and_wait(link, zvt.completion())

    def _send_and_wait(self, link: Link, message: Apdu) -> Apdu | None:
        return self._send_raw_and_wait(link, message.encode())

    def _send_raw_and_wait(self, link: Link, raw: bytes) -> Apdu | None:
        """Send a message as master and wait for the ECR's 80 00 00.

        Returns a command the ECR sent instead (it gave up on us), to be run next.
        Raises :class:`_Gone` when the ECR does not answer.
        """
        link.send(raw)
        deadline = time.monotonic() + self.t3
        while not self._stop.is_set():
            reply = link.receive(min(_POLL * 5, max(0.0, deadline - time.monotonic())))
            if reply is None:
                if time.monotonic() >= deadline:
                    raise _Gone
                continue
            answer = Apdu.decode(reply)
            if answer.klass in (0x80, 0x84):
                return None
            if answer == self._current:
                continue  # the ECR repeated the command frame we are already working on
            return answer
        raise _Gone

    def _status(self, txn: SimTransaction) -> Apdu:
        now = self._clock()
        fields: list[tuple[int, bytes]] = [
            (0x27, bytes([txn.result_code])),
            (0x04, zvt.bcd_encode(txn.amount, 6)),
            (0x0B, zvt.bcd_encode(txn.trace, 3)),
            (0x0C, bytes.fromhex(now.strftime("%H%M%S"))),
            (0x0D, bytes.fromhex(now.strftime("%m%d"))),
        ]
        if txn.kind != "reversal":
            fields += [
                (0x0E, bytes.fromhex("2812")),
                (0x22, zvt.encode_pan(self.pan)),
                (0x17, bytes.fromhex("0001")),
            ]
        fields += [(0x29, self._tid()), (0x49, zvt.bcd_encode(978, 2))]
        if txn.approved:
            fields.append((0x3B, f"{(txn.trace * 7919) % 1_000_000:06d}".encode().ljust(8, b"\x00")))
        fields += [
            (0x87, zvt.bcd_encode(txn.receipt, 2)),
            (0x88, zvt.bcd_encode(txn.trace, 3)),
            (0x8A, bytes([6])),
            (0x8B, self.card_name.encode("latin-1")),
        ]
        return zvt.status_information(fields)

    def _tid(self) -> bytes:
        return bytes.fromhex(self.terminal_id.ljust(8, "F")[:8])
