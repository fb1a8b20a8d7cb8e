"""Sessions of the kiosk API: staff logins, device roles, supervisor approval tokens, the kiosk key.

A session is a random bearer token held in memory by the daemon; a restart ends every
session. Staff sessions end after ``[staff] session_minutes`` without a request.

Device sessions are for screens nobody logs in to: the self-checkout lane (role
``self_checkout``, shopper actions only) and the customer display (read-only). A screen
gets one by presenting the *kiosk key*, a random secret the daemon keeps in
``DATA_DIR/kiosk.key`` (mode 0600) and renews on every boot of the machine. The kiosk
launcher reads it and opens ``/self-checkout#key=KEY``; the fragment never leaves the
browser except in the one POST that trades it for a session.

An approval token is a supervisor's permission for one action, issued by
:meth:`Approvals.issue` after :meth:`appliance.staff.StaffStore.authorize` checked the
supervisor's PIN or badge. It is bound to the session that asked, used once, and
expires with the approval.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from appliance.errors import TillboxError
from appliance.staff import Action, Approval, AuthError, Role, StaffMember, allowed

log = logging.getLogger(__name__)

SessionKind = Literal["staff", "self_checkout", "display"]
DEVICE_KINDS: tuple[SessionKind, ...] = ("self_checkout", "display")
#: The lane acts under this id in the journal.
LANE_ACTOR = "self-checkout"
MAX_APPROVALS = 64
MAX_SESSIONS = 256


class Unauthenticated(TillboxError):
    """No session, an unknown one, or one that expired: log in again (HTTP 401)."""


class Forbidden(TillboxError):
    """The session's role may not do this (HTTP 403)."""


class ApprovalRequired(Forbidden):
    """The role may do this with a supervisor's approval: get an approval token and retry."""

    def __init__(self, action: Action) -> None:
        super().__init__(f"{action} needs a supervisor's approval")
        self.action = action


@dataclass
class Session:
    """One logged-in screen."""

    token: str
    kind: SessionKind
    member: StaffMember
    created: float
    last_seen: float

    @property
    def role(self) -> Role | None:
        """The role that decides permissions; ``None`` for the read-only customer display."""
        return None if self.kind == "display" else self.member.role

    @property
    def actor(self) -> str:
        return self.member.id

    def allows(self, action: Action) -> bool:
        role = self.role
        return role is not None and allowed(role, action)

    def public(self) -> dict[str, object]:
        """What the screen may know about its own session (never the token of another)."""
        return {"kind": self.kind, "staff": {"id": self.member.id, "name": self.member.name,
                                             "role": str(self.role) if self.role else None}}  # fmt: skip


@dataclass
class Sessions:
    """The sessions of one daemon run; times come from ``monotonic`` (seconds)."""

    idle_seconds: float
    monotonic: Callable[[], float]
    _by_token: dict[str, Session] = field(default_factory=dict)

    def open(self, member: StaffMember, kind: SessionKind = "staff") -> Session:
        """A new session for ``member``; the oldest idle one is dropped when there are too many."""
        self.prune()
        if len(self._by_token) >= MAX_SESSIONS:
            oldest = min(self._by_token.values(), key=lambda s: s.last_seen)
            del self._by_token[oldest.token]
        now = self.monotonic()
        session = Session(secrets.token_urlsafe(32), kind, member, now, now)
        self._by_token[session.token] = session
        return session

    def _expired(self, session: Session, now: float) -> bool:
        return session.kind == "staff" and now - session.last_seen > self.idle_seconds

    def peek(self, token: str | None) -> Session:
        """The live session for ``token`` without extending it; raises :class:`Unauthenticated`."""
        if not token:
            raise Unauthenticated("log in first: this needs a session")
        session = self._by_token.get(token)
        if session is None:
            raise Unauthenticated("the session is unknown or has ended; log in again")
        if self._expired(session, self.monotonic()):
            del self._by_token[token]
            raise Unauthenticated("the session expired after inactivity; log in again")
        return session

    def get(self, token: str | None) -> Session:
        """The live session for ``token``, marked as used now."""
        session = self.peek(token)
        session.last_seen = self.monotonic()
        return session

    def close(self, token: str) -> None:
        self._by_token.pop(token, None)

    def prune(self) -> list[Session]:
        """Drop expired sessions; returns them."""
        now = self.monotonic()
        gone = [s for s in self._by_token.values() if self._expired(s, now)]
        for s in gone:
            del self._by_token[s.token]
        return gone

    def active(self) -> list[Session]:
        self.prune()
        return list(self._by_token.values())


@dataclass
class Approvals:
    """Single-use approval tokens, each bound to the session that asked for it."""

    _tokens: dict[str, tuple[str, Approval]] = field(default_factory=dict)

    def issue(self, session: Session, approval: Approval, now: datetime) -> str:
        self._tokens = {t: v for t, v in self._tokens.items() if v[1].expires_at >= now}
        while len(self._tokens) >= MAX_APPROVALS:
            self._tokens.pop(next(iter(self._tokens)))
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (session.token, approval)
        return token

    def take(self, session: Session, token: str, action: Action, now: datetime) -> Approval:
        """Use an approval token for ``action``; raises :class:`AuthError` when it does not fit."""
        held = self._tokens.get(token)
        if held is None or held[0] != session.token:
            raise AuthError("the approval is unknown or was already used; ask again")
        approval = held[1]
        approval.check(action, now)
        del self._tokens[token]
        return approval


# -- the kiosk key ---------------------------------------------------------------------------------


def boot_time() -> float | None:
    """When the machine booted (seconds since the epoch), from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class KioskKey:
    """The per-boot secret that pairs the kiosk screens with the daemon."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.value = self._load_or_create()

    def _load_or_create(self) -> str:
        booted = boot_time()
        try:
            stat = self.path.stat()
            if booted is not None and stat.st_mtime >= booted:
                value = self.path.read_text(encoding="ascii").strip()
                if len(value) >= 32:
                    return value
        except (OSError, UnicodeDecodeError):
            pass
        value = secrets.token_urlsafe(32)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(value + "\n")
        os.replace(tmp, self.path)
        log.info("new kiosk key in %s", self.path)
        return value

    def matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.value.encode())


def lane_member(device_id: str) -> StaffMember:
    """The staff record a self-checkout lane acts as."""
    return StaffMember(LANE_ACTOR, f"Self-checkout {device_id}", Role.SELF_CHECKOUT)


def display_member(device_id: str) -> StaffMember:
    """The (permission-less) identity of a customer display; its role is never used."""
    return StaffMember("customer-display", f"Customer display {device_id}", Role.SELF_CHECKOUT)
