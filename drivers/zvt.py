"""ZVT (the German ECR <-> payment terminal protocol): codec, link layers and driver.

Facts used here come from the ZVT specification of the Verband der
Terminalhersteller (PA00P015 "Commands, Bitmaps, Error Messages" and PA00P016
"Transport-Protocol, Application-Protocol"). What was checked against which
source is listed in docs/devices.md ("ZVT: what was verified"); in short:

* An APDU is ``CLASS INSTR LEN DATA``; ``LEN`` is one byte, or ``FF`` and two
  bytes little-endian when the data is longer than 254 bytes.
* Serial framing is ``DLE STX <APDU, every DLE doubled> DLE ETX CRC-lo CRC-hi``.
  The CRC is the CCITT polynomial in its reflected form, initial value 0, over
  the un-doubled APDU bytes and ETX (the CRC-16/KERMIT variant). The receiver
  answers each frame with the single byte ACK (06) or NAK (15); a frame is sent
  at most three times.
* Over TCP (port 20007) APDUs go bare: no framing, no CRC, no ACK/NAK byte.
* The application acknowledges every APDU with ``80 00 00`` (``84 00 00`` is a
  positive acknowledgement too) or refuses it with ``84 xx``. After a command
  the terminal (PT) becomes master and sends Intermediate Status (04 FF),
  Status-Information (04 0F, result in BMP 27), maybe print lines, then
  Completion (06 0F) or Abort (06 1E + result code).
* PA00P016 names four time-outs: T1 (wait-time between two bytes), T2
  (wait-time between a block and its ACK/NAK), T3 (time between a command and
  its 80-00/84-xx) and T4 (time between 80-00 from the PT and the completion).

Card numbers never leave this module: BMP 22 (PAN), the track data, expiry and
CVV are dropped while parsing. Only the last four digits survive, and only when
the terminal already masked the rest. Raw APDUs from the terminal are never
logged.

An authorization whose answer is lost is *ambiguous*. The driver never repeats
it: it asks the terminal for its last transaction (Repeat Receipt, 06 20) and
decides from that, comparing against the last transaction it knew before.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.errors import DeviceUnavailable, InputError, PaymentDeclined, TillboxError
from appliance.tenders import CardResult
from drivers.base import Device, Health
from drivers.transport import TcpTransport, Transport

log = logging.getLogger(__name__)

# -- constants ---------------------------------------------------------------------------------

DLE, STX, ETX, ACK, NAK = 0x10, 0x02, 0x03, 0x06, 0x15

#: TCP port ZVT terminals listen on.
DEFAULT_TCP_PORT = 20007
#: Time-out T1 (serial): longest gap between two bytes of one frame. Our value; see docs/devices.md.
T1 = 1.0
#: Time-out T2 (serial): wait for the ACK/NAK byte after a frame. Our value; see docs/devices.md.
T2 = 5.0
#: Time-out T3: wait for the acknowledgement (80 00 / 84 xx) of a command (seconds).
T3 = 5.0
#: Time-out T4: longest silence between the acknowledgement and the completion (seconds).
T4 = 180.0
#: A serial frame is repeated at most twice after a NAK or a missing ACK.
MAX_REPEATS = 2
#: Longest gap between two bytes of one serial frame (time-out T1).
BYTE_TIMEOUT = T1

MAX_APDU_DATA = 0xFFFF
#: Control-field classes a well-behaved peer sends; anything else means the TCP stream is out of step.
KNOWN_CLASSES = frozenset({0x04, 0x05, 0x06, 0x08, 0x80, 0x84})

# Control fields (class << 8 | instr).
REGISTRATION = 0x0600
AUTHORIZATION = 0x0601
LOG_OFF = 0x0602
COMPLETION = 0x060F
ABORT = 0x061E
REPEAT_RECEIPT = 0x0620
REVERSAL = 0x0630
REFUND = 0x0631
PRINT_LINE = 0x06D1
PRINT_TEXT_BLOCK = 0x06D3
STATUS_ENQUIRY = 0x0501
STATUS_INFORMATION = 0x040F
INTERMEDIATE_STATUS = 0x04FF

# Registration config-byte bits.
CONFIG_ECR_PRINTS_PAYMENT_RECEIPTS = 0x02
CONFIG_ECR_PRINTS_ADMIN_RECEIPTS = 0x04
CONFIG_INTERMEDIATE_STATUS = 0x08
CONFIG_ECR_CONTROLS_PAYMENT = 0x10
CONFIG_ECR_CONTROLS_ADMIN = 0x20
DEFAULT_CONFIG = CONFIG_INTERMEDIATE_STATUS | CONFIG_ECR_CONTROLS_PAYMENT

# Result codes with a meaning the driver acts on.
RC_OK = 0x00
RC_ABORTED = 0x6C
RC_NOT_POSSIBLE = 0x83
RC_PROTOCOL_ERROR = 0x9A
RC_ALREADY_REVERSED = 0xB4

RESULT_TEXT: dict[int, str] = {
    0x00: "no error",
    0x64: "card not readable",
    0x65: "card data not present",
    0x66: "processing error",
    0x67: "function not permitted for ec and Maestro cards",
    0x68: "function not permitted for credit and tank cards",
    0x6A: "turnover file full",
    0x6B: "function deactivated (terminal not registered)",
    0x6C: "aborted by timeout or abort key",
    0x6E: "card in blocked list",
    0x6F: "wrong currency",
    0x71: "credit not sufficient",
    0x72: "chip error",
    0x73: "card data incorrect",
    0x77: "end-of-day batch not possible",
    0x78: "card expired",
    0x79: "card not yet valid",
    0x7A: "card unknown",
    0x7D: "communication error",
    0x83: "function not possible",
    0x85: "key missing",
    0x89: "PIN pad defective",
    0x9A: "ZVT protocol error",
    0x9B: "dial-up or communication fault",
    0x9C: "please wait",
    0xA0: "receiver not ready",
    0xA1: "remote station does not respond",
    0xA3: "no connection",
    0xB1: "memory full",
    0xB2: "merchant journal full",
    0xB4: "already reversed",
    0xB5: "reversal not possible",
    0xC2: "diagnosis required",
    0xC3: "maximum amount exceeded",
    0xC5: "payment method not supported",
    0xC6: "currency not applicable",
    0xC8: "amount too small",
    0xCC: "printer not ready",
    0xE4: "terminal activation required",
    0xF0: "open end-of-day batch present",
    0xFF: "system error",
}

#: ISO 4217 numeric codes of the currencies a ZVT terminal is likely to take.
CURRENCY_NUMERIC: dict[str, int] = {
    "EUR": 978, "CHF": 756, "GBP": 826, "USD": 840, "SEK": 752, "DKK": 208,
    "NOK": 578, "PLN": 985, "CZK": 203, "HUF": 348, "JPY": 392,
}  # fmt: skip


def result_text(code: int | None) -> str:
    """A short human text for a ZVT result code."""
    if code is None:
        return "no result code"
    if 0x01 <= code <= 0x63:
        return f"declined by the card issuer (code {code})"
    return RESULT_TEXT.get(code, f"result code 0x{code:02X}")


# -- errors ------------------------------------------------------------------------------------


class ZvtError(TillboxError):
    """Something went wrong talking ZVT."""


class ZvtFrameError(ZvtError):
    """Bytes from the peer do not form a valid frame or APDU (bad CRC, length, BCD)."""

    retryable = True


class ZvtLinkError(ZvtError, DeviceUnavailable):
    """The terminal does not answer, answered too late, or the link dropped."""


class ZvtRejected(ZvtError):
    """The terminal refused a command with a negative acknowledgement (84 xx)."""

    retryable = True

    def __init__(self, code: int, what: str = "command") -> None:
        super().__init__(f"terminal refused the {what}: {result_text(code)}")
        self.code = code


class ZvtOutcomeUnknown(ZvtLinkError):
    """A payment was sent but its outcome could not be learnt yet; never repeat it blindly.

    The driver keeps it as :attr:`ZvtTerminal.pending`; the next call (or
    :meth:`ZvtTerminal.resolve`) asks the terminal again before anything else.
    """


# -- BCD, lengths, CRC -------------------------------------------------------------------------


def bcd_encode(value: int, size: int) -> bytes:
    """``value`` as ``size`` bytes of packed BCD (1234, 3 -> 00 12 34)."""
    if value < 0:
        raise InputError(f"cannot encode negative number {value} as BCD")
    digits = f"{value:0{size * 2}d}"
    if len(digits) > size * 2:
        raise InputError(f"{value} does not fit in {size} BCD bytes")
    return bytes.fromhex(digits)


def bcd_decode(data: bytes) -> int:
    """Packed BCD back to an int; raises :class:`ZvtFrameError` on a non-decimal nibble."""
    text = data.hex()
    if not text.isdigit():
        raise ZvtFrameError(f"invalid BCD digits {text!r}")
    return int(text) if text else 0


def bcd_digits(data: bytes) -> str:
    """BCD digits as text, stopping at an ``F`` filler nibble (for terminal IDs)."""
    return data.hex().upper().split("F", 1)[0]


def encode_length(size: int) -> bytes:
    """The APDU length field: one byte up to 254, else ``FF`` + 2 bytes little-endian."""
    if size < 0 or size > MAX_APDU_DATA:
        raise ZvtError(f"APDU data of {size} bytes cannot be encoded")
    if size < 0xFF:
        return bytes([size])
    return b"\xff" + size.to_bytes(2, "little")


def apdu_size(buf: bytes | bytearray) -> int | None:
    """Total length of the APDU starting at ``buf[0]``, or None if the header is incomplete."""
    if len(buf) < 3:
        return None
    if buf[2] != 0xFF:
        return 3 + buf[2]
    if len(buf) < 5:
        return None
    return 5 + int.from_bytes(buf[3:5], "little")


def crc16(data: bytes | bytearray) -> int:
    """CRC-16/KERMIT (reflected CCITT 0x1021, init 0): the ZVT serial checksum."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def frame(apdu: bytes) -> bytes:
    """Wrap an APDU for the serial line: DLE STX, doubled DLEs, DLE ETX, CRC low byte first."""
    crc = crc16(apdu + bytes([ETX]))
    return bytes([DLE, STX]) + apdu.replace(b"\x10", b"\x10\x10") + bytes([DLE, ETX]) + crc.to_bytes(2, "little")


