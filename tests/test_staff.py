"""Roles, the permission matrix, PIN and badge login with lockout, supervisor approvals."""

from __future__ import annotations

from datetime import timedelta

import pytest

from appliance.clock import FrozenClock
from appliance.errors import InputError
from appliance.staff import PERMISSIONS, Action, AuthError, Role, allowed
from appliance.till import Till

# The whole matrix, written out: a change to a permission must change this table too.
MATRIX: dict[Action, set[Role]] = {
    Action.SELL: {Role.CASHIER, Role.SUPERVISOR, Role.MANAGER, Role.SELF_CHECKOUT},
    Action.VOID_LINE: {Role.CASHIER, Role.SUPERVISOR, Role.MANAGER},
    Action.VOID_SALE: {Role.SUPERVISOR, Role.MANAGER},
    Action.PRICE_OVERRIDE: {Role.SUPERVISOR, Role.MANAGER},
    Action.DISCOUNT_ABOVE_LIMIT: {Role.SUPERVISOR, Role.MANAGER},
    Action.REFUND: {Role.SUPERVISOR, Role.MANAGER},
    Action.RETURN_NO_RECEIPT: {Role.SUPERVISOR, Role.MANAGER},
    Action.NO_SALE: {Role.SUPERVISOR, Role.MANAGER, Role.TECHNICIAN},
    Action.CASH_IN_OUT: {Role.SUPERVISOR, Role.MANAGER},
    Action.OPEN_SHIFT: {Role.CASHIER, Role.SUPERVISOR, Role.MANAGER},
    Action.X_REPORT: {Role.CASHIER, Role.SUPERVISOR, Role.MANAGER, Role.TECHNICIAN},
    Action.CLOSE_SHIFT: {Role.SUPERVISOR, Role.MANAGER},
    Action.CHANGE_CONFIG: {Role.MANAGER, Role.TECHNICIAN},
    Action.MANAGE_STAFF: {Role.MANAGER},
    Action.ERASE_CUSTOMER: {Role.MANAGER},
    Action.SELL_AGE_RESTRICTED: {Role.SUPERVISOR, Role.MANAGER},
    Action.SELL_EXPIRED: {Role.SUPERVISOR, Role.MANAGER},
}


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("role", list(Role))
def test_permission_matrix(role: Role, action: Action) -> None:
    assert allowed(role, action) == (role in MATRIX[action])


def test_matrix_covers_every_action() -> None:
    assert set(MATRIX) == set(Action)
    assert set(PERMISSIONS) == set(Role)


@pytest.fixture
def staffed(till: Till) -> Till:
    now = till.clock.now()
    till.staff.add("ann", "Ann", "cashier", pin="1234", badge="BADGE-ANN", now=now)
    till.staff.add("sue", "Sue", "supervisor", pin="9876", badge="BADGE-SUE", now=now)
    till.staff.add("tom", "Tom", "technician", pin="5555", now=now)
    return till


def test_pin_login_and_hashing(staffed: Till) -> None:
    now = staffed.clock.now()
    assert staffed.staff.login_pin("ann", "1234", now).role is Role.CASHIER
    stored = staffed.ledger.conn.execute("SELECT pin_hash, badge_hash FROM staff WHERE id = 'ann'").fetchone()
    assert stored[0].startswith("$argon2id$") and "1234" not in stored[0]
    assert "BADGE-ANN" not in stored[1]
    journal = " ".join(r[0] for r in staffed.ledger.conn.execute("SELECT payload FROM journal"))
    assert "1234" not in journal and "BADGE-ANN" not in journal


def test_wrong_pin_and_unknown_staff_say_the_same(staffed: Till) -> None:
    now = staffed.clock.now()
    with pytest.raises(AuthError, match="wrong staff id or PIN"):
        staffed.staff.login_pin("ann", "0000", now)
    with pytest.raises(AuthError, match="wrong staff id or PIN"):
        staffed.staff.login_pin("nobody", "1234", now)


