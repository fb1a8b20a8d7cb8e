"""ZVT driver against the simulator, end to end over a real pty pair and loopback TCP.

Each test checks the one thing that matters for money: what the driver reports
equals what the terminal booked, and the authorization is never sent twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from appliance.errors import DeviceUnavailable, PaymentDeclined
from appliance.tenders import CardResult, PaymentTerminal
from appliance.till import Till
from drivers import zvt
from drivers.base import Health, HealthState
from drivers.zvt import ZvtLinkError, ZvtOutcomeUnknown, ZvtTerminal
from drivers.zvt_sim import SimOutcome, ZvtSimulator

# Waiting out a silent peer costs test time, so only the tests that exercise silence
# use QUICK time-outs. All others use STEADY ones: these cost nothing while the peer
# answers and keep exact assertions stable on a loaded machine.
QUICK: dict[str, Any] = {
    "t3": 0.15, "t4": 0.3, "ack_timeout": 0.1, "byte_timeout": 0.05, "resolve_attempts": 2, "resolve_interval": 0.05,
}  # fmt: skip
STEADY: dict[str, Any] = {**QUICK, "t3": 2.0, "t4": 2.0, "ack_timeout": 1.0, "byte_timeout": 0.2}
T4 = QUICK["t4"]


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leftover, f"threads left behind: {leftover}"


def _open(kind: str, timeouts: dict[str, Any], **sim_kwargs: Any) -> tuple[ZvtSimulator, ZvtTerminal]:
    sim_timeouts = {"t3": timeouts["t3"], "byte_timeout": timeouts["byte_timeout"]}
    if kind == "pty":
        sim = ZvtSimulator.pty(**sim_timeouts, **sim_kwargs)
        return sim, ZvtTerminal.serial(sim.port, currency="EUR", **timeouts)
    sim = ZvtSimulator.tcp(**sim_timeouts, **sim_kwargs)
    host, port = sim.address
    return sim, ZvtTerminal.tcp(host, port, currency="EUR", **timeouts)


def _fixture(kind: str, timeouts: dict[str, Any]) -> Iterator[tuple[ZvtSimulator, ZvtTerminal]]:
    sim, terminal = _open(kind, timeouts)
    yield sim, terminal
    terminal.close()
    sim.close()
    assert sim.errors == []


@pytest.fixture(params=["pty", "tcp"])
def link(request: pytest.FixtureRequest) -> Iterator[tuple[ZvtSimulator, ZvtTerminal]]:
    """Both links, steady time-outs."""
    yield from _fixture(request.param, STEADY)


@pytest.fixture(params=["pty", "tcp"])
def quick(request: pytest.FixtureRequest) -> Iterator[tuple[ZvtSimulator, ZvtTerminal]]:
    """Both links, short time-outs; ``("pty", 1)`` also sets the number of resolve attempts."""
    kind, attempts = request.param if isinstance(request.param, tuple) else (request.param, 2)
    yield from _fixture(kind, {**QUICK, "resolve_attempts": attempts})


@pytest.fixture
def serial() -> Iterator[tuple[ZvtSimulator, ZvtTerminal]]:
    """The pty link, steady time-outs."""
    yield from _fixture("pty", STEADY)


def auth_count(sim: ZvtSimulator) -> int:
    return sim.received.count(zvt.AUTHORIZATION)


def assert_matches_terminal(result: CardResult, sim: ZvtSimulator) -> None:
    """The driver's answer is what the terminal booked, and the customer paid at most once."""
    charges = sim.charges()
    assert len(charges) <= 1
    assert result.approved == bool(charges)
    if charges:
        assert result.amount == charges[0].amount
        assert result.reference == f"ZVT:29001234:{charges[0].receipt:04d}:{charges[0].trace:06d}"
    assert auth_count(sim) == 1, "the authorization was sent more than once"


# -- plain outcomes ----------------------------------------------------------------------------