def unframe(data: bytes) -> bytes:
    """The APDU inside exactly one serial frame; raises :class:`ZvtFrameError` if it is not one."""
    deframer = Deframer()
    deframer.feed(data)
    event = deframer.next_event()
    if not isinstance(event, FrameOk):
        raise ZvtFrameError(event.reason if isinstance(event, FrameBad) else "incomplete frame")
    if deframer.pending():
        raise ZvtFrameError("trailing bytes after the frame")
    return event.apdu


# -- APDUs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Apdu:
    """One application message: class byte, instruction byte and data."""

    klass: int
    instr: int
    data: bytes = b""

    @property
    def control(self) -> int:
        return self.klass << 8 | self.instr

    def encode(self) -> bytes:
        return bytes([self.klass, self.instr]) + encode_length(len(self.data)) + self.data

    @classmethod
    def decode(cls, raw: bytes) -> Apdu:
        """Parse exactly one APDU; the length field must match the bytes given."""
        size = apdu_size(raw)
        if size is None:
            raise ZvtFrameError(f"APDU of {len(raw)} bytes is too short")
        header = 5 if raw[2] == 0xFF else 3
        if size != len(raw):
            raise ZvtFrameError(f"APDU length field says {size - header} data bytes, got {len(raw) - header}")
        return cls(raw[0], raw[1], bytes(raw[header:]))

    def __repr__(self) -> str:  # never show data: it may hold card data
        return f"Apdu({self.klass:02X} {self.instr:02X}, {len(self.data)} bytes)"


POSITIVE_ACK = Apdu(0x80, 0x00)


def negative_ack(code: int) -> Apdu:
    """``84 xx``: refuse a message with result code ``xx``."""
    return Apdu(0x84, code)


def is_positive_ack(msg: Apdu) -> bool:
    """``80 00`` or ``84 00`` (result code 00, "no error"): the message was taken."""
    return msg.klass == 0x80 or (msg.klass == 0x84 and msg.instr == RC_OK)


# -- bitmaps (BMPs) ----------------------------------------------------------------------------

#: Fixed payload sizes of the BMPs this module knows.
BMP_FIXED: dict[int, int] = {
    0x01: 1, 0x02: 1, 0x03: 1, 0x04: 6, 0x05: 1, 0x0B: 3, 0x0C: 3, 0x0D: 2, 0x0E: 2,
    0x17: 2, 0x19: 1, 0x27: 1, 0x29: 4, 0x2A: 15, 0x37: 3, 0x3A: 2, 0x3B: 8, 0x49: 2,
    0x87: 2, 0x88: 3, 0x8A: 1, 0x8C: 1, 0xA0: 1, 0xAA: 3, 0xBA: 5,
}  # fmt: skip
#: BMPs with a two-digit (LL) or three-digit (LLL) ``Fx`` length prefix.
BMP_LLVAR = frozenset({0x22, 0x23, 0x2D, 0x8B, 0xA7})
BMP_LLLVAR = frozenset({0x24, 0x3C, 0x60, 0x9A, 0xAF})
BMP_TLV = 0x06
#: Card data: parsed only to be skipped, never kept.
SENSITIVE_BMPS = frozenset({0x0E, 0x22, 0x23, 0x24, 0x2D, 0x3A})


