"""The built amd64 image under QEMU: two boots of one card, first-boot provisioning against a hub on the host.

Slow (minutes). It uses ``$TILLBOX_IMAGE`` when set (CI builds the image in its own step with
image/build.sh), else a cached build in build/image whose inputs match the work tree, else it
builds one (root, mmdebstrap). It skips, saying why, only when those tools are not there.
The guest reaches the host's Mosquitto at 10.0.2.2 (QEMU user networking maps it to 127.0.0.1).

The card is a copy of the image made 1 GiB larger, as an SD card bigger than the image is. The
first boot provisions (with Wi-Fi, a time zone and a locale), grows the data partition, serves
health, and installs a signed update on the read-only root; the second boot runs the update,
its health gate confirms it, and the machine id and the settings survive the reboot. In the
same boot a broken update is installed, fails its gate and is rolled back.
``tillbox.lab=1`` makes the guest print one ``tillbox-lab-report:`` line of facts on the console,
and (in a VM only) install ``tillbox-lab/update.tar`` from the boot partition.

One test runs the whole story, so that pytest-xdist never splits it (and boots the card twice over).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance import provision
from image import build, qemu, recipe
from sync.testing import Collector, Mosquitto, find_mosquitto

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CACHED = ROOT / "build" / "image" / "tillbox-amd64.img"
STORE, DEVICE = "lab-1", "till-1"
BOOT_TIMEOUT = 240.0 if qemu.kvm_usable() else 900.0
GROW = 1024 * recipe.MIB  # the card is this much larger than the image
WIFI_SSID, WIFI_PASSPHRASE = 'shop "front" wifi', "correct horse battery staple"


def _missing_build_tools() -> str | None:
    if os.geteuid() != 0:
        return "building the image needs root (mmdebstrap --mode=root); or set TILLBOX_IMAGE to a built image"
    for tool in ("mmdebstrap", "sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "debugfs"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (image/build.sh installs the build tools, as root)"
    return None


@pytest.fixture(scope="module")
def artifacts() -> qemu.Artifacts:
    if os.environ.get("TILLBOX_IMAGE"):
        return qemu.Artifacts.load(Path(os.environ["TILLBOX_IMAGE"]).resolve())
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt install qemu-system-x86)")
    if CACHED.exists():
        art = qemu.Artifacts.load(CACHED)
        if art.info.get("inputs") == build.inputs_hash():
            return art
    reason = _missing_build_tools()
    if reason:
        pytest.skip(reason)
    build.build("amd64", CACHED, xz=None)
    return qemu.Artifacts.load(CACHED)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("boot")


@pytest.fixture(scope="module")
def broker(workdir: Path) -> Iterator[Mosquitto]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    with Mosquitto(workdir / "broker") as b:
        yield b


@pytest.fixture(scope="module")
def hub(workdir: Path, broker: Mosquitto) -> Iterator[Path]:
    """The reference hub (`tillbox hub`), which also answers enrollment, as a child process."""
    data = workdir / "hub"
    tillbox = [sys.executable, "-m", "appliance.cli"]
    with (workdir / "hub.log").open("wb") as log:
        proc = subprocess.Popen([*tillbox, "hub", "--broker", broker.url, "--data-dir", str(data)],
                                stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    yield data
    proc.terminate()
    proc.wait(timeout=10)


def _issue_token(hub: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "enroll-token", "--store", STORE, "--device",
                          DEVICE, "--data-dir", str(hub)], capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def _record(metrics: dict[str, float | int | str]) -> None:
    path = os.environ.get("TILLBOX_IMAGE_METRICS")
    if path:
        old = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        Path(path).write_text(json.dumps({**old, **metrics}, indent=1) + "\n")


def _report(console: str) -> dict[str, str]:
    """The first ``tillbox-lab-report:`` line on the console, as key=value pairs."""
    match = re.search(r"tillbox-lab-report: (.*?) end", console)
    assert match, "no lab report on the console"
    return dict(item.split("=", 1) for item in match.group(1).split())


@dataclass(frozen=True)
class Bundles:
    """Signed update bundles for the card, and the throw-away key's public half."""

    keys: Path
    good: Path
    good_version: str
    broken: Path
    broken_version: str
    shop: Path
    shop_version: str


