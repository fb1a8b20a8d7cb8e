"""The companion wire codec, byte for byte, on CPython and on the MicroPython unix port."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.companion import protocol as proto
from drivers.companion.build import firmware_sources, tool_command

# -- CRC and frames: golden bytes ----------------------------------------------------------------


def test_crc_is_ccitt_false() -> None:
    # The catalogued check value of CRC-16/CCITT-FALSE.
    assert proto.crc16(b"123456789") == 0x29B1
    assert proto.crc16(b"") == 0xFFFF


def test_hello_frame_golden_bytes() -> None:
    # body 01 07 01 01 0B B8 (hello, seq 7, v1..v1, 3000 ms); CRC computed independently above.
    body = bytes([0x01, 0x07, 0x01, 0x01, 0x0B, 0xB8])
    crc = proto.crc16(body)
    frame = proto.encode(proto.HELLO, 7, proto.pack_hello(1, 1, 3000))
    assert frame == b":010701010BB8" + f"{crc:04X}".encode() + b"\n"
    assert frame == b":010701010BB897C9\n"


def test_frames_are_ascii_without_ctrl_c() -> None:
    frame = proto.encode(proto.SET_LIGHTS, 3, bytes(range(46)))
    assert frame.isascii()
    assert b"\x03" not in frame


def test_encode_rejects_out_of_range_fields() -> None:
    with pytest.raises(ValueError):
        proto.encode(256, 0)
    with pytest.raises(ValueError):
        proto.encode(proto.ACK, 0, bytes(proto.MAX_BODY - 1))


# -- decoder ------------------------------------------------------------------------------------


def test_decoder_skips_noise_and_recovers_after_truncation() -> None:
    good = proto.encode(proto.EVENT, 9, proto.pack_event(0, True, 4))
    decoder = proto.Decoder()
    stream = b"MPY: soft reboot\r\n" + good[:7] + good + b":zz11\n" + good[:-3] + b"\n" + good
    assert decoder.feed(stream) == [(proto.EVENT, 9, b"\x00\x01\x04")] * 2
    # "MPY" is noise; its ':' opens a frame the CR ends (dropped), then the LF is noise. Then:
    # cut short by a new ':', not hex, wrong length (tail missing).
    assert decoder.dropped == 4
    assert decoder.noise == len(b"MPY") + 1


def test_decoder_handles_frames_split_anywhere() -> None:
    frames = [proto.encode(proto.STATUS, n, proto.pack_status(0, [True, False], [n, 2])) for n in range(3)]
    stream = b"".join(frames)
    decoder = proto.Decoder()
    out = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert [seq for _, seq, _ in out] == [0, 1, 2]


def test_decoder_drops_overlong_frames() -> None:
    decoder = proto.Decoder()
    assert decoder.feed(b":" + b"00" * 200 + b"\n" + proto.encode(proto.ACK, 1)) == [(proto.ACK, 1, b"")]
    assert decoder.dropped == 1


def test_single_bit_errors_are_caught() -> None:
    frame = proto.encode(proto.PULSE, 5, proto.pack_pulse(0, 120))
    hexdigits = b"0123456789ABCDEF"
    for pos in range(1, len(frame) - 1):
        for digit in hexdigits:
            if digit == frame[pos]:
                continue
            corrupted = frame[:pos] + bytes([digit]) + frame[pos + 1 :]
            assert proto.Decoder().feed(corrupted) == [], corrupted


@given(st.binary(max_size=300))
def test_garbage_never_raises_and_never_yields_a_frame_by_accident(data: bytes) -> None:
    decoder = proto.Decoder()
    frames = decoder.feed(data)
    # A frame can come out only if the garbage contains a self-consistent one.
    for kind, seq, payload in frames:
        assert proto.encode(kind, seq, payload).rstrip(b"\n")[1:] in data.upper()


@given(
    st.lists(
        st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=proto.MAX_BODY - 2)),
        max_size=5,
    ),
    st.binary(max_size=40).filter(lambda b: b":" not in b),
)
def test_frames_survive_interleaved_noise(frames: list[tuple[int, int, bytes]], noise: bytes) -> None:
    stream = b"".join(noise + proto.encode(k, s, p) for k, s, p in frames)
    assert proto.Decoder().feed(stream) == frames


# -- payloads -----------------------------------------------------------------------------------


def test_payload_round_trips() -> None:
    assert proto.unpack_hello(proto.pack_hello(1, 2, 60000)) == (1, 2, 60000)
    assert proto.unpack_welcome(proto.pack_welcome(1, 3, 1, 2, 500, "tbc 1.0")) == (1, 3, 1, 2, 500, "tbc 1.0")
    assert proto.unpack_lights(proto.pack_lights([(1, 0), (2, 700), (3, 2000)])) == [(1, 0), (2, 700), (3, 2000)]
    assert proto.unpack_pulse(proto.pack_pulse(0, 150)) == (0, 150)
    assert proto.unpack_status(proto.pack_status(1, [False, True], [255, 256])) == (1, [False, True], [255, 0])
    assert proto.unpack_event(proto.pack_event(1, False, 7)) == (1, False, 7)
    assert proto.unpack_nak(proto.pack_nak(proto.E_VERSION, 2)) == (proto.E_VERSION, 2)
    assert proto.unpack_nak(proto.pack_nak(proto.E_BUSY)) == (proto.E_BUSY, 0)
    state = proto.pack_sim_state(True, 70000, [(65535, 3)], [(1, 2, 100)])
    assert proto.unpack_sim_state(state) == (True, 70000 & 0xFFFF, [(65535, 3)], [(1, 2, 100)])


def test_lights_golden_bytes() -> None:
    # red off, amber blink 1000 ms (0x03E8), green steady
    assert proto.pack_lights([(0, 0), (2, 1000), (1, 0)]) == bytes.fromhex("000000 0203E8 010000")


@pytest.mark.parametrize(
    ("unpack", "payload"),
    [
        (proto.unpack_hello, b"\x01\x01"),
        (proto.unpack_welcome, b"\x01"),
        (proto.unpack_lights, b"\x01\x00"),
        (proto.unpack_pulse, b""),
        (proto.unpack_status, b"\x00"),
        (proto.unpack_status, bytes(11)),
        (proto.unpack_event, b"\x00\x05\x01"),
        (proto.unpack_nak, b""),
        (proto.unpack_boot, b""),
        (proto.unpack_sim_state, b"\x00\x00\x00\x01\x00"),
    ],
)
def test_malformed_payloads_raise_value_error(unpack: Callable[[bytes], object], payload: bytes) -> None:
    with pytest.raises(ValueError):
        unpack(payload)


def test_light_validation() -> None:
    assert proto.light_error(proto.P_STEADY, 0) == 0
    assert proto.light_error(proto.P_BLINK, 500) == 0
    assert proto.light_error(proto.P_BLINK, 50) == proto.E_RANGE
    assert proto.light_error(proto.P_PULSE, 20000) == proto.E_RANGE
    assert proto.light_error(9, 0) == proto.E_RANGE


# -- the same file on MicroPython ---------------------------------------------------------------

MP_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import tbc_proto as p
frames = [p.encode(p.HELLO, 7, p.pack_hello(1, 1, 3000)).decode(),
          p.encode(p.SET_LIGHTS, 200, p.pack_lights([(0, 0), (2, 1000), (3, 2500)])).decode(),
          p.encode(p.STATUS, 0, p.pack_status(1, [True, False], [3, 300])).decode(),
          p.encode(p.WELCOME, 1, p.pack_welcome(1, 3, 1, 2, 300, "tbc")).decode()]
d = p.Decoder()
got = d.feed(b"noise" + frames[0].encode()[:9] + "".join(frames).encode())
print(json.dumps({"crc": p.crc16(b"123456789"), "frames": frames,
                  "decoded": [[k, s, list(pl)] for k, s, pl in got], "dropped": d.dropped}))
"""