def encode_var_length(size: int, digits: int) -> bytes:
    """ZVT LLVAR/LLLVAR prefix: each decimal digit as ``F0 | digit`` (12 -> F1 F2)."""
    text = f"{size:0{digits}d}"
    if len(text) > digits:
        raise ZvtError(f"variable field of {size} bytes is too long")
    return bytes(0xF0 | int(d) for d in text)


def decode_var_length(data: bytes) -> int:
    if any(b & 0xF0 != 0xF0 or b & 0x0F > 9 for b in data):
        raise ZvtFrameError(f"invalid variable-length prefix {data.hex(' ')}")
    return int("".join(str(b & 0x0F) for b in data))


def encode_tlv_length(size: int) -> bytes:
    """BER length: one byte below 128, else 81 xx or 82 xx xx."""
    if size < 0x80:
        return bytes([size])
    if size < 0x100:
        return bytes([0x81, size])
    return b"\x82" + size.to_bytes(2, "big")


def tlv_length(data: bytes, pos: int) -> tuple[int, int]:
    """BER length at ``pos``: (length, bytes used)."""
    if pos >= len(data):
        raise ZvtFrameError("TLV length missing")
    first = data[pos]
    if first < 0x80:
        return first, 1
    count = first & 0x7F
    if count not in (1, 2) or pos + 1 + count > len(data):
        raise ZvtFrameError("invalid TLV length")
    return int.from_bytes(data[pos + 1 : pos + 1 + count], "big"), 1 + count


def bmp(tag: int, payload: bytes) -> bytes:
    """Encode one BMP; fixed sizes are checked and variable ones get their prefix."""
    if tag in BMP_FIXED:
        if len(payload) != BMP_FIXED[tag]:
            raise ZvtError(f"BMP {tag:02X} needs {BMP_FIXED[tag]} bytes, got {len(payload)}")
        return bytes([tag]) + payload
    if tag in BMP_LLVAR:
        return bytes([tag]) + encode_var_length(len(payload), 2) + payload
    if tag in BMP_LLLVAR:
        return bytes([tag]) + encode_var_length(len(payload), 3) + payload
    if tag == BMP_TLV:
        return bytes([tag]) + encode_tlv_length(len(payload)) + payload
    raise ZvtError(f"unknown BMP {tag:02X}")


def encode_pan(masked: str) -> bytes:
    """A (masked) card number as BCD digits, ``*`` as nibble E, padded with F (for simulators)."""
    nibbles = "".join("E" if c == "*" else c for c in masked)
    if len(nibbles) % 2:
        nibbles += "F"
    return bytes.fromhex(nibbles)


@dataclass(frozen=True)
class BmpFields:
    """Parsed BMPs, card data already removed."""

    values: dict[int, bytes]
    pan_last4: str = ""
    complete: bool = True


def _masked_last4(payload: bytes) -> str:
    """Last four digits of a PAN, but only if the terminal masked it (E nibbles); else ''."""
    text = payload.hex().upper().rstrip("F")
    if "E" not in text:
        return ""
    tail = text[-4:]
    return tail if len(tail) == 4 and tail.isdigit() else ""


def parse_bmps(data: bytes) -> BmpFields:
    """Split a BMP sequence. Card data is dropped; an unknown BMP ends parsing (``complete=False``)."""
    values: dict[int, bytes] = {}
    last4 = ""
    pos = 0
    while pos < len(data):
        tag = data[pos]
        pos += 1
        if tag in BMP_FIXED:
            size, skip = BMP_FIXED[tag], 0
        elif tag in BMP_LLVAR or tag in BMP_LLLVAR:
            skip = 2 if tag in BMP_LLVAR else 3
            size = decode_var_length(data[pos : pos + skip]) if pos + skip <= len(data) else len(data)
        elif tag == BMP_TLV:
            size, skip = tlv_length(data, pos)
        else:
            log.debug("unknown BMP %02X; %d bytes left unparsed", tag, len(data) - pos)
            return BmpFields(values, last4, complete=False)
        end = pos + skip + size
        if end > len(data):
            raise ZvtFrameError(f"BMP {tag:02X} runs past the end of the APDU")
        payload = data[pos + skip : end]
        pos = end
        if tag == 0x22:
            last4 = _masked_last4(payload)
        elif tag not in SENSITIVE_BMPS and tag != BMP_TLV:
            values[tag] = payload
    return BmpFields(values, last4)


@dataclass(frozen=True)
class TransactionInfo:
    """What a Status-Information (04 0F) says about a transaction; no card number."""

    result_code: int | None = None
    amount: int | None = None
    currency: int | None = None
    trace: int | None = None
    receipt: int | None = None
    turnover: int | None = None
    terminal_id: str = ""
    approval_code: str = ""
    card_name: str = ""
    card_type: int | None = None
    pan_last4: str = ""
    date: str = ""
    time: str = ""
    complete: bool = True

    @property
    def approved(self) -> bool:
        return self.result_code == RC_OK

    @property
    def key(self) -> tuple[int | None, int | None, int | None] | None:
        """What identifies the transaction on the terminal; None if the terminal sent none of it."""
        key = (self.trace, self.receipt, self.turnover)
        return None if key == (None, None, None) else key

    @property
    def reference(self) -> str:
        """Approval reference for the ledger: ``ZVT:<terminal>:<receipt>:<trace>``."""
        receipt = "-" if self.receipt is None else f"{self.receipt:04d}"
        trace = "-" if self.trace is None else f"{self.trace:06d}"
        return f"ZVT:{self.terminal_id or '-'}:{receipt}:{trace}"

    @classmethod
    def from_fields(cls, fields: BmpFields) -> TransactionInfo:
        v = fields.values

        def number(tag: int) -> int | None:
            return bcd_decode(v[tag]) if tag in v else None

        def text(tag: int) -> str:
            return v[tag].rstrip(b"\x00 ").decode("latin-1").strip() if tag in v else ""

        return cls(
            result_code=v[0x27][0] if 0x27 in v else None,
            amount=number(0x04),
            currency=number(0x49),
            trace=number(0x0B),
            receipt=number(0x87),
            turnover=number(0x88),
            terminal_id=bcd_digits(v[0x29]) if 0x29 in v else "",
            approval_code=text(0x3B),
            card_name=text(0x8B),
            card_type=v[0x8A][0] if 0x8A in v else None,
            pan_last4=fields.pan_last4,
            date=v[0x0D].hex() if 0x0D in v else "",
            time=v[0x0C].hex() if 0x0C in v else "",
            complete=fields.complete,
        )

    @classmethod
    def parse(cls, apdu: Apdu) -> TransactionInfo:
        return cls.from_fields(parse_bmps(apdu.data))


