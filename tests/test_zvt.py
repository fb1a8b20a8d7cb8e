"""ZVT codec: golden frames, BCD, length encoding, DLE doubling, CRC, BMP parsing, link layer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import DeviceUnavailable, InputError
from drivers import zvt
from drivers.transport import LoopbackTransport
from drivers.zvt import (
    Apdu,
    Control,
    Deframer,
    FrameBad,
    FrameOk,
    SerialLink,
    TcpLink,
    TransactionInfo,
    ZvtFrameError,
    ZvtLinkError,
)


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


# -- CRC and golden frames ---------------------------------------------------------------------


def test_crc_is_crc16_kermit() -> None:
    # The catalogue check value of CRC-16/KERMIT (reflected 0x1021, init 0, no final xor).
    assert zvt.crc16(b"123456789") == 0x2189
    assert zvt.crc16(b"") == 0


# The ZVT specification's own example frames could not be checked: PA00P016
# revision 04 (13 July 2016) says in its revision table "Reference to trace
# examples removed", and the "Trace Examples" chapter that revision 03 (16 April
# 2008) lists in its table of contents was not in any copy available to us (only
# the title and contents pages were). The frames below follow the rules of
# PA00P016's "Serial Transport-Protocol" (block structure DLE STX, doubled DLEs,
# DLE ETX, CRC low byte first; "CRC-Calculation") and of its chapter 3,
# "Application-Protocol" (APDU = control field, length field, data). Each one is
# also published, byte for byte, as a test vector of the open-source ecrterm
# project (its data-encoding tests, which say they were taken from logs of real
# terminals): that pins the CRC variant, the byte order and the DLE doubling
# independently of this code.
GOLDEN_FRAMES = [
    # Positive acknowledgement 80 00 00 (spec: "80-00-00").
    (zvt.POSITIVE_ACK, "10 02 80 00 00 10 03 F5 1F"),
    # Negative acknowledgement 84 9C.
    (zvt.negative_ack(0x9C), "10 02 84 9C 00 10 03 C3 41"),
    # Authorization of 110.00 EUR: the amount's 0x10 byte is doubled on the line, not in the CRC.
    (zvt.authorization(11000, 978), "10 02 06 01 0A 04 00 00 00 01 10 10 00 49 09 78 10 03 F2 FF"),
    # Registration (06 00): password 123456, config byte BA, currency EUR (09 78, no BMP tag).
    (zvt.registration("123456", 0xBA, 978), "10 02 06 00 06 12 34 56 BA 09 78 10 03 24 C3"),
    # Status Enquiry (05 01) with password 123456.
    (zvt.status_enquiry("123456"), "10 02 05 01 03 12 34 56 10 03 E0 43"),
    # Initialisation 06 93 with password 123456.
    (Apdu(0x06, 0x93, hx("123456")), "10 02 06 93 03 12 34 56 10 03 CA A4"),
    # Diagnosis 06 70 without data.
    (Apdu(0x06, 0x70), "10 02 06 70 00 10 03 D9 F9"),
]


@pytest.mark.parametrize(("apdu", "wire"), GOLDEN_FRAMES)
def test_golden_frames(apdu: Apdu, wire: str) -> None:
    assert zvt.frame(apdu.encode()) == hx(wire)
    assert Apdu.decode(zvt.unframe(hx(wire))) == apdu


def test_golden_command_apdus() -> None:
    # Registration with password 000000, config 0x18 (intermediate status, ECR controls payment), EUR.
    assert zvt.registration("000000", 0x18, 978).encode() == hx("06 00 06 00 00 00 18 09 78")
    assert zvt.registration("123456", 0x08).encode() == hx("06 00 04 12 34 56 08")
    assert zvt.authorization(1250).encode() == hx("06 01 07 04 00 00 00 00 12 50")
    assert zvt.refund("000000", 500, 978).encode() == hx("06 31 0D 00 00 00 04 00 00 00 00 05 00 49 09 78")
    assert zvt.reversal("000000", 10).encode() == hx("06 30 06 00 00 00 87 00 10")
    assert zvt.repeat_receipt("000000").encode() == hx("06 20 03 00 00 00")
    assert zvt.status_enquiry("000000").encode() == hx("05 01 03 00 00 00")
    assert zvt.log_off().encode() == hx("06 02 00")
    assert zvt.abort(0x6C).encode() == hx("06 1E 01 6C")
    assert zvt.intermediate_status(0x0A).encode() == hx("04 FF 01 0A")


def test_extended_length_field_is_dle_doubled_on_the_line() -> None:
    # 272 data bytes: the length field is FF 10 01 (little-endian); its 0x10 is a DLE on the
    # line and is doubled there, while the CRC covers the plain bytes.
    apdu = Apdu(0x06, 0xD3, b"A" * 272)
    assert apdu.encode()[:5] == hx("06 D3 FF 10 01")
    wire = zvt.frame(apdu.encode())
    assert wire[:8] == hx("10 02 06 D3 FF 10 10 01")
    crc = zvt.crc16(apdu.encode() + b"\x03")
    assert wire[-4:] == hx("10 03") + bytes([crc & 0xFF, crc >> 8])
    assert zvt.unframe(wire) == apdu.encode()


@pytest.mark.parametrize(
    ("raw", "positive"),
    [("80 00 00", True), ("84 00 00", True), ("84 9C 00", False), ("84 83 00", False), ("04 FF 01 0A", False)],
)
def test_positive_acknowledgements(raw: str, positive: bool) -> None:
    # 84 xx carries a result code; result code 00 means "no error", so 84 00 takes the message too.
    assert zvt.is_positive_ack(Apdu.decode(hx(raw))) is positive


def test_reversal_frame_doubles_dle_in_receipt_number() -> None:
    wire = zvt.frame(zvt.reversal("000000", 10).encode())
    assert wire[:-2] == hx("10 02 06 30 06 00 00 00 87 00 10 10 10 03")
    crc = zvt.crc16(hx("06 30 06 00 00 00 87 00 10 03"))
    assert wire[-2:] == bytes([crc & 0xFF, crc >> 8])


# -- BCD ---------------------------------------------------------------------------------------


def test_amount_is_six_bytes_bcd() -> None:
    assert zvt.bcd_encode(1250, 6) == hx("00 00 00 00 12 50")
    assert zvt.bcd_encode(999_999_999_999, 6) == hx("99 99 99 99 99 99")
    assert zvt.bcd_encode(978, 2) == hx("09 78")
    assert zvt.bcd_decode(hx("00 00 01 23 45 67")) == 1234567


def test_bcd_rejects_overflow_negative_and_bad_nibbles() -> None:
    with pytest.raises(InputError):
        zvt.bcd_encode(1_000_000_000_000, 6)
    with pytest.raises(InputError):
        zvt.bcd_encode(-1, 6)
    with pytest.raises(ZvtFrameError):
        zvt.bcd_decode(hx("12 3A"))


@pytest.mark.parametrize("amount", [0, -5, 1_000_000_000_000])
def test_authorization_rejects_impossible_amounts(amount: int) -> None:
    with pytest.raises(InputError):
        zvt.authorization(amount)


@given(st.integers(min_value=0, max_value=999_999_999_999))
def test_bcd_roundtrip(value: int) -> None:
    assert zvt.bcd_decode(zvt.bcd_encode(value, 6)) == value


# -- length field and APDUs --------------------------------------------------------------------


def test_length_field_one_byte_up_to_254_then_ff_and_two_bytes_little_endian() -> None:
    assert zvt.encode_length(0) == hx("00")
    assert zvt.encode_length(254) == hx("FE")
    assert zvt.encode_length(255) == hx("FF FF 00")
    assert zvt.encode_length(300) == hx("FF 2C 01")
    assert zvt.encode_length(0xFFFF) == hx("FF FF FF")
    with pytest.raises(zvt.ZvtError):
        zvt.encode_length(0x10000)


def test_long_apdu_roundtrip() -> None:
    apdu = Apdu(0x06, 0xD3, bytes(range(256)) + b"x" * 44)
    raw = apdu.encode()
    assert raw[:5] == hx("06 D3 FF 2C 01")
    assert zvt.apdu_size(raw[:4]) is None
    assert zvt.apdu_size(raw) == len(raw) == 305
    assert Apdu.decode(raw) == apdu


def test_apdu_length_mismatch_is_a_frame_error() -> None:
    with pytest.raises(ZvtFrameError, match="length field"):
        Apdu.decode(hx("04 0F 05 27 00"))  # claims 5 data bytes, has 2
    with pytest.raises(ZvtFrameError):
        Apdu.decode(hx("80 00"))


def test_apdu_repr_hides_data() -> None:
    assert "41 11" not in repr(Apdu(0x04, 0x0F, hx("22 F1 F6 41 11")))


@settings(max_examples=60)
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=300))
def test_apdu_and_frame_roundtrip(klass: int, instr: int, data: bytes) -> None:
    apdu = Apdu(klass, instr, data)
    assert Apdu.decode(apdu.encode()) == apdu
    assert zvt.unframe(zvt.frame(apdu.encode())) == apdu.encode()


# -- deframing ---------------------------------------------------------------------------------


def test_deframer_skips_garbage_and_counts_it() -> None:
    d = Deframer()
    d.feed(hx("00 FF 13 37") + zvt.frame(zvt.POSITIVE_ACK.encode()))
    assert d.next_event() == FrameOk(hx("80 00 00"))
    assert d.stats.garbage_bytes == 4
    assert d.next_event() is None


def test_deframer_reports_wrong_crc() -> None:
    wire = bytearray(zvt.frame(zvt.POSITIVE_ACK.encode()))
    wire[-1] ^= 0x01
    d = Deframer()
    d.feed(bytes(wire))
    assert d.next_event() == FrameBad("CRC mismatch")


def test_deframer_waits_for_the_rest_of_a_partial_frame() -> None:
    wire = zvt.frame(zvt.authorization(11000, 978).encode())
    d = Deframer()
    for cut in (1, 2, 11, len(wire) - 3, len(wire) - 1):
        d = Deframer()
        d.feed(wire[:cut])
        assert d.next_event() is None, cut
        d.feed(wire[cut:])
        assert d.next_event() == FrameOk(zvt.authorization(11000, 978).encode())


def test_deframer_rejects_single_dle_and_interrupted_frames() -> None:
    d = Deframer()
    d.feed(hx("10 02 80 10 00 00 10 03 00 00"))
    assert isinstance(d.next_event(), FrameBad)
    good = zvt.frame(zvt.POSITIVE_ACK.encode())
    d = Deframer()
    d.feed(hx("10 02 04 FF 01") + good)  # sender restarted mid-frame
    assert d.next_event() == FrameBad("frame interrupted by a new frame")
    assert d.next_event() == FrameOk(hx("80 00 00"))


def test_deframer_control_bytes() -> None:
    d = Deframer()
    d.feed(hx("06 15 10 06"))
    assert [d.next_event(), d.next_event(), d.next_event()] == [Control(0x06), Control(0x15), Control(0x06)]


def test_unframe_rejects_trailing_bytes_and_incomplete_frames() -> None:
    good = zvt.frame(zvt.POSITIVE_ACK.encode())
    with pytest.raises(ZvtFrameError, match="trailing"):
        zvt.unframe(good + good)
    with pytest.raises(ZvtFrameError, match="incomplete"):
        zvt.unframe(good[:-1])


@settings(max_examples=60)
@given(st.binary(max_size=40).filter(lambda b: 0x10 not in b), st.binary(max_size=200))
def test_deframer_finds_a_frame_after_any_noise(noise: bytes, apdu_data: bytes) -> None:
    apdu = Apdu(0x04, 0x0F, apdu_data).encode()
    d = Deframer()
    d.feed(noise + zvt.frame(apdu))
    events = []
    while (event := d.next_event()) is not None:
        events.append(event)
    assert events[-1] == FrameOk(apdu)
    assert all(isinstance(e, Control) for e in events[:-1])


# -- BMPs and card data ------------------------------------------------------------------------


def _status(pan: str, *extra: tuple[int, bytes]) -> Apdu:
    return zvt.status_information(
        [
            (0x27, b"\x00"),
            (0x04, zvt.bcd_encode(1250, 6)),
            (0x0B, zvt.bcd_encode(42, 3)),
            (0x0E, hx("2812")),
            (0x22, zvt.encode_pan(pan)),
            (0x23, b";4111111111111111=2812?"),
            (0x29, hx("29001234")),
            (0x3B, b"123456\x00\x00"),
            (0x49, hx("0978")),
            (0x87, zvt.bcd_encode(8, 2)),
            (0x88, zvt.bcd_encode(42, 3)),
            (0x8A, b"\x06"),
            (0x8B, b"Mastercard"),
            *extra,
        ]
    )


def test_status_information_is_parsed_without_card_data() -> None:
    info = TransactionInfo.parse(_status("6763********1230"))
    assert info.approved
    assert (info.amount, info.currency, info.trace, info.receipt, info.turnover) == (1250, 978, 42, 8, 42)
    assert (info.terminal_id, info.approval_code, info.card_name, info.card_type) == (
        "29001234",
        "123456",
        "Mastercard",
        6,
    )
    assert info.pan_last4 == "1230"
    assert info.reference == "ZVT:29001234:0008:000042"
    fields = zvt.parse_bmps(_status("6763********1230").data)
    assert not {0x22, 0x23, 0x0E} & fields.values.keys()


def test_unmasked_pan_is_dropped_entirely() -> None:
    info = TransactionInfo.parse(_status("4111111111111111"))
    assert info.pan_last4 == ""
    assert "4111" not in repr(info)
    assert "1111" not in repr(info)


def test_bmp_encoding_checks_sizes_and_adds_var_prefixes() -> None:
    assert zvt.bmp(0x8B, b"VISA") == hx("8B F0 F4") + b"VISA"
    assert zvt.bmp(0x3C, b"ab") == hx("3C F0 F0 F2") + b"ab"
    assert zvt.bmp(0x06, bytes(200))[:3] == hx("06 81 C8")
    with pytest.raises(zvt.ZvtError):
        zvt.bmp(0x04, b"\x00")
    with pytest.raises(zvt.ZvtError):
        zvt.bmp(0x99, b"")


def test_unknown_bmp_stops_parsing_but_keeps_what_came_before() -> None:
    fields = zvt.parse_bmps(hx("27 00 04 00 00 00 00 12 50 FE 01 02 87 00 08"))
    assert fields.values == {0x27: b"\x00", 0x04: hx("00 00 00 00 12 50")}
    assert not fields.complete


def test_truncated_bmp_and_bad_var_length_are_frame_errors() -> None:
    with pytest.raises(ZvtFrameError):
        zvt.parse_bmps(hx("04 00 00 12"))
    with pytest.raises(ZvtFrameError):
        zvt.parse_bmps(hx("8B F1 3A 41"))


def test_tlv_container_is_skipped() -> None:
    fields = zvt.parse_bmps(hx("06 82 00 03 1F 04 00 27 6C"))
    assert fields.values == {0x27: b"\x6c"}


def test_reference_roundtrip_and_rejection() -> None:
    assert zvt.parse_reference("ZVT:29001234:0008:000042") == 8
    for bad in ("SIM000001", "ZVT:29001234:-:000042", "ZVT:1:2"):
        with pytest.raises(InputError):
            zvt.parse_reference(bad)


def test_result_texts() -> None:
    assert zvt.result_text(0x05) == "declined by the card issuer (code 5)"
    assert zvt.result_text(0x6C) == "aborted by timeout or abort key"
    assert zvt.result_text(0xEE) == "result code 0xEE"
    assert zvt.result_text(None) == "no result code"


# -- deciding an ambiguous outcome -------------------------------------------------------------


def _txn(trace: int | None, amount: int = 1250, code: int = 0) -> TransactionInfo:
    return TransactionInfo(result_code=code, amount=amount, trace=trace, receipt=trace)


@pytest.mark.parametrize(
    ("baseline", "last", "verdict"),
    [
        (_txn(41), _txn(42), True),  # a new approved payment of this amount
        (None, _txn(42), True),  # terminal had no earlier transaction
        (_txn(41), _txn(41), False),  # terminal's last transaction is still the old one
        (_txn(41), _txn(42, amount=999), False),  # the new one is not ours
        (_txn(41), _txn(42, code=0x6C), False),  # aborted at the terminal
        (_txn(41), None, False),  # terminal has no transaction at all
        (_txn(41), _txn(None), None),  # nothing to tell them apart: stay unknown
    ],
)
def test_decide(baseline: TransactionInfo | None, last: TransactionInfo | None, verdict: bool | None) -> None:
    assert zvt.decide(1250, baseline, last) is verdict


# -- link layer on an in-memory transport ------------------------------------------------------


def test_serial_link_retransmits_after_nak_and_gives_up_after_three_attempts() -> None:
    wire = LoopbackTransport()
    link = SerialLink(wire, ack_timeout=0.05)
    wire.feed(bytes([zvt.NAK, zvt.ACK]))
    link.send(zvt.POSITIVE_ACK.encode())
    frame = zvt.frame(zvt.POSITIVE_ACK.encode())
    assert bytes(wire.written) == frame * 2
    assert (link.stats.retransmissions, link.stats.naks_received) == (1, 1)
    wire.written.clear()
    with pytest.raises(ZvtLinkError, match="3 attempts"):
        link.send(zvt.POSITIVE_ACK.encode())  # nobody answers
    assert bytes(wire.written) == frame * 3


def test_serial_link_naks_a_bad_frame_and_takes_the_repetition() -> None:
    wire = LoopbackTransport()
    link = SerialLink(wire, ack_timeout=0.05, byte_timeout=0.02)
    good = zvt.frame(zvt.intermediate_status(0x0A).encode())
    bad = good[:-1] + bytes([good[-1] ^ 0x55])
    wire.feed(bad + good)
    assert link.receive(0.2) == zvt.intermediate_status(0x0A).encode()
    assert bytes(wire.written) == bytes([zvt.NAK, zvt.ACK])


def test_serial_link_naks_a_partial_frame_after_the_byte_timeout() -> None:
    wire = LoopbackTransport()
    link = SerialLink(wire, ack_timeout=0.05, byte_timeout=0.02)
    good = zvt.frame(zvt.intermediate_status(0x0A).encode())
    wire.feed(good[:5])
    assert link.receive(0.1) is None
    assert bytes(wire.written) == bytes([zvt.NAK])
    assert link.stats.bad_frames == 1


def test_serial_link_gives_up_after_repeated_damage() -> None:
    wire = LoopbackTransport()
    link = SerialLink(wire, ack_timeout=0.05)
    bad = bytearray(zvt.frame(zvt.POSITIVE_ACK.encode()))
    bad[-2] ^= 0xFF
    wire.feed(bytes(bad) * 3)
    with pytest.raises(ZvtFrameError, match="3 damaged frames"):
        link.receive(0.2)


def test_serial_link_treats_a_frame_from_the_peer_as_acknowledgement() -> None:
    wire = LoopbackTransport()
    link = SerialLink(wire, ack_timeout=0.05)
    answer = zvt.frame(zvt.POSITIVE_ACK.encode())
    wire.feed(answer)  # the ACK byte was lost, but the terminal already answers
    link.send(zvt.authorization(100).encode())
    assert link.stats.retransmissions == 0
    assert link.receive(0.1) == zvt.POSITIVE_ACK.encode()


def test_tcp_link_splits_the_stream_by_length() -> None:
    wire = LoopbackTransport()
    link = TcpLink(wire)
    status = _status("6763********1230").encode()
    stream = zvt.POSITIVE_ACK.encode() + status
    wire.feed(stream[:2])
    wire.feed(stream[2:7])
    wire.feed(stream[7:])
    assert link.receive(0.1) == zvt.POSITIVE_ACK.encode()
    assert link.receive(0.1) == status
    assert link.receive(0.01) is None


def test_tcp_link_detects_a_stream_out_of_step() -> None:
    wire = LoopbackTransport()
    link = TcpLink(wire)
    wire.feed(hx("13 37 80 00 00"))
    with pytest.raises(ZvtFrameError, match="out of step"):
        link.receive(0.1)


def test_tcp_link_waits_for_an_oversized_apdu_and_times_out() -> None:
    wire = LoopbackTransport()
    link = TcpLink(wire)
    wire.feed(hx("04 0F FF FF FF 27 00"))  # claims 65535 data bytes
    assert link.receive(0.05) is None


def test_a_closed_transport_is_unavailable() -> None:
    wire = LoopbackTransport()
    wire.close()
    with pytest.raises(DeviceUnavailable):
        SerialLink(wire, ack_timeout=0.01).send(b"\x80\x00\x00")


# -- the driver against a scripted peer --------------------------------------------------------


class ScriptedTcpPeer(LoopbackTransport):
    """Bare APDUs (TCP framing): every command the driver writes is answered from a script."""

    def __init__(self, script: dict[int, list[str]]) -> None:
        super().__init__()
        self.script = script
        self.sent: list[Apdu] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        apdu = Apdu.decode(data)
        self.sent.append(apdu)
        for answer in self.script.pop(apdu.control, []):
            self.feed(hx(answer))


NO_RECEIPT = ["80 00 00", "06 1E 01 83"]  # Repeat Receipt: the terminal has no transaction yet
APPROVED = [
    "04 0F 10 27 00 04 00 00 00 00 12 50 87 00 08 0B 00 00 42",  # status: ok, 12.50, receipt 8, trace 42
    "06 0F 00",  # completion
]


def _driver(peer: ScriptedTcpPeer) -> zvt.ZvtTerminal:
    return zvt.ZvtTerminal(lambda: peer, framing=zvt.Framing.TCP, register=False, t3=0.5, t4=0.5)


def test_terminal_acknowledging_with_84_00_is_understood() -> None:
    peer = ScriptedTcpPeer({zvt.REPEAT_RECEIPT: NO_RECEIPT, zvt.AUTHORIZATION: ["84 00 00", *APPROVED]})
    terminal = _driver(peer)
    result = terminal.authorize(1250, "EUR", "sale-1")
    assert (result.approved, result.amount, result.reference) == (True, 1250, "ZVT:-:0008:000042")
    assert [a.control for a in peer.sent].count(zvt.AUTHORIZATION) == 1
    terminal.close()


def test_stray_acknowledgement_mid_transaction_gets_no_answer() -> None:
    # A late 84 9C arrives between the acknowledgement and the status: it is a response,
    # and responses are never acknowledged (answering it would put the peers out of step).
    peer = ScriptedTcpPeer({zvt.REPEAT_RECEIPT: NO_RECEIPT, zvt.AUTHORIZATION: ["80 00 00", "84 9C 00", *APPROVED]})
    terminal = _driver(peer)
    assert terminal.authorize(1250, "EUR", "sale-1").approved
    after = peer.sent[[a.control for a in peer.sent].index(zvt.AUTHORIZATION) + 1 :]
    assert after == [zvt.POSITIVE_ACK, zvt.POSITIVE_ACK]  # one for the status, one for the completion
    terminal.close()


def test_refused_command_is_a_clear_error_and_charges_nothing() -> None:
    peer = ScriptedTcpPeer({zvt.REPEAT_RECEIPT: NO_RECEIPT, zvt.AUTHORIZATION: ["84 83 00"]})
    terminal = _driver(peer)
    with pytest.raises(zvt.ZvtRejected, match="refused the authorization: function not possible") as info:
        terminal.authorize(1250, "EUR", "sale-1")
    assert info.value.code == 0x83
    assert terminal.pending is None
    assert terminal.health.health.value == "degraded"
    terminal.close()
