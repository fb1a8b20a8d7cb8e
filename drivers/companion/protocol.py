"""Wire protocol of the companion board, shared verbatim by the host (CPython) and the firmware.

This file runs unchanged on MicroPython (it is copied to the board as ``tbc_proto``), so it
uses only ``binascii`` and ``struct``, builtin types in annotations, and no ``__future__``.

A frame is one ASCII line: ``:`` + hex(body) + hex(CRC) + ``\\n``, where body is
``kind seq payload...`` (bytes) and CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF)
of the body, big-endian. Being ASCII, a frame never contains 0x03 (Ctrl-C), so ``mpremote``
can still interrupt the firmware; anything between frames (a REPL banner, a traceback) is
noise the decoder skips. A new ``:`` abandons a truncated frame.

Host requests carry a sequence number that the reply echoes; the board's unsolicited
frames (BOOT, EVENT) carry its own counter. Multi-byte integers are big-endian.
"""

import binascii
import struct

VERSION = 1
MIN_VERSION = 1
MAX_BODY = 48  # bytes of kind + seq + payload

START = 0x3A  # ':'
CR = 0x0D
LF = 0x0A

# host -> board
HELLO = 0x01  # min_version u8, max_version u8, heartbeat_timeout_ms u16
SET_LIGHTS = 0x02  # per light channel: pattern u8, period_ms u16
PULSE = 0x03  # output u8, duration_ms u16
HEARTBEAT = 0x04  # empty; answered by STATUS

# simulator control link only (never accepted on the host link)
SIM_INPUT = 0x70  # input u8, active u8
SIM_PEEK = 0x71  # empty; answered by SIM_STATE
SIM_EMIT = 0x72  # raw bytes the board writes verbatim to the host link
SIM_STATE = 0xF0

# board -> host
ACK = 0x80  # empty
WELCOME = 0x81  # version u8, lights u8, outputs u8, inputs u8, heartbeat_timeout_ms u16, firmware ascii
BOOT = 0x82  # version u8, firmware ascii (unsolicited, once at start)
STATUS = 0x84  # flags u8, active-inputs bitmap u8, then one activation counter u8 per input
EVENT = 0x90  # input u8, active u8, counter u8 (unsolicited)
NAK = 0xFF  # error u8 (+ version u8 for E_VERSION)

# NAK errors
E_UNKNOWN = 1
E_PAYLOAD = 2
E_RANGE = 3
E_BUSY = 4
E_VERSION = 5

# STATUS flags
F_FELL_BACK = 0x01  # the heartbeat was lost since the last STATUS (latched until reported)

# light patterns
P_OFF = 0
P_STEADY = 1
P_BLINK = 2
P_PULSE = 3
PATTERNS = (P_OFF, P_STEADY, P_BLINK, P_PULSE)