def parse_reference(reference: str) -> int:
    """The receipt number inside a reference made by :attr:`TransactionInfo.reference`."""
    parts = reference.split(":")
    if len(parts) != 4 or parts[0] != "ZVT" or not parts[2].isdigit():
        raise InputError(f"{reference!r} is not a ZVT approval reference with a receipt number")
    return int(parts[2])


# -- command builders (ECR -> PT) --------------------------------------------------------------


def _password(password: str) -> bytes:
    if len(password) != 6 or not password.isdigit():
        raise InputError("the ZVT password must be six digits")
    return bytes.fromhex(password)


def _amount(amount: int) -> bytes:
    if not 0 < amount <= 999_999_999_999:
        raise InputError(f"amount {amount} is out of range for a card payment")
    return bmp(0x04, bcd_encode(amount, 6))


def registration(password: str, config_byte: int, currency: int | None = None, service_byte: int | None = None) -> Apdu:
    """Registration (06 00): password, config byte, [currency code [03 service byte]]."""
    data = _password(password) + bytes([config_byte])
    if currency is not None:
        data += bcd_encode(currency, 2)
        if service_byte is not None:
            data += bytes([0x03, service_byte])
    return Apdu(0x06, 0x00, data)


def authorization(amount: int, currency: int | None = None) -> Apdu:
    """Authorization (06 01): 04 amount [49 currency]."""
    data = _amount(amount)
    if currency is not None:
        data += bmp(0x49, bcd_encode(currency, 2))
    return Apdu(0x06, 0x01, data)


def refund(password: str, amount: int, currency: int | None = None) -> Apdu:
    """Refund (06 31): password, 04 amount [49 currency]."""
    data = _password(password) + _amount(amount)
    if currency is not None:
        data += bmp(0x49, bcd_encode(currency, 2))
    return Apdu(0x06, 0x31, data)


def reversal(password: str, receipt: int) -> Apdu:
    """Reversal (06 30): password, 87 receipt number."""
    return Apdu(0x06, 0x30, _password(password) + bmp(0x87, bcd_encode(receipt, 2)))


def repeat_receipt(password: str) -> Apdu:
    """Repeat Receipt (06 20): the PT resends the Status-Information of its last transaction."""
    return Apdu(0x06, 0x20, _password(password))


def status_enquiry(password: str) -> Apdu:
    """Status Enquiry (05 01)."""
    return Apdu(0x05, 0x01, _password(password))


def log_off() -> Apdu:
    """Log Off (06 02)."""
    return Apdu(0x06, 0x02)


# -- message builders (PT -> ECR), for simulators ----------------------------------------------


def intermediate_status(code: int) -> Apdu:
    return Apdu(0x04, 0xFF, bytes([code]))


def status_information(fields: Iterable[tuple[int, bytes]]) -> Apdu:
    return Apdu(0x04, 0x0F, b"".join(bmp(tag, payload) for tag, payload in fields))


def completion(fields: Iterable[tuple[int, bytes]] = ()) -> Apdu:
    return Apdu(0x06, 0x0F, b"".join(bmp(tag, payload) for tag, payload in fields))


def abort(result_code: int) -> Apdu:
    return Apdu(0x06, 0x1E, bytes([result_code]))


# -- serial deframing ------------------------------------------------------------------------


@dataclass
class LinkStats:
    """Counters of line trouble, for health and tests."""

    frames_sent: int = 0
    retransmissions: int = 0
    naks_received: int = 0
    naks_sent: int = 0
    bad_frames: int = 0
    garbage_bytes: int = 0


@dataclass(frozen=True)
class FrameOk:
    apdu: bytes


@dataclass(frozen=True)
class FrameBad:
    reason: str


@dataclass(frozen=True)
class Control:
    """A lone ACK or NAK byte (``DLE ACK`` is accepted too)."""

    byte: int


FrameEvent = FrameOk | FrameBad | Control


class Deframer:
    """Incremental serial-frame parser: feed bytes, take events.

    Bytes outside a frame other than ACK/NAK are counted as garbage and dropped.
    A frame that is damaged (bad CRC, bad escape, too long) yields :class:`FrameBad`.
    """

    def __init__(self, stats: LinkStats | None = None) -> None:
        self._buf = bytearray()
        self.stats = stats if stats is not None else LinkStats()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def pending(self) -> bool:
        """True while unread bytes (maybe an unfinished frame) sit in the buffer."""
        return bool(self._buf)

    def in_frame(self) -> bool:
        """True if the buffer starts with DLE STX: a frame is arriving."""
        return self._buf[:2] == bytes([DLE, STX])

    def discard(self) -> None:
        """Drop everything buffered (an unfinished frame after the inter-byte timeout, or a flush)."""
        self.stats.garbage_bytes += len(self._buf)
        self._buf.clear()

    def skip_to_frame(self) -> Control | None:
        """Consume garbage up to the next ACK/NAK (returned) or frame start (left in place)."""
        buf = self._buf
        while buf:
            if buf[0] in (ACK, NAK):
                byte = buf.pop(0)
                return Control(byte)
            if buf[0] != DLE:
                del buf[0]
                self.stats.garbage_bytes += 1
                continue
            if len(buf) < 2 or buf[1] == STX:
                return None
            if buf[1] in (ACK, NAK):
                byte = buf[1]
                del buf[:2]
                return Control(byte)
            del buf[0]
            self.stats.garbage_bytes += 1
        return None

    def next_event(self) -> FrameEvent | None:
        """The next complete event, or None if more bytes are needed."""
        control = self.skip_to_frame()
        if control is not None:
            return control
        if not self.in_frame():
            return None
        return self._frame()

    def _frame(self) -> FrameEvent | None:
        buf = self._buf
        apdu = bytearray()
        i = 2
        while i < len(buf):
            if len(apdu) > MAX_APDU_DATA + 5:
                del buf[:i]
                return FrameBad("frame too long")
            byte = buf[i]
            if byte != DLE:
                apdu.append(byte)
                i += 1
                continue
            if i + 1 >= len(buf):
                return None
            follower = buf[i + 1]
            if follower == DLE:
                apdu.append(DLE)
                i += 2
            elif follower == ETX:
                if i + 4 > len(buf):
                    return None
                received = int.from_bytes(buf[i + 2 : i + 4], "little")
                del buf[: i + 4]
                if received != crc16(apdu + bytes([ETX])):
                    return FrameBad("CRC mismatch")
                return FrameOk(bytes(apdu))
            elif follower == STX:  # a new frame starts inside this one: drop the broken part
                del buf[:i]
                return FrameBad("frame interrupted by a new frame")
            else:
                del buf[: i + 2]
                return FrameBad(f"invalid byte {follower:02X} after DLE")
        return None


