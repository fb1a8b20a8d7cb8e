"""The outbox relay: publishes ledger events in sequence order and retires them on the shop's ack.

The relay reads the outbox through its own connection to the ledger file, so a
sale committed by any process (the UI daemon, ``tillbox sale``) is seen on the
next poll. It keeps at most ``window`` events published but not PUBACKed, marks
events published on PUBACK (batched), and acknowledged when the hub's end-to-end
ack on ``.../res/ack`` names the highest contiguous sequence it holds. After a
(re)connect, a restart, or ``ack_timeout`` without ack progress, it starts again
from the first unacknowledged event; the hub deduplicates by event id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Final

from paho.mqtt.properties import Properties

from appliance.clock import Clock, iso_utc
from appliance.ledger import Ledger
from sync.contract import CONTENT_TYPE, device_topic, envelope, event_name
from sync.link import message_properties

log = logging.getLogger(__name__)

#: Flush PUBACK marks to the ledger at least this often (seconds) or this many at once.
FLUSH_INTERVAL: Final = 0.2
FLUSH_COUNT: Final = 2000

Publish = Callable[[str, bytes, Properties], "int | None"]


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class OutboxRelay:
    """Moves outbox events to the broker; driven by the sync service's loop thread."""

    def __init__(
        self,
        ledger: Ledger,
        publish: Publish,
        *,
        clock: Clock,
        window: int = 100,
        ack_timeout: float = 60.0,
    ) -> None:
        self.ledger = ledger
        self._publish = publish
        self.clock = clock
        self.window = window
        self.ack_timeout = ack_timeout
        self.store, self.device = ledger.store_id, ledger.device_id
        self._props = message_properties(ContentType=CONTENT_TYPE)
        self._topics: dict[str, str] = {}
        self.inflight: dict[int, int] = {}
        self._pubacked: list[int] = []
        self._last_flush = clock.monotonic()
        self.acked = self._acked_from_ledger()
        self.cursor = self.acked
        self._last_progress = clock.monotonic()
        self._last_rewind = -1e9
        self.published = 0
        self.online = False

    def _acked_from_ledger(self) -> int:
        row = self.ledger.conn.execute("SELECT MIN(seq) FROM outbox WHERE acked_at IS NULL").fetchone()
        if row[0] is not None:
            return int(row[0]) - 1
        return self.last_seq()

    def last_seq(self) -> int:
        """The newest sequence number written to the outbox (by any process)."""
        return self.ledger.counter("outbox_seq")

    def _topic(self, type_: str) -> str:
        topic = self._topics.get(type_)
        if topic is None:
            topic = self._topics[type_] = device_topic(self.store, self.device, "evt", event_name(type_))
        return topic

    # -- connection events -----------------------------------------------------------------------

    def connected(self) -> None:
        """After every (re)connect: start again from the first unacknowledged event."""
        self.online = True
        self.inflight.clear()
        self.cursor = self.acked
        self._last_progress = self.clock.monotonic()

    def disconnected(self) -> None:
        self.online = False
        self.inflight.clear()
        self.flush(force=True)

    def on_published(self, mid: int) -> None:
        seq = self.inflight.pop(mid, None)
        if seq is not None:
            self._pubacked.append(seq)

    def on_ack(self, seq: int) -> int:
        """The hub holds every event up to ``seq``; returns how many events this retired."""
        if seq <= self.acked:
            now = self.clock.monotonic()
            if seq == self.acked and self.cursor > seq and not self.inflight and now - self._last_rewind >= 1.0:
                # The hub saw a gap after seq (events lost on the way): send from there again.
                self._last_rewind = now
                self.cursor = seq
            return 0
        last = self.last_seq()
        if seq > last:
            raise ValueError(f"the shop acknowledges sequence {seq}, but this till has only written {last}")
        count = self.ledger.mark_acked(seq, iso_utc(self.clock.now()))
        self.acked = seq
        self.cursor = max(self.cursor, seq)
        self._last_progress = self.clock.monotonic()
        return count

    # -- the pump --------------------------------------------------------------------------------

    def pump(self, limit: int | None = None) -> int:
        """Publish events after the cursor while the in-flight window has room; returns how many."""
        if not self.online:
            return 0
        now = self.clock.monotonic()
        if self.cursor > self.acked and now - self._last_progress > self.ack_timeout and not self.inflight:
            log.warning("no ack from the shop for %.0f s; sending events after %d again", self.ack_timeout, self.acked)
            self.cursor = self.acked
            self._last_progress = now
        room = min(self.window, limit or self.window) - len(self.inflight)
        if room <= 0 or self.cursor >= self.last_seq():
            return 0
        sent = 0
        for event in self.ledger.outbox(after=self.cursor, limit=room):
            payload = envelope(event, store=self.store, device=self.device)
            mid = self._publish(self._topic(event.type), payload, self._props)
            if mid is None:
                break
            self.inflight[mid] = event.seq
            self.cursor = event.seq
            sent += 1
        self.published += sent
        return sent

    def flush(self, *, force: bool = False) -> None:
        """Write the batched PUBACK marks."""
        if not self._pubacked:
            return
        now = self.clock.monotonic()
        if force or len(self._pubacked) >= FLUSH_COUNT or now - self._last_flush >= FLUSH_INTERVAL:
            seqs, self._pubacked = self._pubacked, []
            self.ledger.mark_published(seqs, iso_utc(self.clock.now()))
            self._last_flush = now

    # -- health ----------------------------------------------------------------------------------

    def backlog(self) -> tuple[int, int]:
        """Unacknowledged events: how many, and the age in seconds of the oldest."""
        row = self.ledger.conn.execute(
            "SELECT count(*), MIN(time) FROM outbox WHERE seq > ? AND acked_at IS NULL", (self.acked,)
        ).fetchone()
        size = int(row[0])
        if not size:
            return 0, 0
        age = (self.clock.now() - _parse_time(str(row[1]))).total_seconds()
        return size, max(0, int(age))