def test_micropython_runs_the_same_codec(tmp_path: Path) -> None:
    try:
        command = tool_command("micropython_unix", "micropython")
    except Exception as exc:
        pytest.skip(f"MicroPython unix port not installed: {exc}")
    staged = tmp_path / "tbc_proto.py"
    staged.write_bytes(firmware_sources()["tbc_proto.py"].read_bytes())
    result = subprocess.run(
        [*command, "-c", MP_SCRIPT, str(staged.parent)], capture_output=True, timeout=30, check=True
    )
    out = json.loads(result.stdout)
    expected = [
        proto.encode(proto.HELLO, 7, proto.pack_hello(1, 1, 3000)),
        proto.encode(proto.SET_LIGHTS, 200, proto.pack_lights([(0, 0), (2, 1000), (3, 2500)])),
        proto.encode(proto.STATUS, 0, proto.pack_status(1, [True, False], [3, 300])),
        proto.encode(proto.WELCOME, 1, proto.pack_welcome(1, 3, 1, 2, 300, "tbc")),
    ]
    assert out["crc"] == 0x29B1
    assert [f.encode() for f in out["frames"]] == expected
    assert [(k, s, bytes(p)) for k, s, p in out["decoded"]] == proto.Decoder().feed(b"".join(expected))
    assert out["dropped"] == 1