# -- links -------------------------------------------------------------------------------------


class Link(Protocol):
    """Moves whole APDUs over a transport."""

    stats: LinkStats

    def send(self, apdu: bytes) -> None: ...

    def receive(self, timeout: float) -> bytes | None:
        """The next APDU, or None if nothing arrived within ``timeout``."""
        ...

    def flush_input(self) -> None: ...

    def close(self) -> None: ...


def _read_some(transport: Transport, timeout: float) -> bytes:
    """Wait up to ``timeout`` for a byte, then take whatever else is already there."""
    first = transport.read(1, timeout)
    if not first:
        return b""
    return first + transport.read(4096, 0.0)


class SerialLink:
    """ZVT serial transport protocol: framing, CRC, ACK/NAK and repetition."""

    def __init__(self, transport: Transport, *, ack_timeout: float = T2, byte_timeout: float = BYTE_TIMEOUT,
                 max_repeats: int = MAX_REPEATS, stats: LinkStats | None = None) -> None:  # fmt: skip
        self.transport = transport
        self.ack_timeout = ack_timeout
        self.byte_timeout = byte_timeout
        self.max_repeats = max_repeats
        self.stats = stats if stats is not None else LinkStats()
        self._rx = Deframer(self.stats)
        self._last_byte = time.monotonic()

    def _pull(self, timeout: float) -> bool:
        data = _read_some(self.transport, timeout)
        if data:
            self._rx.feed(data)
            self._last_byte = time.monotonic()
        return bool(data)

    def send(self, apdu: bytes) -> None:
        """Send one frame and wait for ACK; repeat after NAK or silence, at most ``max_repeats`` times."""
        data = frame(apdu)
        for attempt in range(self.max_repeats + 1):
            if attempt:
                self.stats.retransmissions += 1
            self.transport.write(data)
            self.stats.frames_sent += 1
            reply = self._await_ack()
            if reply:
                return
            if reply is False:
                self.stats.naks_received += 1
        raise ZvtLinkError(f"no ACK for a frame after {self.max_repeats + 1} attempts")

    def _await_ack(self) -> bool | None:
        """True on ACK, False on NAK, None on silence.

        A frame from the peer counts as ACK: the line is half-duplex, so the peer
        only starts sending once it has taken our frame. The frame stays buffered.
        """
        deadline = time.monotonic() + self.ack_timeout
        while True:
            control = self._rx.skip_to_frame()
            if control is not None:
                return control.byte == ACK
            if self._rx.in_frame():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._pull(remaining)

    def receive(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        bad = 0
        while True:
            event = self._rx.next_event()
            if isinstance(event, FrameOk):
                if self.accept(event.apdu):
                    self.transport.write(bytes([ACK]))
                    return event.apdu
                event = FrameBad("frame refused")
            if isinstance(event, Control):
                continue  # a stray ACK/NAK means nothing here
            now = time.monotonic()
            if event is None and self._rx.in_frame() and now - self._last_byte > self.byte_timeout:
                self._rx.discard()
                event = FrameBad("incomplete frame")
            if isinstance(event, FrameBad):
                bad += 1
                self._refuse(event.reason)
                if bad > self.max_repeats:
                    raise ZvtFrameError(f"{bad} damaged frames in a row ({event.reason})")
                deadline = max(deadline, now + self.ack_timeout)  # give the peer time to repeat
                continue
            if self._rx.in_frame():  # finish the frame that started, whatever the deadline
                self._pull(max(0.001, self._last_byte + self.byte_timeout - now))
                continue
            if now >= deadline:
                return None
            self._pull(deadline - now)

    def accept(self, apdu: bytes) -> bool:
        """Hook for simulators: return False to NAK a good frame."""
        return True

    def _refuse(self, reason: str) -> None:
        log.debug("damaged frame from the peer (%s); sending NAK", reason)
        self.stats.bad_frames += 1
        self.stats.naks_sent += 1
        self.transport.write(bytes([NAK]))

    def flush_input(self) -> None:
        while self._pull(0.0):
            pass
        self._rx.discard()

    def close(self) -> None:
        self.transport.close()


class TcpLink:
    """ZVT over TCP: bare APDUs, delimited by their length field."""

    def __init__(self, transport: Transport, *, stats: LinkStats | None = None) -> None:
        self.transport = transport
        self.stats = stats if stats is not None else LinkStats()
        self._rx = bytearray()

    def send(self, apdu: bytes) -> None:
        self.transport.write(apdu)
        self.stats.frames_sent += 1

    def receive(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:
            if self._rx and self._rx[0] not in KNOWN_CLASSES:
                self.stats.garbage_bytes += len(self._rx)
                self._rx.clear()
                raise ZvtFrameError("unexpected bytes on the TCP stream; it is out of step")
            size = apdu_size(self._rx)
            if size is not None and len(self._rx) >= size:
                apdu = bytes(self._rx[:size])
                del self._rx[:size]
                return apdu
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._rx += _read_some(self.transport, remaining)

    def flush_input(self) -> None:
        while data := self.transport.read(4096, 0.0):
            self.stats.garbage_bytes += len(data)
        self.stats.garbage_bytes += len(self._rx)
        self._rx.clear()

    def close(self) -> None:
        self.transport.close()


class Framing(enum.StrEnum):
    """How APDUs travel: serial framing (RS-232, USB-serial, pty) or bare over TCP."""

    SERIAL = "serial"
    TCP = "tcp"


def make_link(transport: Transport, framing: Framing, *, ack_timeout: float = T2, byte_timeout: float = BYTE_TIMEOUT,
              max_repeats: int = MAX_REPEATS, stats: LinkStats | None = None) -> Link:  # fmt: skip
    """The link layer for ``framing`` on top of ``transport``."""
    if framing is Framing.SERIAL:
        return SerialLink(transport, ack_timeout=ack_timeout, byte_timeout=byte_timeout, max_repeats=max_repeats,
                          stats=stats)  # fmt: skip
    return TcpLink(transport, stats=stats)


# -- the driver --------------------------------------------------------------------------------


class _Timeout(ZvtLinkError):
    """No message within the time-out (T3 or T4)."""


@dataclass
class _Progress:
    written: bool = False
    accepted: bool = False


@dataclass
class _Flow:
    """Everything the terminal said while running one command."""

    status: TransactionInfo | None = None
    end: str = ""  # "completion" | "abort" | ""
    abort_code: int | None = None
    completion: TransactionInfo | None = None
    uncertain: bool = False
    stale_status: TransactionInfo | None = None
    stale_end: bool = False
    intermediate: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Pending:
    """A payment whose outcome is not known yet."""

    kind: str  # "authorization" | "refund"
    amount: int
    reference: str
    baseline: TransactionInfo | None


@dataclass(frozen=True)
class TerminalStatus:
    """Answer to a Status Enquiry."""

    code: int | None
    terminal_id: str

    @property
    def ready(self) -> bool:
        return self.code == RC_OK

    @property
    def message(self) -> str:
        return "ready" if self.ready else result_text(self.code)


def decide(amount: int, baseline: TransactionInfo | None, last: TransactionInfo | None) -> bool | None:
    """Was a payment of ``amount`` made, given the last transaction before and after it?

    True: the terminal's last transaction is a new approved one of that amount.
    False: nothing new was approved. None: the terminal gives nothing to tell them apart.
    """
    if last is None or not last.approved or last.amount != amount:
        return False
    if last.key is None:
        return None
    return baseline is None or baseline.key != last.key


class ZvtTerminal(Device):
    """A ZVT payment terminal over serial or TCP; implements ``PaymentTerminal``.

    ``connect`` opens a fresh :class:`Transport` (called again after the link drops).
    ``t3``/``t4`` are the spec's time-outs T3 and T4; ``ack_timeout`` (serial only,
    time-out T2) bounds the wait for the ACK/NAK byte after each frame and
    ``byte_timeout`` (T1) the gap between two bytes of a frame. Calls block; run them in
    an executor. One command runs at a time.
    """

    def __init__(
        self,
        connect: Callable[[], Transport],
        *,
        framing: Framing = Framing.SERIAL,
        name: str = "terminal",
        password: str = "000000",  # noqa: S107 - the terminals' published factory default, not a secret
        currency: str | None = None,
        t3: float = T3,
        t4: float = T4,
        ack_timeout: float | None = None,
        byte_timeout: float = BYTE_TIMEOUT,
        max_repeats: int = MAX_REPEATS,
        register: bool = True,
        config_byte: int = DEFAULT_CONFIG,
        resolve_attempts: int = 3,
        resolve_interval: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(name)
        _password(password)
        self._connect = connect
        self.framing = Framing(framing)
        self._password = password
        self.currency = currency.upper() if currency else None
        if self.currency is not None:
            _currency_numeric(self.currency)
        self.t3, self.t4 = t3, t4
        self.ack_timeout = T2 if ack_timeout is None else ack_timeout
        self.byte_timeout = byte_timeout
        self.max_repeats = max_repeats
        self.auto_register = register
        self.config_byte = config_byte
        self.resolve_attempts = max(1, resolve_attempts)
        self.resolve_interval = resolve_interval
        self._sleep = sleep
        self._io = threading.RLock()
        self._link: Link | None = None
        self._registered = False
        self._baseline: TransactionInfo | None = None
        self._baseline_known = False
        self._pending: Pending | None = None
        #: Approvals that turned up for a payment the till had already given up on; reverse them.
        self.unclaimed: list[CardResult] = []
        #: Line-trouble counters over all connections.
        self.stats = LinkStats()
        self._trouble_seen = 0

    # -- construction helpers

    @classmethod
    def serial(cls, port: str, baudrate: int = 9600, **kwargs: Any) -> ZvtTerminal:
        """A terminal on a serial port (8 data bits, no parity, 2 stop bits)."""
        from drivers.transport import SerialTransport

        def connect() -> Transport:
            return SerialTransport(port, baudrate, stopbits=2)

        return cls(connect, framing=Framing.SERIAL, **kwargs)

    @classmethod
    def tcp(cls, host: str, port: int = DEFAULT_TCP_PORT, **kwargs: Any) -> ZvtTerminal:
        """A terminal on the network."""

        def connect() -> Transport:
            return TcpTransport(host, port)

        return cls(connect, framing=Framing.TCP, **kwargs)

    # -- public API

    @property
    def pending(self) -> Pending | None:
        """A payment sent to the terminal whose outcome is still unknown."""
        return self._pending

    def authorize(self, amount: int, currency: str, reference: str) -> CardResult:
        """Charge ``amount`` minor units; returns approval details, never a card number."""
        cc = self._currency_for(currency)
        return self._financial("authorization", authorization(amount, cc), amount, reference)

    def refund(self, amount: int, currency: str, reference: str) -> CardResult:
        """Pay ``amount`` back to the customer's card."""
        cc = self._currency_for(currency)
        return self._financial("refund", refund(self._password, amount, cc), amount, reference)

    def reverse(self, reference: str) -> CardResult:
        """Cancel an approved payment by its receipt number.

        Repeating a reversal is harmless (the terminal answers "already reversed",
        which counts as success), so a lost answer raises a retryable error.
        A refused reversal raises :class:`PaymentDeclined`.
        """
        receipt = parse_reference(reference)
        with self._io:
            self._check_open()
            self._settle_pending(None)
            progress = _Progress()
            try:
                flow = self._run(reversal(self._password, receipt), progress)
            except ZvtRejected as exc:
                self.set_health(Health.DEGRADED, str(exc))
                raise
            except (ZvtError, DeviceUnavailable) as exc:
                self._drop_link()
                if progress.written:
                    self._baseline_known = False  # the terminal's last transaction may have changed
                self.set_health(Health.UNAVAILABLE, f"reversal interrupted: {exc}")
                raise ZvtLinkError(f"reversal of receipt {receipt} interrupted; it is safe to retry: {exc}") from exc
            code = flow.status.result_code if flow.status else None
            if flow.end == "abort":
                code = flow.abort_code if flow.abort_code is not None else code
            self._healthy()
            if flow.end == "completion" and flow.status is not None and flow.status.approved:
                self._baseline, self._baseline_known = flow.status, True
                log.info("reversed receipt %d", receipt)
                return CardResult(True, flow.status.amount or 0, flow.status.reference,
                                  flow.status.approval_code, flow.status.card_name, "reversed")  # fmt: skip
            if code == RC_ALREADY_REVERSED:
                return CardResult(True, 0, reference, message="already reversed")
            if flow.end == "completion" and flow.status is None:
                self._baseline_known = False
            raise PaymentDeclined(f"terminal refused to reverse receipt {receipt}: {result_text(code)}")

    def last_transaction(self) -> TransactionInfo | None:
        """The terminal's last transaction (Repeat Receipt), or None if it has none."""
        with self._io:
            self._check_open()
            try:
                return self._query_last()
            except (ZvtError, DeviceUnavailable) as exc:
                self._fail(exc)
                raise

    def status(self) -> TerminalStatus:
        """Status Enquiry (05 01): is the terminal ready?"""
        with self._io:
            self._check_open()
            try:
                flow = self._run(status_enquiry(self._password), _Progress())
            except (ZvtError, DeviceUnavailable) as exc:
                self._fail(exc)
                raise
            info = flow.status or TransactionInfo()
            code = info.result_code if flow.end == "completion" else flow.abort_code
            self._healthy()
            return TerminalStatus(code, info.terminal_id)

    def register(self) -> str:
        """Registration (06 00); returns the terminal ID if the terminal tells it."""
        with self._io:
            self._check_open()
            try:
                return self._register()
            except (ZvtError, DeviceUnavailable) as exc:
                self._fail(exc)
                raise

    def log_off(self) -> None:
        """Log Off (06 02)."""
        with self._io:
            if self._link is None:
                return
            try:
                self._run(log_off(), _Progress(), until_end=False)
            except (ZvtError, DeviceUnavailable) as exc:
                log.debug("log off failed: %s", exc)
            self._registered = False

    def resolve(self) -> CardResult | None:
        """Ask the terminal about the pending payment; None if there is none."""
        with self._io:
            self._check_open()
            if self._pending is None:
                return None
            return self._resolve_pending()

    def close(self) -> None:
        with self._io:
            self._drop_link()
            super().close()

    # -- payments

    def _financial(self, kind: str, command: Apdu, amount: int, reference: str) -> CardResult:
        with self._io:
            self._check_open()
            earlier = self._settle_pending((kind, amount, reference))
            if earlier is not None:
                return earlier
            self._ensure_baseline()
            baseline = self._baseline
            progress = _Progress()
            try:
                flow = self._run(command, progress)
            except ZvtRejected as exc:
                self.set_health(Health.DEGRADED, str(exc))
                raise
            except (ZvtError, DeviceUnavailable) as exc:
                self._drop_link()
                if not progress.written:
                    self.set_health(Health.UNAVAILABLE, str(exc))
                    raise ZvtLinkError(f"terminal unreachable; nothing was charged: {exc}") from exc
                log.warning("%s of %d for %s: answer lost (%s); asking the terminal", kind, amount, reference, exc)
                return self._ambiguous(Pending(kind, amount, reference, baseline), str(exc))
            status = flow.status
            if flow.uncertain or (flow.end == "completion" and (status is None or status.result_code is None)):
                return self._ambiguous(Pending(kind, amount, reference, baseline), "unreadable answer")
            if flow.end == "completion" and status is not None and status.approved:
                if status.key is not None and baseline is not None and status.key == baseline.key:
                    return self._ambiguous(Pending(kind, amount, reference, baseline), "stale status information")
                self._baseline, self._baseline_known = status, True
                self._healthy()
                log.info("%s approved: receipt %s trace %s", kind, status.receipt, status.trace)
                return _approved(status, amount)
            code = flow.abort_code if flow.end == "abort" else (status.result_code if status else None)
            if flow.end == "abort" and code is None and status is not None:
                code = status.result_code
            self._healthy()
            log.info("%s declined: %s", kind, result_text(code))
            return CardResult(False, 0, message=result_text(code))

    def _ambiguous(self, pending: Pending, why: str) -> CardResult:
        self._pending = pending
        self.set_health(Health.UNAVAILABLE, f"outcome of the {pending.kind} unknown ({why}); checking")
        return self._resolve_pending()

    def _settle_pending(self, claim: tuple[str, int, str] | None) -> CardResult | None:
        """Resolve an earlier unknown payment first; returns it if ``claim`` is that same payment."""
        pending = self._pending
        if pending is None:
            return None
        result = self._resolve_pending()
        if claim == (pending.kind, pending.amount, pending.reference):
            if result.approved:
                return result
            return None
        if result.approved:
            log.warning("a %s of %d for %s was approved after the till gave up on it; reverse %s",
                        pending.kind, pending.amount, pending.reference, result.reference)  # fmt: skip
            self.unclaimed.append(result)
        return None

    def _resolve_pending(self) -> CardResult:
        pending = self._pending
        assert pending is not None
        last: TransactionInfo | None = None
        error: Exception | None = None
        for attempt in range(self.resolve_attempts):
            if attempt:
                self._sleep(self.resolve_interval)
            try:
                last = self._query_last()
            except (ZvtError, DeviceUnavailable) as exc:
                self._drop_link()
                error = exc
                continue
            error = None
            break
        if error is not None:
            self.set_health(Health.UNAVAILABLE, f"cannot reach the terminal: {error}")
            raise ZvtOutcomeUnknown(
                f"outcome of the {pending.kind} for {pending.reference} is unknown; "
                f"do not charge again, check the terminal: {error}"
            ) from error
        verdict = decide(pending.amount, pending.baseline, last)
        if verdict is None:
            raise ZvtOutcomeUnknown(
                f"terminal's last transaction cannot be matched to the {pending.kind} for {pending.reference}; "
                "check the terminal journal before charging again"
            )
        self._pending = None
        self._baseline, self._baseline_known = last, True
        self.set_health(Health.DEGRADED, "recovered from a lost terminal answer")
        if verdict and last is not None:
            log.info("%s for %s was approved after all: receipt %s", pending.kind, pending.reference, last.receipt)
            return _approved(last, pending.amount)
        log.info("%s for %s did not happen on the terminal", pending.kind, pending.reference)
        return CardResult(False, 0, message="terminal did not complete the payment; nothing was charged")

    def _ensure_baseline(self) -> None:
        """Learn the terminal's last transaction once, to tell a new one from it later."""
        if self._baseline_known:
            return
        try:
            self._baseline = self._query_last()
        except ZvtRejected as exc:
            log.warning("terminal cannot repeat its last receipt (%s); lost answers cannot be resolved", exc)
            self._baseline = None
        except (ZvtError, DeviceUnavailable) as exc:
            self._fail(exc)
            raise ZvtLinkError(f"terminal unreachable; nothing was charged: {exc}") from exc
        self._baseline_known = True

    def _query_last(self) -> TransactionInfo | None:
        flow = _Flow()
        try:
            flow = self._run(repeat_receipt(self._password), _Progress(), flow=flow)
        except _Timeout:
            # The terminal was still finishing the previous transaction and dropped our command;
            # what it sent while finishing is the last transaction.
            if flow.stale_status is not None and flow.stale_end:
                return flow.stale_status
            raise
        if flow.uncertain:
            raise ZvtFrameError("unreadable answer to Repeat Receipt")
        if flow.end == "completion" and flow.status is not None:
            return flow.status
        if flow.stale_status is not None and flow.stale_end:
            return flow.stale_status
        return None  # abort: the terminal has no receipt to repeat

    def _register(self) -> str:
        cc = _currency_numeric(self.currency) if self.currency else None
        flow = self._run(registration(self._password, self.config_byte, cc), _Progress(), register=False)
        if flow.end == "abort":
            raise ZvtRejected(flow.abort_code if flow.abort_code is not None else RC_NOT_POSSIBLE, "registration")
        self._registered = True
        info = flow.completion or TransactionInfo()
        return info.terminal_id

    # -- the message loop

    def _ensure_link(self) -> Link:
        if self._link is None:
            transport = self._connect()
            self._link = make_link(
                transport, self.framing, ack_timeout=self.ack_timeout, byte_timeout=self.byte_timeout,
                max_repeats=self.max_repeats, stats=self.stats,
            )  # fmt: skip
            self._registered = False
        return self._link

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        self._registered = False
        if link is not None:
            try:
                link.close()
            except OSError as exc:  # pragma: no cover - closing a dead port
                log.debug("closing the terminal link failed: %s", exc)

    def _run(self, command: Apdu, progress: _Progress, *, until_end: bool = True, register: bool = True,
             flow: _Flow | None = None) -> _Flow:  # fmt: skip
        """Send ``command`` and follow the terminal until Completion or Abort."""
        link = self._ensure_link()
        try:
            link.flush_input()
        except DeviceUnavailable:  # the idle connection died (a TCP terminal closed it): open a new one
            self._drop_link()
            link = self._ensure_link()
        if register and self.auto_register and not self._registered:
            self._register()
            link.flush_input()
        flow = flow if flow is not None else _Flow()
        progress.written = True
        link.send(command.encode())
        deadline = time.monotonic() + self.t3
        while True:  # wait for 80 00 / 84 xx
            msg = self._next(link, deadline, flow, "acknowledgement")
            if msg is None:
                continue
            if is_positive_ack(msg):
                break
            if msg.klass == 0x84:
                raise ZvtRejected(msg.instr, _command_name(command))
            # The terminal is still finishing something older; take it in and keep waiting.
            self._absorb(link, msg, flow, stale=True)
        progress.accepted = True
        if not until_end:
            return flow
        deadline = time.monotonic() + self.t4
        while not flow.end:
            msg = self._next(link, deadline, flow, "answer")
            deadline = time.monotonic() + self.t4
            if msg is not None:
                self._absorb(link, msg, flow, stale=False)
        return flow

    def _next(self, link: Link, deadline: float, flow: _Flow, what: str) -> Apdu | None:
        raw = link.receive(max(0.0, deadline - time.monotonic()))
        if raw is None:
            raise _Timeout(f"no {what} from the terminal in time")
        try:
            return Apdu.decode(raw)
        except ZvtFrameError as exc:
            log.warning("unreadable message from the terminal: %s", exc)
            flow.uncertain = True
            link.send(POSITIVE_ACK.encode())
            return None

    def _absorb(self, link: Link, msg: Apdu, flow: _Flow, *, stale: bool) -> None:
        """Handle one message the terminal sent as master, and acknowledge it."""
        control = msg.control
        reply: Apdu = POSITIVE_ACK
        if msg.klass in (0x80, 0x84):
            return  # a late or repeated acknowledgement: acknowledgements are never acknowledged
        if control == INTERMEDIATE_STATUS:
            if msg.data:
                flow.intermediate.append(msg.data[0])
        elif control == STATUS_INFORMATION:
            info: TransactionInfo | None = None
            try:
                info = TransactionInfo.parse(msg)
            except ZvtFrameError as exc:
                log.warning("unreadable status information: %s", exc)
                flow.uncertain = True
            if stale:
                flow.stale_status = info
            else:
                flow.status = info
        elif control == COMPLETION:
            if stale:
                flow.stale_end = True
            else:
                flow.end = "completion"
                try:
                    flow.completion = TransactionInfo.parse(msg)
                except ZvtFrameError:
                    flow.completion = None
        elif control == ABORT:
            if stale:
                flow.stale_end = True
            else:
                flow.end = "abort"
                flow.abort_code = msg.data[0] if msg.data else None
        elif control not in (PRINT_LINE, PRINT_TEXT_BLOCK):
            reply = negative_ack(RC_NOT_POSSIBLE)
        link.send(reply.encode())

    # -- helpers

    def _check_open(self) -> None:
        if self.closed:
            raise DeviceUnavailable(f"{self.name} is closed")

    def _currency_for(self, currency: str) -> int:
        code = currency.upper()
        if self.currency is not None and code != self.currency:
            raise InputError(f"{self.name} is set up for {self.currency}, not {code}")
        return _currency_numeric(code)

    def _healthy(self) -> None:
        """After a finished exchange: OK, or DEGRADED if frames had to be repeated meanwhile."""
        trouble = self.stats.retransmissions + self.stats.bad_frames
        if trouble > self._trouble_seen:
            self._trouble_seen = trouble
            self.set_health(Health.DEGRADED, "line errors; frames had to be repeated")
        elif self._pending is None:
            self.set_health(Health.OK)

    def _fail(self, exc: BaseException) -> None:
        self._drop_link()
        self.set_health(Health.UNAVAILABLE, str(exc))


def _approved(info: TransactionInfo, requested: int) -> CardResult:
    return CardResult(
        approved=True,
        amount=info.amount if info.amount is not None else requested,
        reference=info.reference,
        approval_code=info.approval_code,
        scheme=info.card_name,
        message="approved",
    )


def _currency_numeric(code: str) -> int:
    try:
        return CURRENCY_NUMERIC[code.upper()]
    except KeyError:
        raise InputError(f"currency {code} is not supported by the ZVT driver") from None


def _command_name(command: Apdu) -> str:
    return {
        REGISTRATION: "registration", AUTHORIZATION: "authorization", LOG_OFF: "log off",
        REPEAT_RECEIPT: "repeat receipt", REVERSAL: "reversal", REFUND: "refund",
        STATUS_ENQUIRY: "status enquiry",
    }.get(command.control, f"command {command.klass:02X} {command.instr:02X}")  # fmt: skip