def test_approve(link: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = link
    as_protocol: PaymentTerminal = terminal
    result = as_protocol.authorize(1250, "EUR", "sale-1")
    assert result.approved
    assert (result.amount, result.scheme, result.message) == (1250, "Mastercard", "approved")
    assert result.approval_code.isdigit() and len(result.approval_code) == 6
    assert_matches_terminal(result, sim)
    assert terminal.health.health is Health.OK
    # registration first, then the baseline query, then the payment
    assert sim.received[:3] == [zvt.REGISTRATION, zvt.REPEAT_RECEIPT, zvt.AUTHORIZATION]


@pytest.mark.parametrize("kind", ["pty", "tcp"])
def test_terminal_that_acknowledges_with_84_00(kind: str) -> None:
    # Some terminals take a command with 84 00 00 (result code 00, "no error") instead of 80 00 00.
    sim, terminal = _open(kind, STEADY, acknowledgement=zvt.Apdu(0x84, 0x00))
    try:
        result = terminal.authorize(1250, "EUR", "sale-1")
        assert result.approved
        assert_matches_terminal(result, sim)
        assert terminal.health.health is Health.OK
    finally:
        terminal.close()
        sim.close()
    assert sim.errors == []


def test_decline(link: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = link
    sim.script(SimOutcome.decline(0x05))
    result = terminal.authorize(1250, "EUR", "sale-1")
    assert not result.approved
    assert result.message == "declined by the card issuer (code 5)"
    assert sim.charges() == []
    assert terminal.health.health is Health.OK


def test_abort_at_terminal_is_a_decline(link: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = link
    sim.script(SimOutcome.decline(zvt.RC_ABORTED))
    result = terminal.authorize(700, "EUR", "sale-1")
    assert (result.approved, result.message) == (False, "aborted by timeout or abort key")


def test_status_enquiry(link: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    _sim, terminal = link
    status = terminal.status()
    assert status.ready
    assert status.terminal_id == "29001234"


def test_refund_and_reversal(link: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = link
    paid = terminal.authorize(990, "EUR", "sale-1")
    reversed_ = terminal.reverse(paid.reference)
    assert reversed_.approved
    assert reversed_.amount == 990
    assert sim.charges() == []
    assert terminal.reverse(paid.reference).message == "already reversed"
    refund = terminal.refund(300, "EUR", "return-1")
    assert refund.approved
    assert [t.kind for t in sim.journal] == ["authorization", "reversal", "refund"]
    with pytest.raises(PaymentDeclined, match="refused to reverse receipt 99"):
        terminal.reverse("ZVT:29001234:0099:000001")


# -- lost answers ------------------------------------------------------------------------------


def test_timeout_after_acknowledgement_is_resolved_as_not_charged(quick: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = quick
    sim.script(SimOutcome.timeout())
    result = terminal.authorize(1250, "EUR", "sale-1")
    assert not result.approved
    assert "nothing was charged" in result.message
    assert_matches_terminal(result, sim)
    assert terminal.pending is None
    assert terminal.health == HealthState("terminal", Health.DEGRADED, "recovered from a lost terminal answer")


def test_health_recovers_after_a_lost_answer() -> None:
    sim, terminal = _open("tcp", STEADY)  # a dropped TCP connection is noticed at once, no time-out needed
    seen: list[Health] = []
    terminal.on_health(lambda state: seen.append(state.health))
    try:
        sim.script(SimOutcome.disconnect(book=False))
        assert not terminal.authorize(1250, "EUR", "sale-1").approved
        assert terminal.authorize(1250, "EUR", "sale-1").approved  # the till may now try again
    finally:
        terminal.close()
        sim.close()
    assert seen == [Health.UNAVAILABLE, Health.DEGRADED, Health.OK]


def test_missing_acknowledgement_is_resolved_as_not_charged(quick: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = quick
    sim.script(SimOutcome.no_ack())
    result = terminal.authorize(1250, "EUR", "sale-1")
    assert not result.approved
    assert_matches_terminal(result, sim)


def test_disconnect_mid_transaction_after_booking_is_approved_once(quick: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = quick
    sim.script(SimOutcome.disconnect(book=True))
    result = terminal.authorize(4200, "EUR", "sale-1")
    assert result.approved
    assert result.amount == 4200
    assert_matches_terminal(result, sim)
    # the last-transaction query happened after the lost payment
    first_auth = sim.received.index(zvt.AUTHORIZATION)
    assert zvt.REPEAT_RECEIPT in sim.received[first_auth:]


def test_disconnect_before_booking_is_not_charged(quick: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = quick
    sim.script(SimOutcome.disconnect(book=False))
    result = terminal.authorize(4200, "EUR", "sale-1")
    assert not result.approved
    assert_matches_terminal(result, sim)


def test_old_payment_of_the_same_amount_is_not_mistaken_for_a_lost_one(quick: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = quick
    sim.book("authorization", 1250)  # yesterday's customer paid the same amount
    sim.script(SimOutcome.timeout())
    result = terminal.authorize(1250, "EUR", "sale-1")
    assert not result.approved
    assert len(sim.charges()) == 1  # only yesterday's


@pytest.mark.parametrize("quick", [("pty", 1), ("tcp", 1)], indirect=True, ids=["pty", "tcp"])
def test_terminal_gone_keeps_the_payment_pending_until_it_is_back(quick: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = quick
    sim.script(SimOutcome.disconnect(book=True, then_dead=True))
    with pytest.raises(ZvtOutcomeUnknown, match="do not charge again"):
        terminal.authorize(1500, "EUR", "sale-1")
    assert terminal.pending is not None
    assert terminal.pending.reference == "sale-1"
    assert terminal.health.health is Health.UNAVAILABLE
    assert auth_count(sim) == 1
    sim.unresponsive = False
    result = terminal.authorize(1500, "EUR", "sale-1")  # the cashier presses "pay" again
    assert result.approved
    assert_matches_terminal(result, sim)
    assert terminal.pending is None


@pytest.mark.parametrize("quick", [("pty", 1)], indirect=True, ids=["pty"])
def test_approval_for_an_abandoned_sale_is_reported_not_reused(quick: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = quick
    sim.script(SimOutcome.disconnect(book=True, then_dead=True))
    with pytest.raises(ZvtOutcomeUnknown):
        terminal.authorize(1500, "EUR", "sale-1")
    sim.unresponsive = False
    other = terminal.authorize(800, "EUR", "sale-2")  # a different sale
    assert other.approved
    assert [r.amount for r in terminal.unclaimed] == [1500]
    assert sorted(t.amount for t in sim.charges()) == [800, 1500]
    assert auth_count(sim) == 2


def test_answer_too_late(quick: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = quick
    sim.script(SimOutcome.approve(delay=T4 + 0.15))
    try:
        result = terminal.authorize(2500, "EUR", "sale-1")
    except ZvtOutcomeUnknown:
        result = terminal.authorize(2500, "EUR", "sale-1")
    assert_matches_terminal(result, sim)


def test_unreachable_terminal_charges_nothing(quick: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = quick
    sim.unresponsive = True
    with pytest.raises(ZvtLinkError, match="nothing was charged") as info:
        terminal.authorize(1250, "EUR", "sale-1")
    assert isinstance(info.value, DeviceUnavailable)
    assert info.value.retryable
    assert terminal.pending is None
    assert terminal.health.health is Health.UNAVAILABLE
    assert auth_count(sim) == 0


def test_nothing_listening() -> None:
    sim = ZvtSimulator.tcp()
    host, port = sim.address
    sim.close()
    terminal = ZvtTerminal.tcp(host, port, **QUICK)
    with pytest.raises(DeviceUnavailable):
        terminal.authorize(100, "EUR", "sale-1")
    assert terminal.health.health is Health.UNAVAILABLE
    terminal.close()


# -- line faults -------------------------------------------------------------------------------


def _warm_up(sim: ZvtSimulator, terminal: ZvtTerminal) -> None:
    """Registration and the baseline query happen on first use; get them out of the way."""
    warm = terminal.authorize(100, "EUR", "warm-up")
    terminal.reverse(warm.reference)
    assert sim.charges() == []
    sim.received.clear()


def test_garbage_before_a_frame_is_skipped(serial: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = serial
    _warm_up(sim, terminal)
    sim.inject_garbage(bytes.fromhex("00 FF 13 37 7E"))
    result = terminal.authorize(1250, "EUR", "sale-1")
    assert result.approved
    assert_matches_terminal(result, sim)
    assert terminal.stats.garbage_bytes >= 5


def test_garbage_on_tcp_resynchronises_and_keeps_the_outcome() -> None:
    sim, terminal = _open("tcp", STEADY)
    try:
        _warm_up(sim, terminal)
        sim.inject_garbage(bytes.fromhex("13 37"))  # lands before the terminal's acknowledgement
        result = terminal.authorize(1250, "EUR", "sale-1")
        assert_matches_terminal(result, sim)
        assert terminal.stats.garbage_bytes >= 2
        assert terminal.authorize(1250, "EUR", "sale-2").approved  # the new connection is in step
    finally:
        terminal.close()
        sim.close()


def test_wrong_crc_is_naked_and_repeated(serial: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = serial
    _warm_up(sim, terminal)
    sim.corrupt_next_frames(1)
    result = terminal.authorize(1250, "EUR", "sale-1")
    assert result.approved
    assert terminal.stats.naks_sent == 1
    assert sim.link_stats.naks_received == 1
    assert terminal.health == HealthState("terminal", Health.DEGRADED, "line errors; frames had to be repeated")
    terminal.authorize(100, "EUR", "sale-2")
    assert terminal.health.health is Health.OK


def test_partial_frame_is_naked_and_repeated(serial: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = serial
    _warm_up(sim, terminal)
    sim.truncate_next_frames(1)
    result = terminal.authorize(1250, "EUR", "sale-1")
    assert result.approved
    assert terminal.stats.naks_sent == 1
    assert_matches_terminal(result, sim)


def test_nak_from_terminal_makes_the_driver_retransmit(serial: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = serial
    _warm_up(sim, terminal)
    sim.nak_next_frames(1)
    result = terminal.authorize(1250, "EUR", "sale-1")
    assert result.approved
    assert terminal.stats.retransmissions == 1
    assert terminal.stats.naks_received == 1
    assert_matches_terminal(result, sim)  # the repeated frame did not become a second payment


def test_command_naked_three_times_is_resolved(serial: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = serial
    _warm_up(sim, terminal)
    sim.nak_next_frames(3)
    result = terminal.authorize(1250, "EUR", "sale-1")
    assert not result.approved
    assert sim.charges() == []
    assert auth_count(sim) == 0  # the terminal never took it


def test_persistent_line_damage_keeps_the_outcome(serial: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = serial
    _warm_up(sim, terminal)
    sim.corrupt_next_frames(4)  # more damage than the link layer repeats
    result = terminal.authorize(1250, "EUR", "sale-1")
    assert_matches_terminal(result, sim)
    assert terminal.stats.naks_sent >= 3


def test_oversized_length_field_keeps_the_outcome(quick: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    sim, terminal = quick
    sim.script(SimOutcome.malformed())
    result = terminal.authorize(1250, "EUR", "sale-1")
    assert result.approved
    assert_matches_terminal(result, sim)


# -- card data ---------------------------------------------------------------------------------


def test_card_number_never_reaches_results_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pan = "4111111111111111"
    sim, terminal = _open("pty", STEADY, pan=pan)
    try:
        result = terminal.authorize(1250, "EUR", "sale-1")
        last = terminal.last_transaction()
    finally:
        terminal.close()
        sim.close()
    assert result.approved
    assert last is not None
    assert last.pan_last4 == ""  # the terminal did not mask it, so not even the last four digits are kept
    for text in (repr(result), repr(last), caplog.text):
        assert pan not in text
        assert "411111" not in text


def test_masked_card_number_keeps_last_four(serial: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    _sim, terminal = serial
    terminal.authorize(1250, "EUR", "sale-1")
    last = terminal.last_transaction()
    assert last is not None
    assert last.pan_last4 == "1230"


def test_register_and_empty_journal(link: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    _sim, terminal = link
    assert terminal.register() == "29001234"
    assert terminal.last_transaction() is None


def test_till_never_charges_twice_across_a_lost_answer(demo_till: Till) -> None:
    sim, terminal = _open("pty", {**QUICK, "resolve_attempts": 1})
    try:
        demo_till.terminal = terminal
        sale = demo_till.new_sale("ann")
        demo_till.add_sku(sale, "1008", quantity=Decimal(3))  # 10.47
        sim.script(SimOutcome.disconnect(book=True, then_dead=True))
        with pytest.raises(ZvtOutcomeUnknown):
            demo_till.pay_card(sale)
        assert sale.tenders == []
        sim.unresponsive = False
        tender = demo_till.pay_card(sale)  # the cashier tries again once the terminal is back
        assert (tender.amount, tender.reference) == (
            1047,
            f"ZVT:29001234:{sim.charges()[0].receipt:04d}:{sim.charges()[0].trace:06d}",
        )
        doc = demo_till.complete(sale).doc
        assert [(t["kind"], t["amount"]) for t in doc["tenders"]] == [("card", 1047)]
        assert len(sim.charges()) == 1
        assert auth_count(sim) == 1
        other = demo_till.new_sale("ann")
        demo_till.add_sku(other, "1008")
        demo_till.pay_card(other)
        demo_till.cancel(other, actor="ann", reason="customer left")
        assert [t.amount for t in sim.charges()] == [1047]  # the cancelled sale was reversed on the terminal
    finally:
        terminal.close()
        sim.close()


def test_close_is_idempotent(link: tuple[ZvtSimulator, ZvtTerminal]) -> None:
    _sim, terminal = link
    terminal.authorize(100, "EUR", "sale-1")
    terminal.log_off()
    terminal.close()
    terminal.close()
    with pytest.raises(DeviceUnavailable, match="closed"):
        terminal.authorize(100, "EUR", "sale-2")
