"""Staff, roles, permissions, PIN/badge login with lockout, and supervisor approvals.

PINs are hashed with Argon2id (argon2-cffi). Badges are stored as an HMAC of the badge
token under a per-ledger secret, so a stolen database does not list badge numbers.
Repeated failures lock a staff member out with a growing back-off.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from appliance.clock import iso_utc
from appliance.errors import InputError, TillboxError
from appliance.ledger import Ledger


class AuthError(TillboxError):
    """A login or approval was refused (wrong PIN, unknown badge, locked out, not allowed)."""


class Role(StrEnum):
    """Staff roles; ``self_checkout`` is the role of an unattended lane, not a person."""

    CASHIER = "cashier"
    SUPERVISOR = "supervisor"
    MANAGER = "manager"
    TECHNICIAN = "technician"
    SELF_CHECKOUT = "self_checkout"


class Action(StrEnum):
    """Actions that need a permission."""

    SELL = "sell"
    VOID_LINE = "void_line"
    VOID_SALE = "void_sale"
    PRICE_OVERRIDE = "price_override"
    DISCOUNT_ABOVE_LIMIT = "discount_above_limit"
    REFUND = "refund"
    RETURN_NO_RECEIPT = "return_no_receipt"
    NO_SALE = "no_sale"
    CASH_IN_OUT = "cash_in_out"
    OPEN_SHIFT = "open_shift"
    X_REPORT = "x_report"
    CLOSE_SHIFT = "close_shift"
    CHANGE_CONFIG = "change_config"
    MANAGE_STAFF = "manage_staff"
    ERASE_CUSTOMER = "erase_customer"
    SELL_AGE_RESTRICTED = "sell_age_restricted"
    SELL_EXPIRED = "sell_expired"


_CASHIER = {Action.SELL, Action.VOID_LINE, Action.OPEN_SHIFT, Action.X_REPORT}
_SUPERVISOR = _CASHIER | {
    Action.VOID_SALE, Action.PRICE_OVERRIDE, Action.DISCOUNT_ABOVE_LIMIT, Action.REFUND,
    Action.RETURN_NO_RECEIPT, Action.NO_SALE, Action.CASH_IN_OUT, Action.CLOSE_SHIFT,
    Action.SELL_AGE_RESTRICTED, Action.SELL_EXPIRED,
}  # fmt: skip
_MANAGER = _SUPERVISOR | {Action.CHANGE_CONFIG, Action.MANAGE_STAFF, Action.ERASE_CUSTOMER}

#: Which role may do what by itself. Anything else needs an approver whose role may.
PERMISSIONS: dict[Role, frozenset[Action]] = {
    Role.CASHIER: frozenset(_CASHIER),
    Role.SUPERVISOR: frozenset(_SUPERVISOR),
    Role.MANAGER: frozenset(_MANAGER),
    Role.TECHNICIAN: frozenset({Action.CHANGE_CONFIG, Action.NO_SALE, Action.X_REPORT}),
    Role.SELF_CHECKOUT: frozenset({Action.SELL}),
}


def allowed(role: Role, action: Action) -> bool:
    """Whether ``role`` may perform ``action`` without an approval."""
    return action in PERMISSIONS[role]


@dataclass(frozen=True)
class StaffMember:
    """A person (or lane) who can log in."""

    id: str
    name: str
    role: Role
    active: bool = True


@dataclass(frozen=True)
class Approval:
    """Permission for one action: who acts, who approved (if anyone), and until when."""

    action: Action
    actor: str
    approver: str | None
    expires_at: datetime

    def check(self, action: Action, now: datetime) -> None:
        """Raise :class:`AuthError` unless this approval covers ``action`` now."""
        if action is not self.action:
            raise AuthError(f"the approval is for {self.action}, not {action}")
        if now > self.expires_at:
            raise AuthError(f"the approval for {action} expired; ask again")


@dataclass(frozen=True)
class LockoutPolicy:
    """Failures allowed before lockout, and the back-off that grows with each further failure."""

    free_attempts: int = 3
    first_lock: timedelta = timedelta(seconds=30)
    max_lock: timedelta = timedelta(minutes=15)
    approval_ttl: timedelta = timedelta(seconds=60)

    def lock_for(self, failures: int) -> timedelta:
        """Lock duration after ``failures`` consecutive failures (zero while under the limit)."""
        if failures < self.free_attempts:
            return timedelta(0)
        return min(self.first_lock * (1 << min(failures - self.free_attempts, 20)), self.max_lock)


def _hasher(fast: bool) -> PasswordHasher:
    # OWASP's minimum Argon2id profile (19 MiB, t=2) keeps a Pi 3 login near 100 ms.
    return (
        PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        if fast
        else PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
    )


class StaffStore:
    """Staff records in the ledger database, and the login and approval checks."""

    def __init__(self, ledger: Ledger, *, policy: LockoutPolicy | None = None, fast_hash: bool = False) -> None:
        self.ledger = ledger
        self.policy = policy or LockoutPolicy()
        self._ph = _hasher(fast_hash)
        self._badge_key = self._secret()

    def _secret(self) -> bytes:
        row = self.ledger.conn.execute("SELECT value FROM meta WHERE key = 'badge_key'").fetchone()
        if row:
            return bytes.fromhex(str(row[0]))
        key = secrets.token_bytes(32)
        with self.ledger.transaction("creating badge key") as tx:
            tx.conn.execute("INSERT INTO meta(key, value) VALUES ('badge_key', ?)", (key.hex(),))
        return key

    def _badge_hash(self, token: str) -> str:
        return hmac.new(self._badge_key, token.strip().encode(), hashlib.sha256).hexdigest()

    # -- records ---------------------------------------------------------------------------------

    def add(
        self, staff_id: str, name: str, role: Role | str, *, pin: str | None = None, badge: str | None = None,
        now: datetime, actor: str | None = None,
    ) -> StaffMember:  # fmt: skip
        """Create a staff member; the journal records it without the PIN or badge."""
        try:
            role = Role(role)
        except ValueError:
            raise InputError(f"unknown role {role!r}; one of {', '.join(r.value for r in Role)}") from None
        if not staff_id or len(staff_id) > 32 or not staff_id.isprintable():
            raise InputError("staff id must be 1-32 printable characters")
        if pin is not None and not (pin.isdigit() and 4 <= len(pin) <= 8):
            raise InputError("a PIN is 4 to 8 digits")
        if pin is None and badge is None:
            raise InputError(f"{name} needs a PIN or a badge")
        pin_hash = self._ph.hash(pin) if pin else None
        badge_hash = self._badge_hash(badge) if badge else None
        with self.ledger.transaction("adding staff") as tx:
            if tx.conn.execute("SELECT 1 FROM staff WHERE id = ?", (staff_id,)).fetchone():
                raise InputError(f"staff id {staff_id} already exists")
            if badge_hash and tx.conn.execute("SELECT 1 FROM staff WHERE badge_hash = ?", (badge_hash,)).fetchone():
                raise InputError("that badge already belongs to someone")
            tx.conn.execute(
                "INSERT INTO staff(id, name, role, pin_hash, badge_hash) VALUES (?, ?, ?, ?, ?)",
                (staff_id, name, role.value, pin_hash, badge_hash),
            )
            tx.journal("staff.added", {"id": staff_id, "name": name, "role": role.value}, time=iso_utc(now),
                       actor=actor)  # fmt: skip
        return StaffMember(staff_id, name, role)

    def get(self, staff_id: str) -> StaffMember:
        row = self.ledger.conn.execute("SELECT id, name, role, active FROM staff WHERE id = ?", (staff_id,)).fetchone()
        if row is None:
            raise AuthError(f"unknown staff member {staff_id}")
        return StaffMember(str(row[0]), str(row[1]), Role(row[2]), bool(row[3]))

    # -- login -----------------------------------------------------------------------------------

    def login_pin(self, staff_id: str, pin: str, now: datetime) -> StaffMember:
        """Check a PIN; failures count towards a lockout."""
        row = self.ledger.conn.execute(
            "SELECT pin_hash, failures, locked_until, active FROM staff WHERE id = ?", (staff_id,)
        ).fetchone()
        if row is None:
            raise AuthError("wrong staff id or PIN")
        pin_hash, failures, locked_until, active = row
        if locked_until and now < datetime.fromisoformat(str(locked_until)):
            raise AuthError(f"{staff_id} is locked out until {locked_until} after repeated wrong PINs")
        if not active:
            raise AuthError(f"{staff_id} is deactivated")
        try:
            ok = bool(pin_hash) and self._ph.verify(str(pin_hash), pin)
        except (VerificationError, InvalidHashError):
            ok = False
        with self.ledger.transaction("recording login") as tx:
            if not ok:
                failures = int(failures) + 1
                lock = self.policy.lock_for(failures)
                until = iso_utc(now + lock) if lock else None
                tx.conn.execute("UPDATE staff SET failures = ?, locked_until = ? WHERE id = ?",
                                (failures, until, staff_id))  # fmt: skip
                tx.journal("staff.login_failed", {"id": staff_id, "failures": failures, "locked_until": until},
                           time=iso_utc(now))  # fmt: skip
            else:
                tx.conn.execute("UPDATE staff SET failures = 0, locked_until = NULL WHERE id = ?", (staff_id,))
                tx.journal("staff.login", {"id": staff_id, "method": "pin"}, time=iso_utc(now), actor=staff_id)
        if not ok:
            raise AuthError("wrong staff id or PIN")
        return self.get(staff_id)

    def login_badge(self, token: str, now: datetime) -> StaffMember:
        """Log in with a badge read by the badge reader."""
        row = self.ledger.conn.execute(
            "SELECT id, active FROM staff WHERE badge_hash = ?", (self._badge_hash(token),)
        ).fetchone()
        if row is None or not row[1]:
            self.ledger.append("staff.login_failed", {"method": "badge"}, time=iso_utc(now))
            raise AuthError("unknown badge")
        self.ledger.append("staff.login", {"id": row[0], "method": "badge"}, time=iso_utc(now), actor=str(row[0]))
        return self.get(str(row[0]))

    # -- approvals -------------------------------------------------------------------------------

    def authorize(
        self, actor: StaffMember, action: Action, now: datetime, *, approver_id: str | None = None,
        approver_pin: str | None = None, approver_badge: str | None = None,
    ) -> Approval:  # fmt: skip
        """Permission for ``actor`` to do ``action`` once.

        If the actor's role does not allow it, a supervisor approves by PIN or badge
        without logging the actor out; the approval names both and expires soon.
        """
        expires = now + self.policy.approval_ttl
        if allowed(actor.role, action):
            return Approval(action, actor.id, None, expires)
        if approver_badge is not None:
            approver = self.login_badge(approver_badge, now)
        elif approver_id is not None and approver_pin is not None:
            approver = self.login_pin(approver_id, approver_pin, now)
        else:
            raise AuthError(f"{action} needs a supervisor's approval")
        if approver.id == actor.id or not allowed(approver.role, action):
            raise AuthError(f"{approver.name} ({approver.role}) may not approve {action}")
        self.ledger.append("approval.granted", {"action": action.value, "actor": actor.id}, time=iso_utc(now),
                           actor=actor.id, approver=approver.id)  # fmt: skip
        return Approval(action, actor.id, approver.id, expires)
