"""Delivering signed updates: the till fetches what the shop offers, root applies it.

The shop publishes a retained ``update-offer`` (``tillbox/v1/{store}/update/offer``). The
sync service hands each offer to an :class:`UpdateFetcher`, which runs as the daemon's
user on a thread of its own (never the sync or event loop thread). It downloads the
bundle, checks its size, SHA-256 and signature, and renames it into ``ready/``. Root
(``tillbox update apply-ready``, started by ``tillbox-update-apply.path`` and ``.timer``)
takes it from there with :func:`apply_ready`. It trusts nothing the daemon wrote: it
checks the signature again with its own keys before :meth:`appliance.update.Installer.install`
(which checks it a third time and every file's hash while unpacking).

Files under ``DATA_DIR/updates/`` (the daemon's)::

    .partial             the download in progress
    ready/<release>.tar  a bundle the daemon has checked, waiting for root
    fetch.json           the fetcher's memory: releases fetched or refused, the last status
    result.json          root's verdict on the last bundle it took from ready/ (written by root)

Progress goes to the retained ``update-status`` topic (``{device}/status/update``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import ssl
import stat
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Literal, get_args
from urllib.parse import urlsplit

from appliance.clock import Clock, SystemClock, iso_utc
from appliance.errors import InputError
from appliance.update import Installer, UpdateBusy, UpdateError, load_public_keys, verify_bundle

if TYPE_CHECKING:
    from appliance.config import Config

log = logging.getLogger(__name__)

UPDATES_DIR: Final = "updates"
READY_DIR: Final = "ready"
PARTIAL: Final = ".partial"
FETCH_STATE: Final = "fetch.json"
RESULT: Final = "result.json"
State = Literal["downloading", "ready", "refused", "installed", "failed", "rolled_back"]
#: ``<release>.tar`` in ``ready/`` (the release rule of appliance.update and the update-offer schema).
_BUNDLE = re.compile(r"([A-Za-z0-9][A-Za-z0-9.+_-]{0,63})\.tar")
_NUMERIC = re.compile(r"[0-9]+(\.[0-9]+)*")
_CHUNK = 1 << 16
_REMEMBER = 32  # releases kept in fetch.json
_RESULT_BYTES = 65536


# -- releases --------------------------------------------------------------------------------------


def release_key(release: str) -> tuple[int, ...] | None:
    """The numeric dotted part a release starts with (``1.2.0+lab1`` -> (1, 2)); None when it has none."""
    match = _NUMERIC.match(release)
    if match is None:
        return None
    parts = [int(p) for p in match.group().split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def older(release: str, than: str | None) -> bool:
    """True when ``release`` is a lower numeric release than ``than`` (unordered releases are not older)."""
    a, b = release_key(release), release_key(than) if than else None
    return a is not None and b is not None and a < b


def running_release(install_root: Path) -> str:
    """The version ``current`` points at under the install root, else the installed package's version."""
    from appliance import __version__

    try:
        return Installer(install_root).current or __version__
    except OSError:
        return __version__


def failed_releases(install_root: Path) -> list[str]:
    """Versions that failed their health gate (``state.json`` of the install root); empty when unreadable."""
    try:
        return Installer(install_root).failed
    except (OSError, ValueError, KeyError, TypeError):
        return []


# -- fetching (the daemon's user) -----------------------------------------------------------------


@dataclass(frozen=True)
class FetchOptions:
    """Where and how bundles are fetched (``[update]``; tests shorten the waits)."""

    data_dir: Path
    keys_dir: Path = Path("/etc/tillbox/update-keys")
    install_root: Path = Path("/opt/tillbox")
    allow_http: bool = False
    ca_file: Path | None = None
    max_bytes: int = 536_870_912
    keep_free: int = 268_435_456
    retries: int = 5
    retry_delay: float = 30.0
    retry_max_delay: float = 3600.0
    timeout: float = 30.0

    @classmethod
    def from_config(cls, config: Config, data_dir: Path) -> FetchOptions:
        u = config.update
        return cls(
            data_dir=data_dir, keys_dir=Path(u.keys_dir), install_root=Path(u.install_root),
            allow_http=u.allow_http, ca_file=data_dir / u.tls_ca_file if u.tls_ca_file else None,
            max_bytes=u.max_bytes, keep_free=u.keep_free_mb * 1_048_576, retries=u.retries,
            retry_delay=float(u.retry_seconds), timeout=float(u.timeout_seconds),
        )  # fmt: skip