def _tillbox(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def bundles(artifacts: qemu.Artifacts, workdir: Path) -> Bundles:
    """The image's own version repacked as ``<version>+lab1``, and a version whose daemon cannot start.

    Both are signed with a key made here (its private half stays in the test's temporary
    directory); the guest trusts its public half from the boot partition, as the lab unit says.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    secret = workdir / "release.key"
    secret.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))  # fmt: skip
    keys = workdir / "keys"
    keys.mkdir()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (keys / "lab.pem").write_bytes(public)
    version = artifacts.info["version"]
    good, broken, shop = f"{version}+lab1", f"{version}+broken", f"{version}+shop2"
    # The installed venv, straight from the image's root filesystem; it says it is the new version.
    root_fs = qemu.ext4_at(artifacts.image, artifacts.partition("TB_ROOT")[0])
    venv = qemu.ext4_rdump(root_fs, f"{recipe.INSTALL_ROOT}/versions/{version}", workdir / "extracted")
    (metadata,) = venv.glob("lib/python3*/site-packages/tillbox-*.dist-info/METADATA")
    text = metadata.read_text()
    assert f"\nVersion: {version}\n" in text
    for release, name in ((good, "good.tar"), (shop, "shop.tar")):
        metadata.write_text(text.replace(f"\nVersion: {version}\n", f"\nVersion: {release}\n", 1))
        _tillbox("update", "build", str(venv), "--version", release, "--key", str(secret), "--out", str(workdir / name))
    bad = workdir / "broken" / "bin"
    bad.mkdir(parents=True)
    (bad / "tillbox").write_text("#!/bin/sh\necho 'tillbox: this build is broken' >&2\nexit 1\n")
    (bad / "tillbox").chmod(0o755)
    _tillbox("update", "build", str(bad.parent), "--version", broken, "--key", str(secret), "--out",
             str(workdir / "broken.tar"))  # fmt: skip
    return Bundles(keys, workdir / "good.tar", good, workdir / "broken.tar", broken, workdir / "shop.tar", shop)


@dataclass
class Boot:
    """What one boot of the card showed."""

    console: str
    report: dict[str, str]
    healthy_s: float
    health: dict[str, object]
    health_after_update: dict[str, object]
    times: dict[str, float]


UPDATE_TIMEOUT = 240.0 if qemu.kvm_usable() else 600.0


def _boot(art: qemu.Artifacts, disk: Path, serial: Path, *, first: bool) -> Boot:
    """Boot the card, wait for health, the lab report (and the kiosk) and the lab update, then power off."""
    guest = qemu.boot(art, disk, serial, extra_cmdline=("systemd.journald.forward_to_console=1",))
    times: dict[str, float] = {}
    with guest.powered():
        if first:
            times["provisioned_s"] = guest.wait_console(f"provisioned as {STORE}/{DEVICE}", BOOT_TIMEOUT)
        healthy_at, health = guest.wait_healthy(BOOT_TIMEOUT)
        times["boot_to_healthy_s"] = healthy_at
        guest.wait_console("tillbox-lab-report:", 120)
        if first:
            # The kiosk (cage + Chromium on the virtio GPU) starts once the daemon is healthy.
            times["kiosk_started_s"] = guest.wait_console("systemd[1]: Started tillbox-kiosk.service", 180)
        times["lab_update_done_s"] = guest.wait_console("tillbox-lab-update: done", UPDATE_TIMEOUT)
        _, after = guest.wait_healthy(BOOT_TIMEOUT)
        if not first:
            # After a rollback the screen comes back with the daemon (the gate restarts both).
            times["kiosk_after_rollback_s"] = guest.wait_console(
                "Started tillbox-kiosk.service", 180, after="failed its health gate; rolled back"
            )
    console = guest.console()
    return Boot(console, _report(console), healthy_at, health, after, times)


@dataclass
class Card:
    """The card after its first boot (powered off), and what that boot showed."""

    disk: Path
    first: Boot
    token: str
    broker_url: str


def _first_boot(artifacts: qemu.Artifacts, hub: Path, broker: Mosquitto, bundles: Bundles, workdir: Path) -> Card:
    """A card 1 GiB larger than the image, with a provisioning file and an update, booted once."""
    disk = workdir / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(artifacts.image), str(disk)], check=True)
    with disk.open("r+b") as fh:
        fh.truncate(artifacts.image.stat().st_size + GROW)
    token = _issue_token(hub)
    broker_url = f"mqtt://10.0.2.2:{broker.port}"  # the host's loopback, seen from the guest
    wifi = {"ssid": WIFI_SSID, "psk": WIFI_PASSPHRASE, "country": "DE"}
    prov = provision.Provisioning(STORE, DEVICE, (broker_url,), token, "Europe/Berlin", "de_DE", wifi)
    prov_file = workdir / recipe.PROVISION_FILE
    prov_file.write_text(provision.render(prov))
    boot_offset, _ = artifacts.partition("TB_BOOT")
    qemu.fat_put(disk, boot_offset, prov_file, recipe.PROVISION_FILE)
    qemu.fat_mkdir(disk, boot_offset, recipe.LAB_DIR, f"{recipe.LAB_DIR}/keys")
    qemu.fat_put(disk, boot_offset, bundles.keys / "lab.pem", f"{recipe.LAB_DIR}/keys/lab.pem")
    qemu.fat_put(disk, boot_offset, bundles.good, f"{recipe.LAB_DIR}/update.tar")
    first = _boot(artifacts, disk, workdir / "serial-1.log", first=True)
    _record({"accel": "kvm" if qemu.kvm_usable() else "tcg", **{k: round(v, 1) for k, v in first.times.items()}})
    return Card(disk, first, token, broker_url)


def _root(artifacts: qemu.Artifacts, disk: Path) -> dict[str, object]:
    """The install root on the card's root filesystem, read without mounting, and whether fsck finds it clean."""
    fs = qemu.ext4_at(disk, artifacts.partition("TB_ROOT")[0])
    clean, fsck_log = qemu.fsck_clean(fs)
    base = recipe.INSTALL_ROOT
    return {
        "clean": clean, "fsck": fsck_log, "current": qemu.ext4_readlink(fs, f"{base}/current"),
        "previous": qemu.ext4_readlink(fs, f"{base}/previous"), "versions": qemu.ext4_ls(fs, f"{base}/versions"),
        "state": json.loads(qemu.ext4_read(fs, f"{base}/state.json") or b"null"),
    }  # fmt: skip


def _lab_update(console: str) -> str:
    """What the lab update printed, one line each (from journald's copy on the console)."""
    marker = "tillbox-lab-update: "
    return "\n".join(line.split(marker, 1)[1] for line in console.splitlines() if marker in line)


def test_card_provisions_updates_and_rolls_back(artifacts: qemu.Artifacts, broker: Mosquitto, hub: Path,
                                                bundles: Bundles, workdir: Path) -> None:  # fmt: skip
    card = _first_boot(artifacts, hub, broker, bundles, workdir)
    _check_first_boot_provisions_and_serves_health(artifacts, card, hub, workdir)
    _check_first_boot_grows_the_data_partition_and_applies_the_settings(artifacts, card)
    _check_first_boot_installs_the_update_on_the_read_only_root(artifacts, card, bundles)

    # Powered off: a broken update waits on the boot partition, to be applied at once in the next boot.
    boot_offset, _ = artifacts.partition("TB_BOOT")
    qemu.fat_put(card.disk, boot_offset, bundles.broken, f"{recipe.LAB_DIR}/update.tar")
    (workdir / "apply-now").write_text("")
    qemu.fat_put(card.disk, boot_offset, workdir / "apply-now", f"{recipe.LAB_DIR}/apply-now")
    second = _boot(artifacts, card.disk, workdir / "serial-2.log", first=False)
    _record({"second_boot_to_healthy_s": round(second.healthy_s, 1),
             "rollback_done_s": round(second.times["lab_update_done_s"], 1),
             "kiosk_after_rollback_s": round(second.times["kiosk_after_rollback_s"], 1)})  # fmt: skip
    _check_second_boot_runs_the_update_and_its_gate_confirms_it(artifacts, card, second, bundles)
    _check_a_broken_update_is_rolled_back(artifacts, card, second, bundles)
    _check_second_boot_keeps_the_machine_id_and_the_settings(card, second)

    # Third boot: the shop delivers an update over the network; nothing is left on the boot partition.
    third = _third_boot_the_shop_delivers_an_update(artifacts, card, broker, bundles, workdir)
    _record({"shop_update_installed_s": round(third.times["installed_s"], 1),
             "shop_update_gated_s": round(third.times["gated_s"], 1)})  # fmt: skip
    _check_the_delivered_update_runs_and_passed_its_gate(artifacts, card, third, bundles, workdir)


def _check_first_boot_provisions_and_serves_health(artifacts: qemu.Artifacts, card: Card, hub: Path,
                                                    workdir: Path) -> None:  # fmt: skip
    console = card.first.console
    assert "systemd[1]: Started tillbox.service" in console
    assert card.first.health.get("status") == "ok", card.first.health
    assert card.first.health.get("version") == artifacts.info["version"], "the image runs the version it was built with"
    assert "Failed to start tillbox" not in console
    assert "tillbox-kiosk.service: Failed" not in console.split("Stopping tillbox-kiosk.service")[0]

    # The token and the Wi-Fi key are gone from the boot partition; the file is still valid without them.
    boot_offset, _ = artifacts.partition("TB_BOOT")
    left = qemu.fat_get(card.disk, boot_offset, recipe.PROVISION_FILE)
    assert left is not None and card.token.encode() not in left and WIFI_PASSPHRASE.encode() not in left
    kept = provision.parse(left.decode())
    assert kept.enrollment_token is None and kept.wifi == {} and kept.timezone == "Europe/Berlin"
    # The hub used the token once.
    with sqlite3.connect(hub / "enroll.db") as db:
        used = db.execute("SELECT used_at FROM tokens").fetchall()
    assert len(used) == 1 and used[0][0] is not None

    # The identity is on the data partition, readable by the daemon's user only.
    offset, size = artifacts.partition("TB_DATA")
    data = qemu.extract_partition(card.disk, offset, size + GROW, workdir / "data.ext4")
    qemu.fsck(data)
    device = json.loads(qemu.ext4_read(data, "/identity/device.json") or b"{}")
    assert device == {"store_id": STORE, "device_id": DEVICE, "brokers": [card.broker_url]}
    key = qemu.ext4_stat(data, "/identity/key.pem")
    assert key == {"mode": 0o600, "uid": recipe.TILLBOX_UID, "gid": recipe.TILLBOX_UID}
    assert qemu.ext4_stat(data, "/identity") == {"mode": 0o700, "uid": recipe.TILLBOX_UID, "gid": recipe.TILLBOX_UID}
    assert qemu.ext4_stat(data, "/") == {"mode": 0o700, "uid": recipe.TILLBOX_UID, "gid": recipe.TILLBOX_UID}
    config = qemu.ext4_read(data, "/tillbox.toml") or b""
    assert f'id = "{STORE}"'.encode() in config and card.broker_url.encode() in config
    for path in ("/identity/key.pem", "/identity/cert.pem", "/tillbox.toml"):
        assert card.token.encode() not in (qemu.ext4_read(data, path) or b""), f"the token leaked into {path}"
    assert qemu.ext4_read(data, "/provision-error.txt") is None

    # The system settings are stored root-only; the Wi-Fi passphrase is in no file and no log line.
    assert qemu.ext4_stat(data, "/system") == {"mode": 0o700, "uid": 0, "gid": 0}
    assert qemu.ext4_stat(data, "/system/settings.json") == {"mode": 0o600, "uid": 0, "gid": 0}
    stored = json.loads(qemu.ext4_read(data, "/system/settings.json") or b"{}")
    assert stored["timezone"] == "Europe/Berlin" and stored["locale"] == "de_DE"
    assert stored["wifi"]["ssid"] == WIFI_SSID and len(stored["wifi"]["psk_hex"]) == 64
    assert not qemu.contains(data, WIFI_PASSPHRASE.encode()), "the passphrase is on the data partition"
    assert WIFI_PASSPHRASE not in console and stored["wifi"]["psk_hex"] not in console
    assert (qemu.ext4_read(data, "/system/machine-id") or b"").decode().strip() == card.first.report["machine-id"]


def _check_first_boot_grows_the_data_partition_and_applies_the_settings(artifacts: qemu.Artifacts,
                                                                       card: Card) -> None:  # fmt: skip
    report = card.first.report
    offset, size = artifacts.partition("TB_DATA")
    # growpart ends the partition at the card's end (sfdisk keeps a 1 MiB alignment), and the
    # mounted filesystem was grown to fill it.
    part_bytes = int(report["data-part-bytes"])
    assert size + GROW - recipe.MIB <= part_bytes <= size + GROW
    assert int(report["data-fs-bytes"]) > 0.95 * part_bytes
    table = json.loads(subprocess.run(["sfdisk", "--json", str(card.disk)], capture_output=True, check=True).stdout)
    last = table["partitiontable"]["partitions"][-1]
    assert last["start"] * 512 == offset and last["size"] * 512 == part_bytes

    assert report["localtime"] == "/usr/share/zoneinfo/Europe/Berlin"
    assert report["tz"] in ("CET", "CEST"), "glibc follows /etc/localtime to the provisioned zone"
    assert report["lang"] == "de_DE.UTF-8"
    assert report["monday"] == "Montag", "the de_DE locale is compiled into the image"
    assert report["environment"] == "TZ=Europe/Berlin,LANG=de_DE.UTF-8,"
    assert report["wifi-conf"] == "600:root"
    assert re.fullmatch(r"[0-9a-f]{32}", report["machine-id"])


def _check_first_boot_installs_the_update_on_the_read_only_root(artifacts: qemu.Artifacts, card: Card,
                                                                bundles: Bundles) -> None:  # fmt: skip
    version = artifacts.info["version"]
    lab = _lab_update(card.first.console)
    assert f"install rc=0 installed {bundles.good_version};" in lab, lab
    # The root was writable only while the update was written: read-only again right after it.
    assert re.search(rf"done current=versions/{re.escape(bundles.good_version)} root=ro ", lab), lab
    assert card.first.health_after_update.get("version") == version, "the update waits for the next start"
    root = _root(artifacts, card.disk)
    assert root["clean"], root["fsck"]
    assert root["current"] == f"versions/{bundles.good_version}" and root["previous"] == f"versions/{version}"
    assert root["versions"] == sorted([version, bundles.good_version]), "no staging directory is left"
    assert root["state"] == {"pending": bundles.good_version, "failed": []}


def _check_second_boot_runs_the_update_and_its_gate_confirms_it(artifacts: qemu.Artifacts, card: Card, second: Boot,
                                                                bundles: Bundles) -> None:  # fmt: skip
    assert second.health.get("status") == "ok", second.health
    assert second.health.get("version") == bundles.good_version, "the second boot runs the installed update"
    assert f"version {bundles.good_version} is good" in second.console, "the update gate confirmed it"


def _check_a_broken_update_is_rolled_back(artifacts: qemu.Artifacts, card: Card, second: Boot,
                                          bundles: Bundles) -> None:  # fmt: skip
    lab = _lab_update(second.console)
    assert f"install rc=0 installed {bundles.broken_version};" in lab, lab
    assert "restart rc=0" not in lab, "the broken version's daemon cannot start"
    assert "tillbox: this build is broken" in second.console
    assert (f"version {bundles.broken_version} failed its health gate; rolled back to {bundles.good_version}"
            in second.console)  # fmt: skip
    state = json.dumps({"pending": None, "failed": [bundles.broken_version]}, separators=(",", ":"))
    assert f"done current=versions/{bundles.good_version} root=ro state={state}" in lab, lab
    # The gate restarted the daemon on the version it rolled back to.
    assert second.health_after_update.get("status") == "ok", second.health_after_update
    assert second.health_after_update.get("version") == bundles.good_version
    root = _root(artifacts, card.disk)
    assert root["clean"], root["fsck"]
    assert root["current"] == root["previous"] == f"versions/{bundles.good_version}"
    # The image's own version made room for the broken one; nothing else is kept.
    assert root["versions"] == sorted([bundles.good_version, bundles.broken_version])
    assert root["state"] == {"pending": None, "failed": [bundles.broken_version]}


def _check_second_boot_keeps_the_machine_id_and_the_settings(card: Card, second: Boot) -> None:
    # The initrd put the stored machine id back: journald, DHCP (networkd's DUID) and the till's
    # logs see the same machine on every boot.
    assert second.report["machine-id"] == card.first.report["machine-id"]
    # Wi-Fi comes from the stored settings now (the boot file has no [wifi] left); nothing regrew.
    for key in ("wifi-conf", "localtime", "lang", "monday", "environment", "data-part-bytes"):
        assert second.report[key] == card.first.report[key], key
    assert "tillbox: data partition: CHANGED" not in second.console
    assert "tillbox: data partition: CHANGED" in card.first.console


@dataclass
class Delivery:
    """What the third boot showed: the till's update status reports and the health before and after."""

    console: str
    statuses: list[dict[str, object]]
    health_before: dict[str, object]
    health_after: dict[str, object]
    times: dict[str, float]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _third_boot_the_shop_delivers_an_update(artifacts: qemu.Artifacts, card: Card, broker: Mosquitto,
                                            bundles: Bundles, workdir: Path) -> Delivery:  # fmt: skip
    """The shop allows plain http for this lab (desired config), then offers a bundle; the till does the rest.

    The card trusts the test's release key in ``/etc/tillbox/update-keys`` (written into the
    powered-off root, as an image built with ``--update-key`` would have it). The bundle is
    served over http from the host; the till reaches it at 10.0.2.2.
    """
    boot_offset, _ = artifacts.partition("TB_BOOT")
    for name in ("update.tar", "apply-now"):
        qemu.fat_del(card.disk, boot_offset, f"{recipe.LAB_DIR}/{name}")
    root_fs = qemu.ext4_at(card.disk, artifacts.partition("TB_ROOT")[0])
    qemu.ext4_put(root_fs, bundles.keys / "lab.pem", "/etc/tillbox/update-keys/lab.pem")
    www = workdir / "www"
    www.mkdir()
    shutil.copy(bundles.shop, www / "shop.tar")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prefix = f"tillbox/v1/{STORE}/{DEVICE}"
    watch = Collector(broker.url, [f"{prefix}/status/update", f"{prefix}/cfg/reported"])

    def retained(topic: str, doc: dict[str, object]) -> None:
        watch.client.publish(topic, json.dumps(doc), qos=1, retain=True).wait_for_publish(10)

    def seen(topic: str) -> list[dict[str, object]]:
        return [json.loads(p) for t, p in watch.wait(0, 0) if t == topic and p]

    def wait_for(topic: str, want: dict[str, object], timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if any(all(doc.get(k) == v for k, v in want.items()) for doc in seen(topic)):
                return time.monotonic() - started
            if guest.proc.poll() is not None:
                raise qemu.QemuError("QEMU exited")
            time.sleep(0.5)
        raise AssertionError(f"no {want} on {topic} within {timeout:.0f} s; seen {seen(topic)}")

    guest = qemu.boot(
        artifacts, card.disk, workdir / "serial-3.log", extra_cmdline=("systemd.journald.forward_to_console=1",)
    )
    times: dict[str, float] = {}
    try:
        with guest.powered():
            times["healthy_s"], before = guest.wait_healthy(BOOT_TIMEOUT)
            retained(f"{prefix}/cfg/desired", {"version": 1, "values": {"update.allow_http": True}})
            # The daemon accepts it and restarts itself (the till is idle) so that it takes effect.
            times["config_applied_s"] = wait_for(f"{prefix}/cfg/reported", {"version": 1, "status": "applied"},
                                                 BOOT_TIMEOUT)  # fmt: skip
            url = f"http://10.0.2.2:{server.server_port}/shop.tar"  # the host, from the guest
            offer = {"version": 1, "release": bundles.shop_version, "url": url, "size": bundles.shop.stat().st_size,
                     "sha256": hashlib.sha256(bundles.shop.read_bytes()).hexdigest(),
                     "time": "2026-03-02T09:30:00.000Z"}  # fmt: skip
            retained(f"tillbox/v1/{STORE}/update/offer", offer)
            want: dict[str, object] = {"release": bundles.shop_version, "state": "installed"}
            times["installed_s"] = wait_for(f"{prefix}/status/update", want, UPDATE_TIMEOUT)
            times["gated_s"] = guest.wait_console(f"version {bundles.shop_version} is good", UPDATE_TIMEOUT)
            # Power off only once the apply unit is through (it waits for the gate it started).
            guest.wait_console(
                "Finished tillbox-update-apply.service", UPDATE_TIMEOUT, after=f"{bundles.shop_version} is good"
            )
            _, after = guest.wait_healthy(BOOT_TIMEOUT)
    finally:
        watch.close()
        server.shutdown()
        server.server_close()
    return Delivery(guest.console(), seen(f"{prefix}/status/update"), before, after, times)


def _check_the_delivered_update_runs_and_passed_its_gate(artifacts: qemu.Artifacts, card: Card, third: Delivery,
                                                         bundles: Bundles, workdir: Path) -> None:  # fmt: skip
    assert third.health_before.get("version") == bundles.good_version
    assert third.health_after.get("status") == "ok" and third.health_after.get("version") == bundles.shop_version
    states = [doc["state"] for doc in third.statuses if doc.get("release") == bundles.shop_version]
    assert states[:1] == ["downloading"] and "ready" in states and states[-1] == "installed", third.statuses
    assert "tillbox-lab-update: " not in third.console, "the lab update had nothing to do"
    # Root took it from ready/ through the path unit, restarted the daemon and ran the gate.
    assert "Finished tillbox-update-apply.service" in third.console
    assert "tillbox-update-apply.service: Failed" not in third.console and "tillbox: error" not in third.console
    root = _root(artifacts, card.disk)
    assert root["clean"], root["fsck"]
    assert (
        root["current"] == f"versions/{bundles.shop_version}" and root["previous"] == f"versions/{bundles.good_version}"
    )
    assert root["versions"] == sorted([bundles.good_version, bundles.shop_version])
    state = root["state"]
    assert isinstance(state, dict) and state["pending"] is None and bundles.shop_version not in state["failed"]
    offset, size = artifacts.partition("TB_DATA")
    data = qemu.extract_partition(card.disk, offset, size + GROW, workdir / "data-3.ext4")
    qemu.fsck(data)
    assert qemu.ext4_ls(data, "/updates/ready") == [], "the bundle left ready/ once installed"
    result = json.loads(qemu.ext4_read(data, "/updates/result.json") or b"{}")
    assert result.get("state") == "installed" and result.get("release") == bundles.shop_version, result