MIN_PERIOD_MS = 100
MAX_PERIOD_MS = 10000
MIN_PULSE_MS = 10
MAX_PULSE_MS = 2000
MIN_HEARTBEAT_MS = 50
MAX_HEARTBEAT_MS = 60000


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (check value 0x29B1 for ``b"123456789"``)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def encode(kind: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame, ready to write; raises ValueError for out-of-range fields."""
    if not 0 <= kind <= 255 or not 0 <= seq <= 255:
        raise ValueError("kind and seq must be bytes")
    body = bytes([kind, seq]) + bytes(payload)
    if len(body) > MAX_BODY:
        raise ValueError("frame body too long")
    return b":" + binascii.hexlify(body + struct.pack(">H", crc16(body))).upper() + b"\n"


class Decoder:
    """Splits a byte stream into ``(kind, seq, payload)`` frames, skipping what is not one.

    ``dropped`` counts started frames that were cut short, too long, not hex or failed the
    CRC; ``noise`` counts bytes outside any frame.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._inside = False
        self.dropped = 0
        self.noise = 0

    def reset(self) -> None:
        """Forget a partial frame (after reconnecting)."""
        self._buf = bytearray()
        self._inside = False

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Frames completed by ``data``, in order."""
        frames: list[tuple[int, int, bytes]] = []
        limit = 2 * (MAX_BODY + 2)
        for byte in data:
            if byte == START:
                if self._inside:
                    self.dropped += 1
                self._buf = bytearray()
                self._inside = True
            elif not self._inside:
                self.noise += 1
            elif byte in (LF, CR):
                self._inside = False
                frame = self._parse(bytes(self._buf))
                self._buf = bytearray()
                if frame is None:
                    self.dropped += 1
                else:
                    frames.append(frame)
            elif len(self._buf) >= limit:
                self._inside = False
                self._buf = bytearray()
                self.dropped += 1
            else:
                self._buf.append(byte)
        return frames

    @staticmethod
    def _parse(text: bytes) -> tuple[int, int, bytes] | None:
        if len(text) < 8 or len(text) % 2:
            return None
        try:
            raw = binascii.unhexlify(text)
        except ValueError:
            return None
        body = raw[:-2]
        if crc16(body) != (raw[-2] << 8 | raw[-1]):
            return None
        return body[0], body[1], bytes(body[2:])


# -- payloads -------------------------------------------------------------------------------------


def pack_hello(min_version: int, max_version: int, heartbeat_ms: int) -> bytes:
    return struct.pack(">BBH", min_version, max_version, heartbeat_ms)


def unpack_hello(payload: bytes) -> tuple[int, int, int]:
    """``(min_version, max_version, heartbeat_ms)``; ValueError when malformed."""
    if len(payload) != 4:
        raise ValueError("hello payload is 4 bytes")
    lo, hi, heartbeat_ms = struct.unpack(">BBH", payload)
    return lo, hi, heartbeat_ms


def pack_welcome(version: int, lights: int, outputs: int, inputs: int, heartbeat_ms: int, firmware: str) -> bytes:
    return struct.pack(">BBBBH", version, lights, outputs, inputs, heartbeat_ms) + firmware.encode()[:24]


def unpack_welcome(payload: bytes) -> tuple[int, int, int, int, int, str]:
    """``(version, lights, outputs, inputs, heartbeat_ms, firmware)``; ValueError when malformed."""
    if len(payload) < 6:
        raise ValueError("welcome payload is at least 6 bytes")
    version, lights, outputs, inputs, heartbeat_ms = struct.unpack(">BBBBH", payload[:6])
    return version, lights, outputs, inputs, heartbeat_ms, _text(payload[6:])


def pack_boot(version: int, firmware: str) -> bytes:
    return bytes([version]) + firmware.encode()[:24]


def unpack_boot(payload: bytes) -> tuple[int, str]:
    if not payload:
        raise ValueError("boot payload is at least 1 byte")
    return payload[0], _text(payload[1:])


def pack_lights(lights: list[tuple[int, int]]) -> bytes:
    """``lights`` is ``[(pattern, period_ms), ...]``, channel 0 first."""
    out = b""
    for pattern, period_ms in lights:
        out += struct.pack(">BH", pattern, period_ms)
    return out


def unpack_lights(payload: bytes) -> list[tuple[int, int]]:
    """Inverse of :func:`pack_lights`; ValueError when malformed (ranges are the caller's job)."""
    if len(payload) % 3:
        raise ValueError("light payload is 3 bytes per channel")
    lights = []
    for i in range(0, len(payload), 3):
        pattern, period_ms = struct.unpack(">BH", payload[i : i + 3])
        lights.append((pattern, period_ms))
    return lights


def light_error(pattern: int, period_ms: int) -> int:
    """0 when ``(pattern, period_ms)`` is a valid light setting, else a NAK error code."""
    if pattern not in PATTERNS:
        return E_RANGE
    if pattern in (P_BLINK, P_PULSE) and not MIN_PERIOD_MS <= period_ms <= MAX_PERIOD_MS:
        return E_RANGE
    return 0


def pack_pulse(output: int, duration_ms: int) -> bytes:
    return struct.pack(">BH", output, duration_ms)


def unpack_pulse(payload: bytes) -> tuple[int, int]:
    if len(payload) != 3:
        raise ValueError("pulse payload is 3 bytes")
    output, duration_ms = struct.unpack(">BH", payload)
    return output, duration_ms


def pack_status(flags: int, active: list[bool], counters: list[int]) -> bytes:
    bits = 0
    for i, on in enumerate(active):
        if on:
            bits |= 1 << i
    return bytes([flags, bits]) + bytes([c & 0xFF for c in counters])


def unpack_status(payload: bytes) -> tuple[int, list[bool], list[int]]:
    """``(flags, active per input, counter per input)``; ValueError when malformed."""
    if len(payload) < 2 or len(payload) - 2 > 8:
        raise ValueError("status payload is 2 bytes plus up to 8 counters")
    counters = list(payload[2:])
    active = [bool(payload[1] >> i & 1) for i in range(len(counters))]
    return payload[0], active, counters


def pack_event(index: int, active: bool, counter: int) -> bytes:
    return bytes([index, 1 if active else 0, counter & 0xFF])


def unpack_event(payload: bytes) -> tuple[int, bool, int]:
    if len(payload) != 3 or payload[1] > 1:
        raise ValueError("event payload is 3 bytes")
    return payload[0], payload[1] == 1, payload[2]


def pack_nak(error: int, version: int = 0) -> bytes:
    return bytes([error, version]) if error == E_VERSION else bytes([error])


def unpack_nak(payload: bytes) -> tuple[int, int]:
    """``(error, version)``; version is the board's for E_VERSION, else 0."""
    if not payload:
        raise ValueError("nak payload is at least 1 byte")
    return payload[0], payload[1] if len(payload) > 1 else 0


def pack_sim_state(
    fallback: bool, dropped: int, lights: list[tuple[int, int]], outputs: list[tuple[int, int, int]]
) -> bytes:
    """Simulator snapshot: lights as ``(duty_u16, toggles)``, outputs as ``(level, pulses, last_ms)``."""
    out = struct.pack(">BH", 1 if fallback else 0, dropped & 0xFFFF) + bytes([len(lights), len(outputs)])
    for duty, toggles in lights:
        out += struct.pack(">HH", duty, toggles & 0xFFFF)
    for level, pulses, last_ms in outputs:
        out += struct.pack(">BHH", level, pulses & 0xFFFF, last_ms & 0xFFFF)
    return out


def unpack_sim_state(payload: bytes) -> tuple[bool, int, list[tuple[int, int]], list[tuple[int, int, int]]]:
    if len(payload) < 5:
        raise ValueError("sim state payload is at least 5 bytes")
    fallback, dropped = struct.unpack(">BH", payload[:3])
    n_lights, n_outputs = payload[3], payload[4]
    if len(payload) != 5 + 4 * n_lights + 5 * n_outputs:
        raise ValueError("sim state payload has the wrong length")
    lights = []
    pos = 5
    for _ in range(n_lights):
        duty, toggles = struct.unpack(">HH", payload[pos : pos + 4])
        lights.append((duty, toggles))
        pos += 4
    outputs = []
    for _ in range(n_outputs):
        level, pulses, last_ms = struct.unpack(">BHH", payload[pos : pos + 5])
        outputs.append((level, pulses, last_ms))
        pos += 5
    return fallback == 1, dropped, lights, outputs


def _text(raw: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in raw)
