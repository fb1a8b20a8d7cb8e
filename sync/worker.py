"""The thread shape shared by the sync service and the hub.

One thread owns the MQTT link and the database connection; other threads hand it
work through :meth:`LinkWorker.call` and get a future back.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class LinkWorker:
    """Stop flag, wake-up event, call queue and the owning thread."""

    def _init_worker(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._calls: queue.Queue[Callable[[], None]] = queue.Queue()
        self._thread: threading.Thread | None = None

    def stop(self) -> None:
        """Ask the loop to finish."""
        self._stop.set()
        self._wake.set()

    def _join(self, timeout: float = 10.0) -> None:
        """Stop and wait for the thread; idempotent."""
        self.stop()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the worker thread; the future gets its result."""
        fut: Future[T] = Future()

        def run() -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)

        self._calls.put(run)
        self._wake.set()
        return fut

    def _run_calls(self) -> None:
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            fn()
