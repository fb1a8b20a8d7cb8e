"""The built amd64 image under QEMU: two boots of one card, first-boot provisioning against a hub on the host.

Slow (minutes). It uses ``$TILLBOX_IMAGE`` when set (CI builds the image in its own step with
image/build.sh), else a cached build in build/image whose inputs match the work tree, else it
builds one (root, mmdebstrap). It skips, saying why, only when those tools are not there.
The guest reaches the host's Mosquitto at 10.0.2.2 (QEMU user networking maps it to 127.0.0.1).

The card is a copy of the image made 1 GiB larger, as an SD card bigger than the image is. The
first boot provisions (with Wi-Fi, a time zone and a locale), grows the data partition, and
serves health; the second boot shows that the machine id and the settings survive a reboot.
``tillbox.lab=1`` makes the guest print one ``tillbox-lab-report:`` line of facts on the console.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance import provision
from image import build, qemu, recipe
from sync.testing import Mosquitto, find_mosquitto

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


@dataclass
class Boot:
    """What one boot of the card showed."""

    console: str
    report: dict[str, str]
    healthy_s: float
    health: dict[str, object]


def _boot(art: qemu.Artifacts, disk: Path, serial: Path, *, wait_provisioned: bool) -> tuple[Boot, dict[str, float]]:
    guest = qemu.boot(art, disk, serial, extra_cmdline=("systemd.journald.forward_to_console=1",))
    times: dict[str, float] = {}
    try:
        if wait_provisioned:
            times["provisioned_s"] = guest.wait_console(f"provisioned as {STORE}/{DEVICE}", BOOT_TIMEOUT)
        healthy_at, health = guest.wait_healthy(BOOT_TIMEOUT)
        times["boot_to_healthy_s"] = healthy_at
        guest.wait_console("tillbox-lab-report:", 120)
        if wait_provisioned:
            # The kiosk (cage + Chromium on the virtio GPU) starts once the daemon is healthy.
            times["kiosk_started_s"] = guest.wait_console("systemd[1]: Started tillbox-kiosk.service", 180)
        guest.powerdown()
        guest.stop(timeout=120)
    except BaseException:
        guest.proc.kill()
        guest.proc.wait()
        sys.stderr.write(guest.console()[-6000:])
        raise
    console = guest.console()
    return Boot(console, _report(console), healthy_at, health), times


@dataclass
class Card:
    """The card after its first boot (powered off), and what that boot showed."""

    disk: Path
    first: Boot
    token: str
    broker_url: str


@pytest.fixture(scope="module")
def card(artifacts: qemu.Artifacts, broker: Mosquitto, hub: Path, workdir: Path) -> Card:
    """A card 1 GiB larger than the image, with a provisioning file, booted once."""
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
    first, times = _boot(artifacts, disk, workdir / "serial-1.log", wait_provisioned=True)
    _record({"accel": "kvm" if qemu.kvm_usable() else "tcg", **{k: round(v, 1) for k, v in times.items()}})
    return Card(disk, first, token, broker_url)


def test_first_boot_provisions_and_serves_health(artifacts: qemu.Artifacts, card: Card, hub: Path,
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


def test_first_boot_grows_the_data_partition_and_applies_the_settings(artifacts: qemu.Artifacts,
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


def test_second_boot_keeps_the_machine_id_and_the_settings(artifacts: qemu.Artifacts, card: Card,
                                                           workdir: Path) -> None:  # fmt: skip
    second, times = _boot(artifacts, card.disk, workdir / "serial-2.log", wait_provisioned=False)
    _record({"second_boot_to_healthy_s": round(times["boot_to_healthy_s"], 1)})
    assert second.health.get("status") == "ok", second.health
    # The initrd put the stored machine id back: journald, DHCP (networkd's DUID) and the till's
    # logs see the same machine on every boot.
    assert second.report["machine-id"] == card.first.report["machine-id"]
    # Wi-Fi comes from the stored settings now (the boot file has no [wifi] left); nothing regrew.
    for key in ("wifi-conf", "localtime", "lang", "monday", "environment", "data-part-bytes"):
        assert second.report[key] == card.first.report[key], key
    assert "tillbox: data partition: CHANGED" not in second.console
    assert "tillbox: data partition: CHANGED" in card.first.console
