"""The built amd64 image under QEMU: boot, first-boot provisioning against a hub on the host, health.

Slow (minutes). It uses ``$TILLBOX_IMAGE`` when set (CI builds the image in its own step with
image/build.sh), else a cached build in build/image whose inputs match the work tree, else it
builds one (root, mmdebstrap). It skips, saying why, only when those tools are not there.
The guest reaches the host's Mosquitto at 10.0.2.2 (QEMU user networking maps it to 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
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


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def hub(tmp_path: Path, broker: Mosquitto) -> Iterator[Path]:
    """The reference hub (`tillbox hub`), which also answers enrollment, as a child process."""
    data = tmp_path / "hub"
    tillbox = [sys.executable, "-m", "appliance.cli"]
    with (tmp_path / "hub.log").open("wb") as log:
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
        Path(path).write_text(json.dumps(metrics, indent=1) + "\n")


def test_image_boots_provisions_and_serves_health(artifacts: qemu.Artifacts, broker: Mosquitto, hub: Path,
                                                  tmp_path: Path) -> None:  # fmt: skip
    disk = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(artifacts.image), str(disk)], check=True)
    token = _issue_token(hub)
    broker_url = f"mqtt://10.0.2.2:{broker.port}"  # the host's loopback, seen from the guest
    prov = provision.Provisioning(STORE, DEVICE, (broker_url,), token, "Europe/Berlin", "de_DE", {})
    prov_file = tmp_path / recipe.PROVISION_FILE
    prov_file.write_text(provision.render(prov))
    boot_offset, _ = artifacts.partition("TB_BOOT")
    qemu.fat_put(disk, boot_offset, prov_file, recipe.PROVISION_FILE)

    serial = tmp_path / "serial.log"
    guest = qemu.boot(artifacts, disk, serial, extra_cmdline=("systemd.journald.forward_to_console=1",))
    try:
        provisioned_at = guest.wait_console(f"provisioned as {STORE}/{DEVICE}", BOOT_TIMEOUT)
        healthy_at, health = guest.wait_healthy(BOOT_TIMEOUT)
        # The kiosk (cage + Chromium on the virtio GPU) starts once the daemon is healthy.
        kiosk_at = guest.wait_console("systemd[1]: Started tillbox-kiosk.service", 180)
        console = guest.console()
        assert "systemd[1]: Started tillbox.service" in console
        _record({"accel": "kvm" if qemu.kvm_usable() else "tcg", "provisioned_s": round(provisioned_at, 1),
                 "boot_to_healthy_s": round(healthy_at, 1), "kiosk_started_s": round(kiosk_at, 1)})  # fmt: skip
        assert health.get("status") == "ok", health
        assert health.get("version") == artifacts.info["version"], "the image runs the version it was built with"
        guest.powerdown()
        guest.stop(timeout=120)
    except BaseException:
        guest.proc.kill()
        guest.proc.wait()
        sys.stderr.write(guest.console()[-6000:])
        raise
    console = guest.console()
    assert "Failed to start tillbox" not in console
    assert "tillbox-kiosk.service: Failed" not in console.split("Stopping tillbox-kiosk.service")[0]

    # The token is gone from the boot partition; the file is still valid without it.
    left = qemu.fat_get(disk, boot_offset, recipe.PROVISION_FILE)
    assert left is not None and token.encode() not in left
    assert provision.parse(left.decode()).enrollment_token is None
    # The hub used the token once.
    with sqlite3.connect(hub / "enroll.db") as db:
        used = db.execute("SELECT used_at FROM tokens").fetchall()
    assert len(used) == 1 and used[0][0] is not None

    # The identity is on the data partition, readable by the daemon's user only.
    offset, size = artifacts.partition("TB_DATA")
    data = qemu.extract_partition(disk, offset, size, tmp_path / "data.ext4")
    qemu.fsck(data)
    device = json.loads(qemu.ext4_read(data, "/identity/device.json") or b"{}")
    assert device == {"store_id": STORE, "device_id": DEVICE, "brokers": [broker_url]}
    key = qemu.ext4_stat(data, "/identity/key.pem")
    assert key == {"mode": 0o600, "uid": recipe.TILLBOX_UID, "gid": recipe.TILLBOX_UID}
    assert qemu.ext4_stat(data, "/identity") == {"mode": 0o700, "uid": recipe.TILLBOX_UID, "gid": recipe.TILLBOX_UID}
    config = qemu.ext4_read(data, "/tillbox.toml") or b""
    assert f'id = "{STORE}"'.encode() in config and broker_url.encode() in config
    for path in ("/identity/key.pem", "/identity/cert.pem", "/tillbox.toml"):
        assert token.encode() not in (qemu.ext4_read(data, path) or b""), f"the token leaked into {path}"
