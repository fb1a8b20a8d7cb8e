"""Run a whole daemon (API, WebSocket, devices) on a background thread: for tests, the bench and tools.

>>> with DaemonThread(Daemon(config, tmp_path)) as running:
...     httpx.get(running.url + "/api/v1/health")

The daemon binds 127.0.0.1 on a free port. Leaving the ``with`` block stops the server,
closes the devices and the ledger, and joins the thread. :func:`chromium_page` opens the
screens in Debian's Chromium through Playwright (never a downloaded browser).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from appliance.daemon import Daemon, serve

T = TypeVar("T")


class DaemonThread:
    """A daemon serving on 127.0.0.1 from its own thread and event loop."""

    def __init__(self, daemon: Daemon, *, timeout: float = 20.0) -> None:
        self.daemon = daemon
        self.timeout = timeout
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DaemonThread:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(sock,), name="tillbox-daemon", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.timeout):
            self.stop()
            raise TimeoutError("the daemon did not start in time")
        if self._error is not None:
            self.stop()
            raise self._error
        return self

    def _run(self, sock: socket.socket) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(daemon: Daemon, port: int) -> None:
                self._ready.set()

            await serve(self.daemon, host="127.0.0.1", sock=sock, stop_event=self._stop, on_ready=ready)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
        finally:
            sock.close()
            self._ready.set()

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the daemon's loop and return its result."""
        return self.daemon.call(fn).result(timeout)

    def run(self, coro_fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Await ``coro_fn()`` on the daemon's loop and return its result."""
        assert self._loop is not None
        fut: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(coro_fn(), self._loop)
        return fut.result(timeout)

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(self.timeout)
            if self._thread.is_alive():
                raise RuntimeError("the daemon thread did not stop")
            self._thread = None

    def __enter__(self) -> DaemonThread:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._error is not None and exc[0] is None:
            raise self._error


def demo_config() -> Any:
    """The demo's configuration: every device simulated."""
    from appliance.demo import demo_config as config

    return config()


def demo_prepare(*, shift: bool = True) -> Callable[[Any], None]:
    """A ``prepare`` hook: the demo catalog, the demo staff and (optionally) an open shift."""

    def prepare(till: Any) -> None:
        from appliance.demo import open_demo_shift, seed, seed_staff

        seed(till, till.ledger.path.parent)
        seed_staff(till)
        if shift:
            open_demo_shift(till)

    return prepare


def leftover_threads(before: set[int | None], *, ignore: str = "", wait: float = 3.0) -> list[str]:
    """Threads started since ``before`` (idents) that are still alive after up to ``wait`` seconds.

    Worker threads of the daemon's loop (AnyIO's, for static files) end just after it closes.
    """
    import time

    deadline = time.monotonic() + wait
    while True:
        left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()
                and not (ignore and t.name.startswith(ignore))]  # fmt: skip
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


#: Debian's Chromium (``apt install chromium``); ``TILLBOX_CHROMIUM`` points elsewhere.
CHROMIUM = Path(os.environ.get("TILLBOX_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run")  # fmt: skip


@contextlib.contextmanager
def chromium_page(browser: Any = None, *, width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A Playwright page in a new context (of ``browser``, else of a Chromium started here).

    Raises AssertionError on leaving when the page threw JavaScript errors.
    """
    errors: list[str] = []
    with contextlib.ExitStack() as stack:
        if browser is None:
            from playwright.sync_api import sync_playwright

            pw = stack.enter_context(sync_playwright())
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
            stack.callback(browser.close)
        context = browser.new_context(viewport={"width": width, "height": height})
        stack.callback(context.close)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_default_timeout(10_000)
        yield page
    assert not errors, f"JavaScript errors: {errors}"


def log_in(page: Any, url: str, staff: str = "ann", pin: str = "1234") -> None:
    """Open the cashier screen at ``url`` and log in with a PIN; returns once the till shows."""
    page.goto(url + "/cashier")
    page.fill("#staff-id", staff)
    page.fill("#pin", pin)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#till:not(.hidden)")