def test_lockout_grows_and_resets(staffed: Till, clock: FrozenClock) -> None:
    store = staffed.staff
    for _ in range(3):
        with pytest.raises(AuthError, match="wrong"):
            store.login_pin("ann", "0000", clock.now())
    # third failure: locked for 30 s, even with the right PIN
    with pytest.raises(AuthError, match="locked out"):
        store.login_pin("ann", "1234", clock.now())
    clock.advance(31)
    with pytest.raises(AuthError, match="wrong"):
        store.login_pin("ann", "0000", clock.now())  # fourth failure: 60 s
    clock.advance(45)
    with pytest.raises(AuthError, match="locked out"):
        store.login_pin("ann", "1234", clock.now())
    clock.advance(20)
    assert store.login_pin("ann", "1234", clock.now()).id == "ann"
    # success resets the count
    with pytest.raises(AuthError, match="wrong"):
        store.login_pin("ann", "0000", clock.now())
    assert store.login_pin("ann", "1234", clock.now()).id == "ann"


def test_lockout_is_capped(till: Till) -> None:
    policy = till.staff.policy
    assert policy.lock_for(2) == timedelta(0)
    assert policy.lock_for(3) == timedelta(seconds=30)
    assert policy.lock_for(5) == timedelta(seconds=120)
    assert policy.lock_for(500) == timedelta(minutes=15)


def test_badge_login(staffed: Till) -> None:
    now = staffed.clock.now()
    assert staffed.staff.login_badge("BADGE-SUE", now).id == "sue"
    with pytest.raises(AuthError, match="unknown badge"):
        staffed.staff.login_badge("BADGE-XYZ", now)


def test_add_validation(staffed: Till) -> None:
    now = staffed.clock.now()
    with pytest.raises(InputError, match="unknown role"):
        staffed.staff.add("x", "X", "boss", pin="1234", now=now)
    with pytest.raises(InputError, match="4 to 8 digits"):
        staffed.staff.add("x", "X", "cashier", pin="12", now=now)
    with pytest.raises(InputError, match="already exists"):
        staffed.staff.add("ann", "Ann 2", "cashier", pin="1111", now=now)
    with pytest.raises(InputError, match="badge already belongs"):
        staffed.staff.add("x", "X", "cashier", badge="BADGE-ANN", now=now)


def test_cashier_needs_supervisor_approval(staffed: Till, clock: FrozenClock) -> None:
    ann = staffed.staff.get("ann")
    now = clock.now()
    own = staffed.staff.authorize(ann, Action.VOID_LINE, now)
    assert (own.actor, own.approver) == ("ann", None)
    with pytest.raises(AuthError, match="needs a supervisor"):
        staffed.staff.authorize(ann, Action.PRICE_OVERRIDE, now)
    approval = staffed.staff.authorize(ann, Action.PRICE_OVERRIDE, now, approver_id="sue", approver_pin="9876")
    assert (approval.actor, approval.approver) == ("ann", "sue")
    by_badge = staffed.staff.authorize(ann, Action.REFUND, now, approver_badge="BADGE-SUE")
    assert by_badge.approver == "sue"
    entry = staffed.ledger.entry(staffed.ledger.head()[0])
    assert entry is not None and (entry.type, entry.actor, entry.approver) == ("approval.granted", "ann", "sue")


def test_approval_cannot_come_from_someone_not_allowed(staffed: Till) -> None:
    ann = staffed.staff.get("ann")
    now = staffed.clock.now()
    with pytest.raises(AuthError, match="may not approve"):
        staffed.staff.authorize(ann, Action.REFUND, now, approver_id="tom", approver_pin="5555")
    with pytest.raises(AuthError, match="wrong"):
        staffed.staff.authorize(ann, Action.REFUND, now, approver_id="sue", approver_pin="0000")


def test_approval_expires_and_is_for_one_action(staffed: Till, clock: FrozenClock) -> None:
    ann = staffed.staff.get("ann")
    approval = staffed.staff.authorize(ann, Action.REFUND, clock.now(), approver_badge="BADGE-SUE")
    approval.check(Action.REFUND, clock.now())
    with pytest.raises(AuthError, match="not price_override"):
        approval.check(Action.PRICE_OVERRIDE, clock.now())
    clock.advance(61)
    with pytest.raises(AuthError, match="expired"):
        approval.check(Action.REFUND, clock.now())