@dataclass(frozen=True)
class Offer:
    """One bundle offered by the shop (an ``update-offer`` document, already schema-checked)."""

    release: str
    url: str
    sha256: str
    size: int
    not_before: datetime | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Offer:
        nb = doc.get("not_before")
        not_before = None
        if nb:
            try:
                not_before = datetime.fromisoformat(str(nb).upper().replace("Z", "+00:00"))
            except ValueError:
                raise InputError(f"not_before {str(nb)[:40]!r} is not a date-time") from None
            if not_before.tzinfo is None:
                raise InputError("not_before has no UTC offset")
        return cls(str(doc["release"]), str(doc["url"]), str(doc["sha256"]), int(doc["size"]), not_before)


class _Refused(Exception):
    """The bundle is refused for good (until the shop offers another url or hash)."""


class _Retry(Exception):
    """A network failure: try again after a wait."""


class _Failed(Exception):
    """A local problem (no keys, no space): given up until the offer comes again."""


class _Abandoned(Exception):
    """Stopped, or a newer offer came in."""


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs the till may download from (never from https down to http)."""

    def __init__(self, allow_http: bool) -> None:
        self.allow_http = allow_http

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        problem = url_problem(newurl, allow_http=self.allow_http)
        if problem:
            raise _Refused(f"redirected to a URL the till may not use: {problem}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def url_problem(url: str, *, allow_http: bool) -> str | None:
    """Why the till may not download from ``url``, or None."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname:
        return None if allow_http else "http:// is not allowed ([update] allow_http = false)"
    return f"{url[:100]!r} is not an http(s) URL with a host"


