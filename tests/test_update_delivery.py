"""Delivering updates: the hub offers, the till fetches and checks as the daemon's user, root applies.

Real parts: Mosquitto on loopback, the reference hub, the till's sync service, a loopback HTTP
server with bundles made by ``build_bundle`` and a throw-away ed25519 key, SQLite ledgers, and
an install root in a temporary directory (writable, as on a developer machine).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.clock import FrozenClock
from appliance.config import parse_config
from appliance.demo import seed
from appliance.errors import InputError
from appliance.staff import Action, Approval
from appliance.till import Till, open_ledger
from appliance.update import Installer, UpdateError, build_bundle, load_public_keys, verify_bundle
from appliance.update_fetch import (
    FetchOptions,
    Offer,
    UpdateFetcher,
    apply_ready,
    older,
    release_key,
)
from sync.hub import Hub
from sync.link import LinkSettings
from sync.schemas import validate
from sync.service import SyncOptions, SyncService, settings_from_config
from sync.testing import Collector, Mosquitto, free_port, wait_until
from tests.conftest import open_shift

FAST = SyncOptions(health_interval=0.05, poll_interval=0.005, reconcile_interval=None)
STATUS = "tillbox/v1/demo/till-1/status/update"
OFFER = "tillbox/v1/demo/update/offer"


def _pem_pair(directory: Path, name: str) -> tuple[bytes, Path]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    pub = directory / f"{name}.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return pem, pub


class Web:
    """A loopback HTTP server for bundles; ``files`` by path, requests counted, optionally down."""

    def __init__(self, port: int | None = None) -> None:
        self.files: dict[str, bytes] = {}
        self.no_length: set[str] = set()
        self.hits: Counter[str] = Counter()
        self.port = port or free_port()
        self._server: http.server.ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Web:
        web = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                web.hits[self.path] += 1
                body = web.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                if self.path in web.no_length:
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclasses.dataclass
class Rig:
    tmp: Path
    data: Path
    root: Path
    keys: Path
    pem: bytes
    web: Web
    hub: Hub
    service: SyncService
    seen: Collector
    make_service: Callable[[], SyncService]

    def restart_service(self) -> None:
        """Stop the till's sync service and start a new one on the same data (a daemon restart)."""
        self.service.close()
        self.service = self.make_service()
        assert wait_until(lambda: self.service.link.connected)

    def bundle(self, version: str, pem: bytes | None = None, *, extra: bytes = b"") -> bytes:
        """A signed bundle of a tiny appliance tree, served at ``/<version>.tar``; its bytes."""
        src = self.tmp / f"src-{version}"
        (src / "bin").mkdir(parents=True, exist_ok=True)
        (src / "bin" / "tillbox").write_text(f"#!/bin/sh\necho {version}\n")
        (src / "bin" / "tillbox").chmod(0o755)
        (src / "VERSION").write_text(version)
        (src / "blob").write_bytes(extra)
        out = self.tmp / f"bundle-{version}-{os.urandom(3).hex()}.tar"
        build_bundle(src, version, pem or self.pem, out)
        body = out.read_bytes()
        self.web.files[f"/{version}.tar"] = body
        return body

    def offer(self, release: str, body: bytes, **kw: Any) -> int:
        kw.setdefault("url", self.web.url(f"/{release}.tar"))
        kw.setdefault("sha256", hashlib.sha256(body).hexdigest())
        kw.setdefault("size", len(body))
        return self.hub.offer_update("demo", release, kw.pop("url"), kw.pop("sha256"), kw.pop("size"), **kw)

    def statuses(self, release: str | None = None) -> list[dict[str, Any]]:
        docs = [json.loads(p) for t, p, _, _ in list(self.seen.messages) if t == STATUS and p]
        for doc in docs:
            validate("update-status", doc)
        return [d for d in docs if release is None or d["release"] == release]

    def wait_state(self, release: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
        assert wait_until(lambda: any(d["state"] == state for d in self.statuses(release)), timeout), self.statuses()
        return [d for d in self.statuses(release) if d["state"] == state][-1]

    def ready(self) -> list[str]:
        ready = self.data / "updates" / "ready"
        return sorted(p.name for p in ready.iterdir()) if ready.is_dir() else []

    def leftovers(self) -> bool:
        return (self.data / "updates" / ".partial").exists()


def _till_config(keys: Path, root: Path) -> Any:
    return parse_config(f'[store]\ndevice_id = "till-1"\n[update]\nkeys_dir = "{keys}"\nallow_http = true\n'
                        f'install_root = "{root}"\nretries = 3\n', environ={})  # fmt: skip


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    keys = tmp_path / "keys"
    pem, _ = _pem_pair(keys, "release")
    data, root = tmp_path / "till-1", tmp_path / "opt"
    config = _till_config(keys, root)
    with open_ledger(config, data) as led:
        till = Till(config, led, fast_hash=True)
        seed(till, data)
    web = Web().start()
    with Mosquitto(tmp_path / "broker") as broker:
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        seen = Collector(broker.url, [STATUS])
        link = dataclasses.replace(settings_from_config(config, data, (broker.url,)), backoff_initial=0.05)
        updates = dataclasses.replace(FetchOptions.from_config(config, data), retry_delay=0.05,
                                      retry_max_delay=0.2, keep_free=0)  # fmt: skip

        def make() -> SyncService:
            return SyncService.from_config(config, data, link=link, options=FAST, updates=updates).start()

        rig = None
        try:
            rig = Rig(tmp_path, data, root, keys, pem, web, hub, make(), seen, make)
            assert wait_until(lambda: rig.service.link.connected and hub.link.connected)
            yield rig
        finally:
            if rig is not None:
                rig.service.close()
            seen.close()
            hub.close()
            web.stop()


# -- fetching ----------------------------------------------------------------------------------------


def test_an_offer_is_fetched_checked_and_left_in_ready_for_root(rig: Rig) -> None:
    body = rig.bundle("0.2.0")
    version = rig.offer("0.2.0", body)
    ready = rig.wait_state("0.2.0", "ready")
    assert [d["state"] for d in rig.statuses("0.2.0")] == ["downloading", "ready"]
    assert rig.ready() == ["0.2.0.tar"] and not rig.leftovers()
    bundle = rig.data / "updates" / "ready" / "0.2.0.tar"
    assert bundle.read_bytes() == body
    keys = load_public_keys([rig.keys / "release.pem"])
    assert verify_bundle(bundle, keys).version == "0.2.0"
    assert rig.service.updates is not None and rig.service.updates.last == ready  # the technician page shows it
    with sqlite3.connect(rig.service.ledger.path) as conn:
        row = conn.execute("SELECT version, body FROM sync_docs WHERE name = 'update-offer'").fetchone()
    conn.close()
    assert row[0] == version and json.loads(row[1])["release"] == "0.2.0"


def test_a_wrong_hash_is_refused_and_nothing_is_left(rig: Rig) -> None:
    body = rig.bundle("0.2.0")
    rig.offer("0.2.0", body, sha256=hashlib.sha256(b"something else").hexdigest())
    refused = rig.wait_state("0.2.0", "refused")
    assert "SHA-256 mismatch" in refused["error"]
    assert rig.ready() == [] and not rig.leftovers()


def test_a_bundle_signed_by_an_untrusted_key_is_refused(rig: Rig) -> None:
    other, _ = _pem_pair(rig.tmp / "attacker", "attacker")
    body = rig.bundle("0.2.0", other)
    rig.offer("0.2.0", body)
    assert "bad signature" in rig.wait_state("0.2.0", "refused")["error"]
    assert rig.ready() == [] and not rig.leftovers()


def test_oversize_downloads_and_missing_files_are_refused(rig: Rig) -> None:
    body = rig.bundle("0.2.0", extra=os.urandom(200_000))
    rig.web.no_length.add("/0.2.0.tar")  # no Content-Length: the stream itself must be cut off
    rig.offer("0.2.0", body, size=100_000)
    assert "larger than the 100000 bytes offered" in rig.wait_state("0.2.0", "refused")["error"]
    assert rig.ready() == [] and not rig.leftovers()
    rig.offer("0.3.0", body, size=2**31)  # over [update] max_bytes: not even downloaded
    assert "over the limit" in rig.wait_state("0.3.0", "refused")["error"]
    assert rig.web.hits["/0.3.0.tar"] == 0
    rig.offer("0.4.0", body, url=rig.web.url("/gone.tar"))
    assert "HTTP 404" in rig.wait_state("0.4.0", "refused")["error"]
    assert rig.ready() == [] and not rig.leftovers()


def test_offers_for_other_tills_are_ignored(rig: Rig) -> None:
    elsewhere = rig.bundle("0.2.0")
    rig.offer("0.2.0", elsewhere, devices=["till-2", "till-3"])
    mine = rig.bundle("0.3.0")
    rig.offer("0.3.0", mine, devices=["till-2", "till-1"])
    rig.wait_state("0.3.0", "ready")  # handled after the first offer, in order
    assert rig.statuses("0.2.0") == [] and rig.web.hits["/0.2.0.tar"] == 0
    assert rig.ready() == ["0.3.0.tar"]


def test_the_same_release_is_not_fetched_twice(rig: Rig) -> None:
    body = rig.bundle("0.2.0")
    rig.offer("0.2.0", body)
    rig.wait_state("0.2.0", "ready")
    rig.offer("0.2.0", body)  # the shop offers it again (a new document version)
    rig.restart_service()  # and the retained offer comes again to a restarted daemon
    later = rig.bundle("0.3.0")
    rig.offer("0.3.0", later)
    rig.wait_state("0.3.0", "ready")
    assert rig.web.hits["/0.2.0.tar"] == 1
    assert [d["state"] for d in rig.statuses("0.2.0")].count("downloading") == 1
    assert rig.ready() == ["0.3.0.tar"], "only the newest offer waits for root"
    assert rig.service.updates is not None
    assert rig.service.updates.offer({"release": "0.2.0", "url": rig.web.url("/0.2.0.tar"),
                                      "sha256": "0" * 64, "size": 1}) == "0.2.0 was fetched already"  # fmt: skip


def test_a_server_that_is_down_is_tried_again_until_it_answers(rig: Rig) -> None:
    late = Web()
    body = rig.bundle("0.2.0")
    late.files["/0.2.0.tar"] = body
    rig.offer("0.2.0", body, url=late.url("/0.2.0.tar"))
    assert wait_until(lambda: any(d.get("attempt", 0) >= 2 for d in rig.statuses("0.2.0")))
    late.start()
    try:
        rig.wait_state("0.2.0", "ready")
    finally:
        late.stop()
    assert late.hits["/0.2.0.tar"] == 1 and rig.ready() == ["0.2.0.tar"]


def test_retries_are_bounded(rig: Rig) -> None:
    body = rig.bundle("0.2.0")
    rig.offer("0.2.0", body, url=f"http://127.0.0.1:{free_port()}/0.2.0.tar")
    failed = rig.wait_state("0.2.0", "failed")
    assert "gave up after 4 attempts" in failed["error"]  # [update] retries = 3
    assert [d.get("attempt") for d in rig.statuses("0.2.0") if d["state"] == "downloading"] == [1, 2, 3, 4]
    assert rig.ready() == [] and not rig.leftovers()


def test_an_older_release_is_refused_without_a_download(rig: Rig) -> None:
    body = rig.bundle("0.0.1")
    rig.offer("0.0.1", body)
    assert "older than the running version" in rig.wait_state("0.0.1", "refused")["error"]
    assert rig.web.hits["/0.0.1.tar"] == 0


def test_a_garbage_offer_is_dead_lettered_and_the_till_goes_on(rig: Rig) -> None:
    for payload in (b"{not json", json.dumps({"version": 9, "release": "../../etc", "url": "file:///etc/passwd",
                                              "sha256": "x", "size": -1}).encode()):  # fmt: skip
        rig.seen.client.publish(OFFER, payload, qos=1, retain=True)

    def dead() -> list[str]:
        with sqlite3.connect(rig.service.ledger.path) as conn:
            rows = [str(r[0]) for r in conn.execute("SELECT reason FROM dead_letters WHERE topic = ?", (OFFER,))]
        conn.close()
        return rows

    assert wait_until(lambda: len(dead()) == 2)
    assert "not valid JSON" in dead()[0] and "update-offer" in dead()[1]
    assert rig.statuses() == []
    body = rig.bundle("0.2.0")
    rig.offer("0.2.0", body)  # the till still fetches a good offer
    rig.wait_state("0.2.0", "ready")
    assert rig.service.link.connected


def test_the_shop_cannot_change_which_keys_the_till_trusts(rig: Rig) -> None:
    rig.hub.desire_config("demo", "till-1", {"update.keys_dir": "/var/lib/tillbox", "update.allow_http": True})

    def reasons() -> list[str]:
        with sqlite3.connect(rig.service.ledger.path) as conn:
            rows = [str(r[0]) for r in conn.execute("SELECT reason FROM dead_letters")]
        conn.close()
        return rows

    assert wait_until(lambda: any("update.keys_dir cannot be set remotely" in r for r in reasons()))


def test_http_is_refused_unless_allowed(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    _pem_pair(keys, "release")
    reports: list[dict[str, Any]] = []
    options = FetchOptions(tmp_path / "data", keys_dir=keys, install_root=tmp_path / "opt")
    fetcher = UpdateFetcher(options, device="till-1", report=reports.append)
    try:
        assert fetcher.offer({"release": "0.2.0", "url": "http://127.0.0.1:9/0.2.0.tar", "sha256": "0" * 64,
                              "size": 10}) is None  # fmt: skip
        assert wait_until(lambda: any(r["state"] == "refused" for r in reports))
    finally:
        fetcher.close()
    assert "allow_http = false" in reports[-1]["error"]


def test_release_order() -> None:
    assert release_key("1.2.0+lab1") == (1, 2) == release_key("1.2")
    assert older("0.9.1", "0.10.0") and not older("0.2.0+lab1", "0.2.0") and not older("nightly", "1.0")
    with pytest.raises(InputError, match="not a date-time"):
        Offer.from_doc({"release": "1", "url": "https://x/", "sha256": "0" * 64, "size": 1, "not_before": "soon"})


# -- applying (root) ---------------------------------------------------------------------------------


def _tillbox(*args: str) -> tuple[int, str, str]:
    import subprocess

    done = subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def _systemctl(tmp: Path) -> tuple[Path, Path]:
    log = tmp / "systemctl.log"
    script = tmp / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    script.chmod(0o755)
    return script, log


def test_apply_ready_waits_for_the_shift_to_close_then_installs_and_the_till_reports_it(rig: Rig) -> None:
    keys = load_public_keys([rig.keys / "release.pem"])
    base = rig.tmp / "base.tar"
    rig.bundle("0.1.0")
    base.write_bytes(rig.web.files["/0.1.0.tar"])
    inst = Installer(rig.root)
    inst.install(base, keys, busy=lambda: None)
    assert inst.gate(lambda: True)  # the version the till runs
    body = rig.bundle("0.2.0")
    rig.offer("0.2.0", body)
    rig.wait_state("0.2.0", "ready")
    config = _till_config(rig.keys, rig.root)
    clock = FrozenClock()
    till = Till(config, open_ledger(config, rig.data), clock=clock, fast_hash=True)
    with till.ledger:
        open_shift(till)
        script, log = _systemctl(rig.tmp)
        args = ("update", "apply-ready", "--data-dir", str(rig.data), "--root", str(rig.root), "--keys",
                str(rig.keys), "--systemctl", str(script))  # fmt: skip
        code, out, err = _tillbox(*args)
        assert (code, err) == (0, "") and "shift 1 is open" in out
        assert rig.ready() == ["0.2.0.tar"] and inst.current == "0.1.0" and not log.exists()
        till.shifts.close(Approval(Action.CLOSE_SHIFT, "sue", None, clock.now() + timedelta(minutes=1)), clock.now())
    code, out, err = _tillbox(*args)
    assert (code, err) == (0, "") and "installed 0.2.0" in out
    assert (inst.current, inst.previous, inst.pending) == ("0.2.0", "0.1.0", "0.2.0")
    assert (rig.root / "current" / "VERSION").read_text() == "0.2.0"
    assert rig.ready() == []
    assert log.read_text().splitlines() == ["restart tillbox.service", "start tillbox-update-gate.service"]
    result = json.loads((rig.data / "updates" / "result.json").read_text())
    assert (result["release"], result["state"]) == ("0.2.0", "installed")
    rig.wait_state("0.2.0", "installed")  # the daemon reports what root did
    assert not inst.gate(lambda: False)  # the new version fails its gate: back to 0.1.0
    rolled = rig.wait_state("0.2.0", "rolled_back")
    assert "failed its health gate" in rolled["error"] and inst.current == "0.1.0"
    code, out, _ = _tillbox(*args)
    assert (code, out.strip()) == (0, "no update is ready")


def test_apply_ready_trusts_nothing_the_daemon_wrote(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    pem, pub = _pem_pair(keys_dir, "release")
    other, _ = _pem_pair(tmp_path / "attacker", "attacker")
    keys = load_public_keys([pub])
    data, root = tmp_path / "data", tmp_path / "opt"
    ready = data / "updates" / "ready"
    ready.mkdir(parents=True)
    calls: list[str] = []
    stamps = iter(f"2026-03-02T10:0{i}:00.000Z" for i in range(10))

    def run() -> Any:
        return apply_ready(data, Installer(root), keys, busy=lambda: None, restart=lambda: calls.append("restart"),
                           now=lambda: next(stamps))  # fmt: skip

    def result() -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((data / "updates" / "result.json").read_text())
        return doc

    src = tmp_path / "src"
    src.mkdir()
    (src / "VERSION").write_text("x")
    build_bundle(src, "0.2.0", other, ready / "0.2.0.tar")  # put there by a compromised daemon
    done = run()
    assert (done.state, done.release) == ("refused", "0.2.0") and "bad signature" in done.message
    assert result()["state"] == "refused" and "bad signature" in result()["error"]
    assert not (ready / "0.2.0.tar").exists() and Installer(root).current is None and calls == []
    build_bundle(src, "0.3.0", pem, tmp_path / "real-0.3.0.tar")
    (ready / "0.4.0.tar").write_bytes((tmp_path / "real-0.3.0.tar").read_bytes())  # renamed to look newer
    done = run()
    assert done.state == "refused" and "holds version 0.3.0, not 0.4.0" in done.message
    (ready / "0.3.0.tar").symlink_to(tmp_path / "real-0.3.0.tar")  # a symlink to a file root would read
    assert run().state == "refused" and not (ready / "0.3.0.tar").is_symlink()
    (ready / "0.3.0.tar").write_bytes((tmp_path / "real-0.3.0.tar").read_bytes())
    assert run().state == "installed" and calls == ["restart"] and Installer(root).current == "0.3.0"
    (ready / "0.3.0.tar").write_bytes((tmp_path / "real-0.3.0.tar").read_bytes())
    done = run()
    assert done.state == "refused" and "already running" in done.message and not (ready / "0.3.0.tar").exists()
    build_bundle(src, "0.5.0", pem, ready / "0.5.0.tar")
    done = run()
    assert done.state == "waiting" and "has not passed its health gate" in done.message, "confirm the running first"
    assert (ready / "0.5.0.tar").exists() and Installer(root).current == "0.3.0"
    assert Installer(root).gate(lambda: True)
    assert run().state == "installed" and Installer(root).current == "0.5.0" and calls == ["restart", "restart"]
    assert result() == {"release": "0.5.0", "state": "installed", "time": "2026-03-02T10:05:00.000Z"}
    (data / "updates" / "ready").rename(data / "updates" / "elsewhere")
    (data / "updates" / "ready").symlink_to(root)  # root must never act inside a directory the daemon picks
    with pytest.raises(UpdateError, match="not a plain directory"):
        run()
    assert (root / "current").is_symlink()


def test_the_daemon_fetches_offers_and_shows_the_status_to_technicians(tmp_path: Path) -> None:
    import httpx

    from appliance.daemon import Daemon
    from appliance.demo import demo_config
    from kiosk_ui.testing import DaemonThread, demo_prepare

    keys = tmp_path / "keys"
    pem, _ = _pem_pair(keys, "release")
    base = demo_config()
    update = dataclasses.replace(base.update, keys_dir=str(keys), install_root=str(tmp_path / "opt"), allow_http=True,
                                 keep_free_mb=0)  # fmt: skip
    config = dataclasses.replace(base, update=update)
    src = tmp_path / "src"
    src.mkdir()
    (src / "VERSION").write_text("0.2.0")
    build_bundle(src, "0.2.0", pem, tmp_path / "0.2.0.tar")
    body = (tmp_path / "0.2.0.tar").read_bytes()
    web = Web().start()
    web.files["/0.2.0.tar"] = body
    with Mosquitto(tmp_path / "broker") as broker:
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        try:
            daemon = Daemon(config, tmp_path / "till", fast_hash=True, brokers=(broker.url,), prepare=demo_prepare())
            with DaemonThread(daemon) as running, httpx.Client(base_url=running.url + "/api/v1", timeout=10) as http:
                assert wait_until(lambda: daemon.sync is not None and daemon.sync.link.connected)
                hub.offer_update(base.store.id, "0.2.0", web.url("/0.2.0.tar"), hashlib.sha256(body).hexdigest(),
                                 len(body))  # fmt: skip
                fetcher = daemon.sync.updates
                assert fetcher is not None and wait_until(lambda: (fetcher.last or {}).get("state") == "ready")
                token = http.post("/session/pin", json={"staff_id": "tom", "pin": "4321"}).json()["token"]
                versions = http.get("/tech/versions", headers={"Authorization": f"Bearer {token}"}).json()
                assert versions["update"]["release"] == "0.2.0" and versions["update"]["state"] == "ready"
                assert (tmp_path / "till" / "updates" / "ready" / "0.2.0.tar").read_bytes() == body
        finally:
            hub.close()
            web.stop()