class UpdateFetcher:
    """Fetches offered bundles into ``DATA_DIR/updates/ready/`` on its own thread; reports each step.

    :meth:`offer` (from the sync thread) only decides and queues; the worker downloads. ``report``
    gets every ``update-status`` document, from either thread. The newest offer wins: an offer
    of another release stops a download or retry in progress.
    """

    def __init__(
        self,
        options: FetchOptions,
        *,
        device: str,
        report: Callable[[dict[str, Any]], object] = lambda doc: None,
        clock: Clock | None = None,
        running: Callable[[], str] | None = None,
    ) -> None:
        self.options = options
        self.device = device
        self._report = report
        self.clock = clock or SystemClock()
        self._running = running or (lambda: running_release(options.install_root))
        self.dir = options.data_dir / UPDATES_DIR
        self.ready_dir = self.dir / READY_DIR
        self._cond = threading.Condition()
        self._lock = threading.Lock()  # the memory (fetch.json)
        self._stop = threading.Event()
        self._wanted: Offer | None = None
        self._busy: Offer | None = None
        self._thread: threading.Thread | None = None
        self._memory = self._load()
        self._result_seen: tuple[int, int] | None = None
        self._write_problem: str | None = None
        with contextlib.suppress(OSError):
            (self.dir / PARTIAL).unlink()  # a download a crash or stop interrupted
        with contextlib.suppress(OSError):
            # Made now, long before a bundle is renamed into it: tillbox-update-apply.path
            # watches this directory once it exists, and would miss a rename into one just made.
            self.ready_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def last(self) -> dict[str, Any] | None:
        """The last status reported (it survives restarts)."""
        last = self._memory.get("last")
        return dict(last) if isinstance(last, dict) else None

    # -- memory ----------------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        try:
            memory = json.loads((self.dir / FETCH_STATE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"releases": {}, "last": None, "result": None}
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); starting afresh", self.dir / FETCH_STATE, exc)
            return {"releases": {}, "last": None, "result": None}
        if not isinstance(memory, dict) or not isinstance(memory.get("releases"), dict):
            return {"releases": {}, "last": None, "result": None}
        last = memory.get("last")
        if not (isinstance(last, dict) and isinstance(last.get("release"), str) and isinstance(last.get("time"), str)
                and last.get("state") in get_args(State)):  # fmt: skip
            memory["last"] = None
        return memory

    def _remember(self, release: str | None = None, entry: dict[str, Any] | None = None, **top: Any) -> None:
        with self._lock:
            releases: dict[str, Any] = self._memory["releases"]
            if release is not None and entry is not None:
                releases.pop(release, None)
                releases[release] = entry
                for old in list(releases)[:-_REMEMBER]:
                    del releases[old]
            self._memory.update(top)
            try:
                _write_json(self.dir / FETCH_STATE, self._memory)
            except OSError as exc:  # kept in memory; logged once, not on every status
                problem = f"{exc.strerror or exc}"
                if problem != self._write_problem:
                    log.warning("cannot write %s: %s", self.dir / FETCH_STATE, problem)
                self._write_problem = problem
            else:
                self._write_problem = None

    def _seen(self, release: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._memory["releases"].get(release)
        return dict(entry) if isinstance(entry, dict) else None

    def _status(self, release: str, state: State, error: str | None = None, *, attempt: int | None = None,
                time: str | None = None) -> dict[str, Any]:  # fmt: skip
        doc: dict[str, Any] = {"release": release, "state": state, "time": time or iso_utc(self.clock.now())}
        if error:
            doc["error"] = error[:1000]
        if attempt is not None:
            doc["attempt"] = attempt
        self._remember(last=doc)
        try:
            self._report(dict(doc))
        except Exception:
            log.exception("reporting the update status failed")
        return doc

    def _refuse(self, offer: Offer, reason: str) -> None:
        log.warning("update %s refused: %s", offer.release, reason)
        self._remember(offer.release, {"state": "refused", "sha256": offer.sha256, "url": offer.url, "error": reason})
        self._status(offer.release, "refused", reason)

    # -- offers (the sync thread) ----------------------------------------------------------------

    def offer(self, doc: Mapping[str, Any]) -> str | None:
        """Take an offer: None when it is queued for download, else why it is ignored."""
        devices = doc.get("devices")
        if devices is not None and self.device not in devices:
            return "offered to other tills"
        offer = Offer.from_doc(doc)
        running = self._running()
        if offer.release == running:
            return f"{offer.release} is running"
        seen = self._seen(offer.release)
        if seen is not None and seen.get("state") in ("ready", "installed", "rolled_back"):
            return f"{offer.release} was fetched already"
        if seen is not None and seen.get("state") == "refused" and (seen.get("sha256"), seen.get("url")) == (
            offer.sha256, offer.url
        ):  # fmt: skip
            return f"{offer.release} was refused already"
        if offer.release in failed_releases(self.options.install_root):
            return f"{offer.release} failed its health gate"
        if older(offer.release, running):
            self._refuse(offer, f"{offer.release} is older than the running version {running}")
            return "older than the running version"
        with self._cond:
            if offer in (self._busy, self._wanted):
                return f"{offer.release} is being fetched"
            self._wanted = offer
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tillbox-update-fetch", daemon=True)
                self._thread.start()
        return None

    def close(self) -> None:
        """Stop the worker (a download in progress is dropped); idempotent."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)  # a download blocked on the network ends with the process

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._wanted is None and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                offer, self._wanted = self._wanted, None
                assert offer is not None
                self._busy = offer
            try:
                self._fetch(offer)
            except _Abandoned:
                log.info("fetching update %s stopped", offer.release)
            except Exception as exc:
                log.exception("fetching update %s failed", offer.release)
                self._status(offer.release, "failed", f"internal error: {type(exc).__name__}: {exc}")
            finally:
                with contextlib.suppress(OSError):
                    (self.dir / PARTIAL).unlink(missing_ok=True)
                with self._cond:
                    self._busy = None

    def _wait(self, seconds: float, offer: Offer) -> None:
        """Sleep, unless stopped or a newer offer comes (then raise :class:`_Abandoned`)."""
        with self._cond:
            self._cond.wait_for(lambda: self._stop.is_set() or self._superseded(offer), timeout=seconds)
        self._check(offer)

    def _superseded(self, offer: Offer) -> bool:
        return self._wanted is not None and self._wanted != offer

    def _check(self, offer: Offer) -> None:
        if self._stop.is_set() or self._superseded(offer):
            raise _Abandoned

    def _fetch(self, offer: Offer) -> None:
        while offer.not_before is not None and self.clock.now() < offer.not_before:
            self._wait(min(60.0, (offer.not_before - self.clock.now()).total_seconds()), offer)
        opts = self.options
        try:
            keys = self._keys()
            problem = url_problem(offer.url, allow_http=opts.allow_http)
            if problem:
                raise _Refused(problem)
            if offer.size > opts.max_bytes:
                raise _Refused(f"the bundle's {offer.size} bytes are over the limit of {opts.max_bytes}")
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            free = shutil.disk_usage(self.dir).free
            if free - offer.size < opts.keep_free:
                raise _Failed(f"not enough space: {offer.size} bytes would leave less than {opts.keep_free} free")
            self._download_with_retries(offer)
            manifest = verify_bundle(self.dir / PARTIAL, keys)
            if manifest.version != offer.release:
                raise _Refused(f"the bundle holds version {manifest.version}, not {offer.release}")
            self._place(offer)
        except UpdateError as exc:
            self._refuse(offer, str(exc).replace(PARTIAL + ": ", ""))
        except _Refused as exc:
            self._refuse(offer, str(exc))
        except _Failed as exc:
            log.warning("update %s not fetched: %s", offer.release, exc)
            self._status(offer.release, "failed", str(exc))
        except OSError as exc:
            log.warning("update %s not fetched: %s", offer.release, exc)
            self._status(offer.release, "failed", f"cannot store the bundle: {exc.strerror or exc}")

    def _keys(self) -> list[Any]:
        where = self.options.keys_dir
        try:
            keys = load_public_keys(sorted(where.glob("*.pem")))
        except (UpdateError, ValueError, OSError) as exc:
            raise _Failed(f"cannot load the trusted update keys in {where}: {exc}") from None
        if not keys:
            raise _Failed(f"no trusted update keys in {where}")
        return keys

    def _download_with_retries(self, offer: Offer) -> None:
        delay = self.options.retry_delay
        attempts = self.options.retries + 1
        for attempt in range(1, attempts + 1):
            self._check(offer)
            self._status(offer.release, "downloading", attempt=attempt)
            try:
                self._download(offer)
                return
            except _Retry as exc:
                if attempt == attempts:
                    raise _Failed(f"{exc} (gave up after {attempts} attempts)") from None
                log.info("downloading update %s failed (%s); trying again in %g s", offer.release, exc, delay)
            self._wait(delay, offer)
            delay = min(delay * 2, self.options.retry_max_delay)

    def _opener(self) -> urllib.request.OpenerDirector:
        ca = self.options.ca_file
        try:
            context = ssl.create_default_context(cafile=str(ca) if ca else None)
        except (OSError, ssl.SSLError) as exc:
            raise _Failed(f"cannot load the CA file {ca}: {exc}") from None
        return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                           _Redirects(self.options.allow_http))  # fmt: skip

    def _download(self, offer: Offer) -> None:
        """Stream the bundle to ``.partial`` (synced), checking its size and SHA-256."""
        limit = min(offer.size, self.options.max_bytes)
        digest = hashlib.sha256()
        got = 0
        request = urllib.request.Request(offer.url, headers={"User-Agent": "tillbox-update"})  # noqa: S310 - scheme checked
        try:
            with self._opener().open(request, timeout=self.options.timeout) as response, _partial(self.dir) as out:
                length = response.headers.get("Content-Length", "")
                if length.isdigit() and int(length) != offer.size:
                    raise _Refused(f"the server sends {length} bytes; the offer says {offer.size}")
                while chunk := response.read(_CHUNK):
                    got += len(chunk)
                    if got > limit:
                        raise _Refused(f"the download is larger than the {limit} bytes offered")
                    self._check(offer)
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except urllib.error.HTTPError as exc:
            if exc.code in (408, 425, 429) or exc.code >= 500:
                raise _Retry(f"the server answered HTTP {exc.code} {exc.reason}") from None
            raise _Refused(f"the server answered HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise _Retry(f"cannot download from {urlsplit(offer.url).hostname}: {exc.reason}") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException, ssl.SSLError) as exc:
            raise _Retry(f"the download broke off: {exc or type(exc).__name__}") from None
        if got < offer.size:
            raise _Retry(f"the download ended after {got} of {offer.size} bytes")
        if digest.hexdigest() != offer.sha256:
            raise _Refused(f"SHA-256 mismatch: the download is {digest.hexdigest()}, the offer says {offer.sha256}")

    def _place(self, offer: Offer) -> None:
        """Rename the checked download to ``ready/<release>.tar`` (only the newest waits there)."""
        self.ready_dir.mkdir(mode=0o700, exist_ok=True)
        target = self.ready_dir / f"{offer.release}.tar"
        for other in self.ready_dir.glob("*.tar"):
            if other != target:
                other.unlink(missing_ok=True)  # superseded by this offer
        os.replace(self.dir / PARTIAL, target)
        _fsync_dir(self.ready_dir)
        _fsync_dir(self.dir)
        self._remember(offer.release, {"state": "ready", "sha256": offer.sha256, "url": offer.url})
        log.info("update %s is ready to install", offer.release)
        self._status(offer.release, "ready")

    # -- what root did (the sync thread, every health tick) --------------------------------------

    def check_result(self) -> dict[str, Any] | None:
        """Report root's last verdict (``result.json``), or its rollback by the gate, once; the status or None."""
        path = self.dir / RESULT
        state_file = self.options.install_root / "state.json"
        try:
            seen = (path.stat().st_mtime_ns, _mtime(state_file))
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.debug("cannot read %s: %s", path, exc)
            return None
        if seen == self._result_seen:
            return None
        self._result_seen = seen
        try:
            doc = _read_result(path)
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", path, exc)
            return None
        release, state, error = doc["release"], doc["state"], doc.get("error")
        if state == "installed" and release in failed_releases(self.options.install_root):
            state = "rolled_back"
            error = f"{release} failed its health gate; the till went back to {self._running()}"
        fingerprint = [release, state, error, doc["time"]]
        if fingerprint == self._memory.get("result"):
            return None
        if state == "failed":  # root keeps the bundle in ready/ and tries again later
            self._remember(result=fingerprint)
        else:
            entry = self._seen(release) or {}
            self._remember(release, {**entry, "state": state, "error": error}, result=fingerprint)
        return self._status(release, state, error, time=doc["time"])


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _read_result(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        raw = fh.read(_RESULT_BYTES + 1)
    if len(raw) > _RESULT_BYTES:
        raise ValueError("too large")
    doc = json.loads(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("release"), str) or not _BUNDLE.fullmatch(
        doc["release"] + ".tar"
    ):  # fmt: skip
        raise ValueError("no valid release")
    if doc.get("state") not in ("installed", "refused", "failed") or not isinstance(doc.get("time"), str):
        raise ValueError("no valid state and time")
    if not isinstance(doc.get("error", ""), str):
        raise ValueError("error is not text")
    return doc


@contextlib.contextmanager
def _partial(directory: Path) -> Iterator[IO[bytes]]:
    fd = os.open(directory / PARTIAL, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        yield fh


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Write atomically (a temporary file beside it, synced, renamed)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(doc, indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# -- applying (root) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """What :func:`apply_ready` did: ``none`` (nothing ready), ``waiting`` (kept for a later run),
    ``installed``, ``refused`` (removed) or ``failed`` (kept, tried again later)."""

    state: Literal["none", "waiting", "installed", "refused", "failed"]
    release: str | None
    message: str


_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int) -> int | None:
    """A directory inside ``dir_fd`` without following a symlink; None when it does not exist."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UpdateError(f"updates/{name} is not a plain directory ({exc.strerror or exc}); not touching it") from None


def apply_ready(
    data_dir: Path,
    installer: Installer,
    keys: list[Any],
    *,
    busy: Callable[[], str | None],
    restart: Callable[[], None],
    now: Callable[[], str],
) -> Applied:
    """Install the newest bundle in ``data_dir/updates/ready/`` (as root), then ``restart``.

    Everything under ``updates/`` belongs to the daemon's user, so nothing there is trusted:
    directories are opened without following symlinks, the bundle through one open file
    descriptor, and its signature is checked with ``keys`` before the installer checks it
    again. A bundle waits while the till trades or the running version is not yet confirmed;
    a bad one (signature, a version running, older or failed before) is removed. The verdict
    goes to ``updates/result.json`` for the daemon to report.
    """
    try:
        data_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Applied("none", None, f"no data directory {data_dir}")
    fds = [data_fd]
    try:
        updates_fd = _open_dir(UPDATES_DIR, data_fd)
        if updates_fd is None:
            return Applied("none", None, "no update is ready")
        fds.append(updates_fd)
        ready_fd = _open_dir(READY_DIR, updates_fd)
        if ready_fd is None:
            return Applied("none", None, "no update is ready")
        fds.append(ready_fd)
        try:
            fcntl.flock(ready_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return Applied("waiting", None, "another apply-ready is running")
        names = sorted((n for n in os.listdir(ready_fd) if _BUNDLE.fullmatch(n)),
                       key=lambda n: (release_key(n[:-4]) or (), n))  # fmt: skip
        if not names:
            return Applied("none", None, "no update is ready")
        *superseded, name = names
        for old in superseded:
            with contextlib.suppress(IsADirectoryError, FileNotFoundError, PermissionError):
                os.unlink(old, dir_fd=ready_fd)
        applied = _apply_one(name, ready_fd, installer, keys, busy)
        if applied.state in ("installed", "refused"):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(name, dir_fd=ready_fd)
        if applied.state in ("installed", "refused", "failed"):
            _write_result(updates_fd, applied, now())
        if applied.state == "installed":
            restart()
        return applied
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _apply_one(name: str, ready_fd: int, installer: Installer, keys: list[Any],
               busy: Callable[[], str | None]) -> Applied:  # fmt: skip
    release = name[:-4]
    running = installer.current
    if release == running:
        return Applied("refused", release, f"version {release} is already running")
    if older(release, running):
        return Applied("refused", release, f"{release} is older than the running version {running}")
    if release in installer.failed:
        return Applied("refused", release, f"{release} failed its health gate before")
    if running is not None and installer.pending == running:
        return Applied("waiting", release, f"the running version {running} has not passed its health gate yet")
    reason = busy()
    if reason:
        return Applied("waiting", release, f"not updating now: {reason}; the bundle waits for a later run")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=ready_fd)
    except OSError as exc:
        return Applied("refused", release, f"{name} cannot be opened as a plain file ({exc.strerror or exc})")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return Applied("refused", release, f"{name} is not a regular file")
        with tempfile.TemporaryDirectory(prefix="tillbox-apply-") as tmp:
            # The bundle's own name for messages, the one open file for every read: a rename or a
            # symlink the daemon's user puts in ready/ afterwards changes nothing here.
            bundle = Path(tmp) / name
            bundle.symlink_to(f"/proc/self/fd/{fd}")
            try:
                manifest = verify_bundle(bundle, keys)
            except UpdateError as exc:
                return Applied("refused", release, str(exc))
            if manifest.version != release:
                return Applied("refused", release, f"the bundle holds version {manifest.version}, not {release}")
            try:
                installer.install(bundle, keys, busy=busy)
            except UpdateBusy as exc:
                return Applied("waiting", release, str(exc))
            except (UpdateError, OSError) as exc:
                text = str(exc) if isinstance(exc, UpdateError) else f"{exc.strerror or exc}"
                return Applied("failed", release, f"installing {release} failed: {text}; it is tried again later")
    finally:
        os.close(fd)
    return Applied("installed", release, f"installed {release}; the daemon restarts on it and the gate judges it")


def _write_result(updates_fd: int, applied: Applied, time: str) -> None:
    """``result.json`` in the daemon's ``updates/`` directory: a fresh file (never through a symlink), renamed."""
    doc: dict[str, Any] = {"release": applied.release, "state": applied.state, "time": time}
    if applied.state != "installed":
        doc["error"] = applied.message[:1000]
    tmp = f".result.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=updates_fd)
    try:
        owner = os.fstat(updates_fd)
        if os.geteuid() == 0:
            os.fchown(fd, owner.st_uid, owner.st_gid)  # the daemon's, like the rest of updates/
        os.write(fd, json.dumps(doc).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, RESULT, src_dir_fd=updates_fd, dst_dir_fd=updates_fd)
    os.fsync(updates_fd)


def systemctl_restart(systemctl: str = "systemctl", timeout: float = 600.0) -> Callable[[], None]:
    """Restart the daemon on the new version, then run the health gate (as the lab update does)."""
    import subprocess

    def run() -> None:
        for args in (("restart", "tillbox.service"), ("start", "tillbox-update-gate.service")):
            done = subprocess.run([systemctl, *args], capture_output=True, text=True, timeout=timeout, check=False)
            if done.returncode != 0:
                raise UpdateError(f"systemctl {' '.join(args)} failed: {done.stderr.strip() or done.returncode}")

    return run
